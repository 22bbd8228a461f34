"""llama.cpp's ``llama-server`` and llama-cpp-python's ``python -m llama_cpp.server``.

llama-server shares one context among its parallel slots, so ``-c`` is context_length × max_sequences; neither has a
memory budget (layers are offloaded whole) nor tensor parallelism (layers are split over the GPUs).
"""

from __future__ import annotations

import sys

from lmops.launch.command import EngineCommand, Unsupported, number
from lmops.launch.spec import EngineSpec

ALL_LAYERS = "999"  # llama-server's -ngl: more layers than any model has = all of them


def _gpu_warnings(cmd: EngineCommand, spec: EngineSpec, engine: str, all_layers: str) -> None:
    if spec.gpu_memory is not None:
        cmd.warn(f"{engine} has no GPU memory budget: gpu_memory {number(spec.gpu_memory)} is not passed; every "
                 f"layer goes to the GPU ({all_layers}) and the KV cache is sized by the context")
    if spec.tensor_parallel > 1:
        cmd.warn(f"{engine} splits layers, not tensors, over every visible GPU: tensor_parallel "
                 f"{spec.tensor_parallel} is not passed (choose the GPUs with CUDA_VISIBLE_DEVICES in env)")


def server_command(spec: EngineSpec) -> EngineCommand:
    """``llama-server``."""
    cmd = EngineCommand([spec.executable or "llama-server", "-m", spec.model])
    cmd.add("--host", spec.host)
    cmd.add("--port", spec.port)
    if spec.served_name:
        cmd.add("--alias", spec.served_name)
    total = spec.context_length * spec.max_sequences
    cmd.add("-c", total)
    cmd.add("--parallel", spec.max_sequences)
    if spec.max_sequences > 1:
        cmd.warn(f"llama.cpp shares one context among its parallel slots: -c {total} = context_length "
                 f"{spec.context_length} × max_sequences {spec.max_sequences}")
    if spec.gpu_memory is not None:
        cmd.add("-ngl", ALL_LAYERS)
    _gpu_warnings(cmd, spec, "llama.cpp", f"-ngl {ALL_LAYERS}")
    lora = spec.lora
    if lora.enabled:
        if not lora.adapters:
            raise Unsupported("llama.cpp serves only the LoRA adapters loaded at start (--lora): "
                              "list them in lora.adapters")
        for path in lora.adapters.values():
            cmd.add("--lora", path)
        cmd.warn("llama.cpp applies its LoRA adapters by id and scale (a request's \"lora\" field or "
                 "POST /lora-adapters), not by model name: the adapters are not served as model names of their own")
        cmd.warn_ignored_lora_limits("llama.cpp", lora)
    return cmd


def python_command(spec: EngineSpec) -> EngineCommand:
    """llama-cpp-python's OpenAI-compatible server (one request at a time)."""
    if spec.lora.enabled:
        raise Unsupported("llama-cpp-python's server applies at most one LoRA adapter, to every request "
                          "(--lora_path), and serves none by name: use llamacpp-server or vllm for LoRA")
    cmd = EngineCommand([spec.executable or sys.executable, "-m", "llama_cpp.server", "--model", spec.model])
    cmd.add("--host", spec.host)
    cmd.add("--port", spec.port)
    if spec.served_name:
        cmd.add("--model_alias", spec.served_name)
    cmd.add("--n_ctx", spec.context_length)
    if spec.max_sequences > 1:
        cmd.warn(f"llama-cpp-python's server decodes one request at a time: max_sequences {spec.max_sequences} "
                 "is not passed, and concurrent requests wait their turn")
    if spec.gpu_memory is not None:
        cmd.add("--n_gpu_layers", "-1")
    _gpu_warnings(cmd, spec, "llama-cpp-python", "--n_gpu_layers -1")
    return cmd
