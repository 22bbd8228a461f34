"""The wikipedia tool against a fake MediaWiki (action API, formatversion=2, TextExtracts) on a real socket."""

from __future__ import annotations

import time

import pytest

from lmops.assistant.tools.base import ToolError, ToolResult
from lmops.assistant.tools.wikipedia import WikipediaTool, truncate
from lmops.config import WikipediaToolConfig
from lmops.testing.fake_mediawiki import FakeMediaWiki, Page
from lmops.testing.server import free_port


def tool_for(url: str, **config) -> WikipediaTool:
    return WikipediaTool(WikipediaToolConfig(base_url=url, **config))


async def run(tool: WikipediaTool, query: str) -> ToolResult:
    try:
        return await tool.run({"query": query})
    finally:
        await tool.close()


async def refusal(tool: WikipediaTool, query: str = "Eiffel") -> str:
    with pytest.raises(ToolError) as info:
        await run(tool, query)
    return info.value.message


async def test_search_then_introduction_with_its_source(serve):
    fake = FakeMediaWiki()
    srv = serve(fake.app())
    result = await run(tool_for(srv.url), "eiffel tower")
    assert result.text.startswith("The Eiffel Tower is a wrought-iron lattice tower")
    assert "History" not in result.text  # the introduction only
    assert result.source == f"Wikipedia: Eiffel Tower ({srv.url}/wiki/Eiffel_Tower)"
    assert not result.error
    search, extract = fake.requests
    assert search["list"] == "search" and search["srsearch"] == "eiffel tower" and search["formatversion"] == "2"
    assert extract["prop"] == "extracts|info" and extract["titles"] == "Eiffel Tower"
    assert {"exintro", "explaintext", "redirects"} <= set(extract) and extract["inprop"] == "url"


async def test_the_introduction_is_cut_and_the_wiki_named_as_configured(serve):
    long = " ".join(f"Sentence number {i} about the moon." for i in range(200))
    fake = FakeMediaWiki(pages=[Page("Moon", long, pageid=19331)], api_path="/api.php")
    srv = serve(fake.app())
    result = await run(tool_for(srv.url, api_path="/api.php", name="MoonWiki", max_chars=500), "moon")
    assert len(result.text) <= 500 and result.text.endswith(". …")
    assert long.startswith(result.text[:-2])
    assert result.source == f"MoonWiki: Moon ({srv.url}/wiki/Moon)"


def test_truncate():
    assert truncate("short", 100) == "short"
    assert truncate("word " * 100, 120).endswith("word…") and len(truncate("word " * 100, 120)) <= 120
    assert truncate("x" * 300, 100) == "x" * 98 + "…"


async def test_no_article_found(serve):
    srv = serve(FakeMediaWiki().app())
    assert await refusal(tool_for(srv.url), "zyxxyq") == "Wikipedia has no article matching 'zyxxyq'"


async def test_a_wiki_without_textextracts(serve):
    srv = serve(FakeMediaWiki(textextracts=False).app())
    assert "lacks the TextExtracts extension" in await refusal(tool_for(srv.url))


async def test_api_errors_http_errors_and_malformed_answers(serve):
    fake = FakeMediaWiki(api_error=True)
    srv = serve(fake.app())
    assert (await refusal(tool_for(srv.url))).startswith("Wikipedia refused the request: [4a1b2c3d] Caught exception")
    fake.api_error, fake.status = False, 503
    assert await refusal(tool_for(srv.url)) == "Wikipedia answered HTTP 503"
    fake.status, fake.malformed = None, True
    assert await refusal(tool_for(srv.url)) == "Wikipedia sent an answer that could not be read"


async def test_timeout_and_connection_refused(serve):
    srv = serve(FakeMediaWiki(delay=5).app())
    start = time.monotonic()
    assert await refusal(tool_for(srv.url, timeout=0.3)) == "Wikipedia did not answer within 0.3 s"
    assert time.monotonic() - start < 2
    message = await refusal(tool_for(f"http://127.0.0.1:{free_port()}"))
    assert message.startswith("Wikipedia could not be reached (127.0.0.1:")


async def test_the_fake_answers_formatversion_1_as_mediawiki_does(serve):
    """The fake's default shapes (formatversion=1): pages keyed by id, "-1" for a missing one."""
    import httpx

    srv = serve(FakeMediaWiki().app())
    async with httpx.AsyncClient(base_url=srv.url) as client:
        found = (await client.get("/w/api.php", params={"action": "query", "prop": "extracts", "exintro": "1",
                                                        "titles": "Paris|Nowhere", "format": "json"})).json()
        assert found["batchcomplete"] == ""
        assert found["query"]["pages"]["22989"]["extract"] == "Paris is the capital and largest city of France."
        assert found["query"]["pages"]["-1"] == {"ns": 0, "title": "Nowhere", "missing": ""}
        redirected = (await client.get("/w/api.php", params={"action": "query", "prop": "extracts", "redirects": "1",
                                                             "titles": "tour_Eiffel", "formatversion": "2"})).json()
        assert redirected["query"]["normalized"] == [{"from": "tour_Eiffel", "to": "Tour Eiffel"}]
        assert redirected["query"]["redirects"] == [{"from": "Tour Eiffel", "to": "Eiffel Tower"}]
        assert "== History ==" in redirected["query"]["pages"][0]["extract"]  # no exintro: the whole text
