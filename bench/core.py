"""Print messages per second, latency and peak memory through Runtime + core + a real SQLite Store.

    cd /work/main && .venv/bin/python bench/core.py [--residents 1000] [--max-seconds 120]

1,000 simulated residents hold mixed conversations, interleaved round by round as a busy channel would deliver
them: /start, FAQ questions (real phrasings in the resident's language), off-topic lines, and (one resident in
five) a data request walked to the end and confirmed, which files a case with its outbox row. The channel is a
recording fake; the store is a SQLite file on this machine's disk (WAL). Each setting of `synchronous` runs in a
fresh process, so that its peak RSS is its own: FULL (as configured: every commit is durable) and NORMAL.
Delivery is measured by bench/deliver.py, not here (no outbox is attached).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import common
from common import percentile, table

from bot import knowledge as knowledgelib
from bot.core import Brain, Policy
from bot.knowledge import Knowledge
from bot.messages import Incoming, Reply
from bot.runtime import Runtime
from bot.store import Store

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
FLOW_EVERY = 5  # one resident in five files a data request
OFF_TOPIC = ("can you recommend a good pizza place", "wat is het weer morgen", "quiero comprar zapatillas baratas",
             "quina hora és", "tell me a joke about cats", "hoe laat gaat de pont naar noord")
STEP_ANSWERS = {"choice": "1", "email": "jane@example.org", "date": "14-03-1980", "phone": "+31 20 123 4567",
                "text": "Jane Doe"}


class Recorder:
    """A channel that keeps what it is asked to send (the bot's side of the conversation)."""

    name = "bench"

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, user: str, reply: Reply) -> None:
        self.sent += 1


def script(n: int, knowledge: Knowledge, rng: random.Random) -> list[str]:
    """The fixed part of resident n's conversation: /start, questions and off-topic lines in one language."""
    lang = knowledge.languages[n % len(knowledge.languages)]
    questions = [p for e in knowledge.entries.values() for p in e.phrasings.get(lang, ())]
    lines = ["/start"]
    lines += [rng.choice(questions) for _ in range(rng.randint(3, 6))]
    lines.insert(rng.randint(2, len(lines)), rng.choice(OFF_TOPIC))
    return lines


def next_flow_line(runtime: Runtime, user: str, lang: str) -> str | None:
    """What a careful resident types next in their flow (tests/test_flows.py `answer_all`), None when done."""
    flow = runtime.store.load_state(Recorder.name, user).flow
    if flow is None:
        return None
    if flow.get("phase") != "step":
        return "1"  # the summary: "Confirm and send" is the first choice
    k = runtime.brain.knowledge
    step = k.flows[flow["id"]].steps[flow["at"]]
    if step.type == "consent":
        return k.text("answer_yes", lang)
    if step.type == "yesno":
        return k.text("answer_no", lang)
    return STEP_ANSWERS[step.type]


async def converse(runtime: Runtime, residents: int, max_seconds: float, seed: int) -> tuple[list[float], int]:
    """Run every conversation to its end, interleaved one message per resident per round; return each message's
    latency (ms) and the number of cases filed."""
    rng = random.Random(seed)
    channel = Recorder()
    k = runtime.brain.knowledge
    pending = {f"resident-{n}": script(n, k, rng) for n in range(residents)}
    flows = {user for n, user in enumerate(pending) if n % FLOW_EVERY == 0}
    for user in flows:  # after the questions: /language en, then ask for the flow in words
        pending[user] += ["/language en", "I want to file a data protection request"]
    latencies: list[float] = []
    deadline = time.perf_counter() + max_seconds
    for round_no in range(200):  # bounded: the longest conversation has well under 200 messages
        at = T0 + timedelta(seconds=20 * round_no)
        active = 0
        for user, lines in pending.items():
            if lines:
                text = lines.pop(0)
            elif user in flows:
                text = next_flow_line(runtime, user, "en")
                if text is None:
                    continue
            else:
                continue
            active += 1
            started = time.perf_counter()
            await runtime.on_message(channel, Incoming(Recorder.name, user, text, at))
            latencies.append((time.perf_counter() - started) * 1000)
        if not active or time.perf_counter() > deadline:
            break
    cases = runtime.store.db.execute("SELECT count(*) FROM cases").fetchone()[0]
    return latencies, cases


def run(synchronous: str, residents: int, max_seconds: float) -> dict:
    """One measurement in this process: a fresh database, the given `synchronous` setting."""
    brain = Brain.build(knowledgelib.load(city="amsterdam"), Policy(rate_limit=None))
    with tempfile.TemporaryDirectory(prefix="rightsdesk-bench-") as folder:
        store = Store(Path(folder) / "bench.sqlite")
        if synchronous != "FULL":
            store.db.execute(f"PRAGMA synchronous={synchronous}")
        runtime = Runtime(brain, store)
        started = time.perf_counter()
        latencies, cases = asyncio.run(converse(runtime, residents, max_seconds, seed=5))
        wall = time.perf_counter() - started
        size = sum(p.stat().st_size for p in Path(folder).glob("bench.sqlite*"))
        store.close()
    return {"synchronous": synchronous, "messages": len(latencies), "seconds": wall,
            "per_second": len(latencies) / wall, "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "max": max(latencies), "cases": cases, "db_mb": size / 2**20, "rss_mb": common.peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--residents", type=int, default=1000)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop a run after this long")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), help="one run in this process (JSON out)")
    args = parser.parse_args()
    if args.synchronous:
        print(json.dumps(run(args.synchronous, args.residents, args.max_seconds)))
        return
    print(f"machine: {common.machine()}")
    rows = []
    for mode in ("FULL", "NORMAL"):
        out = subprocess.run(
            [sys.executable, __file__, "--synchronous", mode, "--residents", str(args.residents),
             "--max-seconds", str(args.max_seconds)],
            capture_output=True, text=True, timeout=args.max_seconds + 120, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append([f"synchronous={mode}", r["messages"], r["cases"], f"{r['seconds']:.1f}", f"{r['per_second']:.0f}",
                     r["p50"], r["p99"], r["max"], f"{r['db_mb']:.1f}", f"{r['rss_mb']:.0f}"])
    print(table(["store", "messages", "cases", "seconds", "msg/s", "p50 ms", "p99 ms", "max ms", "db MB",
                 "peak RSS MB"], rows))
    print(f"\n{args.residents} residents; latency per message through Runtime.on_message (load state, core, one "
          "commit, send to a recording channel); peak RSS of the whole process (knowledge, index, store).")


if __name__ == "__main__":
    main()
