"""The runtime: messages of one conversation in order, many conversations at once, the reminder job."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from bot.messages import Incoming

from .test_privacy import T0, converse, file_a_request, make


def test_five_quick_messages_get_five_answers_in_order(tmp_path):
    runtime, channel = make(tmp_path)
    questions = ["/language en", "what is the gdpr", "free wifi", "cameras in the street", "/why"]

    async def burst() -> None:
        await asyncio.gather(*(
            runtime.on_message(channel, Incoming("console", user, q, T0 + timedelta(milliseconds=i)))
            for i, q in enumerate(questions) for user in ("a", "b")
        ))

    asyncio.run(burst())
    for user in ("a", "b"):
        replies = [r.text for u, r in channel.sent if u == user]
        assert len(replies) == 5
        assert replies[0] == runtime.brain.knowledge.text("language_set", "en", language="English")
    transcript = [r["text"] for r in runtime.store.db["transcript"].rows_where("user = 'a' AND direction = 'in'",
                                                                               order_by="id")]
    assert transcript == questions


def test_the_reminder_job_tells_a_silent_resident_once(tmp_path):
    runtime, channel = make(tmp_path)
    converse(runtime, channel, "resident-7", file_a_request())
    sent = len(channel.sent)
    assert asyncio.run(runtime.remind(T0 + timedelta(days=10))) == 0
    assert asyncio.run(runtime.remind(T0 + timedelta(days=40))) == 1
    assert "has not answered" in channel.sent[sent][1].text
    assert asyncio.run(runtime.remind(T0 + timedelta(days=41))) == 0
    assert len(channel.sent) == sent + 1
    # The next message of the resident does not repeat it either.
    converse(runtime, channel, "resident-7", ["hello"], T0 + timedelta(days=42))
    assert not any("has not answered" in r.text for _, r in channel.sent[sent + 1:])


def test_an_answered_case_gets_no_reminder(tmp_path):
    runtime, channel = make(tmp_path)
    converse(runtime, channel, "resident-7", file_a_request())
    ref = runtime.store.cases_of("console", "resident-7")[0].ref
    runtime.store.mark_answered(ref, T0 + timedelta(days=5))
    assert asyncio.run(runtime.remind(T0 + timedelta(days=40))) == 0
