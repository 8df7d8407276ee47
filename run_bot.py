#!/usr/bin/env python3
"""rightsdesk's command line: chat, ask, check, eval (docs/cli.md documents every command)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from bot import config as configlib
from bot import deadlines as deadlinelib
from bot import knowledge as knowledgelib
from bot import snapshot
from bot.core import Brain, Policy
from bot.knowledge import Knowledge, KnowledgeError
from bot.language import normalise
from bot.matcher import Match, Matcher

DB_NAME = "rightsdesk.db"


class UsageError(Exception):
    """A command-line value is wrong; the message says which and how to fix it."""


def _globals() -> argparse.ArgumentParser:
    # Global options are accepted before or after the command (`run_bot.py --city nyc ask ...` or `ask --city nyc`).
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data", type=Path, default=argparse.SUPPRESS,
                   help="folder for the SQLite file, the file outbox and the index snapshot (default: ./data)")
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                   help="deployment settings (YAML); without it, the embedded default")
    p.add_argument("--knowledge", type=Path, default=argparse.SUPPRESS,
                   help="knowledge folder (default: the bundled knowledge/)")
    p.add_argument("--city", default=argparse.SUPPRESS, help=f"city pack id (default: {knowledgelib.DEFAULT_CITY})")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _globals()
    parser = argparse.ArgumentParser(
        prog="run_bot.py", parents=[common],
        description="rightsdesk: a chat assistant for residents' digital rights.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chat = sub.add_parser("chat", parents=[common], help="talk to the bot in this terminal (or pipe messages in)")
    chat.add_argument("--json", action="store_true", help="print one JSON object per bot reply")
    chat.add_argument("--user", default="console", help="conversation id (default: console)")
    ask = sub.add_parser("ask", parents=[common], help="what the bot would answer, storing nothing")
    ask.add_argument("--json", action="store_true", help="one JSON object per question (a stable contract)")
    ask.add_argument("--lang", help="answer in this language instead of the detected one")
    ask.add_argument("question", nargs="*", help="the question; without it, one question per line from stdin")
    sub.add_parser("check", parents=[common], help="check the knowledge files; exit 1 on errors")
    ev = sub.add_parser("eval", parents=[common], help="measure matching on a labelled JSONL file")
    ev.add_argument("file", type=Path, help='lines {"q", "lang", "expect": {"id": ...} | {"flow": ...}}')
    ev.add_argument("--confusions", type=int, default=10, help="how many worst confusions to list (default 10)")
    ev.add_argument("--misses", action="store_true", help="also list every missed line: expected, got, question")
    un = sub.add_parser("unanswered", parents=[common], help="questions the bot could not answer, grouped")
    un.add_argument("--since", default="30d", help="how far back: 7d, 24h, or a date YYYY-MM-DD (default 30d)")
    dl = sub.add_parser("deliver", parents=[common],
                        help="one delivery pass; exit 1 if anything is left pending or dead")
    dl.add_argument("--now", action="store_true", help="also try pending cases whose next attempt is not due yet "
                    "(after an inbox outage is fixed)")
    ob = sub.add_parser("outbox", parents=[common], help="the delivery queue as a table; 'outbox retry REF'")
    ob.add_argument("--status", choices=["pending", "sending", "dead", "delivered"], help="only rows in this state")
    ob.add_argument("action", nargs="*", metavar="retry REF", help="put a dead delivery back in the queue")
    sub.add_parser("serve", parents=[common], help="run the configured channels, the outbox and scheduled jobs")
    tk = sub.add_parser("tickets", parents=[common], help="help-desk tickets: open ones and recent closed ones")
    tk.add_argument("ref", nargs="?", help="one ticket, with its whole history")
    sub.add_parser("purge", parents=[common], help="forget on schedule: remove what is past its retention period")
    sub.add_parser("rekey", parents=[common], help="re-encrypt stored personal data with the first key (rotation)")
    case = sub.add_parser("case", parents=[common], help="a case, its letter and its delivery history")
    case.add_argument("ref", help="the case reference, e.g. AMS-DR-7Q4K2")
    case.add_argument("--answered", action="store_true", help="record that the city answered (no more reminders)")
    case.add_argument("--extended", action="store_true", help="record that the city extended the deadline")
    return parser


class App:
    """What the commands share: settings, knowledge and the store, loaded on first use."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config = configlib.load(getattr(args, "config", None))
        self.city = getattr(args, "city", None) or self.config.city
        self.knowledge_dir = getattr(args, "knowledge", None) or self.config.knowledge or knowledgelib.BUNDLED
        self.data_dir = getattr(args, "data", None) or self.config.data
        self._loaded: tuple[Knowledge, Matcher] | None = None

    def loaded(self) -> tuple[Knowledge, Matcher]:
        """The knowledge and its index, once per command: from the data folder's snapshot when the knowledge is
        unchanged since it was saved (bot/snapshot.py), else read, built and saved."""
        if self._loaded is None:
            if not self.knowledge_dir.is_dir():
                raise UsageError(f"--knowledge {self.knowledge_dir}: no such folder "
                                 "(point it at a folder with common/)")
            cities = knowledgelib.list_cities(self.knowledge_dir)
            if self.city and self.city not in cities:
                where = "--city" if getattr(self.args, "city", None) else f"{self.config.source}: city"
                raise UsageError(f"{where} {self.city}: no such city pack (choose one of: {', '.join(cities)})")
            # `ask` and `eval` store nothing (docs/cli.md): they read a snapshot that is there, never write one.
            self._loaded = snapshot.load(self.knowledge_dir, self.city or knowledgelib.DEFAULT_CITY,
                                         self.data_dir / "cache", save=self.args.command not in ("ask", "eval"))
        return self._loaded

    def knowledge(self) -> Knowledge:
        return self.loaded()[0]

    def brain(self, rate_limit: int | None = 20) -> Brain:
        knowledge, matcher = self.loaded()
        return Brain(knowledge, matcher, Policy(retention_days=self.config.retention_days, rate_limit=rate_limit))

    def desk(self):  # noqa: ANN201
        """The help desk from the config's `helpdesk:` (None without one)."""
        from bot.handoff import Desk

        if not self.config.helpdesk:
            return None
        timezone = self.knowledge().city.timezone
        try:
            return Desk.from_settings(self.config.helpdesk, timezone)
        except ValueError as exc:
            raise configlib.ConfigError(str(exc)) from None

    def configured_brain(self, rate_limit: int | None | bool = True) -> Brain:
        desk = self.desk()
        policy = Policy(retention_days=self.config.retention_days,
                        rate_limit=self.config.rate_limit if rate_limit is True else rate_limit)
        if desk is not None:
            policy = Policy(policy.retention_days, policy.rate_limit, desk.hours, desk.escalate_after, helpdesk=True)
        knowledge, matcher = self.loaded()
        return Brain(knowledge, matcher, policy)

    def store(self):  # noqa: ANN201 - imported lazily: `ask` and `check` never touch the database
        from bot.cipher import ENV, Cipher, CipherError
        from bot.store import Store

        try:
            cipher = Cipher.from_environment(os.environ)
        except CipherError as exc:
            raise UsageError(str(exc)) from None
        if not cipher.enabled:
            logging.getLogger("rightsdesk").warning(
                "personal data is stored unencrypted: set %s to a Fernet key to encrypt it (docs/privacy.md)", ENV)
        return Store(self.data_dir / DB_NAME, cipher)

    def outbox(self, store):  # noqa: ANN001, ANN201
        from bot.outbox import Outbox, Policy

        return Outbox(store, build_inboxes(dict(self.config.inboxes), self.data_dir),
                      Policy.of(self.config.delivery))


