"""Print matching latency, start-up time and accuracy: bot.matcher beside two baselines, at three base sizes.

    cd /work/main && .venv/bin/python bench/match.py [--sizes 40 1000 10000] [--budget 20]

Sizes: 40 is the real bundled base (Amsterdam: its entries and flows); larger bases copy its entries under new
ids (bench/common.py `grown`). Baselines, over every phrasing of every language: (a) rapidfuzz `extractOne` with
WRatio, (b) BM25 (bm25s, plain tokens: lowercase, accents kept off by `normalise`, no stemming, no stop words).
A baseline answers with the target of its best phrasing, and rejects below a threshold calibrated on the same
dev set to reject as many off-topic lines as the matcher does (so accuracy compares at equal rejection).

Accuracy follows `run_bot.py eval`: a topic line needs the right entry, a flow line the flow started or offered,
an off-topic line no answer. In a grown base a copy counts as its real entry ("family" accuracy).
Latency is wall time per question, single-threaded; every timed loop is bounded by a count and a time budget.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import bm25s
import common
from common import percentile, table
from rapidfuzz import fuzz, process
from rapidfuzz.utils import default_process

from bot import knowledge as knowledgelib
from bot.knowledge import Knowledge
from bot.language import normalise
from bot.matcher import Matcher

Verdict = tuple[str | None, str | None]  # (entry id, flow) of the answer; (None, None) when rejected
SEED = 11


class Baseline:
    """A baseline's best phrasing for a question, and its threshold: (target of the best phrasing, score)."""

    name = ""

    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge
        self.targets = [(entry, flow) for _, entry, flow in common.phrasings_of(knowledge)]
        self.threshold = float("-inf")

    def best(self, question: str) -> tuple[int, float]:
        raise NotImplementedError

    def verdict(self, question: str) -> tuple[Verdict, float]:
        index, score = self.best(question)
        if index < 0:
            return (None, None), score
        entry, flow = self.targets[index]
        if entry is not None:
            flow = self.knowledge.entries[entry].flow
        return (entry, flow), score


class Fuzzy(Baseline):
    """rapidfuzz extractOne with WRatio. Choices are preprocessed once (lowercase, no punctuation), the question
    per call: the same as `processor=default_process`, without re-processing every choice on every call."""

    name = "rapidfuzz WRatio"

    def __init__(self, knowledge: Knowledge) -> None:
        super().__init__(knowledge)
        self.choices = [default_process(text) for text, _, _ in common.phrasings_of(knowledge)]

    def best(self, question: str) -> tuple[int, float]:
        found = process.extractOne(default_process(question), self.choices, scorer=fuzz.WRatio, processor=None)
        return (found[2], found[1]) if found else (-1, 0.0)


class Bm25(Baseline):
    """BM25 (bm25s, Lucene variant, k1=1.5 b=0.75) with each phrasing a document."""

    name = "BM25 (bm25s)"

    def __init__(self, knowledge: Knowledge) -> None:
        super().__init__(knowledge)
        self.retriever = bm25s.BM25()
        self.retriever.index([_tokens(text) for text, _, _ in common.phrasings_of(knowledge)], show_progress=False)

    def best(self, question: str) -> tuple[int, float]:
        tokens = _tokens(question)
        if not tokens:
            return -1, 0.0
        docs, scores = self.retriever.retrieve([tokens], k=1, show_progress=False, n_threads=1)
        return int(docs[0][0]), float(scores[0][0])


def _tokens(text: str) -> list[str]:
    return [w for w in normalise(text).split() if len(w) > 1]


def kind_of(line: dict) -> str:
    """A dev line asks for a flow, an entry ("topic"), or nothing ("offtopic")."""
    expect = line["expect"]
    return "flow" if "flow" in expect else "offtopic" if expect.get("id") is None else "topic"


def judge(line: dict, verdict: Verdict) -> tuple[str, bool]:
    """The kind of a dev line and whether the verdict is right for it (the rules of `run_bot.py eval`)."""
    entry, flow = verdict
    kind = kind_of(line)
    if kind == "flow":
        return kind, flow == line["expect"]["flow"]
    if kind == "offtopic":
        return kind, entry is None and flow is None
    return kind, common.real_id(entry) == line["expect"]["id"]


