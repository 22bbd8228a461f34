"""lmops: a self-hosted platform for running large language models in production."""

from pathlib import Path

from lmops.compiled import use_sources_if_needed

__version__ = "0.1.0"
BUILD = use_sources_if_needed(__name__, Path(__file__).parent)  # the request path: "compiled" (mypyc) or "source"
