"""Guided flows: forms that staff define in YAML and the core walks a resident through.

A flow is data (knowledge/common/flows/<id>.yaml, overridable per city): its steps, a consent step before any
personal data, a letter template per language, the inbox it routes to and the deadline rule that applies. This
module parses and checks flows, validates answers, chooses the next step, and renders letters: all pure.

Letters are rendered by substituting named values into the staff's template; what a resident typed is only ever
a value, never part of a template, so nothing they type is evaluated (no template injection).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from bot.yamlfile import LineDict, LineList, Problem

STEP_TYPES = ("text", "email", "phone", "date", "choice", "yesno", "consent")
FLOW_KEYS = {"title", "phrasings", "code", "inbox", "office", "deadline", "steps", "letter", "ticket"}
STEP_KEYS = {"name", "type", "label", "prompt", "options", "optional", "when", "max", "personal"}
OPTION_KEYS = {"value", "label", "cites"}
LETTER_KEYS = {"subject", "body"}
# Values every letter may use, besides the flow's own step names (and <choice step>_cites).
LETTER_VALUES = frozenset({"ref", "date", "deadline", "deadline_rule", "city", "office", "flow"})
DEFAULT_MAX = 1000  # characters of a free-text answer: enough for a story, bounded for storage and letters
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
PHONE_RE = re.compile(r"^\+?[0-9][0-9 ()./-]{5,20}[0-9]$")


@dataclass(frozen=True)
class Option:
    value: str
    label: Mapping[str, str]
    cites: Mapping[str, str] = field(default_factory=dict)  # what the letter cites for this choice (a law article)


@dataclass(frozen=True)
class Step:
    name: str
    type: str
    prompt: Mapping[str, str]
    label: Mapping[str, str]  # short name of the answer in the summary
    options: tuple[Option, ...] = ()
    optional: bool = False
    when: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # earlier step -> values it must have
    max: int = DEFAULT_MAX
    personal: bool = False  # personal data: only asked after consent


@dataclass(frozen=True)
class Template:
    """A letter as staff write it: subject and body per language, with {placeholders}."""

    subject: Mapping[str, str]
    body: Mapping[str, str]


@dataclass(frozen=True)
class Flow:
    id: str
    title: Mapping[str, str]
    phrasings: Mapping[str, tuple[str, ...]]  # how residents ask to start it, per language
    code: str = "RQ"  # the middle of case references: AMS-DR-7Q4K2
    inbox: str = "default"  # the inbox name the deployment maps to an adapter
    office: str | None = None  # the city office (city.yaml) the letter is addressed to
    deadline: str | None = None  # a rule in deadlines.yaml
    steps: tuple[Step, ...] = ()
    letter: Template | None = None
    ticket: bool = False  # confirming opens a help-desk ticket (a person answers in the chat) instead of a case

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)


# -- walking a flow ---------------------------------------------------------------------------------------------


def applies(step: Step, answers: Mapping[str, Any]) -> bool:
    """Whether a step's condition on earlier answers holds."""
    return all(answers.get(name) in values for name, values in step.when.items())


def next_step(flow: Flow, answers: Mapping[str, Any], after: int = -1) -> int | None:
    """Index of the first step after `after` whose condition holds, or None when the form is complete."""
    for i in range(after + 1, len(flow.steps)):
        if applies(flow.steps[i], answers):
            return i
    return None


def validate(step: Step, text: str) -> tuple[str | None, str | None]:
    """Check an answer: (the value to keep, None) or (None, the text key of a kind correction)."""
    text = text.strip()
    if step.type == "email":
        value = text.replace(" ", "")
        return (value, None) if EMAIL_RE.match(value) and len(value) <= 254 else (None, "invalid_email")
    if step.type == "phone":
        return (text, None) if PHONE_RE.match(text) else (None, "invalid_phone")
    if step.type == "date":
        parsed = parse_date(text)
        return (parsed.isoformat(), None) if parsed else (None, "invalid_date")
    if len(text) > step.max:
        return None, "answer_too_long"
    return (text, None) if text else (None, "answer_empty")


