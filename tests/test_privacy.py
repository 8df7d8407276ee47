"""The bot practises what it preaches: /mydata, /forget (nothing left in the file), retention, masking,
encryption at rest, rate limit, and logs without message text."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from adapters.inboxes.file import FileInbox
from bot.cipher import Cipher, CipherError
from bot.messages import Incoming, Reply
from bot.outbox import Outbox
from bot.privacy import mask
from bot.runtime import Runtime
from bot.store import Store

from .conftest import brain_for

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
NAME, EMAIL = "Marijke Vandersteen", "marijke.vandersteen@example.org"


class Recorder:
    name = "console"

    def __init__(self) -> None:
        self.sent: list[tuple[str, Reply]] = []
        self.files: list[tuple[str, str, bytes]] = []

    async def run(self, on_message) -> None:  # pragma: no cover - not used
        return None

    async def send(self, user: str, reply: Reply) -> None:
        self.sent.append((user, reply))

    async def send_file(self, user: str, name: str, data: bytes) -> None:
        self.files.append((user, name, data))


def converse(runtime: Runtime, channel: Recorder, user: str, lines: list[str], start: datetime = T0) -> datetime:
    at = start
    for line in lines:
        at += timedelta(seconds=10)
        # Message ids as Telegram's adapter makes them ("m<chat>:<n>"): they name the resident too.
        message_id = f"m{user}:{int(at.timestamp())}"
        asyncio.run(runtime.on_message(channel, Incoming("console", user, line, at, id=message_id)))
    return at


def file_a_request(user: str = "resident-7") -> list[str]:
    return ["/language en", "I want to file a data protection request", "1", "social services", "Skip", "yes",
            NAME, "14-03-1980", "Skip", "1", EMAIL, "1"]


def make(tmp_path: Path, cipher: Cipher | None = None, inbox_up: bool = True) -> tuple[Runtime, Recorder]:
    store = Store(tmp_path / "db.sqlite", cipher)
    folder = tmp_path / "outbox" if inbox_up else Path("/proc/no-such-folder")
    runtime = Runtime(brain_for("amsterdam"), store, Outbox(store, {"default": FileInbox(folder)}))
    return runtime, Recorder()


def all_bytes(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.glob("db.sqlite*"))


def test_mydata_exports_everything_a_flow_stored(tmp_path):
    runtime, channel = make(tmp_path)
    converse(runtime, channel, "resident-7", [*file_a_request(), "/mydata"])
    (user, name, data) = channel.files[-1]
    export = json.loads(data)
    assert user == "resident-7" and name == "my-data.json"
    (case,) = export["cases"]
    assert case["answers"]["full_name"] == NAME and case["answers"]["email"] == EMAIL
    assert NAME in case["letter"] and case["deliveries"][0]["status"] == "delivered"
    assert any(m["text"] == EMAIL for m in export["conversation"])
    assert export["profile"]["language"] == "en"
    summary = channel.sent[-1][1].text
    assert "1 request" in summary


def test_forget_leaves_nothing_in_the_database_file(tmp_path):
    runtime, channel = make(tmp_path)
    at = converse(runtime, channel, "resident-7", file_a_request())
    ref = runtime.store.cases_of("console", "resident-7")[0].ref
    assert NAME.encode() in all_bytes(tmp_path)
    converse(runtime, channel, "resident-7", ["/forget", "1"], at)
    assert "erased everything" in channel.sent[-1][1].text
    runtime.store.close()
    raw = all_bytes(tmp_path)
    for secret in (NAME, EMAIL, "resident-7", "social services"):
        assert secret.encode() not in raw, secret
    store = Store(tmp_path / "db.sqlite")
    case = store.case(ref)
    assert case["status"] == "delivered" and case["answers"] is None and case["user"] == ""


def test_forget_of_an_undelivered_case_removes_it_and_its_delivery(tmp_path):
    runtime, channel = make(tmp_path, inbox_up=False)
    at = converse(runtime, channel, "resident-8", file_a_request("resident-8"))
    assert runtime.store.outbox("pending")
    converse(runtime, channel, "resident-8", ["/forget", "Yes, erase it"], at)
    assert runtime.store.outbox() == [] and runtime.store.db["cases"].count == 0


def test_forget_can_be_declined(tmp_path):
    runtime, channel = make(tmp_path)
    at = converse(runtime, channel, "u", ["/language en", "what is the gdpr"])
    converse(runtime, channel, "u", ["/forget", "2"], at)
    assert channel.sent[-1][1].text == brain_for("amsterdam").knowledge.text("forget_kept", "en")
    assert runtime.store.db["transcript"].count > 0


def test_retention_purge_with_a_moved_clock(tmp_path):
    runtime, channel = make(tmp_path)
    converse(runtime, channel, "resident-7", [*file_a_request(), "recipe for apple pie please"])
    store = runtime.store
    assert store.db["transcript"].count and store.db["unanswered"].count
    kept = store.purge(T0 + timedelta(days=10), timedelta(days=30))
    assert kept["transcript"] == 0 and store.db["transcript"].count
    purged = store.purge(T0 + timedelta(days=31), timedelta(days=30))
    assert purged["transcript"] > 0 and purged["unanswered"] == 1 and purged["case_answers"] == 1
    assert store.db["transcript"].count == 0 and store.db["unanswered"].count == 0
    assert NAME.encode() not in all_bytes(tmp_path)


def test_unanswered_questions_are_masked():
    assert mask("mail jane.doe@example.org or call +31 6 1234 5678, bsn 123456782") == (
        "mail [email] or call [number], bsn [number]")
    assert mask("DNI 12345678Z") == "DNI [id]"


def test_encrypted_columns_are_unreadable_without_the_key(tmp_path):
    key = Fernet.generate_key().decode()
    runtime, channel = make(tmp_path, Cipher([key]))
    converse(runtime, channel, "resident-7", file_a_request())
    runtime.store.compact()
    raw = all_bytes(tmp_path)
    assert NAME.encode() not in raw and EMAIL.encode() not in raw
    runtime.store.close()
    with pytest.raises(CipherError, match="RIGHTSDESK_KEYS is not set"):
        Store(tmp_path / "db.sqlite").load_state("console", "resident-7")
    new = Fernet.generate_key().decode()
    rotated = Store(tmp_path / "db.sqlite", Cipher([new, key]))
    assert rotated.rekey() > 0
    only_new = Store(tmp_path / "db.sqlite", Cipher([new]))
    assert only_new.load_state("console", "resident-7").lang == "en"
    assert NAME in only_new.case(only_new.cases_of("console", "resident-7")[0].ref)["letter"]


def test_rate_limit_answers_slow_down_once_then_nothing(tmp_path):
    runtime, channel = make(tmp_path)
    for i in range(25):
        asyncio.run(runtime.on_message(channel, Incoming("console", "spammer", f"wifi {i}", T0 + timedelta(seconds=i))))
    texts = [r.text for _, r in channel.sent]
    slow = brain_for("amsterdam").knowledge.text("slow_down", "en")
    assert texts.count(slow) == 1 and len(texts) == 21
    asyncio.run(runtime.on_message(channel, Incoming("console", "spammer", "wifi", T0 + timedelta(minutes=5))))
    assert channel.sent[-1][1].text != slow


def test_logs_carry_no_message_text(tmp_path, caplog):
    runtime, channel = make(tmp_path)
    with caplog.at_level(logging.DEBUG):
        converse(runtime, channel, "resident-7", file_a_request())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (NAME, EMAIL, "resident-7", "social services"):
        assert secret not in logged


def test_a_mydata_export_that_cannot_be_delivered_stops_at_the_first_failed_part(tmp_path, monkeypatch):
    from bot import runtime as runtimelib
    from bot.ports import SendError

    monkeypatch.setattr(runtimelib, "EXPORT_PART", 200)  # an export of many parts

    class Blocked(Recorder):
        """A file the channel refuses, then a resident who blocked the bot mid-way."""

        tries = 0
        blocked = False

        async def send_file(self, user: str, name: str, data: bytes) -> None:
            self.blocked = True
            raise SendError("the file is too big", retryable=False)

        async def send(self, user: str, reply: Reply) -> None:
            if self.blocked:
                self.tries += 1
                raise SendError("the user blocked the bot (403)", retryable=False)
            self.sent.append((user, reply))

    runtime, _ = make(tmp_path)
    channel = Blocked()
    at = converse(runtime, channel, "resident-9", ["how can I see what data the city has about me"])
    converse(runtime, channel, "resident-9", ["/mydata"], at)
    assert channel.tries == 1  # not one failing send per part
