"""Flows through the real command line: chat --json files a case into the file outbox; a killed process resumes."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from .conftest import Chat, brain_for
from .test_flows import answer_all

ROOT = Path(__file__).resolve().parents[1]
CMD = [sys.executable, str(ROOT / "run_bot.py")]


def script_for(flow: str, lang: str, city: str = "amsterdam") -> list[str]:
    """The lines a resident types to file `flow` in `lang`, found by walking the pure core the same way."""
    chat = Chat(brain_for(city))
    k = chat.brain.knowledge
    lines = [f"/language {lang}", k.pick(k.flows[flow].title, lang)]
    chat.say(lines[0])
    chat.say("/menu")
    chat.say(lines[1])
    recorded: list[str] = []
    original = chat.say

    def say(text: str):
        recorded.append(text)
        return original(text)

    chat.say = say  # type: ignore[method-assign]
    answer_all(chat, lang)
    return ["/language " + lang, "/menu", lines[1], *recorded, k.text("confirm", lang)]


@pytest.mark.parametrize("lang", ["en", "nl", "es", "ca"])
def test_chat_json_files_every_flow_into_the_file_outbox(tmp_path, lang):
    flows = ["data-request", "complaint", "foi-request", "handoff"]
    script = [line for flow in flows for line in script_for(flow, lang)]
    out = subprocess.run([*CMD, "--data", str(tmp_path), "chat", "--json"], input="\n".join(script) + "\n",
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    replies = [json.loads(line) for line in out.stdout.splitlines()]
    assert all(set(r) == {"text", "choices", "field"} for r in replies)
    emls = sorted((tmp_path / "outbox").glob("*.eml"))
    assert len(emls) == 3  # the handoff needs a help desk; without one the bot says how to reach the city
    assert any("14 020" in r["text"] for r in replies)
    for eml in emls:
        msg = message_from_bytes(eml.read_bytes(), policy=policy.default)
        ref = eml.stem
        assert msg["Message-ID"] == f"<{ref}@rightsdesk>"
        assert any(ref in r["text"] for r in replies)
        data = json.loads((tmp_path / "outbox" / f"{ref}.json").read_text())
        assert data["lang"] == lang and data["ref"] == ref
        if data["flow"] == "data-request":
            body = msg.get_body(("plain",)).get_content()
            assert "Jane Doe" in body and "1980-03-14" in body
            assert ("15" in body) and data["deadline"] in body  # the article and the deadline


class Process:
    """`run_bot.py chat --json` as a child process, read line by line with bounded waits."""

    def __init__(self, data: Path) -> None:
        self.proc = subprocess.Popen([*CMD, "--data", str(data), "chat", "--json"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def say(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def until_field(self, name: str, timeout: float = 30) -> dict:
        while True:
            reply = self.lines.get(timeout=timeout)  # raises queue.Empty: the test fails instead of hanging
            if reply["field"] and reply["field"]["name"] == name:
                return reply

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def test_a_killed_process_resumes_the_flow_at_the_same_step(tmp_path):
    first = Process(tmp_path)
    first.say("/language en")
    first.say("I want to file a data protection request")
    first.until_field("right")
    first.say("1")
    first.until_field("concerns")
    first.kill()  # no goodbye: the process dies between two messages

    second = Process(tmp_path)
    second.say("parking")
    reply = second.until_field("details")
    assert reply["choices"]  # Skip
    second.say("/cancel")
    second.proc.stdin.close()
    assert second.proc.wait(timeout=30) == 0
    import sqlite3

    db = sqlite3.connect(tmp_path / "rightsdesk.db")
    assert db.execute("SELECT count(*) FROM cases").fetchone()[0] == 0  # /cancel kept nothing half-stored
    state = json.loads(db.execute("SELECT state FROM conversations").fetchone()[0])
    assert state["flow"] is None
