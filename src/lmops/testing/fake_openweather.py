"""A fake OpenWeather server: the current weather API 2.5 (``GET /data/2.5/weather``), as documented at
https://openweathermap.org/current (JSON answers, ``units=metric|imperial|standard``, the ``cod``/``message`` error
bodies: 401 for a missing or wrong ``appid``, 404 ``{"cod":"404","message":"city not found"}``, 400 ``Nothing to
geocode`` for an empty ``q``, 429 when rate limited).

``cities`` maps a city name (matched without regard to case; ``q=Paris,FR`` is matched by "Paris" and the country)
to its weather. Switches for tests: ``delay`` (seconds before answering), ``status`` (answer this HTTP status with
OpenWeather's error body), ``malformed`` (a body that is not JSON), ``wrong_shape`` (JSON without the fields of a
weather answer). ``requests`` keeps the query parameters of each request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


_MESSAGES = {
    401: "Invalid API key. Please see https://openweathermap.org/faq#error401 for more info.",
    404: "city not found",
    429: "Your account is temporary blocked due to exceeding of requests limitation of your subscription type. "
         "Please choose the proper subscription https://openweathermap.org/price",
}


@dataclass
class City:
    name: str
    country: str
    temp: float  # °C
    description: str
    humidity: int
    wind: float  # m/s
    id: int = 2988507
    lon: float = 2.3488
    lat: float = 48.8534


@dataclass
class FakeOpenWeather:
    api_key: str = "test-key"
    cities: dict[str, City] = field(default_factory=lambda: {
        "paris": City("Paris", "FR", 18.2, "light rain", 72, 4.12),
        "tokyo": City("Tokyo", "JP", 25.6, "clear sky", 60, 2.57, id=1850147, lon=139.6917, lat=35.6895),
    })
    delay: float = 0.0
    status: int | None = None
    malformed: bool = False
    wrong_shape: bool = False
    requests: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/data/2.5/weather", self._weather)])

    async def _weather(self, request: Request) -> Response:
        params = dict(request.query_params)
        self.requests.append(params)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status is not None:
            return _error(self.status, _MESSAGES.get(self.status, "Internal error"))
        if params.get("appid") != self.api_key:
            return _error(401, _MESSAGES[401])
        if self.malformed:
            return Response(b'{"coord": {"lon": 2.35, "lat": 48.85}, "weather": [', media_type="application/json")
        if self.wrong_shape:
            return JSONResponse({"cod": 200, "list": []})
        query = params.get("q", "").strip()
        if not query:
            return _error(400, "Nothing to geocode")
        name, _, country = (p.strip() for p in query.partition(","))
        city = self.cities.get(name.lower())
        if city is None or (country and country.upper() != city.country):
            return _error(404, "city not found")
        return JSONResponse(_current(city, params.get("units", "standard")))


def _error(status: int, message: str) -> Response:
    # OpenWeather sends "cod" as a number for 401 and 429, and as a string for 400 and 404.
    cod: Any = status if status in (401, 429) else str(status)
    return JSONResponse({"cod": cod, "message": message}, status_code=status)


def _current(city: City, units: str) -> dict[str, Any]:
    def temp(celsius: float) -> float:
        if units == "metric":
            return round(celsius, 2)
        if units == "imperial":
            return round(celsius * 9 / 5 + 32, 2)
        return round(celsius + 273.15, 2)

    wind = city.wind if units != "imperial" else round(city.wind * 2.23694, 2)
    return {
        "coord": {"lon": city.lon, "lat": city.lat},
        "weather": [{"id": 500, "main": city.description.split()[-1].capitalize(), "description": city.description,
                     "icon": "10d"}],
        "base": "stations",
        "main": {"temp": temp(city.temp), "feels_like": temp(city.temp - 0.5), "temp_min": temp(city.temp - 1),
                 "temp_max": temp(city.temp + 1), "pressure": 1012, "humidity": city.humidity, "sea_level": 1012,
                 "grnd_level": 1003},
        "visibility": 10000,
        "wind": {"speed": wind, "deg": 250},
        "clouds": {"all": 75},
        "dt": 1764763200,
        "sys": {"type": 2, "id": 2041230, "country": city.country, "sunrise": 1764746142, "sunset": 1764776463},
        "timezone": 3600,
        "id": city.id,
        "name": city.name,
        "cod": 200,
    }
