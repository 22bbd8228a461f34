"""HTTP proxies for the upstream client (``engines.http1``): choosing one, and tunnelling through one.

A proxy is chosen once per pool, as httpx does with ``trust_env``: ``http_proxy`` / ``HTTP_PROXY`` for
http:// upstreams, ``https_proxy`` / ``HTTPS_PROXY`` for https:// ones, ``all_proxy`` / ``ALL_PROXY``
for either when those are unset, and none for a host that ``no_proxy`` / ``NO_PROXY`` names (read with
``urllib.request``, which gives the lowercase spelling precedence). Only http:// proxies are supported.

Through a proxy, http:// requests go to the proxy in absolute form (``POST http://host:port/path``);
https:// ones go through a ``CONNECT host:port`` tunnel, upgraded to TLS with the upstream.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment  # type: ignore[attr-defined]


class ProxyRefused(OSError):
    """The proxy answered CONNECT with something other than 2xx (reported by the pool as a ConnectError)."""


@dataclass(frozen=True)
class Proxy:
    """An http:// proxy: where to connect, and the ``proxy-authorization`` header line (or b"")."""

    host: str
    port: int
    auth_header: bytes = b""

    @classmethod
    def parse(cls, url: str, source: str = "the proxy argument") -> Proxy:
        """Parse ``http://[user:password@]host[:port]`` (scheme optional); ValueError for any other scheme."""
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme.lower() != "http" or not parts.hostname:
            raise ValueError(f"unsupported proxy {url!r} (from {source}): only http:// proxies are supported")
        auth = b""
        if parts.username is not None:
            user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            auth = b"proxy-authorization: Basic " + base64.b64encode(user_pass) + b"\r\n"
        return cls(parts.hostname, parts.port or 80, auth)


def select(proxy: str | bool, scheme: str, host: str, port: int) -> Proxy | None:
    """The proxy for an upstream: ``proxy`` itself when a URL, from the environment when True, none when False."""
    if isinstance(proxy, str):
        return Proxy.parse(proxy)
    if not proxy:
        return None
    proxies = getproxies_environment()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or proxy_bypass_environment(f"{host}:{port}", proxies):
        return None
    name = f"{scheme}_proxy" if proxies.get(scheme) else "all_proxy"
    return Proxy.parse(url, f"{name} / {name.upper()} in the environment")


class _ConnectReply(asyncio.Protocol):
    """Reads the proxy's reply to CONNECT, up to the end of its header block."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.done: asyncio.Future[bytes] = loop.create_future()
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data
        if (b"\r\n\r\n" in self.data or len(self.data) > 65536) and not self.done.done():
            self.done.set_result(self.data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ProxyRefused("the proxy closed the connection before answering CONNECT"))


async def open_tunnel(proxy: Proxy, host: str, port: int, ssl_context: ssl.SSLContext,
                      protocol: asyncio.Protocol) -> None:
    """Connect to ``host:port`` through ``proxy`` with CONNECT, then TLS; ``protocol`` gets the TLS transport.

    Raises OSError (ProxyRefused when the proxy answers other than 2xx) or ssl.SSLError.
    """
    loop = asyncio.get_running_loop()
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    transport, reply = await loop.create_connection(lambda: _ConnectReply(loop), proxy.host, proxy.port)
    try:
        transport.write(f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n".encode()
                        + proxy.auth_header + b"\r\n")
        status_line = (await reply.done).split(b"\r\n", 1)[0].decode("latin-1")
        status = status_line.split(None, 2)
        if len(status) < 2 or not status[0].startswith("HTTP/") or not status[1].startswith("2"):
            raise ProxyRefused(f"the proxy answered CONNECT {authority} with {status_line!r}")
        tls = await loop.start_tls(transport, protocol, ssl_context, server_hostname=host)
    except BaseException:
        transport.close()
        raise
    if tls is None:  # only when the connection closed during the handshake
        raise ConnectionResetError(f"the connection to {authority} closed during the TLS handshake")
    protocol.connection_made(tls)  # start_tls does not call it
