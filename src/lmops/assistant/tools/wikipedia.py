"""The encyclopedia tool: any MediaWiki (Wikipedia by default) through its action API, ``formatversion=2``.

Two requests: ``list=search`` finds the best matching article, then ``prop=extracts|info`` (the TextExtracts
extension, which Wikipedia runs; ``exintro``, ``explaintext``; ``inprop=url`` for the article's address; redirects
followed) gives its introduction as plain text, cut to ``max_chars``. Answers carry the source
"Wikipedia: <title> (<url>)". No matching article, an API error, a wiki without TextExtracts, and the failures of
the network are ``ToolError``s with a clear message.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from lmops.assistant.tools.base import Tool, ToolError, ToolResult, one_string_parameter
from lmops.assistant.tools.http_client import Answer, JSONClient
from lmops.config import WikipediaToolConfig


class WikipediaTool(Tool):
    name = "wikipedia"
    description = ("Look a subject up in the encyclopedia (Wikipedia): the introduction of the best matching "
                   "article. For facts about people, places, things, history, science.")

    def __init__(self, config: WikipediaToolConfig | None = None):
        self.config = config or WikipediaToolConfig()
        self.parameters: dict[str, Any] = one_string_parameter(
            "query", 300, "what to look up, e.g. 'Eiffel Tower'")
        self._client = JSONClient(self.config.name, self.config.base_url, self.config.timeout)

    async def run(self, args: dict[str, Any]) -> ToolResult:
        query = str(args["query"]).strip()
        if not query:
            raise ToolError("nothing to look up was given")
        title = await self._search(query)
        page = await self._page(title)
        extract = page.get("extract")
        if not isinstance(extract, str):
            raise ToolError(f"{self.config.name} gives no article extracts (its wiki lacks the TextExtracts "
                            f"extension)")
        extract = extract.strip()
        found_title, found_url = page.get("title"), page.get("fullurl")
        title = found_title if isinstance(found_title, str) and found_title else title
        url = found_url if isinstance(found_url, str) and found_url else self._url(title)
        if not extract:
            raise ToolError(f"the {self.config.name} article {title!r} has no introduction")
        return ToolResult(text=truncate(extract, self.config.max_chars), source=f"{self.config.name}: {title} ({url})")

    async def _search(self, query: str) -> str:
        data = await self._api({"action": "query", "list": "search", "srsearch": query, "srlimit": "1",
                                "srprop": "", "format": "json", "formatversion": "2"})
        found = _get(data, "query", "search")
        if not isinstance(found, list):
            raise self._client.unreadable()
        if not found:
            raise ToolError(f"{self.config.name} has no article matching {query!r}")
        title = found[0].get("title") if isinstance(found[0], dict) else None
        if not isinstance(title, str) or not title:
            raise self._client.unreadable()
        return title

    async def _page(self, title: str) -> dict[str, Any]:
        data = await self._api({"action": "query", "prop": "extracts|info", "exintro": "1", "explaintext": "1",
                                "inprop": "url", "redirects": "1", "titles": title, "format": "json",
                                "formatversion": "2"})
        pages = _get(data, "query", "pages")
        if not isinstance(pages, list) or not pages or not isinstance(pages[0], dict):
            raise self._client.unreadable()
        page = pages[0]
        if page.get("missing") or page.get("invalid"):
            raise ToolError(f"{self.config.name} has no article {title!r}")
        return page

    async def _api(self, params: dict[str, str]) -> Any:
        answer: Answer = await self._client.get(self.config.api_path, params)
        if answer.status != 200:
            raise ToolError(f"{self.config.name} answered HTTP {answer.status}")
        if not answer.is_json or not isinstance(answer.data, dict):
            raise self._client.unreadable()
        error = answer.data.get("error")
        if isinstance(error, dict):
            info = error.get("info") or error.get("code") or "unknown error"
            raise ToolError(f"{self.config.name} refused the request: {str(info)[:200]}")
        return answer.data

    def _url(self, title: str) -> str:
        return f"{self.config.base_url}/wiki/{quote(title.replace(' ', '_'))}"

    async def close(self) -> None:
        await self._client.close()


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at the end of a sentence or else of a word, with "…"."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 2]
    sentence = max(cut.rfind(". "), cut.rfind(".\n"))
    if sentence >= limit // 2:
        return cut[: sentence + 1] + " …"
    space = cut.rfind(" ")
    return (cut[:space] if space >= limit // 2 else cut).rstrip() + "…"


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data
