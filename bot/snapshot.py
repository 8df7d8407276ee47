"""The loaded knowledge and its built index, kept on disk, so that a restart with the same knowledge skips
reading and indexing it.

Reading the YAML and building the matcher's index grow with the knowledge (about 4 s at 1,000 entries on a
2-core machine); unpickling what they built takes a tenth of that (docs/performance.md, start-up). The file's
name carries a fingerprint of everything the result depends on: every YAML file under the knowledge folder
(symlinked folders followed, as the loader follows them), the city, the source of bot/ and the versions of the
libraries that shape the index. Any change gives a new name, so a stale snapshot is never read; older ones of the
same city and knowledge folder are removed when a new one is written. The day is not part of it: every loadable
entry has its own `reviewed` date (a missing one is an error), and only the staleness warnings count from today;
`run_bot.py check` computes those afresh and never reads a snapshot.

A snapshot is a pickle, and unpickling runs code named in the file: it is only read from a folder and a file
that belong to the bot's own user and that no one else may write to (docs/deploy.md). Anything wrong with a
snapshot, or with fingerprinting the knowledge (a file that vanishes mid-edit, an unreadable one), costs a
rebuild, never a start.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import pickle
import stat
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
STALE_TEMP = 600  # seconds after which a temporary file of an interrupted write is removed


def fingerprint(root: Path, city: str) -> str:
    """A hash of everything a loaded knowledge and its index depend on. Raises OSError or UnicodeError when the
    files cannot be read (the caller then builds without a snapshot)."""
    h = hashlib.sha256()
    for part in (f"format {FORMAT}", sys.version, city, *map(_version, _SHAPING)):
        h.update(part.encode() + b"\0")
    for folder, suffix in ((_CODE, ".py"), (root, ".yaml")):
        for path in _files(folder, suffix):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                data = b"\0gone"  # removed since it was listed (an editor's temporary file): hashed as gone
            h.update(os.fsencode(path.relative_to(folder)) + f"\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()


def load(root: Path, city: str, folder: Path | None, today: date | None = None,
         save: bool = True) -> tuple[Knowledge, Matcher]:
    """The knowledge of `city` and its matcher: from a snapshot in `folder` when one matches, else built (and,
    with `save`, saved there for next time). Without a folder, always built. Raises KnowledgeError as
    knowledge.load does."""
    today = today or date.today()
    if folder is None:
        return _build(root, city, today)
    started = time.monotonic()
    try:
        key = fingerprint(root, city)
    except (OSError, UnicodeError) as exc:
        log.warning("knowledge for %s not fingerprinted (%s): building the index without a snapshot", city, exc)
        return _build(root, city, today)
    name = prefix(root, city)
    path = folder / f"{name}{key[:32]}.pickle"
    found = _read(path)
    if found is not None:
        log.info("knowledge for %s read from snapshot %s in %.2f s", city, path.name, time.monotonic() - started)
        return found
    built = _build(root, city, today)
    log.info("knowledge for %s read and indexed in %.2f s", city, time.monotonic() - started)
    if save:
        try:
            unchanged = fingerprint(root, city) == key
        except (OSError, UnicodeError):
            unchanged = False
        if unchanged:  # an edit saved during the build would be stored under the old name: not saved then
            _write(path, name, built)
        else:
            log.info("knowledge for %s changed while it was indexed: the snapshot is not saved", city)
    return built


def prefix(root: Path, city: str) -> str:
    """The start of a snapshot's name: by city and knowledge folder, so that trying a draft folder does not
    evict the live snapshot."""
    return f"index-{city}-{hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:8]}-"


def _build(root: Path, city: str, today: date) -> tuple[Knowledge, Matcher]:
    knowledge = knowledgelib.load(root, city, today)
    return knowledge, Matcher(knowledge)


def _files(folder: Path, suffix: str) -> list[Path]:
    """Every file ending in `suffix` under `folder`, sorted, following symlinked folders (each real folder once)."""
    found: list[Path] = []
    seen: set[str] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        found.extend(Path(top) / name for name in files if name.endswith(suffix))
    return sorted(found)


def _trusted(info: os.stat_result) -> bool:
    """Whether a file or folder with these stat results can only have been written by this bot: owned by its user
    (or root), writable by no one else, except by a group the bot itself belongs to (Kubernetes `fsGroup` volumes)."""
    if info.st_uid not in (os.getuid(), 0) or info.st_mode & stat.S_IWOTH:
        return False
    return not info.st_mode & stat.S_IWGRP or info.st_gid in {os.getgid(), *os.getgroups()}


def _read(path: Path) -> tuple[Knowledge, Matcher] | None:
    try:
        # Opened without following a symlink, and the opened file itself checked: no swap between check and use.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("index snapshot %s could not be opened (%s): building the index instead", path, exc)
        return None
    try:
        with os.fdopen(fd, "rb") as file:
            if not (_trusted(os.fstat(file.fileno())) and _trusted(path.parent.stat())):
                log.warning("index snapshot %s could have been written by another user (owner or permissions): "
                            "not read; building the index instead (make the data folder the bot's alone)", path)
                return None
            # The snapshot is millions of small objects and no cycles: the cyclic collector would scan them over
            # and over while they are made (a third of the time), and frees nothing.
            enabled = gc.isenabled()
            gc.disable()
            try:
                found = pickle.load(file)
            finally:
                if enabled:
                    gc.enable()
    except Exception as exc:  # noqa: BLE001 - any broken or foreign snapshot means: rebuild it
        log.warning("index snapshot %s could not be read (%s): building the index instead", path, exc)
        return None
    if not (isinstance(found, tuple) and len(found) == 2 and isinstance(found[0], Knowledge)
            and isinstance(found[1], Matcher)):
        log.warning("index snapshot %s holds something else: building the index instead", path)
        return None
    return found


def _write(path: Path, prefix: str, value: tuple[Knowledge, Matcher]) -> None:
    """Save atomically (a reader sees the old file or the whole new one), readable by this user only; remove this
    city's and folder's older snapshots, and temporary files of writes that were cut short. A folder we cannot
    write to only costs the next start its speed."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _trusted(path.parent.stat()):
            log.warning("index snapshot not saved: %s belongs to another user or others may write to it",
                        path.parent)
            return
        fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".tmp", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as out:
                pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        for old in path.parent.glob(f"{prefix}*.pickle"):
            if old != path and "-" not in old.name[len(prefix):]:  # a city id may hold "-", a hash never
                old.unlink(missing_ok=True)
        # The first naming (before the knowledge folder was part of it): "index-<city>-<32 hex>.pickle".
        city_prefix = prefix[:-9]  # "index-<city>-"
        for old in path.parent.glob(f"{city_prefix}*.pickle"):
            rest = old.name[len(city_prefix):-len(".pickle")]
            if len(rest) == 32 and all(c in "0123456789abcdef" for c in rest):
                old.unlink(missing_ok=True)
        now = time.time()
        for left in path.parent.glob(".index-*.tmp"):
            if now - left.stat().st_mtime > STALE_TEMP:
                left.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("index snapshot %s not saved (%s): the next start builds the index again", path, exc)


def _version(distribution: str) -> str:
    try:
        return f"{distribution} {metadata.version(distribution)}"
    except metadata.PackageNotFoundError:
        return f"{distribution} -"
