"""What a translation gives: the command line, its environment, and what did not carry over one to one."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from lmops.launch.spec import LoraSpec


class Unsupported(ValueError):
    """The spec asks for something this engine cannot do (a message for a person)."""


@dataclass
class EngineCommand:
    """One engine's command line for a spec; ``warnings`` say where the spec's meaning was converted or dropped."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    adapter_names: list[str] = field(default_factory=list)  # LoRA adapters served as model names of their own

    def add(self, flag: str, *values: object) -> None:
        self.argv += [flag, *(str(v) for v in values)]

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def warn_ignored_lora_limits(self, engine: str, lora: LoraSpec) -> None:
        """For engines that size LoRA from the adapters they load: say which limits the spec set in vain."""
        ignored = [f"lora.{name}" for name in ("max_adapters", "max_rank") if name in lora.model_fields_set]
        if ignored:
            self.warn(f"{engine} sizes LoRA from the adapters it loads: {' and '.join(ignored)} "
                      f"{'is' if len(ignored) == 1 else 'are'} not passed")

    def shell(self) -> str:
        """The exact command, shell-quoted, with its environment in front."""
        env = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        return " ".join([*env, shlex.join(self.argv)])


def number(x: float) -> str:
    """0.9 -> '0.9', 1.0 -> '1' (as a person writes it on a command line)."""
    return f"{x:g}"
