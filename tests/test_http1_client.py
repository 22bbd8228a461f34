"""The lean upstream HTTP/1.1 client (engines/http1.py) against real servers on real sockets."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from lmops.engines import http1
from lmops.testing.fake_openai import Behaviour, FakeOpenAI
from lmops.testing.server import ServerThread, free_port

BODY = orjson.dumps({"model": "fake", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture(scope="module")
def upstream():
    with ServerThread(FakeOpenAI()) as srv:
        yield srv


def counting(pool: http1.Pool) -> list[int]:
    """Count the connections the pool opens."""
    opened = [0]
    connect = pool._connect

    async def wrapper() -> http1._Connection:
        opened[0] += 1
        return await connect()

    pool._connect = wrapper  # type: ignore[method-assign]
    return opened


async def test_keep_alive_connections_are_reused(upstream) -> None:
    pool = http1.Pool(upstream.url + "/v1")
    opened = counting(pool)
    for _ in range(5):
        resp = await pool.request("POST", "/chat/completions", BODY)
        assert resp.status == 200
        assert orjson.loads(await resp.read())["object"] == "chat.completion"
    assert opened[0] == 1

    async def one() -> bytes:
        return await (await pool.request("POST", "/chat/completions", BODY)).read()

    await asyncio.gather(*(one() for _ in range(8)))
    await asyncio.gather(*(one() for _ in range(8)))
    assert opened[0] <= 8
    await pool.close()


async def test_stream_arrives_in_pieces_and_ends(upstream) -> None:
    pool = http1.Pool(upstream.url + "/v1")
    body = orjson.dumps({"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    resp = await pool.request("POST", "/chat/completions", body)
    pieces = []
    while (piece := await resp.next_bytes()) is not None:
        pieces.append(piece)
    text = b"".join(pieces)
    assert text.count(b"data: ") == 12 and text.endswith(b"data: [DONE]\n\n")
    assert len(pool._idle) == 1  # read to the end: kept for the next request
    await pool.close()


async def test_stopping_a_stream_early_closes_its_connection() -> None:
    fake = FakeOpenAI(Behaviour(chunk_delay=0.05))
    with ServerThread(fake) as srv:
        pool = http1.Pool(srv.url + "/v1")
        body = orjson.dumps({"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True})
        resp = await pool.request("POST", "/chat/completions", body)
        assert await resp.next_bytes()
        resp.release()
        assert not pool._idle and pool._in_use == 0
        for _ in range(50):
            if fake.cancelled_streams:
                break
            await asyncio.sleep(0.05)
        assert fake.cancelled_streams == 1
        await pool.close()


async def test_connect_error_and_timeouts() -> None:
    with pytest.raises(http1.ConnectError):
        await http1.Pool(f"http://127.0.0.1:{free_port()}/v1").request("GET", "/models")
    with ServerThread(FakeOpenAI(Behaviour(hang=True))) as srv:
        pool = http1.Pool(srv.url + "/v1", timeout=0.3)
        with pytest.raises(http1.Timeout):
            await pool.request("POST", "/chat/completions", BODY)
        assert pool._in_use == 0


async def test_a_connection_closed_by_the_server_is_replaced(upstream) -> None:
    pool = http1.Pool(upstream.url + "/v1")
    await (await pool.request("POST", "/chat/completions", BODY)).read()
    stale = pool._idle[0]
    stale.transport.close()  # as if the server's keep-alive timeout had closed it
    await asyncio.sleep(0.05)
    resp = await pool.request("POST", "/chat/completions", BODY)
    assert resp.status == 200 and await resp.read()
    await pool.close()


async def test_max_connections_makes_callers_wait(upstream) -> None:
    pool = http1.Pool(upstream.url + "/v1", max_connections=2)
    opened = counting(pool)

    async def one() -> int:
        resp = await pool.request("POST", "/chat/completions", BODY)
        await resp.read()
        return resp.status

    assert await asyncio.gather(*(one() for _ in range(10))) == [200] * 10
    assert opened[0] <= 2 and pool._in_use == 0
    await pool.close()
