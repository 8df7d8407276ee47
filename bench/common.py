"""Helpers the benchmarks share: the repository on sys.path, percentiles, peak memory, tables, larger knowledge.

Benchmarks print figures; they never assert timings (docs/performance.md says how to read them).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import resource
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ on the path, not the repository
    sys.path.insert(0, str(ROOT))

from bot.knowledge import Entry, Knowledge  # noqa: E402 - needs the path set above

DEV = Path("/work/shared/eval/dev.jsonl")
COPY = ".copy"  # generated entry ids are "<real id>.copy<n>": the real id is the part before it
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile `q` (0..100) of `values`: the smallest value with q% of them at or below it."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (Linux reports ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    """One line naming what the figures were measured on."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    return f"{cores} cores, {cpu}, Python {platform.python_version()}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table (Markdown pipe syntax, so it pastes into docs/performance.md as it is)."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def dev_lines(path: Path = DEV) -> list[dict]:
    """The labelled questions of the dev set (the format `run_bot.py eval` reads)."""
    return [json.loads(raw) for raw in path.read_text(encoding="utf-8").splitlines() if raw.strip()]


def real_id(entry_id: str | None) -> str | None:
    """The real entry a generated copy was made from (a real id is its own)."""
    return entry_id.split(COPY, 1)[0] if entry_id else entry_id


def made_up_token(n: int) -> str:
    """A pronounceable word no language has, different for every n: 'zy' and three consonant-vowel syllables."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    parts = []
    for _ in range(3):
        n, digit = divmod(n, len(syllables))
        parts.append(syllables[digit])
    if n:
        raise ValueError(f"copy number too large for a made-up token: {n} (raise the syllable count)")
    return "zy" + "".join(parts)


def grown(knowledge: Knowledge, size: int, seed: int = 7) -> Knowledge:
    """Return `knowledge` with its entries copied until it holds `size` entries (the real base when `size` is no
    more than its entries and flows: 38 + 4 for Amsterdam, "40").

    Copy n of an entry gets the id '<id>.copy<n>', a made-up token of its own in its title and in every other
    phrasing, and the remaining phrasings with their words shuffled: the same vocabulary as the real base (so
    postings of common terms grow as they would), yet no phrasing string repeats another, so that no cache keyed
    by the whole text can make the index look faster than it is.
    """
    real = list(knowledge.entries.values())
    if size <= len(real) + len(knowledge.flows):
        return knowledge
    rng = random.Random(seed)
    entries: dict[str, Entry] = dict(knowledge.entries)
    for i in range(size - len(real)):
        source = real[i % len(real)]
        token = made_up_token(i)
        phrasings = {}
        for lang, texts in source.phrasings.items():
            varied = []
            for j, text in enumerate(texts):
                words = text.split()
                if j % 2 == 1 and len(words) >= 3:
                    rng.shuffle(words)
                    varied.append(" ".join(words))
                else:
                    varied.append(f"{text} {token}")
            phrasings[lang] = tuple(varied)
        entry_id = f"{source.id}{COPY}{i // len(real) + 1}"
        title = {lang: f"{t} {token}" for lang, t in source.title.items()}
        entries[entry_id] = replace(source, id=entry_id, title=title, phrasings=phrasings)
    return replace(knowledge, entries=entries)


def phrasings_of(knowledge: Knowledge) -> Iterator[tuple[str, str | None, str | None]]:
    """Every phrasing with the target it leads to: (text, entry id, flow id), entries then flows."""
    for entry in knowledge.entries.values():
        for texts in entry.phrasings.values():
            for text in texts:
                yield text, entry.id, None
    for flow in knowledge.flows.values():
        for texts in flow.phrasings.values():
            for text in texts:
                yield text, None, flow.id


def write_grown(source: Path, real: Knowledge, kb: Knowledge, dest: Path) -> Path:
    """Write a knowledge folder holding `kb`: a copy of `source` (the folder `real` was loaded from) with the
    generated entries appended to common/faq as YAML, so that start-up can be timed on files of a real size."""
    import shutil

    import yaml

    shutil.copytree(source, dest)
    faq = dest / "common" / "faq"
    copies = [e for e in kb.entries.values() if e.id not in real.entries]
    if not copies:
        return dest
    topics = [{"id": e.id, "principle": e.principle, **({"flow": e.flow} if e.flow else {}),
               "related": list(e.related), "sources": [{"title": s.title, "url": s.url} for s in e.sources],
               "reviewed": e.reviewed} for e in copies]
    with (faq / "topics.yaml").open("a", encoding="utf-8") as out:
        out.write("\n" + yaml.safe_dump(topics, allow_unicode=True, sort_keys=False, width=1_000_000))
    for lang in real.languages:
        words = [{"id": e.id, "title": e.title[lang], "phrasings": list(e.phrasings.get(lang, ())),
                  "answer": e.answer[lang]} for e in copies]
        with (faq / f"{lang}.yaml").open("a", encoding="utf-8") as out:
            out.write("\n" + yaml.safe_dump(words, allow_unicode=True, sort_keys=False, width=1_000_000))
    return dest
