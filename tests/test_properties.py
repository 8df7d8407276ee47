"""Any text, in any state, yields a valid outcome: no exception, replies with text, a state that round-trips."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.core import handle
from bot.messages import Incoming, Outcome, State

from .conftest import brain_for

COMMANDS = ["/start", "/help", "/menu", "/language", "/language nl", "/cancel", "/why", "/privacy", "/x", "1", "2",
            "9", "how can I see my data", "wifi", "klacht", "datos", "dades"]
texts = st.one_of(st.text(max_size=300), st.sampled_from(COMMANDS), st.text(alphabet="0123456789 /", max_size=5))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts, min_size=1, max_size=8))
def test_any_message_sequence_yields_valid_outcomes(messages):
    brain = brain_for("amsterdam")
    state = State()
    for text in messages:
        outcome = handle(Incoming("console", "u", text, datetime(2026, 11, 25, tzinfo=UTC)), state, brain)
        assert isinstance(outcome, Outcome)
        assert outcome.replies and all(r.text.strip() for r in outcome.replies)
        assert len(outcome.state.offers) == max(len(r.choices) for r in outcome.replies[-1:])
        assert State.from_json(outcome.state.to_json()) == outcome.state.but(cases=())
        state = outcome.state


DOCUMENTED_TABLES = {  # docs/privacy.md lists what each holds
    "conversations", "transcript", "unanswered", "cases", "outbox", "case_events", "tickets", "staff_messages",
    "ticket_events", "handled", "retractions",
}
FLOW_WORDS = ["I want to file a data protection request", "start a complaint", "request public documents",
              "talk to a person", "1", "2", "yes", "no", "Jane Doe", "jane@example.org", "14-03-1980", "/back",
              "/cancel", "Confirm and send", "/status", "/mydata", "/forget", "/bot", "/language ca", "/language nl",
              "/language es", "vull demanar informació pública", "ik wil een klacht indienen"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(FLOW_WORDS), texts), min_size=1, max_size=25))
def test_any_sequence_through_core_and_store_keeps_state_valid_and_tables_documented(tmp_path_factory, messages):
    import asyncio
    from datetime import timedelta

    from bot.runtime import Runtime
    from bot.store import Store

    class Sink:
        name = "console"

        async def send(self, user, reply):  # noqa: ANN001, ANN202
            assert reply.text.strip()

    store = Store(tmp_path_factory.mktemp("prop") / "db.sqlite")
    runtime = Runtime(brain_for("amsterdam"), store)
    at = datetime(2026, 11, 25, 9, tzinfo=UTC)
    for i, text in enumerate(messages):
        message = Incoming("console", "u", text, at + timedelta(seconds=4 * i))
        asyncio.run(runtime.on_message(Sink(), message))
        state = store.load_state("console", "u")
        assert State.from_json(state.to_json()) == state.but(cases=())
        if state.flow is not None:
            assert state.flow["id"] in runtime.brain.knowledge.flows
    assert set(store.db.table_names()) <= DOCUMENTED_TABLES
    store.close()
