"""Transcript tests of the pure core: what a resident types, what the bot answers. No async, no mocks."""

from __future__ import annotations

from bot import knowledge as knowledgelib
from bot.core import Brain
from bot.messages import State, Unanswered
from tests.conftest import Chat


def test_start_greets_with_the_city_and_shows_the_menu(chat, brain):
    (reply,) = chat.say("/start")
    assert "Amsterdam" in reply.text
    k = brain.knowledge
    assert k.text("menu_ask", "nl") in reply.choices or k.text("menu_ask", "en") in reply.choices
    assert len(reply.choices) >= 5


def test_an_faq_question_gets_its_answer_with_follow_up_choices(chat, brain):
    (reply,) = chat.say("how can I see what data the city has about me")
    entry = brain.knowledge.entries["privacy.access-my-data"]
    assert reply.text == entry.answer["en"]
    assert brain.knowledge.flows["data-request"].title["en"] in reply.choices
    assert brain.knowledge.text("choice_menu", "en") in reply.choices
    assert chat.state.why is not None and chat.state.why.entry == "privacy.access-my-data"


def test_the_answer_comes_in_the_language_of_the_question(chat, brain):
    (reply,) = chat.say("welke gegevens heeft de gemeente over mij en hoe kan ik die inzien")
    assert reply.text == brain.knowledge.entries["privacy.access-my-data"].answer["nl"]
    assert chat.state.last_lang == "nl"


def test_a_chosen_language_wins_over_detection(chat, brain):
    chat.say("/language es")
    assert chat.state.lang == "es"
    (reply,) = chat.say("how can I see what data the city has about me")
    assert reply.text == brain.knowledge.entries["privacy.access-my-data"].answer["es"]


def test_language_menu_lists_every_language_by_its_own_name(chat, brain):
    (reply,) = chat.say("/language")
    assert set(reply.choices) == {brain.knowledge.text("language_name", lg) for lg in brain.knowledge.languages}
    chat.say("Català")
    assert chat.state.lang == "ca"


def test_a_choice_can_be_picked_by_number_or_by_label(chat, brain):
    (reply,) = chat.say("how can I see what data the city has about me")
    menu_label = brain.knowledge.text("choice_menu", "en")
    number = str(reply.choices.index(menu_label) + 1)
    (menu,) = chat.say(number)
    assert menu.text == brain.knowledge.text("menu_prompt", "en")
    (again,) = chat.say(menu.choices[0].upper())  # labels match regardless of case
    assert again.text == brain.knowledge.text("ask_prompt", "en")


def test_off_topic_gets_an_honest_dont_know_and_is_recorded_without_who_asked(chat, brain):
    (reply,) = chat.say("what is a good recipe for chocolate cake")
    assert reply.text == brain.knowledge.text("dont_know", "en")
    assert brain.knowledge.text("choice_person", "en") in reply.choices
    assert chat.effects == [Unanswered("what is a good recipe for chocolate cake", "en")]
    assert chat.state.misses == 1


def test_why_shows_the_phrasing_score_sources_and_review_date(chat, brain):
    chat.say("how can I see what data the city has about me")
    text = chat.text("/why")
    entry = brain.knowledge.entries["privacy.access-my-data"]
    assert chat.state.why.phrasing in text
    assert f"{chat.state.why.score:.2f}" in text
    assert entry.sources[0].url in text
    assert entry.reviewed.isoformat() in text


def test_a_new_resident_is_answered_in_the_city_s_first_language_until_they_write(chat, brain):
    first = brain.knowledge.languages[0]
    assert chat.text("/why") == brain.knowledge.text("why_nothing", first)
    chat.say("how can I see what data the city has about me")
    chat.say("/menu")
    assert chat.state.last_lang == "en"


def test_why_before_any_answer_says_so(chat, brain):
    chat.say("/language en")
    assert chat.text("/why") == brain.knowledge.text("why_nothing", "en")


