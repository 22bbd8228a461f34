"""What the command line names: targets (``name=URL[,model=M]``) and SLOs (``ttft=500ms,tpot=50ms``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

SLO_METRICS = ("ttft", "tpot", "itl", "e2e", "ttst")  # what an SLO may bound: seconds of the request's record


@dataclass(frozen=True)
class Target:
    name: str
    url: str  # the chat completions endpoint
    model: str | None = None  # None: the first model the endpoint lists

    @property
    def models_url(self) -> str:
        return self.url.rsplit("/chat/completions", 1)[0] + "/models"


def parse_target(text: str, index: int = 0) -> Target:
    """``name=URL[,model=M]`` or a bare URL (named ``t1``, ``t2``...). The URL is a server (``http://h:8000``),
    its API base (``.../v1``) or its chat endpoint (``.../v1/chat/completions``). ValueError when it is not."""
    head, *rest = text.split(",")
    name, sep, url = head.partition("=")
    if not sep or "://" in name:
        name, url = f"t{index + 1}", head
    options: dict[str, str] = {}
    for part in rest:
        key, sep, value = part.partition("=")
        if key.strip() != "model" or not sep or not value.strip():
            raise ValueError(f"in target {text!r}: expected model=NAME after the URL, got {part!r}")
        options["model"] = value.strip()
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"target {text!r}: the URL must start with http:// or https:// and name a host")
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path = (path if path.endswith("/v1") else path + "/v1") + "/chat/completions"
    if not re.fullmatch(r"[\w.:-]+", name.strip()):
        raise ValueError(f"target name {name!r}: letters, digits, '.', ':', '_' and '-' only")
    return Target(name.strip(), f"{parts.scheme}://{parts.netloc}{path}", options.get("model"))


def parse_targets(texts: list[str]) -> list[Target]:
    targets = [parse_target(t, i) for i, t in enumerate(texts)]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"target names must differ: {', '.join(names)}")
    return targets


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")


def parse_slo(text: str) -> dict[str, float]:
    """``"ttft=500ms,tpot=50ms"`` -> {"ttft": 0.5, "tpot": 0.05} (seconds; a bare number is milliseconds)."""
    slo: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in SLO_METRICS:
            raise ValueError(f"SLO {part!r}: expected METRIC=TIME with METRIC one of {', '.join(SLO_METRICS)}")
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"SLO {part!r}: the time is a number with ms or s, e.g. 500ms or 0.5s")
        slo[key] = float(m.group(1)) / (1.0 if m.group(2) == "s" else 1000.0)
    if not slo:
        raise ValueError(f"SLO {text!r}: expected METRIC=TIME pairs, e.g. ttft=500ms,tpot=50ms")
    return slo
