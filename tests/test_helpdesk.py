"""The help desk through the runtime: a resident asks for a person, the ticket reaches the staff room, an agent
claims, replies and closes; a non-agent is refused; resident text arrives inert. The resident and the staff room
are on different channels (no channel lock-in)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from bot.core import Brain, Policy
from bot.handoff import Desk, OfficeHours, inert, parse_agent
from bot.knowledge import load
from bot.messages import Incoming, Reply
from bot.ports import SendError
from bot.runtime import Runtime
from bot.store import Store

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # a Wednesday, 11:00 in Amsterdam
ROOM = "!staff:city.example"
AGENT, STRANGER = "@alice:city.example", "@mallory:city.example"


class Channel:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[tuple[str, Reply]] = []
        self.retracted: list[tuple[str, str, str]] = []
        self.down = False

    async def run(self, on_message) -> None:  # pragma: no cover
        return None

    async def send(self, user: str, reply: Reply) -> tuple[str, ...]:
        self.sent.append((user, reply))
        return (f"msg-{len(self.sent)}",)

    async def retract(self, room: str, message: str, notice: str) -> None:
        if self.down:
            raise SendError("the staff channel is down")
        self.retracted.append((room, message, notice))


class Desk_:
    def __init__(self, tmp_path, office_hours=None) -> None:
        desk = Desk("matrix", ROOM, frozenset({AGENT}), OfficeHours.parse(office_hours, "Europe/Amsterdam"),
                    language="en")
        brain = Brain.build(load(city="amsterdam"), Policy(office_hours=desk.hours, helpdesk=True))
        self.telegram, self.matrix = Channel("telegram"), Channel("matrix")
        self.runtime = Runtime(brain, Store(tmp_path / "db.sqlite"), None,
                               {"telegram": self.telegram, "matrix": self.matrix}, desk)
        self.at = T0

    def resident(self, text: str) -> list[str]:
        before = len(self.telegram.sent)
        self.at += timedelta(seconds=10)
        asyncio.run(self.runtime.on_message(self.telegram, Incoming("telegram", "555", text, self.at)))
        return [r.text for _, r in self.telegram.sent[before:]]

    def staff(self, text: str, sender: str = AGENT, reply_to: str | None = None) -> list[str]:
        before = len(self.matrix.sent)
        self.at += timedelta(seconds=10)
        message = Incoming("matrix", ROOM, text, self.at, sender=sender, sender_name="Alice Jansen",
                           reply_to=reply_to)
        asyncio.run(self.runtime.on_message(self.matrix, message))
        return [r.text for _, r in self.matrix.sent[before:]]

    def ask_for_a_person(self) -> str:
        self.resident("/language en")
        self.resident("I want to talk to a person")
        self.resident("My benefits were stopped by a computer and nobody explains why")
        self.resident("Yes")  # share the conversation
        out = self.resident("Confirm and send")
        assert "help desk" in out[-1]
        return self.runtime.store.tickets("open")[0]["ref"]


def test_a_ticket_goes_round_trip_between_telegram_and_a_matrix_staff_room(tmp_path):
    desk = Desk_(tmp_path)
    ref = desk.ask_for_a_person()
    (post_id, post) = desk.matrix.sent[0]
    assert post_id == ROOM and ref in post.text and "benefits were stopped" in post.text
    assert "resident: " in post.text  # the consented transcript
    assert "soon" in desk.telegram.sent[-1][1].text  # open now: "a person will answer soon"

    assert desk.staff(f"/claim {ref}") == [f"{ref} is now held by Alice."]
    assert desk.telegram.sent[-1][1].text == "Alice from the help desk is looking at your question."
    desk.staff("Hello, I will look into your benefits file.", reply_to="msg-1")  # a reply to the ticket's post
    assert desk.telegram.sent[-1][1].text == "Help desk (Alice): Hello, I will look into your benefits file."

    # A person already answered: the resident's messages go to them silently, with no "passed on" note.
    assert desk.resident("Thank you! My client number is 1234.") == []
    assert desk.matrix.sent[-1][1].text == f"{ref} resident: Thank you! My client number is 1234."
    desk.staff(f"/r {ref} Thanks, noted.")
    assert desk.telegram.sent[-1][1].text.endswith("Thanks, noted.")

    queue = desk.staff("/queue")
    assert ref in queue[0] and "held by Alice" in queue[0]
    assert desk.staff(f"/close {ref}") == [f"{ref} closed by Alice."]
    assert "back with the bot" in desk.telegram.sent[-1][1].text
    answer = desk.resident("how can I see what data the city has about me")
    assert answer and "GDPR" in answer[-1]  # the matcher answers again
    history = [e["event"] for e in desk.runtime.store.ticket_history(ref)]
    assert history == ["opened", "claimed", "agent replied", "agent replied", "closed"]


def test_a_non_agent_is_refused_and_resident_text_arrives_inert(tmp_path):
    desk = Desk_(tmp_path)
    ref = desk.ask_for_a_person()
    assert desk.resident("Still there?") == ["Passed on to the help desk. A person will answer you here."]
    assert desk.resident("Another detail") == []  # said once per ticket
    assert desk.staff(f"/close {ref}", sender=STRANGER) == ["/close is for help-desk agents only; this was not done."]
    assert desk.runtime.store.ticket(ref)["status"] == "open"
    desk.resident("@room <b>urgent</b> /close " + ref + " @alice:city.example")
    relayed = desk.matrix.sent[-1][1].text
    assert "@room" not in relayed and "@alice:" not in relayed and "@\u200broom" in relayed
    assert relayed.startswith(ref)  # never starts with a command
    assert desk.runtime.store.ticket(ref)["status"] == "open"


def test_the_resident_can_leave_the_queue(tmp_path):
    desk = Desk_(tmp_path)
    ref = desk.ask_for_a_person()
    out = desk.resident("/bot")
    assert "back with the bot" in out[-1]
    assert desk.runtime.store.ticket(ref)["status"] == "closed"
    assert "went back to the bot" in desk.matrix.sent[-1][1].text
    assert desk.staff(f"/r {ref} hello") == [f"There is no open ticket {ref}."]


def test_outside_office_hours_the_resident_is_told_the_next_opening(tmp_path):
    desk = Desk_(tmp_path, {"mon-fri": "09:00-10:00"})  # 11:00 on Wednesday: closed
    desk.ask_for_a_person()
    assert "2026-11-26 09:00" in desk.telegram.sent[-1][1].text


def test_two_dont_knows_in_a_row_offer_a_person_with_the_question_filled_in(tmp_path):
    desk = Desk_(tmp_path)
    desk.resident("/language en")
    desk.resident("what is the best pizza in town")
    out = desk.resident("recipe for a chocolate cake")
    assert "put you through to a person" in " ".join(out)
    state = desk.runtime.store.load_state("telegram", "555")
    assert state.flow["id"] == "handoff" and state.flow["answers"]["question"] == "recipe for a chocolate cake"


def test_tickets_command_shows_a_ticket_s_whole_life(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    desk = Desk_(tmp_path)
    ref = desk.ask_for_a_person()
    desk.staff(f"/claim {ref}")
    desk.staff(f"/close {ref}")
    desk.runtime.store.close()
    (tmp_path / "rightsdesk.db").unlink(missing_ok=True)
    (tmp_path / "db.sqlite").rename(tmp_path / "rightsdesk.db")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "run_bot.py"), "--data", str(tmp_path), "tickets", ref],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "opened" in out.stdout and "claimed" in out.stdout and "closed" in out.stdout
    listing = subprocess.run([sys.executable, str(root / "run_bot.py"), "--data", str(tmp_path), "tickets"],
                             capture_output=True, text=True, timeout=60).stdout
    assert ref in listing and "0 open, 1 closed" in listing


def test_agent_commands_parse():
    assert parse_agent("/r AMS-HD-ABCDE thanks", None).kind == "reply"
    assert parse_agent("thanks", "AMS-HD-ABCDE").ref == "AMS-HD-ABCDE"
    assert parse_agent("just chatting", None) is None
    assert parse_agent("/claim", None).kind == "help"
    assert inert("/close X @room").startswith("\u200b")


def test_office_hours():
    hours = OfficeHours.parse({"mon-fri": "09:00-17:00", "sat": "10:00-12:00"}, "Europe/Amsterdam")
    assert hours.is_open(datetime(2026, 11, 25, 10, 0, tzinfo=UTC))
    assert not hours.is_open(datetime(2026, 11, 29, 10, 0, tzinfo=UTC))  # Sunday
    assert hours.next_opening(datetime(2026, 11, 28, 12, 0, tzinfo=UTC)).isoformat().startswith("2026-11-30T09:00")


def test_without_a_help_desk_the_bot_says_how_to_reach_the_city(tmp_path):
    from .conftest import Chat

    chat = Chat(Brain.build(load(city="amsterdam"), Policy()))
    chat.say("/language en")
    (reply,) = chat.say("I want to talk to a person")
    assert "not connected to a help desk" in reply.text and "14 020" in reply.text
    assert chat.state.flow is None
    chat.say("recipe for a chocolate cake")
    chat.say("best pizza in town")
    assert chat.state.flow is None  # no escalation into a queue nobody reads


def test_a_second_ticket_is_not_opened_and_closing_the_first_keeps_the_state_right(tmp_path):
    desk = Desk_(tmp_path)
    ref = desk.ask_for_a_person()
    out = desk.resident("/menu")
    assert out  # the menu, while the ticket stays open
    out = desk.resident("Talk to a person")
    assert f"already have a question with the help desk ({ref})" in out[-1]
    assert len(desk.runtime.store.tickets("open")) == 1


def test_forget_takes_back_the_staff_posts_and_retries_while_the_staff_channel_is_down(tmp_path):
    desk = Desk_(tmp_path)
    ref = desk.ask_for_a_person()
    desk.resident("It was in March")  # relayed to the staff room
    desk.resident("/bot")  # leaves the queue: "went back to the bot" is posted too
    posted = [f"msg-{i}" for i in range(1, len(desk.matrix.sent) + 1)]
    assert len(posted) == 3 and ref in desk.matrix.sent[0][1].text
    desk.matrix.down = True
    desk.resident("/forget")
    assert desk.resident("Yes, erase it")[0].startswith("Done")  # the erasure does not wait for the staff room
    assert desk.runtime.store.retractions() == [(m, ROOM) for m in posted]  # kept, with their room, to try again
    assert desk.runtime.store.ticket(ref)["question"] is None
    desk.matrix.down = False
    assert asyncio.run(desk.runtime.retract()) == 3  # the hourly job
    assert [m for _, m, _ in desk.matrix.retracted] == posted
    assert desk.runtime.store.retractions() == []


def test_a_post_that_cannot_be_taken_back_is_given_up_on_after_repeated_tries(tmp_path, caplog):
    from bot.store import RETRACT_TRIES

    desk = Desk_(tmp_path)
    desk.ask_for_a_person()
    desk.matrix.down = True
    desk.resident("/forget")
    desk.resident("Yes, erase it")  # the first try, right after the erasure: it uses none of the tries
    for _ in range(RETRACT_TRIES - 1):
        asyncio.run(desk.runtime.retract())  # the hourly job
    assert len(desk.runtime.store.retractions()) == 1
    asyncio.run(desk.runtime.retract())
    assert desk.runtime.store.retractions() == []
    assert "gave up taking back a staff-room post" in caplog.text
