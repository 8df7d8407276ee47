"""Ports: what the runtime needs from channels and inboxes. Adapters implement them; nothing here knows a network."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bot.messages import Incoming, Reply


class SendError(Exception):
    """A reply could not be sent; `retryable` says whether trying again later may work, and `sent` holds the ids
    of the parts that did go out before the failure (a long reply is sent in parts)."""

    def __init__(self, message: str, retryable: bool = True, sent: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.sent = sent


class Channel(Protocol):
    name: str

    async def run(self, on_message: Callable[[Incoming], Awaitable[None]]) -> None: ...

    async def send(self, user: str, reply: Reply) -> tuple[str, ...]:
        """Send a reply; return the ids of the messages it became (several when the channel split it; none when
        the channel has no ids). Raises SendError."""
        ...

    async def retract(self, room: str, message: str, notice: str) -> None:
        """Take back a message this bot sent to `room`, leaving `notice` where the channel shows one (a Matrix
        redaction's reason; a Telegram message too old to delete is edited to it). Raises SendError."""
        ...


@dataclass(frozen=True)
class Letter:
    """A case as an inbox delivers it: the letter and the case's data. `ref` is the idempotency key."""

    ref: str
    subject: str
    body: str
    lang: str
    flow: str
    city: str
    inbox: str
    filed_at: str
    deadline: str | None
    answers: Mapping[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref, "subject": self.subject, "body": self.body, "lang": self.lang, "flow": self.flow,
            "city": self.city, "inbox": self.inbox, "filed_at": self.filed_at, "deadline": self.deadline,
            "answers": dict(self.answers),
        }


@dataclass(frozen=True)
class Receipt:
    """What an inbox answered: an id it gave the case (Open311 service_request_id, a Message-ID), and a note."""

    id: str | None = None
    detail: str = ""


class DeliveryError(Exception):
    """A delivery failed; `retryable` says whether the same delivery may succeed later (a timeout, a 4xx SMTP
    reply, HTTP 5xx/429) or never will (SMTP 5xx, HTTP 4xx)."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Inbox(Protocol):
    async def deliver(self, letter: Letter) -> Receipt: ...  # raises DeliveryError
