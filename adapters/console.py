"""The console channel: a resident typing in a terminal, or a script piping one message per line.

Choices print as numbered lines; the resident answers with the number or the label (the core resolves both).
With `json_lines`, each reply prints as one JSON object: {"text", "choices", "field"}.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TextIO

from bot.messages import Incoming, Reply


class Console:
    name = "console"

    def __init__(self, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, user: str = "console",
                 json_lines: bool = False) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.user = user
        self.json_lines = json_lines
        self.interactive = stdin.isatty() and stdout.isatty()

    async def run(self, on_message: Callable[[Incoming], Awaitable[None]]) -> None:
        """Read messages until end of input (Ctrl-D), or Ctrl-C in a terminal."""
        if self.interactive:
            self.stdout.write("rightsdesk console. Type /start to begin, /help for commands, Ctrl-D to quit.\n")
        while True:
            if self.interactive:
                self.stdout.write("> ")
                self.stdout.flush()
            try:
                line = self.stdin.readline()
            except KeyboardInterrupt:
                return
            if not line:
                return
            text = line.rstrip("\r\n")
            if self.interactive and not text.strip():
                continue
            await on_message(Incoming(self.name, self.user, text, datetime.now(UTC)))

    async def send(self, user: str, reply: Reply) -> tuple[str, ...]:
        self._write(reply)
        return ()  # a terminal has no message ids

    async def retract(self, room: str, message: str, notice: str) -> None:
        """Nothing to take back: the console keeps no messages (and has no ids to name one)."""

    def _write(self, reply: Reply) -> None:
        if self.json_lines:
            field = {"name": reply.field.name, "type": reply.field.type} if reply.field else None
            obj = {"text": reply.text, "choices": list(reply.choices), "field": field}
            self.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        else:
            self.stdout.write(reply.text.rstrip() + "\n")
            for i, label in enumerate(reply.choices, 1):
                self.stdout.write(f"  {i}. {label}\n")
            self.stdout.write("\n")
        self.stdout.flush()
