"""The bundled knowledge loads clean; the checker reports broken files with exact, actionable messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bot import knowledge as knowledgelib
from bot.knowledge import KnowledgeError

TOPICS = yaml.safe_load((Path(__file__).resolve().parents[2] / "shared/eval/topics.yaml").read_text()) if (
    Path(__file__).resolve().parents[2] / "shared/eval/topics.yaml"
).exists() else None


@pytest.mark.parametrize("city", knowledgelib.list_cities(knowledgelib.BUNDLED))
def test_bundled_knowledge_is_clean_for_every_city(city):
    problems = knowledgelib.check(city=city)
    assert [str(p) for p in problems] == []


def test_there_are_three_city_packs():
    assert knowledgelib.list_cities(knowledgelib.BUNDLED) == ["amsterdam", "barcelona", "nyc"]


@pytest.mark.parametrize("city", ["amsterdam", "barcelona", "nyc"])
def test_every_required_topic_answers_in_every_language(city):
    k = knowledgelib.load(city=city)
    required = [key for key in (TOPICS or {}) if key != "flows"] or list(k.entries)
    for topic in required:
        assert topic in k.entries, topic
        for lang in ("en", "nl", "es", "ca"):
            assert k.entries[topic].answer.get(lang), (topic, lang)
    assert set(k.flows) >= {"data-request", "complaint", "foi-request", "handoff"}


def _check(root, city="demo"):
    return [str(p) for p in knowledgelib.check(root, city)]


def test_the_mini_fixture_is_clean(mini):
    assert _check(mini) == []


def test_yaml_syntax_error_names_file_and_line(mini):
    (mini / "common/faq/en.yaml").write_text("- id: privacy.cctv\n  title: [unclosed\n")
    out = _check(mini)
    assert any(line.startswith("knowledge/common/faq/en.yaml:") and "YAML syntax error" in line for line in out), out


def test_tab_in_indentation_is_reported_once_with_its_line(mini):
    path = mini / "common/faq/topics.yaml"
    path.write_text(path.read_text().replace("  principle: 2\n  flow", "\tprinciple: 2\n  flow", 1))
    out = [x for x in _check(mini) if "topics.yaml" in x]
    assert len([x for x in out if "tab character" in x]) == 1
    assert not any("YAML syntax" in x for x in out)


def test_unknown_key_duplicate_id_missing_flow_and_translation_all_at_once(mini):
    topics = mini / "common/faq/topics.yaml"
    text = topics.read_text()
    text = text.replace("flow: complaint", "flow: complain")  # a flow that does not exist
    text = text.replace("  principle: 2\n  sources", "  principle: 2\n  sorces: []\n  sources", 1)  # a typo'd key
    text += "- id: privacy.sensors\n  principle: 2\n  sources: [{title: x, url: https://example.org/x}]\n"
    text += "  reviewed: 2026-01-01\n"
    text += "- id: about.new\n  principle: 0\n  sources: [{title: x, url: https://example.org/x}]\n"
    text += "  reviewed: 2026-01-01\n"
    topics.write_text(text)
    out = _check(mini)
    joined = "\n".join(out)
    assert "flow 'complain' does not exist (known flows: complaint)" in joined
    assert "unknown key 'sorces' (known keys: flow, id, principle, related, reviewed, sources; check the spelling)" in joined
    assert "entry 'privacy.sensors': duplicate id (first on line" in joined
    assert "entry 'about.new': warning: answer has no 'en' text (add the entry to faq/en.yaml (languages: en))" in joined
    assert all(x.startswith("knowledge/") for x in out)


def test_exact_message_for_a_flow_that_does_not_exist(mini):
    topics = mini / "common/faq/topics.yaml"
    lines = topics.read_text().splitlines()
    n = next(i for i, line in enumerate(lines, 1) if line.strip() == "flow: complaint")
    topics.write_text(topics.read_text().replace("flow: complaint", "flow: nope"))
    assert (
        f"knowledge/common/faq/topics.yaml:{n}: entry 'privacy.cctv': flow 'nope' does not exist "
        "(known flows: complaint)"
    ) in _check(mini)


def test_warnings_do_not_fail_but_errors_do(mini):
    en = mini / "common/faq/en.yaml"
    en.write_text(en.read_text().replace("answer: Cameras answer.", "answer: " + "word " * 130))
    out = _check(mini)
    assert any("warning: answer has 130 words (over 120)" in x for x in out)
    knowledgelib.load(mini, "demo")  # warnings only: loads
    (mini / "common/faq/topics.yaml").write_text("- id: Bad Id\n")
    with pytest.raises(KnowledgeError):
        knowledgelib.load(mini, "demo")


def test_stale_review_date_warns(mini):
    topics = mini / "common/faq/topics.yaml"
    topics.write_text(topics.read_text().replace("reviewed: 2026-11-01", "reviewed: 2020-01-01", 1))
    assert any("reviewed 2020-01-01, over a year ago" in x for x in _check(mini))


def test_text_placeholders_are_held_to_the_contract(mini):
    texts = mini / "common/texts/en.yaml"
    texts.write_text(texts.read_text().replace('too_long: "That message', 'too_long: "{user} That message'))
    assert any("too_long: unknown placeholder(s) user (this text may use: limit)" in x for x in _check(mini))


def test_unknown_city_lists_the_known_ones(mini):
    assert any("unknown city 'atlantis' (choose one of: demo)" in x for x in _check(mini, "atlantis"))


def test_city_override_replaces_answer_and_adds_phrasings(mini):
    city = mini / "cities/demo"
    (city / "faq").mkdir()
    (city / "faq/topics.yaml").write_text(
        "- id: privacy.cctv\n  sources: [{title: Local, url: https://example.org/cameras}]\n  reviewed: 2026-11-02\n"
    )
    (city / "faq/en.yaml").write_text("- id: privacy.cctv\n  answer: Local cameras answer.\n  phrasings: [camera bylaw]\n")
    k = knowledgelib.load(mini, "demo")
    entry = k.entries["privacy.cctv"]
    assert entry.answer["en"] == "Local cameras answer."
    assert "camera bylaw" in entry.phrasings["en"] and "security cameras" in entry.phrasings["en"]
    assert entry.sources[0].url == "https://example.org/cameras"
    assert _check(mini) == []


def test_city_answer_without_city_source_warns(mini):
    city = mini / "cities/demo"
    (city / "faq").mkdir()
    (city / "faq/en.yaml").write_text("- id: privacy.cctv\n  answer: Local cameras answer.\n")
    assert any("a city answer without a city source" in x for x in _check(mini))


def test_synonym_in_two_groups_is_an_error(mini):
    (mini / "common/synonyms").mkdir()
    (mini / "common/synonyms/en.yaml").write_text("- [delete, erase]\n- [remove, erase]\n")
    assert any("'erase' is already in the group on line 1" in x for x in _check(mini))


OUTSIDE_EN = """\
- id: parking
  phrasings: [parking permit, visitor parking fine, how do i pay a parking ticket, resident parking zone]
