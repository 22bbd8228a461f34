"""An image model named in a batch line is a 400 for that line (it makes no text), never sent to its backend."""

from __future__ import annotations

import io
import json

import openai

from lmops.app import create_app
from lmops.testing.fake_images import FakeImages

from batch_helpers import FAST_BATCH, wait_for


def test_chat_and_embeddings_lines_for_an_image_model_fail_with_400(serve, fake, settings_factory, tmp_path):
    images = FakeImages()
    images_up = serve(images)
    settings = settings_factory([{"name": "fake", "engine": "openai", "replicas": [f"{fake.url}/v1"]},
                                 {"name": "painter", "engine": "openai", "kind": "image",
                                  "replicas": [f"{images_up.url}/v1"]}],
                                batch={"data_dir": str(tmp_path / "data"), **FAST_BATCH})
    srv = serve(create_app(settings))
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    for url, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                      ("/v1/embeddings", {"input": "hi"})):
        lines = [{"custom_id": "img", "method": "POST", "url": url, "body": {"model": "painter", **body}},
                 {"custom_id": "ok", "method": "POST", "url": url, "body": {"model": "fake", **body}}]
        f = client.files.create(file=("in.jsonl", io.BytesIO(b"".join(json.dumps(x).encode() + b"\n"
                                                                        for x in lines))), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint=url, completion_window="24h")  # type: ignore[arg-type]
        b = wait_for(lambda b=b: (got := client.batches.retrieve(b.id)).status == "completed" and got)
        assert b.request_counts.completed == 1 and b.request_counts.failed == 1
        error = json.loads(client.files.content(b.error_file_id or "").text)
        assert error["custom_id"] == "img" and error["response"]["status_code"] == 400
        assert error["response"]["body"]["error"]["code"] == "unsupported_model_capability"
    assert images.requests == []