def test_close_scores_ask_did_you_mean_and_the_choice_answers(mini):
    # Both entries carry the phrasing "box on the lamp pole": they score alike, so the bot must ask.
    from bot import knowledge as knowledgelib
    from bot.core import Brain

    from .conftest import Chat

    chat = Chat(Brain.build(knowledgelib.load(mini, "demo")))
    (reply,) = chat.say("box on the lamp pole")
    assert reply.text == chat.brain.knowledge.text("did_you_mean", "en")
    assert set(reply.choices[:2]) == {"Cameras in the street", "Sensors in the street"}
    assert reply.choices[-1] == chat.brain.knowledge.text("none_of_these", "en")
    (answer,) = chat.say("Sensors in the street")
    assert answer.text == "Sensors answer."
    other = Chat(chat.brain)
    other.say("box on the lamp pole")
    assert other.text("3") == chat.brain.knowledge.text("dont_know", "en")  # "None of these"


def test_unknown_command_is_named_kindly(chat):
    assert "/frobnicate" in chat.text("/frobnicate")


def test_cancel_with_nothing_in_progress(chat, brain):
    chat.say("/language en")
    assert chat.text("/cancel") == brain.knowledge.text("nothing_to_cancel", "en")


def test_telegram_style_command_with_bot_name(chat, brain):
    chat.say("/language en")
    assert chat.text("/help@rightsdesk_bot") == brain.knowledge.text("help", "en")


def test_bad_input_gets_kind_replies(chat, brain):
    k = brain.knowledge
    chat.say("/language en")
    assert chat.text("x" * 100_000) == k.text("too_long", "en", limit=4000)
    assert chat.text("") == k.text("empty", "en")
    assert chat.text("   \x00\x07  ") == k.text("empty", "en")
    assert chat.text("😀😀🎉") == k.text("unreadable", "en")
    assert chat.text("Привет, как дела?") == k.text("unreadable", "en")
    assert chat.text("你好") == k.text("unreadable", "en")


def test_state_survives_a_json_round_trip(chat):
    chat.say("how can I see what data the city has about me")
    assert State.from_json(chat.state.to_json()) == chat.state


def test_damaged_state_falls_back_to_defaults():
    assert State.from_json({"offers": [{"label": 1}], "why": "nonsense", "misses": None}) == State()


def test_media_gets_a_kind_text_only_reply(chat, brain):
    from datetime import UTC, datetime

    from bot.core import handle
    from bot.messages import Incoming

    chat.say("/language es")
    out = handle(Incoming("telegram", "1", "", datetime(2026, 11, 25, tzinfo=UTC), kind="media"), chat.state, brain)
    assert out.replies[0].text == brain.knowledge.text("not_text", "es")


def test_start_deep_links_open_an_entry_or_a_flow(chat, brain):
    (reply,) = chat.say("/start privacy.cctv")
    assert reply.text == brain.knowledge.entries["privacy.cctv"].answer["nl"]
    chat.say("/start flow-foi-request")
    assert chat.state.flow["id"] == "foi-request"


def test_contact_lists_the_city_s_offices_with_their_sources_details(chat, brain):
    chat.say("/language en")
    text = chat.text("/contact")
    assert "Autoriteit Persoonsgegevens" in text and "14 020" in text and "088 1805 250" in text
    assert brain.knowledge.text("menu_contacts", "en") in chat.say("/menu")[0].choices


def test_topics_by_theme_lead_to_answers(chat, brain):
    chat.say("/language en")
    (themes,) = chat.say("/topics")
    assert brain.knowledge.text("theme_2", "en") in themes.choices
    (listing,) = chat.say(brain.knowledge.text("theme_2", "en"))
    title = brain.knowledge.entries["privacy.cctv"].title["en"]
    assert title in listing.choices
    assert chat.text(title) == brain.knowledge.entries["privacy.cctv"].answer["en"]


def test_a_city_matter_the_bot_does_not_handle_points_to_the_city_line(mini):
    (mini / "common/outside").mkdir()
    (mini / "common/outside/en.yaml").write_text(
        "- id: parking\n  phrasings: [parking permit, visitor parking fine, pay a parking ticket, resident parking]\n"
    )
    chat = Chat(Brain.build(knowledgelib.load(mini, "demo")))
    said = chat.say("how do I pay my parking ticket")
    assert said[0].text.startswith("That sounds like a question for another city service")
    assert "Demoville" in said[0].text  # no helpdesk office in this city: its name
    assert chat.effects == []  # not a gap in the FAQ: nothing kept
    assert chat.state.misses == 0  # and not a miss that would offer a person
    assert chat.state.why is None  # /why does not explain an earlier, unrelated answer
    assert "cameras" in chat.text("who watches the street cameras").lower()  # the FAQ still answers
