"""The help desk: office hours, agent commands, and resident text made inert for the staff room. Pure.

Residents reach a person through the `handoff` flow (or after the bot failed to answer several times); the ticket is
posted in a staff room (a Matrix room or a Telegram group, on any channel) where configured agents answer by
replying to the ticket's message or with `/r REF text`, and manage the queue with `/claim`, `/close`, `/queue` and
`/case`. The runtime carries out what these functions decide.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")
REF = re.compile(r"\b[A-Z]{3}-[A-Z]{2}-[2-9A-HJKMNP-Z]{5}\b")
AGENT_COMMANDS = ("/r", "/claim", "/close", "/queue", "/case")


@dataclass(frozen=True)
class OfficeHours:
    """When agents answer: per weekday a list of (open, close) local times; empty means always open."""

    timezone: str = "UTC"
    hours: Mapping[int, tuple[tuple[time, time], ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: Mapping[str, str] | None, timezone: str) -> OfficeHours:
        """Read `{mon-fri: "09:00-17:00", sat: "10:00-13:00"}`; raise ValueError naming what is wrong."""
        hours: dict[int, list[tuple[time, time]]] = {}
        for days, ranges in (spec or {}).items():
            for day in _days(str(days)):
                for part in str(ranges).split(","):
                    m = _RANGE.match(part.strip())
                    if not m:
                        raise ValueError(f"office_hours.{days}: {part.strip()!r} is not a time range like 09:00-17:00")
                    start, end = time(int(m[1]), int(m[2])), time(int(m[3]), int(m[4]))
                    if end <= start:
                        raise ValueError(f"office_hours.{days}: {part.strip()!r} closes before it opens")
                    hours.setdefault(day, []).append((start, end))
        ZoneInfo(timezone)  # raises for an unknown zone
        return cls(timezone, {d: tuple(sorted(r)) for d, r in hours.items()})

    def is_open(self, at: datetime) -> bool:
        if not self.hours:
            return True
        local = at.astimezone(ZoneInfo(self.timezone))
        return any(start <= local.time() < end for start, end in self.hours.get(local.weekday(), ()))

    def next_opening(self, at: datetime) -> datetime | None:
        """The next local moment the desk opens (None when always open); bounded to two weeks ahead."""
        if not self.hours:
            return None
        local = at.astimezone(ZoneInfo(self.timezone))
        for offset in range(15):
            day = (local + timedelta(days=offset)).date()
            for start, _ in self.hours.get(day.weekday(), ()):
                moment = datetime.combine(day, start, tzinfo=ZoneInfo(self.timezone))
                if moment > local:
                    return moment
        return None


def _days(spec: str) -> list[int]:
    spec = spec.strip().lower()
    if "-" in spec:
        first, last = (s.strip()[:3] for s in spec.split("-", 1))
        if first not in DAYS or last not in DAYS:
            raise ValueError(f"office_hours: {spec!r} is not a range of days like mon-fri")
        a, b = DAYS.index(first), DAYS.index(last)
        return list(range(a, b + 1)) if a <= b else [*range(a, 7), *range(0, b + 1)]
    if spec[:3] not in DAYS:
        raise ValueError(f"office_hours: {spec!r} is not a day (mon, tue, ... sun)")
    return [DAYS.index(spec[:3])]


@dataclass(frozen=True)
class AgentCommand:
    """What an agent asked for in the staff room."""

    kind: str  # reply | claim | close | queue | case | help | unknown
    ref: str | None = None
    text: str = ""


def parse_agent(text: str, replied_ref: str | None) -> AgentCommand | None:
    """Read an agent's message: a command, or a plain reply to a ticket's message; None when it is neither."""
    stripped = text.strip()
    if not stripped.startswith("/"):
        if replied_ref and stripped:
            return AgentCommand("reply", replied_ref, stripped)
        return None
    name, _, rest = stripped.partition(" ")
    name = name.lower().split("@", 1)[0]
    rest = rest.strip()
    ref_match = REF.match(rest.upper())
    ref = ref_match.group(0) if ref_match else replied_ref
    after_ref = rest[ref_match.end():].strip() if ref_match else rest
    if name == "/r":
        if not ref or not after_ref:
            return AgentCommand("help", text="/r REF your answer")
        return AgentCommand("reply", ref, after_ref)
    if name in ("/claim", "/close", "/case"):
        if not ref:
            return AgentCommand("help", text=f"{name} REF")
        return AgentCommand(name[1:], ref)
    if name == "/queue":
        return AgentCommand("queue")
    return AgentCommand("unknown", text=name)


def inert(text: str, limit: int = 2000) -> str:
    """Resident text made safe to post in a staff room: no @room or @user pings, no command at the start.

    A zero-width space after '@' breaks mentions (Matrix push rules match '@room' and user ids; Telegram links
    @usernames); the caller sends it as plain text (or HTML-escaped), so no markup is interpreted."""
    text = text[:limit].replace("@", "@\u200b")
    return text if not text.lstrip().startswith("/") else "\u200b" + text


def queue_lines(tickets: Sequence[Mapping], now: datetime) -> list[str]:
    """`/queue`: open tickets, oldest first, with their age and who holds them."""
    lines = []
    for t in tickets:
        age = now - datetime.fromisoformat(t["opened_at"])
        minutes = int(age.total_seconds() // 60)
        held = t.get("agent_name") or t.get("agent") or "nobody"
        lines.append(f"{t['ref']}  {t['lang']}  {minutes // 60}h{minutes % 60:02d}m  {t['status']}  held by {held}")
    return lines or ["No open tickets."]


@dataclass(frozen=True)
class Desk:
    """The help desk of a deployment: its staff room on a channel, its agents and office hours."""

    channel: str  # "matrix" or "telegram": where the staff room is (residents may be on any channel)
    room: str  # the Matrix room id or Telegram group chat id
    agents: frozenset[str]  # Matrix user ids or Telegram user ids allowed to use agent commands
    hours: OfficeHours = OfficeHours()
    escalate_after: int = 2
    language: str | None = None  # of the staff room's texts; None: the city's working language

    @classmethod
    def from_settings(cls, settings: Mapping, timezone: str) -> Desk:
        """Check `helpdesk:` (docs/deploy.md); raise ValueError naming every wrong key."""
        problems = []
        known = {"channel", "room", "agents", "office_hours", "timezone", "escalate_after", "language"}
        for key in settings:
            if key not in known:
                problems.append(f"helpdesk.{key}: unknown key (known: {', '.join(sorted(known))})")
        channel = settings.get("channel")
        if channel not in ("matrix", "telegram"):
            problems.append(f"helpdesk.channel: {channel!r} is not matrix or telegram")
        room = settings.get("room")
        if not room:
            problems.append("helpdesk.room: missing (the Matrix room id, or the Telegram group's chat id)")
        agents = settings.get("agents")
        if not isinstance(agents, list) or not agents:
            problems.append("helpdesk.agents: list the agents' Matrix or Telegram user ids (at least one)")
            agents = []
        escalate = settings.get("escalate_after", 2)
        if not isinstance(escalate, int) or isinstance(escalate, bool) or escalate < 1:
            problems.append(f"helpdesk.escalate_after: {escalate!r} is not a whole number of 'I don't know' answers")
            escalate = 2
        hours = OfficeHours()
        try:
            hours = OfficeHours.parse(settings.get("office_hours"), str(settings.get("timezone") or timezone))
        except ValueError as exc:
            problems.append(f"helpdesk.{exc}")
        except Exception:  # ZoneInfo's errors for a bad zone name
            problems.append(f"helpdesk.timezone: {settings.get('timezone')!r} is not a time zone (e.g. Europe/Madrid)")
        if problems:
            raise ValueError("\n".join(problems))
        language = settings.get("language")
        return cls(str(channel), str(room), frozenset(str(a) for a in agents), hours, escalate,
                   str(language) if language else None)

    def is_staff_room(self, channel: str, room: str) -> bool:
        return channel == self.channel and room == self.room


def first_name(name: str | None, sender: str) -> str:
    """How the resident sees an agent: a first name, never a full id ("@alice:city.example" -> "alice")."""
    if name and name.strip():
        return name.strip().split()[0][:30]
    local = sender.lstrip("@").split(":", 1)[0]
    return local[:30] or "agent"
