"""Guided flows: forms that staff define in YAML and the core walks a resident through.

This module parses and checks a flow file; the steps engine builds on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.yamlfile import LineDict, LineList, Problem

FLOW_KEYS = {"title", "phrasings"}


@dataclass(frozen=True)
class Flow:
    id: str
    title: Mapping[str, str]
    phrasings: Mapping[str, tuple[str, ...]]  # how residents ask to start it, per language


def parse(data: Any, flow_id: str, file: str, langs: list[str], problems: list[Problem]) -> Flow | None:
    """Build a Flow from a file's data; append a problem for everything wrong."""

    def add(line: int, where: str, what: str, fix: str, level: str = "error") -> None:
        problems.append(Problem(file, line, where, what, fix, level))

    if not isinstance(data, LineDict):
        add(1, "", "a flow file must be a mapping", "start with 'title:' (see SCHEMA.md)")
        return None
    for key in data:
        if key not in FLOW_KEYS:
            add(data.line_of(key), str(key), f"unknown key '{key}'", f"known keys: {', '.join(sorted(FLOW_KEYS))}")
    title = _per_language(data, "title", langs, add, str)
    phrasings = _per_language(data, "phrasings", langs, add, list)
    return Flow(
        id=flow_id,
        title={k: str(v).strip() for k, v in title.items()},
        phrasings={k: tuple(str(x).strip() for x in v) for k, v in phrasings.items()},
    )


def _per_language(data: LineDict, key: str, langs: list[str], add: Any, kind: type) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, LineDict):
        add(data.line_of(key) if key in data else data.line, key, f"'{key}' must give a value per language",
            f"write '{key}:' with one indented line per language ({', '.join(langs)})")
        return {}
    out = {}
    for lang in langs:
        if lang not in value:
            add(value.line_of(key), key, f"no '{lang}' text", f"add '{lang}:' under '{key}'", "warning")
            continue
        v = value[lang]
        if not isinstance(v, kind) or (isinstance(v, LineList) and not all(isinstance(x, str) for x in v)):
            add(value.line_of(lang), f"{key}.{lang}", f"expected {'text' if kind is str else 'a list of texts'}",
                "see SCHEMA.md")
            continue
        out[lang] = v
    return out