def matcher_verdict(matcher: Matcher, knowledge: Knowledge, question: str, top: bool = False) -> Verdict:
    """What `run_bot.py eval` counts: the best target, with the flow an entry offers. With `top`, an unsure
    match counts as its first candidate: in a grown base the copies of one entry score alike, and the bot asks
    "Did you mean" between them, which says nothing about whether it found the right entry."""
    match = matcher.match(question)
    best = match.best or (match.candidates[0] if top and match.candidates else None)
    if best is None:
        return None, None
    target = best.target
    if target.entry:
        return target.entry, knowledge.entries[target.entry].flow
    return None, target.flow


def timed_passes(ask: Callable[[str], object], questions: list[str], repeats: int, budget: float) -> list[float]:
    """Ask every question `repeats` times (in order, pass after pass), stopping early after `budget` seconds;
    return the latency of each call in milliseconds."""
    latencies: list[float] = []
    deadline = time.perf_counter() + budget
    for _ in range(repeats):
        for q in questions:
            started = time.perf_counter()
            ask(q)
            latencies.append((time.perf_counter() - started) * 1000)
            if started > deadline:
                return latencies
    return latencies


def accuracy(lines: list[dict], verdicts: list[Verdict]) -> dict[str, float]:
    counts: Counter = Counter()
    for line, verdict in zip(lines, verdicts, strict=True):
        kind, ok = judge(line, verdict)
        counts[kind, ok] += 1
    return {k: counts[k, True] / max(1, counts[k, True] + counts[k, False]) for k in ("topic", "flow", "offtopic")}


def calibrate(lines: list[dict], scored: list[tuple[Verdict, float]], rejected: int) -> float:
    """The least score accepted so that at least `rejected` off-topic lines are rejected (more when scores tie:
    WRatio gives many questions the same score)."""
    off = sorted(s for line, (_, s) in zip(lines, scored, strict=True) if kind_of(line) == "offtopic")
    if rejected <= 0:
        return float("-inf")
    return math.nextafter(off[rejected - 1], math.inf) if rejected <= len(off) else math.inf


STARTUP = """
import sys, time
started = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from bot import snapshot
imported = time.perf_counter()
knowledge, matcher = snapshot.load(Path(sys.argv[2]), "amsterdam", Path(sys.argv[3]))
print(imported - started, time.perf_counter() - imported, len(knowledge.entries))
"""


def startup(size: int, real: Knowledge, kb: Knowledge, work: Path) -> list[object]:
    """Start-up of a fresh process on a knowledge folder of `size` entries written as YAML: cold (read the
    YAML, build the index, save the snapshot: the first start after a knowledge change) and warm (fingerprint
    the files and read the snapshot: every other start), each in its own process so no cache is warm."""
    folder = common.write_grown(knowledgelib.BUNDLED, real, kb, work / f"knowledge-{size}")
    cache = work / f"cache-{size}"
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", STARTUP, str(common.ROOT), str(folder), str(cache)],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode:
            raise SystemExit(f"the start-up run at {size} entries failed:\n{proc.stderr}")
        out = proc.stdout.split()
        runs.append((float(out[0]), float(out[1]), int(out[2])))
    snapshot_mb = sum(f.stat().st_size for f in cache.glob("*.pickle")) / 1e6
    (imports, cold, entries), (_, warm, _) = runs
    return [entries, f"{size_mb:.1f}", f"{snapshot_mb:.1f}", f"{imports * 1000:.0f}", f"{cold * 1000:.0f}",
            f"{warm * 1000:.0f}"]


