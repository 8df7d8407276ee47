"""The command line as staff and other tools use it: chat through a pipe, the ask --json contract, check, eval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_bot.py"), *args],
        input=stdin, capture_output=True, text=True, timeout=120, cwd=cwd or ROOT,
    )


def test_piped_chat_prints_the_menu_and_an_faq_answer(tmp_path):
    out = run("--data", str(tmp_path), "chat", stdin="/start\nhow can I see what data the city has about me\n")
    assert out.returncode == 0, out.stderr
    assert "  1. " in out.stdout  # choices as numbered lines
    assert "Amsterdam" in out.stdout
    assert "GDPR" in out.stdout or "AVG" in out.stdout
    assert (tmp_path / "rightsdesk.db").exists()


def test_chat_json_prints_one_object_per_reply(tmp_path):
    out = run("chat", "--json", "--data", str(tmp_path), stdin="/start\n/language en\n")
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(lines) == 2
    for obj in lines:
        assert set(obj) == {"text", "choices", "field"}
        assert obj["field"] is None
    assert lines[1]["text"] == "From now on I will speak English."


def test_chat_state_persists_between_runs(tmp_path):
    run("chat", "--data", str(tmp_path), stdin="/language es\n")
    out = run("chat", "--json", "--data", str(tmp_path), stdin="/menu\n")
    assert "¿Qué" in json.loads(out.stdout.splitlines()[0])["text"] or "Qué" in out.stdout


def test_ask_json_contract():
    out = run("ask", "--json", "how can I see what data the city has about me")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert set(rec) == {"question", "lang", "id", "flow", "score", "candidates"}
    assert rec["id"] == "privacy.access-my-data"
    assert rec["flow"] == "data-request"
    assert rec["lang"] == "en"
    assert isinstance(rec["score"], float) and rec["candidates"] == []


def test_ask_reads_stdin_and_reports_off_topic_as_null():
    out = run("ask", "--json", stdin="what is a good recipe for chocolate cake\n\nwho protects my data\n")
    recs = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(recs) == 2
    assert recs[0]["id"] is None and recs[0]["flow"] is None
    assert recs[1]["id"] == "privacy.complain-authority" or recs[1]["candidates"]


def test_ask_names_the_local_authority():
    bcn = json.loads(run("ask", "--json", "--city", "barcelona", "who protects my data").stdout)
    assert bcn["id"] == "privacy.complain-authority"
    assert "APDCAT" in run("ask", "--city", "barcelona", "who protects my data").stdout
    assert "Autoriteit Persoonsgegevens" in run("ask", "--city", "amsterdam", "who protects my data").stdout


def test_ask_with_a_language_that_the_city_does_not_have_is_a_usage_error():
    out = run("ask", "--lang", "fr", "hello")
    assert out.returncode == 2
    assert "--lang fr: not a language of this city" in out.stderr


def test_check_exits_zero_on_the_bundled_knowledge():
    out = run("check")
    assert out.returncode == 0, out.stdout
    assert "0 error(s), 0 warning(s)" in out.stdout


def test_check_exits_one_on_errors_and_lists_them(mini):
    (mini / "common/faq/topics.yaml").write_text("- id: Bad Id\n")
    out = run("check", "--knowledge", str(mini))
    assert out.returncode == 1
    assert "knowledge/common/faq/topics.yaml:1: id: bad or missing id 'Bad Id'" in out.stdout


def test_eval_prints_per_language_and_the_three_summary_figures(tmp_path):
    f = tmp_path / "set.jsonl"
    f.write_text(
        '{"q": "how can I see what data the city has about me", "lang": "en", '
        '"expect": {"id": "privacy.access-my-data"}}\n'
        '{"q": "recipe for chocolate cake", "lang": "en", "expect": {"id": null}}\n'
        '{"q": "talk to a person", "lang": "en", "expect": {"flow": "handoff"}}\n'
    )
    out = run("eval", str(f))
    assert out.returncode == 0, out.stderr
    tail = out.stdout.splitlines()[-3:]
    assert tail == ["topics: 1.000 (1/1)", "flows: 1.000 (1/1)", "off-topic rejected: 1.000 (1/1)"]
    assert "  en: 1.000 (1/1) | 1.000 (1/1) | 1.000 (1/1)" in out.stdout


def test_bad_arguments_get_clear_errors(tmp_path):
    out = run("eval", str(tmp_path / "missing.jsonl"))
    assert out.returncode == 2 and "no such file" in out.stderr
    out = run("--config", str(tmp_path / "nope.yaml"), "check")
    assert out.returncode == 2 and "no such config file" in out.stderr
    out = run("--knowledge", str(tmp_path / "nowhere"), "check")
    assert out.returncode == 2 and "no such folder" in out.stderr
    out = run("--city", "atlantis", "ask", "hello")
    assert out.returncode == 2 and "--city atlantis: no such city pack (choose one of: amsterdam" in out.stderr
    assert "Traceback" not in out.stderr


def test_eval_misses_lists_each_missed_line(tmp_path):
    lines = tmp_path / "mini.jsonl"
    lines.write_text('{"q": "how can I see what data the city has about me", "lang": "en", '
                     '"expect": {"id": "privacy.cctv"}}\n', encoding="utf-8")
    out = run("eval", str(lines), "--misses", "--data", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "  [en] privacy.cctv -> privacy.access-my-data: how can I see what data the city has about me" in out.stdout
