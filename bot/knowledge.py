"""Load knowledge/ into one frozen value, and check it: every problem at once, each with file, line and a fix.

The layers are `common/` and then `cities/<id>/`: a city's entry with the same id replaces the common one's
answer, title, sources and date, and adds its phrasings. See knowledge/SCHEMA.md for every key.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot import deadlines as deadlinelib
from bot import flows as flowlib
from bot.yamlfile import LineDict, LineList, Problem, read

BUNDLED = Path(__file__).resolve().parent.parent / "knowledge"
DEFAULT_CITY = "amsterdam"
MAX_ANSWER_WORDS = 120  # plain language on a phone: a screen and a half; longer answers warn
MAX_TITLE_CHARS = 60  # a button label must fit on a phone
MIN_PHRASINGS = 8  # fewer gives the matcher too little to generalise from
STALE_AFTER_DAYS = 365  # a `reviewed` date older than this warns: laws and contacts change

ID_RE = re.compile(r"^[a-z0-9]+(?:[.-][a-z0-9]+)*$")
LANG_RE = re.compile(r"^[a-z]{2}$")

# Every text the code says, with the placeholders it fills in. Each language's texts/<lang>.yaml must carry
# these keys with exactly these placeholders; the checker holds every language to this one contract.
TEXT_KEYS: dict[str, frozenset[str]] = {
    k: frozenset(v)
    for k, v in {
        "language_name": (),
        "greeting": ("city",),
        "menu_prompt": (),
        "menu_ask": (),
        "menu_language": (),
        "menu_privacy": (),
        "ask_prompt": (),
        "help": (),
        "dont_know": (),
        "outside_topic": ("contact",),
        "choice_menu": (),
        "choice_person": (),
        "did_you_mean": (),
        "none_of_these": (),
        "language_prompt": (),
        "language_set": ("language",),
        "cancelled": (),
        "nothing_to_cancel": (),
        "why": ("title", "phrasing", "score", "sources", "reviewed"),
        "why_nothing": (),
        "empty": (),
        "too_long": ("limit",),
        "unreadable": (),
        "unknown_command": ("command",),
        "privacy": ("retention_days",),
        "error": (),
        "menu_status": (),
        "back_to_request": (),
        "flow_intro": ("flow",),
        "answer_yes": (),
        "answer_no": (),
        "skip": (),
        "invalid_email": (),
        "invalid_phone": (),
        "invalid_date": (),
        "invalid_choice": (),
        "answer_too_long": ("limit",),
        "answer_empty": (),
        "choose_one": (),
        "consent_declined": (),
        "summary": ("flow",),
        "confirm": (),
        "edit": (),
        "cancel_request": (),
        "edit_which": (),
        "resume_offer": ("flow",),
        "resume_continue": (),
        "resume_drop": (),
        "resume_dropped": (),
        "filed": ("ref", "deadline", "law"),
        "filed_no_deadline": ("ref",),
        "show_letter": (),
        "status_none": (),
        "status_header": (),
        "status_line": ("ref", "flow", "status", "deadline"),
        "status_submitted": (),
        "status_delivered": (),
        "status_extended": (),
        "status_answered": (),
        "status_overdue": (),
        "no_such_case": ("ref",),
        "no_deadline": (),
        "nothing_to_go_back": (),
        "no_extension": ("ref",),
        "extended_ok": ("ref", "deadline"),
        "overdue": ("ref", "flow", "deadline"),
        "overdue_complain": (),
        "overdue_complaint_text": ("ref", "flow", "filed", "deadline"),
        "delivered": ("ref",),
        "not_text": (),
        "undecryptable": (),
        "slow_down": (),
        "mydata": (),
        "mydata_summary": ("language", "messages", "cases", "retention_days"),
        "forget_confirm": (),
        "forget_yes": (),
        "forget_no": (),
        "forget_kept": (),
        "forget_done": (),
        "forget_delivered": ("count",),
        "escalate": (),
        "ticket_opened": ("ref", "when"),
        "helpdesk_open": (),
        "helpdesk_closed": ("opening",),
        "relayed": (),
        "back_to_bot": (),
        "no_ticket": (),
        "left_ticket": (),
        "agent_says": ("name", "text"),
        "ticket_claimed": ("name",),
        "ticket_closed": ("name",),
        "staff_ticket": ("ref", "language", "question", "cases", "transcript"),
        "staff_relay": ("ref", "text"),
        "staff_left": ("ref",),
        "staff_retracted": (),
        "staff_claimed": ("ref", "name"),
        "staff_closed": ("ref", "name"),
        "staff_refused": ("command",),
        "staff_unknown_ticket": ("ref",),
        "staff_help": ("usage",),
        "staff_case": ("ref", "flow", "status", "deadline"),
        "no_helpdesk": ("contact",),
        "already_ticket": ("ref",),
        "flow_changed": (),
        "menu_contacts": (),
        "contacts_intro": ("city",),
        "office_helpdesk": (),
        "office_privacy_officer": (),
        "office_supervisory_authority": (),
        "office_foi": (),
        "office_ombudsman": (),
        "theme_prompt": ("theme",),
        **{f"theme_{n}": () for n in range(6)},
    }.items()
}

# Keys each kind of record may carry (anything else is a typo worth reporting).
TOPIC_KEYS = {"id", "principle", "flow", "related", "sources", "reviewed"}
WORD_KEYS = {"id", "title", "phrasings", "answer", "reviewed"}  # reviewed: when this translation was checked
OUTSIDE_KEYS = {"id", "phrasings"}
CITY_KEYS = {"id", "code", "name", "languages", "working_language", "timezone", "holidays", "offices"}
OFFICE_NAMES = {"privacy_officer", "supervisory_authority", "foi", "ombudsman", "helpdesk"}
OFFICE_KEYS = {"name", "url", "email", "phone", "source"}
HOLIDAY_KEYS = {"country", "subdivision", "add", "remove"}


class KnowledgeError(Exception):
    """The knowledge has errors; `problems` lists every one of them (and the warnings)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.level == "error"]
        super().__init__(
            f"{len(errors)} error(s) in the knowledge files; run 'run_bot.py check' to see them all:\n"
            + "\n".join(str(p) for p in errors[:20])
        )


