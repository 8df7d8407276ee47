"""Matcher rules that the transcript tests do not pin down on their own."""

from __future__ import annotations

import pytest

from bot import knowledge as knowledgelib
from bot import matcher as matcherlib

STRAIGHT = "i want to complain officially about the street cameras"  # the complaint form, well ahead of cctv


def test_a_form_well_ahead_of_its_explaining_entry_starts(mini):
    m = matcherlib.Matcher(knowledgelib.load(mini, "demo"))
    assert m.match(STRAIGHT).best.target.flow == "complaint"


def test_a_form_only_a_little_ahead_of_the_entry_that_offers_it_answers_with_the_entry(mini, monkeypatch):
    # privacy.cctv offers the complaint form: within EXPLAIN_MARGIN the entry answers (and its button starts it).
    m = matcherlib.Matcher(knowledgelib.load(mini, "demo"))
    monkeypatch.setattr(matcherlib, "EXPLAIN_MARGIN", 0.5)
    match = m.match(STRAIGHT)
    assert match.best.target.entry == "privacy.cctv"
    assert match.candidates[0].target.flow == "complaint"  # the form stays the first candidate


@pytest.mark.parametrize("question", ["how do I pay my parking ticket", "parking permit for my visitors"])
def test_outside_subjects_never_become_candidates_or_answers(mini, question):
    (mini / "common/outside").mkdir()
    (mini / "common/outside/en.yaml").write_text(
        "- id: parking\n  phrasings: [parking permit, visitor parking fine, pay a parking ticket, resident parking]\n"
    )
    match = matcherlib.Matcher(knowledgelib.load(mini, "demo")).match(question)
    assert match.best is None and match.candidates == ()
    assert match.outside is not None and match.outside.target.key == "outside:parking"


@pytest.mark.parametrize(("question", "declined"), [
    ("how do I get a parking permit", True),
    ("when do they collect bulky rubbish in my street", True),
    ("who sees my data when I apply for a building permit online", False),  # "data": only the FAQ's word
    ("wie ziet mijn gegevens als ik een parkeervergunning aanvraag", False),
])
def test_a_city_matter_is_declined_unless_the_question_is_about_digital_rights_too(question, declined):
    from tests.conftest import brain_for

    match = brain_for("amsterdam").matcher.match(question)
    assert (match.outside is not None) is declined, (match.outside, match.best, match.candidates)
    assert declined or match.best is not None or match.unsure
