"""HTTP GETs of JSON for tools that call web services: one pooled aiohttp session per tool, a timeout for each
request, the proxy from the environment (``engines.proxy``, read once), a bounded answer, and every failure of the
network turned into a ``ToolError`` that names the service (never the URL: it may carry an API key)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from lmops.assistant.tools.base import ToolError
from lmops.engines import proxy as proxies
from lmops.engines.http_body import read_capped

MAX_ANSWER_BYTES = 2 * 1024 * 1024
USER_AGENT = "lmops-assistant/0.1 (self-hosted LLM platform; https://pypi.org/project/lmops/)"


@dataclass(frozen=True)
class Answer:
    status: int
    data: Any  # the parsed JSON; None when the body was not JSON (``is_json`` False)
    is_json: bool


class JSONClient:
    """GET JSON from ``service`` (a name for messages, e.g. "OpenWeather") at ``base_url``."""

    def __init__(self, service: str, base_url: str, timeout: float, *, proxy: str | bool = True):
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._host = urlsplit(self.base_url).netloc
        self._proxy = proxies.select(proxy, self.base_url)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=min(self.timeout, 5.0)),
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        return self._session

    async def get(self, path: str, params: dict[str, str]) -> Answer:
        """GET ``base_url + path`` with ``params``; ``ToolError`` if no whole answer came within the timeout."""
        session = self._open()
        try:
            async with session.get(self.base_url + path, params=params, proxy=self._proxy,
                                   allow_redirects=True, max_redirects=3) as resp:
                body = await read_capped(resp, MAX_ANSWER_BYTES)
                if body is None:
                    raise ToolError(f"{self.service} sent an answer larger than {MAX_ANSWER_BYTES >> 20} MiB")
                status = resp.status
        except ToolError:
            raise
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise ToolError(f"{self.service} did not answer within {self.timeout:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise ToolError(f"{self.service} could not be reached ({self._host}: {reason})") from None
        except aiohttp.TooManyRedirects:
            raise ToolError(f"{self.service} redirected too many times") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ToolError(f"the connection to {self.service} failed ({type(exc).__name__})") from None
        try:
            return Answer(status, json.loads(body), True)
        except (ValueError, RecursionError):
            return Answer(status, None, False)

    def unreadable(self) -> ToolError:
        return ToolError(f"{self.service} sent an answer that could not be read")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
