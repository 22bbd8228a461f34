"""Replica circuit breakers and tie spreading, through real sockets and the official openai client.

Active health checks run every 600 s here (never, within a test) unless a test says otherwise: what is checked
is what requests alone do to the breakers.
"""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import openai
import pytest

from lmops.app import create_app
from lmops.config import ConfigError, load_settings
from lmops.testing.fake_openai import Behaviour, FakeOpenAI

MESSAGES = [{"role": "user", "content": "hi"}]
ANSWER = "The quick brown fox jumps over the lazy dog."


def gateway(serve, settings_factory, upstreams: list[FakeOpenAI], **health: float):
    urls = [f"{serve(up).url}/v1" for up in upstreams]
    health = {"interval": 600, "timeout": 1.0, "failure_threshold": 1, "cooldown": 600, **health}
    settings = settings_factory([{"name": "m", "engine": "openai", "upstream_model": "up", "replicas": urls}],
                                health=health)
    srv = serve(create_app(settings))
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
    return srv, client, srv.server.config.app.state.core.router.deployment("m")


def ask(client: openai.OpenAI) -> str | None:
    return client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content


def test_a_single_replica_survives_one_upstream_500(serve, settings_factory):
    """failure_threshold 1 used to take the only replica out for the whole cooldown: 503 for every caller."""
    up = FakeOpenAI(Behaviour(fail=True))
    srv, client, dep = gateway(serve, settings_factory, [up])
    with pytest.raises(openai.APIStatusError) as err:
        ask(client)
    assert err.value.status_code == 502
    up.behaviour.fail = False
    assert ask(client) == ANSWER  # served, not 503
    assert dep.replicas[0].healthy
    metrics = httpx.get(f"{srv.url}/metrics").text
    assert f'lmops_replica_breaker_held_total{{model="m",replica="{dep.replicas[0].endpoint}"}} 1.0' in metrics


def test_breaker_opens_after_n_failures_then_one_half_open_probe_closes_it(serve, settings_factory):
    bad, good = FakeOpenAI(Behaviour(fail=True)), FakeOpenAI()
    _, client, dep = gateway(serve, settings_factory, [bad, good], failure_threshold=3, cooldown=1.0)  # window: 60 s
    for _ in range(20):  # a failure on the bad replica is retried on the good one: every request succeeds
        assert ask(client) == ANSWER
        if bad.requests == 2:
            assert dep.replicas[0].healthy  # two failures are not three
        if not dep.replicas[0].healthy:
            break
    assert bad.requests == 3 and not dep.replicas[0].healthy
    opened = time.monotonic()
    for _ in range(10):
        assert ask(client) == ANSWER
    assert bad.requests == 3  # open: no traffic
    bad.behaviour = Behaviour(delay=0.5)  # recovered, and slow enough for the probe to be in flight a while
    time.sleep(max(0.0, opened + 1.1 - time.monotonic()))
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert list(pool.map(lambda _: ask(client), range(6))) == [ANSWER] * 6
    assert bad.requests == 4  # half-open: exactly one probe went through, the others to the good replica
    assert dep.replicas[0].healthy  # it succeeded: closed
    for _ in range(4):
        ask(client)
    assert bad.requests > 4


def test_failed_half_open_probe_opens_the_breaker_again(serve, settings_factory):
    bad, good = FakeOpenAI(Behaviour(fail=True)), FakeOpenAI()
    _, client, dep = gateway(serve, settings_factory, [bad, good], cooldown=0.5)
    assert ask(client) == ANSWER  # the bad replica fails once (threshold 1): open
    assert bad.requests == 1 and not dep.replicas[0].healthy
    time.sleep(0.6)
    assert ask(client) == ANSWER  # the probe fails, retried on the good replica
    assert bad.requests == 2 and not dep.replicas[0].healthy
    for _ in range(5):
        ask(client)
    assert bad.requests == 2  # open for another cooldown


def test_failures_further_apart_than_the_window_do_not_open_it(serve, settings_factory):
    bad, good = FakeOpenAI(Behaviour(fail=True)), FakeOpenAI()
    _, client, dep = gateway(serve, settings_factory, [bad, good], failure_threshold=2, failure_window=0.5)
    assert ask(client) == ANSWER
    assert bad.requests == 1
    time.sleep(0.7)
    assert ask(client) == ANSWER
    assert bad.requests == 2 and dep.replicas[0].healthy  # the first failure is out of the window
    assert ask(client) == ANSWER
    assert bad.requests == 3 and not dep.replicas[0].healthy  # two within 0.5 s


def test_sequential_requests_reach_both_replicas(serve, settings_factory):
    a, b = FakeOpenAI(), FakeOpenAI()
    _, client, _ = gateway(serve, settings_factory, [a, b])
    for _ in range(10):
        ask(client)
    assert a.requests == b.requests == 5


def test_failed_health_checks_take_out_the_last_replica(serve, settings_factory):
    """Requests alone keep the last replica in; a replica that does not answer its health check is out."""
    up = FakeOpenAI(Behaviour(fail=True))
    _, client, dep = gateway(serve, settings_factory, [up], interval=0.2)
    with pytest.raises(openai.APIStatusError):
        ask(client)
    assert dep.replicas[0].healthy
    up.behaviour.fail_health = True
    deadline = time.monotonic() + 5
    while dep.replicas[0].healthy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not dep.replicas[0].healthy
    with pytest.raises(openai.APIStatusError) as err:
        ask(client)
    assert err.value.status_code == 503 and err.value.body["code"] == "no_healthy_replica"


@pytest.mark.parametrize(("field", "value"), [("failure_window", 0), ("failure_window", -1),
                                              ("failure_threshold", 0), ("cooldown", -1)])
def test_bad_health_values_are_refused(tmp_path, field, value):
    with pytest.raises(ConfigError) as err:
        load_settings(None, database_url=f"sqlite:///{tmp_path / 'x.db'}", health={field: value})
    assert f"health.{field}" in str(err.value)