@dataclass(frozen=True)
class Source:
    title: str
    url: str


@dataclass(frozen=True)
class Entry:
    """One FAQ entry, all languages, with the city's overrides already applied."""

    id: str
    principle: int
    flow: str | None
    related: tuple[str, ...]
    sources: tuple[Source, ...]
    reviewed: date
    title: Mapping[str, str]
    phrasings: Mapping[str, tuple[str, ...]]
    answer: Mapping[str, str]


@dataclass(frozen=True)
class Office:
    name: Mapping[str, str]
    url: str
    source: str
    email: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class City:
    id: str
    code: str
    name: Mapping[str, str]
    languages: tuple[str, ...]
    working_language: str
    timezone: str
    holidays: Mapping[str, Any]
    offices: Mapping[str, Office]


@dataclass(frozen=True)
class Knowledge:
    """Everything the bot knows for one city: a value the runtime can swap whole."""

    city: City
    entries: Mapping[str, Entry]
    texts: Mapping[str, Mapping[str, str]]
    synonyms: Mapping[str, Mapping[str, str]]  # lang -> word -> canonical word
    flows: Mapping[str, flowlib.Flow]
    deadlines: Mapping[str, deadlinelib.Rule] = field(default_factory=dict)
    calendar: deadlinelib.Calendar = field(default_factory=deadlinelib.Calendar)
    warnings: tuple[Problem, ...] = field(default=())
    # City matters the bot does not handle (parking, rubbish, taxes): subject -> lang -> phrasings. A question
    # closest to one of these is pointed to the city's general line instead of a wrong answer (outside/).
    outside: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)

    @property
    def languages(self) -> tuple[str, ...]:
        return self.city.languages

    def pick(self, values: Mapping[str, Any], lang: str) -> Any:
        """Choose the value in `lang`, else in the city's first language, else any (never fail a resident)."""
        for candidate in (lang, self.city.languages[0], "en"):
            if candidate in values:
                return values[candidate]
        return next(iter(values.values()))

    def helpdesk_contact(self, lang: str) -> str:
        """How to reach the city's general line (city.yaml offices: helpdesk), else the city's name."""
        office = self.city.offices.get("helpdesk")
        if office is None:
            return self.pick(self.city.name, lang)
        parts = [self.pick(office.name, lang)] if office.name else []
        parts += [p for p in (office.phone, office.url) if p and p not in " ".join(parts)]
        return ", ".join(parts)

    def text(self, key: str, lang: str, **values: Any) -> str:
        """Say text `key` in `lang`; placeholders take only the values the code passes (never resident input)."""
        template = self.pick({lg: t[key] for lg, t in self.texts.items() if key in t}, lang)
        return template.format_map({k: values.get(k, "") for k in TEXT_KEYS.get(key, ())})


# ---------------------------------------------------------------------------------------------------------------
# Loading