def build_inboxes(settings: dict, data_dir: Path) -> dict:
    """Inbox adapters by name from the config's `inboxes:`; without any, every case goes to files in --data."""
    from adapters.inboxes.registry import build

    return build(settings, data_dir)


def build_channels(settings: dict, data_dir: Path) -> dict:
    """Channel adapters by name from the config's `channels:` (a plain dict: no plugin discovery)."""
    from adapters.matrix import MatrixChannel
    from adapters.telegram import TelegramChannel

    kinds = {"telegram": TelegramChannel, "matrix": MatrixChannel}
    channels, problems = {}, []
    for name, spec in settings.items():
        if name not in kinds:
            problems.append(f"channels.{name}: unknown channel (known: {', '.join(kinds)})")
            continue
        try:
            channels[name] = kinds[name].from_settings(spec or {}, data_dir)
        except configlib.ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise configlib.ConfigError("\n".join(problems))
    return channels


# -- commands ---------------------------------------------------------------------------------------------------


def cmd_chat(app: App) -> int:
    from adapters.console import Console
    from bot.runtime import Runtime

    brain = app.configured_brain(rate_limit=None)  # the console is the operator's own terminal: no rate limit
    store = app.store()
    console = Console(json_lines=app.args.json, user=app.args.user)
    runtime = Runtime(brain, store, app.outbox(store), {console.name: console}, app.desk())

    async def on_message(message):  # noqa: ANN001, ANN202
        await runtime.on_message(console, message)

    try:
        asyncio.run(console.run(on_message))
    except KeyboardInterrupt:
        pass
    finally:
        runtime.store.close()
    return 0


