"""Delivery as staff run it: chat files a case, `deliver` sends it to a real SMTP server on loopback; an outage
leaves it pending (exit 1) and a later pass delivers it once; a worker killed mid-delivery loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from email import message_from_bytes, policy
from pathlib import Path

from aiosmtpd.controller import Controller

from .peers.smtp import free_port, smtp_peer
from .test_cli_flows import script_for

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_bot.py"), *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def smtp_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "city.yaml"
    path.write_text(
        "city: amsterdam\ndata: data\ninboxes:\n  default:\n    type: smtp\n    host: 127.0.0.1\n"
        f"    port: {port}\n    to: privacy@city.example\n    from: rightsdesk@city.example\n    tls: none\n"
        "    timeout: 5\n")
    return path


def file_a_case(cfg: Path) -> None:
    out = run("--config", str(cfg), "chat", stdin="\n".join(script_for("data-request", "en")) + "\n")
    assert out.returncode == 0, out.stderr


def test_a_case_filed_through_chat_reaches_the_smtp_server(tmp_path):
    with smtp_peer() as (server, port):
        cfg = smtp_config(tmp_path, port)
        file_a_case(cfg)
        out = run("--config", str(cfg), "deliver")
        assert out.returncode == 0, out.stdout + out.stderr
        (mail,) = server.received
    msg = message_from_bytes(mail.content, policy=policy.default)
    assert msg["To"] == "privacy@city.example" and msg["Message-ID"].startswith("<AMS-DR-")
    body = msg.get_body(("plain",)).get_content()
    assert "Jane Doe" in body and "Article 15" in body
    listing = run("--config", str(cfg), "outbox").stdout
    assert "delivered" in listing and "pending 0, delivered 1, dead 0" in listing


def test_an_outage_leaves_the_case_pending_then_it_is_delivered_once(tmp_path):
    port = free_port()
    cfg = smtp_config(tmp_path, port)
    file_a_case(cfg)  # the inbox is down: the immediate attempt fails
    out = run("--config", str(cfg), "deliver")
    assert out.returncode == 1
    listing = run("--config", str(cfg), "outbox", "--status", "pending").stdout
    assert "pending" in listing and "refused" in listing.lower()
    with smtp_peer(port=port) as (server, _):
        out = run("--config", str(cfg), "deliver", "--now")
        assert out.returncode == 0, out.stdout + out.stderr
        again = run("--config", str(cfg), "deliver", "--now")
        assert again.returncode == 0
        assert len(server.received) == 1


def test_a_permanent_refusal_is_dead_and_can_be_retried(tmp_path):
    with smtp_peer(["550 mailbox unavailable"]) as (server, port):
        cfg = smtp_config(tmp_path, port)
        file_a_case(cfg)
        listing = run("--config", str(cfg), "outbox").stdout
        assert "dead" in listing and "550" in listing and "ALERT:" in listing
        assert run("--config", str(cfg), "deliver").returncode == 1
        ref = next(line.split()[0] for line in listing.splitlines() if "-DR-" in line)
        assert run("--config", str(cfg), "outbox", "retry", ref).returncode == 0
        assert run("--config", str(cfg), "deliver").returncode == 0
        assert len(server.received) == 1


class Stalling:
    """An SMTP handler that receives the message, then stalls before answering (the acknowledgement is lost when
    the client dies), and later answers 250."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.got_data = threading.Event()
        self.stall = True

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201, N802
        self.received.append(envelope.original_content)
        self.got_data.set()
        for _ in range(300):  # bounded: at most 30 s
            if not self.stall:
                break
            await asyncio.sleep(0.1)
        return "250 OK"


def test_a_worker_killed_mid_delivery_loses_nothing_and_a_duplicate_carries_the_same_id(tmp_path):
    handler = Stalling()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="localhost", ready_timeout=10)
    cfg = smtp_config(tmp_path, port)
    file_a_case(cfg)  # nothing listens yet: the case waits in the outbox
    controller.start()
    try:
        worker = subprocess.Popen([sys.executable, str(ROOT / "run_bot.py"), "--config", str(cfg), "deliver", "--now"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert handler.got_data.wait(timeout=60), "the worker never sent the message"
        os.kill(worker.pid, signal.SIGKILL)  # dies after sending, before the acknowledgement
        worker.wait(timeout=30)
        handler.stall = False
        out = run("--config", str(cfg), "deliver", "--now")
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        controller.stop()
    assert 1 <= len(handler.received) <= 2
    ids = {message_from_bytes(raw, policy=policy.default)["Message-ID"] for raw in handler.received}
    assert len(ids) == 1  # a duplicate is recognisable by its Message-ID
    assert "pending 0, delivered 1, dead 0" in run("--config", str(cfg), "outbox").stdout
