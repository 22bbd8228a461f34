"""Routing across replicas and upstream faults, through real sockets and the official openai client."""

from __future__ import annotations

import itertools
import json
import time

import httpx
import openai
import pytest

from lmops.app import create_app
from lmops.testing.fake_openai import Behaviour, FakeOpenAI
from lmops.testing.server import free_port

MESSAGES = [{"role": "user", "content": "hi"}]


def gateway(serve, settings_factory, replicas: list[str], **model: object):
    settings = settings_factory([{"name": "m", "engine": "openai", "upstream_model": "up", "replicas": replicas,
                                  **model}])
    srv = serve(create_app(settings))
    return srv, openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)


def test_upstream_model_name_is_rewritten_both_ways(serve, settings_factory):
    fake = FakeOpenAI()
    up = serve(fake)
    _, client = gateway(serve, settings_factory, [f"{up.url}/v1"])
    resp = client.chat.completions.create(model="m", messages=MESSAGES)
    assert resp.model == "m"
    assert resp.choices[0].message.content == "The quick brown fox jumps over the lazy dog."
    assert resp.usage.completion_tokens == 10
    assert fake.models_seen == {"up": 1}  # the upstream was asked for its own name


def test_stream_is_passed_through_with_usage(serve, settings_factory):
    up = serve(FakeOpenAI())
    _, client = gateway(serve, settings_factory, [f"{up.url}/v1"])
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "The quick brown fox jumps over the lazy dog."
    assert chunks[-1].usage.total_tokens == 17
    # Without include_usage the client sees no usage chunk, but lmops still asked upstream for it.
    plain = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert all(c.choices for c in plain)


def test_stream_chunks_are_not_buffered(serve, settings_factory):
    """Each chunk reaches the client as the upstream sends it (0.2 s apart), not all at the end."""
    up = serve(FakeOpenAI(Behaviour(chunk_delay=0.2, words=4)))
    srv, _ = gateway(serve, settings_factory, [f"{up.url}/v1"])
    arrivals = []
    with httpx.stream("POST", f"{srv.url}/v1/chat/completions", timeout=10,
                      json={"model": "m", "messages": MESSAGES, "stream": True}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) == 5
    assert sum(1 for g in gaps if g > 0.1) >= 3