STARTUP_HEADER = ["entries", "knowledge MB", "snapshot MB", "imports ms", "cold start-up ms", "warm start-up ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 1000, 10000])
    parser.add_argument("--repeats", type=int, default=5, help="passes over the dev questions per method")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of timed questions per method and size")
    args = parser.parse_args()

    print(f"machine: {common.machine()}")
    started = time.perf_counter()
    real = knowledgelib.load(city="amsterdam")
    load_s = time.perf_counter() - started
    lines = common.dev_lines()
    questions = [line["q"] for line in lines]
    # A fixed shuffled order: a pass cut short by the budget is still a sample of every language and kind.
    order = questions[:]
    random.Random(SEED).shuffle(order)
    print(f"knowledge load (YAML, real base of {len(real.entries)} entries + {len(real.flows)} flows): "
          f"{load_s * 1000:.0f} ms; dev questions: {len(lines)}")

    rows = []
    starts = []
    work = Path(tempfile.mkdtemp(prefix="rightsdesk-bench-"))
    for size in args.sizes:
        kb = common.grown(real, size)
        n_phrasings = sum(1 for _ in common.phrasings_of(kb))
        started = time.perf_counter()
        matcher = Matcher(kb)
        build_s = time.perf_counter() - started
        grown = kb is not real
        verdicts = [matcher_verdict(matcher, kb, q, top=grown) for q in questions]  # also warms the caches once
        acc = accuracy(lines, verdicts)
        if not grown:  # the same figures as `run_bot.py eval` prints
            print(f"matcher on the real base: topics {acc['topic']:.3f}, flows {acc['flow']:.3f}, off-topic "
                  f"rejected {acc['offtopic']:.3f}")
        rejected = sum(1 for line, v in zip(lines, verdicts, strict=True) if judge(line, v) == ("offtopic", True))
        lat = timed_passes(lambda q, m=matcher: m.match(q), order, args.repeats, args.budget)
        rows.append([size, "rightsdesk matcher", n_phrasings, f"{build_s * 1000:.0f}", len(lat),
                     percentile(lat, 50), percentile(lat, 99),
                     acc["topic"], acc["flow"], acc["offtopic"], f"{common.peak_rss_mb():.0f}"])
        print(table(HEADER, rows[-1:]), flush=True)
        del matcher
        for kind in (Fuzzy, Bm25):
            started = time.perf_counter()
            baseline = kind(kb)
            build_s = time.perf_counter() - started
            lat = timed_passes(baseline.best, order, args.repeats, args.budget)
            acc_cells: list[object] = ["-", "-", "-"]
            if len(lat) >= len(order):  # a full pass fitted the budget: judge accuracy too
                scored = [baseline.verdict(q) for q in questions]
                baseline.threshold = calibrate(lines, scored, rejected)
                acc = accuracy(lines, [v if s >= baseline.threshold else (None, None) for v, s in scored])
                acc_cells = [acc["topic"], acc["flow"], acc["offtopic"]]
            rows.append([size, kind.name, n_phrasings, f"{build_s * 1000:.0f}", len(lat), percentile(lat, 50),
                         percentile(lat, 99), *acc_cells,
                         f"{common.peak_rss_mb():.0f}"])
            print(table(HEADER, rows[-1:]), flush=True)
            del baseline
        starts.append(startup(size, real, kb, work))
        print(table(STARTUP_HEADER, starts[-1:]), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(HEADER, rows))
    print()
    print(table(STARTUP_HEADER, starts))
    print("\nlatency in ms per question (p50/p99 over n timed calls, caches warm after one untimed pass for the "
          "matcher); index: the build in ms, in this process; accuracy as in "
          "`run_bot.py eval`; in grown bases copies count as their real entry and an unsure match as its first "
          "candidate; baselines' threshold rejects at least as many off-topic lines as the matcher (calibrated on "
          "the dev set itself); '-': no full pass within the budget. RSS: peak of this process so far, MB. Start-up: a "
          "fresh process loading the base written as YAML (bench/common.py write_grown) with bot/snapshot.py: cold "
          "reads the YAML, builds and saves the snapshot; warm reads the snapshot; imports are bot.snapshot's.")


HEADER = ["entries", "method", "phrasings", "index ms", "n", "p50 ms", "p99 ms", "topics", "flows",
          "off-topic", "peak RSS MB"]


if __name__ == "__main__":
    main()
