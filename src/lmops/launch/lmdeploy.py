"""lmdeploy (``lmdeploy serve api_server``): its memory knob sizes only the KV cache, out of what the weights left."""

from __future__ import annotations

from lmops.launch.command import EngineCommand, Unsupported, number
from lmops.launch.spec import EngineSpec


def command(spec: EngineSpec) -> EngineCommand:
    cmd = EngineCommand([spec.executable or "lmdeploy", "serve", "api_server", spec.model])
    cmd.add("--server-name", spec.host)
    cmd.add("--server-port", spec.port)
    if spec.served_name:
        cmd.add("--model-name", spec.served_name)
    cmd.add("--session-len", spec.context_length)
    cmd.add("--max-batch-size", spec.max_sequences)
    if spec.gpu_memory is not None:
        g = number(spec.gpu_memory)
        cmd.add("--cache-max-entry-count", g)
        cmd.warn(f"lmdeploy's --cache-max-entry-count is the share of the GPU memory left free after the weights "
                 f"that goes to the KV cache, not a budget for the whole engine: gpu_memory {g} is passed as it is, "
                 f"so lmdeploy takes the weights plus {g} of the rest, more than {g} of the GPU in all")
    cmd.add("--tp", spec.tensor_parallel)
    lora = spec.lora
    if lora.enabled:
        if not lora.adapters:
            raise Unsupported("lmdeploy serves only the LoRA adapters named at start (--adapters): "
                              "list them in lora.adapters")
        cmd.add("--backend", "pytorch")
        cmd.warn("lmdeploy serves LoRA adapters on its PyTorch backend only: --backend pytorch is added")
        cmd.add("--adapters", *(f"{name}={path}" for name, path in lora.adapters.items()))
        cmd.adapter_names = list(lora.adapters)
        cmd.warn_ignored_lora_limits("lmdeploy", lora)
    return cmd
