"""The store: a real SQLite file, migrations, one transaction per message."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest

from bot.messages import Incoming, Outcome, Reply, State, Unanswered
from bot.runtime import Runtime
from bot.store import Store

from .conftest import brain_for

AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def test_state_transcript_and_unanswered_are_committed_together(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    message = Incoming("console", "u1", "recipe please", AT)
    outcome = Outcome(State(lang="en", misses=1), (Reply("Sorry"),), (Unanswered("recipe please", "en"),))
    store.commit(message, outcome)
    assert store.load_state("console", "u1") == State(lang="en", misses=1)
    assert [r["text"] for r in store.db["transcript"].rows] == ["recipe please", "Sorry"]
    assert store.unanswered() == [{"at": "2026-11-25T10:00:00+00:00", "lang": "en", "text": "recipe please"}]
    assert "u1" not in str(list(store.db["unanswered"].rows))  # never who asked


def test_a_failed_commit_keeps_nothing(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    message = Incoming("console", "u1", "hello", AT)
    bad = Outcome(State(), (Reply("x"),), (Unanswered("q", "en"),))
    # The last write of the transaction fails: nothing before it may stay.
    store.db.execute("CREATE TRIGGER fail BEFORE INSERT ON unanswered BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(sqlite3.DatabaseError):
        store.commit(message, bad)
    assert store.load_state("console", "u1") == State()
    assert store.db["transcript"].count == 0


def test_migrations_run_once_and_refuse_a_newer_schema(tmp_path):
    path = tmp_path / "db.sqlite"
    Store(path).close()
    Store(path).close()  # idempotent
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=999")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this rightsdesk knows"):
        Store(path)


def test_a_damaged_state_row_starts_the_resident_afresh(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    store.db["conversations"].insert({"channel": "console", "user": "u", "state": "{not json", "updated_at": "x"})
    assert store.load_state("console", "u") == State()


def test_runtime_answers_kindly_when_the_core_fails(tmp_path, monkeypatch):
    import bot.runtime as runtime_module

    runtime = Runtime(brain_for("amsterdam"), Store(tmp_path / "db.sqlite"))

    def boom(*args, **kwargs):
        raise ValueError("bug")

    monkeypatch.setattr(runtime_module, "handle", boom)
    outcome = runtime.process(Incoming("console", "u", "hello", AT))
    assert outcome.replies[0].text == brain_for("amsterdam").knowledge.text("error", "nl")
    assert runtime.store.db["transcript"].count == 0


def test_a_message_delivered_twice_is_handled_once(tmp_path):
    runtime = Runtime(brain_for("amsterdam"), Store(tmp_path / "db.sqlite"))
    message = Incoming("matrix", "!room:x", "/start", AT, id="$event1")
    first = runtime.process(message)
    again = runtime.process(message)
    assert first.replies and again.replies == first.replies  # the same answer again, not the work again
    assert runtime.store.db["transcript"].count == 1 + len(first.replies)


def test_forget_erases_every_reply_kept_for_redelivery_of_the_resident(tmp_path):
    from bot.messages import Forget

    store = Store(tmp_path / "db.sqlite")
    store.commit(Incoming("telegram", "u1", "my name is Jane Doe", AT, id="m1"),
                 Outcome(State(), (Reply("Name: Jane Doe. Is that right?"),)))
    store.commit(Incoming("telegram", "u2", "hello", AT, id="m2"), Outcome(State(), (Reply("Hi"),)))
    store.commit(Incoming("telegram", "u1", "Yes, erase it", AT, id="m3"),
                 Outcome(State(), (Reply("Done"),), (Forget(),)))
    assert store.handled("telegram", "m1") is None  # its replies quoted the resident: gone
    assert store.handled("telegram", "m3") is None  # a Telegram message id names the chat: gone too
    assert store.handled("telegram", "m2") == (Reply("Hi"),)  # someone else's: untouched


def test_upgrading_a_v5_database_drops_the_replies_that_name_no_one(tmp_path):
    from bot import store as storelib

    path = tmp_path / "db.sqlite"
    old = storelib.MIGRATIONS
    storelib.MIGRATIONS = old[:5]
    try:
        v5 = Store(path)
        v5.db.execute("INSERT INTO handled (channel, id, at, replies) VALUES ('telegram', 'm1:1', ?, ?)",
                      [AT.isoformat(), '[["Name: Jane Doe", []]]'])
        v5.close()
    finally:
        storelib.MIGRATIONS = old
    store = Store(path)  # migrates to v6
    assert store.handled("telegram", "m1:1") == ()  # still known as handled, its replies gone
    store.close()  # the write-ahead log is checkpointed into the file
    assert b"Jane Doe" not in path.read_bytes()
