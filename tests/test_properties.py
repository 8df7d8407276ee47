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
        assert State.from_json(outcome.state.to_json()) == outcome.state
        state = outcome.state
