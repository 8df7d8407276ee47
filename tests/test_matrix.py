"""The Matrix channel against a real Synapse on 127.0.0.1: a resident's nio client talks to the real runtime.

The resident does what Element does by default: an encrypted direct room, the bot invited. Every wait is
bounded (WAIT seconds) and fails with what was awaited; a bot that stops with an error fails the test at once.
The pure core answers the same messages alongside (`Chat`), to know how many replies each message gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    LocalProtocolError,
    MatrixRoom,
    MegolmEvent,
    RoomCreateResponse,
    RoomEncryptedFile,
    RoomMemberEvent,
    RoomMessageFile,
    RoomMessageText,
    RoomPreset,
    RoomSendResponse,
)
from nio.crypto import decrypt_attachment

from adapters.matrix import MatrixChannel, as_content
from bot.config import ConfigError
from bot.messages import Reply
from bot.runtime import Runtime
from bot.store import Store

from .conftest import Chat, brain_for
from .peers import synapse as synapsepeer

WAIT = 20.0  # seconds for any one awaited thing: a reply, a join, a login
REF = re.compile(r"\b[A-Z]{3}-[A-Z]{2}-[2-9A-HJKMNP-Z]{5}\b")
T = TypeVar("T")


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory):
    try:
        server = synapsepeer.start(tmp_path_factory.mktemp("synapse"))
    except synapsepeer.SynapseError as exc:
        pytest.fail(f"Synapse could not start: {exc}", pytrace=False)
    yield server
    synapsepeer.stop(server)


def new_user(server: synapsepeer.Synapse, prefix: str) -> tuple[str, str]:
    name = f"{prefix}-{uuid4().hex[:8]}"
    password = f"pw-{uuid4().hex}"
    return synapsepeer.register(server, name, password), password


async def bounded(awaitable: Awaitable[T], what: str, bot: Bot | None = None) -> T:
    """Await with a time bound; fail naming `what`, or with the bot's own error if the bot stopped first."""
    task = asyncio.ensure_future(awaitable)
    waiting = {task} | ({bot.task} if bot is not None and bot.task is not None else set())
    done, _ = await asyncio.wait(waiting, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if bot is not None and bot.task in done:
        bot.task.result()  # raises the bot's error
        raise AssertionError(f"the bot stopped while waiting for {what}")
    raise AssertionError(f"timed out after {WAIT:.0f} s waiting for {what}")


class Bot:
    """The real runtime with the Matrix channel, as `run_bot.py serve` would wire it, in this event loop."""

    def __init__(self, server: synapsepeer.Synapse, data: Path, user_id: str, password: str, **extra: Any) -> None:
        self.user_id = user_id
        self.data = data
        self.settings = {"homeserver": server.url, "user_id": user_id, "password": password,
                         "pickle_key": "test pickle key", **extra}
        self.task: asyncio.Task[None] | None = None
        self.store: Store | None = None

    def start(self) -> None:
        channel = MatrixChannel.from_settings(self.settings, self.data)
        self.store = Store(self.data / "rightsdesk.sqlite")
        runtime = Runtime(brain_for("amsterdam"), self.store)
        self.task = asyncio.create_task(channel.run(lambda message: runtime.on_message(channel, message)))

    async def stop(self) -> None:
        assert self.task is not None and self.store is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bounded(self.task, "the bot to stop")
        self.store.close()


class Resident:
    """A resident's own Matrix client, encrypted like Element; what the bot sends lands in `inbox`."""

    def __init__(self, server: synapsepeer.Synapse, user_id: str, password: str, folder: Path, bot: Bot) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
        self.client = AsyncClient(server.url, user_id, device_id="PHONE", store_path=str(folder), config=config)
        self.password = password
        self.bot = bot
        self.room_id = ""
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.bot_joined = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Resident:
        response = await bounded(self.client.login(self.password), "the resident's login")
        assert not isinstance(response, ErrorResponse), response
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        self.client.add_event_callback(self._on_text, RoomMessageText)
        self.client.add_event_callback(self._on_file, (RoomEncryptedFile, RoomMessageFile))
        self.client.add_event_callback(self._on_undecryptable, MegolmEvent)
        self.client.add_event_callback(self._on_member, RoomMemberEvent)
        self.task = asyncio.create_task(self.client.sync_forever(timeout=1000))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.client.close()

    async def _on_text(self, room: MatrixRoom, event: RoomMessageText) -> None:
        if event.sender == self.bot.user_id:
            await self.inbox.put({**event.source["content"], "decrypted": event.decrypted})

    async def _on_file(self, room: MatrixRoom, event: RoomEncryptedFile | RoomMessageFile) -> None:
        """A file from the bot: downloaded (and decrypted, for an encrypted room) into "data"."""
        if event.sender != self.bot.user_id:
            return
        content = event.source["content"]
        got = await self.client.download(event.url)
        data = got.body
        if isinstance(event, RoomEncryptedFile):
            data = decrypt_attachment(data, event.key["k"], event.hashes["sha256"], event.iv)
        await self.inbox.put({**content, "data": data, "decrypted": event.decrypted})

    async def _on_undecryptable(self, room: MatrixRoom, event: MegolmEvent) -> None:
        if event.sender == self.bot.user_id:
            await self.inbox.put({"body": "<undecryptable>", "decrypted": False})

    async def _on_member(self, room: MatrixRoom, event: RoomMemberEvent) -> None:
        if event.state_key == self.bot.user_id and event.membership == "join":
            self.bot_joined.set()

    async def open_direct_chat(self, encrypted: bool = True) -> str:
        """Create a direct room and invite the bot, as Element does; return once the bot has joined."""
        state = [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]
        response = await bounded(self.client.room_create(
            is_direct=True, preset=RoomPreset.trusted_private_chat, invite=[self.bot.user_id],
            initial_state=state if encrypted else []), "the room to be created")
        assert isinstance(response, RoomCreateResponse), response
        self.room_id = response.room_id
        return self.room_id

    async def wait_for_join(self) -> None:
        await bounded(self.bot_joined.wait(), "the bot to join the direct room", self.bot)

    async def send(self, content: dict[str, Any]) -> None:
        """Send an event, encrypted for the bot's device: first learn that device (key query)."""
        for _ in range(60):  # bounded: each round waits for one sync of the resident's client (about 1 s)
            room = self.client.rooms.get(self.room_id)
            if room is not None and (not room.encrypted or list(
                    self.client.device_store.active_user_devices(self.bot.user_id))):
                break
            if self.client.should_query_keys:
                with contextlib.suppress(LocalProtocolError):
                    await bounded(self.client.keys_query(), "the resident's key query")
            else:
                await bounded(self.client.synced.wait(), "a sync of the resident's client")
        response = await bounded(self.client.room_send(self.room_id, "m.room.message", content,
                                                       ignore_unverified_devices=True), "a message to be sent")
        assert isinstance(response, RoomSendResponse), response

    async def say(self, text: str) -> None:
        await self.send({"msgtype": "m.text", "body": text})

    async def replies(self, count: int) -> list[dict[str, Any]]:
        got = [await bounded(self.inbox.get(), f"reply {i + 1} of {count} from the bot", self.bot)
               for i in range(count)]
        assert all(r["decrypted"] for r in got), f"the bot's replies were not end-to-end encrypted: {got}"
        return got


async def exchange(resident: Resident, oracle: Chat, text: str) -> list[dict[str, Any]]:
    """Say `text` and collect as many replies as the pure core gives for it."""
    expected = oracle.say(text)
    await resident.say(text)
    return await resident.replies(len(expected))


def answer_for(oracle: Chat, name: str) -> str | None:
    """What a careful resident types at the current step of the data request (tests/test_flows.py answer_all)."""
    flow = oracle.state.flow
    if flow is None or flow.get("phase") != "step":
        return None
    k = oracle.brain.knowledge
    step = k.flows[flow["id"]].steps[flow["at"]]
    return {
        "choice": "1", "email": "jane@example.org", "date": "14-03-1980", "phone": "+31 20 123 4567",
        "consent": k.text("answer_yes", "en"), "yesno": k.text("answer_no", "en"),
        "text": name if step.name == "full_name" else "parking",
    }[step.type]


def test_a_resident_talks_with_the_bot_in_an_encrypted_direct_room(synapse, tmp_path):
    bot_id, bot_password = new_user(synapse, "bot")
    resident_id, resident_password = new_user(synapse, "resident")
    k = brain_for("amsterdam").knowledge

    async def scenario() -> None:
        bot = Bot(synapse, tmp_path / "bot", bot_id, bot_password)
        bot.start()
        oracle = Chat(brain_for("amsterdam"), channel="matrix")
        async with Resident(synapse, resident_id, resident_password, tmp_path / "resident", bot) as resident:
            await resident.open_direct_chat()
            await resident.wait_for_join()

            (menu,) = await exchange(resident, oracle, "/start")
            assert "Amsterdam" in menu["body"]
            assert "\n1. " in menu["body"] and "\n2. " in menu["body"]
            assert menu["format"] == "org.matrix.custom.html"
            assert menu["formatted_body"].count("<li>") == len(oracle.say("/start")[0].choices) >= 5

            await exchange(resident, oracle, "/language en")
            (answer,) = await exchange(resident, oracle, "how can I see what data the city has about me")
            assert answer["body"].startswith(k.entries["privacy.access-my-data"].answer["en"])
            assert f"1. {k.flows['data-request'].title['en']}" in answer["body"]

            (unknown,) = await exchange(resident, oracle, "/frobnicate<b>x</b>&")
            assert "/frobnicate<b>x</b>&" in unknown["body"]  # plain text keeps what was typed
            assert "/frobnicate&lt;b&gt;x&lt;/b&gt;&amp;" in unknown["formatted_body"]
            assert "<b>" not in unknown["formatted_body"]

            # A photo as Element sends it in an encrypted room (an encrypted attachment), then a sloppy one.
            attachment = {"url": "mxc://localhost/abc", "v": "v2", "iv": "AAAAAAAAAAAAAAAAAAAAAA",
                          "hashes": {"sha256": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"},
                          "key": {"alg": "A256CTR", "k": "a" * 43, "kty": "oct", "ext": True,
                                  "key_ops": ["encrypt", "decrypt"]}}
            await resident.send({"msgtype": "m.image", "body": "photo.jpg", "file": attachment})
            await resident.send({"msgtype": "m.file", "body": "scan.pdf", "url": "mxc://localhost/def"})
            for media in await resident.replies(2):
                assert media["body"].startswith(k.text("not_text", "en"))
        await bot.stop()

    asyncio.run(scenario())


def test_a_data_request_continues_after_a_restart_of_the_bot(synapse, tmp_path):
    bot_id, bot_password = new_user(synapse, "bot")
    resident_id, resident_password = new_user(synapse, "resident")
    name = "Jane <b>Doe</b> & <script>x</script>"

    async def scenario() -> None:
        bot = Bot(synapse, tmp_path / "bot", bot_id, bot_password)
        bot.start()
        oracle = Chat(brain_for("amsterdam"), channel="matrix")
        async with Resident(synapse, resident_id, resident_password, tmp_path / "resident", bot) as resident:
            await resident.open_direct_chat()
            await resident.wait_for_join()
            await exchange(resident, oracle, "/language en")
            first = await exchange(resident, oracle, "I want to file a data protection request")
            assert first[-1]["body"].startswith("Which of your rights")
            for _ in range(3):  # the right, the department, the details
                await exchange(resident, oracle, answer_for(oracle, name))

            # The bot goes down mid-flow; the resident answers meanwhile; a new bot on the same folders.
            await bot.stop()
            typed = answer_for(oracle, name)
            expected = oracle.say(typed)
            await resident.say(typed)
            bot.start()
            after = await resident.replies(len(expected))
            # The first message after the restart answers the new one: nothing old was answered again.
            assert [r["body"] for r in after] == [as_content(r)["body"] for r in expected]

            summary: list[dict[str, Any]] = []
            for _ in range(20):  # bounded: the data request has fewer steps
                typed = answer_for(oracle, name)
                if typed is None:
                    break
                summary = await exchange(resident, oracle, typed)
            assert "Please check your request" in summary[-1]["body"] and name in summary[-1]["body"]
            formatted = summary[-1]["formatted_body"]
            assert "Jane &lt;b&gt;Doe&lt;/b&gt; &amp; &lt;script&gt;x&lt;/script&gt;" in formatted
            assert "<script>" not in formatted and "<b>" not in formatted

            done = await exchange(resident, oracle, "1")  # Confirm and send
            refs = REF.findall(done[0]["body"])
            assert refs and refs[0].startswith("AMS-DR-")
            assert bot.store is not None and bot.store.case(refs[0]) is not None
        await bot.stop()

    asyncio.run(scenario())


def test_messages_from_before_the_bot_s_first_start_are_not_answered(synapse, tmp_path):
    bot_id, bot_password = new_user(synapse, "bot")
    resident_id, resident_password = new_user(synapse, "resident")

    async def scenario() -> None:
        bot = Bot(synapse, tmp_path / "bot", bot_id, bot_password, encryption=False)
        async with Resident(synapse, resident_id, resident_password, tmp_path / "resident", bot) as resident:
            await resident.open_direct_chat(encrypted=False)
            response = await resident.client.room_send(resident.room_id, "m.room.message",
                                                       {"msgtype": "m.text", "body": "/start"})
            assert isinstance(response, RoomSendResponse), response
            bot.start()
            await resident.wait_for_join()
            (expected,) = Chat(brain_for("amsterdam"), channel="matrix").say("/help")
            await resident.say("/help")
            reply = await bounded(resident.inbox.get(), "the answer to /help", bot)
            assert reply["body"] == as_content(expected)["body"], "an old message was answered"
            assert not reply["decrypted"]  # encryption: false really means plain text
        await bot.stop()

    asyncio.run(scenario())


def test_a_wrong_password_is_a_config_error_naming_the_setting(synapse, tmp_path):
    bot_id, _ = new_user(synapse, "bot")
    channel = MatrixChannel.from_settings({"homeserver": synapse.url, "user_id": bot_id, "password": "wrong",
                                           "pickle_key": "k"}, tmp_path)

    async def never(message: object) -> None:
        raise AssertionError("no message can arrive without a login")

    with pytest.raises(ConfigError, match=r"channels\.matrix\.password: .*M_FORBIDDEN"):
        asyncio.run(asyncio.wait_for(channel.run(never), WAIT))


def test_a_device_whose_store_was_lost_is_refused(synapse, tmp_path):
    bot_id, bot_password = new_user(synapse, "bot")

    async def scenario() -> None:
        bot = Bot(synapse, tmp_path / "bot", bot_id, bot_password)
        channel = MatrixChannel.from_settings(bot.settings, bot.data)
        await bounded(channel._connect(), "the first login")  # uploads the device's keys
        await channel._close()
        shutil.rmtree(tmp_path / "bot" / "matrix")
        again = MatrixChannel.from_settings(bot.settings, bot.data)

        async def never(message: object) -> None:
            raise AssertionError("a refused device reads nothing")

        with pytest.raises(ConfigError, match=r"channels\.matrix\.device_id: device RIGHTSDESK already has"):
            await bounded(again.run(never), "the refusal")

    asyncio.run(scenario())


@pytest.mark.parametrize(("settings", "key"), [
    ({}, "homeserver"),
    ({"homeserver": "matrix.example.org"}, "homeserver"),
    ({"homeserver": "https://m.example.org"}, "user_id"),
    ({"homeserver": "https://m.example.org", "user_id": "rightsdesk"}, "user_id"),
    ({"homeserver": "https://m.example.org", "user_id": "@b:example.org"}, "password"),
    ({"homeserver": "https://m.example.org", "user_id": "@b:example.org", "password": "p"}, "pickle_key"),
    ({"homeserver": "https://m.example.org", "user_id": "@b:example.org", "password": "p", "access_token": "t",
      "pickle_key": "k"}, "access_token"),
    ({"homeserver": "https://m.example.org", "user_id": "@b:example.org", "password": "p", "pickle_key": "k",
      "encryption": "yes"}, "encryption"),
    ({"homeserver": "https://m.example.org", "user_id": "@b:example.org", "password": "p", "pickle_key": "k",
      "allowed_rooms": "!a:example.org"}, "allowed_rooms"),
    ({"homeserver": "https://m.example.org", "user_id": "@b:example.org", "password": "p", "pickle_key": "k",
      "rooms": []}, "rooms"),
])
def test_settings_are_checked_and_the_error_names_the_key(settings, key, tmp_path):
    with pytest.raises(ConfigError, match=rf"^channels\.matrix\.{key}: "):
        MatrixChannel.from_settings(settings, tmp_path)


def test_settings_have_defaults_and_the_store_lives_in_the_data_folder(tmp_path):
    channel = MatrixChannel.from_settings({"homeserver": "https://m.example.org/", "user_id": "@b:example.org",
                                           "access_token": "t", "encryption": False}, tmp_path)
    s = channel.settings
    assert (s.homeserver, s.device_id, s.store, s.encryption) == ("https://m.example.org", "RIGHTSDESK",
                                                                  tmp_path / "matrix", False)


def test_a_reply_is_numbered_text_and_escaped_html():
    content = as_content(Reply("Hello <you>\nsecond line", ("A & B", "<i>C</i>")))
    assert content["body"] == "Hello <you>\nsecond line\n\n1. A & B\n2. <i>C</i>"
    assert content["formatted_body"] == ("Hello &lt;you&gt;<br>second line"
                                         "<ol><li>A &amp; B</li><li>&lt;i&gt;C&lt;/i&gt;</li></ol>")


def test_group_rooms_are_read_only_when_listed_in_allowed_rooms(synapse, tmp_path):
    bot_id, bot_password = new_user(synapse, "bot")
    resident_id, resident_password = new_user(synapse, "resident")
    neighbour_id, _ = new_user(synapse, "neighbour")

    async def scenario() -> None:
        bot = Bot(synapse, tmp_path / "bot", bot_id, bot_password)
        async with Resident(synapse, resident_id, resident_password, tmp_path / "resident", bot) as resident:
            rooms = []
            for _ in range(2):
                response = await resident.client.room_create(invite=[neighbour_id, bot_id])
                assert isinstance(response, RoomCreateResponse), response
                rooms.append(response.room_id)
            unlisted, listed = rooms
            bot.settings["allowed_rooms"] = [listed]
            bot.start()
            resident.room_id = listed
            await resident.wait_for_join()  # the bot saw both invitations in its first sync
            (expected,) = Chat(brain_for("amsterdam"), channel="matrix").say("/start")
            await resident.say("/start")
            reply = await bounded(resident.inbox.get(), "the answer in the listed group room", bot)
            assert reply["body"] == as_content(expected)["body"]
            # The unlisted group looked like a direct chat in its invitation; the bot left once it saw it whole.
            for _ in range(60):  # bounded: one round per sync of the resident's client
                members = await resident.client.joined_members(unlisted)
                if bot_id not in [m.user_id for m in members.members]:
                    break
                await bounded(resident.client.synced.wait(), "a sync of the resident's client")
            else:
                raise AssertionError("the bot stayed in a group room that is not in allowed_rooms")
        await bot.stop()

    asyncio.run(scenario())


def test_a_wrong_pickle_key_is_a_config_error_naming_the_setting(synapse, tmp_path):
    bot_id, bot_password = new_user(synapse, "bot")

    async def scenario() -> None:
        bot = Bot(synapse, tmp_path / "bot", bot_id, bot_password)
        channel = MatrixChannel.from_settings(bot.settings, bot.data)
        await bounded(channel._connect(), "the first login")
        await channel._close()
        wrong = MatrixChannel.from_settings({**bot.settings, "pickle_key": "another key"}, bot.data)
        with pytest.raises(ConfigError, match=r"^channels\.matrix\.pickle_key: "):
            await bounded(wrong._connect(), "the refusal")
        await wrong._close()

    asyncio.run(scenario())


def test_a_rate_limited_reply_waits_for_the_homeserver_and_is_sent(synapse, tmp_path):
    bot_id, bot_password = new_user(synapse, "bot")
    resident_id, resident_password = new_user(synapse, "resident")
    synapsepeer.limit_messages(synapse, bot_id, per_second=2, burst_count=1)

    async def scenario() -> None:
        bot = Bot(synapse, tmp_path / "bot", bot_id, bot_password)
        bot.start()
        oracle = Chat(brain_for("amsterdam"), channel="matrix")
        async with Resident(synapse, resident_id, resident_password, tmp_path / "resident", bot) as resident:
            await resident.open_direct_chat()
            await resident.wait_for_join()
            await exchange(resident, oracle, "/language en")
            # Two replies in a row: the second meets M_LIMIT_EXCEEDED, waits retry_after_ms, and goes out.
            replies = await exchange(resident, oracle, "I want to file a data protection request")
            assert len(replies) == 2 and replies[-1]["body"].startswith("Which of your rights")
        await bot.stop()

    asyncio.run(scenario())


def test_an_undecryptable_message_is_answered_once_per_session_and_only_where_it_helps(tmp_path):
    from nio import MegolmEvent

    channel = MatrixChannel.from_settings({"homeserver": "https://m.example.org/", "user_id": "@b:example.org",
                                           "password": "x", "pickle_key": "k" * 32,
                                           "allowed_rooms": ["!staff:example.org"]}, tmp_path)
    client = AsyncClient("https://m.example.org", "@b:example.org")

    def event(event_id: str, seconds: int = 0, session: str = "s", relates: dict | None = None) -> MegolmEvent:
        content = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA", "sender_key": "k",
                   "session_id": session, "device_id": "D", **({"m.relates_to": relates} if relates else {})}
        return MegolmEvent.from_dict({"type": "m.room.encrypted", "event_id": event_id,
                                      "sender": "@resident:example.org",
                                      "origin_server_ts": 1_795_000_000_000 + seconds * 1000, "content": content})

    resident, staff = MatrixRoom("!r:example.org", "@b:example.org"), MatrixRoom("!staff:example.org", "@b:example.org")
    assert channel._incoming(client, resident, event("$e0")) is None  # this bot runs without crypto: silence
    client.olm = object()  # as when the crypto store is loaded
    incoming = channel._incoming(client, resident, event("$e1"))
    assert incoming is not None and incoming.kind == "undecryptable" and incoming.id == "$e1"
    assert channel._incoming(client, resident, event("$e2", 60)) is None  # same key session, a minute later
    assert channel._incoming(client, resident, event("$e3", 60, session="t")) is not None  # another session
    assert channel._incoming(client, resident, event("$e4", 60 * 11)) is not None  # ten minutes on: told again
    edit = {"rel_type": "m.replace", "event_id": "$e1"}
    assert channel._incoming(client, resident, event("$e5", 60 * 30, relates=edit)) is None  # an edit, a reaction
    assert channel._incoming(client, staff, event("$e6", 60 * 40)) is None  # never in the staff room


def test_the_core_tells_a_resident_it_could_not_read_an_encrypted_message():
    from datetime import UTC, datetime

    from bot.core import handle
    from bot.messages import Incoming, State

    from .conftest import brain_for

    brain = brain_for("amsterdam")
    outcome = handle(Incoming("matrix", "!r:x", "", datetime(2026, 11, 25, tzinfo=UTC), kind="undecryptable"),
                     State(lang="en"), brain)
    assert outcome.replies[0].text == brain.knowledge.text("undecryptable", "en")
