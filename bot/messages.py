"""Values that cross the core's boundary: what comes in, what goes out, and the state kept between messages.

Every type here is a frozen dataclass of plain values (str, int, tuples, dates) so that the core stays pure and
the store can turn state into JSON and back without knowing the core's rules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Incoming:
    """One message from a resident, as every channel adapter produces it."""

    channel: str  # "telegram" | "matrix" | "console"
    user: str  # channel-native id of the conversation, always str
    text: str
    at: datetime  # UTC, from the channel; the core reads no clock


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
class State:
    """Everything the bot remembers about one conversation between two messages."""

    lang: str | None = None  # chosen with /language; wins over detection
    last_lang: str | None = None  # language of the last message, as detected
    offers: tuple[Offer, ...] = ()  # the choices of the last reply, so '2' or a label can be resolved
    why: Why | None = None
    misses: int = 0  # "I don't know" answers in a row
    flow: dict[str, Any] | None = None  # the flow in progress (see bot.flows), plain JSON values
    version: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

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
        return cls(
            lang=data.get("lang") if isinstance(data.get("lang"), str) else None,
            last_lang=data.get("last_lang") if isinstance(data.get("last_lang"), str) else None,
            offers=offers,
            why=why,
            misses=int(data.get("misses") or 0),
            flow=flow if isinstance(flow, dict) else None,
        )

    def but(self, **changes: Any) -> State:
        return replace(self, **changes)


@dataclass(frozen=True)
class Unanswered:
    """Effect: a question the bot could not answer, kept for staff (its text and language only, never who asked)."""

    text: str
    lang: str


Effect = Unanswered


@dataclass(frozen=True)
class Outcome:
    """What handling one message decided: the new state, the replies to send and the effects to commit."""

    state: State
    replies: tuple[Reply, ...] = ()
    effects: tuple[Effect, ...] = field(default=())
