"""Deployment settings from a YAML file, with secrets from environment variables; validates itself.

Without a file the embedded default applies: the demo city, every language it has, data in ./data, a file
outbox. A value written `${NAME}` is read from the environment variable NAME, so secrets never sit in the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.yamlfile import LineDict, Problem, read

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
KEYS = {"city", "data", "knowledge", "retention_days", "rate_limit", "delivery", "channels", "inboxes", "helpdesk"}
DELIVERY_KEYS = {"max_attempts", "first_delay_seconds", "max_delay_seconds", "alert_after_minutes"}


class ConfigError(Exception):
    """The deployment settings are wrong; the message names the key, the rule and the fix."""


@dataclass(frozen=True)
class Config:
    city: str | None = None
    data: Path = Path("data")
    knowledge: Path | None = None
    retention_days: int = 30
    rate_limit: int | None = 20
    delivery: Mapping[str, int] = field(default_factory=dict)
    channels: Mapping[str, Any] = field(default_factory=dict)
    inboxes: Mapping[str, Any] = field(default_factory=dict)
    helpdesk: Mapping[str, Any] | None = None
    source: str = "embedded default"


def load(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read and check a config file (None: the embedded default); raise ConfigError listing every problem."""
    if path is None:
        return Config()
    environ = os.environ if environ is None else environ
    problems: list[Problem] = []
    shown = str(path)
    if not path.exists():
        raise ConfigError(f"{shown}: no such config file (check --config, or leave it out for the embedded default)")
    data = read(path, shown, problems)
    if data is None and not problems:
        data = LineDict()
        data.key_lines = {}
    if problems:
        raise ConfigError("\n".join(str(p) for p in problems))
    if not isinstance(data, LineDict):
        raise ConfigError(f"{shown}:1: the config must be a mapping of keys (see docs/deploy.md)")
    errors: list[str] = []
    for key in data:
        if key not in KEYS:
            errors.append(f"{shown}:{data.line_of(key)}: {key}: unknown key (known keys: {', '.join(sorted(KEYS))})")
    data = _substitute(data, environ, shown, errors, "")
    retention = data.get("retention_days", 30)
    if not isinstance(retention, int) or isinstance(retention, bool) or retention < 1:
        errors.append(f"{shown}: retention_days: {retention!r} is not a whole number of days (e.g. 30)")
        retention = 30
    rate_limit = data.get("rate_limit", 20)
    if rate_limit is not None and (not isinstance(rate_limit, int) or isinstance(rate_limit, bool) or rate_limit < 1):
        errors.append(f"{shown}: rate_limit: {rate_limit!r} is not a whole number of messages per minute (e.g. 20)")
        rate_limit = 20
    delivery = data.get("delivery") or {}
    if not isinstance(delivery, dict):
        errors.append(f"{shown}: delivery: must be a mapping (keys: {', '.join(sorted(DELIVERY_KEYS))})")
        delivery = {}
    for key, value in delivery.items():
        if key not in DELIVERY_KEYS:
            errors.append(f"{shown}: delivery.{key}: unknown key (known: {', '.join(sorted(DELIVERY_KEYS))})")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(f"{shown}: delivery.{key}: {value!r} is not a positive whole number")
    for key in ("channels", "inboxes"):
        if key in data and not isinstance(data[key], dict):
            errors.append(f"{shown}: {key}: must be a mapping of names to settings (see docs/deploy.md)")
    if errors:
        raise ConfigError("\n".join(errors))
    base = path.parent
    return Config(
        city=str(data["city"]) if data.get("city") else None,
        data=(base / str(data["data"])) if data.get("data") else Path("data"),
        knowledge=(base / str(data["knowledge"])) if data.get("knowledge") else None,
        retention_days=retention,
        rate_limit=rate_limit,
        delivery={k: v for k, v in delivery.items() if k in DELIVERY_KEYS},
        channels=data.get("channels") or {},
        inboxes=data.get("inboxes") or {},
        helpdesk=data.get("helpdesk"),
        source=shown,
    )


def _substitute(value: Any, environ: Mapping[str, str], shown: str, errors: list[str], where: str) -> Any:
    """Replace ${NAME} by the environment variable NAME, everywhere in the settings."""
    if isinstance(value, dict):
        return {k: _substitute(v, environ, shown, errors, f"{where}.{k}" if where else str(k))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, environ, shown, errors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in environ:
                errors.append(f"{shown}: {where}: environment variable {name} is not set "
                              f"(export {name}=... before starting, or change the value)")
                return ""
            return environ[name]
        return _ENV.sub(one, value)
    return value
