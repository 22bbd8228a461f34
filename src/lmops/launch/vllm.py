"""vLLM (``vllm serve``): the spec's meanings are vLLM's, so most knobs map one to one."""

from __future__ import annotations

from lmops.launch.command import EngineCommand, Unsupported, number
from lmops.launch.spec import EngineSpec

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's LoRAConfig accepts only these max_lora_rank values


def command(spec: EngineSpec) -> EngineCommand:
    cmd = EngineCommand([spec.executable or "vllm", "serve", spec.model])
    cmd.add("--host", spec.host)
    cmd.add("--port", spec.port)
    if spec.served_name:
        cmd.add("--served-model-name", spec.served_name)
    cmd.add("--max-model-len", spec.context_length)
    cmd.add("--max-num-seqs", spec.max_sequences)
    if spec.gpu_memory is not None:
        cmd.add("--gpu-memory-utilization", number(spec.gpu_memory))
    cmd.add("--tensor-parallel-size", spec.tensor_parallel)
    lora = spec.lora
    if lora.enabled:
        rank = next((r for r in LORA_RANKS if r >= lora.max_rank), None)
        if rank is None:
            raise Unsupported(f"vLLM serves LoRA ranks up to {LORA_RANKS[-1]}: lora.max_rank {lora.max_rank} "
                              "is too large")
        if rank != lora.max_rank:
            cmd.warn(f"vLLM serves LoRA ranks {', '.join(map(str, LORA_RANKS))} only: lora.max_rank "
                     f"{lora.max_rank} is rounded up to --max-lora-rank {rank}")
        cmd.add("--enable-lora")
        cmd.add("--max-loras", lora.max_adapters)
        cmd.add("--max-lora-rank", rank)
        if lora.adapters:
            cmd.add("--lora-modules", *(f"{name}={path}" for name, path in lora.adapters.items()))
            cmd.adapter_names = list(lora.adapters)
    return cmd
