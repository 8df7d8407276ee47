"""The one module that speaks SQL: conversation state, transcript, unanswered questions, in one SQLite file.

Every message's changes are committed in one transaction (`commit`), so a crash leaves either all of a message's
effects or none. The schema is versioned with `PRAGMA user_version` and migrated forward on open.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlite_utils

from bot.cipher import Cipher
from bot.messages import (
    Case,
    CaseChanged,
    CaseFiled,
    CaseInfo,
    Forget,
    Incoming,
    Outcome,
    Reply,
    State,
    TicketLeft,
    TicketOpened,
    Unanswered,
)
from bot.ports import Receipt


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


def _v2(db: sqlite_utils.Database) -> None:
    db["cases"].create(
        {
            "ref": str, "channel": str, "user": str, "flow": str, "city": str, "lang": str,
            "filed_at": str, "filed": str, "answers": str, "subject": str, "letter": str, "resident_letter": str,
            "inbox": str, "deadline": str, "rule": str, "status": str, "extended": int, "reminded": str,
            "answered_at": str, "receipt": str,
        },
        pk="ref",
        not_null={"channel", "user", "flow", "status"},
        defaults={"status": "submitted", "extended": 0},
    )
    db["cases"].create_index(["channel", "user"])
    db["cases"].create_index(["deadline"])
    # The transactional outbox: one row per case to deliver, written with the case (DESIGN.md §1).
    db["outbox"].create(
        {
            "id": int, "ref": str, "inbox": str, "status": str, "attempts": int, "next_at": str,
            "last_error": str, "created_at": str, "delivered_at": str, "receipt": str,
        },
        pk="id",
        not_null={"ref", "inbox", "status"},
        defaults={"status": "pending", "attempts": 0},
    )
    db["outbox"].create_index(["ref"], unique=True)
    db["outbox"].create_index(["status", "next_at"])
    db["case_events"].create({"id": int, "ref": str, "at": str, "event": str, "detail": str}, pk="id")
    db["case_events"].create_index(["ref"])


def _v3(db: sqlite_utils.Database) -> None:
    db["tickets"].create(
        {
            "ref": str, "channel": str, "user": str, "lang": str, "opened_at": str, "status": str,
            "question": str, "share_transcript": int, "cases": str, "agent": str, "agent_name": str,
            "staff_message": str, "closed_at": str, "closed_by": str,
        },
        pk="ref",
        not_null={"status"},
        defaults={"status": "open"},
    )
    db["tickets"].create_index(["status"])
    db["tickets"].create_index(["staff_message"])
    # Every message posted in the staff room about a ticket, so that an agent's reply to any of them finds it.
    db["staff_messages"].create({"message": str, "ref": str}, pk="message")
    db["ticket_events"].create({"id": int, "ref": str, "at": str, "event": str, "actor": str}, pk="id")
    db["ticket_events"].create_index(["ref"])


def _v4(db: sqlite_utils.Database) -> None:
    # Messages already handled, by the platform's id: a channel that delivers one again after a crash between the
    # commit and its own acknowledgement (Matrix sync tokens, Telegram offsets) must not have it handled twice.
    db["handled"].create({"channel": str, "id": str, "at": str}, pk=("channel", "id"))
    db["handled"].create_index(["at"])


def _v5(db: sqlite_utils.Database) -> None:
    # The replies given to a handled message, to give them again (not redo the work) when it is delivered again.
    db["handled"].add_column("replies", str)


def _v6(db: sqlite_utils.Database) -> None:
    # Staff-room posts to take back after a resident's /forget (GDPR Art. 17): the bot posted their question and
    # messages there. Kept until the staff channel confirms (a channel that is down is tried again later). The
    # room is kept with each post: a staff room that moves (a Telegram group upgraded to a supergroup numbers its
    # messages afresh) must not have another message taken back in its place.
    db["retractions"].create({"message": str, "room": str, "at": str, "tries": int}, pk="message")
    db["staff_messages"].add_column("room", str)
    db["staff_messages"].create_index(["ref"])
    # Whose message each handled row was: /forget must erase the replies kept there too (they can quote answers).
    # Rows from before this version name no one, so their replies are dropped: a redelivered old message then
    # gets no replies again, rather than /forget leaving a resident's answers behind.
    db["handled"].add_column("user", str)
    db["handled"].create_index(["channel", "user"])
    db.execute("UPDATE handled SET replies = NULL")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3, _v4, _v5, _v6]
RETRACT_TRIES = 10  # hourly tries; then the post is given up on, and the log says so
CASES_IN_STATE = 20  # the resident's most recent cases that the core sees (status, letters, deadlines)
MAX_KEPT_TEXT = 4000  # a 100 kB paste is refused by the core; the transcript keeps no more than this of it
SEALED_CASE_COLUMNS = ("answers", "subject", "letter", "resident_letter")


class Store:
    """A SQLite file holding everything the bot remembers."""

    def __init__(self, path: Path | str, cipher: Cipher | None = None) -> None:
        self.path = Path(path)
        self.cipher = cipher or Cipher()
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        if str(path) != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a reply that says "saved" must survive a power cut, not only a crash of this process.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        # Deleted content is overwritten, not left in free pages: /forget must leave nothing to recover (Art. 17).
        self.db.execute("PRAGMA secure_delete=ON")
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

    def handled(self, channel: str, message_id: str) -> tuple[Reply, ...] | None:
        """The replies given to a message with this platform id, if it was already committed (else None)."""
        row = self.db.execute("SELECT replies FROM handled WHERE channel = ? AND id = ?", [channel, message_id]
                              ).fetchone()
        if row is None:
            return None
        try:
            return tuple(Reply(text, tuple(choices)) for text, choices in json.loads(self.cipher.open(row[0]) or "[]"))
        except (ValueError, TypeError):
            return ()

    def load_state(self, channel: str, user: str) -> State:
        row = self.db.execute(
            "SELECT state FROM conversations WHERE channel = ? AND user = ?", [channel, user]
        ).fetchone()
        state = State()
        if row is not None:
            with contextlib.suppress(ValueError, TypeError):  # a damaged row must not lock a resident out
                state = State.from_json(json.loads(self.cipher.open(row[0]) or "{}"))
        return state.but(cases=self.cases_of(channel, user))

    def cases_of(self, channel: str, user: str) -> tuple[CaseInfo, ...]:
        rows = self.db.execute(
            "SELECT ref, flow, filed, deadline, status, extended, reminded, rule, resident_letter FROM cases "
            "WHERE channel = ? AND user = ? ORDER BY filed_at DESC, ref LIMIT ?",
            [channel, user, CASES_IN_STATE],
        ).fetchall()
        return tuple(
            CaseInfo(ref=r[0], flow=r[1], filed=r[2], deadline=r[3], status=r[4], extended=bool(r[5]),
                     reminded=r[6], rule=r[7], letter=self.cipher.open(r[8]) or "")
            for r in reversed(rows)
        )

    def commit(self, message: Incoming, outcome: Outcome) -> None:
        """Keep everything one message changed, in one transaction."""
        at = _iso(message.at)
        with self.transaction():
            # The statements of every message are plain SQL, which sqlite3 prepares once and keeps (its statement
            # cache): sqlite-utils' insert/upsert would read the table's columns again on every call.
            sql = self.db.conn
            if message.id is not None:
                replies = json.dumps([[r.text, list(r.choices)] for r in outcome.replies], ensure_ascii=False)
                sql.execute("INSERT OR REPLACE INTO handled (channel, id, at, replies, user) VALUES (?, ?, ?, ?, ?)",
                            (message.channel, message.id, at, self.cipher.seal(replies), message.user))
            sql.execute(
                "INSERT INTO conversations (channel, user, state, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (channel, user) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                (message.channel, message.user,
                 self.cipher.seal(json.dumps(outcome.state.to_json(), ensure_ascii=False)), at))
            if any(isinstance(e, Forget) for e in outcome.effects):
                self._forget(message.channel, message.user, at)
                return
            seal = self.cipher.seal
            rows = [] if message.kind == "system" else [
                (message.channel, message.user, at, "in", seal(message.text[:MAX_KEPT_TEXT]))]
            rows += [(message.channel, message.user, at, "out", seal(r.text)) for r in outcome.replies]
            sql.executemany("INSERT INTO transcript (channel, user, at, direction, text) VALUES (?, ?, ?, ?, ?)", rows)
            for effect in outcome.effects:
                if isinstance(effect, Unanswered):
                    sql.execute("INSERT INTO unanswered (at, lang, text) VALUES (?, ?, ?)",
                                (at, effect.lang, effect.text))
                elif isinstance(effect, CaseFiled):
                    self._file(message, effect.case, at)
                elif isinstance(effect, CaseChanged):
                    self._change(effect, at, "resident")
                elif isinstance(effect, TicketOpened):
                    t = effect.ticket
                    self.db["tickets"].insert({
                        "ref": t.ref, "channel": message.channel, "user": message.user, "lang": t.lang,
                        "opened_at": _iso(t.opened_at), "status": "open", "question": self.cipher.seal(t.question),
                        "share_transcript": int(t.share_transcript), "cases": ",".join(t.cases)})
                    self._ticket_event(t.ref, at, "opened", "resident")
                elif isinstance(effect, TicketLeft):
                    self.close_ticket(effect.ref, message.at, "resident", in_transaction=True)

    def _file(self, message: Incoming, case: Case, at: str) -> None:
        self.db["cases"].insert({
            "ref": case.ref, "channel": message.channel, "user": message.user, "flow": case.flow,
            "city": case.city, "lang": case.lang, "filed_at": _iso(case.filed_at), "filed": case.filed.isoformat(),
            "answers": self.cipher.seal(json.dumps(dict(case.answers), ensure_ascii=False)),
            "subject": self.cipher.seal(case.subject), "letter": self.cipher.seal(case.letter),
            "resident_letter": self.cipher.seal(case.resident_letter), "inbox": case.inbox,
            "deadline": case.deadline.isoformat() if case.deadline else None, "rule": case.rule,
            "status": "submitted", "extended": 0,
        })
        self.db["outbox"].insert({"ref": case.ref, "inbox": case.inbox, "status": "pending", "attempts": 0,
                                  "next_at": at, "created_at": at})
        self._event(case.ref, at, "filed", f"inbox {case.inbox}")

    def _change(self, change: CaseChanged, at: str, who: str) -> None:
        updates: dict[str, object] = {}
        if change.extended is not None:
            updates["extended"] = int(change.extended)
        if change.deadline is not None:
            updates["deadline"] = change.deadline.isoformat()
        if change.reminded is not None:
            updates["reminded"] = change.reminded
        if updates:
            self.db["cases"].update(change.ref, updates)
            self._event(change.ref, at, "changed", f"{who}: " + ", ".join(f"{k}={v}" for k, v in updates.items()))

    def _event(self, ref: str, at: str, event: str, detail: str) -> None:
        self.db["case_events"].insert({"ref": ref, "at": at, "event": event, "detail": detail})

    # -- the resident's rights: erasure and access ----------------------------------------------------------------

    def _forget(self, channel: str, user: str, at: str) -> None:
        """Erase a resident (GDPR Art. 17). Cases the city already received stay with the city: here they keep only
        reference, status and dates. Called inside the message's transaction."""
        self.db.execute("DELETE FROM conversations WHERE channel = ? AND user = ?", [channel, user])
        self.db.execute("DELETE FROM transcript WHERE channel = ? AND user = ?", [channel, user])
        # Every handled row of the resident goes, this message's too: a platform's message id can name the
        # resident (Telegram's are "m<chat id>:<n>"). Delivered again, the confirmation finds nothing to erase.
        self.db.execute("DELETE FROM handled WHERE channel = ? AND user = ?", [channel, user])
        # The bot's posts about the resident's tickets in the staff room are taken back after the commit (the
        # runtime does it: bot/runtime.py retract); agents' own messages there are theirs, not the bot's.
        tickets = "SELECT ref FROM tickets WHERE channel = ? AND user = ?"
        self.db.execute(f"INSERT OR IGNORE INTO retractions (message, room, at, tries) SELECT message, room, ?, 0 "
                        f"FROM staff_messages WHERE ref IN ({tickets})", [at, channel, user])
        self.db.execute(f"DELETE FROM staff_messages WHERE ref IN ({tickets})", [channel, user])
        self.db.execute("UPDATE tickets SET channel = '', user = '', question = NULL, staff_message = NULL, "
                        "status = 'closed', closed_by = COALESCE(closed_by, 'erased') WHERE channel = ? AND user = ?",
                        [channel, user])
        refs = self.db.execute(
            "SELECT c.ref, o.status FROM cases c LEFT JOIN outbox o ON o.ref = c.ref "
            "WHERE c.channel = ? AND c.user = ?", [channel, user]).fetchall()
        for ref, delivery in refs:
            if delivery in ("delivered", "sending"):  # the city has it, or may have it by now
                self.db.execute(
                    "UPDATE cases SET channel = '', user = '', answers = NULL, subject = NULL, letter = NULL, "
                    "resident_letter = NULL WHERE ref = ?", [ref])
                self._event(ref, at, "erased", "the resident's data erased; the city keeps its copy")
            else:  # not yet sent: nothing has left the bot, so nothing is kept
                for table in ("outbox", "case_events", "cases"):
                    self.db.execute(f"DELETE FROM {table} WHERE ref = ?", [ref])

    # -- the help desk -------------------------------------------------------------------------------------------

    def _ticket_event(self, ref: str, at: str, event: str, actor: str) -> None:
        self.db["ticket_events"].insert({"ref": ref, "at": at, "event": event, "actor": actor})

    def ticket(self, ref: str) -> dict | None:
        rows = list(self.db["tickets"].rows_where("ref = ?", [ref.strip().upper()]))
        if not rows:
            return None
        row = rows[0]
        row["question"] = self.cipher.open(row["question"])
        return row

    def ticket_for_staff_message(self, message: str) -> str | None:
        row = self.db.execute("SELECT ref FROM staff_messages WHERE message = ?", [message]).fetchone()
        return row[0] if row else None

    def staff_message(self, ref: str, message: str, room: str, at: datetime, first: bool = False) -> None:
        """Remember a post about ticket `ref` in the staff room. A post that went out while its resident used
        /forget (the ticket is already erased) goes straight to the posts to take back."""
        with self.transaction():
            erased = self.db.execute("SELECT 1 FROM tickets WHERE ref = ? AND user = ''", [ref]).fetchone()
            if erased:
                self.db.execute("INSERT OR IGNORE INTO retractions (message, room, at, tries) VALUES (?, ?, ?, 0)",
                                [message, room, _iso(at)])
                return
            self.db.execute("INSERT OR REPLACE INTO staff_messages (message, ref, room) VALUES (?, ?, ?)",
                            [message, ref, room])
            if first:
                self.db["tickets"].update(ref, {"staff_message": message})

    def retractions(self, limit: int = 100) -> list[tuple[str, str | None]]:
        """Staff-room posts still to take back, oldest first: (message id, room; None for posts kept before rooms
        were recorded)."""
        rows = self.db.execute("SELECT message, room FROM retractions ORDER BY at, message LIMIT ?",
                               [limit]).fetchall()
        return [(r[0], r[1]) for r in rows]

    def retracted(self, message: str) -> None:
        """A post was taken back: off the list."""
        self.db.execute("DELETE FROM retractions WHERE message = ?", [message])

    def retract_failed(self, message: str) -> bool:
        """Count a failed try; past RETRACT_TRIES the post is given up on (off the list). Returns whether it was."""
        with self.transaction():
            self.db.execute("UPDATE retractions SET tries = tries + 1 WHERE message = ?", [message])
            row = self.db.execute("SELECT tries FROM retractions WHERE message = ?", [message]).fetchone()
            if row is not None and row[0] >= RETRACT_TRIES:
                self.db.execute("DELETE FROM retractions WHERE message = ?", [message])
                return True
            return False

    def claim_ticket(self, ref: str, agent: str, agent_name: str, now: datetime) -> None:
        with self.transaction():
            self.db["tickets"].update(ref, {"status": "claimed", "agent": agent, "agent_name": agent_name})
            self._ticket_event(ref, _iso(now), "claimed", agent)

    def close_ticket(self, ref: str, now: datetime, actor: str, in_transaction: bool = False) -> None:
        def close() -> None:
            self.db.execute("UPDATE tickets SET status = 'closed', closed_at = ?, closed_by = ? WHERE ref = ?",
                            [_iso(now), actor, ref])
            self._ticket_event(ref, _iso(now), "closed", actor)

        if in_transaction:
            close()
        else:
            with self.transaction():
                close()

    def note_ticket(self, ref: str, now: datetime, event: str, actor: str) -> None:
        with self.transaction():
            self._ticket_event(ref, _iso(now), event, actor)

    def tickets(self, status: str | None = None, limit: int = 200) -> list[dict]:
        sql = "SELECT ref, channel, lang, opened_at, status, agent, agent_name, closed_at, closed_by FROM tickets"
        args: list[object] = []
        if status == "open":
            sql += " WHERE status != 'closed'"
        elif status:
            sql += " WHERE status = ?"
            args.append(status)
        cursor = self.db.execute(sql + " ORDER BY opened_at DESC LIMIT ?", [*args, limit])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def ticket_history(self, ref: str) -> list[dict]:
        return list(self.db["ticket_events"].rows_where("ref = ?", [ref], order_by="id"))

    def recent_transcript(self, channel: str, user: str, limit: int = 20) -> list[dict]:
        rows = self.db.execute("SELECT at, direction, text FROM transcript WHERE channel = ? AND user = ? "
                               "ORDER BY id DESC LIMIT ?", [channel, user, limit]).fetchall()
        return [{"at": r[0], "direction": r[1], "text": self.cipher.open(r[2])} for r in reversed(rows)]

    def checkpoint(self) -> None:
        """Move everything out of the write-ahead log (secure_delete already zeroed what was deleted)."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def compact(self) -> None:
        """Move everything out of the write-ahead log and drop free pages, so erased data leaves the files."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("VACUUM")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def export(self, channel: str, user: str) -> dict:
        """Everything held about a resident, readable (GDPR Art. 15 and 20)."""
        state = self.load_state(channel, user)
        transcript = [
            {"at": r[0], "from": "you" if r[1] == "in" else "bot", "text": self.cipher.open(r[2])}
            for r in self.db.execute("SELECT at, direction, text FROM transcript WHERE channel = ? AND user = ? "
                                     "ORDER BY id", [channel, user])
        ]
        cases = []
        for row in self.db["cases"].rows_where("channel = ? AND user = ?", [channel, user], order_by="filed_at"):
            row = self._opened(row)
            cases.append({
                "ref": row["ref"], "flow": row["flow"], "filed_at": row["filed_at"], "deadline": row["deadline"],
                "status": row["status"], "extended": bool(row["extended"]),
                "answers": json.loads(row["answers"] or "{}"), "letter": row["letter"],
                "deliveries": [dict(r) for r in self.db["outbox"].rows_where("ref = ?", [row["ref"]])],
                "history": self.case_history(row["ref"]),
            })
        profile = {"channel": channel, "id": user, "language": state.lang or state.last_lang}
        tickets = []
        for row in self.db["tickets"].rows_where("channel = ? AND user = ?", [channel, user], order_by="opened_at"):
            tickets.append({"ref": row["ref"], "opened_at": row["opened_at"], "status": row["status"],
                            "question": self.cipher.open(row["question"]), "agent": row["agent_name"],
                            "shared_conversation": bool(row["share_transcript"]), "closed_at": row["closed_at"]})
        return {"profile": profile, "conversation": transcript, "cases": cases, "tickets": tickets,
                "flow_in_progress": state.flow}

    def purge(self, now: datetime, retention: timedelta) -> dict[str, int]:
        """Forget on schedule: transcripts, unanswered questions and idle conversations older than `retention`,
        and the answers and letters of cases delivered more than `retention` ago (the city has them)."""
        cutoff = _iso(now - retention)
        counts = {}
        with self.transaction():
            counts["transcript"] = self.db.execute("DELETE FROM transcript WHERE at < ?", [cutoff]).rowcount
            counts["unanswered"] = self.db.execute("DELETE FROM unanswered WHERE at < ?", [cutoff]).rowcount
            self.db.execute("DELETE FROM handled WHERE at < ?", [cutoff])
            counts["ticket_questions"] = self.db.execute(
                "UPDATE tickets SET question = NULL WHERE status = 'closed' AND closed_at < ? AND question IS NOT NULL",
                [cutoff]).rowcount
            counts["conversations"] = self.db.execute(
                "DELETE FROM conversations WHERE updated_at < ?", [cutoff]).rowcount
            counts["case_answers"] = self.db.execute(
                "UPDATE cases SET answers = NULL, letter = NULL, resident_letter = NULL WHERE answers IS NOT NULL "
                "AND ref IN (SELECT ref FROM outbox WHERE status = 'delivered' AND delivered_at < ?)",
                [cutoff]).rowcount
        self.compact()
        return counts

    def rekey(self) -> int:
        """Re-encrypt every sealed value with the first key (key rotation); returns how many values changed."""
        n = 0
        with self.transaction():
            for table, key, columns in (("conversations", ("channel", "user"), ("state",)),
                                        ("transcript", ("id",), ("text",)),
                                        ("cases", ("ref",), SEALED_CASE_COLUMNS),
                                        ("tickets", ("ref",), ("question",)),
                                        ("handled", ("channel", "id"), ("replies",))):
                for row in self.db[table].rows:
                    changes = {c: self.cipher.reseal(row[c]) for c in columns if row[c] is not None}
                    if changes:
                        where = " AND ".join(f"{k} = ?" for k in key)
                        sets = ", ".join(f"{c} = ?" for c in changes)
                        self.db.execute(f"UPDATE {table} SET {sets} WHERE {where}",
                                        [*changes.values(), *(row[k] for k in key)])
                        n += len(changes)
        self.compact()
        return n

    # -- cases for staff and the outbox --------------------------------------------------------------------------

    def case(self, ref: str) -> dict | None:
        rows = list(self.db["cases"].rows_where("ref = ?", [ref.strip().upper()]))
        return self._opened(rows[0]) if rows else None

    def _opened(self, row: dict) -> dict:
        for key in SEALED_CASE_COLUMNS:
            if key in row:
                row[key] = self.cipher.open(row[key])
        return row

    def case_history(self, ref: str) -> list[dict]:
        return list(self.db["case_events"].rows_where("ref = ?", [ref], order_by="id"))

    def due(self, now: datetime, limit: int) -> list[dict]:
        """Outbox rows to try now, oldest first, joined with their case."""
        sql = (
            "SELECT o.ref, o.inbox, o.attempts, c.subject, c.letter, c.lang, c.flow, c.city, c.filed_at, "
            "c.deadline, c.answers, c.channel, c.user FROM outbox o JOIN cases c ON c.ref = o.ref "
            "WHERE o.status IN ('pending', 'sending') AND o.next_at <= ? ORDER BY o.next_at, o.id LIMIT ?"
        )
        cursor = self.db.execute(sql, [_iso(now), limit])
        names = [d[0] for d in cursor.description]
        return [self._opened(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]

    def claim(self, ref: str, now: datetime, lease: timedelta) -> bool:
        """Take a due delivery for one attempt: no other pass (in this process or another) takes it until the
        lease ends. A worker that dies mid-delivery leaves a lease that runs out, and the case is tried again:
        at least once, never lost."""
        with self.transaction():
            cursor = self.db.execute(
                "UPDATE outbox SET status = 'sending', next_at = ? WHERE ref = ? "
                "AND status IN ('pending', 'sending') AND next_at <= ?", [_iso(now + lease), ref, _iso(now)])
        return cursor.rowcount == 1

    def delivered(self, ref: str, receipt: Receipt, attempts: int, now: datetime) -> None:
        at = _iso(now)
        with self.transaction():
            self.db.execute(
                "UPDATE outbox SET status = 'delivered', attempts = ?, delivered_at = ?, receipt = ?, "
                "last_error = NULL WHERE ref = ?",
                [attempts, at, json.dumps({"id": receipt.id, "detail": receipt.detail}), ref],
            )
            self.db.execute(
                "UPDATE cases SET status = 'delivered', receipt = ? WHERE ref = ? AND status = 'submitted'",
                [receipt.id, ref],
            )
            self._event(ref, at, "delivered", receipt.detail or (receipt.id or ""))

    def failed(self, ref: str, error: str, next_at: datetime | None, attempts: int, now: datetime) -> None:
        """Record a failed attempt: try again at `next_at`, or never (None: the row is dead)."""
        at = _iso(now)
        with self.transaction():
            self.db.execute(
                "UPDATE outbox SET status = ?, attempts = ?, next_at = ?, last_error = ? WHERE ref = ?",
                ["pending" if next_at else "dead", attempts, _iso(next_at) if next_at else None, error[:500], ref],
            )
            self._event(ref, at, "dead" if next_at is None else "retry", error[:500])

    def due_now(self, now: datetime) -> int:
        """Make every pending delivery due now (staff, after an inbox outage is fixed)."""
        with self.transaction():
            return self.db.execute("UPDATE outbox SET next_at = ? WHERE status IN ('pending', 'sending')",
                                   [_iso(now)]).rowcount

    def retry(self, ref: str, now: datetime) -> bool:
        """Put a dead delivery back in the queue (staff: `run_bot.py outbox retry REF`)."""
        with self.transaction():
            cursor = self.db.execute(
                "UPDATE outbox SET status = 'pending', next_at = ?, attempts = 0 WHERE ref = ? AND status = 'dead'",
                [_iso(now), ref],
            )
            if cursor.rowcount:
                self._event(ref, _iso(now), "retry", "staff put it back in the queue")
        return bool(cursor.rowcount)

    def outbox(self, status: str | None = None) -> list[dict]:
        sql = ("SELECT o.ref, o.inbox, o.status, o.attempts, o.created_at, o.next_at, o.delivered_at, "
               "o.last_error FROM outbox o")
        args: list[str] = []
        if status:
            sql += " WHERE o.status = ?"
            args.append(status)
        cursor = self.db.execute(sql + " ORDER BY o.id", args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def overdue_conversations(self, now: datetime, timezone: str) -> list[tuple[str, str]]:
        """Conversations with a case whose deadline passed unanswered and that were not told yet."""
        today = now.astimezone(ZoneInfo(timezone)).date().isoformat()
        return [tuple(r) for r in self.db.execute(
            "SELECT DISTINCT channel, user FROM cases WHERE deadline < ? AND status != 'answered' "
            "AND (reminded IS NULL OR reminded != deadline) AND user != ''", [today]).fetchall()]

    def mark_answered(self, ref: str, at: datetime) -> bool:
        with self.transaction():
            if self.case(ref) is None:
                return False
            self.db["cases"].update(ref, {"status": "answered", "answered_at": _iso(at)})
            self._event(ref, _iso(at), "answered", "staff")
        return True

    def mark_extended(self, ref: str, deadline: date, at: datetime) -> None:
        with self.transaction():
            self._change(CaseChanged(ref, extended=True, deadline=deadline), _iso(at), "staff")

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
