"""The pipelined admission connection to Redis (access/resp.py): real Redis, plus a silent fake server."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis.asyncio as aioredis

from lmops.access.counters import Check, RedisCounters, pipelined_script
from lmops.access.resp import PipelinedScript, RespError

ONE = (1.0,)  # the amount of a check counting one request


def _db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


async def test_concurrent_admissions_are_pipelined_and_exact(redis_url):
    counters = RedisCounters(redis_url)
    key = f"t{secrets.token_hex(4)}:rpm"
    try:
        assert counters._fast is not None  # a plain redis:// URL takes the pipelined path
        results = await asyncio.gather(*(counters.admit([Check("add", key, 150, 0, 60)], ONE) for _ in range(200)))
    finally:
        await counters.close()
    assert sum(r.ok for r in results) == 150  # each admission saw every earlier one: none lost, none doubled
    assert sorted(r.values[0] for r in results if r.ok) == [float(i) for i in range(1, 151)]
    assert all(r.failed == 0 for r in results if not r.ok)


async def test_a_flushed_script_is_loaded_again(redis_url):
    counters = RedisCounters(redis_url)
    key = f"t{secrets.token_hex(4)}:rpm"
    raw = aioredis.Redis.from_url(redis_url)
    try:
        assert (await counters.admit([Check("add", key, 10, 0, 60)], ONE)).values == (1.0,)
        await raw.script_flush()  # as after a Redis restart
        assert (await counters.admit([Check("add", key, 10, 0, 60)], ONE)).values == (2.0,)
        assert (await counters.admit([Check("add", key, 10, 0, 60)], ONE)).values == (3.0,)
    finally:
        await counters.close()
        await raw.aclose()


async def test_the_database_number_in_the_url_is_used(redis_url):
    url = _db(redis_url, 3)
    counters = RedisCounters(url)
    key = f"t{secrets.token_hex(4)}:rpm"
    raw = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await counters.admit([Check("add", key, 10, 0, 60)], ONE)
        assert await raw.get(key) == "1"
        assert await aioredis.Redis.from_url(_db(redis_url, 0)).get(key) is None
    finally:
        await counters.close()
        await raw.aclose()


async def test_a_silent_server_fails_calls_within_the_timeout_and_the_next_call_reconnects():
    connections = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read(1 << 16)  # never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    script = PipelinedScript("127.0.0.1", port, timeout=0.3)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RespError, match="did not answer"):
            await script.call("0" * 40, ["k"], ["spec"])
        assert loop.time() - started < 2.0
        with pytest.raises(RespError):
            await script.call("0" * 40, ["k"], ["spec"])
        assert len(connections) == 2  # the first connection was dropped, the second call made a new one
    finally:
        await script.close()
        server.close()


async def test_a_refused_connection_is_an_error_not_a_hang():
    from lmops.testing.server import free_port

    script = PipelinedScript("127.0.0.1", free_port(), timeout=1.0)
    with pytest.raises(RespError, match="cannot connect"):
        await asyncio.wait_for(script.call("0" * 40, ["k"], ["spec"]), 5)


def test_only_plain_redis_urls_take_the_pipelined_path():
    assert pipelined_script("redis://:secret@10.0.0.5:6380/2") is not None
    assert pipelined_script("rediss://10.0.0.5:6380/0") is None  # TLS: redis-py
    assert pipelined_script("unix:///run/redis.sock") is None


async def test_a_password_and_user_in_the_url_authenticate(redis_url):
    raw = aioredis.Redis.from_url(redis_url)
    user, password = f"lmops_t_{secrets.token_hex(3)}", secrets.token_hex(8)
    await raw.acl_setuser(user, enabled=True, passwords=[f"+{password}"], commands=["+@all"], keys=["*"])
    host_port = redis_url.split("://", 1)[1].rsplit("/", 1)[0]
    key = f"t{secrets.token_hex(4)}:rpm"
    good = RedisCounters(f"redis://{user}:{password}@{host_port}/0")
    bad = RedisCounters(f"redis://{user}:wrong@{host_port}/0")
    try:
        assert (await good.admit([Check("add", key, 10, 0, 60)], ONE)).values == (1.0,)
        with pytest.raises(Exception, match="WRONGPASS|invalid"):
            await bad.admit([Check("add", key, 10, 0, 60)], ONE)
    finally:
        await good.close()
        await bad.close()
        await raw.acl_deluser(user)
        await raw.aclose()
