"""The loaded knowledge and its built index, kept on disk, so that a restart with the same knowledge skips
reading and indexing it.

Reading the YAML and building the matcher's index grow with the knowledge (about 2 s at 1,000 entries on a
2-core machine); unpickling what they built takes a tenth of that (docs/performance.md, start-up). The file's
name carries a fingerprint of everything the result depends on: every file under the knowledge folder, the
city, the source of bot/ and the versions of the libraries that shape the index. Any change gives a new name, so
a stale snapshot is never read; older ones of the same city are removed when a new one is written. The day is
not part of it: every loadable entry has its own `reviewed` date (a missing one is an error), and only the
staleness warnings count from today; `run_bot.py check` computes those afresh and never reads a snapshot.

A snapshot is a pickle, and unpickling runs code named in the file: it is only ever read from the deployment's
data folder, which also holds the database and must be writable by the bot's own user only (docs/deploy.md).
Anything wrong with a snapshot (unreadable, truncated, from another version) costs a rebuild, never a start.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import pickle
import sys
import tempfile
import time
from datetime import date
from importlib import metadata
from pathlib import Path

from bot import knowledge as knowledgelib
from bot.knowledge import Knowledge
from bot.matcher import Matcher

log = logging.getLogger(__name__)

FORMAT = 1  # raise when what a snapshot holds changes shape in a way the source hash would not show
_SHAPING = ("numpy", "rapidfuzz", "snowballstemmer", "stop-words", "wordfreq", "holidays", "PyYAML")
_CODE = Path(__file__).resolve().parent


def fingerprint(root: Path, city: str) -> str:
    """A hash of everything a loaded knowledge and its index depend on."""
    h = hashlib.sha256()
    for part in (f"format {FORMAT}", sys.version, city, *map(_version, _SHAPING)):
        h.update(part.encode() + b"\0")
    for folder in (_CODE, root):
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            data = path.read_bytes()
            h.update(f"{path.relative_to(folder)}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()


def load(root: Path, city: str, folder: Path | None, today: date | None = None) -> tuple[Knowledge, Matcher]:
    """The knowledge of `city` and its matcher: from a snapshot in `folder` when one matches, else built (and
    saved there for next time). Without a folder, always built. Raises KnowledgeError as knowledge.load does."""
    today = today or date.today()
    if folder is None:
        return _build(root, city, today)
    path = folder / f"index-{city}-{fingerprint(root, city)[:32]}.pickle"
    started = time.monotonic()
    found = _read(path)
    if found is not None:
        log.info("knowledge for %s read from snapshot %s in %.2f s", city, path.name, time.monotonic() - started)
        return found
    built = _build(root, city, today)
    log.info("knowledge for %s read and indexed in %.2f s", city, time.monotonic() - started)
    _write(path, built)
    return built


def _build(root: Path, city: str, today: date) -> tuple[Knowledge, Matcher]:
    knowledge = knowledgelib.load(root, city, today)
    return knowledge, Matcher(knowledge)


def _read(path: Path) -> tuple[Knowledge, Matcher] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("index snapshot %s unreadable (%s): building the index instead", path, exc)
        return None
    # The snapshot is millions of small objects and no cycles: the cyclic collector would scan them over and
    # over while they are made (a third of the time), and frees nothing.
    enabled = gc.isenabled()
    gc.disable()
    try:
        found = pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - any broken or foreign snapshot means: rebuild it
        log.warning("index snapshot %s could not be read (%s): building the index instead", path, exc)
        return None
    finally:
        if enabled:
            gc.enable()
    if not (isinstance(found, tuple) and len(found) == 2 and isinstance(found[0], Knowledge)
            and isinstance(found[1], Matcher)):
        log.warning("index snapshot %s holds something else: building the index instead", path)
        return None
    return found


def _write(path: Path, value: tuple[Knowledge, Matcher]) -> None:
    """Save atomically (a reader sees the old file or the whole new one), readable by this user only; remove
    this city's older snapshots. A folder we cannot write to only costs the next start its speed."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".tmp", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as out:
                pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        prefix = path.name.rsplit("-", 1)[0] + "-"  # "index-<city>-": a city id may hold "-", a hash never
        for old in path.parent.glob(f"{prefix}*.pickle"):
            if old != path and "-" not in old.name[len(prefix):]:
                old.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("index snapshot %s not saved (%s): the next start builds the index again", path, exc)


def _version(distribution: str) -> str:
    try:
        return f"{distribution} {metadata.version(distribution)}"
    except metadata.PackageNotFoundError:
        return f"{distribution} -"
