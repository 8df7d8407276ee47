"""A real SMTP server on 127.0.0.1 (aiosmtpd) that answers DATA with scripted replies and keeps what it accepts."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class Mail:
    """One accepted e-mail: the envelope and the raw message."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes


@dataclass
class Recorder:
    """An aiosmtpd handler: answer each DATA with the next scripted reply (then "250 OK"), keep accepted mail."""

    replies: list[str] = field(default_factory=list)
    attempts: int = 0
    received: list[Mail] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        self.attempts += 1
        reply = self.replies.pop(0) if self.replies else "250 OK"
        if reply.startswith("250"):
            self.received.append(Mail(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.original_content))
        return reply


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def smtp_peer(replies: Iterable[str] = (), port: int | None = None) -> Iterator[tuple[Recorder, int]]:
    """Run an SMTP server on 127.0.0.1 (at `port`, or a free one) for the duration of the block."""
    recorder = Recorder(list(replies))
    port = port or free_port()
    # server_hostname: skip the FQDN lookup; ready_timeout bounds a start that fails.
    controller = Controller(recorder, hostname="127.0.0.1", port=port, server_hostname="localhost",
                            ready_timeout=10)
    controller.start()
    try:
        yield recorder, port
    finally:
        controller.stop()