- id: waste
  phrasings: [bulky rubbish pickup, which day is bin collection]
"""


def test_outside_subjects_are_read_from_common_and_the_city(mini):
    (mini / "common/outside").mkdir()
    (mini / "common/outside/en.yaml").write_text(OUTSIDE_EN)
    (mini / "cities/demo/outside").mkdir()
    (mini / "cities/demo/outside/en.yaml").write_text("- id: parking\n  phrasings: [demoville blue zone]\n"
                                                      "- id: ferry\n  phrasings: [ferry timetable]\n")
    city = mini / "cities/demo/city.yaml"
    city.write_text(city.read_text() + "offices:\n  helpdesk:\n    name: {en: Demoville city line}\n"
                    "    phone: \"0800 123\"\n    source: https://example.org/contact\n")
    k = knowledgelib.load(mini, "demo")
    assert k.outside["parking"]["en"][-1] == "demoville blue zone" and len(k.outside["parking"]["en"]) == 5
    assert k.outside["ferry"]["en"] == ("ferry timetable",)
    assert _check(mini) == []


def test_broken_outside_records_are_named_with_a_fix(mini):
    (mini / "common/outside").mkdir()
    (mini / "common/outside/en.yaml").write_text(
        "- id: Parking Permits\n  phrasings: [x]\n"
        "- id: waste\n  phrasings: bulky rubbish\n"
        "- id: taxes\n  phrasings: [tax bill]\n  answer: not here\n"
        "- id: taxes\n  phrasings: [again]\n"
    )
    (mini / "common/outside/xx.yaml").write_text("- id: parking\n  phrasings: [x]\n")
    out = _check(mini)
    assert any("outside/en.yaml:1: id: bad or missing id 'Parking Permits' (use lowercase words" in x
               for x in out), out
    assert any("outside/en.yaml:4: subject 'waste': phrasings must be a list of example questions" in x
               for x in out), out
    assert any("outside/en.yaml:7: subject 'taxes': unknown key 'answer'" in x for x in out), out
    assert any("outside/en.yaml:8: subject 'taxes': duplicate id (first on line 5)" in x for x in out), out
    assert any("'xx.yaml' is not one of the FAQ's languages (en)" in x for x in out), out


def test_a_line_break_in_the_middle_of_a_sentence_warns(mini):
    path = mini / "common/texts/en.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace(
        "dont_know: >\n", "dont_know: |\n", 1), encoding="utf-8")
    out = [x for x in _check(mini) if "dont_know" in x]
    assert len(out) == 1 and "line break in the middle of a sentence" in out[0] and "'key: >'" in out[0], out


def test_outside_subjects_without_a_city_helpdesk_office_warn(mini):
    (mini / "common/outside").mkdir()
    (mini / "common/outside/en.yaml").write_text(OUTSIDE_EN)
    out = _check(mini)
    assert any("city.yaml:1: offices: warning: outside/ subjects point residents to the city's general line" in x
               for x in out), out
