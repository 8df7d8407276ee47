"""Wire the pure core to a store and channels: one message at a time per conversation, one transaction each.

Order for each message (DESIGN.md §1): load state -> core.handle -> store.commit (one transaction) -> send
replies. A reply is sent only after what it reports is committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import UTC, datetime

from bot.core import Brain, handle
from bot.messages import CaseFiled, Incoming, Outcome, Reply
from bot.outbox import Outbox, Report
from bot.ports import Channel, SendError
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

    def process(self, message: Incoming) -> Outcome:
        """Handle one message and commit its effects; on a bug, answer kindly and keep nothing half-done."""
        state = self.store.load_state(message.channel, message.user)
        try:
            outcome = handle(message, state, self.brain)
        except Exception:
            # A bug in the rules must never show a traceback to a resident, nor lose what was kept before.
            log.exception("core failed on a message (channel=%s)", message.channel)
            lang = state.lang or state.last_lang or self.brain.knowledge.languages[0]
            return Outcome(state, (Reply(self.brain.knowledge.text("error", lang)),))
        self.store.commit(message, outcome)
        return outcome

    async def on_message(self, channel: Channel, message: Incoming) -> None:
        """Process one message and send its replies; messages of one conversation go strictly in order."""
        self.channels.setdefault(channel.name, channel)
        async with self._locks[(message.channel, message.user)]:
            outcome = self.process(message)
            for reply in outcome.replies:
                await channel.send(message.user, reply)
        if self.outbox is not None and any(isinstance(e, CaseFiled) for e in outcome.effects):
            await self.deliver()  # a new case goes out at once; the scheduled pass retries what fails

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
