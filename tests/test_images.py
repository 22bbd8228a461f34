"""/v1/images/generations through a real socket with the official openai client, in front of a fake image
backend (lmops.testing.fake_images): both response formats, signed URLs served without a key, failures."""

from __future__ import annotations

import base64
import sqlite3
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest

from lmops.app import create_app
from lmops.images.signing import signing_key
from lmops.testing.fake_images import FakeImages, ImageBehaviour, png
from lmops.testing.fake_openai import FakeOpenAI
from lmops.testing.server import ServerThread


@dataclass
class Gateway:
    srv: ServerThread
    app: Any
    fake: FakeImages

    @property
    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.srv.url}/v1", api_key="none", max_retries=0)


@pytest.fixture
def start(serve, settings_factory, tmp_path):
    """``gw = start(behaviour, **settings)``: a gateway with the image model ``painter`` (upstream name
    ``fake-image``) on a fake image backend, and the text model ``chat``."""

    def run(behaviour: ImageBehaviour | None = None, model: dict[str, Any] | None = None,
            **overrides: Any) -> Gateway:
        fake = FakeImages(behaviour or ImageBehaviour())
        images_up, chat_up = serve(fake), serve(FakeOpenAI())
        models = [{"name": "painter", "engine": "openai", "kind": "image", "upstream_model": "fake-image",
                   "replicas": [f"{images_up.url}/v1"], **(model or {})},
                  {"name": "chat", "engine": "openai", "replicas": [f"{chat_up.url}/v1"]}]
        overrides.setdefault("images", {"data_dir": str(tmp_path / "data")})
        app = create_app(settings_factory(models, **overrides))
        return Gateway(serve(app), app, fake)

    return run


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    return exc.response.json()["error"]


def test_b64_json_answers_the_backends_png_and_lmops_keeps_a_copy(start, tmp_path):
    gw = start(ImageBehaviour(revised_prompt="a red square"))
    got = gw.client.images.generate(model="painter", prompt="a red square", response_format="b64_json",
                                    size="256x256", quality="high", style="vivid", user="u1",
                                    extra_body={"background": "opaque"})
    assert len(got.data) == 1 and got.created > 0 and got.data[0].url is None
    image = base64.b64decode(got.data[0].b64_json or "")
    assert image == gw.fake.images[0] and image.startswith(b"\x89PNG")
    assert got.data[0].revised_prompt == "a red square"
    sent = gw.fake.requests[0]  # the backend is always asked for base64; what lmops does not read passes through
    assert sent == {"model": "fake-image", "prompt": "a red square", "size": "256x256", "quality": "high",
                    "style": "vivid", "user": "u1", "background": "opaque", "response_format": "b64_json"}
    stored = list((tmp_path / "data" / "images").glob("img_*.png"))
    assert [p.read_bytes() for p in stored] == [image]
    assert stored[0].stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "data" / "images" / f"{stored[0].stem}.json").exists()  # its sidecar


def test_a_signed_url_serves_the_exact_png_without_an_api_key(start):
    gw = start()
    got = gw.client.images.generate(model="painter", prompt="a square")  # url is the default
    url = got.data[0].url or ""
    assert url.startswith(f"{gw.srv.url}/v1/images/files/img_") and got.data[0].b64_json is None
    resp = httpx.get(url)  # no Authorization header
    assert resp.status_code == 200, resp.text
    assert resp.content == gw.fake.images[0]
    assert resp.headers["content-type"] == "image/png"
    cache = resp.headers["cache-control"]
    assert cache.startswith("private, max-age=") and 3590 <= int(cache.split("=")[1]) <= 3600


def test_n_2_gives_two_images(start):
    gw = start()
    got = gw.client.images.generate(model="painter", prompt="two squares", n=2)
    assert len(got.data) == 2 and len(gw.fake.images) == 2 and gw.fake.images[0] != gw.fake.images[1]
    assert [httpx.get(d.url or "").content for d in got.data] == gw.fake.images
    b64 = gw.client.images.generate(model="painter", prompt="two squares", n=2, response_format="b64_json")
    assert [base64.b64decode(d.b64_json or "") for d in b64.data] == gw.fake.images[2:]


