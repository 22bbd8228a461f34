"""LoRA adapters as model names ("<model>:<adapter>"), through real sockets and the official openai client.

The fake upstream serves only its base model and its adapters by name, as vLLM started with
``--lora-modules`` does: a request sent upstream under any other name fails with vLLM's 404.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from lmops.app import create_app
from lmops.config import ConfigError, load_settings
from lmops.testing.fake_openai import Behaviour, FakeOpenAI

MESSAGES = [{"role": "user", "content": "hi"}]
ANSWER = "The quick brown fox jumps over the lazy dog."
ADAPTERS = [{"name": "sql", "upstream_model": "sql-lora-v2"}, {"name": "chat-lora"}]


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI(Behaviour(served=("qwen-base", "sql-lora-v2", "chat-lora")))


@pytest.fixture
def gw(serve, settings_factory, fake):
    up = serve(fake)
    settings = settings_factory([{"name": "qwen", "engine": "openai", "upstream_model": "qwen-base",
                                  "replicas": [f"{up.url}/v1"], "adapters": ADAPTERS}])
    srv = serve(create_app(settings))
    srv.client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
    srv.settings = settings
    return srv


def test_chat_with_an_adapter_goes_upstream_under_its_name(gw, fake):
    resp = gw.client.chat.completions.create(model="qwen:sql", messages=MESSAGES)
    assert resp.model == "qwen:sql"
    assert resp.choices[0].message.content == ANSWER
    assert fake.models_seen == {"sql-lora-v2": 1}
    base = gw.client.chat.completions.create(model="qwen", messages=MESSAGES)
    assert base.model == "qwen"
    assert fake.models_seen == {"sql-lora-v2": 1, "qwen-base": 1}


def test_streamed_chat_with_an_adapter(gw, fake):
    chunks = list(gw.client.chat.completions.create(model="qwen:sql", messages=MESSAGES, stream=True,
                                                    stream_options={"include_usage": True}))
    assert {c.model for c in chunks} == {"qwen:sql"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert chunks[-1].usage.completion_tokens == 10
    assert fake.models_seen == {"sql-lora-v2": 1}


def test_completions_with_an_adapter_whose_upstream_name_is_its_own(gw, fake):
    resp = gw.client.completions.create(model="qwen:chat-lora", prompt="Once", max_tokens=16)
    assert resp.model == "qwen:chat-lora" and resp.choices[0].text == ANSWER
    chunks = list(gw.client.completions.create(model="qwen:chat-lora", prompt="Once", max_tokens=16, stream=True))
    assert {c.model for c in chunks} == {"qwen:chat-lora"}
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ANSWER
    assert fake.models_seen == {"chat-lora": 2}


def test_unknown_adapter_is_a_404_envelope_and_never_sent_upstream(gw, fake):
    for name in ("qwen:nope", "nope:sql"):
        with pytest.raises(openai.NotFoundError) as err:
            gw.client.chat.completions.create(model=name, messages=MESSAGES)
        assert err.value.code == "model_not_found"
        assert err.value.body["param"] == "model" and f"'{name}'" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        gw.client.completions.create(model="qwen:nope", prompt="x", stream=True)
    assert fake.models_seen == {}


def test_model_list_shows_adapters_as_their_own_cards(gw):
    cards = {m.id: m for m in gw.client.models.list().data}
    assert list(cards) == ["qwen", "qwen:sql", "qwen:chat-lora"]  # access control off: everything
    sql = cards["qwen:sql"].model_dump()
    assert (sql["parent"], sql["root"], sql["owned_by"]) == ("qwen", "sql-lora-v2", "openai")
    assert "parent" not in cards["qwen"].model_dump()
    one = gw.client.models.retrieve("qwen:chat-lora").model_dump()
    assert (one["id"], one["parent"], one["root"]) == ("qwen:chat-lora", "qwen", "chat-lora")
    missing = httpx.get(f"{gw.url}/v1/models/qwen:nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_records_split_model_and_adapter_and_metrics_carry_the_full_name(gw):
    gw.client.chat.completions.create(model="qwen:sql", messages=MESSAGES)
    gw.client.chat.completions.create(model="qwen", messages=MESSAGES)
    db = gw.settings.database_url.split("///", 1)[1]
    deadline = time.monotonic() + 5
    while True:
        with sqlite3.connect(db) as conn:
            models = conn.execute("SELECT model, adapter FROM request_records ORDER BY adapter IS NOT NULL").fetchall()
        if len(models) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert models == [("qwen", None), ("qwen", "sql")]
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'lmops_requests_total{endpoint="chat.completions",model="qwen:sql",status="200"} 1.0' in metrics


# -- configuration -------------------------------------------------------------------------------

def _load(tmp_path: Path, models_yaml: str):
    """The models' YAML starts at line 3 of the file."""
    cfg = tmp_path / "lmops.yaml"
    cfg.write_text(f"database_url: sqlite:///{tmp_path / 'x.db'}\nmodels:\n{models_yaml}")
    return load_settings(cfg)


