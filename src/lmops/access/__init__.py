"""Access and billing: principals, API keys, limits, budgets (no HTTP here)."""

from pathlib import Path

from lmops.access.compiled import use_sources_if_needed

BUILD = use_sources_if_needed(__name__, Path(__file__).parent)  # "compiled" (mypyc) or "source"
