"""Reading one inbox's settings: every problem collected, each named `inboxes.<name>.<key>: problem: fix`."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from bot.config import ConfigError


class Settings:
    """Read one inbox's settings, collecting every problem; `done()` raises them together as one ConfigError."""

    def __init__(self, name: str, kind: str, settings: Mapping[str, Any], known: Collection[str]) -> None:
        self.name = name
        self.kind = kind
        self.problems: list[str] = []
        if not isinstance(settings, Mapping):
            self.settings: Mapping[str, Any] = {}
            self.fail("", "must be a mapping of keys to values", "write `key: value` lines under the inbox's name")
            return
        self.settings = settings
        for key in settings:
            if key != "type" and key not in known:
                self.fail(str(key), f"unknown key for a {kind} inbox (known: {', '.join(sorted(known))})",
                          "check the spelling, or remove it")

    def fail(self, key: str, problem: str, fix: str) -> None:
        """Note one problem with `key` (empty: the inbox itself)."""
        where = f"inboxes.{self.name}.{key}" if key else f"inboxes.{self.name}"
        self.problems.append(f"{where}: {problem}: {fix}")

    def text(self, key: str, example: str) -> str:
        """A required non-empty string ("" when it is missing or wrong: `done()` will raise)."""
        if self.settings.get(key) in (None, ""):
            self.fail(key, "missing (required)", f"add it, e.g. `{key}: {example}`")
            return ""
        return self.optional(key, example) or ""

    def optional(self, key: str, example: str) -> str | None:
        """A non-empty string, or None when the key is absent."""
        value = self.settings.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.fail(key, f"must be text, not {type(value).__name__}", f"write it like `{key}: {example}`")
            return None
        return str(value)

    def number(self, key: str, default: float, low: float, high: float) -> float:
        """A number of seconds (or a count) between low and high."""
        value = self.settings.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not low <= value <= high:
            self.fail(key, f"{value!r} is not a number from {low:g} to {high:g}", f"write e.g. `{key}: {default:g}`")
            return default
        return float(value)

    def port(self, key: str, example: int) -> int:
        """A TCP port, 1 to 65535."""
        value = self.settings.get(key)
        if value is None:
            self.fail(key, "missing (required)", f"add it, e.g. `{key}: {example}`")
            return example
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            self.fail(key, f"{value!r} is not a TCP port (a whole number from 1 to 65535)",
                      f"write e.g. `{key}: {example}`")
            return example
        return value

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        """One of `options`; the first is the default."""
        value = self.settings.get(key, options[0])
        if value not in options:
            self.fail(key, f"{value!r} is not one of {', '.join(options)}", f"write e.g. `{key}: {options[0]}`")
            return options[0]
        return str(value)

    def url(self, key: str, example: str) -> str | None:
        """An https URL; plain http only to this machine (GDPR Art. 32: letters carry personal data in transit)."""
        value = self.text(key, example)
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(key, f"{value!r} is not an http(s) URL", f"write the full address, e.g. `{key}: {example}`")
            return None
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            self.fail(key, f"{value!r} is plain http to another machine (letters carry personal data, GDPR Art. 32)",
                      "use the https:// address")
            return None
        return value

    def mapping(self, key: str, example: str) -> dict[str, str]:
        """A mapping of text to text (absent: empty)."""
        value = self.settings.get(key) or {}
        if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str | int) and not isinstance(v, bool) for k, v in value.items()):
            self.fail(key, "must be a mapping of names to text values", f"write it like `{key}: {{{example}}}`")
            return {}
        return {k: str(v) for k, v in value.items()}

    def done(self) -> None:
        """Raise every problem found, as one ConfigError."""
        if self.problems:
            raise ConfigError("\n".join(self.problems))


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine (where plain connections never cross a network)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
