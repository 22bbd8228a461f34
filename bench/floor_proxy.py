"""The floor: the least a gateway on lmops's stack can cost per proxied request.

uvicorn with lmops's server options (uvloop, httptools, one write per response) runs a bare ASGI app that
forwards each request body to the upstream through lmops's own pooled HTTP/1.1 client and returns the
upstream's answer unchanged (a stream's bytes passed on read by read, as they arrive). It does none of a
gateway's work: no validation, routing, access control, metrics, log line or request record.
``gateway_overhead.py --floor`` measures it beside the bare upstream and lmops, to tell what the stack costs
from what lmops's own work costs.

Run: ``python bench/floor_proxy.py http://127.0.0.1:9000/v1 8100`` (upstream base URL, port to listen on).
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

from lmops.engines.http1 import Pool
from lmops.http_server import server_options
from lmops.testing.fake_openai import receive_body


class FloorProxy:
    """Every request: read the body, POST it to ``<upstream>/chat/completions``, answer with what came back
    (a body asking for ``"stream": true`` is answered as a stream)."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.pool: Pool | None = None  # made on the server's loop, at the first request

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await receive_body(receive)
        if self.pool is None:
            self.pool = Pool(self.upstream, proxy=False)
        answer = await self.pool.request("POST", "/chat/completions", body)
        if b'"stream": true' not in body and b'"stream":true' not in body:
            data = await answer.read()
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": [(b"content-type", b"text/event-stream")]})
        while (data := await answer.next_bytes()) is not None:  # each read passed on as it arrives
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    uvicorn.run(FloorProxy(sys.argv[1]), **server_options(host="127.0.0.1", port=int(sys.argv[2]),
                                                          log_level="warning"))
