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


def test_two_delivery_passes_at_once_deliver_a_case_once(tmp_path):
    from bot.ports import Receipt

    runtime, channel = make(tmp_path, inbox_up=False)
    converse(runtime, channel, "resident-7", file_a_request())  # the inbox is down: the case waits
    calls = []

    class Slow:
        async def deliver(self, letter):  # noqa: ANN001, ANN202
            calls.append(letter.ref)
            await asyncio.sleep(0.05)
            return Receipt("id")

    runtime.outbox.inboxes = {"default": Slow()}
    runtime.store.due_now(T0 + timedelta(hours=1))

    async def both() -> None:
        await asyncio.gather(runtime.deliver(T0 + timedelta(hours=1)), runtime.deliver(T0 + timedelta(hours=1)))

    asyncio.run(both())
    assert len(calls) == 1
    told = [r.text for _, r in channel.sent if "delivered to the city" in r.text]
    assert len(told) == 1


def test_a_store_failure_gets_the_error_text_and_keeps_nothing(tmp_path, monkeypatch):
    runtime, channel = make(tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk I/O error")

    monkeypatch.setattr(runtime.store, "commit", broken)
    converse(runtime, channel, "u", ["/start"])
    assert channel.sent[-1][1].text == runtime.brain.knowledge.text("error", "nl")


def test_a_case_filed_after_midnight_in_the_city_counts_from_the_local_date(tmp_path):
    runtime, channel = make(tmp_path)
    late = T0.replace(hour=23, minute=30)  # 00:30 on the 26th in Amsterdam
    converse(runtime, channel, "night", file_a_request(), late)
    (case,) = runtime.store.cases_of("console", "night")
    assert case.filed == "2026-11-26" and case.deadline == "2026-12-28"
