"""The weather tool: current weather from OpenWeather (``GET /data/2.5/weather?q=CITY&appid=KEY&units=metric``).

Answers "Paris, FR: 18 °C, light rain, humidity 72 %, wind 4 m/s", source "OpenWeather". Failures are
``ToolError``s with a clear message: no API key configured, a key refused (401), a city unknown (404), rate
limited (429), any other HTTP error, no answer in time, the service unreachable, an answer that is not what the API
sends.
"""

from __future__ import annotations

import os
from typing import Any

from lmops.assistant.tools.base import Tool, ToolError, ToolResult, one_string_parameter
from lmops.assistant.tools.http_client import JSONClient
from lmops.config import WeatherToolConfig

SOURCE = "OpenWeather"


class WeatherTool(Tool):
    name = "weather"
    description = "Current weather (temperature, conditions, humidity, wind) in a city, from OpenWeather."

    def __init__(self, config: WeatherToolConfig | None = None):
        self.config = config or WeatherToolConfig()
        self.parameters: dict[str, Any] = one_string_parameter(
            "city", 100, "the city, optionally with a country code: 'Paris' or 'Paris,FR'")
        self._client = JSONClient(SOURCE, self.config.base_url, self.config.timeout)

    async def run(self, args: dict[str, Any]) -> ToolResult:
        city = str(args["city"]).strip()
        key = os.environ.get(self.config.api_key_env, "").strip()
        if not key:
            raise ToolError(f"the weather tool is not configured (no OpenWeather API key in the environment "
                            f"variable {self.config.api_key_env})")
        if not city:
            raise ToolError("no city was given")
        answer = await self._client.get("/data/2.5/weather", {"q": city, "appid": key, "units": "metric"})
        if answer.status != 200:
            raise _http_error(answer.status, answer.data, city)
        if not answer.is_json:
            raise self._client.unreadable()
        text = describe(answer.data)
        if text is None:
            raise self._client.unreadable()
        return ToolResult(text=text, source=SOURCE)

    async def close(self) -> None:
        await self._client.close()


def describe(data: Any) -> str | None:
    """"Paris, FR: 18 °C, light rain, humidity 72 %, wind 4 m/s" from an answer of the current weather API (None if
    it lacks the name or the temperature)."""
    try:
        name = data["name"]
        temp = float(data["main"]["temp"])
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(name, str) or not name:
        return None
    country = _get(data, "sys", "country")
    place = f"{name}, {country}" if isinstance(country, str) and country else name
    parts = [f"{round(temp)} °C"]
    weather = data.get("weather")
    if isinstance(weather, list):
        conditions = [w["description"] for w in weather
                      if isinstance(w, dict) and isinstance(w.get("description"), str)]
        if conditions:
            parts.append(", ".join(conditions))
    humidity = _get(data, "main", "humidity")
    if isinstance(humidity, int | float):
        parts.append(f"humidity {round(humidity)} %")
    wind = _get(data, "wind", "speed")
    if isinstance(wind, int | float):
        parts.append(f"wind {round(wind)} m/s")
    return f"{place}: {', '.join(parts)}"


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _http_error(status: int, data: Any, city: str) -> ToolError:
    message = data.get("message") if isinstance(data, dict) else None
    if status == 401:
        return ToolError("the weather tool is misconfigured: OpenWeather refused its API key (401)")
    if status == 404:
        return ToolError(f"OpenWeather does not know the city {city!r}")
    if status == 429:
        return ToolError("OpenWeather refused the request: too many requests (429); try again later")
    detail = f": {message[:200]}" if isinstance(message, str) and message else ""
    return ToolError(f"OpenWeather answered HTTP {status}{detail}")
