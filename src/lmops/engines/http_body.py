"""Reading an aiohttp response whole, up to a size: what lmops accepts from upstreams and tool services."""

from __future__ import annotations

import aiohttp


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The whole body of ``resp``, or None as soon as it is known to be more than ``cap`` bytes (by its
    Content-Length, or as it arrives): the caller says what that means, without the rest being read."""
    if resp.content_length is not None and resp.content_length > cap:
        return None
    parts: list[bytes] = []
    size = 0
    async for piece in resp.content.iter_any():
        size += len(piece)
        if size > cap:
            return None
        parts.append(piece)
    return b"".join(parts)
