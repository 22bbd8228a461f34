"""The weather tool against a fake OpenWeather (current weather API 2.5) on a real socket."""

from __future__ import annotations

import time

import pytest

from lmops.assistant.tools.base import ToolError
from lmops.assistant.tools.weather import WeatherTool
from lmops.config import WeatherToolConfig
from lmops.testing.fake_openweather import FakeOpenWeather
from lmops.testing.server import free_port

KEY_ENV = "LMOPS_TEST_OPENWEATHER_KEY"


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, "test-key")
    return "test-key"


def tool_for(url: str, timeout: float = 5.0) -> WeatherTool:
    return WeatherTool(WeatherToolConfig(base_url=url, api_key_env=KEY_ENV, timeout=timeout))


async def run(tool: WeatherTool, city: str) -> str:
    try:
        result = await tool.run({"city": city})
        assert result.source == "OpenWeather" and not result.error and result.images == []
        return result.text
    finally:
        await tool.close()


async def refusal(tool: WeatherTool, city: str = "Paris") -> str:
    with pytest.raises(ToolError) as info:
        await run(tool, city)
    assert "test-key" not in info.value.message  # the key travels in the URL: never in a message
    return info.value.message


async def test_current_weather_in_metric_units(serve, key):
    fake = FakeOpenWeather()
    srv = serve(fake.app())
    assert await run(tool_for(srv.url), "Paris") == "Paris, FR: 18 °C, light rain, humidity 72 %, wind 4 m/s"
    assert fake.requests == [{"q": "Paris", "appid": "test-key", "units": "metric"}]
    assert await run(tool_for(srv.url), "tokyo,JP") == "Tokyo, JP: 26 °C, clear sky, humidity 60 %, wind 3 m/s"


async def test_no_key_configured(serve, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    fake = FakeOpenWeather()
    srv = serve(fake.app())
    message = await refusal(tool_for(srv.url))
    assert message.startswith("the weather tool is not configured") and KEY_ENV in message
    assert fake.requests == []  # nothing was sent


async def test_wrong_key_unknown_city_rate_limit_and_server_error(serve, key):
    fake = FakeOpenWeather(api_key="another-key")
    srv = serve(fake.app())
    assert "refused its API key (401)" in await refusal(tool_for(srv.url))
    fake.api_key = "test-key"
    assert await refusal(tool_for(srv.url), "Atlantis") == "OpenWeather does not know the city 'Atlantis'"
    fake.status = 429
    assert "too many requests (429)" in await refusal(tool_for(srv.url))
    fake.status = 500
    assert await refusal(tool_for(srv.url)) == "OpenWeather answered HTTP 500: Internal error"


async def test_malformed_and_unexpected_answers(serve, key):
    fake = FakeOpenWeather(malformed=True)
    srv = serve(fake.app())
    assert await refusal(tool_for(srv.url)) == "OpenWeather sent an answer that could not be read"
    fake.malformed, fake.wrong_shape = False, True
    assert await refusal(tool_for(srv.url)) == "OpenWeather sent an answer that could not be read"


async def test_timeout(serve, key):
    srv = serve(FakeOpenWeather(delay=5).app())
    start = time.monotonic()
    assert await refusal(tool_for(srv.url, timeout=0.3)) == "OpenWeather did not answer within 0.3 s"
    assert time.monotonic() - start < 2


async def test_connection_refused(key):
    message = await refusal(tool_for(f"http://127.0.0.1:{free_port()}"))
    assert message.startswith("OpenWeather could not be reached (127.0.0.1:")
