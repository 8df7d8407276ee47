"""Deliver pending cases through the configured inboxes: at least once, idempotent by the case reference.

A case's outbox row is written in the same transaction as the case (bot.store). A pass takes the rows that are
due, delivers each through its inbox, and records the result: delivered (with the inbox's receipt); failed but
retryable (next attempt after an exponential backoff with jitter); or dead (a permanent error, or too many
attempts), where staff see it with its last error and can retry it (`run_bot.py outbox retry REF`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot.ports import DeliveryError, Inbox, Letter
from bot.store import Store

log = logging.getLogger("rightsdesk.outbox")


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 8
    first_delay: timedelta = timedelta(seconds=30)
    max_delay: timedelta = timedelta(hours=6)
    alert_after: timedelta = timedelta(hours=1)  # a pending case older than this is a backlog to report
    lease: timedelta = timedelta(minutes=5)  # how long one attempt may hold a case before another may take it

    @classmethod
    def of(cls, settings: Mapping[str, int]) -> Policy:
        """From the config's `delivery:` keys (docs/deploy.md)."""
        d = cls()
        return cls(
            max_attempts=settings.get("max_attempts", d.max_attempts),
            first_delay=timedelta(seconds=settings.get("first_delay_seconds", d.first_delay.total_seconds())),
            max_delay=timedelta(seconds=settings.get("max_delay_seconds", d.max_delay.total_seconds())),
            alert_after=timedelta(minutes=settings.get("alert_after_minutes", d.alert_after.total_seconds() / 60)),
        )


@dataclass
class Report:
    delivered: list[dict] = field(default_factory=list)  # case rows that were delivered in this pass
    retrying: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)


def backoff(attempts: int, policy: Policy, rng: random.Random) -> timedelta:
    """Exponential backoff with full jitter: a random delay up to first_delay * 2^(attempts-1), capped."""
    ceiling = min(policy.max_delay.total_seconds(), policy.first_delay.total_seconds() * 2 ** max(attempts - 1, 0))
    return timedelta(seconds=max(1.0, rng.uniform(ceiling / 2, ceiling)))


class Outbox:
    def __init__(self, store: Store, inboxes: Mapping[str, Inbox], policy: Policy | None = None,
                 rng: random.Random | None = None) -> None:
        self.store = store
        self.inboxes = inboxes
        self.policy = policy or Policy()
        self.rng = rng or random.Random()
        self._pass = asyncio.Lock()

    def inbox_for(self, name: str) -> Inbox | None:
        return self.inboxes.get(name) or self.inboxes.get("default")

    def health(self, now: datetime) -> list[str]:
        """Problems staff must act on: dead deliveries, and pending ones older than the alert age. Each is also
        logged as an error, so that a log-based alert fires."""
        problems = []
        for row in self.store.outbox("dead"):
            problems.append(f"{row['ref']} is dead after {row['attempts']} attempt(s): {row['last_error']} "
                            f"(fix the inbox, then 'run_bot.py outbox retry {row['ref']}')")
        cutoff = now - self.policy.alert_after
        for row in self.store.outbox("pending") + self.store.outbox("sending"):
            if datetime.fromisoformat(row["created_at"]) < cutoff:
                problems.append(f"{row['ref']} has waited since {row['created_at']} ({row['attempts']} attempt(s); "
                                f"last error: {row['last_error'] or 'none'})")
        for problem in problems:
            log.error("outbox health: %s", problem)
        return problems

    async def deliver_due(self, now: datetime, limit: int = 100) -> Report:
        """One pass: try every row that is due now (at most `limit`)."""
        report = Report()
        async with self._pass:  # one pass at a time in this process; claims keep other processes apart
            for row in self.store.due(now, limit):
                if self.store.claim(row["ref"], now, self.policy.lease):
                    await self._deliver_one(row, now, report)
        return report

    async def _deliver_one(self, row: dict, now: datetime, report: Report) -> None:
        """One attempt at one claimed delivery, and its result recorded."""
        ref = row["ref"]
        inbox = self.inbox_for(row["inbox"])
        attempts = row["attempts"] + 1
        if inbox is None:
            error = f"no inbox '{row['inbox']}' and no 'default' inbox in the config (add it under inboxes:)"
            self._failed(ref, error, attempts, now, report, permanent=True)
            return
        try:
            receipt = await inbox.deliver(_letter(row))
        except DeliveryError as exc:
            self._failed(ref, str(exc), attempts, now, report, permanent=not exc.retryable)
            return
        except Exception as exc:  # an adapter bug must not stop the other deliveries
            log.exception("inbox adapter failed ref=%s", ref)
            self._failed(ref, f"unexpected error: {exc!r}", attempts, now, report, permanent=False)
            return
        self.store.delivered(ref, receipt, attempts, now)
        report.delivered.append(row)
        log.info("case delivered ref=%s inbox=%s", ref, row["inbox"])

    def _failed(self, ref: str, error: str, attempts: int, now: datetime, report: Report, permanent: bool) -> None:
        dead = permanent or attempts >= self.policy.max_attempts
        next_at = None if dead else now + backoff(attempts, self.policy, self.rng)
        self.store.failed(ref, error, next_at, attempts, now)
        (report.dead if dead else report.retrying).append(ref)
        log.log(logging.ERROR if dead else logging.WARNING, "case delivery %s ref=%s attempt=%d: %s",
                "dead" if dead else "failed", ref, attempts, error)


def _letter(row: dict) -> Letter:
    return Letter(
        ref=row["ref"], subject=row["subject"] or row["ref"], body=row["letter"] or "", lang=row["lang"] or "",
        flow=row["flow"], city=row["city"] or "", inbox=row["inbox"], filed_at=row["filed_at"],
        deadline=row["deadline"], answers=json.loads(row["answers"] or "{}"),
    )