def answer_record(brain: Brain, question: str, lang: str | None) -> dict:
    """The `ask --json` contract: question, lang, id, flow, score, candidates (docs/cli.md)."""
    match: Match = brain.matcher.match(question, prefer=lang)
    entries = brain.knowledge.entries
    entry_id = flow = None
    if match.best is not None:
        entry_id = match.best.target.entry
        flow = entries[entry_id].flow if entry_id else match.best.target.flow
    top = match.best or (match.candidates[0] if match.candidates else None)
    return {
        "question": question,
        "lang": lang or match.lang,
        "id": entry_id,
        "flow": flow,
        "score": top.score if top else 0.0,
        "outside": match.outside.target.outside if match.outside else None,
        "candidates": [
            {"id": c.target.entry, "flow": c.target.flow, "score": c.score}
            for c in (match.candidates if match.best is None else ())
        ],
    }


def cmd_ask(app: App) -> int:
    brain = app.brain()
    lang = app.args.lang
    if lang is not None and lang not in brain.knowledge.languages:
        raise UsageError(f"--lang {lang}: not a language of this city (choose one of: "
                         f"{', '.join(brain.knowledge.languages)})")
    questions: Iterable[str] = [" ".join(app.args.question)] if app.args.question else (
        line.rstrip("\r\n") for line in sys.stdin
    )
    for q in questions:
        if not q.strip():
            continue
        rec = answer_record(brain, q, lang)
        if app.args.json:  # the contract of docs/cli.md: "outside" is not part of it
            print(json.dumps({k: v for k, v in rec.items() if k != "outside"}, ensure_ascii=False))
            continue
        k = brain.knowledge
        speak = rec["lang"] or k.languages[0]
        if rec["id"]:
            print(f"[{rec['id']} {rec['score']:.2f}] " + k.pick(k.entries[rec["id"]].answer, speak))
        elif rec["flow"]:
            print(f"[flow {rec['flow']} {rec['score']:.2f}] " + k.pick(k.flows[rec["flow"]].title, speak))
        elif rec["outside"]:
            said = k.text("outside_topic", speak, contact=k.helpdesk_contact(speak))
            print(f"[outside {rec['outside']}] " + said)
        elif rec["candidates"]:
            names = ", ".join(c["id"] or f"flow:{c['flow']}" for c in rec["candidates"])
            print(f"[unsure {rec['score']:.2f}] did you mean: {names}")
        else:
            print(f"[no answer {rec['score']:.2f}] " + k.text("dont_know", speak))
    return 0


