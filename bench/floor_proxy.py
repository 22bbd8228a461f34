"""The floor: the least a gateway on lmops's stack can cost per proxied request.

uvicorn with lmops's server options (uvloop, httptools, one write per response) runs a bare ASGI app that
forwards each request body to the upstream through the client lmops's engines use (one pooled aiohttp session,
set up as ``engines/openai_http.py`` sets it up) and returns the
upstream's answer unchanged (a stream's bytes passed on read by read, as they arrive). It does none of a
gateway's work: no validation, routing, access control, metrics, log line or request record.
``gateway_overhead.py --floor`` measures it beside the bare upstream and lmops, to tell what the stack costs
from what lmops's own work costs.

Run: ``python bench/floor_proxy.py http://127.0.0.1:9000/v1 8100`` (upstream base URL, port to listen on).
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn

from lmops.http_server import server_options
from lmops.testing.fake_openai import receive_body


class FloorProxy:
    """Every request: read the body, POST it to ``<upstream>/chat/completions``, answer with what came back
    (a body asking for ``"stream": true`` is answered as a stream)."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/") + "/chat/completions"
        self.session: aiohttp.ClientSession | None = None  # made on the server's loop, at the first request

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await receive_body(receive)
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=4.0),
                headers={"Content-Type": "application/json"}, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("Accept-Encoding",), timeout=aiohttp.ClientTimeout(total=None, sock_read=60))
        async with self.session.post(self.upstream, data=body) as answer:
            if b'"stream": true' not in body and b'"stream":true' not in body:
                data = await answer.read()
                await send({"type": "http.response.start", "status": answer.status,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(data)).encode())]})
                await send({"type": "http.response.body", "body": data})
                return
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": [(b"content-type", b"text/event-stream")]})
            while data := await answer.content.readany():  # each read passed on as it arrives
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    uvicorn.run(FloorProxy(sys.argv[1]), **server_options(host="127.0.0.1", port=int(sys.argv[2]),
                                                          log_level="warning"))
