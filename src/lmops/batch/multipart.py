"""Stream a multipart/form-data upload: the file part goes to disk chunk by chunk, never whole into memory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from lmops.protocol.errors import ClientClosed, InvalidRequest, PayloadTooLarge

MAX_FIELD_BYTES = 64 * 1024


@dataclass
class Upload:
    """What a multipart upload held: its small text fields and the one file part, already on disk."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    field_name: str | None = None
    path: Path | None = None
    size: int = 0


def upload_filename(raw: bytes) -> str:
    """The file name a multipart part was sent with, as its client meant it.

    Clients send the name's UTF-8 bytes as they are, and a double quote as ``%22`` (WHATWG HTML's form
    encoding, which browsers and httpx, hence the ``openai`` client, follow): that one escape is decoded, so a
    name with a quote comes back whole (a name that really holds ``%22`` is read as a quote too, as the HTML
    standard implies). Other escapes (control characters) are left as sent. Only the last path segment is kept.
    """
    name = raw.decode("utf-8", "replace").replace("%22", '"')
    return os.path.basename(name) or "upload"


class _Receiver:
    """python-multipart callbacks that route each part: text fields to memory (bounded), the file to disk."""

    def __init__(self, dest: Path, max_bytes: int):
        self.dest, self.max_bytes = dest, max_bytes
        self.upload = Upload()
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._file: IO[bytes] | None = None
        self.complete = False  # the closing boundary arrived: nothing was cut off

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._hfield, "on_header_value": self._hvalue,
                "on_header_end": self._hend, "on_headers_finished": self._headers_done,
                "on_part_data": self._data, "on_part_end": self._end, "on_end": self._complete}

    def _complete(self) -> None:
        self.complete = True

    def _begin(self) -> None:
        self._headers, self._value, self._name = {}, bytearray(), None

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _hend(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            if self._file is not None:
                raise InvalidRequest("Send exactly one file per upload.", param="file")
            self.upload.filename = upload_filename(options[b"filename"])
            self.upload.field_name = self._name
            self.upload.path = self.dest
            self._file = open(self.dest, "wb")  # noqa: SIM115 - closed in finish()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None and self.upload.field_name == self._name and not self._file.closed:
            self.upload.size += end - start
            if self.upload.size > self.max_bytes:
                raise PayloadTooLarge(f"The file exceeds the upload limit of {self.max_bytes} bytes.")
            self._file.write(data[start:end])
        else:
            self._value += data[start:end]
            if len(self._value) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"Form field '{self._name}' is too long.")

    def _end(self) -> None:
        if self._file is not None and self.upload.field_name == self._name and not self._file.closed:
            self._file.close()
        elif self._name:
            self.upload.fields[self._name] = self._value.decode("utf-8", "replace")

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()


async def receive_multipart(request: Request, dest: Path, max_bytes: int) -> Upload:
    """Parse the request body as multipart/form-data; the file part is written to ``dest``.

    Raises 413 as soon as the file grows past ``max_bytes`` (the whole body's size is bounded before, by
    ``BodyLimitMiddleware``), 400 when the body is not multipart or is malformed, 499 when the client goes away
    before the body is whole. On any failure ``dest`` is removed.
    """
    ctype, params = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise InvalidRequest("Send the file as multipart/form-data.", code="invalid_content_type")
    receiver = _Receiver(dest, max_bytes)
    parser = MultipartParser(params[b"boundary"], receiver.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        if not receiver.complete:
            raise InvalidRequest("The multipart/form-data body ended before its closing boundary: the upload is "
                                 "incomplete.", code="invalid_multipart")
    except BaseException as exc:
        receiver.close()
        dest.unlink(missing_ok=True)
        if isinstance(exc, ClientDisconnect):
            raise ClientClosed("The client disconnected during the upload.") from None
        if isinstance(exc, FormParserError):
            raise InvalidRequest(f"The multipart/form-data body is malformed: {exc}",
                                 code="invalid_multipart") from None
        raise
    receiver.close()
    return receiver.upload
