"""The one module that speaks SQL: conversation state, transcript, unanswered questions, in one SQLite file.

Every message's changes are committed in one transaction (`commit`), so a crash leaves either all of a message's
effects or none. The schema is versioned with `PRAGMA user_version` and migrated forward on open.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import sqlite_utils

from bot.messages import Incoming, Outcome, State, Unanswered


def _v1(db: sqlite_utils.Database) -> None:
    db["conversations"].create(
        {"channel": str, "user": str, "state": str, "updated_at": str}, pk=("channel", "user")
    )
    db["transcript"].create(
        {"id": int, "channel": str, "user": str, "at": str, "direction": str, "text": str}, pk="id"
    )
    db["transcript"].create_index(["channel", "user"])
    db["transcript"].create_index(["at"])
    # Unanswered questions keep text and language only, never who asked (they are for staff to improve the FAQ).
    db["unanswered"].create({"id": int, "at": str, "lang": str, "text": str}, pk="id")
    db["unanswered"].create_index(["at"])


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1]


class Store:
    """A SQLite file holding everything the bot remembers."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        if str(path) != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a reply that says "saved" must survive a power cut, not only a crash of this process.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"the database {self.path} has schema version {version}, newer than this rightsdesk knows "
                f"({len(MIGRATIONS)}): upgrade rightsdesk or point --data at another folder"
            )
        for number in range(version, len(MIGRATIONS)):
            with self.transaction():
                MIGRATIONS[number](self.db)
                self.db.execute(f"PRAGMA user_version={number + 1}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block in one transaction: all of it is kept, or none of it."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # -- conversations ----------------------------------------------------------------------------------------

    def load_state(self, channel: str, user: str) -> State:
        row = self.db.execute(
            "SELECT state FROM conversations WHERE channel = ? AND user = ?", [channel, user]
        ).fetchone()
        if row is None:
            return State()
        try:
            return State.from_json(json.loads(row[0]))
        except (ValueError, TypeError):
            return State()  # a damaged row must not lock a resident out: start them afresh

    def commit(self, message: Incoming, outcome: Outcome) -> None:
        """Keep everything one message changed, in one transaction."""
        at = _iso(message.at)
        with self.transaction():
            self.db["conversations"].upsert(
                {
                    "channel": message.channel,
                    "user": message.user,
                    "state": json.dumps(outcome.state.to_json(), ensure_ascii=False),
                    "updated_at": at,
                },
                pk=("channel", "user"),
            )
            rows = [{"channel": message.channel, "user": message.user, "at": at, "direction": "in",
                     "text": message.text}]
            rows += [
                {"channel": message.channel, "user": message.user, "at": at, "direction": "out", "text": r.text}
                for r in outcome.replies
            ]
            self.db["transcript"].insert_all(rows)
            for effect in outcome.effects:
                if isinstance(effect, Unanswered):
                    self.db["unanswered"].insert({"at": at, "lang": effect.lang, "text": effect.text})

    # -- staff views ------------------------------------------------------------------------------------------

    def unanswered(self, since: datetime | None = None) -> list[dict]:
        sql = "SELECT at, lang, text FROM unanswered"
        args: list[str] = []
        if since is not None:
            sql += " WHERE at >= ?"
            args.append(_iso(since))
        rows = self.db.execute(sql + " ORDER BY at", args)
        return [dict(zip(("at", "lang", "text"), row, strict=True)) for row in rows]


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds")