def test_replica_down_gives_503_envelope(serve, settings_factory):
    """Failed requests keep a model's last replica in the pool (each is a bad gateway); once its health check
    has failed too, the model has no healthy replica: 503 (the cooldown outlasts the test)."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    settings = settings_factory([{"name": "m", "engine": "openai", "upstream_model": "up", "replicas": [dead]}],
                                health={"interval": 0.2, "timeout": 1.0, "failure_threshold": 1, "cooldown": 600})
    srv = serve(create_app(settings))
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert err.value.status_code == 502
    deadline = time.monotonic() + 5
    while httpx.get(f"{srv.url}/ready").status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(openai.APIStatusError) as err2:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert err2.value.status_code == 503
    assert err2.value.body["code"] == "no_healthy_replica"


def test_hanging_replica_times_out_with_504(serve, settings_factory):
    up = serve(FakeOpenAI(Behaviour(hang=True)))
    _, client = gateway(serve, settings_factory, [f"{up.url}/v1"], timeout=0.5)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert err.value.status_code == 504
    assert err.value.body["type"] == "timeout_error"
    assert time.monotonic() - started < 5


def test_replica_answering_500_gives_502(serve, settings_factory):
    up = serve(FakeOpenAI(Behaviour(fail=True)))
    _, client = gateway(serve, settings_factory, [f"{up.url}/v1"])
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert err.value.status_code == 502
    assert "fake upstream failure" in err.value.message


@pytest.mark.parametrize("fault", ["dead", "fail", "hang"])
def test_two_replicas_one_bad_every_request_succeeds(serve, settings_factory, fault):
    """The bad replica (listed first, so tried first) costs one failed try, retried on the good one; then its
    breaker is open and it gets no more requests (the cooldown outlasts the test, so no probe brings it back)."""
    good_srv = serve(FakeOpenAI())
    bad = None
    if fault == "dead":
        bad_url = f"http://127.0.0.1:{free_port()}/v1"
    else:
        bad = FakeOpenAI(Behaviour(fail=fault == "fail", hang=fault == "hang"))
        bad_url = f"{serve(bad).url}/v1"
    settings = settings_factory([{"name": "m", "engine": "openai", "upstream_model": "up", "timeout": 0.5,
                                  "replicas": [bad_url, f"{good_srv.url}/v1"]}],
                                health={"interval": 0.2, "timeout": 1.0, "failure_threshold": 1, "cooldown": 600})
    srv = serve(create_app(settings))
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
    answer = "The quick brown fox jumps over the lazy dog."
    for i in range(20):
        if i % 2:
            chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
        else:
            assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content == answer
    replicas = srv.server.config.app.state.core.router.deployment("m").replicas
    assert [r.healthy for r in replicas] == [False, True]
    if bad is not None:
        assert bad.requests == 1  # tried once (the failover ran), never again once ejected


def test_ejected_replica_returns_when_healthy(serve, settings_factory):
    behaviour = Behaviour(fail=True, fail_health=True)
    flaky = FakeOpenAI(behaviour)
    flaky_srv = serve(flaky)
    good = FakeOpenAI()
    good_srv = serve(good)
    srv, client = gateway(serve, settings_factory, [f"{flaky_srv.url}/v1", f"{good_srv.url}/v1"])
    client.chat.completions.create(model="m", messages=MESSAGES)  # flaky fails, retried on good, flaky ejected
    ready = httpx.get(f"{srv.url}/ready").json()
    assert ready["status"] == "ready"
    services = srv.server.config.app.state.services if hasattr(srv.server.config.app, "state") else None
    assert services is not None
    dep = services.core.router.deployment("m")
    assert [r.healthy for r in dep.replicas] == [False, True]
    behaviour.fail = behaviour.fail_health = False  # the replica recovers; active checks (every 0.2 s) bring it back
    deadline = time.monotonic() + 5
    while not dep.replicas[0].healthy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dep.replicas[0].healthy
    before = flaky.requests
    for _ in range(10):
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert flaky.requests > before


def test_ready_reports_503_when_a_model_has_no_healthy_replica(serve, settings_factory):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    srv, _ = gateway(serve, settings_factory, [dead])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        resp = httpx.get(f"{srv.url}/ready")
        if resp.status_code == 503:
            break
        time.sleep(0.1)
    assert resp.status_code == 503
    assert resp.json()["models"] == {"m": False}
    assert httpx.get(f"{srv.url}/health").status_code == 200


def test_least_outstanding_spreads_concurrent_requests(serve, settings_factory):
    import concurrent.futures

    a, b = FakeOpenAI(Behaviour(delay=0.2)), FakeOpenAI(Behaviour(delay=0.2))
    sa, sb = serve(a), serve(b)
    _, client = gateway(serve, settings_factory, [f"{sa.url}/v1", f"{sb.url}/v1"])
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda _: client.chat.completions.create(model="m", messages=MESSAGES), range(10)))
    assert a.requests == b.requests == 5


def test_client_disconnect_mid_stream_stops_upstream(serve, settings_factory):
    fake = FakeOpenAI(Behaviour(chunk_delay=0.1, words=100))
    up = serve(fake)
    srv, _ = gateway(serve, settings_factory, [f"{up.url}/v1"])
    with httpx.stream("POST", f"{srv.url}/v1/chat/completions", timeout=10,
                      json={"model": "m", "messages": MESSAGES, "stream": True}) as resp:
        for i, _line in enumerate(resp.iter_lines()):
            if i >= 4:
                break
    deadline = time.monotonic() + 5
    while fake.cancelled_streams == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.cancelled_streams == 1


def test_stream_cut_by_the_upstream_ends_with_an_error_event(serve, settings_factory):
    up = serve(FakeOpenAI(Behaviour(truncate_after=3)))
    srv, _ = gateway(serve, settings_factory, [f"{up.url}/v1"])
    with httpx.stream("POST", f"{srv.url}/v1/chat/completions", timeout=10,
                      json={"model": "m", "messages": MESSAGES, "stream": True}) as resp:
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert resp.status_code == 200  # headers were already sent with the first chunk
    assert len(lines) == 4
    last = json.loads(lines[-1][6:])
    assert last["error"]["type"] == "upstream_error" and "[DONE]" in last["error"]["message"]


_CHOICE = {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}


@pytest.mark.parametrize(("answer", "problem"), [
    ([], "a JSON list, not an object"),
    ({}, "'choices' is not a list of objects"),
    ({"choices": "x"}, "'choices' is not a list of objects"),
    ({"choices": [_CHOICE], "usage": [1]}, "'usage' is not an object"),
    ({"choices": [_CHOICE], "usage": {"prompt_tokens": "many"}}, "usage.prompt_tokens is not a whole number"),
    ({"choices": [_CHOICE], "usage": {"completion_tokens": -3}}, "usage.completion_tokens is not a whole number"),
    ({"choices": [_CHOICE], "usage": {"completion_tokens": 2.5}}, "usage.completion_tokens is not a whole number"),
])
def test_an_answer_that_parses_but_is_not_openai_is_a_502_not_a_500(serve, settings_factory, answer, problem):
    """Valid JSON of the wrong shape used to crash the request (500) and leave no record."""
    up = serve(FakeOpenAI(Behaviour(answer=answer)))
    _, client = gateway(serve, settings_factory, [f"{up.url}/v1"])
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert err.value.status_code == 502 and problem in err.value.message
    srv, _ = gateway(serve, settings_factory, [f"{up.url}/v1"])
    stream = httpx.post(f"{srv.url}/v1/chat/completions", timeout=10,
                        json={"model": "m", "messages": MESSAGES, "stream": True})
    if answer == {}:  # as a stream event, an object without choices is let through (usage chunks have none)
        assert stream.status_code == 200
    else:  # the first event is checked before any byte reaches the client: a plain 502, as for the JSON answer
        assert stream.status_code == 502 and problem in stream.json()["error"]["message"]


def test_embeddings_must_carry_a_data_list(serve, settings_factory):
    up = serve(FakeOpenAI(Behaviour(answer={"object": "list", "data": {"0": [0.1]}})))
    _, client = gateway(serve, settings_factory, [f"{up.url}/v1"])
    with pytest.raises(openai.APIStatusError) as err:
        client.embeddings.create(model="m", input="x")
    assert err.value.status_code == 502 and "'data' is not a list of objects" in err.value.message


def test_token_counts_written_as_whole_floats_are_read(serve, settings_factory):
    """Some servers write 17.0 for 17: that is a count, not a broken answer."""
    answer = {"choices": [_CHOICE], "usage": {"prompt_tokens": 7.0, "completion_tokens": 10.0, "total_tokens": 17.0}}
    up = serve(FakeOpenAI(Behaviour(answer=answer)))
    _, client = gateway(serve, settings_factory, [f"{up.url}/v1"])
    usage = client.chat.completions.create(model="m", messages=MESSAGES).usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 10)
