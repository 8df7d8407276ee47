"""Ports: what the runtime needs from a channel. Adapters implement them; nothing here knows a network."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from bot.messages import Incoming, Reply


class SendError(Exception):
    """A reply could not be sent; `retryable` says whether trying again later may work."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Channel(Protocol):
    name: str

    async def run(self, on_message: Callable[[Incoming], Awaitable[None]]) -> None: ...

    async def send(self, user: str, reply: Reply) -> None: ...  # raises SendError
