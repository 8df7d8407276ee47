"""Guided flows as a resident lives them: consent, validation, questions mid-flow, edit, back, cases, deadlines."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest

from bot import knowledge as knowledgelib
from bot.messages import CaseChanged, CaseFiled, TicketOpened

from .conftest import Chat, brain_for

REF = re.compile(r"^[A-Z]{3}-[A-Z]{2}-[2-9A-HJKMNP-Z]{5}$")


def english(city: str = "amsterdam") -> Chat:
    chat = Chat(brain_for(city))
    chat.say("/language en")
    return chat


def answer_all(chat: Chat, lang: str = "en", consent: bool = True) -> None:
    """Answer every step the way a careful resident would, until the summary."""
    k = chat.brain.knowledge
    for _ in range(30):  # bounded: no flow has 30 steps
        flow = chat.state.flow
        if flow is None or flow.get("phase") != "step":
            return
        step = k.flows[flow["id"]].steps[flow["at"]]
        typed = {
            "choice": "1", "email": "jane@example.org", "date": "14-03-1980", "phone": "+31 20 123 4567",
            "consent": k.text("answer_yes" if consent else "answer_no", lang),
            "yesno": k.text("answer_no", lang), "text": "Jane Doe",
        }[step.type]
        chat.say(typed)
    raise AssertionError("the flow did not reach its summary")


def test_a_data_request_becomes_a_case_with_a_letter_and_a_deadline():
    chat = english()
    chat.say("I want to file a data protection request")
    assert chat.state.flow["id"] == "data-request"
    answer_all(chat)
    replies = chat.say("1")  # Confirm and send
    filed = [e for e in chat.effects if isinstance(e, CaseFiled)]
    assert len(filed) == 1
    case = filed[0].case
    assert REF.match(case.ref) and case.ref.startswith("AMS-DR-")
    assert case.ref in replies[-1].text
    assert case.deadline == date(2026, 12, 28)  # 25 Nov + 1 month = 25 Dec, Christmas: next working day
    assert "Jane Doe" in case.letter and "14-03-1980" not in case.letter and "1980-03-14" in case.letter
    assert "Article 15 of the GDPR" in case.letter and "2026-12-28" in case.letter
    assert case.inbox == "privacy" and chat.state.flow is None
    assert chat.state.cases[-1].ref == case.ref


def test_the_letter_carries_the_city_s_working_language_too():
    chat = english()
    chat.say("I want to file a data protection request")
    answer_all(chat)
    chat.say("1")
    case = next(e.case for e in chat.effects if isinstance(e, CaseFiled))
    assert "----" in case.letter and "artikel 15" in case.letter.lower()
    assert "----" not in case.resident_letter


def test_saying_no_to_consent_ends_the_flow_and_keeps_nothing():
    chat = english()
    chat.say("I want to file a data protection request")
    answer_all(chat, consent=False)
    assert chat.state.flow is None
    assert not [e for e in chat.effects if isinstance(e, CaseFiled)]
    assert "kept nothing" in chat.say("/cancel")[0].text or chat.state.flow is None


def test_an_invalid_email_gets_a_specific_correction_and_the_same_question():
    chat = english()
    chat.say("I want to file a data protection request")
    for _ in range(20):
        flow = chat.state.flow
        step = chat.brain.knowledge.flows["data-request"].steps[flow["at"]]
        if step.type == "email":
            break
        chat.say({"choice": "1", "consent": "yes", "date": "01-01-1990"}.get(step.type, "x"))
    (reply,) = chat.say("jane-at-example")
    assert reply.text.startswith(chat.brain.knowledge.text("invalid_email", "en"))
    assert reply.field.name == "email" and reply.field.type == "email"


def test_a_question_mid_flow_is_answered_then_the_flow_resumes():
    chat = english()
    chat.say("I want to file a data protection request")
    chat.say("1")
    at = chat.state.flow["at"]
    replies = chat.say("how long does the city have to answer my request?")
    assert replies[0].text == chat.brain.knowledge.entries["privacy.response-deadline"].answer["en"]
    assert replies[-1].text.startswith(chat.brain.knowledge.text("back_to_request", "en"))
    assert chat.state.flow["at"] == at


def test_back_and_cancel():
    chat = english()
    chat.say("I want to file a data protection request")
    chat.say("1")
    chat.say("parking")
    chat.say("/back")
    assert chat.brain.knowledge.flows["data-request"].steps[chat.state.flow["at"]].name == "concerns"
    assert "concerns" not in chat.state.flow["answers"]
    chat.say("/cancel")
    assert chat.state.flow is None


def test_an_answer_can_be_edited_from_the_summary():
    chat = english()
    chat.say("I want to file a data protection request")
    answer_all(chat)
    chat.say("2")  # Change an answer
    (menu,) = chat.say("Name")
    assert menu.field.name == "full_name"
    (summary,) = chat.say("Janet Doe")
    assert "- Name: Janet Doe" in summary.text
    assert chat.state.flow["phase"] == "summary"


def test_choosing_post_asks_the_postal_address_and_drops_the_email():
    chat = english()
    chat.say("I want to file a data protection request")
    answer_all(chat)
    chat.say("2")
    chat.say("Answer by")
    chat.say("By post")
    assert chat.state.flow["answers"]["reply_by"] == "post"
    chat.say("Main Street 1, Amsterdam")
    answers = chat.state.flow["answers"]
    assert "email" not in answers and answers["postal_address"] == "Main Street 1, Amsterdam"


def test_a_flow_left_for_a_day_is_offered_again():
    chat = english()
    chat.say("I want to file a data protection request")
    chat.say("1")
    chat.at += timedelta(days=2)
    (reply,) = chat.say("parking")
    assert reply.choices == (chat.brain.knowledge.text("resume_continue", "en"),
                             chat.brain.knowledge.text("resume_drop", "en"))
    (back,) = chat.say("1")
    assert back.field.name == "concerns"


def test_a_passed_deadline_gives_exactly_one_reminder_with_the_next_step():
    chat = english()
    chat.say("I want to file a data protection request")
    answer_all(chat)
    chat.say("1")
    chat.at += timedelta(days=40)  # the clock moves through the message time
    replies = chat.say("hello")
    overdue = [r for r in replies if "has not answered" in r.text]
    assert len(overdue) == 1
    complain = f"{chat.brain.knowledge.text('overdue_complain', 'en')} ({chat.state.cases[-1].ref})"
    assert complain in replies[-1].choices
    reminded = [e for e in chat.effects if isinstance(e, CaseChanged) and e.reminded]
    assert len(reminded) == 1
    later = Chat(chat.brain, state=chat.state, at=chat.at).say("hello again")
    assert not [r for r in later if "has not answered" in r.text]
    chat.say(complain)  # the complaint, pre-filled from the case
    assert chat.state.flow["id"] == "complaint"
    assert chat.state.cases[-1].ref in chat.state.flow["answers"]["what"]


def test_an_extended_deadline_moves_the_reminder():
    chat = english()
    chat.say("I want to file a data protection request")
    answer_all(chat)
    chat.say("1")
    ref = chat.state.cases[-1].ref
    (reply,) = chat.say(f"/extended {ref}")
    assert "2027-02-25" in reply.text  # 25 Dec (the first month, before rolling past Christmas) + 2 months
    chat.at += timedelta(days=40)
    assert not [r for r in chat.say("hello") if "has not answered" in r.text]


def test_status_and_letter_copy():
    chat = english()
    assert chat.text("/status") == chat.brain.knowledge.text("status_none", "en")
    chat.say("I want to file a data protection request")
    answer_all(chat)
    chat.say("1")
    ref = chat.state.cases[-1].ref
    assert ref in chat.text("/status") and "2026-12-28" in chat.text(f"/status {ref}")
    assert "Jane Doe" in chat.text(f"/letter {ref}")
    assert "cannot find" in chat.text("/status AMS-DR-ZZZZZ")


@pytest.mark.parametrize("city", ["amsterdam", "barcelona", "nyc"])
@pytest.mark.parametrize("lang", ["en", "nl", "es", "ca"])
@pytest.mark.parametrize("flow", ["data-request", "complaint", "foi-request", "handoff"])
def test_every_flow_completes_in_every_language_and_city(city, lang, flow):
    chat = Chat(brain_for(city))
    chat.say(f"/language {lang}")
    chat.say("/menu")
    k = chat.brain.knowledge
    chat.say(k.pick(k.flows[flow].title, lang))
    assert chat.state.flow["id"] == flow
    answer_all(chat, lang)
    replies = chat.say(k.text("confirm", lang))
    if k.flows[flow].ticket:  # the handoff opens a help-desk ticket: a person answers in the chat
        ticket = next(e.ticket for e in chat.effects if isinstance(e, TicketOpened))
        assert ticket.ref in replies[-1].text and ticket.lang == lang and chat.state.handoff["ref"] == ticket.ref
        return
    case = next(e.case for e in chat.effects if isinstance(e, CaseFiled))
    assert case.ref in replies[-1].text and case.lang == lang
    assert case.subject and "{" not in case.letter and case.ref in case.letter
    if k.flows[flow].deadline:
        assert case.deadline is not None and case.deadline.isoformat() in case.letter


def test_references_are_unique_per_resident_and_time():
    from bot.core import make_ref

    refs = {make_ref("AMS", "DR", "console", str(u), "2026-11-25T10:00:00", "x", "0") for u in range(2000)}
    assert len(refs) == 2000
    assert all(REF.match(r) for r in refs)


def test_knowledge_flows_are_clean_for_each_city():
    for city in ("amsterdam", "barcelona", "nyc"):
        k = knowledgelib.load(city=city)
        assert set(k.flows) == {"data-request", "complaint", "foi-request", "handoff"}
        assert "foi" in k.deadlines


def test_a_flow_changed_by_staff_is_stopped_kindly():
    chat = english()
    chat.say("I want to file a data protection request")
    chat.state = chat.state.but(flow={**chat.state.flow, "at": 99})  # a step that no longer exists
    (reply,) = chat.say("parking")
    assert reply.text == chat.brain.knowledge.text("flow_changed", "en") and chat.state.flow is None
    chat.state = chat.state.but(flow={"id": "no-such-flow", "phase": "step", "at": 0, "answers": {}})
    assert chat.text("1") == chat.brain.knowledge.text("flow_changed", "en")


def test_skip_and_yes_typed_in_another_language_are_understood():
    chat = Chat(brain_for("barcelona"))
    chat.say("/language ca")
    chat.say("vull fer una sol·licitud de protecció de dades")
    chat.say("1")
    chat.say("Skip")  # English, in a Catalan conversation
    assert "concerns" in chat.state.flow["answers"] and chat.state.flow["answers"]["concerns"] is None
    chat.say("Omet")
    chat.say("yes")
    assert chat.brain.knowledge.flows["data-request"].steps[chat.state.flow["at"]].name == "full_name"
