"""A spec -> the chosen engine's command line, with the spec's extra_args and env added."""

from __future__ import annotations

from lmops.launch import llamacpp, lmdeploy, tgi, vllm
from lmops.launch.command import EngineCommand
from lmops.launch.spec import EngineSpec


def translate(spec: EngineSpec) -> EngineCommand:
    """The command that starts ``spec.engine`` as the spec says; raises Unsupported for what it cannot do."""
    match spec.engine:
        case "vllm":
            cmd = vllm.command(spec)
        case "lmdeploy":
            cmd = lmdeploy.command(spec)
        case "tgi":
            cmd = tgi.command(spec)
        case "llamacpp-server":
            cmd = llamacpp.server_command(spec)
        case "llama-cpp-python":
            cmd = llamacpp.python_command(spec)
    set_flags = {a for a in cmd.argv if a.startswith("-")}
    for arg in spec.extra_args:
        flag = arg.split("=", 1)[0]
        if flag.startswith("-") and flag in set_flags:
            cmd.warn(f"extra_args repeats {flag}, which the spec already sets: the engine gets both")
    cmd.argv += spec.extra_args
    cmd.env.update(spec.env)
    return cmd
