"""The Telegram channel against a local Bot API server: the real Runtime, a real Store, the real knowledge."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.telegram import TelegramChannel, split
from bot.config import ConfigError
from bot.messages import Incoming, Reply
from bot.ports import SendError
from bot.runtime import Runtime
from bot.store import Store

from .conftest import brain_for
from .peers.telegram_api import BotAPI

TOKEN = "123456:TEST-token_for-rightsdesk"
CHAT = 1001
REF = re.compile(r"\b[A-Z]{3}-[A-Z]{2}-[2-9A-HJKMNP-Z]{5}\b")
WAIT = 10.0  # seconds: the bound of every wait in these tests


@pytest.fixture
def api() -> Iterator[BotAPI]:
    with BotAPI(TOKEN) as server:
        yield server


class Desk:
    """The channel and the real runtime, running; records what reached the runtime and when it was done."""

    def __init__(self, api: BotAPI, db: Path, **settings: Any) -> None:
        self.api = api
        self.store = Store(db)
        self.runtime = Runtime(brain_for("amsterdam"), self.store)
        self.channel = TelegramChannel.from_settings({"token": TOKEN, "base_url": api.base_url, **settings}, db.parent)
        self.incoming: list[Incoming] = []
        self.handled = 0
        self._done = asyncio.Condition()

    async def on_message(self, message: Incoming) -> None:
        self.incoming.append(message)
        try:
            await self.runtime.on_message(self.channel, message)
        finally:
            async with self._done:
                self.handled += 1
                self._done.notify_all()

    async def until_handled(self, count: int) -> None:
        async with self._done:
            await asyncio.wait_for(self._done.wait_for(lambda: self.handled >= count), WAIT)

    async def say(self, text: str, chat: int = CHAT) -> list[dict[str, Any]]:
        """Send a text as the resident; return the bot's messages to them once it was handled."""
        return await self._after(lambda: self.api.text(chat, text), chat)

    async def press(self, label: str, chat: int = CHAT) -> list[dict[str, Any]]:
        """Press a button of the last keyboard; return the bot's messages once the press was handled."""
        return await self._after(lambda: self.api.press(chat, label), chat)

    async def _after(self, push: Any, chat: int) -> list[dict[str, Any]]:
        before = len(self.api.sent(chat))
        target = self.handled + 1
        push()
        await self.until_handled(target)
        return [c.params for c in self.api.sent(chat)[before:]]

    def state(self, chat: int = CHAT) -> Any:
        return self.store.load_state("telegram", str(chat))


@contextlib.asynccontextmanager
async def running(api: BotAPI, db: Path, **settings: Any) -> AsyncIterator[Desk]:
    """Run the channel as a task until the block ends, then cancel it and check it stopped cleanly."""
    desk = Desk(api, db, **settings)
    # Through the attribute, so that a test can put a wrapper around on_message while the channel runs.
    task = asyncio.create_task(desk.channel.run(lambda message: desk.on_message(message)))
    ready = asyncio.create_task(desk.channel.ready.wait())
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises what run() raised
        assert ready in done, "the channel did not start"
        yield desk
    finally:
        ready.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT)
        desk.store.close()


def labels(message: dict[str, Any]) -> list[str]:
    markup = message.get("reply_markup") or {"inline_keyboard": []}
    assert all(len(row) == 1 for row in markup["inline_keyboard"]), "one button per row"
    return [row[0]["text"] for row in markup["inline_keyboard"]]


def test_start_shows_the_menu_as_an_inline_keyboard(api, tmp_path):
    k = brain_for("amsterdam").knowledge

    async def scenario() -> None:
        async with running(api, tmp_path / "bot.db") as desk:
            (menu,) = await desk.say("/start")
            assert "Amsterdam" in menu["text"]
            assert len(labels(menu)) >= 5
            assert k.text("menu_ask", "nl") in labels(menu) or k.text("menu_ask", "en") in labels(menu)
            assert "parse_mode" not in menu  # plain text: nothing a resident typed can inject formatting
            (deep,) = await desk.say("/start privacy")
            assert desk.incoming[-1].text == "/start privacy"
            assert deep["text"]

    asyncio.run(scenario())