def parse_date(text: str) -> date | None:
    """Read a date as residents type it: 2026-03-14, 14-03-2026, 14/3/2026, 14.03.2026 (day first, as in the EU)."""
    text = text.strip()
    m = re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})", text)
    parts = (m.group(1), m.group(2), m.group(3)) if m else None
    if not parts:
        m = re.fullmatch(r"(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})", text)
        parts = (m.group(3), m.group(2), m.group(1)) if m else None
    if not parts:
        return None
    try:
        return date(int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        return None


def shown(flow: Flow, step: Step, value: Any, lang: str, pick: Callable[[Mapping[str, str], str], str]) -> str:
    """An answer as the resident reads it (a choice's label rather than its value)."""
    if value is None:
        return "-"
    for option in step.options:
        if option.value == value:
            return pick(option.label, lang)
    return str(value)


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill {name} placeholders with values; values are data, never templates (the checker knows the names)."""
    return template.format_map(_Values(values))


class _Values(dict):
    def __missing__(self, key: str) -> str:
        return ""


def letter_values(flow: Flow, answers: Mapping[str, Any], lang: str,
                  pick: Callable[[Mapping[str, str], str], str]) -> dict[str, str]:
    """The resident's answers as a letter in `lang` names them: labels for choices, plus <step>_cites."""
    values: dict[str, str] = {}
    for step in flow.steps:
        if step.type == "consent":
            continue
        value = answers.get(step.name)
        values[step.name] = "" if value is None else shown(flow, step, value, lang, pick)
        for option in step.options:
            if option.value == value and option.cites:
                values[f"{step.name}_cites"] = pick(option.cites, lang)
    return values


# -- parsing and checking ---------------------------------------------------------------------------------------


def parse(data: Any, flow_id: str, file: str, langs: list[str], problems: list[Problem],
          files: Mapping[str, str] | None = None) -> Flow | None:
    """Build a Flow from a file's data; append a problem (file, line, fix) for everything wrong.

    `files` names the file each top-level key came from, where a city file overrides some of them."""

    def add(line: int, where: str, what: str, fix: str, level: str = "error") -> None:
        top = re.split(r"[.\[]", where, maxsplit=1)[0]
        problems.append(Problem((files or {}).get(top, file), line, where, what, fix, level))

    if not isinstance(data, LineDict):
        add(1, "", "a flow file must be a mapping", "start with 'title:' (see SCHEMA.md)")
        return None
    for key in data:
        if key not in FLOW_KEYS:
            add(data.line_of(key), str(key), f"unknown key '{key}'", f"known keys: {', '.join(sorted(FLOW_KEYS))}")
    title = per_language(data, "title", langs, add, str)
    phrasings = per_language(data, "phrasings", langs, add, list)
    code = data.get("code", "RQ")
    if not isinstance(code, str) or not re.fullmatch(r"[A-Z]{2}", code):
        add(data.line_of("code"), "code", f"code {code!r} is not two capital letters", "e.g. code: DR")
        code = "RQ"
    steps = _parse_steps(data, langs, add)
    letter: Template | None = None
    if "letter" in data:
        raw = data["letter"]
        if not isinstance(raw, LineDict):
            add(data.line_of("letter"), "letter", "letter must have 'subject' and 'body'", "see SCHEMA.md")
        else:
            for key in raw:
                if key not in LETTER_KEYS:
                    add(raw.line_of(key), f"letter.{key}", f"unknown key '{key}'", "a letter has subject and body")
            letter = Template(per_language(raw, "subject", langs, add, str), per_language(raw, "body", langs, add, str))
            _check_letter(letter, raw, steps, add)
    return Flow(
        id=flow_id,
        title={k: str(v).strip() for k, v in title.items()},
        phrasings={k: tuple(str(x).strip() for x in v) for k, v in phrasings.items()},
        code=code,
        inbox=str(data.get("inbox", "default")),
        office=str(data["office"]) if data.get("office") else None,
        deadline=str(data["deadline"]) if data.get("deadline") else None,
        steps=steps,
        letter=letter,
        ticket=bool(data.get("ticket", False)),
    )


def _parse_steps(data: LineDict, langs: list[str], add: Callable[..., None]) -> tuple[Step, ...]:
    if "steps" not in data:
        add(data.line, "steps", "the flow has no steps", "add 'steps:' with at least one step (see SCHEMA.md)")
        return ()
    raw = data["steps"]
    if not isinstance(raw, LineList):
        add(data.line_of("steps"), "steps", "steps must be a list", "write each step as '- name: ...'")
        return ()
    steps: list[Step] = []
    seen: dict[str, int] = {}
    consent_at: int | None = None
    for i, s in enumerate(raw):
        line = raw.line_of(i)
        if not isinstance(s, LineDict):
            add(line, f"steps[{i}]", "a step must be a mapping", "give it name, type and prompt")
            continue
        where = f"steps[{i}]"
        for key in s:
            if key not in STEP_KEYS:
                add(s.line_of(key), f"{where}.{key}", f"unknown key '{key}'",
                    f"known keys: {', '.join(sorted(STEP_KEYS))}")
        name = s.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            add(line, f"{where}.name", f"bad or missing step name {name!r}",
                "use lowercase letters, digits and _, e.g. full_name")
            continue
        if name in seen:
            add(line, f"{where}.name", f"step '{name}' is defined twice (first on line {seen[name]})",
                "give each step its own name")
            continue
        seen[name] = line
        kind = s.get("type", "text")
        if kind not in STEP_TYPES:
            add(s.line_of("type"), f"{where}.type", f"unknown field type '{kind}'",
                f"known: {', '.join(STEP_TYPES)}")
            continue
        options: list[Option] = []
        if kind == "choice":
            options = _parse_options(s, where, langs, add)
        elif "options" in s:
            add(s.line_of("options"), f"{where}.options", "only a choice step has options", "use type: choice")
        when: dict[str, tuple[str, ...]] = {}
        if "when" in s:
            cond = s["when"]
            if not isinstance(cond, LineDict):
                add(s.line_of("when"), f"{where}.when", "when must map an earlier step to its value(s)",
                    "e.g. when: {reply_by: [email]}")
            else:
                for other, values in cond.items():
                    if other not in seen or other == name:
                        add(cond.line_of(other), f"{where}.when",
                            f"condition on step '{other}', which does not come before this step",
                            "name a step defined above this one")
                        continue
                    vals = values if isinstance(values, list) else [values]
                    when[other] = tuple("yes" if v is True else "no" if v is False else str(v) for v in vals)
        maximum = s.get("max", DEFAULT_MAX)
        if not isinstance(maximum, int) or isinstance(maximum, bool) or not 1 <= maximum <= 5000:
            add(s.line_of("max"), f"{where}.max", f"max {maximum!r} is not 1 to 5000 characters", "e.g. max: 500")
            maximum = DEFAULT_MAX
        personal = bool(s.get("personal", False))
        if kind == "consent":
            consent_at = i if consent_at is None else consent_at
        elif personal and consent_at is None:
            add(line, where, f"step '{name}' asks personal data before the consent step",
                "move a 'type: consent' step above it (GDPR Art. 13: inform before collecting)")
        prompt = per_language(s, "prompt", langs, add, str, where)
        label = per_language(s, "label", langs, add, str, where) if kind != "consent" else {}
        steps.append(Step(
            name=name, type=kind, prompt=prompt, label=label or prompt, options=tuple(options),
            optional=bool(s.get("optional", False)), when=when, max=maximum, personal=personal,
        ))
    if not steps:
        add(data.line_of("steps"), "steps", "a flow needs at least one step", "add steps (see SCHEMA.md)")
    return tuple(steps)


def _parse_options(s: LineDict, where: str, langs: list[str], add: Callable[..., None]) -> list[Option]:
    raw = s.get("options")
    if not isinstance(raw, LineList) or len(raw) < 2:
        add(s.line_of("options") if "options" in s else s.line, f"{where}.options",
            "a choice step needs a list of two or more options", "add '- {value: ..., label: {en: ...}}' items")
        return []
    out = []
    for j, o in enumerate(raw):
        if not isinstance(o, LineDict) or not isinstance(o.get("value"), str):
            add(raw.line_of(j), f"{where}.options[{j}]", "an option needs a value and a label",
                "write {value: access, label: {en: ...}}")
            continue
        for key in o:
            if key not in OPTION_KEYS:
                add(o.line_of(key), f"{where}.options[{j}]", f"unknown key '{key}'",
                    "an option has value, label and cites")
        label = per_language(o, "label", langs, lambda *a, **k: add(*a, **k), str, f"{where}.options[{j}]")
        cites = o.get("cites") if isinstance(o.get("cites"), dict) else {}
        out.append(Option(o["value"], label, {str(k): str(v) for k, v in cites.items()}))
    return out


def _check_letter(letter: Template, raw: LineDict, steps: tuple[Step, ...], add: Callable[..., None]) -> None:
    known = set(LETTER_VALUES) | {s.name for s in steps} | {f"{s.name}_cites" for s in steps if s.type == "choice"}
    for part in ("subject", "body"):
        for lang, template in getattr(letter, part).items():
            try:
                names = {n for _, n, _, _ in string.Formatter().parse(template) if n is not None}
            except ValueError as exc:
                add(raw.line_of(part), f"letter.{part}.{lang}", f"broken placeholder: {exc}",
                    "write placeholders as {name}; '{{' for a brace")
                continue
            for n in sorted(names - known):
                add(raw.line_of(part), f"letter.{part}.{lang}", f"the template uses an unknown field {{{n}}}",
                    f"use a step name or one of: {', '.join(sorted(LETTER_VALUES))}")


def per_language(data: LineDict, key: str, langs: list[str], add: Callable[..., None], kind: type,
                 where: str = "") -> dict[str, Any]:
    """Read `key` as a mapping language -> value; report a missing language as a warning."""
    label = f"{where}.{key}" if where else key
    value = data.get(key)
    if not isinstance(value, LineDict):
        add(data.line_of(key) if key in data else data.line, label, f"'{key}' must give a value per language",
            f"write '{key}:' with one indented line per language ({', '.join(langs)})")
        return {}
    out = {}
    for lang in langs:
        if lang not in value:
            add(value.line, label, f"no '{lang}' text", f"add '{lang}:' under '{key}'", "warning")
            continue
        v = value[lang]
        ok = isinstance(v, kind) and (not isinstance(v, list) or all(isinstance(x, str) for x in v))
        if not ok:
            add(value.line_of(lang), f"{label}.{lang}", f"expected {'text' if kind is str else 'a list of texts'}",
                "see SCHEMA.md")
            continue
        out[lang] = v
    return out