def test_adapter_config_defaults_and_validation(tmp_path):
    settings = _load(tmp_path, """\
  - name: qwen
    engine: openai
    replicas: ["http://127.0.0.1:1/v1"]
    adapters:
      - name: sql
        upstream_model: sql-lora-v2
      - name: chat
""")
    adapters = settings.models[0].adapters
    assert [(a.name, a.upstream_name) for a in adapters] == [("sql", "sql-lora-v2"), ("chat", "chat")]


@pytest.mark.parametrize(("yaml_text", "location", "line", "message"), [
    ("""\
  - name: small
    engine: embedded
    adapters:
      - name: sql
""", "models.0.adapters", 6, "adapters are only for openai engines"),
    ("""\
  - name: qwen
    engine: openai
    replicas: ["http://127.0.0.1:1/v1"]
    adapters: [{name: sql}, {name: "a:b"}]
""", "models.0.adapters.1.name", 6, "cannot contain ':'"),
    ("""\
  - name: qwen
    engine: openai
    replicas: ["http://127.0.0.1:1/v1"]
    adapters:
      - name: sql
      - name: sql
        upstream_model: other
""", "models.0.adapters", 7, "'sql' is declared twice"),
])
def test_bad_adapter_config_is_reported_with_its_location(tmp_path, yaml_text, location, line, message):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, yaml_text)
    (problem,) = err.value.problems
    assert problem.location == location and problem.line == line and message in problem.message


def test_an_adapter_may_not_shadow_a_model_name(tmp_path):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, """\
  - name: qwen
    engine: openai
    replicas: ["http://127.0.0.1:1/v1"]
    adapters: [{name: sql}]
  - name: "qwen:sql"
    engine: openai
    replicas: ["http://127.0.0.1:1/v1"]
""")
    assert "same public name as the model 'qwen:sql'" in str(err.value)


def _lmops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmops", *args], check=False, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


def test_config_check_reports_adapters_on_an_embedded_model(tmp_path):
    cfg = tmp_path / "lmops.yaml"
    cfg.write_text("models:\n  - name: small\n    engine: embedded\n    adapters: [{name: sql}]\n")
    result = _lmops("config", "check", "--config", str(cfg))
    err = " ".join(result.stderr.split())
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "line 4" in err and "models.0.adapters" in err and "only for openai engines" in err


def test_lmops_models_lists_adapters(tmp_path):
    cfg = tmp_path / "lmops.yaml"
    cfg.write_text(f"database_url: sqlite:///{tmp_path / 'x.db'}\nmodels:\n  - name: qwen\n    engine: openai\n"
                   "    replicas: ['http://127.0.0.1:1/v1']\n"
                   "    adapters: [{name: sql, upstream_model: sql-lora-v2}]\n")
    result = _lmops("models", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if "qwen:sql" in line]
    assert "sql-lora-v2" in row and "openai" in row
