"""The HTTP client of the web-service tools: its User-Agent, the bound on answers, the proxy from the environment."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lmops.assistant.tools.base import ToolError
from lmops.assistant.tools.http_client import JSONClient
from lmops.assistant.tools.weather import WeatherTool
from lmops.config import WeatherToolConfig
from lmops.testing.fake_openweather import FakeOpenWeather


async def test_user_agent_and_answer_bound(serve):
    seen: list[str] = []

    async def small(request: Request) -> Response:
        seen.append(request.headers.get("user-agent", ""))
        return JSONResponse({"ok": True})

    async def huge(request: Request) -> Response:
        return Response(b"[" + b"1," * (1536 * 1024) + b"1]", media_type="application/json")

    srv = serve(Starlette(routes=[Route("/small", small), Route("/huge", huge)]))
    client = JSONClient("Example", srv.url, timeout=5)
    try:
        answer = await client.get("/small", {"a": "1"})
        assert (answer.status, answer.data, answer.is_json) == (200, {"ok": True}, True)
        assert seen[0].startswith("lmops-assistant/")
        with pytest.raises(ToolError, match="Example sent an answer larger than 2 MiB"):
            await client.get("/huge", {})
    finally:
        await client.close()


async def test_the_proxy_from_the_environment(serve, monkeypatch):
    proxy = FakeOpenWeather()  # answers the absolute-form requests a client sends to an http proxy
    srv = serve(proxy.app())
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", srv.url)
    monkeypatch.setenv("LMOPS_TEST_PROXIED_KEY", "test-key")
    tool = WeatherTool(WeatherToolConfig(base_url="http://weather.invalid", api_key_env="LMOPS_TEST_PROXIED_KEY"))
    try:
        assert (await tool.run({"city": "Paris"})).text.startswith("Paris, FR: 18 °C")
    finally:
        await tool.close()
    assert proxy.requests[0]["q"] == "Paris"