class _Reader:
    """Collects problems while reading one knowledge folder; file names are shown relative to its parent."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []

    def shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root.parent))
        except ValueError:
            return str(path)

    def read(self, path: Path) -> Any:
        return read(path, self.shown(path), self.problems)

    def add(self, file: str, line: int, where: str, what: str, fix: str, level: str = "error") -> None:
        self.problems.append(Problem(file, line, where, what, fix, level))


def load(root: Path | None = None, city: str | None = None, today: date | None = None) -> Knowledge:
    """Load the knowledge for `city`; raise KnowledgeError listing every problem when there is any error."""
    knowledge, problems = _build(root or BUNDLED, city or DEFAULT_CITY, today or date.today())
    if knowledge is None or any(p.level == "error" for p in problems):
        raise KnowledgeError(problems)
    return knowledge


def check(root: Path | None = None, city: str | None = None, today: date | None = None) -> list[Problem]:
    """Return every problem (errors and warnings) for one city, or for every city when `city` is None."""
    root = root or BUNDLED
    cities = [city] if city else list_cities(root)
    if not cities:
        return [
            Problem(str(root), 1, "cities", "no city pack found", "add knowledge/cities/<id>/city.yaml")
        ]
    seen: dict[Problem, None] = {}
    for c in cities:
        _, problems = _build(root, c, today or date.today())
        for p in problems:
            seen.setdefault(p, None)
    return list(seen)


def list_cities(root: Path) -> list[str]:
    folder = root / "cities"
    return sorted(p.name for p in folder.iterdir() if (p / "city.yaml").exists()) if folder.is_dir() else []


def _build(root: Path, city_id: str, today: date) -> tuple[Knowledge | None, list[Problem]]:
    r = _Reader(root)
    if not (root / "common").is_dir():
        r.add(str(root), 1, "", "no common/ folder here", "point --knowledge at the folder holding common/ and cities/")
        return None, r.problems
    city_dir = root / "cities" / city_id
    if not (city_dir / "city.yaml").exists():
        known = ", ".join(list_cities(root)) or "none"
        r.add(str(root / "cities"), 1, "", f"unknown city '{city_id}'", f"choose one of: {known}")
        return None, r.problems

    langs = sorted(
        p.stem for p in (root / "common" / "faq").glob("*.yaml") if p.stem != "topics" and LANG_RE.match(p.stem)
    )
    for p in (root / "common" / "faq").glob("*.yaml"):
        if p.stem != "topics" and not LANG_RE.match(p.stem):
            r.add(r.shown(p), 1, "", f"'{p.name}' is not a language file name", "name it <code>.yaml, e.g. en.yaml")

    flows = _read_flows(r, root / "common" / "flows", city_dir / "flows", langs)
    city = _read_city(r, city_dir / "city.yaml", city_id, langs)
    deadlines: dict[str, deadlinelib.Rule] = {}
    for path in (root / "common" / "deadlines.yaml", city_dir / "deadlines.yaml"):
        if path.exists():
            deadlines.update(deadlinelib.parse_rules(r.read(path), r.shown(path), langs, r.problems))
    _check_flow_references(r, root, city_dir, flows, deadlines, city)

    topics: dict[str, dict[str, Any]] = {}
    origin: dict[str, tuple[str, int]] = {}
    _read_topics(r, root / "common" / "faq" / "topics.yaml", topics, origin, city_layer=False, required=True)
    _read_topics(r, city_dir / "faq" / "topics.yaml", topics, origin, city_layer=True, required=False)

    words: dict[str, dict[str, dict[str, Any]]] = {}  # lang -> id -> {title, phrasings, answer}
    city_answered: dict[str, tuple[str, int]] = {}  # ids whose answer the city replaced: where
    for lang in langs:
        _read_words(r, root / "common" / "faq" / f"{lang}.yaml", lang, topics, words, None)
        _read_words(r, city_dir / "faq" / f"{lang}.yaml", lang, topics, words, city_answered)

    _check_references(r, topics, origin, flows)
    entries = _assemble(r, topics, origin, words, city, today)
    entries = _with_phrasings_elsewhere(root, city_id, entries)
    for entry_id, (file, line) in city_answered.items():
        if topics.get(entry_id, {}).get("_city_sources") is not True:
            r.add(file, line, f"entry '{entry_id}'", "a city answer without a city source",
                  f"add sources for '{entry_id}' in the city's faq/topics.yaml", "warning")

    texts = _read_texts(r, root, city_dir, langs)
    synonyms = {lang: _read_synonyms(r, root / "common" / "synonyms" / f"{lang}.yaml") for lang in langs}
    outside: dict[str, dict[str, tuple[str, ...]]] = {}
    for folder in (root / "common" / "outside", city_dir / "outside"):
        for lang in langs:
            _read_outside(r, folder / f"{lang}.yaml", lang, outside)
        for p in sorted(folder.glob("*.yaml")) if folder.is_dir() else ():
            if p.stem not in langs:
                r.add(r.shown(p), 1, "", f"'{p.name}' is not one of the FAQ's languages ({', '.join(langs)})",
                      "name it <code>.yaml after a language of common/faq/")
    if city is None:
        return None, r.problems
    if outside and "helpdesk" not in city.offices:
        r.add(r.shown(city_dir / "city.yaml"), 1, "offices",
              "outside/ subjects point residents to the city's general line, and there is no helpdesk office",
              "add offices: helpdesk: with the city's general phone number or contact page", "warning")
    for lang in city.languages:
        if lang not in langs:
            r.add(r.shown(city_dir / "city.yaml"), 1, "languages", f"no FAQ in language '{lang}'",
                  f"add common/faq/{lang}.yaml or remove '{lang}' from languages")
    knowledge = Knowledge(
        city=city,
        entries=entries,
        texts=texts,
        synonyms=synonyms,
        flows=flows,
        deadlines=deadlines,
        calendar=deadlinelib.Calendar.of(city.holidays),
        warnings=tuple(p for p in r.problems if p.level == "warning"),
        outside=outside,
    )
    return knowledge, r.problems


def _unknown_keys(r: _Reader, file: str, record: LineDict, allowed: set[str], where: str) -> None:
    for key in record:
        if key not in allowed and not str(key).startswith("_"):
            r.add(file, record.line_of(key), where, f"unknown key '{key}'",
                  f"known keys: {', '.join(sorted(allowed))}; check the spelling")


def _as_records(r: _Reader, path: Path, data: Any, what: str) -> list[LineDict]:
    if data is None:
        return []
    if not isinstance(data, list):
        r.add(r.shown(path), getattr(data, "line", 1), "", f"expected a list of {what}",
              "start each record with '- id: ...'")
        return []
    records = []
    for i, item in enumerate(data):
        if isinstance(item, LineDict):
            records.append(item)
        else:
            r.add(r.shown(path), data.line_of(i), f"item {i + 1}", f"expected a record with keys, got {item!r}",
                  "write the record as '- id: ...' with its keys indented below")
    return records


def _identified(r: _Reader, path: Path, what: str, kind: str, allowed: set[str], example: str,
                duplicate_fix: str) -> Iterator[tuple[LineDict, str, str]]:
    """The records of a list file with a well-formed id, each id once, as (record, id, where): a missing,
    malformed or repeated id is reported and its record skipped; unknown keys are reported."""
    file = r.shown(path)
    seen: dict[str, int] = {}
    for rec in _as_records(r, path, r.read(path), what):
        rec_id = rec.get("id")
        if not isinstance(rec_id, str) or not ID_RE.match(rec_id):
            r.add(file, rec.line, "id", f"bad or missing id {rec_id!r}",
                  f"use lowercase words joined by dots or dashes, e.g. {example}")
            continue
        where = f"{kind} '{rec_id}'"
        if rec_id in seen:
            r.add(file, rec.line, where, f"duplicate id (first on line {seen[rec_id]})", duplicate_fix)
            continue
        seen[rec_id] = rec.line
        _unknown_keys(r, file, rec, allowed, where)
        yield rec, rec_id, where


def _read_topics(r: _Reader, path: Path, topics: dict, origin: dict, city_layer: bool, required: bool) -> None:
    file = r.shown(path)
    if not path.exists():
        if required:
            r.add(file, 1, "", "file is missing", "create it: one record per FAQ entry (see SCHEMA.md)")
        return
    for rec, entry_id, where in _identified(r, path, "topic records", "entry", TOPIC_KEYS,
                                             "privacy.access-my-data", "give each entry its own id"):
        overriding = city_layer and entry_id in topics
        record = dict(topics.get(entry_id, {})) if overriding else {}
        if not overriding:
            for key in ("principle", "sources", "reviewed"):
                if key not in rec:
                    r.add(file, rec.line, where, f"'{key}' is missing", f"add '{key}:' (see SCHEMA.md)")
        if "principle" in rec:
            p = rec["principle"]
            if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= 5:
                r.add(file, rec.line_of("principle"), where, f"principle {p!r} is not 0 to 5",
                      "0 = about the bot or coalition, 1..5 = the coalition's principles")
            else:
                record["principle"] = p
        if "flow" in rec:
            record["flow"] = rec["flow"]
            record["_flow_line"] = (file, rec.line_of("flow"))
        if "related" in rec:
            rel = rec["related"]
            if not isinstance(rel, list) or not all(isinstance(x, str) for x in rel):
                r.add(file, rec.line_of("related"), where, "related must be a list of ids",
                      "write related: [id.one, id.two]")
            else:
                record["related"] = tuple(rel)
                record["_related_line"] = (file, rec.line_of("related"))
        if "sources" in rec:
            record["sources"] = _read_sources(r, file, rec, where)
            record["_city_sources"] = city_layer and bool(record["sources"])
        if "reviewed" in rec:
            record["reviewed"] = _read_date(r, file, rec, "reviewed", where)
        topics[entry_id] = record
        if not overriding:
            origin[entry_id] = (file, rec.line)


def _read_sources(r: _Reader, file: str, rec: LineDict, where: str) -> tuple[Source, ...]:
    raw = rec["sources"]
    if not isinstance(raw, LineList) or not raw:
        r.add(file, rec.line_of("sources"), where, "sources must be a non-empty list",
              "add '- {title: ..., url: https://...}' items")
        return ()
    out = []
    for i, s in enumerate(raw):
        line = raw.line_of(i)
        if not isinstance(s, dict) or not isinstance(s.get("title"), str) or not isinstance(s.get("url"), str):
            r.add(file, line, where, f"source {i + 1} needs a title and a url", "write {title: ..., url: https://...}")
            continue
        if not re.match(r"^https?://[^\s/]+\.[^\s]+$", s["url"]):
            r.add(file, line, where, f"source url {s['url']!r} is not a web address",
                  "use a full address starting with https://")
            continue
        extra = set(s) - {"title", "url"}
        if extra:
            r.add(file, line, where, f"unknown key(s) in source: {', '.join(sorted(map(str, extra)))}",
                  "a source has only title and url")
        out.append(Source(s["title"].strip(), s["url"].strip()))
    return tuple(out)


def _read_date(r: _Reader, file: str, rec: LineDict, key: str, where: str) -> date | None:
    value = rec[key]
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        r.add(file, rec.line_of(key), where, f"{key} {value!r} is not a date", "write it as YYYY-MM-DD")
        return None


def _read_words(r: _Reader, path: Path, lang: str, topics: dict, words: dict, city_answered: dict | None) -> None:
    if not path.exists():
        return
    file = r.shown(path)
    in_city = city_answered is not None
    layer = words.setdefault(lang, {})
    seen: dict[str, int] = {}
    for rec in _as_records(r, path, r.read(path), "entries"):
        entry_id = rec.get("id")
        if not isinstance(entry_id, str):
            r.add(file, rec.line, "id", "record without an id", "start the record with '- id: <entry id>'")
            continue
        where = f"entry '{entry_id}'"
        if entry_id in seen:
            r.add(file, rec.line, where, f"duplicate id (first on line {seen[entry_id]})", "merge the two records")
            continue
        seen[entry_id] = rec.line
        if entry_id not in topics:
            r.add(file, rec.line, where, "no record with this id in faq/topics.yaml",
                  "add it to topics.yaml, or fix the id's spelling")
            continue
        _unknown_keys(r, file, rec, WORD_KEYS, where)
        target = layer.setdefault(entry_id, {"_file": file, "_line": rec.line})
        if not in_city:
            for key in ("title", "phrasings", "answer"):
                if key not in rec:
                    r.add(file, rec.line, where, f"'{key}' is missing", f"add '{key}:' in {lang}")
        if "title" in rec:
            title = rec["title"]
            if not isinstance(title, str) or not title.strip():
                r.add(file, rec.line_of("title"), where, "title must be text", "write a short button label")
            else:
                if len(title) > MAX_TITLE_CHARS:
                    r.add(file, rec.line_of("title"), where,
                          f"title is {len(title)} characters (over {MAX_TITLE_CHARS})",
                          "shorten it so it fits on a phone button", "warning")
                target["title"] = title.strip()
        if "answer" in rec:
            answer = rec["answer"]
            if not isinstance(answer, str) or not answer.strip():
                r.add(file, rec.line_of("answer"), where, "answer must be text", "write the answer under 'answer: |'")
            else:
                n = len(answer.split())
                if n > MAX_ANSWER_WORDS:
                    r.add(file, rec.line_of("answer"), where, f"answer has {n} words (over {MAX_ANSWER_WORDS})",
                          "shorten it and link to a page for more", "warning")
                _warn_broken_sentence(r, file, rec.line_of("answer"), where, answer)
                target["answer"] = answer.strip()
                if in_city:
                    city_answered[entry_id] = (file, rec.line_of("answer"))
        if "reviewed" in rec:
            _read_date(r, file, rec, "reviewed", where)
        if "phrasings" in rec:
            ph = rec["phrasings"]
            if not isinstance(ph, LineList) or not all(isinstance(x, str) and x.strip() for x in ph):
                r.add(file, rec.line_of("phrasings"), where, "phrasings must be a list of questions",
                      "write each phrasing on its own '- ' line")
            else:
                target["phrasings"] = tuple(target.get("phrasings", ())) + tuple(x.strip() for x in ph)


def _read_outside(r: _Reader, path: Path, lang: str, outside: dict[str, dict[str, tuple[str, ...]]]) -> None:
    """outside/<lang>.yaml: subjects the bot does not handle, each with example questions. A city's file adds
    phrasings to a common subject or adds subjects of its own."""
    if not path.exists():
        return
    file = r.shown(path)
    for rec, subject, where in _identified(r, path, "subjects", "subject", OUTSIDE_KEYS, "parking",
                                           "merge the two records"):
        ph = rec.get("phrasings")
        if not isinstance(ph, LineList) or not ph or not all(isinstance(x, str) and x.strip() for x in ph):
            r.add(file, rec.line_of("phrasings") if "phrasings" in rec else rec.line, where,
                  "phrasings must be a list of example questions", "write each question on its own '- ' line")
            continue
        layer = outside.setdefault(subject, {})
        layer[lang] = layer.get(lang, ()) + tuple(x.strip() for x in ph)


def _check_references(r: _Reader, topics: dict, origin: dict, flows: Mapping[str, Any]) -> None:
    for entry_id, rec in topics.items():
        where = f"entry '{entry_id}'"
        if rec.get("flow") is not None:
            file, line = rec["_flow_line"]
            if rec["flow"] not in flows:
                r.add(file, line, where, f"flow '{rec['flow']}' does not exist",
                      f"known flows: {', '.join(sorted(flows)) or 'none'}")
        for rel in rec.get("related", ()):
            if rel not in topics:
                file, line = rec["_related_line"]
                r.add(file, line, where, f"related id '{rel}' does not exist", "fix the id or remove it")


def _assemble(r: _Reader, topics: dict, origin: dict, words: dict, city: City | None, today: date) -> dict:
    entries: dict[str, Entry] = {}
    langs = city.languages if city else tuple(words)
    for entry_id, rec in topics.items():
        if entry_id not in origin:
            continue
        file, line = origin[entry_id]
        title, phrasings, answer = {}, {}, {}
        for lang in langs:
            w = words.get(lang, {}).get(entry_id)
            if not w or "answer" not in w:
                r.add(file, line, f"entry '{entry_id}'", f"answer has no '{lang}' text",
                      f"add the entry to faq/{lang}.yaml (languages: {', '.join(langs)})", "warning")
                continue
            title[lang] = w.get("title", entry_id)
            answer[lang] = w["answer"]
            phrasings[lang] = w.get("phrasings", ())
            if len(phrasings[lang]) < MIN_PHRASINGS:
                r.add(w["_file"], w["_line"], f"entry '{entry_id}'",
                      f"only {len(phrasings[lang])} phrasing(s) in '{lang}'",
                      f"add at least {MIN_PHRASINGS} ways residents would ask", "warning")
        reviewed = rec.get("reviewed")
        if isinstance(reviewed, date) and (today - reviewed).days > STALE_AFTER_DAYS:
            r.add(file, line, f"entry '{entry_id}'", f"reviewed {reviewed.isoformat()}, over a year ago",
                  "check the answer and its sources, then update 'reviewed'", "warning")
        if not answer:
            continue
        entries[entry_id] = Entry(
            id=entry_id,
            principle=rec.get("principle", 0),
            flow=rec.get("flow"),
            related=rec.get("related", ()),
            sources=rec.get("sources", ()),
            reviewed=reviewed or today,
            title=title,
            phrasings=phrasings,
            answer=answer,
        )
    return entries


def _with_phrasings_elsewhere(root: Path, city_id: str, entries: dict[str, Entry]) -> dict[str, Entry]:
    """Add the phrasings other cities wrote for the same entries: how residents ask is not local, only the
    answer is ("APDCAT" or "FOIL" asked in Amsterdam still means the supervisory authority or an information
    request). Problems in those files are reported when their own city is checked."""
    extra: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for other in list_cities(root):
        if other == city_id:
            continue
        for path in sorted((root / "cities" / other / "faq").glob("*.yaml")):
            if path.stem == "topics":
                continue
            data = read(path, str(path), [])
            for rec in data if isinstance(data, list) else ():
                if isinstance(rec, dict) and rec.get("id") in entries and isinstance(rec.get("phrasings"), list):
                    extra[rec["id"]][path.stem].extend(str(p).strip() for p in rec["phrasings"] if isinstance(p, str))
    out = {}
    for entry_id, entry in entries.items():
        more = extra.get(entry_id)
        if not more:
            out[entry_id] = entry
            continue
        phrasings = {lang: tuple(dict.fromkeys([*entry.phrasings.get(lang, ()), *more.get(lang, ())]))
                     for lang in entry.phrasings}
        out[entry_id] = replace(entry, phrasings=phrasings)
    return out


def _read_city(r: _Reader, path: Path, city_id: str, langs: list[str]) -> City | None:
    file = r.shown(path)
    data = r.read(path)
    if not isinstance(data, LineDict):
        if data is not None:
            r.add(file, 1, "", "city.yaml must be a mapping of keys", "see SCHEMA.md for the keys")
        return None
    _unknown_keys(r, file, data, CITY_KEYS, "city")
    ok = True
    for key in ("id", "code", "name", "languages", "working_language", "timezone"):
        if key not in data:
            r.add(file, data.line, "city", f"'{key}' is missing", f"add '{key}:' (see SCHEMA.md)")
            ok = False
    if not ok:
        return None
    if data["id"] != city_id:
        r.add(file, data.line_of("id"), "id", f"id '{data['id']}' differs from the folder name '{city_id}'",
              "make them the same")
    code = data["code"]
    if not isinstance(code, str) or not re.fullmatch(r"[A-Z]{3}", code):
        r.add(file, data.line_of("code"), "code", f"code {code!r} is not 3 capital letters", "e.g. code: AMS")
        code = "XXX"
    languages = data["languages"]
    if not isinstance(languages, list) or not languages or not all(
        isinstance(x, str) and LANG_RE.match(x) for x in languages
    ):
        r.add(file, data.line_of("languages"), "languages", f"languages {languages!r} is not a list of codes",
              "e.g. languages: [nl, en, es, ca]")
        languages = langs or ["en"]
    working = data["working_language"]
    if working not in languages:
        r.add(file, data.line_of("working_language"), "working_language",
              f"'{working}' is not one of the city's languages", f"choose one of: {', '.join(languages)}")
    tz = data["timezone"]
    try:
        ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError):
        r.add(file, data.line_of("timezone"), "timezone", f"unknown time zone {tz!r}", "e.g. Europe/Amsterdam")
        tz = "UTC"
    name = _read_names(r, file, data, "name", languages, "city")
    holidays = data.get("holidays") or {}
    if not isinstance(holidays, dict):
        r.add(file, data.line_of("holidays"), "holidays", "holidays must be a mapping", "e.g. {country: NL}")
        holidays = {}
    elif isinstance(holidays, LineDict):
        _unknown_keys(r, file, holidays, HOLIDAY_KEYS, "holidays")
    offices: dict[str, Office] = {}
    raw_offices = data.get("offices") or {}
    if isinstance(raw_offices, LineDict):
        for office_name, o in raw_offices.items():
            where = f"offices.{office_name}"
            line = raw_offices.line_of(office_name)
            if office_name not in OFFICE_NAMES:
                r.add(file, line, where, f"unknown office '{office_name}'", f"known: {', '.join(sorted(OFFICE_NAMES))}")
                continue
            if not isinstance(o, LineDict):
                r.add(file, line, where, "an office must be a mapping", "give name, url and source")
                continue
            _unknown_keys(r, file, o, OFFICE_KEYS, where)
            if not o.get("source"):
                r.add(file, line, where, "an office without a source", "add 'source: https://...'", "warning")
            offices[office_name] = Office(
                name=_read_names(r, file, o, "name", languages, where),
                url=str(o.get("url", "")),
                source=str(o.get("source", "")),
                email=o.get("email"),
                phone=str(o["phone"]) if o.get("phone") is not None else None,
            )
    return City(
        id=city_id,
        code=code,
        name=name,
        languages=tuple(languages),
        working_language=working if working in languages else languages[0],
        timezone=str(tz),
        holidays=dict(holidays),
        offices=offices,
    )


def _read_names(r: _Reader, file: str, data: LineDict, key: str, languages: Iterable[str], where: str) -> dict:
    names = data.get(key)
    if isinstance(names, str):
        return {lang: names for lang in languages}
    if not isinstance(names, dict) or not names:
        r.add(file, data.line_of(key), where, f"'{key}' must give a text per language", "e.g. {en: ..., nl: ...}")
        return {}
    for lang in languages:
        if lang not in names:
            r.add(file, data.line_of(key), where, f"'{key}' has no '{lang}' text", f"add {lang}: ...", "warning")
    return {str(k): str(v) for k, v in names.items()}


_BROKEN_SENTENCE = re.compile(r"[a-zà-ÿ,;]\n[a-zà-ÿ]")


def _warn_broken_sentence(r: _Reader, file: str, line: int, where: str, value: str) -> None:
    """A line break in the middle of a sentence reaches the resident's phone as it is: 'key: |' keeps every break
    of the file. Wrapping a paragraph for the file is what 'key: >' is for (it joins the lines)."""
    found = _BROKEN_SENTENCE.search(value)
    if found:
        snippet = value[max(0, found.start() - 20):found.end() + 20].replace("\n", "⏎")
        r.add(file, line, where, f"line break in the middle of a sentence ('...{snippet}...')",
              "join the lines, or write the text as 'key: >' so that YAML joins them", "warning")


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _read_texts(r: _Reader, root: Path, city_dir: Path, langs: list[str]) -> dict[str, dict[str, str]]:
    texts: dict[str, dict[str, str]] = {}
    for lang in langs:
        merged: dict[str, str] = {}
        for path in (root / "common" / "texts" / f"{lang}.yaml", city_dir / "texts" / f"{lang}.yaml"):
            if not path.exists():
                if path.parent.parent.name == "common":
                    r.add(r.shown(path), 1, "", f"no texts in '{lang}'", f"create texts/{lang}.yaml from texts/en.yaml")
                continue
            file = r.shown(path)
            data = r.read(path)
            if data is None:
                continue
            if not isinstance(data, LineDict):
                r.add(file, 1, "", "texts must be a mapping of key: text", "write one 'key: text' per line")
                continue
            for key, value in data.items():
                line = data.line_of(key)
                if isinstance(key, bool):
                    r.add(file, line, str(key), "YAML read this key as true/false (yes, no, on and off are booleans)",
                          "put the key in quotes, e.g. \"no\": ...")
                    continue
                if key not in TEXT_KEYS:
                    r.add(file, line, str(key), f"unknown text key '{key}'", "check the spelling against texts/en.yaml")
                    continue
                if not isinstance(value, str) or not value.strip():
                    r.add(file, line, key, "text must not be empty", "write the sentence")
                    continue
                try:
                    used = _placeholders(value)
                except ValueError as exc:
                    r.add(file, line, key, f"broken placeholder: {exc}",
                          "write placeholders as {name}; '{{' for a brace")
                    continue
                wanted = TEXT_KEYS[key]
                if used - wanted:
                    r.add(file, line, key, f"unknown placeholder(s) {', '.join(sorted(used - wanted))}",
                          f"this text may use: {', '.join(sorted(wanted)) or 'no placeholders'}")
                    continue
                _warn_broken_sentence(r, file, line, key, value)
                merged[key] = value.strip()
        if merged or lang in langs:
            for key in TEXT_KEYS:
                if key not in merged and (root / "common" / "texts" / f"{lang}.yaml").exists():
                    r.add(r.shown(root / "common" / "texts" / f"{lang}.yaml"), 1, key, f"text '{key}' is missing",
                          f"add '{key}:' in {lang}", "error" if lang == "en" else "warning")
        texts[lang] = merged
    return texts


def _read_synonyms(r: _Reader, path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    file = r.shown(path)
    data = r.read(path)
    out: dict[str, str] = {}
    where_first: dict[str, int] = {}
    if data is None:
        return out
    if not isinstance(data, LineList):
        r.add(file, 1, "", "synonyms must be a list of groups", "write each group as '- [word, other, ...]'")
        return out
    from bot.language import normalise  # here: language imports knowledge's types only lazily too

    for i, group in enumerate(data):
        line = data.line_of(i)
        if not isinstance(group, list) or len(group) < 2 or not all(isinstance(w, str) for w in group):
            r.add(file, line, f"group {i + 1}", "a group must list two or more words", "write '- [word, other]'")
            continue
        canonical = normalise(group[0])
        for word in group:
            w = normalise(word)
            if not w or len(w.split()) > 3:
                r.add(file, line, f"group {i + 1}", f"'{word}' is not a word or a short phrase",
                      "use words or phrases of at most three words")
                continue
            if w in where_first and where_first[w] != line:
                r.add(file, line, f"group {i + 1}", f"'{word}' is already in the group on line {where_first[w]}",
                      "keep each word in one group")
                continue
            where_first[w] = line
            if w != canonical:
                out[w] = canonical
    return out


def _read_flows(r: _Reader, common: Path, local: Path, langs: list[str]) -> dict[str, flowlib.Flow]:
    """Read the flows; a city's flows/<id>.yaml replaces the common file's top-level keys it gives."""
    flows: dict[str, flowlib.Flow] = {}
    paths = {p.stem: p for p in sorted(common.glob("*.yaml"))} if common.is_dir() else {}
    for stem in sorted(paths):
        data = r.read(paths[stem])
        if data is None:
            continue
        files: dict[str, str] = {}
        override = local / f"{stem}.yaml"
        if override.exists() and isinstance(data, LineDict):
            extra = r.read(override)
            if isinstance(extra, LineDict):
                merged = LineDict(data)
                merged.line, merged.key_lines = data.line, dict(data.key_lines)
                for key, value in extra.items():
                    merged[key] = value
                    merged.key_lines[key] = extra.line_of(key)
                    files[key] = r.shown(override)
                data = merged
        flow = flowlib.parse(data, stem, r.shown(paths[stem]), langs, r.problems, files)
        if flow is not None:
            flows[flow.id] = flow
    if local.is_dir():
        for path in sorted(local.glob("*.yaml")):
            if path.stem not in paths:
                r.add(r.shown(path), 1, "", f"no common flow '{path.stem}' to override",
                      f"name it after a file in common/flows ({', '.join(sorted(paths)) or 'none'})")
    return flows


def _check_flow_references(r: _Reader, root: Path, city_dir: Path, flows: Mapping[str, flowlib.Flow],
                           deadlines: Mapping[str, deadlinelib.Rule], city: City | None) -> None:
    for flow in flows.values():
        local = city_dir / "flows" / f"{flow.id}.yaml"
        file = r.shown(local if local.exists() else root / "common" / "flows" / f"{flow.id}.yaml")
        if flow.deadline and flow.deadline not in deadlines:
            r.add(file, 1, "deadline", f"deadline rule '{flow.deadline}' does not exist for this city",
                  f"define it in deadlines.yaml (known: {', '.join(sorted(deadlines)) or 'none'})")
        if flow.office and city is not None and flow.office not in city.offices:
            r.add(file, 1, "office", f"the city has no office '{flow.office}'",
                  f"add it under offices: in city.yaml (known: {', '.join(sorted(city.offices)) or 'none'})")
