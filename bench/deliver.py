"""Print cases per second through bot.outbox.Outbox to the file inbox and to an SMTP server on 127.0.0.1.

    cd /work/main && .venv/bin/python bench/deliver.py [--cases 500]

The cases are made by the core: residents walk the data-request flow to the end through Runtime + Store (as
bench/core.py does), which writes each case with its outbox row. The database is then copied once per inbox, so
that each inbox delivers the same cases from the same starting point. A pass is `Outbox.deliver_due` (100 rows);
passes repeat until nothing is due. Figures: cases per second for the whole drain (read the row, build the
e-mail, deliver, commit the receipt with synchronous=FULL), and the inbox's own time per case.
The SMTP server is aiosmtpd on 127.0.0.1 (tests/peers/smtp.py), accepting everything; every case is a new SMTP
connection, as SmtpInbox makes one per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import common
from common import percentile, table
from core import T0, Recorder, next_flow_line

from adapters.inboxes.file import FileInbox
from adapters.inboxes.smtp import SmtpInbox
from bot import knowledge as knowledgelib
from bot.core import Brain, Policy
from bot.messages import Incoming
from bot.outbox import Outbox
from bot.ports import Inbox, Letter, Receipt
from bot.runtime import Runtime
from bot.store import Store
from tests.peers.smtp import smtp_peer

MAX_PASSES = 100


class Timed:
    """An inbox that times the inbox it wraps, per delivery."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self.ms: list[float] = []

    async def deliver(self, letter: Letter) -> Receipt:
        started = time.perf_counter()
        try:
            return await self.inbox.deliver(letter)
        finally:
            self.ms.append((time.perf_counter() - started) * 1000)


async def file_cases(runtime: Runtime, cases: int) -> None:
    """Let `cases` residents each file one data request, through the runtime (one message at a time)."""
    channel = Recorder()
    for n in range(cases):
        user = f"resident-{n}"
        at = T0 + timedelta(minutes=n)
        lines = ["/language en", "I want to file a data protection request"]
        for _ in range(40):  # bounded: the flow has fewer steps than this
            text = lines.pop(0) if lines else next_flow_line(runtime, user, "en")
            if text is None:
                break
            at += timedelta(seconds=5)
            await runtime.on_message(channel, Incoming(Recorder.name, user, text, at))


async def drain(store: Store, inbox: Timed) -> tuple[int, float]:
    """Deliver every due case; return how many were delivered and the seconds it took."""
    outbox = Outbox(store, {"default": inbox})
    now = datetime.now(UTC) + timedelta(days=365)  # every row is due
    delivered = 0
    started = time.perf_counter()
    for _ in range(MAX_PASSES):
        report = await outbox.deliver_due(now)
        delivered += len(report.delivered)
        if not (report.delivered or report.retrying):
            break
    return delivered, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=500)
    args = parser.parse_args()
    print(f"machine: {common.machine()}")
    brain = Brain.build(knowledgelib.load(city="amsterdam"), Policy(rate_limit=None))
    rows = []
    with tempfile.TemporaryDirectory(prefix="rightsdesk-deliver-") as tmp:
        folder = Path(tmp)
        source = Store(folder / "cases.sqlite")
        started = time.perf_counter()
        asyncio.run(file_cases(Runtime(brain, source), args.cases))
        filed = source.db.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
        print(f"{filed} cases filed through the core in {time.perf_counter() - started:.1f} s")
        source.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        source.close()

        def fresh(name: str) -> Store:
            shutil.copy(folder / "cases.sqlite", folder / f"{name}.sqlite")
            return Store(folder / f"{name}.sqlite")

        inbox = Timed(FileInbox(folder / "inbox"))
        delivered, seconds = asyncio.run(drain(fresh("file"), inbox))
        rows.append(["file (.eml + .json, fsync)", delivered, f"{seconds:.2f}", f"{delivered / seconds:.0f}",
                     percentile(inbox.ms, 50), percentile(inbox.ms, 99)])
        with smtp_peer() as (recorder, port):
            inbox = Timed(SmtpInbox("127.0.0.1", port, "privacy@city.example", "rightsdesk@city.example",
                                    tls="none", timeout=10))
            delivered, seconds = asyncio.run(drain(fresh("smtp"), inbox))
            accepted = len(recorder.received)
        rows.append([f"SMTP, aiosmtpd on 127.0.0.1 ({accepted} accepted)", delivered, f"{seconds:.2f}",
                     f"{delivered / seconds:.0f}", percentile(inbox.ms, 50), percentile(inbox.ms, 99)])
    print(table(["inbox", "delivered", "seconds", "cases/s", "inbox p50 ms", "inbox p99 ms"], rows))
    print("\ncases/s: the whole drain (due rows read, letter built, delivered, receipt committed with "
          f"synchronous=FULL); inbox ms: the inbox's deliver call alone. Peak RSS: {common.peak_rss_mb():.0f} MB.")


if __name__ == "__main__":
    main()
