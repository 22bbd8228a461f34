"""The image tool's answer (a markdown image of a relative signed URL, and its source line), what the history
keeps of it (nothing), and its clear failures. End to end, through lmops's image generation: tests/chat/
test_assistant_chat.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from lmops.assistant.history import clean_history, with_source
from lmops.assistant.tools.base import Caller
from lmops.assistant.tools.image import IMAGE_ENDPOINT, image_alt
from lmops.assistant.tools.registry import ToolRegistry
from lmops.chat.markdown import Renderer
from lmops.config import ToolsConfig
from lmops.protocol.errors import ModelNotFound, UpstreamError
from lmops.serving.context import RequestContext
from lmops.images.signing import UrlSigner


@dataclass
class Images:
    """``ImagesService.generate_for`` as the tool sees it: URLs signed by the real signer, or an error."""

    error: Exception | None = None
    calls: list[tuple[str, str, str | None, RequestContext]] = field(default_factory=list)
    signer: UrlSigner = field(default_factory=lambda: UrlSigner(b"k" * 32, 3600))

    async def generate_for(self, model, prompt, size, ctx, admit):  # type: ignore[no-untyped-def]
        self.calls.append((model, prompt, size, ctx))
        await admit(ctx)
        if self.error is not None:
            raise self.error
        return [f"/v1/images/files/img_0123abcd?{self.signer.query('img_0123abcd')}"]


async def _admit(ctx: RequestContext) -> None:
    ctx.extra["admitted"] = True


def registry(images: Images | None, model: str = "painter", size: str | None = None) -> ToolRegistry:
    config = ToolsConfig.model_validate({"entry_points": False, "weather": {"enabled": False},
                                         "wikipedia": {"enabled": False}, "math": {"enabled": False},
                                         "image": {"model": model, "size": size}})
    return ToolRegistry.from_config(config, images)


async def test_the_answer_is_a_markdown_image_the_history_drops_and_the_chat_shows():
    images = Images()
    caller = Caller(RequestContext(request_id="turn-1", endpoint="chat.messages"), _admit)
    tools = registry(images, size="256x256")
    result = await tools.call("image", '{"prompt": "a red [square]\\n(on white)"}', caller)
    [(model, prompt, size, ctx)] = images.calls
    assert (model, prompt, size) == ("painter", "a red [square] (on white)", "256x256")
    assert (ctx.request_id, ctx.endpoint, ctx.extra) == ("turn-1", IMAGE_ENDPOINT, {"admitted": True})
    url = result.images[0]
    assert result.text == f"![a red square on white]({url})" and result.source == "image model painter"
    answer = with_source(result.text, result.source)
    assert clean_history([{"role": "assistant", "content": answer}]) == [{"role": "assistant", "content": ""}]
    assert Renderer().html(answer).startswith(f'<p><img src="{url.replace("&", "&amp;")}" alt="a red square on '
                                              'white"></p>')


async def test_failures_are_clear_messages():
    caller = Caller(RequestContext(request_id="t", endpoint="chat.messages"), _admit)
    unconfigured = await registry(None).call("image", '{"prompt": "x"}', caller)
    assert unconfigured.error and unconfigured.text.startswith("the image tool is not configured")
    missing = await registry(Images(error=ModelNotFound("nope")), "nope").call("image", '{"prompt": "x"}', caller)
    assert missing.error and missing.text == "the image tool is not configured: there is no image model named 'nope'"
    failed = await registry(Images(error=UpstreamError("The backend failed."))).call("image", '{"prompt": "x"}',
                                                                                       caller)
    assert failed.error and failed.text == "the image model painter failed: The backend failed"
    assert registry(None, model="painter").names() == ["image"]
    assert ToolRegistry.from_config(ToolsConfig(entry_points=False)).names() == ["weather", "wikipedia", "math"]
    with pytest.raises(ValidationError, match="image.size"):
        ToolsConfig.model_validate({"image": {"model": "painter", "size": "big"}})


def test_the_alt_text_is_one_line_without_markdown():
    assert image_alt("  a *bold*\n![x](y) `z` <b>  ") == "a bold x y z b"
    assert len(image_alt("w " * 200)) == 100 and image_alt("w " * 200).endswith("\u2026")