def test_a_message_arrives_as_incoming_with_its_chat_id_and_utc_date(api, tmp_path):
    async def scenario() -> None:
        async with running(api, tmp_path / "bot.db") as desk:
            before = desk.handled
            api.text(CHAT, "/help", date=1_795_000_000)
            await desk.until_handled(before + 1)
            (incoming,) = desk.incoming
            assert incoming == Incoming("telegram", str(CHAT), "/help",
                                        datetime.fromtimestamp(1_795_000_000, UTC), id=incoming.id)
            assert incoming.id and incoming.id.startswith(f"m{CHAT}:")  # re-posted updates are answered once
            assert incoming.at.utcoffset().total_seconds() == 0

    asyncio.run(scenario())


def test_an_faq_question_is_answered(api, tmp_path):
    k = brain_for("amsterdam").knowledge

    async def scenario() -> None:
        async with running(api, tmp_path / "bot.db") as desk:
            (reply,) = await desk.say("how can I see what data the city has about me")
            assert reply["text"] == k.entries["privacy.access-my-data"].answer["en"]
            assert k.flows["data-request"].title["en"] in labels(reply)

    asyncio.run(scenario())


def test_a_button_press_is_answered_its_keyboard_removed_and_its_choice_followed(api, tmp_path):
    k = brain_for("amsterdam").knowledge

    async def scenario() -> None:
        async with running(api, tmp_path / "bot.db") as desk:
            (answer,) = await desk.say("how can I see what data the city has about me")
            (menu,) = await desk.press(k.text("choice_menu", "en"))
            assert desk.incoming[-1].text == k.text("choice_menu", "en")
            assert menu["text"] == k.text("menu_prompt", "en")
            (answered,) = await api.wait_call("answerCallbackQuery")
            assert answered.params["callback_query_id"].startswith(f"cq-{answer['message_id']}-")
            (edited,) = await api.wait_call("editMessageReplyMarkup")
            assert int(edited.params["chat_id"]) == CHAT
            assert int(edited.params["message_id"]) == answer["message_id"]
            assert not edited.params.get("reply_markup")  # no keyboard left on the pressed message

    asyncio.run(scenario())


def test_a_data_request_ends_with_a_reference_and_survives_a_restart(api, tmp_path):
    k = brain_for("amsterdam").knowledge
    flow = k.flows["data-request"]
    db = tmp_path / "bot.db"

    async def answer_steps(desk: Desk, limit: int) -> None:
        """Answer up to `limit` steps as a careful resident: buttons where there are some, text elsewhere."""
        for _ in range(limit):
            fstate = desk.state().flow
            if fstate is None or fstate.get("phase") != "step":
                return
            step = flow.steps[fstate["at"]]
            last = [c.params for c in api.sent(CHAT)][-1]
            if step.type == "choice":
                await desk.press(labels(last)[0])
            elif step.type in ("consent", "yesno"):
                await desk.press(k.text("answer_yes" if step.type == "consent" else "answer_no", "en"))
            else:
                await desk.say({"email": "jane@example.org", "date": "14-03-1980", "phone": "+31 20 123 4567"}
                               .get(step.type, "Jane Doe"))

    async def first_half() -> int:
        async with running(api, db) as desk:
            await desk.say("/language en")
            await desk.say("I want to file a data protection request")
            assert desk.state().flow["id"] == "data-request"
            await answer_steps(desk, 2)
            return desk.state().flow["at"]

    async def second_half(at: int) -> str:
        async with running(api, db) as desk:
            assert desk.state().flow["at"] == at  # the conversation resumes where it was
            await answer_steps(desk, 30)
            assert desk.state().flow["phase"] == "summary"
            replies = await desk.press(k.text("confirm", "en"))
            match = REF.search(replies[-1]["text"])
            assert match, "the last reply names the case reference"
            assert desk.store.case(match.group()) is not None
            return match.group()

    at = asyncio.run(first_half())
    assert at > 0
    ref = asyncio.run(second_half(at))
    assert ref.startswith("AMS-DR-")


def test_a_photo_gets_the_not_text_reply(api, tmp_path):
    k = brain_for("amsterdam").knowledge

    async def scenario() -> None:
        async with running(api, tmp_path / "bot.db") as desk:
            before = len(api.sent(CHAT))
            api.photo(CHAT, caption="look at this camera")
            await desk.until_handled(1)
            incoming = desk.incoming[-1]
            assert (incoming.kind, incoming.text) == ("media", "")
            (reply,) = [c.params for c in api.sent(CHAT)[before:]]
            assert reply["text"] in {k.text("not_text", lang) for lang in k.languages}

    asyncio.run(scenario())


