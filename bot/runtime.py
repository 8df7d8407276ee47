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
from collections import defaultdict
from datetime import UTC, datetime

from bot.core import Brain, handle, remind
from bot.messages import CaseFiled, Export, Forget, Incoming, Outcome, Reply, State
from bot.outbox import Outbox, Report
from bot.ports import Channel, SendError
from bot.privacy import pseudonym
from bot.store import Store

log = logging.getLogger("rightsdesk.runtime")


class Runtime:
    def __init__(self, brain: Brain, store: Store, outbox: Outbox | None = None,
                 channels: dict[str, Channel] | None = None) -> None:
        self.brain = brain
        self.store = store
        self.outbox = outbox
        self.channels = channels or {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        # Logs name residents by a keyed hash only (GDPR Art. 32); a fixed salt keeps tokens stable across restarts.
        self.salt = (os.environ.get("RIGHTSDESK_LOG_SALT") or secrets.token_hex(16)).encode()

    async def remind(self, now: datetime) -> int:
        """Scheduled job: tell residents who have not written that a deadline passed (once per case and deadline).
        Returns how many residents were told."""
        told = 0
        for channel_name, user in self.store.overdue_conversations(now, self.brain.knowledge.city.timezone):
            channel = self.channels.get(channel_name)
            if channel is None:
                continue
            async with self._locks[(channel_name, user)]:
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
        state = self.store.load_state(message.channel, message.user)
        try:
            outcome = handle(message, state, self.brain)
        except Exception as exc:
            # A bug in the rules must never show a traceback to a resident, nor lose what was kept before. The log
            # names the error type and place, never the message (its text may hold personal data).
            log.error("core failed channel=%s user=%s error=%s", message.channel, self.pseudonym(message.user),
                      type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
            lang = state.lang or state.last_lang or self.brain.knowledge.languages[0]
            return Outcome(state, (Reply(self.brain.knowledge.text("error", lang)),))
        self.store.commit(message, outcome)
        log.info("message handled channel=%s user=%s replies=%d effects=%s ms=%.1f", message.channel,
                 self.pseudonym(message.user), len(outcome.replies),
                 ",".join(type(e).__name__ for e in outcome.effects) or "-", (time.perf_counter() - started) * 1000)
        return outcome

    async def on_message(self, channel: Channel, message: Incoming) -> None:
        """Process one message and send its replies; messages of one conversation go strictly in order."""
        self.channels.setdefault(channel.name, channel)
        async with self._locks[(message.channel, message.user)]:
            outcome = self.process(message)
            for reply in outcome.replies:
                await channel.send(message.user, reply)
            if any(isinstance(e, Forget) for e in outcome.effects):
                self.store.compact()  # erased rows must leave the file and its log, not only the tables
            if any(isinstance(e, Export) for e in outcome.effects):
                await self.send_export(channel, message.user, outcome.state)
        if self.outbox is not None and any(isinstance(e, CaseFiled) for e in outcome.effects):
            # A new case goes out at once; the scheduled pass retries what fails. The message's own time counts
            # as now at the least, so that a case is never "not yet due" for a clock a little behind the channel's.
            await self.deliver(max(datetime.now(UTC), message.at))

    async def send_export(self, channel: Channel, user: str, state: State) -> None:
        """Send everything held about the resident: a summary, then the data as a JSON file (or message)."""
        data = self.store.export(channel.name, user)
        k = self.brain.knowledge
        lang = state.lang or state.last_lang or k.languages[0]
        summary = k.text("mydata_summary", lang, language=k.text("language_name", lang),
                         messages=len(data["conversation"]), cases=len(data["cases"]),
                         retention_days=self.brain.policy.retention_days)
        body = json.dumps(data, ensure_ascii=False, indent=2)
        await channel.send(user, Reply(summary))
        send_file = getattr(channel, "send_file", None)
        if send_file is not None:
            await send_file(user, "my-data.json", body.encode())
        else:
            await channel.send(user, Reply(body))

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
                async with self._locks[(row["channel"], row["user"])]:
                    await channel.send(row["user"], Reply(text))
            except SendError as exc:
                log.warning("could not tell a resident their case was delivered (%s)", exc)
        return report
