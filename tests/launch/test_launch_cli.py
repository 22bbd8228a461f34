"""``lmops engine launch``: readable spec errors (exit 2, no traceback), --dry-run, and --register-as."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lmops.cli import app as cli
from lmops.config import load_settings
from lmops.launch.spec import SpecError, load_spec


def _launch(*args: str):
    return CliRunner().invoke(cli, ["engine", "launch", *args])


def _spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD = """\
engine: vlm
model: ""
context_length: 4
max_sequences: 0
gpu_memory: 1.5
lora: {adapters: {a: /x}}
port: 99999
surprise: 1
"""


def test_every_problem_of_a_spec_is_reported_with_its_line(tmp_path: Path):
    path = _spec(tmp_path, BAD)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert [str(p) for p in info.value.problems] == [
        "line 1, column 9: engine: Input should be 'vllm', 'lmdeploy', 'tgi', 'llamacpp-server' or "
        "'llama-cpp-python'",
        "line 2, column 8: model: String should have at least 1 character",
        "line 3, column 17: context_length: Input should be greater than or equal to 16",
        "line 4, column 16: max_sequences: Input should be greater than or equal to 1",
        "line 5, column 13: gpu_memory: Input should be less than or equal to 1",
        "line 6, column 7: lora: adapters are listed but LoRA is off: set lora.enabled: true",
        "line 7, column 7: port: Input should be less than or equal to 65535",
        "line 8, column 11: surprise: Extra inputs are not permitted",
    ]


def test_the_cli_prints_spec_problems_and_exits_2_without_a_traceback(tmp_path: Path):
    result = _launch(_spec(tmp_path, BAD), "--dry-run")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "Invalid engine spec in" in result.stderr
    assert "max_sequences: Input should be greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""

    for text, message in [("- a list\n", "top level: must be a mapping"), ("engine: [\n", "yaml: "),
                          ("engine: vllm\nmodel: m\ncontext_length: 64\n", "max_sequences: Field required")]:
        result = _launch(_spec(tmp_path, text, "other.yaml"), "--dry-run")
        assert (result.exit_code, "Traceback" in result.output) == (2, False)
        assert message in result.stderr, result.stderr
    result = _launch(str(tmp_path / "missing.yaml"))
    assert result.exit_code == 2 and "file: No such file or directory" in result.stderr


def test_what_an_engine_cannot_do_is_refused_before_anything_starts(tmp_path: Path):
    path = _spec(tmp_path, "engine: llama-cpp-python\nmodel: m.gguf\ncontext_length: 512\nmax_sequences: 1\n"
                           "lora: {enabled: true}\n")
    result = _launch(path)
    assert result.exit_code == 2 and result.stdout == ""
    assert "llama-cpp-python's server applies at most one LoRA adapter" in result.stderr


def test_dry_run_prints_the_exact_command_and_the_warnings(tmp_path: Path):
    path = _spec(tmp_path, "engine: llamacpp-server\nmodel: /models/m.gguf\nserved_name: m\ncontext_length: 4096\n"
                           "max_sequences: 4\nport: 8081\nenv: {CUDA_VISIBLE_DEVICES: '0'}\n")
    result = _launch(path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout == ("CUDA_VISIBLE_DEVICES=0 llama-server -m /models/m.gguf --host 127.0.0.1 --port 8081 "
                             "--alias m -c 16384 --parallel 4\n")
    assert result.stderr == ("warning: llama.cpp shares one context among its parallel slots: -c 16384 = "
                             "context_length 4096 × max_sequences 4\n")


VLLM = """\
engine: vllm
model: Qwen/Qwen2.5-7B-Instruct
served_name: qwen
context_length: 8192
max_sequences: 64
port: 8001
lora: {enabled: true, adapters: {sql: /adapters/sql}}
"""


def test_register_as_prints_an_entry_the_gateway_loads(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./lmops.yaml
    monkeypatch.delenv("LMOPS_CONFIG", raising=False)
    result = _launch(_spec(tmp_path, VLLM), "--dry-run", "--register-as", "qwen")
    assert result.exit_code == 0, result.output
    command, snippet = result.stdout.split("# add to lmops.yaml:\n")
    assert command.startswith("vllm serve Qwen/Qwen2.5-7B-Instruct ")
    assert yaml.safe_load(snippet) == {"models": [{
        "name": "qwen", "engine": "openai", "upstream_model": "qwen", "replicas": ["http://127.0.0.1:8001/v1"],
        "context_length": 8192, "adapters": [{"name": "sql"}]}]}
    (tmp_path / "lmops.yaml").write_text(snippet)
    model = load_settings(tmp_path / "lmops.yaml").models[0]
    assert (model.name, model.replicas, [a.name for a in model.adapters]) == (
        "qwen", ["http://127.0.0.1:8001/v1"], ["sql"])


def test_register_as_joins_the_replicas_a_configured_model_has(tmp_path: Path):
    config = tmp_path / "lmops.yaml"
    config.write_text("models:\n- {name: qwen, engine: openai, upstream_model: qwen, timeout: 30,\n"
                      "   replicas: ['http://gpu1:8000/v1']}\n- {name: local, engine: embedded}\n")
    spec = _spec(tmp_path, VLLM)
    result = _launch(spec, "--dry-run", "--register-as", "qwen", "--config", str(config))
    assert result.exit_code == 0, result.output
    (entry,) = yaml.safe_load(result.stdout.split("# add to lmops.yaml:\n")[1])["models"]
    assert entry == {"name": "qwen", "engine": "openai", "upstream_model": "qwen", "timeout": 30.0,
                     "replicas": ["http://gpu1:8000/v1", "http://127.0.0.1:8001/v1"]}

    result = _launch(spec, "--dry-run", "--register-as", "local", "--config", str(config))
    assert result.exit_code == 2 and result.stdout == ""
    assert "cannot register: model 'local'" in result.stderr and "only an openai model has replicas" in result.stderr
