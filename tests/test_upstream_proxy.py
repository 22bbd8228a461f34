"""The upstream engine (engines/openai_http.py, on aiohttp) through an HTTP proxy, chosen from the environment as
httpx does (engines/proxy.py).

A small real forwarding proxy runs in the test's event loop: absolute-form requests are re-sent to their
target in origin form (and recorded), CONNECT opens a tunnel; it can require Basic credentials.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools
import pytest

from lmops.engines.base import EngineError, EngineRejected, EngineTimeout, EngineUnavailable
from lmops.engines.openai_http import OpenAIHTTPEngine
from lmops.testing.fake_openai import FakeOpenAI
from lmops.testing.server import ServerThread, free_port

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "REQUEST_METHOD")


@dataclass
class Seen:
    """A request as the proxy received it."""

    method: str
    target: str
    headers: dict[str, str]


class _Requests:
    """httptools callbacks collecting the complete requests of a client connection."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done: list[tuple[Seen, bytes]] = []

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", {}, b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done.append((Seen(self.parser.get_method().decode(), self.url.decode(), self.headers), self.body))


@dataclass
class ForwardProxy:
    """A forwarding HTTP proxy on 127.0.0.1 (``silent``: accepts connections and never answers)."""

    credentials: tuple[str, str] | None = None
    silent: bool = False
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0

    async def start(self) -> ForwardProxy:
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.credentials is None:
            return True
        expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        return headers.get("proxy-authorization") == expected

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        self._tasks.add(task := asyncio.current_task())  # type: ignore[arg-type]
        try:
            if self.silent:
                await reader.read()
                return
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"CONNECT "):
                await self._tunnel(head, reader, writer)
            else:
                await self._forward(head, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _tunnel(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines = head.decode().split("\r\n")
        target = lines[0].split()[1]
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        self.seen.append(Seen("CONNECT", target, headers))
        if not self._authorized(headers):
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
            return
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self._writers.add(up_writer)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def _forward(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests = _Requests()
        upstream: asyncio.StreamWriter | None = None
        data = head
        while data:
            requests.parser.feed_data(data)
            for seen, body in requests.done:
                self.seen.append(seen)
                if not self._authorized(seen.headers):
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
                    return
                url = urlsplit(seen.target)
                if upstream is None:
                    up_reader, upstream = await asyncio.open_connection(url.hostname, url.port or 80)
                    self._writers.add(upstream)
                    pump = asyncio.create_task(_pipe(up_reader, writer))
                    self._tasks.add(pump)
                origin = url.path + (f"?{url.query}" if url.query else "")
                fields = "".join(f"{k}: {v}\r\n" for k, v in seen.headers.items() if k != "proxy-authorization")
                upstream.write(f"{seen.method} {origin} HTTP/1.1\r\n{fields}\r\n".encode() + body)
            requests.done.clear()
            data = await reader.read(65536)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture(scope="module")
def upstream():
    with ServerThread(FakeOpenAI()) as srv:
        yield srv


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory):
    """FakeOpenAI over TLS with a fresh self-signed certificate for 127.0.0.1: (base URL, client SSL context)."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    with ServerThread(FakeOpenAI(), ssl_certfile=str(cert), ssl_keyfile=str(key)) as srv:
        yield f"https://127.0.0.1:{srv.port}/v1", ssl.create_default_context(cafile=str(cert))


@pytest.fixture
async def proxy():
    proxy = await ForwardProxy().start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def auth_proxy():
    proxy = await ForwardProxy(credentials=("user", "p@ss word")).start()
    yield proxy
    await proxy.stop()


@asynccontextmanager
async def engine(base_url: str, **options: Any) -> AsyncIterator[OpenAIHTTPEngine]:
    eng = OpenAIHTTPEngine(base_url, **options)
    await eng.start()
    try:
        yield eng
    finally:
        await eng.close()


async def chat(eng: OpenAIHTTPEngine) -> dict:
    return await eng.chat_completion(CHAT)


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
async def test_http_upstream_through_the_proxy_from_the_environment(upstream, proxy, monkeypatch, variable) -> None:
    monkeypatch.setenv(variable, proxy.url())
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")  # for https:// upstreams only: not used here
    async with engine(upstream.url + "/v1") as eng:
        for _ in range(3):
            assert (await chat(eng))["object"] == "chat.completion"
        batches = [batch async for batch in eng.stream_chat_completion(CHAT)]
        assert batches[-1][-1]["usage"]["completion_tokens"] == 10
    host = urlsplit(upstream.url).netloc
    assert [(s.method, s.target) for s in proxy.seen] == [("POST", f"http://{host}/v1/chat/completions")] * 4
    assert all(s.headers["host"] == host for s in proxy.seen)
    assert "proxy-authorization" not in proxy.seen[0].headers
    assert proxy.connections == 1  # keep-alive connections to the proxy are reused


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost, 127.0.0.1", "*", ".0.0.1"])
async def test_no_proxy_bypasses_the_proxy(upstream, proxy, monkeypatch, no_proxy) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    monkeypatch.setenv("NO_PROXY", no_proxy)
    async with engine(upstream.url + "/v1") as eng:
        await chat(eng)
    assert proxy.seen == [] and proxy.connections == 0


async def test_no_proxy_for_other_hosts_still_uses_the_proxy(upstream, proxy, monkeypatch) -> None:
    monkeypatch.setenv("http_proxy", proxy.url())
    monkeypatch.setenv("no_proxy", "example.com,10.0.0.1")
    async with engine(upstream.url + "/v1") as eng:
        await chat(eng)
    assert len(proxy.seen) == 1


async def test_explicit_proxy_and_disabling_the_environment(upstream, proxy, monkeypatch) -> None:
    async with engine(upstream.url + "/v1", proxy=proxy.url()) as eng:  # explicit: used, whatever the environment
        await chat(eng)
    assert len(proxy.seen) == 1
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    async with engine(upstream.url + "/v1", proxy=False) as eng:
        await chat(eng)
    assert len(proxy.seen) == 1


async def test_the_environment_is_read_when_the_engine_is_built(upstream, proxy, monkeypatch) -> None:
    eng = OpenAIHTTPEngine(upstream.url + "/v1")
    monkeypatch.setenv("HTTP_PROXY", proxy.url())  # too late for this engine: no look-up per request
    await eng.start()
    try:
        await chat(eng)
    finally:
        await eng.close()
    assert proxy.seen == []


async def test_proxy_credentials_are_sent(upstream, auth_proxy, monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", auth_proxy.url("user:p%40ss%20word"))
    async with engine(upstream.url + "/v1", api_key="sk-upstream") as eng:
        await chat(eng)
    seen = auth_proxy.seen[0].headers
    assert seen["proxy-authorization"] == "Basic " + base64.b64encode(b"user:p@ss word").decode()
    assert seen["authorization"] == "Bearer sk-upstream"

    async with engine(upstream.url + "/v1", proxy=auth_proxy.url("user:wrong")) as eng:
        with pytest.raises(EngineError) as err:
            await chat(eng)
    # the proxy's refusal is the gateway's problem (502), not the client's (it is not passed on as a 407)
    assert not isinstance(err.value, EngineRejected) and err.value.status == 502 and "407" in err.value.message


async def test_proxy_down_is_a_connect_error(tls_upstream, monkeypatch) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    async with engine("http://127.0.0.1:9/v1", proxy=down) as eng:
        with pytest.raises(EngineUnavailable, match="through the proxy"):
            await chat(eng)
        assert not await eng.health()
    monkeypatch.setenv("HTTPS_PROXY", down)
    url, context = tls_upstream
    async with engine(url, ssl_context=context) as eng:
        with pytest.raises(EngineUnavailable, match="through the proxy"):
            await chat(eng)


async def test_a_silent_proxy_is_a_timeout(tls_upstream) -> None:
    silent = await ForwardProxy(silent=True).start()
    try:
        url, context = tls_upstream
        for base in ("http://127.0.0.1:9/v1",  # the request was sent to the proxy: no answer
                     url):  # no answer to CONNECT
            async with engine(base, proxy=silent.url(), ssl_context=context, connect_timeout=0.2, timeout=0.2) as eng:
                started = asyncio.get_running_loop().time()
                with pytest.raises(EngineTimeout, match="through the proxy"):
                    await chat(eng)
                assert asyncio.get_running_loop().time() - started < 2
    finally:
        await silent.stop()


async def test_https_upstream_through_a_connect_tunnel(tls_upstream, auth_proxy, monkeypatch) -> None:
    url, context = tls_upstream
    authority = urlsplit(url).netloc
    monkeypatch.setenv("HTTPS_PROXY", auth_proxy.url("user:p%40ss%20word"))
    monkeypatch.setenv("NO_PROXY", "example.com")
    async with engine(url, ssl_context=context) as eng:
        for _ in range(3):
            assert (await chat(eng))["object"] == "chat.completion"
    assert [(s.method, s.target) for s in auth_proxy.seen] == [("CONNECT", authority)]  # one tunnel, kept alive
    assert auth_proxy.seen[0].headers["proxy-authorization"].startswith("Basic ")

    # a refused CONNECT is a connect error naming the proxy's answer
    async with engine(url, ssl_context=context, proxy=auth_proxy.url()) as eng:
        with pytest.raises(EngineUnavailable, match="407"):
            await chat(eng)

    # TLS is verified against the upstream through the tunnel
    async with engine(url, proxy=auth_proxy.url("user:p%40ss%20word")) as eng:  # system CAs: the test cert fails
        with pytest.raises(EngineUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await chat(eng)


async def test_https_upstream_ignores_http_proxy(tls_upstream, proxy, monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    url, context = tls_upstream
    async with engine(url, ssl_context=context) as eng:
        await chat(eng)
    assert proxy.seen == []


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "all_proxy"])
def test_unsupported_proxy_scheme_is_a_value_error(monkeypatch, variable) -> None:
    monkeypatch.setenv(variable, "socks5://127.0.0.1:1080")
    with pytest.raises(ValueError, match=rf"socks5://127.0.0.1:1080.*{variable.lower()}"):
        OpenAIHTTPEngine("https://api.example.com/v1")
    with pytest.raises(ValueError, match="only http:// proxies"):
        OpenAIHTTPEngine("http://api.example.com/v1", proxy="https://proxy.example.com:3128")
    OpenAIHTTPEngine("http://api.example.com/v1", proxy=False)  # the environment is not read
