"""Wire the pure core to a store and channels: one message at a time per conversation, one transaction each.

Order for each message (DESIGN.md §1): load state -> core.handle -> store.commit (one transaction) -> send
replies. A reply is sent only after what it reports is committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
import weakref
from datetime import UTC, datetime

from bot.core import Brain, agent_said, handle, remind, ticket_event
from bot.handoff import Desk, first_name, inert, parse_agent, queue_lines
from bot.messages import (
    CaseFiled,
    Export,
    Forget,
    Incoming,
    Outcome,
    Relay,
    Reply,
    State,
    Ticket,
    TicketLeft,
    TicketOpened,
)
from bot.outbox import Outbox, Report
from bot.ports import Channel, SendError
from bot.privacy import pseudonym
from bot.store import Store

log = logging.getLogger("rightsdesk.runtime")
SHARED_TRANSCRIPT_LINES = 20  # the recent conversation an agent sees, with the resident's consent
EXPORT_PART = 12_000  # characters of /mydata JSON per message where the channel cannot send a file


class Runtime:
    def __init__(self, brain: Brain, store: Store, outbox: Outbox | None = None,
                 channels: dict[str, Channel] | None = None, desk: Desk | None = None) -> None:
        self.brain = brain
        self.store = store
        self.outbox = outbox
        self.channels = channels or {}
        self.desk = desk
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        # Logs name residents by a keyed hash only (GDPR Art. 32); a fixed salt keeps tokens stable across restarts.
        self.salt = (os.environ.get("RIGHTSDESK_LOG_SALT") or secrets.token_hex(16)).encode()
        self._retracting = asyncio.Lock()  # one pass of taking back staff-room posts at a time

    def failed(self, message: Incoming, exc: Exception, doing: str) -> Outcome:
        log.error("%s failed channel=%s user=%s error=%s: %s", doing, message.channel, self.pseudonym(message.user),
                  type(exc).__name__, exc)
        k = self.brain.knowledge
        return Outcome(State(), (Reply(k.text("error", k.languages[0])),))

    async def remind(self, now: datetime) -> int:
        """Scheduled job: tell residents who have not written that a deadline passed (once per case and deadline).
        Returns how many residents were told."""
        told = 0
        for channel_name, user in self.store.overdue_conversations(now, self.brain.knowledge.city.timezone):
            channel = self.channels.get(channel_name)
            if channel is None:
                continue
            async with self.lock(channel_name, user):
                state = self.store.load_state(channel_name, user)
                outcome = remind(state, now, self.brain, channel_name, user)
                if outcome is None:
                    continue
                self.store.commit(Incoming(channel_name, user, "", now, kind="system"), outcome)
                for reply in outcome.replies:
                    try:
                        await channel.send(user, reply)
                    except SendError as exc:
                        log.warning("could not send a deadline reminder user=%s: %s", self.pseudonym(user), exc)
                told += 1
        return told

    def pseudonym(self, user: str) -> str:
        return pseudonym(user, self.salt)

    def process(self, message: Incoming) -> Outcome:
        """Handle one message and commit its effects; on a bug, answer kindly and keep nothing half-done."""
        started = time.perf_counter()
        try:
            if message.id is not None:
                repeated = self.store.handled(message.channel, message.id)
                if repeated is not None:
                    # Delivered again (a crash between our commit and the channel's acknowledgement): the same
                    # replies again, not the work again (Matrix sends them with the same transaction ids).
                    log.info("message already handled channel=%s user=%s", message.channel,
                             self.pseudonym(message.user))
                    return Outcome(State(), repeated)
            state = self.store.load_state(message.channel, message.user)
        except Exception as exc:
            return self.failed(message, exc, "loading the conversation")
        try:
            outcome = handle(message, state, self.brain)
        except Exception as exc:
            # A bug in the rules must never show a traceback to a resident, nor lose what was kept before. The log
            # names the error type and place, never the message (its text may hold personal data).
            log.error("core failed channel=%s user=%s error=%s", message.channel, self.pseudonym(message.user),
                      type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
            lang = state.lang or state.last_lang or self.brain.knowledge.languages[0]
            return Outcome(state, (Reply(self.brain.knowledge.text("error", lang)),))
        try:
            self.store.commit(message, outcome)
        except Exception as exc:
            # Nothing of this message was kept: say so rather than send replies about what was not saved.
            return self.failed(message, exc, "saving the message")
        log.info("message handled channel=%s user=%s replies=%d effects=%s ms=%.1f", message.channel,
                 self.pseudonym(message.user), len(outcome.replies),
                 ",".join(type(e).__name__ for e in outcome.effects) or "-", (time.perf_counter() - started) * 1000)
        return outcome

    async def on_message(self, channel: Channel, message: Incoming) -> None:
        """Process one message and send its replies; messages of one conversation go strictly in order."""
        self.channels.setdefault(channel.name, channel)
        if self.desk is not None and self.desk.is_staff_room(message.channel, message.user):
            await self.on_staff(message)
            return
        async with self.lock(message.channel, message.user):
            outcome = self.process(message)
            for reply in outcome.replies:
                await self.send(channel, message.user, reply)
            forgot = any(isinstance(e, Forget) for e in outcome.effects)
            if forgot:
                self.store.checkpoint()  # erased rows must leave the write-ahead log too, not only the tables
            if any(isinstance(e, Export) for e in outcome.effects):
                await self.send_export(channel, message.user, outcome.state)
        for effect in outcome.effects:
            if isinstance(effect, TicketOpened):
                await self.post_ticket(effect.ticket, message)
            elif isinstance(effect, Relay):
                await self.to_staff(self.staff_text("staff_relay", ref=effect.ref, text=inert(effect.text)),
                                    effect.ref)
            elif isinstance(effect, TicketLeft):
                await self.to_staff(self.staff_text("staff_left", ref=effect.ref), effect.ref)
        if forgot:
            await self.retract(count=False)
        if self.outbox is not None and any(isinstance(e, CaseFiled) for e in outcome.effects):
            # A new case goes out at once; the scheduled pass retries what fails. The message's own time counts
            # as now at the least, so that a case is never "not yet due" for a clock a little behind the channel's.
            await self.deliver(max(datetime.now(UTC), message.at))

    def lock(self, channel: str, user: str) -> asyncio.Lock:
        """The lock of one conversation; it lives while someone holds or awaits it (the map does not grow)."""
        key = (channel, user)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def send(self, channel: Channel, user: str, reply: Reply) -> None:
        """Send one reply; a failed send is logged and does not stop the rest of the message's work (what it
        reported is committed: the resident sees it with /status, /letter or the next reply)."""
        try:
            await channel.send(user, reply)
        except SendError as exc:
            log.warning("a reply was not sent channel=%s user=%s: %s", channel.name, self.pseudonym(user), exc)

    # -- the help desk -------------------------------------------------------------------------------------------

    def staff_text(self, key: str, **values: object) -> str:
        """A text for the staff room, in the desk's language (by default the city's working language)."""
        k = self.brain.knowledge
        return k.text(key, (self.desk.language if self.desk else None) or k.city.working_language, **values)

    async def to_staff(self, text: str, ref: str | None = None, first: bool = False) -> None:
        """Post in the staff room; remember the message so that an agent's reply to it finds the ticket."""
        if self.desk is None:
            return
        staff = self.channels.get(self.desk.channel)
        if staff is None:
            log.error("help desk: channel %s is not running; a staff-room post was not made", self.desk.channel)
            return
        try:
            ids = tuple(await staff.send(self.desk.room, Reply(text)) or ())
        except SendError as exc:
            log.error("help desk: could not post in the staff room: %s", exc)
            ids = exc.sent  # the parts that did go out are still the resident's, to find and to take back
        if ref:
            at = datetime.now(UTC)
            for i, message_id in enumerate(ids):  # every part: a reply to any finds the ticket, /forget takes all
                self.store.staff_message(ref, str(message_id), self.desk.room, at, first=first and i == len(ids) - 1)

    async def retract(self, count: bool = True) -> int:
        """Take back the staff-room posts about residents who used /forget (GDPR Art. 17). Runs right after each
        /forget (`count=False`: a failure there uses none of a post's tries) and hourly (each failure counts; after
        RETRACT_TRIES the post is given up on). One pass at a time. Returns how many posts were taken back."""
        if self._retracting.locked():
            return 0  # a pass is running: it takes these too
        async with self._retracting:
            return await self._retract(count)

    async def _retract(self, count: bool) -> int:
        pending = self.store.retractions()
        if not pending:
            return 0
        staff = self.channels.get(self.desk.channel) if self.desk else None
        if staff is None:
            log.warning("help desk: %d staff-room post(s) wait to be taken back; the staff channel is not running",
                        len(pending))
            return 0
        done = 0
        notice = self.staff_text("staff_retracted")
        for message_id, room in pending:
            try:
                await staff.retract(room or self.desk.room, message_id, notice)
            except Exception as exc:  # noqa: BLE001 - one post that fails must not hold up the others
                reason = exc if isinstance(exc, SendError) else f"{type(exc).__name__}: {exc}"
                if count and self.store.retract_failed(message_id):
                    log.error("help desk: gave up taking back a staff-room post after repeated failures: %s", reason)
                else:
                    log.warning("help desk: could not take back a staff-room post yet: %s", reason)
                if isinstance(exc, SendError) and exc.retryable:
                    break  # the channel is down or slowing us down: the rest waits for the next pass
                continue
            self.store.retracted(message_id)
            done += 1
        if done:
            log.info("help desk: took back %d staff-room post(s) after an erasure", done)
        return done

    async def post_ticket(self, ticket: Ticket, message: Incoming) -> None:
        lines = []
        if ticket.share_transcript:
            for row in self.store.recent_transcript(message.channel, message.user, SHARED_TRANSCRIPT_LINES):
                who = "resident" if row["direction"] == "in" else "bot"
                lines.append(f"{who}: {inert(row['text'] or '', 300)}")
        text = self.staff_text("staff_ticket", ref=ticket.ref, language=ticket.lang, question=inert(ticket.question),
                               cases=", ".join(ticket.cases) or "-", transcript="\n".join(lines))
        await self.to_staff(text, ticket.ref, first=True)

    async def on_staff(self, message: Incoming) -> None:
        """A message in the staff room: an agent's command or reply; anyone else's command is refused and logged."""
        assert self.desk is not None
        replied = self.store.ticket_for_staff_message(message.reply_to) if message.reply_to else None
        command = parse_agent(message.text, replied)
        if command is None:
            return
        sender = message.sender or ""
        if sender not in self.desk.agents:
            if message.text.strip().startswith("/"):
                log.warning("help desk: refused %s from a non-agent sender=%s", command.kind, self.pseudonym(sender))
                await self.to_staff(self.staff_text("staff_refused", command=message.text.split()[0][:20]))
            return
        name = first_name(message.sender_name, sender)
        now = message.at
        if command.kind == "queue":
            await self.to_staff("\n".join(queue_lines(self.store.tickets("open"), now)))
            return
        if command.kind in ("help", "unknown"):
            await self.to_staff(self.staff_text("staff_help", usage="/r REF text, /claim REF, /close REF, /queue, "
                                                                    "/case REF; or reply to a ticket's message"))
            return
        if command.kind == "case":
            case = self.store.case(command.ref or "")
            text = (self.staff_text("staff_case", ref=case["ref"], flow=case["flow"], status=case["status"],
                                    deadline=case["deadline"] or "-") if case
                    else self.staff_text("staff_unknown_ticket", ref=command.ref))
            await self.to_staff(text)
            return
        ticket = self.store.ticket(command.ref or "")
        if ticket is None or ticket["status"] == "closed":
            await self.to_staff(self.staff_text("staff_unknown_ticket", ref=command.ref))
            return
        if command.kind == "claim" or (command.kind == "reply" and ticket["status"] == "open"):
            self.store.claim_ticket(ticket["ref"], sender, name, now)
            if command.kind == "claim":
                await self.tell_resident(ticket, lambda state: ticket_event(state, self.brain, "ticket_claimed",
                                                                            now, name), now)
                await self.to_staff(self.staff_text("staff_claimed", ref=ticket["ref"], name=name), ticket["ref"])
                return
        if command.kind == "reply":
            self.store.note_ticket(ticket["ref"], now, "agent replied", sender)
            await self.tell_resident(ticket, lambda state: agent_said(state, self.brain, name, command.text), now)
        elif command.kind == "close":
            self.store.close_ticket(ticket["ref"], now, sender)
            await self.tell_resident(ticket, lambda state: ticket_event(state, self.brain, "ticket_closed", now, name,
                                                                        ticket["ref"]), now)
            await self.to_staff(self.staff_text("staff_closed", ref=ticket["ref"], name=name), ticket["ref"])

    async def tell_resident(self, ticket: dict, decide, now: datetime) -> None:  # noqa: ANN001
        """Carry an agent's action to the resident's conversation: commit it, then send it on their channel."""
        channel = self.channels.get(ticket["channel"])
        if channel is None or not ticket["user"]:
            log.error("help desk: the resident's channel %s is not running", ticket["channel"])
            return
        async with self.lock(ticket["channel"], ticket["user"]):
            current = self.store.ticket(ticket["ref"])
            if current is None or current["user"] != ticket["user"]:
                return  # the resident used /forget while we waited for the conversation: nothing to tell
            state = self.store.load_state(ticket["channel"], ticket["user"])
            outcome = decide(state)
            self.store.commit(Incoming(ticket["channel"], ticket["user"], "", now, kind="system"), outcome)
            for reply in outcome.replies:
                await self.send(channel, ticket["user"], reply)

    async def send_export(self, channel: Channel, user: str, state: State) -> None:
        """Send everything held about the resident: a summary, then the data as a JSON file (or message)."""
        data = self.store.export(channel.name, user)
        k = self.brain.knowledge
        lang = state.lang or state.last_lang or k.languages[0]
        summary = k.text("mydata_summary", lang, language=k.text("language_name", lang),
                         messages=len(data["conversation"]), cases=len(data["cases"]),
                         retention_days=self.brain.policy.retention_days)
        body = json.dumps(data, ensure_ascii=False, indent=2)
        await self.send(channel, user, Reply(summary))
        send_file = getattr(channel, "send_file", None)
        if send_file is not None:
            try:
                await send_file(user, "my-data.json", body.encode())
                return
            except SendError as exc:  # the file did not go: the same data as messages, never nothing
                log.warning("the /mydata file was not sent channel=%s user=%s: %s; sending it as messages",
                            channel.name, self.pseudonym(user), exc)
        # No files on this channel: the JSON in parts small enough for any message (Matrix events: 64 KB). A part
        # that cannot be sent ends it: the rest would fail the same way (a resident who blocked the bot).
        for start in range(0, len(body), EXPORT_PART):
            try:
                await channel.send(user, Reply(body[start:start + EXPORT_PART]))
            except SendError as exc:
                log.warning("a part of the /mydata export was not sent channel=%s user=%s: %s", channel.name,
                            self.pseudonym(user), exc)
                if not exc.retryable:
                    return

    async def deliver(self, now: datetime | None = None) -> Report | None:
        """One outbox pass; tell each resident whose case was delivered (GDPR Art. 12: keep them informed)."""
        if self.outbox is None:
            return None
        report = await self.outbox.deliver_due(now or datetime.now(UTC))
        for row in report.delivered:
            channel = self.channels.get(row["channel"])
            if channel is None:
                continue
            text = self.brain.knowledge.text("delivered", row["lang"] or self.brain.knowledge.languages[0],
                                             ref=row["ref"])
            try:
                async with self.lock(row["channel"], row["user"]):
                    await channel.send(row["user"], Reply(text))
            except SendError as exc:
                log.warning("could not tell a resident their case was delivered (%s)", exc)
        return report
