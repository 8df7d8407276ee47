"""Build the city inboxes named in the config's `inboxes:` from their settings.

A plain dict maps each `type` to its class (DESIGN.md §2: no plugin discovery). Each class checks its own settings
with `Settings`, which collects every problem of one inbox so that staff fix them all in one go, and names each as
`inboxes.<name>.<key>: what is wrong (the rule): the fix`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from adapters.inboxes import file
from adapters.inboxes.open311 import Open311Inbox
from adapters.inboxes.settings import Settings
from adapters.inboxes.smtp import SmtpInbox
from adapters.inboxes.webhook import WebhookInbox
from bot.config import ConfigError
from bot.ports import Inbox


class FileInbox(file.FileInbox):
    """The file inbox, configurable: `dir` (relative to the data folder), optional `to` and `from`."""

    @classmethod
    def from_settings(cls, name: str, settings: Mapping[str, Any], data_dir: Path) -> FileInbox:
        """Check the settings of a file inbox and build it."""
        s = Settings(name, "file", settings, ("dir", "to", "from"))
        folder = s.optional("dir", "outbox") or "outbox"
        to = s.optional("to", "privacy@city.example") or "city@localhost"
        sender = s.optional("from", "rightsdesk@city.example") or "rightsdesk@localhost"
        s.done()
        return cls(Path(data_dir) / folder, to=to, sender=sender)


class Configurable(Protocol):
    @classmethod
    def from_settings(cls, name: str, settings: Mapping[str, Any], data_dir: Path) -> Inbox: ...


TYPES: dict[str, type[Configurable]] = {
    "file": FileInbox, "smtp": SmtpInbox, "webhook": WebhookInbox, "open311": Open311Inbox,
}


def build(settings: Mapping[str, Mapping[str, Any]], data_dir: Path) -> dict[str, Inbox]:
    """Build every inbox named in `settings`; none at all: every case goes to files in data_dir/outbox."""
    if not settings:
        return {"default": file.FileInbox(Path(data_dir) / "outbox")}
    inboxes: dict[str, Inbox] = {}
    problems: list[str] = []
    for name, spec in settings.items():
        kind = spec.get("type") if isinstance(spec, Mapping) else None
        if kind not in TYPES:
            problems.append(f"inboxes.{name}.type: {kind!r} is not a known inbox type: choose one of "
                            f"{', '.join(TYPES)}")
            continue
        try:
            inboxes[name] = TYPES[kind].from_settings(name, spec, Path(data_dir))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return inboxes
