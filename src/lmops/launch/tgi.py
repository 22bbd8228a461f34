"""Hugging Face TGI (``text-generation-launcher``): it bounds the prompt and the whole sequence apart, and batches by
tokens rather than by sequences."""

from __future__ import annotations

from lmops.launch.command import EngineCommand, Unsupported, number
from lmops.launch.spec import EngineSpec


def command(spec: EngineSpec) -> EngineCommand:
    cmd = EngineCommand([spec.executable or "text-generation-launcher", "--model-id", spec.model])
    cmd.add("--hostname", spec.host)
    cmd.add("--port", spec.port)
    if spec.served_name:
        cmd.warn(f"TGI has no flag for the served model name (it answers requests for any model name): "
                 f"served_name {spec.served_name!r} is not passed")
    c = spec.context_length
    cmd.add("--max-input-tokens", c - 1)
    cmd.add("--max-total-tokens", c)
    cmd.warn(f"TGI bounds the prompt and the whole sequence apart: context_length {c} becomes "
             f"--max-input-tokens {c - 1} --max-total-tokens {c}")
    cmd.add("--max-concurrent-requests", spec.max_sequences)
    cmd.warn(f"TGI batches by tokens, not sequences: --max-concurrent-requests {spec.max_sequences} refuses "
             f"requests beyond {spec.max_sequences} at once instead of queueing them, and how many are decoded "
             "together follows --max-batch-total-tokens, which TGI sizes from the free memory")
    if spec.gpu_memory is not None:
        cmd.add("--cuda-memory-fraction", number(spec.gpu_memory))
    cmd.add("--num-shard", spec.tensor_parallel)
    lora = spec.lora
    if lora.enabled:
        if not lora.adapters:
            raise Unsupported("TGI serves only the LoRA adapters named at start (--lora-adapters): "
                              "list them in lora.adapters")
        cmd.add("--lora-adapters", ",".join(f"{name}={path}" for name, path in lora.adapters.items()))
        cmd.warn("TGI picks a LoRA adapter by the request's adapter_id, not by model name: the adapters are not "
                 "served as model names of their own")
        cmd.warn_ignored_lora_limits("TGI", lora)
    return cmd