def test_a_tampered_or_missing_signature_or_expiry_is_a_403_envelope(start):
    gw = start()
    url = gw.client.images.generate(model="painter", prompt="x").data[0].url or ""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    path = parts.path
    other = gw.client.images.generate(model="painter", prompt="y").data[0].url or ""
    signature = query["signature"]
    tampered = [
        f"{path}?expires={query['expires']}&signature={signature[:-1]}{'0' if signature[-1] != '0' else '1'}",
        f"{path}?expires={int(query['expires']) + 3600}&signature={signature}",  # a longer life
        f"{path}?expires={query['expires']}",
        f"{path}?signature={signature}",
        path,
        f"{path}?expires=-5&signature={signature}",
        f"{path}?expires={query['expires']}&signature=%C3%A9",
        f"{urlsplit(other).path}?{parts.query}",  # another image under this one's signature
    ]
    for bad in tampered:
        resp = httpx.get(f"{gw.srv.url}{bad}")
        assert resp.status_code == 403, (bad, resp.text)
        error = resp.json()["error"]
        assert error["type"] == "permission_error" and error["code"] == "invalid_signature", bad
    assert httpx.get(url).status_code == 200


def test_an_expired_url_is_a_403_and_the_ttl_is_configurable(start):
    gw = start(images={"url_ttl_seconds": 100})
    url = gw.client.images.generate(model="painter", prompt="x").data[0].url or ""
    resp = httpx.get(url)
    assert resp.status_code == 200 and 98 <= int(resp.headers["cache-control"].split("=")[1]) <= 100
    signer = gw.app.state.services.images.signer
    signer._clock = lambda: time.time() + 101  # noqa: SLF001 - time passes
    resp = httpx.get(url)
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "url_expired"


def test_a_valid_signature_for_an_image_that_is_gone_is_a_404(start, tmp_path):
    gw = start()
    url = gw.client.images.generate(model="painter", prompt="x").data[0].url or ""
    for path in (tmp_path / "data" / "images").glob("img_*.png"):
        path.unlink()
    resp = httpx.get(url)
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "invalid_request_error"


def test_public_url_is_the_base_of_signed_urls(start):
    gw = start(server={"log_json": True, "public_url": "https://llm.example.com/"})
    url = gw.client.images.generate(model="painter", prompt="x").data[0].url or ""
    assert url.startswith("https://llm.example.com/v1/images/files/img_")
    assert httpx.get(f"{gw.srv.url}{url.removeprefix('https://llm.example.com')}").content == gw.fake.images[0]


def test_an_image_the_backend_answers_as_a_url_is_downloaded_and_stored(start):
    gw = start(ImageBehaviour(answer_urls=True))
    got = gw.client.images.generate(model="painter", prompt="x", response_format="b64_json")
    assert base64.b64decode(got.data[0].b64_json or "") == gw.fake.images[0] and gw.fake.downloads == 1
    url = gw.client.images.generate(model="painter", prompt="x").data[0].url or ""
    assert url.startswith(gw.srv.url) and httpx.get(url).content == gw.fake.images[1]


@pytest.mark.parametrize("behaviour, status", [
    (ImageBehaviour(fail=True), 502),
    (ImageBehaviour(malformed=True), 502),
    (ImageBehaviour(not_image=True), 502),
    (ImageBehaviour(answer={"created": 1, "data": "not a list"}), 502),
    (ImageBehaviour(answer={"created": 1, "data": []}), 502),
    (ImageBehaviour(answer={"created": 1, "data": [{"b64_json": "***"}]}), 502),
    (ImageBehaviour(answer={"created": 1, "data": [{"url": "file:///etc/passwd"}]}), 502),
    (ImageBehaviour(answer={"created": 1, "data": [{"url": "http://127.0.0.1:9/none.png"}]}), 502),
    (ImageBehaviour(answer=[1, 2]), 502),
])
def test_a_failing_or_malformed_backend_is_a_502_envelope(start, behaviour, status, tmp_path):
    gw = start(behaviour)
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client.images.generate(model="painter", prompt="x")
    assert caught.value.status_code == status
    error = _error(caught.value)
    assert error["type"] == "upstream_error" and error["message"]
    assert _records(tmp_path) == [("images.generations", "painter", status)]


