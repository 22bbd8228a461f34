"""One spec -> each engine's exact command line and exact warnings (golden), and what an engine cannot do."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from lmops.launch.command import Unsupported
from lmops.launch.spec import EngineSpec
from lmops.launch.translate import translate

FULL: dict[str, Any] = {
    "model": "meta-llama/Llama-3.1-8B-Instruct", "served_name": "llama", "context_length": 8192,
    "max_sequences": 32, "gpu_memory": 0.9, "tensor_parallel": 2, "host": "0.0.0.0", "port": 9000,
    "lora": {"enabled": True, "max_adapters": 4, "max_rank": 12,
             "adapters": {"sql": "/adapters/sql", "chat": "/adapters/chat"}},
    "extra_args": ["--seed", "7"], "env": {"HF_HOME": "/models"}, "executable": "ENGINE",
}
MINIMAL: dict[str, Any] = {"model": "/models/m.gguf", "context_length": 2048, "max_sequences": 1}

LLAMACPP_SPLIT = ("llama.cpp splits layers, not tensors, over every visible GPU: tensor_parallel 2 is not passed "
                  "(choose the GPUs with CUDA_VISIBLE_DEVICES in env)")
TGI_CONTEXT = ("TGI bounds the prompt and the whole sequence apart: context_length {c} becomes "
               "--max-input-tokens {i} --max-total-tokens {c}")
TGI_BATCH = ("TGI batches by tokens, not sequences: --max-concurrent-requests {n} refuses requests beyond {n} at once "
             "instead of queueing them, and how many are decoded together follows --max-batch-total-tokens, which "
             "TGI sizes from the free memory")

FULL_GOLDEN = {
    "vllm": (
        "HF_HOME=/models ENGINE serve meta-llama/Llama-3.1-8B-Instruct --host 0.0.0.0 --port 9000 "
        "--served-model-name llama --max-model-len 8192 --max-num-seqs 32 --gpu-memory-utilization 0.9 "
        "--tensor-parallel-size 2 --enable-lora --max-loras 4 --max-lora-rank 16 "
        "--lora-modules sql=/adapters/sql chat=/adapters/chat --seed 7",
        ["vLLM serves LoRA ranks 8, 16, 32, 64, 128, 256, 320, 512 only: lora.max_rank 12 is rounded up to "
         "--max-lora-rank 16"],
    ),
    "lmdeploy": (
        "HF_HOME=/models ENGINE serve api_server meta-llama/Llama-3.1-8B-Instruct --server-name 0.0.0.0 "
        "--server-port 9000 --model-name llama --session-len 8192 --max-batch-size 32 --cache-max-entry-count 0.9 "
        "--tp 2 --backend pytorch --adapters sql=/adapters/sql chat=/adapters/chat --seed 7",
        ["lmdeploy's --cache-max-entry-count is the share of the GPU memory left free after the weights that goes "
         "to the KV cache, not a budget for the whole engine: gpu_memory 0.9 is passed as it is, so lmdeploy takes "
         "the weights plus 0.9 of the rest, more than 0.9 of the GPU in all",
         "lmdeploy serves LoRA adapters on its PyTorch backend only: --backend pytorch is added",
         "lmdeploy sizes LoRA from the adapters it loads: lora.max_adapters and lora.max_rank are not passed"],
    ),
    "tgi": (
        "HF_HOME=/models ENGINE --model-id meta-llama/Llama-3.1-8B-Instruct --hostname 0.0.0.0 --port 9000 "
        "--max-input-tokens 8191 --max-total-tokens 8192 --max-concurrent-requests 32 --cuda-memory-fraction 0.9 "
        "--num-shard 2 --lora-adapters sql=/adapters/sql,chat=/adapters/chat --seed 7",
        ["TGI has no flag for the served model name (it answers requests for any model name): served_name 'llama' "
         "is not passed",
         TGI_CONTEXT.format(c=8192, i=8191), TGI_BATCH.format(n=32),
         "TGI picks a LoRA adapter by the request's adapter_id, not by model name: the adapters are not served as "
         "model names of their own",
         "TGI sizes LoRA from the adapters it loads: lora.max_adapters and lora.max_rank are not passed"],
    ),
    "llamacpp-server": (
        "HF_HOME=/models ENGINE -m meta-llama/Llama-3.1-8B-Instruct --host 0.0.0.0 --port 9000 --alias llama "
        "-c 262144 --parallel 32 -ngl 999 --lora /adapters/sql --lora /adapters/chat --seed 7",
        ["llama.cpp shares one context among its parallel slots: -c 262144 = context_length 8192 × max_sequences 32",
         "llama.cpp has no GPU memory budget: gpu_memory 0.9 is not passed; every layer goes to the GPU (-ngl 999) "
         "and the KV cache is sized by the context",
         LLAMACPP_SPLIT,
         "llama.cpp applies its LoRA adapters by id and scale (a request's \"lora\" field or POST /lora-adapters), "
         "not by model name: the adapters are not served as model names of their own",
         "llama.cpp sizes LoRA from the adapters it loads: lora.max_adapters and lora.max_rank are not passed"],
    ),
}

MINIMAL_GOLDEN = {
    "vllm": ("vllm serve /models/m.gguf --host 127.0.0.1 --port 8000 --max-model-len 2048 --max-num-seqs 1 "
             "--tensor-parallel-size 1", []),
    "lmdeploy": ("lmdeploy serve api_server /models/m.gguf --server-name 127.0.0.1 --server-port 8000 "
                 "--session-len 2048 --max-batch-size 1 --tp 1", []),
    "tgi": ("text-generation-launcher --model-id /models/m.gguf --hostname 127.0.0.1 --port 8000 "
            "--max-input-tokens 2047 --max-total-tokens 2048 --max-concurrent-requests 1 --num-shard 1",
            [TGI_CONTEXT.format(c=2048, i=2047), TGI_BATCH.format(n=1)]),
    "llamacpp-server": ("llama-server -m /models/m.gguf --host 127.0.0.1 --port 8000 -c 2048 --parallel 1", []),
}


@pytest.mark.parametrize("engine", sorted(FULL_GOLDEN))
def test_a_full_spec_gives_each_engine_its_golden_command_and_warnings(engine: str):
    cmd = translate(EngineSpec(engine=engine, **FULL))
    assert (cmd.shell(), cmd.warnings) == FULL_GOLDEN[engine]


@pytest.mark.parametrize("engine", sorted(MINIMAL_GOLDEN))
def test_a_minimal_spec_passes_only_what_it_says(engine: str):
    cmd = translate(EngineSpec(engine=engine, **MINIMAL))
    assert (cmd.shell(), cmd.warnings) == MINIMAL_GOLDEN[engine]


def test_llama_cpp_python_runs_on_this_python_and_says_what_it_drops():
    spec = EngineSpec(engine="llama-cpp-python", **{**FULL, "lora": {}, "executable": None})
    cmd = translate(spec)
    assert cmd.argv[0] == sys.executable
    assert cmd.argv[1:] == ["-m", "llama_cpp.server", "--model", "meta-llama/Llama-3.1-8B-Instruct",
                            "--host", "0.0.0.0", "--port", "9000", "--model_alias", "llama", "--n_ctx", "8192",
                            "--n_gpu_layers", "-1", "--seed", "7"]
    assert cmd.env == {"HF_HOME": "/models"}
    assert cmd.warnings == [
        "llama-cpp-python's server decodes one request at a time: max_sequences 32 is not passed, and concurrent "
        "requests wait their turn",
        "llama-cpp-python has no GPU memory budget: gpu_memory 0.9 is not passed; every layer goes to the GPU "
        "(--n_gpu_layers -1) and the KV cache is sized by the context",
        LLAMACPP_SPLIT.replace("llama.cpp", "llama-cpp-python"),
    ]


def test_only_the_engines_that_serve_adapters_by_name_list_them_for_the_gateway():
    names = {e: translate(EngineSpec(engine=e, **FULL)).adapter_names for e in FULL_GOLDEN}
    assert names == {"vllm": ["sql", "chat"], "lmdeploy": ["sql", "chat"], "tgi": [], "llamacpp-server": []}


def test_vllm_lora_ranks_round_up_exactly_at_its_steps_and_stop_at_512():
    def rank(r: int) -> tuple[str, list[str]]:
        cmd = translate(EngineSpec(engine="vllm", **MINIMAL, lora={"enabled": True, "max_rank": r}))
        return cmd.argv[cmd.argv.index("--max-lora-rank") + 1], cmd.warnings

    assert rank(16) == ("16", [])
    assert rank(320) == ("320", [])
    assert rank(300)[0] == "320"
    with pytest.raises(Unsupported, match="vLLM serves LoRA ranks up to 512: lora.max_rank 513 is too large"):
        rank(513)


def test_lmdeploy_warns_only_about_the_lora_limits_the_spec_sets():
    spec = EngineSpec(engine="lmdeploy", **MINIMAL, lora={"enabled": True, "max_rank": 64, "adapters": {"a": "/a"}})
    assert translate(spec).warnings[-1] == "lmdeploy sizes LoRA from the adapters it loads: lora.max_rank is not passed"
    spec = EngineSpec(engine="lmdeploy", **MINIMAL, lora={"enabled": True, "adapters": {"a": "/a"}})
    assert translate(spec).warnings == ["lmdeploy serves LoRA adapters on its PyTorch backend only: --backend "
                                        "pytorch is added"]


@pytest.mark.parametrize(("engine", "message"), [
    ("lmdeploy", "lmdeploy serves only the LoRA adapters named at start (--adapters): list them in lora.adapters"),
    ("tgi", "TGI serves only the LoRA adapters named at start (--lora-adapters): list them in lora.adapters"),
    ("llamacpp-server", "llama.cpp serves only the LoRA adapters loaded at start (--lora): list them in "
                        "lora.adapters"),
    ("llama-cpp-python", "llama-cpp-python's server applies at most one LoRA adapter"),
])
def test_lora_an_engine_cannot_serve_is_a_clear_error(engine: str, message: str):
    with pytest.raises(Unsupported) as info:
        translate(EngineSpec(engine=engine, **MINIMAL, lora={"enabled": True}))
    assert str(info.value).startswith(message)


def test_extra_args_that_repeat_a_translated_flag_are_passed_with_a_warning():
    cmd = translate(EngineSpec(engine="vllm", **MINIMAL, extra_args=["--max-model-len=4096", "--enforce-eager"]))
    assert cmd.argv[-2:] == ["--max-model-len=4096", "--enforce-eager"]
    assert cmd.warnings == ["extra_args repeats --max-model-len, which the spec already sets: the engine gets both"]


def test_the_shell_form_quotes_what_a_shell_would_split():
    cmd = translate(EngineSpec(engine="vllm", model="/my models/m", context_length=64, max_sequences=1,
                               env={"A": "x y"}, extra_args=["--chat-template", "{{ a }}"]))
    assert cmd.shell() == ("A='x y' vllm serve '/my models/m' --host 127.0.0.1 --port 8000 --max-model-len 64 "
                           "--max-num-seqs 1 --tensor-parallel-size 1 --chat-template '{{ a }}'")
