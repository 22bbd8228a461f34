"""A fake MediaWiki: the action API (``/w/api.php``, as MediaWiki 1.43 with the TextExtracts extension answers it,
https://www.mediawiki.org/wiki/API:Main_page) for the two queries the wikipedia tool makes, in ``format=json``
with ``formatversion=1`` (the default) or ``2``:

- ``action=query&list=search&srsearch=...`` (``srlimit``, ``srprop``): pages whose title or text contains every
  word of the search, titles matching first; ``query.searchinfo.totalhits`` and ``query.search``.
- ``action=query&prop=extracts|info&titles=...`` (``exintro``, ``explaintext``, ``inprop=url``, ``redirects``): the
  page's introduction (or all its text without ``exintro``) as ``extract``, its ``fullurl``/``canonicalurl``;
  ``missing`` for an unknown title; titles normalized as MediaWiki does (first letter upper case, ``_`` -> space).

Errors as MediaWiki sends them (HTTP 200, ``{"error": {"code", "info"}}``) for an unknown action or a missing
parameter. Switches for tests: ``delay`` (seconds before answering), ``status`` (answer this HTTP status with an
HTML page, as a proxy in front of a wiki does), ``malformed`` (a body that is not JSON), ``api_error`` (an internal
API error), ``textextracts`` (False: a wiki without the extension: ``prop=extracts`` is warned about and ignored).
``requests`` keeps the parameters of each request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route


@dataclass
class Page:
    title: str
    intro: str
    sections: str = ""  # the text after the introduction
    pageid: int = 0


def _default_pages() -> list[Page]:
    return [
        Page("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
             "It is named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 "
             "to 1889.", "\n\n== History ==\nThe design of the Eiffel Tower is attributed to Maurice Koechlin.",
             pageid=9232),
        Page("Paris", "Paris is the capital and largest city of France.", "\n\n== Etymology ==\nThe Parisii.",
             pageid=22989),
        Page("Alan Turing", "Alan Mathison Turing was an English mathematician, computer scientist, logician, "
             "cryptanalyst, philosopher and theoretical biologist.", pageid=1208),
    ]


@dataclass
class FakeMediaWiki:
    pages: list[Page] = field(default_factory=_default_pages)
    redirects: dict[str, str] = field(default_factory=lambda: {"Tour Eiffel": "Eiffel Tower"})
    api_path: str = "/w/api.php"
    textextracts: bool = True
    delay: float = 0.0
    status: int | None = None
    malformed: bool = False
    api_error: bool = False
    requests: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route(self.api_path, self._api)])

    async def _api(self, request: Request) -> Response:
        params = dict(request.query_params)
        self.requests.append(params)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status is not None:
            return HTMLResponse(f"<html><body><h1>{self.status}</h1></body></html>", status_code=self.status)
        if self.malformed:
            return Response(b"<!DOCTYPE html><html>MediaWiki internal error", media_type="application/json")
        v2 = params.get("formatversion") in ("2", "latest")
        if self.api_error:
            return _error(v2, "internal_api_error_DBQueryError",
                          "[4a1b2c3d] Caught exception of type Wikimedia\\Rdbms\\DBQueryError")
        if params.get("action") != "query":
            return _error(v2, "badvalue", f'Unrecognized value for parameter "action": {params.get("action")}.')
        if params.get("list") == "search":
            return self._search(params, v2)
        if "titles" in params:
            return self._pages(params, v2, str(request.base_url).rstrip("/"))
        return JSONResponse({"batchcomplete": True if v2 else ""})

    def _search(self, params: dict[str, str], v2: bool) -> Response:
        text = params.get("srsearch", "")
        if not text:
            return _error(v2, "missingparam", 'The "srsearch" parameter must be set.')
        words = text.lower().split()
        found = [p for p in self.pages if all(w in f"{p.title} {p.intro} {p.sections}".lower() for w in words)]
        found.sort(key=lambda p: not all(w in p.title.lower() for w in words))
        limit = int(params.get("srlimit", "10"))
        props = params.get("srprop", "size|wordcount|timestamp|snippet").split("|")
        results = []
        for page in found[:limit]:
            item: dict[str, Any] = {"ns": 0, "title": page.title, "pageid": page.pageid}
            full = page.intro + page.sections
            extra = {"size": len(full.encode()), "wordcount": len(full.split()),
                     "snippet": page.intro[:100], "timestamp": "2025-11-30T12:00:00Z"}
            item.update({k: v for k, v in extra.items() if k in props})
            results.append(item)
        answer: dict[str, Any] = {"batchcomplete": True if v2 else "",
                                  "query": {"searchinfo": {"totalhits": len(found)}, "search": results}}
        if len(found) > limit:
            answer["continue"] = {"sroffset": limit, "continue": "-||"}
        return JSONResponse(answer)

    def _pages(self, params: dict[str, str], v2: bool, base: str) -> Response:
        props = params.get("prop", "").split("|")
        query: dict[str, Any] = {}
        answer: dict[str, Any] = {"batchcomplete": True if v2 else "", "query": query}
        if "extracts" in props and not self.textextracts:
            message = 'Unrecognized value for parameter "prop": extracts.'
            answer["warnings"] = {"main": {"warnings": message} if v2 else {"*": message}}
        pages: list[dict[str, Any]] = []
        for asked in params["titles"].split("|"):
            title = asked.replace("_", " ").strip()
            title = title[:1].upper() + title[1:]
            if title != asked:
                query.setdefault("normalized", []).append({"from": asked, "to": title})
            if params.get("redirects") is not None and title in self.redirects:
                query.setdefault("redirects", []).append({"from": title, "to": self.redirects[title]})
                title = self.redirects[title]
            page = next((p for p in self.pages if p.title == title), None)
            if page is None:
                pages.append({"ns": 0, "title": title, "missing": True if v2 else ""})
                continue
            item: dict[str, Any] = {"pageid": page.pageid, "ns": 0, "title": page.title}
            if "info" in props:
                item.update({"contentmodel": "wikitext", "pagelanguage": "en", "pagelanguagehtmlcode": "en",
                             "pagelanguagedir": "ltr", "touched": "2025-11-30T12:00:00Z", "lastrevid": 1260000000,
                             "length": len((page.intro + page.sections).encode())})
                if "url" in params.get("inprop", "").split("|"):
                    url = f"{base}/wiki/{quote(page.title.replace(' ', '_'))}"
                    item.update({"fullurl": url, "editurl": f"{base}/w/index.php?title="
                                 f"{quote(page.title.replace(' ', '_'))}&action=edit", "canonicalurl": url})
            if "extracts" in props and self.textextracts:
                item["extract"] = page.intro if params.get("exintro") is not None else page.intro + page.sections
            pages.append(item)
        if v2:
            query["pages"] = pages
        else:
            missing = iter(range(-1, -1000, -1))
            query["pages"] = {str(p["pageid"]) if "pageid" in p else str(next(missing)): p for p in pages}
        return JSONResponse(answer)


def _error(v2: bool, code: str, info: str) -> Response:
    error: dict[str, Any] = {"code": code, "info": info}
    if v2:
        error["docref"] = "See https://en.wikipedia.org/w/api.php for API usage."
    else:
        error["*"] = "See https://en.wikipedia.org/w/api.php for API usage."
    return JSONResponse({"error": error, "servedby": "mw-api-fake"})
