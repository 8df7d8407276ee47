"""Values that cross the core's boundary: what comes in, what goes out, and the state kept between messages.

Every type here is a frozen dataclass of plain values (str, int, tuples, dates) so that the core stays pure and
the store can turn state into JSON and back without knowing the core's rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from typing import Any


@dataclass(frozen=True)
class Incoming:
    """One message from a resident, as every channel adapter produces it."""

    channel: str  # "telegram" | "matrix" | "console"
    user: str  # channel-native id of the conversation, always str
    text: str
    at: datetime  # UTC, from the channel; the core reads no clock
    # "text"; "media" for a photo, sticker, voice note or file (the bot reads text only); "undecryptable" for an
    # end-to-end encrypted message whose key the resident's app did not share with the bot
    kind: str = "text"
    sender: str | None = None  # in a group room (the help desk's staff room): who wrote; `user` is the room
    sender_name: str | None = None  # their display name, for "Agent (Alice): ..."
    reply_to: str | None = None  # the platform id of the message this one replies to
    id: str | None = None  # the platform's id of this message: one delivered twice is handled once


@dataclass(frozen=True)
class Field:
    """What a flow step waits for, so that a channel can offer the right keyboard."""

    name: str
    type: str  # text | email | phone | date | choice | yesno


@dataclass(frozen=True)
class Reply:
    """One message from the bot; choices are buttons where the channel has them, numbered lines elsewhere."""

    text: str
    choices: tuple[str, ...] = ()
    field: Field | None = None


@dataclass(frozen=True)
class Offer:
    """A choice the bot offered, with what picking it does (an action such as 'faq:privacy.cctv')."""

    label: str
    action: str


@dataclass(frozen=True)
class Why:
    """What the last answer was based on, for /why."""

    entry: str
    phrasing: str
    score: float


@dataclass(frozen=True)
class CaseInfo:
    """One of the resident's cases as their conversation sees it (loaded by the store from the cases table)."""

    ref: str
    flow: str
    filed: str  # ISO date, in the city's time zone
    deadline: str | None  # ISO date the city must answer by, or None
    status: str = "submitted"  # submitted | delivered | answered (delivery and answers are recorded by staff tools)
    extended: bool = False  # the city extended the deadline (GDPR Art. 12(3): two more months, with notice)
    reminded: str | None = None  # the deadline for which the resident was told it passed (once per deadline)
    rule: str | None = None  # the deadline rule, to recompute after an extension
    letter: str = ""  # the letter in the resident's language, to show a copy


@dataclass(frozen=True)
class State:
    """Everything the bot remembers about one conversation between two messages."""

    lang: str | None = None  # chosen with /language; wins over detection
    last_lang: str | None = None  # language of the last message, as detected
    offers: tuple[Offer, ...] = ()  # the choices of the last reply, so '2' or a label can be resolved
    why: Why | None = None
    misses: int = 0  # "I don't know" answers in a row
    flow: dict[str, Any] | None = None  # the flow in progress (see bot.core), plain JSON values
    cases: tuple[CaseInfo, ...] = ()  # the resident's cases: read from the cases table, never stored here
    handoff: dict[str, Any] | None = None  # the open help-desk ticket: {"ref", "acked"}
    recent: tuple[str, ...] = ()  # times of the resident's last messages, for the rate limit
    throttled: bool = False  # told to slow down in the current window
    version: int = 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["cases"]  # the cases table is their one source of truth
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> State:
        """Rebuild a state; unknown or malformed parts fall back to defaults rather than fail a resident."""
        if not data:
            return cls()
        offers = tuple(
            Offer(str(o["label"]), str(o["action"]))
            for o in data.get("offers") or ()
            if isinstance(o, dict) and "label" in o and "action" in o
        )
        why_data = data.get("why")
        why = None
        if isinstance(why_data, dict) and {"entry", "phrasing", "score"} <= why_data.keys():
            why = Why(str(why_data["entry"]), str(why_data["phrasing"]), float(why_data["score"]))
        flow = data.get("flow")
        cases = tuple(
            CaseInfo(**{k: v for k, v in c.items() if k in CaseInfo.__dataclass_fields__})
            for c in data.get("cases") or ()
            if isinstance(c, dict) and {"ref", "flow", "filed", "deadline"} <= c.keys()
        )
        return cls(
            lang=data.get("lang") if isinstance(data.get("lang"), str) else None,
            last_lang=data.get("last_lang") if isinstance(data.get("last_lang"), str) else None,
            offers=offers,
            why=why,
            misses=int(data.get("misses") or 0),
            flow=flow if isinstance(flow, dict) else None,
            cases=cases,
            handoff=data.get("handoff") if isinstance(data.get("handoff"), dict) else None,
            recent=tuple(str(t) for t in data.get("recent") or () if isinstance(t, str)),
            throttled=bool(data.get("throttled", False)),
        )

    def but(self, **changes: Any) -> State:
        return replace(self, **changes)


@dataclass(frozen=True)
class Unanswered:
    """Effect: a question the bot could not answer, kept for staff (its text and language only, never who asked)."""

    text: str
    lang: str


@dataclass(frozen=True)
class Case:
    """A request the resident confirmed: what the city receives, and when it must answer."""

    ref: str
    flow: str
    city: str
    lang: str
    filed_at: datetime
    filed: date  # the local date in the city: deadlines count from it
    answers: Mapping[str, Any]
    subject: str
    letter: str  # in the resident's language, followed by the city's working language where it differs
    resident_letter: str  # the resident's language only, for copies in the chat
    inbox: str
    deadline: date | None
    rule: str | None


@dataclass(frozen=True)
class CaseFiled:
    """Effect: keep a new case and queue its letter for delivery, in the same transaction as the message."""

    case: Case


@dataclass(frozen=True)
class CaseChanged:
    """Effect: a resident-side change to a case (an extension they were told of, a reminder sent)."""

    ref: str
    extended: bool | None = None
    deadline: date | None = None
    reminded: str | None = None


@dataclass(frozen=True)
class Ticket:
    """A resident's request to talk to a person: what the help desk needs to pick it up."""

    ref: str
    lang: str
    opened_at: datetime
    question: str
    share_transcript: bool
    cases: tuple[str, ...]  # the resident's case references, for context


@dataclass(frozen=True)
class TicketOpened:
    """Effect: keep the ticket (same transaction) and post it in the staff room (after the commit)."""

    ticket: Ticket


@dataclass(frozen=True)
class Relay:
    """Effect: a resident's message for the agent on their ticket, instead of an answer from the bot."""

    ref: str
    text: str


@dataclass(frozen=True)
class TicketLeft:
    """Effect: the resident went back to the bot (/bot): the ticket is closed by them."""

    ref: str


@dataclass(frozen=True)
class Forget:
    """Effect: erase everything held about this resident (GDPR Art. 17); delivered cases keep ref and status."""


@dataclass(frozen=True)
class Export:
    """Effect: send the resident everything held about them (GDPR Art. 15), after this message is committed."""


Effect = Unanswered | CaseFiled | CaseChanged | Forget | Export | TicketOpened | Relay | TicketLeft


@dataclass(frozen=True)
class Outcome:
    """What handling one message decided: the new state, the replies to send and the effects to commit."""

    state: State
    replies: tuple[Reply, ...] = ()
    effects: tuple[Effect, ...] = field(default=())
