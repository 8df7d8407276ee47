"""Wire the pure core to a store and channels: one message at a time per conversation, one transaction each.

Order for each message (DESIGN.md §1): load state -> core.handle -> store.commit (one transaction) -> send
replies. A reply is sent only after what it reports is committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from bot.core import Brain, handle
from bot.messages import Incoming, Outcome, Reply
from bot.ports import Channel
from bot.store import Store

log = logging.getLogger("rightsdesk.runtime")


class Runtime:
    def __init__(self, brain: Brain, store: Store) -> None:
        self.brain = brain
        self.store = store
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
        async with self._locks[(message.channel, message.user)]:
            outcome = self.process(message)
            for reply in outcome.replies:
                await channel.send(message.user, reply)