def cmd_check(app: App) -> int:
    if not app.knowledge_dir.is_dir():
        raise UsageError(f"--knowledge {app.knowledge_dir}: no such folder (point it at a folder with common/)")
    problems = knowledgelib.check(app.knowledge_dir, app.city)
    for p in problems:
        print(p)
    errors = sum(p.level == "error" for p in problems)
    warnings = len(problems) - errors
    cities = [app.city] if app.city else knowledgelib.list_cities(app.knowledge_dir)
    print(f"checked {app.knowledge_dir} for {', '.join(cities)}: {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


def cmd_eval(app: App) -> int:
    brain = app.brain()
    lines = _read_eval(app.args.file)
    by_lang: dict[str, Counter] = defaultdict(Counter)
    by_topic: dict[str, Counter] = defaultdict(Counter)
    confusions: Counter = Counter()
    totals: Counter = Counter()
    missed: list[str] = []
    for line in lines:
        rec = answer_record(brain, line["q"], None)
        expect = line["expect"]
        got = rec["id"] or (f"flow:{rec['flow']}" if rec["flow"] else ("unsure" if rec["candidates"] else
                                                                      f"outside:{rec['outside']}" if rec["outside"]
                                                                      else "none"))
        if "flow" in expect:
            kind, want, ok = "flow", f"flow:{expect['flow']}", rec["flow"] == expect["flow"]
        elif expect.get("id") is None:
            kind, want, ok = "offtopic", "none", rec["id"] is None and rec["flow"] is None
        else:
            kind, want, ok = "topic", expect["id"], rec["id"] == expect["id"]
        by_lang[line["lang"]][kind, ok] += 1
        by_topic[want][ok] += 1
        totals[kind, ok] += 1
        if not ok:
            confusions[want, got] += 1
            missed.append(f"  [{line['lang']}] {want} -> {got}: {line['q']}")

    def rate(c: Counter, kind: str) -> str:
        n = c[kind, True] + c[kind, False]
        return f"{c[kind, True] / n:.3f} ({c[kind, True]}/{n})" if n else "-"

    print("per topic (right/total):")
    for topic in sorted(by_topic):
        c = by_topic[topic]
        print(f"  {topic:38} {c[True]}/{c[True] + c[False]}")
    print(f"worst confusions (expected -> got, count), of {sum(confusions.values())} misses:")
    for (want, got), n in confusions.most_common(app.args.confusions):
        print(f"  {want} -> {got}  x{n}")
    if app.args.misses:
        print(f"missed lines ({len(missed)}):")
        print("\n".join(missed))
    print("per language: topics | flows | off-topic rejected")
    for lang in sorted(by_lang):
        c = by_lang[lang]
        print(f"  {lang}: {rate(c, 'topic')} | {rate(c, 'flow')} | {rate(c, 'offtopic')}")
    print(f"topics: {rate(totals, 'topic')}")
    print(f"flows: {rate(totals, 'flow')}")
    print(f"off-topic rejected: {rate(totals, 'offtopic')}")
    return 0


def _read_eval(path: Path) -> list[dict]:
    if not path.exists():
        raise UsageError(f"{path}: no such file (eval takes a JSONL file of labelled questions)")
    out = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{n}: not JSON ({exc.msg}); each line must be one JSON object") from None
        if not (isinstance(line, dict) and isinstance(line.get("q"), str) and isinstance(line.get("expect"), dict)):
            raise UsageError(f'{path}:{n}: expected {{"q": ..., "lang": ..., "expect": {{"id": ...}}}}')
        line.setdefault("lang", "?")
        out.append(line)
    return out


def parse_since(value: str, now: datetime) -> datetime:
    """'7d', '24h' or 'YYYY-MM-DD' as the moment to count from."""
    m = re.fullmatch(r"(\d+)([dh])", value.strip())
    if m:
        n = int(m.group(1))
        return now - (timedelta(days=n) if m.group(2) == "d" else timedelta(hours=n))
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError:
        raise UsageError(f"--since {value!r}: not a period (use 7d, 24h or a date YYYY-MM-DD)") from None


def cmd_unanswered(app: App) -> int:
    store = app.store()
    rows = store.unanswered(parse_since(app.args.since, datetime.now(UTC)))
    groups: Counter = Counter()
    for row in rows:
        groups[row["lang"], normalise(row["text"])] += 1
    print(f"{len(rows)} unanswered question(s) since {app.args.since}, {len(groups)} different:")
    for (lang, text), n in groups.most_common():
        print(f"  {n:4}  [{lang}] {text}")
    return 0


def cmd_deliver(app: App) -> int:
    store = app.store()
    if app.args.now:
        store.due_now(datetime.now(UTC))
    report = asyncio.run(app.outbox(store).deliver_due(datetime.now(UTC)))
    left = store.outbox("pending") + store.outbox("sending") + store.outbox("dead")
    print(f"delivered {len(report.delivered)}, retrying {len(report.retrying)}, dead {len(report.dead)}; "
          f"{len(left)} left pending or dead")
    return 1 if left else 0


def cmd_outbox(app: App) -> int:
    store = app.store()
    action = app.args.action
    if action:
        if len(action) != 2 or action[0] != "retry":
            raise UsageError("outbox: the only action is 'outbox retry REF'")
        if not store.retry(action[1].upper(), datetime.now(UTC)):
            raise UsageError(f"outbox retry {action[1]}: no dead delivery with that reference")
        print(f"{action[1].upper()}: back in the queue; run 'run_bot.py deliver' or wait for the next pass")
        return 0
    rows = store.outbox(app.args.status)
    print(f"{'ref':14} {'inbox':12} {'status':9} {'tries':>5} {'created':25} {'next / delivered':25} last error")
    for r in rows:
        when = r["delivered_at"] if r["status"] == "delivered" else (r["next_at"] or "-")
        print(f"{r['ref']:14} {r['inbox']:12} {r['status']:9} {r['attempts']:5} {r['created_at']:25} {when:25} "
              f"{r['last_error'] or ''}")
    counts = Counter(r["status"] for r in store.outbox())
    sending = f", sending {counts['sending']}" if counts["sending"] else ""
    print(f"pending {counts['pending']}{sending}, delivered {counts['delivered']}, dead {counts['dead']}")
    problems = app.outbox(store).health(datetime.now(UTC))
    for problem in problems:
        print(f"ALERT: {problem}")
    return 0


def cmd_case(app: App) -> int:
    store = app.store()
    ref = app.args.ref.strip().upper()
    case = store.case(ref)
    if case is None:
        raise UsageError(f"case {ref}: no such case (see 'run_bot.py outbox' for references)")
    now = datetime.now(UTC)
    if app.args.answered:
        store.mark_answered(ref, now)
    if app.args.extended:
        k = app.knowledge()
        rule = k.deadlines.get(case["rule"] or "")
        if rule is None or rule.extension is None:
            raise UsageError(f"case {ref}: its deadline rule has no extension")
        store.mark_extended(ref, deadlinelib.due(date.fromisoformat(case["filed"]), rule, k.calendar, True), now)
    case = store.case(ref)
    for key in ("ref", "flow", "city", "lang", "filed_at", "deadline", "extended", "status", "inbox", "receipt"):
        print(f"{key:10} {case[key]}")
    print(f"\n{case['subject']}\n\n{case['letter']}\n\nhistory:")
    for e in store.case_history(ref):
        print(f"  {e['at']}  {e['event']:10} {e['detail']}")
    return 0


def cmd_serve(app: App) -> int:
    from bot.runtime import Runtime
    from bot.service import serve

    if not app.config.channels:
        raise UsageError("serve: the config has no channels (add channels: telegram or matrix, see docs/deploy.md);"
                         " to try the bot in this terminal, use 'run_bot.py chat'")
    channels = build_channels(dict(app.config.channels), app.data_dir)
    store = app.store()
    runtime = Runtime(app.configured_brain(), store, app.outbox(store), channels, app.desk())
    try:
        return asyncio.run(serve(runtime, list(channels.values()), app.config))
    finally:
        store.close()


def cmd_tickets(app: App) -> int:
    store = app.store()
    if app.args.ref:
        ticket = store.ticket(app.args.ref)
        if ticket is None:
            raise UsageError(f"tickets {app.args.ref}: no such ticket (run 'run_bot.py tickets' for the list)")
        for key in ("ref", "channel", "lang", "opened_at", "status", "agent_name", "closed_at", "closed_by", "cases"):
            print(f"{key:11} {ticket[key] or '-'}")
        print("history:")
        for e in store.ticket_history(ticket["ref"]):
            print(f"  {e['at']}  {e['event']:14} {e['actor']}")
        return 0
    now = datetime.now(UTC)
    rows = store.tickets()
    print(f"{'ref':14} {'channel':9} {'lang':4} {'status':8} {'age':>7}  {'held by':16} closed")
    for t in rows:
        minutes = int((now - datetime.fromisoformat(t["opened_at"])).total_seconds() // 60)
        age = f"{minutes // 60}h{minutes % 60:02d}"
        print(f"{t['ref']:14} {t['channel'] or '-':9} {t['lang']:4} {t['status']:8} {age:>7}  "
              f"{t['agent_name'] or '-':16} {t['closed_at'] or ''}")
    open_count = sum(t["status"] != "closed" for t in rows)
    print(f"{open_count} open, {len(rows) - open_count} closed")
    return 0


def cmd_purge(app: App) -> int:
    counts = app.store().purge(datetime.now(UTC), timedelta(days=app.config.retention_days))
    print(f"purged (older than {app.config.retention_days} days): "
          + ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in counts.items()))
    return 0


def cmd_rekey(app: App) -> int:
    store = app.store()
    if not store.cipher.enabled:
        raise UsageError("rekey: RIGHTSDESK_KEYS is not set (the first key encrypts; keep old keys after it)")
    print(f"re-encrypted {store.rekey()} value(s) with the first key; old keys may now be removed")
    return 0


COMMANDS = {"chat": cmd_chat, "ask": cmd_ask, "check": cmd_check, "eval": cmd_eval, "unanswered": cmd_unanswered,
            "serve": cmd_serve, "tickets": cmd_tickets, "purge": cmd_purge, "rekey": cmd_rekey,
            "deliver": cmd_deliver, "outbox": cmd_outbox, "case": cmd_case}


def main(argv: Sequence[str] | None = None) -> int:
    level = os.environ.get("RIGHTSDESK_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](App(args))
    except (UsageError, configlib.ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KnowledgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
