"""The server lmops runs on (http_server.py): one socket write per response, nothing lost or reordered."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson
import pytest

from lmops.http_server import CoalescingHttpToolsProtocol, CoalescingTransport
from lmops.testing.fake_openai import FakeOpenAI
from lmops.testing.server import ServerThread


class RecordingTransport(asyncio.Transport):
    """Stands in for a socket transport: remembers each write it is asked to send."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.eof = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else default


async def next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_writes_in_one_loop_turn_leave_in_one_write_in_order() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
    transport.write(bytearray(b"hel"))
    transport.write(b"")
    transport.writelines([memoryview(b"lo")])
    assert inner.writes == []  # held until the loop's next turn
    await next_turn()
    assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]
    transport.write(b"second")
    await next_turn()
    transport.write(b"third")
    await next_turn()
    assert inner.writes[1:] == [b"second", b"third"]  # a later turn's write is not held back or merged


async def test_close_and_eof_send_what_is_held_first_and_a_closed_transport_gets_nothing() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"last answer")
    transport.close()
    assert inner.writes == [b"last answer"] and inner.closed
    await next_turn()  # the scheduled flush finds nothing more to send
    assert inner.writes == [b"last answer"]
    transport.write(b"after close")
    await next_turn()
    assert inner.writes == [b"last answer"]

    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"bye")
    transport.write_eof()
    assert inner.writes == [b"bye"] and inner.eof
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the wrapped transport's


class CountingProtocol(CoalescingHttpToolsProtocol):
    """The served protocol, counting the writes that reach the socket's transport."""

    writes: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_Counted(transport))


class _Counted:
    def __init__(self, transport: Any):
        self._transport = transport

    def write(self, data: bytes) -> None:
        CountingProtocol.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def recv_responses(sock: socket.socket, count: int) -> list[bytes]:
    """Read ``count`` complete Content-Length responses from ``sock``."""
    data = b""
    responses: list[bytes] = []
    while len(responses) < count:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            if len(rest) >= length:
                responses.append(head + sep + rest[:length])
                data = rest[length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection early"
        data += chunk
    return responses


@pytest.fixture
def counted_server():
    CountingProtocol.writes = []
    with ServerThread(FakeOpenAI(), http=CountingProtocol) as srv:
        yield srv


def test_a_plain_answer_is_one_socket_write_and_pipelined_requests_are_answered_in_order(counted_server):
    body = orjson.dumps({"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n%s" % (len(body), body))
    with socket.create_connection(("127.0.0.1", counted_server.port)) as sock:
        sock.sendall(request)
        (first,) = recv_responses(sock, 1)
        assert first.startswith(b"HTTP/1.1 200") and b'"chat.completion"' in first
        assert CountingProtocol.writes == [first]  # status line, headers and body: one write

        models = b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n"
        sock.sendall(request + models + request)  # three pipelined requests
        answers = recv_responses(sock, 3)
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 3
    assert b'"chat.completion"' in answers[0] and b'"list"' in answers[1] and b'"chat.completion"' in answers[2]
    assert b"".join(CountingProtocol.writes[1:]) == b"".join(answers)


def test_a_stream_still_arrives_event_by_event_and_complete(counted_server):
    body = orjson.dumps({"model": "fake", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    with socket.create_connection(("127.0.0.1", counted_server.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                     b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in data.lower()
    assert data.endswith(b"0\r\n\r\n") and b"data: [DONE]" in data  # closed only after the last chunk
    assert data.count(b"data: ") > 3


def test_responses_carry_a_date_but_do_not_name_the_server(counted_server):
    with socket.create_connection(("127.0.0.1", counted_server.port)) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
        (answer,) = recv_responses(sock, 1)
    names = [line.split(b":", 1)[0].lower() for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]]
    assert b"date" in names and b"content-type" in names
    assert b"server" not in names  # uvicorn's "server: uvicorn" is switched off (server_options)
