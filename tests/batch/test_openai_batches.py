"""The official openai client drives /v1/files and /v1/batches through every status."""

from __future__ import annotations

import io
import json
from email.message import Message
from email.utils import collapse_rfc2231_value

import httpx
import openai
import pytest

from batch_helpers import wait_for


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(i: int, model: str = "fake", **body) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"hello {i}"}], **body}}


def finished(client: openai.OpenAI, batch_id: str, statuses=("completed", "failed", "expired", "cancelled")):
    return wait_for(lambda: (b := client.batches.retrieve(batch_id)).status in statuses and b)


def test_files_upload_list_content_delete(client):
    data = jsonl([chat_line(i) for i in range(3)])
    f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert f.object == "file" and f.bytes == len(data) and f.filename == "in.jsonl" and f.purpose == "batch"
    assert client.files.retrieve(f.id).id == f.id
    assert f.id in [x.id for x in client.files.list().data]
    assert client.files.content(f.id).content == data
    assert client.files.delete(f.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


def download_name(content_disposition: str) -> str:
    """The name a client saves a download under: ``filename*`` when the header has it (RFC 6266), read by the
    standard library's RFC 2231 parser; the plain ``filename`` must be ASCII."""
    header = Message()
    header["content-disposition"] = content_disposition
    params = header.get_params(header="content-disposition") or []
    plain = [v for k, v in params if k == "filename" and isinstance(v, str)]
    assert plain and plain[0].isascii() and plain[0].isprintable(), content_disposition
    extended = [v for k, v in params if k == "filename" and isinstance(v, tuple)]
    return collapse_rfc2231_value(extended[0]) if extended else plain[0]


@pytest.mark.parametrize("name", ["数据.jsonl", "🚀 launch.jsonl", 'a "quoted"; name.jsonl', "plain.jsonl"])
def test_file_names_of_any_script_round_trip(client, name):
    data = jsonl([chat_line(1)])
    f = client.files.create(file=(name, io.BytesIO(data)), purpose="batch")
    assert f.filename == name
    assert client.files.retrieve(f.id).filename == name
    assert [x.filename for x in client.files.list().data if x.id == f.id] == [name]
    download = client.files.with_raw_response.content(f.id)
    assert download.http_response.status_code == 200
    assert download.content == data
    assert download_name(download.headers["content-disposition"]) == name


def test_batch_runs_to_completed_with_openai_output_format(client):
    lines = [chat_line(i) for i in range(20)] + [chat_line(99, max_tokens=999999)]  # the last: engine-side 400
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"project": "test"})
    assert b.status == "validating" and b.metadata == {"project": "test"}
    b = finished(client, b.id)
    assert b.status == "completed", b
    assert b.request_counts.total == 21 and b.request_counts.completed == 20 and b.request_counts.failed == 1
    for stamp in ("created_at", "in_progress_at", "finalizing_at", "completed_at"):
        assert getattr(b, stamp), stamp
    assert b.usage.output_tokens == 20 * 10 and b.usage.input_tokens == 20 * 7
    out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(20)]
    first = out[0]
    assert set(first) == {"id", "custom_id", "response", "error"} and first["error"] is None
    assert first["id"].startswith("batch_req_")
    assert first["response"]["status_code"] == 200 and first["response"]["request_id"]
    answer = first["response"]["body"]["choices"][0]["message"]["content"]
    assert answer == "The quick brown fox jumps over the lazy dog."
    assert first["response"]["body"]["model"] == "fake"
    errors = [json.loads(x) for x in client.files.content(b.error_file_id).text.splitlines()]
    assert len(errors) == 1 and errors[0]["custom_id"] == "req-99"
    assert errors[0]["response"]["status_code"] == 400 and "error" in errors[0]["response"]["body"]
    assert client.files.retrieve(b.output_file_id).purpose == "batch_output"
    assert b.id in [x.id for x in client.batches.list().data]
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(b.id)  # already completed


def test_invalid_lines_fail_the_batch_with_line_numbers(client):
    lines = [json.dumps(chat_line(1)).encode(), b"{not json", json.dumps(chat_line(1)).encode(),
             json.dumps({**chat_line(4), "url": "/v1/embeddings"}).encode(),
             json.dumps(chat_line(5, model="nope")).encode(),
             json.dumps({**chat_line(6), "body": {"model": "fake"}}).encode()]
    f = client.files.create(file=("in.jsonl", io.BytesIO(b"\n".join(lines))), purpose="batch")
    b = finished(client, client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                               completion_window="24h").id)
    assert b.status == "failed" and b.failed_at
    errs = {e.line: e for e in b.errors.data}
    assert errs[2].code == "invalid_json_line"
    assert errs[3].code == "duplicate_custom_id"
    assert errs[4].code == "mismatched_endpoint"
    assert errs[5].code == "model_not_found"
    assert errs[6].param == "body.messages" and "Line 6" in errs[6].message


def test_cancel_while_in_progress(lmops_server, fake):
    fake.engine.behaviour.delay = 0.2
    srv = lmops_server(concurrency=4)
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line(i) for i in range(400)]))),
                            purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(lambda: client.batches.retrieve(b.id).request_counts.completed > 0)
    c = client.batches.cancel(b.id)
    assert c.status in ("cancelling", "cancelled") and c.cancelling_at
    b = finished(client, b.id)
    assert b.status == "cancelled" and b.cancelled_at
    assert 0 < b.request_counts.completed < 400
    out = client.files.content(b.output_file_id).text.splitlines()
    assert len(out) == b.request_counts.completed
    assert client.batches.cancel(b.id).status == "cancelled"  # cancelling again changes nothing


def test_batch_errors_and_pagination(client):
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch")
    ids = [client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                 completion_window="24h").id for _ in range(5)]
    page = client.batches.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    seen = [b.id for b in client.batches.list(limit=2)]  # iterating a page follows the cursor
    assert sorted(seen) == sorted(ids)


def test_upload_over_the_limit_is_413(lmops_server):
    srv = lmops_server(max_upload_bytes=2048)
    r = httpx.post(f"{srv.url}/v1/files", data={"purpose": "batch"},
                   files={"file": ("big.jsonl", b"x" * 10_000)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    ok = httpx.post(f"{srv.url}/v1/files", data={"purpose": "batch"}, files={"file": ("s.jsonl", b"{}\n")})
    assert ok.status_code == 200


@pytest.mark.parametrize("body", [
    b"--B\r\nNone--B--\r\n",  # a part without headers
    # cut off mid-file, after a valid purpose: not taken for a whole file
    b"--B\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
    b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n{}\n",
    b"--B\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--B\r\nbad header\r\n\r\n",
])
def test_a_malformed_multipart_upload_is_400_and_leaves_no_file(lmops_server, tmp_path, body):
    srv = lmops_server()
    r = httpx.post(f"{srv.url}/v1/files", content=body, headers={"content-type": "multipart/form-data; boundary=B"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_multipart"
    files = tmp_path / "data" / "files"
    assert not files.exists() or list(files.iterdir()) == []
    assert httpx.get(f"{srv.url}/v1/files").json()["data"] == []


def test_a_file_with_a_byte_order_mark_and_crlf_lines_runs(client):
    """What Windows tools write: a UTF-8 BOM first, CRLF line ends, a blank line at the end."""
    data = b"\xef\xbb\xbf" + b"\r\n".join(json.dumps(chat_line(i)).encode() for i in range(3)) + b"\r\n\r\n"
    f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = finished(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3, done.errors
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == ["req-0", "req-1", "req-2"]
