"""The long-running service: every configured channel, the outbox worker and the scheduled jobs, stopped cleanly.

On SIGTERM or SIGINT the channels stop taking messages, the message in hand finishes (its commit and replies are
shielded from cancellation), the store is flushed and closed, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import UTC, datetime, timedelta

from bot.config import Config
from bot.ports import Channel
from bot.runtime import Runtime

log = logging.getLogger("rightsdesk.service")

DELIVERY_EVERY = 30  # seconds between outbox passes (a new case is also sent at once)
REMINDERS_EVERY = 3600  # seconds between deadline checks for residents who do not write
PURGE_EVERY = 6 * 3600  # seconds between retention purges
STOP_GRACE = 10  # seconds a stop waits for the messages in hand


async def serve(runtime: Runtime, channels: list[Channel], config: Config) -> int:
    """Run until SIGTERM/SIGINT; return the exit code (0 after a clean stop, 1 when a channel failed)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    in_hand: set[asyncio.Task] = set()

    def on_message_for(channel: Channel):  # noqa: ANN202
        async def on_message(message):  # noqa: ANN001, ANN202
            # Shielded: a stop request lets the message in hand be committed and answered.
            task = asyncio.ensure_future(runtime.on_message(channel, message))
            in_hand.add(task)
            task.add_done_callback(in_hand.discard)
            await asyncio.shield(task)

        return on_message

    tasks = {asyncio.create_task(ch.run(on_message_for(ch)), name=f"channel:{ch.name}"): ch.name for ch in channels}
    jobs = [
        asyncio.create_task(_every(DELIVERY_EVERY, runtime.deliver, "outbox"), name="outbox"),
        asyncio.create_task(_every(REMINDERS_EVERY, lambda: runtime.remind(datetime.now(UTC)), "reminders")),
        # First after an hour, not at start: the channels are still connecting then, and a try would be wasted.
        asyncio.create_task(_every(REMINDERS_EVERY, runtime.retract, "retractions", first_after=REMINDERS_EVERY)),
        asyncio.create_task(_every(PURGE_EVERY, lambda: _purge(runtime, config), "purge")),
    ]
    log.info("serving channels=%s city=%s", ",".join(ch.name for ch in channels), runtime.brain.knowledge.city.id)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    for task in done:
        if task is not stopper and task.exception() is not None:
            # A channel that cannot run (a bad token, a homeserver that refuses the login) stops the service:
            # say which and why, then stop the rest cleanly.
            log.error("channel %s stopped: %s", tasks[task], task.exception())
            code = 1
    for task in [*tasks, *jobs, stopper]:
        task.cancel()
    await asyncio.gather(*tasks, *jobs, stopper, return_exceptions=True)
    if in_hand:  # finish the messages in hand (bounded), so that nothing accepted is lost
        await asyncio.wait(in_hand, timeout=STOP_GRACE)
    log.info("stopped")
    return code


async def _every(seconds: float, job, name: str, first_after: float = 0) -> None:  # noqa: ANN001
    await asyncio.sleep(first_after)
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:  # a failed pass is logged and tried again next time; the service keeps going
            log.exception("scheduled job %s failed", name)
        await asyncio.sleep(seconds)


async def _purge(runtime: Runtime, config: Config) -> None:
    counts = runtime.store.purge(datetime.now(UTC), timedelta(days=config.retention_days))
    log.info("purged %s", " ".join(f"{k}={v}" for k, v in counts.items()))