def test_an_image_larger_than_max_image_bytes_is_a_502(start):
    big = base64.b64encode(png() + b"\0" * 4096).decode()
    gw = start(ImageBehaviour(answer={"created": 1, "data": [{"b64_json": big}]}),
               images={"max_image_bytes": 2048})
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client.images.generate(model="painter", prompt="x")
    assert caught.value.status_code == 502 and "more than the 2048" in _error(caught.value)["message"]


def test_a_silent_backend_is_a_504(start):
    gw = start(ImageBehaviour(hang=True), model={"timeout": 0.3})
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client.images.generate(model="painter", prompt="x")
    assert caught.value.status_code == 504


def test_models_of_the_wrong_kind_are_a_400_and_unknown_ones_a_404(start):
    gw = start()
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client.images.generate(model="chat", prompt="x")
    assert _error(caught.value)["code"] == "unsupported_model_capability"
    assert "does not generate images" in _error(caught.value)["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client.chat.completions.create(model="painter", messages=[{"role": "user", "content": "hi"}])
    assert _error(caught.value)["code"] == "unsupported_model_capability"
    with pytest.raises(openai.BadRequestError):
        gw.client.embeddings.create(model="painter", input="hi")
    with pytest.raises(openai.BadRequestError):
        gw.client.completions.create(model="painter", prompt="hi")
    with pytest.raises(openai.NotFoundError) as missing:
        gw.client.images.generate(model="nope", prompt="x")
    assert _error(missing.value)["code"] == "model_not_found"
    assert gw.fake.requests == []


@pytest.mark.parametrize("body, param", [
    ({"model": "painter"}, "prompt"),
    ({"model": "painter", "prompt": ""}, "prompt"),
    ({"model": "painter", "prompt": "x", "n": 11}, "n"),
    ({"model": "painter", "prompt": "x", "n": 0}, "n"),
    ({"model": "painter", "prompt": "x", "response_format": "png"}, "response_format"),
    ({"model": "painter", "prompt": "x", "stream": True}, "stream"),
])
def test_bad_requests_are_a_400_naming_the_field(start, body, param):
    gw = start()
    resp = httpx.post(f"{gw.srv.url}/v1/images/generations", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert gw.fake.requests == []


def test_gateways_sharing_the_secret_and_directory_serve_each_others_urls(start, monkeypatch):
    monkeypatch.setenv("LMOPS_SECRET", "s" * 32)
    first, second = start(), start()
    assert first.app.state.services.images.signer._key == signing_key(b"s" * 32)  # noqa: SLF001
    url = first.client.images.generate(model="painter", prompt="x").data[0].url or ""
    resp = httpx.get(url.replace(first.srv.url, second.srv.url))
    assert resp.status_code == 200 and resp.content == first.fake.images[0]


def test_without_a_secret_each_process_signs_with_its_own_key(start, monkeypatch):
    monkeypatch.delenv("LMOPS_SECRET", raising=False)
    first, second = start(), start()
    url = first.client.images.generate(model="painter", prompt="x").data[0].url or ""
    assert httpx.get(url).status_code == 200
    assert httpx.get(url.replace(first.srv.url, second.srv.url)).status_code == 403


def test_images_that_cannot_be_stored_are_a_500_envelope_with_a_record(start, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    gw = start(images={"data_dir": str(blocker)})
    with pytest.raises(openai.InternalServerError) as caught:
        gw.client.images.generate(model="painter", prompt="x")
    assert _error(caught.value)["code"] == "internal_error" and len(gw.fake.requests) == 1
    assert _records(tmp_path) == [("images.generations", "painter", 500)]


def _records(tmp_path) -> list[tuple[str, str, int]]:
    """The request records written so far (they are batched: wait for them a little)."""
    deadline = time.monotonic() + 5
    while True:
        with sqlite3.connect(tmp_path / "lmops.db") as db:
            rows = db.execute("SELECT endpoint, model, status FROM request_records ORDER BY id").fetchall()
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)
