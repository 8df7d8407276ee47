"""The help desk round trip on Telegram: a resident in a private chat, agents in a Telegram group."""

from __future__ import annotations

import asyncio
from typing import Any

from adapters.telegram import TelegramChannel
from bot.core import Brain, Policy
from bot.handoff import Desk as HelpDesk
from bot.knowledge import load
from bot.runtime import Runtime
from bot.store import Store

from .test_telegram import CHAT, TOKEN, WAIT, api  # noqa: F401 - the fixture

GROUP = -100500
ALICE, MALLORY = (4242, "Alice"), (9999, "Mallory")


def _desk(bot_api, tmp_path):  # noqa: ANN001, ANN202 - (runtime, channel, on_message, push) around one bot
    desk = HelpDesk("telegram", str(GROUP), frozenset({str(ALICE[0])}), language="en")
    runtime = Runtime(Brain.build(load(city="amsterdam"), Policy(helpdesk=True)), Store(tmp_path / "db.sqlite"),
                      None, {}, desk)
    channel = TelegramChannel.from_settings({"token": TOKEN, "base_url": bot_api.base_url, "allowed_groups": [GROUP]},
                                            tmp_path)
    runtime.channels["telegram"] = channel
    handled = asyncio.Event()

    async def on_message(message: Any) -> None:
        try:
            await runtime.on_message(channel, message)
        finally:
            handled.set()

    async def push(send) -> None:  # noqa: ANN001 - send one update, wait until the bot has handled it
        handled.clear()
        send()
        await asyncio.wait_for(handled.wait(), WAIT)

    return runtime, channel, on_message, push


def test_a_telegram_group_staff_room_round_trip(api, tmp_path):  # noqa: F811
    runtime, channel, on_message, push = _desk(api, tmp_path)

    def to(chat: int) -> list[str]:
        return [c.params["text"] for c in api.sent(chat)]

    async def scenario() -> None:
        task = asyncio.create_task(channel.run(on_message))
        await asyncio.wait_for(channel.ready.wait(), WAIT)
        try:
            for text in ("/language en", "I want to talk to a person", "Someone filmed me with a drone",
                         "No", "Confirm and send"):
                await push(lambda text=text: api.text(CHAT, text))
            ref = runtime.store.tickets("open")[0]["ref"]
            post = api.sent(GROUP)[0]
            assert ref in post.params["text"] and "drone" in post.params["text"]
            await push(lambda: api.text(GROUP, f"/close {ref}", "supergroup", sender=MALLORY))
            assert to(GROUP)[-1] == "/close is for help-desk agents only; this was not done."
            await push(lambda: api.text(GROUP, "Hello, which street was it?", "supergroup", sender=ALICE,
                                        reply_to=post.params["message_id"]))
            assert to(CHAT)[-1] == "Help desk (Alice): Hello, which street was it?"
            await push(lambda: api.text(CHAT, "Main street @admin"))
            assert to(GROUP)[-1] == f"{ref} resident: Main street @\u200badmin"
            await push(lambda: api.text(GROUP, f"/close {ref}", "supergroup", sender=ALICE))
            assert "back with the bot" in to(CHAT)[-1]
            assert [e["event"] for e in runtime.store.ticket_history(ref)] == [
                "opened", "claimed", "agent replied", "closed"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            runtime.store.close()

    asyncio.run(scenario())


def test_forget_takes_back_the_bots_staff_group_posts(api, tmp_path):  # noqa: F811
    """GDPR Art. 17: after /forget the bot deletes what it posted about the resident in the staff group; a post
    past Telegram's 48 hours for deleting is edited to a notice instead."""
    runtime, channel, on_message, push = _desk(api, tmp_path)

    async def scenario() -> None:
        task = asyncio.create_task(channel.run(on_message))
        await asyncio.wait_for(channel.ready.wait(), WAIT)
        try:
            for text in ("/language en", "I want to talk to a person", "My neighbour's camera films my garden",
                         "No", "Confirm and send", "It is on the house at number 12"):
                await push(lambda text=text: api.text(CHAT, text))
            posts = [c.params["message_id"] for c in api.sent(GROUP)]
            assert len(posts) == 2  # the ticket and the resident's follow-up
            api.aged.add(posts[0])  # the ticket post is older than 48 hours
            # The agent's own message in the group is not the bot's to take back, and no id of it is kept.
            await push(lambda: api.text(GROUP, "Looking at it", "supergroup", sender=ALICE, reply_to=posts[1]))
            await push(lambda: api.text(CHAT, "/bot"))
            for text in ("/forget", "Yes, erase it"):
                await push(lambda text=text: api.text(CHAT, text))
            # Everything the bot posted about this ticket: the ticket, the follow-up, "went back to the bot".
            bot_posts = [c.params["message_id"] for c in api.sent(GROUP)]
            assert len(bot_posts) == 3 and bot_posts[:2] == posts
            assert api.deleted == set(bot_posts[1:])
            (edit,) = api.calls_of("editMessageText")
            assert int(edit.params["message_id"]) == posts[0]
            assert edit.params["text"] == "(Removed: the resident asked for their data to be erased.)"
            assert runtime.store.retractions() == []
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            runtime.store.close()

    asyncio.run(scenario())
