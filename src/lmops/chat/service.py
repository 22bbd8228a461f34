"""The chat capability's logic: conversations of a user, answers streamed into them, export and import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from lmops.capability import SecretSource
from lmops.chat.accounts import Accounts
from lmops.chat.answer import Answerer, Events, Generation, Save
from lmops.chat.auth import ChatAuth
from lmops.chat.identities import Identities
from lmops.chat.identity import ChatUser
from lmops.chat.importer import parse_export
from lmops.chat.markdown import Renderer
from lmops.chat.memory import ConversationMemory, Window, marker
from lmops.chat.sso import SingleSignOn
from lmops.chat.store import ChatStore, NewMessage, Row
from lmops.chat.throttle import RedisSignInThrottle, SignInThrottle, Throttle
from lmops.config import Settings
from lmops.protocol.errors import APIError, InvalidRequest, ModelNotFound

if TYPE_CHECKING:
    from lmops.core import Core

ModelFilter = Callable[[str], bool]
TeamModels = Callable[[str], Awaitable[ModelFilter]]  # team id -> which public model names its rules allow
log = logging.getLogger("lmops.chat")
DEFAULT_TITLE = "New chat"
TITLE_LENGTH = 80


async def every_model(team_id: str) -> ModelFilter:
    return lambda name: True


class ChatService:
    def __init__(self, core: "Core", *, team_models: TeamModels | None = None, secret: SecretSource | None = None):
        """``team_models``: access control's view of a team's model rules; None when access control is off
        (laptop mode: one local user, who signs in without a password). ``secret``: the server secret, which
        signs a single sign-on's state (SSO is offered only with access control on and a secret)."""
        settings: Settings = core.settings
        self.core = core
        self.config = settings.chat
        self.store = ChatStore(core.db)
        self.accounts = Accounts(core.db)
        self.auth = ChatAuth(core.guard, self.accounts, access_enabled=team_models is not None,
                             session_hours=self.config.session_hours,
                             throttle=self._throttle(settings),
                             session_cache_seconds=self.config.session_cache_seconds)
        self.team_models = team_models or every_model
        self.history = ConversationMemory(core, self.store)  # each model's strategy: latest turns or a summary
        self.answers = Answerer(core)
        self.markdown = Renderer()  # messages as safe HTML for the web UI
        self._secret = secret
        self.sso: SingleSignOn | None = None  # set at start when configured

    def _throttle(self, settings: Settings) -> Throttle:
        """Failed sign-ins counted in Redis when there is one (shared by gateway processes), else here."""
        if settings.redis_url:
            return RedisSignInThrottle(settings.redis_url, settings.access.redis_prefix, self.config.sign_in_failures,
                                       self.config.sign_in_window)
        return SignInThrottle(self.config.sign_in_failures, self.config.sign_in_window)

    async def start(self) -> None:
        if not self.config.sso.enabled:
            return
        secret = await self._secret() if self._secret is not None and self.auth.access_enabled else None
        if secret is None:
            log.warning("chat.sso is configured but not offered: single sign-on needs access control on")
            return
        self.sso = SingleSignOn(self.config.sso, self.auth, Identities(self.core.db, self.config.sso), secret)

    async def stop(self) -> None:
        if isinstance(self.auth.throttle, RedisSignInThrottle):
            await self.auth.throttle.close()
        if self.sso is not None:
            await self.sso.close()
        for conversation_id in list(self.answers.running):
            await self.answers.stop(conversation_id, wait=2.0)

    # -- models --------------------------------------------------------------------------------
    async def allowed(self, user: ChatUser, http: Request) -> ModelFilter:
        """The models the user may chat with: those the rules allow that write text (an image model makes none)."""
        rules = await self.core.guard.allowed_models(http) if user.via_key else \
            await self.team_models(user.principal.team_id)
        router = self.core.router

        def allowed(name: str) -> bool:
            target = router.find(name)
            return rules(name) and (target is None or target.config.kind == "text")

        return allowed

    async def models(self, user: ChatUser, http: Request) -> list[dict[str, Any]]:
        return self.core.model_cards(await self.allowed(user, http), virtual=True)

    async def check_model(self, user: ChatUser, http: Request, model: str | None) -> None:
        """A model the user may use (an unknown or forbidden one is a 404 alike)."""
        if model is not None:
            self.core.model_card(model, await self.allowed(user, http), virtual=True)

    async def _model(self, user: ChatUser, http: Request, asked: str | None, conversation: Row) -> str:
        model = asked or conversation["model"]
        if model is None:
            allowed = await self.allowed(user, http)
            names = [t.name for t in self.core.router.targets if allowed(t.name)]
            if not names:
                raise ModelNotFound("(none)")
            model = names[0]
        await self.check_model(user, http, model)
        return model

    def _writer(self, model: str) -> str:
        """The configured model that writes ``model``'s answers: itself, or a virtual model's last inner model."""
        handler = self.core.inference.virtual.get(model)
        return handler.models[-1] if handler else model

    def _budget(self, model: str, params: dict[str, Any]) -> int:
        """Tokens the history may fill: the context less what the answer may take (those of ``_writer``)."""
        config = self.core.router.resolve(self._writer(model)).config
        answer = params.get("max_tokens") or config.defaults.max_tokens
        if answer is None:
            answer = int(config.context_length * (1 - self.config.history_share))
        return max(0, config.context_length - answer)

    # -- conversations -------------------------------------------------------------------------
    async def create(self, user: ChatUser, http: Request, fields: dict[str, Any]) -> Row:
        await self.check_model(user, http, fields.get("model"))
        return await self.store.create(user.owner, user.principal.team_id, fields)

    async def update(self, user: ChatUser, http: Request, conversation_id: str, fields: dict[str, Any]) -> Row:
        await self.check_model(user, http, fields.get("model"))
        return await self.store.update(user.owner, conversation_id, fields)

    async def import_export(self, user: ChatUser, data: Any) -> dict[str, Any]:
        """Store the conversations of a ChatGPT or Open WebUI export as the user's."""
        found = parse_export(data, self.config.max_import_conversations)
        ids, count = [], 0
        for conv in found:
            row = await self.store.create(user.owner, user.principal.team_id, {"title": conv.title},
                                          created_at=conv.created_at)
            await self.store.add(row["id"], conv.messages)
            ids.append(row["id"])
            count += len(conv.messages)
        return {"object": "chat.import", "sources": sorted({c.source for c in found}), "conversations": ids,
                "messages": count}

    async def delete(self, user: ChatUser, conversation_id: str) -> None:
        """Delete a conversation with its messages; an answer being generated in it is stopped first."""
        await self.store.get(user.owner, conversation_id)
        await self.answers.stop(conversation_id)
        await self.store.delete(user.owner, conversation_id)

    # -- answers -------------------------------------------------------------------------------
    async def send(self, user: ChatUser, http: Request, conversation_id: str, content: str,
                   model: str | None = None) -> Events:
        """Store the user's message and stream the answer."""
        conv = await self.store.get(user.owner, conversation_id)
        chosen = await self._model(user, http, model, conv)
        params = conv["params"]
        window = await self._window(user, http, conv, chosen, content)
        generation = await self.answers.open(user, http, conversation_id, chosen, params, window.messages)
        title = (content[:TITLE_LENGTH].strip() or None) if conv["title"] == DEFAULT_TITLE else None
        # stored while the first tokens stream (a write is the slowest step before them); the answer is stored
        # after it, and if it could not be stored the stream ends with an error event
        asked = asyncio.ensure_future(self.store.add(conversation_id, [NewMessage("user", content)], title=title))
        return self.answers.events(conversation_id, generation,
                                   self._saver(conversation_id, chosen, params, asked, window))

    async def regenerate(self, user: ChatUser, http: Request, conversation_id: str, model: str | None) -> Events:
        """Replace the answer to the last user message with a new one."""
        conv = await self.store.get(user.owner, conversation_id)
        last = next((m for m in await self.store.latest(conversation_id, 100) if m["role"] == "user"), None)
        if last is None:
            raise InvalidRequest("There is no question to answer again in this conversation.",
                                 code="nothing_to_regenerate")
        chosen = await self._model(user, http, model, conv)
        params = conv["params"]
        window = await self._window(user, http, conv, chosen, last["content"], before=last["seq"])
        generation = await self.answers.open(user, http, conversation_id, chosen, params, window.messages)
        try:
            await self.store.truncate_after(conversation_id, last["seq"])
        except Exception as exc:
            await self._abandon(conversation_id, generation, exc)
            raise
        return self.answers.events(conversation_id, generation,
                                   self._saver(conversation_id, chosen, params, [], window))

    async def edit(self, user: ChatUser, http: Request, conversation_id: str, message_id: str, content: str) -> Events:
        """Change a user message, drop every message after it, and stream a new answer."""
        conv = await self.store.get(user.owner, conversation_id)
        message = await self.store.message(conversation_id, message_id)
        if message["role"] != "user":
            raise InvalidRequest("Only a user message can be edited and sent again.", param="message_id")
        chosen = await self._model(user, http, None, conv)
        params = conv["params"]
        window = await self._window(user, http, conv, chosen, content, before=message["seq"])
        generation = await self.answers.open(user, http, conversation_id, chosen, params, window.messages)
        try:
            edited = await self.store.edit(conversation_id, message["seq"], content)
        except Exception as exc:
            await self._abandon(conversation_id, generation, exc)
            raise
        return self.answers.events(conversation_id, generation,
                                   self._saver(conversation_id, chosen, params, [edited], window))

    async def _window(self, user: ChatUser, http: Request, conv: Row, model: str, question: str,
                      before: int | None = None) -> Window:
        """What the model is sent for ``question`` (a summary call first, when one is due and no answer runs)."""
        self.answers.check_free(conv["id"])
        return await self.history.window(user, http, conv["id"], conv["system_prompt"],
                                         [{"role": "user", "content": question}], self._writer(model),
                                         self._budget(model, conv["params"]), before)

    async def summary(self, conversation_id: str) -> Row | None:
        """Where the older turns of a conversation were last summarised (None: never)."""
        return marker(await self.store.summary(conversation_id))

    async def stop_answer(self, user: ChatUser, conversation_id: str) -> bool:
        await self.store.get(user.owner, conversation_id)
        return await self.answers.stop(conversation_id)

    async def _abandon(self, conversation_id: str, generation: Generation, exc: Exception) -> None:
        error = exc if isinstance(exc, APIError) else APIError("The question could not be stored.")
        await self.answers.abandon(conversation_id, generation, error)

    def _saver(self, conversation_id: str, model: str, params: dict[str, Any],
               asked: list[Row] | Awaitable[list[Row]], window: Window) -> Save:
        async def save(text: str, status: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
            question = asked if isinstance(asked, list) else await asked  # its failure fails the save
            [answer] = await self.store.add(conversation_id, [NewMessage(
                "assistant", text, model=model, params=params, prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens, status=status)])
            return {"object": "chat.answer", "status": status, "conversation_id": conversation_id,
                    "messages": await asyncio.to_thread(self.markdown.messages, [*question, answer]),
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                    "summary": marker(window.summary)}

        return save