def test_groups_not_allowed_edits_and_channel_posts_are_ignored(api, tmp_path):
    async def scenario() -> None:
        async with running(api, tmp_path / "bot.db", allowed_groups=[-100200]) as desk:
            api.text(-100999, "/help", chat_type="supergroup")
            api.push({"edited_message": {**api.message(CHAT, text="/help"), "edit_date": 1_795_000_100}})
            api.push({"channel_post": api.message(-100300, chat_type="channel", text="/help")})
            api.text(-100200, "/help", chat_type="supergroup")  # listed: served
            api.text(CHAT, "/help")
            await desk.until_handled(2)
            assert [m.user for m in desk.incoming] == ["-100200", str(CHAT)]
            await api.wait_sent(CHAT, 1)
            assert api.sent(-100999) == [] and api.sent(-100300) == []

    asyncio.run(scenario())


def test_one_slow_conversation_does_not_hold_up_another(api, tmp_path):
    async def scenario() -> None:
        async with running(api, tmp_path / "bot.db") as desk:
            other_done = asyncio.Event()
            order: list[str] = []
            plain = desk.on_message

            async def slow_for_one(message: Incoming) -> None:
                if message.user == str(CHAT):
                    await asyncio.wait_for(other_done.wait(), WAIT)  # fails if the other chat waits on us
                await plain(message)
                order.append(message.user)
                if message.user != str(CHAT):
                    other_done.set()

            desk.on_message = slow_for_one  # type: ignore[method-assign]
            api.text(CHAT, "/help")
            api.text(2002, "/help")
            await desk.until_handled(2)
            assert order == ["2002", str(CHAT)]

    asyncio.run(scenario())


def test_split_cuts_at_paragraphs_then_lines_then_words_then_hard():
    para = "a" * 3000
    assert split(f"{para}\n\n{para}") == (para, para)
    line = "b" * 3000
    assert split(f"{line}\n{line}") == (line, line)
    words = ("word " * 1000).strip()
    parts = split(words)
    assert all(len(p) <= 4096 for p in parts) and " ".join(parts) == words
    assert all(not p.endswith(" ") and not p.startswith(" ") for p in parts)
    assert split("x" * 5000) == ("x" * 4096, "x" * 904)
    assert split("short") == ("short",)
    assert split("") == ("",)


def test_split_counts_as_telegram_does_in_utf16_units():
    emoji = "\U0001F600" * 3000  # each counts two units: 6000 units
    parts = split(emoji)
    assert [len(p) for p in parts] == [2048, 952]
    assert "".join(parts) == emoji


def test_a_long_reply_is_sent_in_parts_with_the_keyboard_on_the_last(api, tmp_path):
    paragraphs = [f"Paragraph {i}. " + ("All about your rights. " * 40).strip() for i in range(12)]
    text = "\n\n".join(paragraphs)
    assert len(text) > 2 * 4096

    async def scenario() -> None:
        async with running(api, tmp_path / "bot.db") as desk:
            await desk.channel.send(str(CHAT), Reply(text, choices=("Main menu", "Ask a question")))
            sent = [c.params for c in api.sent(CHAT)]
            assert len(sent) == len(split(text)) >= 3
            assert all(len(m["text"]) <= 4096 for m in sent)
            assert "\n\n".join(m["text"] for m in sent) == text  # cut only between paragraphs
            assert [labels(m) for m in sent[:-1]] == [[]] * (len(sent) - 1)
            assert labels(sent[-1]) == ["Main menu", "Ask a question"]
            assert not [c for c in api.calls_of("sendMessage") if "message_id" not in c.params]  # none refused

    asyncio.run(scenario())


def test_a_long_label_travels_as_its_number_and_comes_back_as_its_label(api, tmp_path):
    long_label = "A very long choice label that cannot fit in the sixty-four bytes of callback data"
    assert len(long_label.encode()) > 64

    async def scenario() -> None:
        async with running(api, tmp_path / "bot.db") as desk:
            await desk.channel.send(str(CHAT), Reply("Pick one", choices=("Short", long_label)))
            (message,) = [c.params for c in api.sent(CHAT)]
            data = [row[0]["callback_data"] for row in message["reply_markup"]["inline_keyboard"]]
            assert data == ["Short", "#2"]
            await desk.press(long_label)
            assert desk.incoming[-1].text == long_label
        async with running(api, tmp_path / "bot.db") as desk:  # after a restart: the number, which the core resolves
            before = desk.handled
            api.callback(CHAT, message["message_id"], "#2")
            await desk.until_handled(before + 1)
            assert desk.incoming[-1].text == "2"

    asyncio.run(scenario())


@pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")  # raised inside the library itself
def test_telegram_errors_become_send_errors(api, tmp_path):
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    async def scenario() -> None:
        async with running(api, tmp_path / "bot.db") as desk:
            desk.channel.sleep = no_sleep
            api.fail_next("sendMessage", 429, "Too Many Requests: retry after 3", retry_after=3)
            await desk.channel.send(str(CHAT), Reply("Hello"))
            assert waits == [3.0] and len(api.sent(CHAT)) == 1  # waited as told, then sent once

            api.fail_next("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
            api.fail_next("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
            with pytest.raises(SendError) as flood:
                await desk.channel.send(str(CHAT), Reply("Hello"))
            assert flood.value.retryable

            api.fail_next("sendMessage", 429, "Too Many Requests: retry after 3600", retry_after=3600)
            with pytest.raises(SendError) as long_wait:
                await desk.channel.send(str(CHAT), Reply("Hello"))
            assert long_wait.value.retryable and waits == [3.0, 1.0]  # an hour is not waited for

            api.fail_next("sendMessage", 403, "Forbidden: bot was blocked by the user")
            with pytest.raises(SendError) as blocked:
                await desk.channel.send(str(CHAT), Reply("Hello"))
            assert not blocked.value.retryable and "blocked" in str(blocked.value)

            api.fail_next("sendMessage", 400, "Bad Request: chat not found")
            with pytest.raises(SendError) as missing:
                await desk.channel.send(str(CHAT), Reply("Hello"))
            assert not missing.value.retryable and "chat not found" in str(missing.value).lower()

    asyncio.run(scenario())


def test_send_before_run_is_a_retryable_send_error(api, tmp_path):
    channel = TelegramChannel.from_settings({"token": TOKEN, "base_url": api.base_url}, tmp_path)
    with pytest.raises(SendError) as error:
        asyncio.run(channel.send(str(CHAT), Reply("Hello")))
    assert error.value.retryable


def test_a_wrong_token_raises_config_error_naming_the_setting_and_closes_the_client(api, tmp_path):
    channel = TelegramChannel.from_settings({"token": "999:WRONG", "base_url": api.base_url}, tmp_path)
    with pytest.raises(ConfigError) as error:
        asyncio.run(asyncio.wait_for(channel.run(_never), WAIT))
    message = str(error.value)
    assert message.startswith("channels.telegram.token: Telegram refused the token")
    assert "@BotFather" in message and "WRONG" not in message
    assert error.value.__cause__ is None and error.value.__suppress_context__  # the library's message quotes it
    assert api.calls_of("getUpdates") == []  # refused before any loop
    gc.collect()
    assert all(c.is_closed for c in gc.get_objects() if isinstance(c, httpx.AsyncClient))


def test_webhook_mode_receives_an_update_with_the_secret_and_refuses_a_wrong_one(api, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/telegram/hook"
    secret = "s3cret-Token_1"
    settings = {"mode": "webhook", "webhook": {"url": url, "listen": "127.0.0.1", "port": port,
                                               "secret_token": secret}}

    async def scenario() -> None:
        async with running(api, tmp_path / "bot.db", **settings) as desk:
            (registered,) = api.calls_of("setWebhook")
            assert registered.params["url"] == url and registered.params["secret_token"] == secret
            update = {"update_id": 1, "message": api.message(CHAT, text="/start",
                                                             entities=[{"type": "bot_command", "offset": 0,
                                                                        "length": 6}])}
            async with httpx.AsyncClient(trust_env=False, timeout=WAIT) as client:
                wrong = await client.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "nope"})
                assert wrong.status_code == 403
                right = await client.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": secret})
                assert right.status_code == 200
            await desk.until_handled(1)
            (menu,) = await api.wait_sent(CHAT, 1)
            assert "Amsterdam" in menu.params["text"] and labels(menu.params)
            assert len(desk.incoming) == 1  # the refused post reached nobody
            assert api.calls_of("getUpdates") == []

    asyncio.run(scenario())


@pytest.mark.parametrize(("settings", "expected"), [
    ({}, "channels.telegram.token: missing"),
    ({"token": "not a token"}, "channels.telegram.token: not a bot token"),
    ({"token": TOKEN, "mode": "push"}, "channels.telegram.mode: 'push' is not a mode"),
    ({"token": TOKEN, "mode": "webhook"}, "channels.telegram.webhook: required in webhook mode"),
    ({"token": TOKEN, "mode": "webhook", "webhook": {"url": "http://bot.example.org/tg", "port": 8443,
                                                     "secret_token": "abc"}},
     "channels.telegram.webhook.url: 'http://bot.example.org/tg' is not an https address"),
    ({"token": TOKEN, "mode": "webhook", "webhook": {"url": "https://bot.example.org/tg", "port": 99999,
                                                     "secret_token": "a b"}},
     "channels.telegram.webhook.port: 99999 is not a port number"),
    ({"token": TOKEN, "mode": "webhook", "webhook": {"url": "https://bot.example.org/tg", "port": 8443}},
     "channels.telegram.webhook.secret_token: missing or malformed"),
    ({"token": TOKEN, "allowed_groups": ["-100", "family"]}, "channels.telegram.allowed_groups[1]: 'family'"),
    ({"token": TOKEN, "base_url": "http://127.0.0.1:1/"}, "channels.telegram.base_url: 'http://127.0.0.1:1'"),
    ({"token": TOKEN, "tokn": "x"}, "channels.telegram.tokn: unknown key"),
])
def test_settings_are_checked_and_every_problem_names_its_key(settings, expected, tmp_path):
    with pytest.raises(ConfigError) as error:
        TelegramChannel.from_settings(settings, tmp_path)
    assert expected in str(error.value)
    assert "not a token" not in str(error.value).replace("not a bot token", "")  # a token is never echoed


def test_good_settings_build_a_channel(tmp_path):
    channel = TelegramChannel.from_settings(
        {"token": TOKEN, "mode": "webhook", "allowed_groups": [-100200, "-100300"],
         "webhook": {"url": "https://bot.example.org/telegram", "port": "8443", "secret_token": "abc_DEF-1"}},
        tmp_path)
    assert channel.name == "telegram" and channel.base_url is None
    assert channel.allowed_groups == frozenset({-100200, -100300})
    assert channel.webhook is not None and channel.webhook.path == "telegram" and channel.webhook.port == 8443
    assert channel.webhook.listen == "127.0.0.1"


async def _never(message: Incoming) -> None:
    raise AssertionError("no message should arrive")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_reply_that_cannot_be_sent_does_not_stop_the_channel(api, tmp_path):
    async def scenario() -> None:
        async with running(api, tmp_path / "bot.db") as desk:
            api.fail_next("sendMessage", 403, "Forbidden: bot was blocked by the user")
            assert await desk.say("/help") == []
            (reply,) = await desk.say("/help")
            assert reply["text"]

    asyncio.run(scenario())


def test_neither_message_texts_nor_the_token_are_logged(api, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    secret_question = "my neighbour Jane Doe films my garden with a drone"

    async def scenario() -> None:
        async with running(api, tmp_path / "bot.db") as desk:
            api.fail_next("sendMessage", 400, "Bad Request: chat not found")
            await desk.say(secret_question)
            await desk.say(secret_question)

    asyncio.run(scenario())
    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("rightsdesk", "httpx"))]
    assert ours, "the channel logs what it does"
    assert not [m for m in ours if "Jane" in m or "drone" in m or TOKEN in m]


def test_mydata_arrives_as_a_json_file_and_as_messages_when_the_file_is_refused(api, tmp_path):
    async def scenario() -> None:
        async with running(api, tmp_path / "bot.db") as desk:
            await desk.say("/language en")
            await desk.say("how can I see what data the city has about me")
            before = await desk.say("/mydata")
            assert before and all(r["text"] for r in before)  # the reply and the summary, as text
            (upload,) = await api.wait_call("sendDocument")
            assert upload.params["document"]["filename"] == "my-data.json"
            export = json.loads(upload.params["document"]["data"])
            assert export["profile"]["language"] == "en"
            assert any("see what data" in line["text"] for line in export["conversation"])
            # Telegram refuses the file (e.g. too big): the same data comes as messages, never nothing.
            api.fail_next("sendDocument", 400, "Bad Request: file is too big")
            replies = await desk.say("/mydata")
            assert len(replies) == len(before) + 1  # the JSON fits one message here
            assert json.loads(replies[-1]["text"])["profile"]["language"] == "en"

    asyncio.run(scenario())
