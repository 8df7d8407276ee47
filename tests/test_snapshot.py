"""The on-disk snapshot of the loaded knowledge and its index (bot/snapshot.py): read when nothing changed,
rebuilt when anything did, and never in the way of a start."""

from __future__ import annotations

import logging
import os
import shutil
import time
from datetime import date
from pathlib import Path

import pytest

from bot import snapshot
from bot.knowledge import BUNDLED

TODAY = date(2026, 11, 25)
QUESTION = "how can I see what data the city has about me"


@pytest.fixture
def knowledge_dir(tmp_path: Path) -> Path:
    target = tmp_path / "knowledge"
    shutil.copytree(BUNDLED, target)
    return target


def _refuse_to_build(*_args: object) -> None:
    raise AssertionError("built the index although an up-to-date snapshot was there")


def test_second_load_reads_the_snapshot_and_matches_the_same(knowledge_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    knowledge, matcher = snapshot.load(knowledge_dir, "amsterdam", cache, TODAY)
    (saved,) = cache.glob("index-amsterdam-*.pickle")
    assert saved.stat().st_mode & 0o077 == 0  # readable by the bot's user only
    monkeypatch.setattr(snapshot, "_build", _refuse_to_build)
    again, matcher_again = snapshot.load(knowledge_dir, "amsterdam", cache, TODAY)
    assert again == knowledge
    assert matcher_again.match(QUESTION) == matcher.match(QUESTION)
    assert matcher.match(QUESTION).best.target.entry == "privacy.access-my-data"


def test_a_changed_file_or_city_gives_a_new_snapshot_and_a_new_day_does_not(knowledge_dir: Path,
                                                                            tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    before = snapshot.fingerprint(knowledge_dir, "amsterdam")
    assert snapshot.fingerprint(knowledge_dir, "barcelona") != before
    snapshot.load(knowledge_dir, "amsterdam", cache, TODAY)
    (first,) = cache.glob("index-amsterdam-*.pickle")
    written = first.stat().st_mtime_ns
    snapshot.load(knowledge_dir, "amsterdam", cache, date(2026, 11, 26))  # a restart the next day: read, not built
    assert list(cache.glob("index-amsterdam-*.pickle")) == [first] and first.stat().st_mtime_ns == written
    snapshot.load(knowledge_dir, "amsterdam", cache, TODAY)
    synonyms = knowledge_dir / "common" / "synonyms" / "en.yaml"
    synonyms.write_text(synonyms.read_text(encoding="utf-8") + "- [telly, television]\n", encoding="utf-8")
    assert snapshot.fingerprint(knowledge_dir, "amsterdam") != before
    knowledge, _ = snapshot.load(knowledge_dir, "amsterdam", cache, TODAY)
    assert knowledge.synonyms["en"]["television"] == "telly"  # read afresh, not the old snapshot
    (only,) = cache.glob("index-amsterdam-*.pickle")  # the stale one is gone
    assert snapshot.fingerprint(knowledge_dir, "amsterdam")[:32] in only.name


def test_a_broken_snapshot_is_rebuilt_with_a_warning(knowledge_dir: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    snapshot.load(knowledge_dir, "amsterdam", cache, TODAY)
    (saved,) = cache.glob("index-amsterdam-*.pickle")
    saved.write_bytes(saved.read_bytes()[:1000])  # truncated, as by a full disk
    with caplog.at_level(logging.WARNING, logger="bot.snapshot"):
        knowledge, matcher = snapshot.load(knowledge_dir, "amsterdam", cache, TODAY)
    assert "could not be read" in caplog.text and saved.name in caplog.text
    assert matcher.match(QUESTION).best.target.entry == "privacy.access-my-data"
    assert len(saved.read_bytes()) > 1000  # and saved whole again


def test_a_folder_it_cannot_write_only_costs_speed(knowledge_dir: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="bot.snapshot"):
        knowledge, matcher = snapshot.load(knowledge_dir, "amsterdam", blocked / "cache", TODAY)
    assert "not saved" in caplog.text
    assert matcher.match(QUESTION).best is not None


def test_only_the_same_city_and_folders_older_snapshots_and_old_temporary_files_are_removed(
        knowledge_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    prefix = snapshot.prefix(knowledge_dir, "amsterdam")
    other_city = cache / f"{snapshot.prefix(knowledge_dir, 'amsterdam-west')}{'0' * 32}.pickle"
    other_folder = cache / f"{snapshot.prefix(tmp_path / 'draft', 'amsterdam')}{'0' * 32}.pickle"
    stale = cache / f"{prefix}{'f' * 32}.pickle"
    first_naming = cache / f"index-amsterdam-{'e' * 32}.pickle"
    cut_short, in_progress = cache / ".index-old.tmp", cache / ".index-new.tmp"
    for path in (other_city, other_folder, stale, first_naming, cut_short, in_progress):
        path.write_bytes(b"x")
    os.utime(cut_short, (time.time() - 3600, time.time() - 3600))
    snapshot.load(knowledge_dir, "amsterdam", cache, TODAY)
    assert other_city.exists() and other_folder.exists() and in_progress.exists()
    assert not stale.exists() and not cut_short.exists() and not first_naming.exists()


def test_a_snapshot_others_could_have_written_is_not_read(knowledge_dir: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    snapshot.load(knowledge_dir, "amsterdam", cache, TODAY)
    (saved,) = cache.glob("index-amsterdam-*.pickle")
    saved.chmod(0o646)  # writable by anyone: someone else could have put code in it
    with caplog.at_level(logging.WARNING, logger="bot.snapshot"):
        snapshot.load(knowledge_dir, "amsterdam", cache, TODAY)
    assert "could have been written by another user" in caplog.text


def test_files_that_vanish_or_have_odd_names_do_not_stop_a_start(knowledge_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    odd = os.fsencode(knowledge_dir / "common") + b"/notes-caf\xe9.yaml"  # not UTF-8: a Latin-1 name
    with open(odd, "wb") as f:
        f.write(b"# staff notes\n")
    listed = snapshot._files

    def with_a_ghost(folder: Path, suffix: str) -> list[Path]:  # a file an editor removed after the listing
        return [*listed(folder, suffix), folder / "common" / ".gone.yaml"]

    monkeypatch.setattr(snapshot, "_files", with_a_ghost)
    knowledge, matcher = snapshot.load(knowledge_dir, "amsterdam", tmp_path / "cache", TODAY)
    assert matcher.match(QUESTION).best.target.entry == "privacy.access-my-data"


def test_a_symlinked_city_pack_is_part_of_the_fingerprint(knowledge_dir: Path, tmp_path: Path) -> None:
    pack = tmp_path / "packs" / "amsterdam"
    pack.parent.mkdir()
    (knowledge_dir / "cities" / "amsterdam").rename(pack)
    (knowledge_dir / "cities" / "amsterdam").symlink_to(pack, target_is_directory=True)
    before = snapshot.fingerprint(knowledge_dir, "amsterdam")
    city = pack / "city.yaml"
    city.write_text(city.read_text(encoding="utf-8").replace('"14 020"', '"14 021"'), encoding="utf-8")
    assert snapshot.fingerprint(knowledge_dir, "amsterdam") != before


def test_an_edit_saved_during_the_build_is_not_stored_under_the_old_name(knowledge_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    build = snapshot._build

    def edited_meanwhile(root: Path, city: str, today: date):  # noqa: ANN202
        built = build(root, city, today)
        synonyms = root / "common" / "synonyms" / "en.yaml"
        synonyms.write_text(synonyms.read_text(encoding="utf-8") + "- [telly, television]\n", encoding="utf-8")
        return built

    monkeypatch.setattr(snapshot, "_build", edited_meanwhile)
    snapshot.load(knowledge_dir, "amsterdam", tmp_path / "cache", TODAY)
    assert list((tmp_path / "cache").glob("*.pickle")) == []


def test_ask_reads_no_snapshot_it_did_not_find_and_writes_none(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "run_bot.py"), "--data", str(tmp_path), "ask", QUESTION],
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.startswith("[privacy.access-my-data")
    assert not (tmp_path / "cache").exists()


def test_without_a_folder_it_always_builds(knowledge_dir: Path) -> None:
    knowledge, matcher = snapshot.load(knowledge_dir, "nyc", None, TODAY)
    assert knowledge.city.id == "nyc"
    assert matcher.match(QUESTION).best is not None
