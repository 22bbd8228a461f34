"""What ``lmops serve`` checks before it starts serving: problems a user can fix, said plainly, instead of a
traceback from inside the app's startup (or a crash at the first request)."""

from __future__ import annotations

from lmops.access.secret import secret_problem
from lmops.access.service import admin_key_problem
from lmops.config import EngineKind, Settings
from lmops.engines.llamacpp_check import EngineBuildBroken, ensure_engine_build_works


def startup_problems(settings: Settings) -> list[str]:
    """Every problem found (empty: start). Runs the embedded engine's build check when a model uses it."""
    problems: list[str] = []
    if settings.access.enabled:
        problems += [p for p in (admin_key_problem(settings), secret_problem(settings)) if p]
    embedded = [m for m in settings.models if m.engine == EngineKind.embedded]
    if embedded:
        try:
            ensure_engine_build_works(fallback_model=embedded[0].model_path)
        except EngineBuildBroken as exc:
            problems.append(str(exc))
    if any(m.engine is EngineKind.hf for m in settings.models):
        from lmops.engines.hf_transformers import hf_packages_problem

        problems += [p for p in (hf_packages_problem(),) if p]
    return problems
