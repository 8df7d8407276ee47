"""The help desk round trip on a real Synapse: a resident in an encrypted direct room, agents in a staff room.
A non-agent's /close is refused; a resident's @room and HTML arrive inert; the whole life shows in `tickets`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nio import (
    AsyncClient,
    ErrorResponse,
    MatrixRoom,
    RedactedEvent,
    RoomCreateResponse,
    RoomGetEventResponse,
    RoomMessageText,
    RoomSendResponse,
)

from adapters.matrix import MatrixChannel
from bot.core import Brain, Policy
from bot.handoff import Desk
from bot.knowledge import load
from bot.runtime import Runtime
from bot.store import Store

from .test_matrix import Bot, Resident, bounded, new_user, synapse  # noqa: F401 - the fixture


class Staff:
    """An agent's (or a stranger's) plain Matrix client in the staff room."""

    def __init__(self, server: Any, user_id: str, password: str, bot_id: str) -> None:
        self.client = AsyncClient(server.url, user_id)
        self.password = password
        self.bot_id = bot_id
        self.posts: asyncio.Queue[tuple[str, str]] = asyncio.Queue()  # (event id, body) of the bot's posts
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        response = await bounded(self.client.login(self.password), "a staff login")
        assert not isinstance(response, ErrorResponse), response
        self.client.add_event_callback(self._on_text, RoomMessageText)
        self.task = asyncio.create_task(self.client.sync_forever(timeout=1000))

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.client.close()

    async def _on_text(self, room: MatrixRoom, event: RoomMessageText) -> None:
        if event.sender == self.bot_id:
            await self.posts.put((event.event_id, event.source["content"]))

    async def say(self, room: str, text: str, reply_to: str | None = None) -> None:
        content: dict[str, Any] = {"msgtype": "m.text", "body": text}
        if reply_to:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        response = await bounded(self.client.room_send(room, "m.room.message", content), "a staff message")
        assert isinstance(response, RoomSendResponse), response

    async def next_post(self, containing: str) -> tuple[str, dict[str, Any]]:
        for _ in range(20):  # bounded: skip earlier posts
            event_id, content = await bounded(self.posts.get(), f"a staff-room post with {containing!r}")
            if containing in content["body"]:
                return event_id, content
        raise AssertionError(f"no staff-room post with {containing!r}")


def test_a_matrix_staff_room_round_trip(synapse, tmp_path):  # noqa: F811
    bot_id, bot_password = new_user(synapse, "bot")
    resident_id, resident_password = new_user(synapse, "resident")
    agent_id, agent_password = new_user(synapse, "agent")
    stranger_id, stranger_password = new_user(synapse, "stranger")

    async def scenario() -> None:
        agent = Staff(synapse, agent_id, agent_password, bot_id)
        stranger = Staff(synapse, stranger_id, stranger_password, bot_id)
        await agent.start()
        created = await agent.client.room_create(name="Help desk", invite=[bot_id, stranger_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        await stranger.start()
        await bounded(stranger.client.join(room), "the stranger to join")

        bot = Bot(synapse, tmp_path / "bot", bot_id, bot_password, allowed_rooms=[room])
        desk = Desk("matrix", room, frozenset({agent_id}), language="en")
        channel = MatrixChannel.from_settings(bot.settings, bot.data)
        bot.store = Store(bot.data / "rightsdesk.sqlite")
        runtime = Runtime(Brain.build(load(city="amsterdam"), Policy(helpdesk=True)), bot.store, None, {"matrix": channel}, desk)
        bot.task = asyncio.create_task(channel.run(lambda message: runtime.on_message(channel, message)))
        try:
            async with Resident(synapse, resident_id, resident_password, tmp_path / "resident", bot) as resident:
                await resident.open_direct_chat()
                await resident.wait_for_join()
                for text, replies in (("/language en", 1), ("I want to talk to a person", 2),
                                      ("A camera records my door <b>all day</b>", 1), ("Yes", 1),
                                      ("Confirm and send", 1)):
                    await resident.say(text)
                    await resident.replies(replies)
                ticket_post, content = await agent.next_post("New ticket")
                ref = runtime.store.tickets("open")[0]["ref"]
                assert ref in content["body"] and "&lt;b&gt;" in content["formatted_body"]

                await stranger.say(room, f"/close {ref}")
                await agent.next_post("for help-desk agents only")
                assert runtime.store.ticket(ref)["status"] == "open"

                await agent.say(room, "Which door is it, front or back?", reply_to=ticket_post)
                (answer,) = await resident.replies(1)
                assert answer["body"].startswith("Help desk (") and "front or back" in answer["body"]

                await resident.say("The front door @room")
                _, relayed = await agent.next_post(f"{ref} resident:")
                assert "@room" not in relayed["body"] and relayed.get("m.mentions") == {}

                await agent.say(room, f"/close {ref}")
                (closed,) = await resident.replies(1)
                assert "back with the bot" in closed["body"]
                events = [e["event"] for e in runtime.store.ticket_history(ref)]
                assert events == ["opened", "claimed", "agent replied", "closed"]

                # GDPR Art. 17: after /forget the bot redacts what it posted about the resident in the staff room.
                await resident.say("/forget")
                await resident.replies(1)
                await resident.say("Yes, erase it")
                await resident.replies(1)
                for _ in range(40):  # bounded: the redaction follows the replies
                    got = await bounded(agent.client.room_get_event(room, ticket_post), "the ticket post")
                    if isinstance(got, RoomGetEventResponse) and isinstance(got.event, RedactedEvent):
                        break
                    await asyncio.sleep(0.25)
                assert isinstance(got.event, RedactedEvent), got
                assert got.event.reason == "(Removed: the resident asked for their data to be erased.)"
                assert runtime.store.retractions() == []
        finally:
            await bot.stop()
            await agent.stop()
            await stranger.stop()

    asyncio.run(scenario())
