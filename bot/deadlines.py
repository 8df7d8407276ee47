"""Legal deadlines as data: a term (calendar months, weeks, days or working days), an optional extension, and a
calendar of the city's non-working days. Pure: the start date comes in; no clock is read.

Counting, per the rules residents meet (knowledge/common/deadlines.yaml cites each):
- months run date to date; when the month has no such day, the term ends on its last day;
- working days skip Saturdays, Sundays and the city's public holidays (the `holidays` library for the national and
  regional calendar, plus the city's own additions and removals in city.yaml);
- with `roll_forward`, a term that ends on a non-working day ends on the next working day (Algemene termijnenwet;
  Ley 39/2015 art. 30).
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

import holidays as holidays_lib

from bot.yamlfile import LineDict, Problem

TERM_KEYS = ("months", "weeks", "days", "working_days")
RULE_KEYS = {"law", "term", "extension", "roll_forward"}


@dataclass(frozen=True)
class Term:
    months: int = 0
    weeks: int = 0
    days: int = 0
    working_days: int = 0
    half: bool = False  # an extension of half the original term (Llei 19/2014 art. 33)


@dataclass(frozen=True)
class Rule:
    id: str
    law: Mapping[str, str]  # per language: the law and its term in words, for letters and /status
    term: Term
    extension: Term | None = None
    roll_forward: bool = False


@dataclass(frozen=True)
class Calendar:
    """The city's non-working days."""

    country: str | None = None
    subdivision: str | None = None
    added: frozenset[date] = field(default_factory=frozenset)
    removed: frozenset[date] = field(default_factory=frozenset)

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> Calendar:
        def dates(key: str) -> frozenset[date]:
            out = set()
            for item in spec.get(key) or ():
                value = item.get("date") if isinstance(item, dict) else item
                if isinstance(value, date):
                    out.add(value)
                else:
                    try:
                        out.add(date.fromisoformat(str(value)))
                    except ValueError:
                        continue  # reported by the checker
            return frozenset(out)

        return cls(spec.get("country"), spec.get("subdivision"), dates("add"), dates("remove"))

    def is_working_day(self, day: date) -> bool:
        if day.weekday() >= 5 or day in self.added:
            return False
        if day in self.removed or not self.country:
            return True
        return day not in _public_holidays(self.country, self.subdivision, day.year)


@lru_cache(maxsize=64)
def _public_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    return frozenset(holidays_lib.country_holidays(country, subdiv=subdivision, years=year))


def add_term(start: date, term: Term, cal: Calendar, roll_forward: bool) -> date:
    """The day a term that starts on `start` ends."""
    day = start
    if term.months:
        month = day.month - 1 + term.months
        year, month = day.year + month // 12, month % 12 + 1
        day = date(year, month, min(day.day, calendar.monthrange(year, month)[1]))
    day += timedelta(weeks=term.weeks, days=term.days)
    remaining = term.working_days
    while remaining > 0:
        day += timedelta(days=1)
        if cal.is_working_day(day):
            remaining -= 1
    if roll_forward:
        for _ in range(14):  # at most two weeks of consecutive holidays: bounded
            if cal.is_working_day(day):
                break
            day += timedelta(days=1)
    return day


def due(start: date, rule: Rule, cal: Calendar, extended: bool = False) -> date:
    """When the city must answer a request made on `start` under `rule` (with its extension, if taken)."""
    if not extended or rule.extension is None:
        return add_term(start, rule.term, cal, rule.roll_forward)
    # The extension runs from the end of the first term as the law sets it, not from a day it was rolled to.
    first = add_term(start, rule.term, cal, roll_forward=False)
    if rule.extension.half:
        return add_term(first, Term(days=(first - start).days // 2), cal, rule.roll_forward)
    return add_term(first, rule.extension, cal, rule.roll_forward)


def parse_rules(data: Any, file: str, langs: list[str], problems: list[Problem]) -> dict[str, Rule]:
    """Read deadlines.yaml: a mapping of rule ids to {law, term, extension, roll_forward}."""

    def add(line: int, where: str, what: str, fix: str, level: str = "error") -> None:
        problems.append(Problem(file, line, where, what, fix, level))

    rules: dict[str, Rule] = {}
    if data is None:
        return rules
    if not isinstance(data, LineDict):
        add(1, "", "deadlines must map rule ids to rules", "see SCHEMA.md")
        return rules
    for rule_id, raw in data.items():
        line = data.line_of(rule_id)
        if not isinstance(raw, LineDict):
            add(line, str(rule_id), "a rule needs law and term", "e.g. term: {months: 1}")
            continue
        for key in raw:
            if key not in RULE_KEYS:
                add(raw.line_of(key), f"{rule_id}.{key}", f"unknown key '{key}'",
                    f"known keys: {', '.join(sorted(RULE_KEYS))}")
        term = _term(raw.get("term"), raw.line_of("term"), f"{rule_id}.term", add)
        extension = _term(raw.get("extension"), raw.line_of("extension"), f"{rule_id}.extension", add) if (
            "extension" in raw) else None
        law = raw.get("law")
        if not isinstance(law, dict):
            add(line, f"{rule_id}.law", "law must give a text per language", "e.g. law: {en: 'GDPR Art. 12(3)'}")
            law = {}
        for lang in langs:
            if lang not in law:
                add(raw.line_of("law"), f"{rule_id}.law", f"no '{lang}' text", f"add {lang}: ...", "warning")
        if term is not None:
            rules[str(rule_id)] = Rule(str(rule_id), {str(k): str(v) for k, v in law.items()}, term, extension,
                                       bool(raw.get("roll_forward", False)))
    return rules


def _term(raw: Any, line: int, where: str, add: Any) -> Term | None:
    if not isinstance(raw, dict) or not raw:
        add(line, where, "a term needs a length", f"use one or more of: {', '.join(TERM_KEYS)}, or half: true")
        return None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "half" and isinstance(value, bool):
            values["half"] = value
        elif key in TERM_KEYS and isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 400:
            values[key] = value
        else:
            add(line, where, f"bad term part {key}: {value!r}",
                f"use whole numbers for {', '.join(TERM_KEYS)}, or half: true")
    return Term(**values)
