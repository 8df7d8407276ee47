"""The bot's rules in one pure function: handle(message, state, brain) -> Outcome.

Theory: a message is first cleaned and bounded (size, control characters). A number or a label that matches a
choice of the last reply becomes that choice's action. A `/command` runs the command. Inside a flow, the text
answers the flow's current step. Anything else is a question: the matcher ranks FAQ entries and flows, and the bot
answers, asks "Did you mean ...?" when two or three score close, or says honestly that it does not know (and keeps
the question, without who asked, for staff).

No clock, no randomness, no I/O: the time comes in on the message, and every effect is returned for the runtime
to commit in one transaction. Every sentence comes from knowledge texts, in the resident's language.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bot import deadlines as deadlinelib
from bot import flows as flow_engine
from bot.flows import Flow
from bot.handoff import OfficeHours
from bot.knowledge import Entry, Knowledge
from bot.language import has_letters, normalise
from bot.matcher import Match, Matcher, Target
from bot.messages import (
    Case,
    CaseChanged,
    CaseFiled,
    CaseInfo,
    Effect,
    Export,
    Field,
    Forget,
    Incoming,
    Offer,
    Outcome,
    Relay,
    Reply,
    State,
    Ticket,
    TicketLeft,
    TicketOpened,
    Unanswered,
    Why,
)
from bot.privacy import mask

MAX_MESSAGE_CHARS = 4000  # a resident's question fits easily; 100 kB pastes get a kind refusal, not a parse
MAX_RELATED = 2  # follow-up buttons after an answer, besides the flow and the menu
FLOW_ORDER = ("data-request", "complaint", "foi-request", "handoff")  # the menu shows flows in this order
FLOW_ACTIONS = {"answer", "skip", "confirm", "edit", "cancel", "resume"}
STALE_FLOW = timedelta(days=1)  # an unfinished flow untouched this long is offered again (or dropped)
MAX_STATUS_LINES = 10
OFFICE_ORDER = ("helpdesk", "privacy_officer", "supervisory_authority", "foi", "ombudsman")
REF_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"  # no 0/O, 1/I/L: references are read aloud and retyped
REF_LENGTH = 5  # 31^5 = 28.6 million per city and flow
LETTER_SEPARATOR = "-" * 40
RATE_WINDOW = timedelta(minutes=1)
QUESTION_WORDS = 4  # a mistyped answer of this many words may be a question: try the FAQ before correcting
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\ufeff]")


@dataclass(frozen=True)
class Policy:
    """Deployment choices the core needs (defaults are the embedded demo's)."""

    retention_days: int = 30
    rate_limit: int | None = 20  # messages per minute per resident; None: no limit (the local console)
    office_hours: OfficeHours = OfficeHours()  # when help-desk agents answer
    escalate_after: int = 2  # "I don't know" answers in a row before the bot offers a person by itself
    helpdesk: bool = False  # a staff room is connected: the handoff flow opens tickets agents answer in the chat


@dataclass(frozen=True)
class Brain:
    """The knowledge with its index: what `handle` consults. Build it once per knowledge load."""

    knowledge: Knowledge
    matcher: Matcher
    policy: Policy = Policy()

    @classmethod
    def build(cls, knowledge: Knowledge, policy: Policy | None = None) -> Brain:
        return cls(knowledge, Matcher(knowledge), policy or Policy())


def handle(message: Incoming, state: State, brain: Brain) -> Outcome:
    """Decide what to answer to one message, and what to remember and do."""
    text = _CONTROL.sub("", message.text).strip()
    turn = _Turn(brain, state, message)
    if turn.over_rate_limit():
        # Past the limit no work is done: one kind "slow down" per window, then silence (GDPR Art. 32: abuse).
        if state.throttled:
            return Outcome(turn.state, (), ())
        return turn.say(turn.t("slow_down"), state.offers, throttled=True)
    turn.notice_deadlines()
    if message.kind != "text":
        return turn.say(turn.t("undecryptable" if message.kind == "undecryptable" else "not_text"), turn.state.offers)
    if len(text) > MAX_MESSAGE_CHARS:
        return turn.say(turn.t("too_long", limit=MAX_MESSAGE_CHARS), turn.state.offers)
    if not text:
        return turn.say(turn.t("empty"), turn.state.offers or turn.menu_offers())
    if state.flow is not None and not turn.flow_is_valid():
        # The flow changed under the resident (staff edited its steps): start it afresh rather than fail.
        return turn.say(turn.t("flow_changed"), turn.menu_offers(), flow=None)
    action = _chosen(text, state)
    if action:
        return turn.act(action)
    if text.startswith("/"):
        return turn.command(text)
    if state.flow is not None:
        return turn.in_flow(text)
    if state.handoff is not None:
        return turn.relay(text)
    if not has_letters(text):
        return turn.say(turn.t("unreadable"), turn.language_offers())
    return turn.question(text)


def remind(state: State, at: datetime, brain: Brain, channel: str = "", user: str = "") -> Outcome | None:
    """For the scheduled job: tell a resident who has not written that a deadline passed (None: nothing to say)."""
    turn = _Turn(brain, state, Incoming(channel, user, "", at))
    turn.notice_deadlines()
    if not turn.pre:
        return None
    last = turn.pre[-1]
    replies = (*turn.pre[:-1], Reply(last.text, tuple(o.label for o in turn.notice_offers)))
    return Outcome(turn.state.but(offers=tuple(turn.notice_offers)), replies, tuple(turn.effects))


def agent_said(state: State, brain: Brain, name: str, text: str) -> Outcome:
    """An agent's answer, as the resident reads it ("Agent (Alice): ...")."""
    lang = state.lang or state.last_lang or brain.knowledge.languages[0]
    reply = Reply(brain.knowledge.text("agent_says", lang, name=name, text=text),
                  (brain.knowledge.text("back_to_bot", lang),))
    # Once a person has answered, the resident needs no "passed on to the help desk" any more.
    handoff = {**state.handoff, "acked": True} if state.handoff else None
    return Outcome(state.but(offers=(Offer(reply.choices[0], "leave"),), handoff=handoff), (reply,))


def ticket_event(state: State, brain: Brain, key: str, at: datetime, name: str = "", ref: str = "") -> Outcome:
    """Tell the resident what happened to their ticket `ref`: claimed by an agent, or closed (back to the bot)."""
    turn = _Turn(brain, state, Incoming("", "", "", at))
    if key == "ticket_closed":
        still_open = state.handoff is not None and state.handoff.get("ref") != ref
        return turn.say(turn.t(key, name=name), turn.menu_offers(), handoff=state.handoff if still_open else None)
    return Outcome(state, (Reply(turn.t(key, name=name)),))


def _chosen(text: str, state: State) -> str | None:
    """The action of the offered choice that the resident picked by number or by label, if any."""
    if text.isascii() and text.isdigit() and 1 <= int(text) <= len(state.offers):  # "¹".isdigit() too
        return state.offers[int(text) - 1].action
    wanted = normalise(text)
    for offer in state.offers:
        if normalise(offer.label) == wanted:
            return offer.action
    return None


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def make_ref(city_code: str, flow_code: str, *parts: str) -> str:
    """A reference residents can read aloud: no 0/O, 1/I/L; derived from its inputs (the core draws no chance)."""
    digest = int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:8], "big")
    chars = []
    for _ in range(REF_LENGTH):
        digest, i = divmod(digest, len(REF_ALPHABET))
        chars.append(REF_ALPHABET[i])
    return f"{city_code}-{flow_code}-{''.join(chars)}"


class _Turn:
    """One message being handled: the language to speak and helpers to compose the outcome."""

    def __init__(self, brain: Brain, state: State, message: Incoming) -> None:
        self.brain = brain
        self.k = brain.knowledge
        self.state = state
        self.message = message
        self.lang = state.lang or state.last_lang or self.k.languages[0]
        self.effects: list[Effect] = []
        self.pre: list[Reply] = []  # replies that go before the answer (a deadline that passed)
        self.notice_offers: list[Offer] = []  # the choices those replies offer
        self.today = message.at.astimezone(ZoneInfo(self.k.city.timezone)).date()

    def over_rate_limit(self) -> bool:
        """Count this message; whether the resident sent more than the policy's limit within RATE_WINDOW (a person
        typing never gets near it; a script or an attacker does)."""
        limit = self.brain.policy.rate_limit
        if limit is None:
            return False
        since = self.message.at - RATE_WINDOW
        recent = [t for t in self.state.recent if (when := _parse_time(t)) and when > since]
        recent.append(self.message.at.isoformat())
        over = len(recent) > limit
        self.state = self.state.but(recent=tuple(recent[-(limit + 1):]), throttled=self.state.throttled and over)
        return over

    # -- composing --------------------------------------------------------------------------------------------

    def t(self, key: str, **values: object) -> str:
        return self.k.text(key, self.lang, **values)

    def say(self, text: str, offers: tuple[Offer, ...] = (), field: Field | None = None,
            **state_changes: object) -> Outcome:
        # Next steps of a deadline notice join this reply's choices, so that one numbering serves both.
        labels = {o.label for o in offers}
        offers = (*offers, *(o for o in self.notice_offers if o.label not in labels))
        state = self.state.but(offers=offers, last_lang=self.lang, **state_changes)
        reply = Reply(text, tuple(o.label for o in offers), field)
        return Outcome(state, (*self.pre, reply), tuple(self.effects))

    def menu_offers(self) -> tuple[Offer, ...]:
        offers = [Offer(self.t("menu_ask"), "ask")]
        offers += [Offer(self.flow_title(f), f"flow:{f}") for f in self.flow_ids()]
        if self.state.cases:
            offers.append(Offer(self.t("menu_status"), "status"))
        offers += [Offer(self.t("menu_contacts"), "contacts"), Offer(self.t("menu_language"), "language"),
                   Offer(self.t("menu_privacy"), "privacy")]
        return tuple(offers)

    def language_offers(self) -> tuple[Offer, ...]:
        return tuple(Offer(self.k.text("language_name", lg), f"lang:{lg}") for lg in self.k.languages)

    def flow_ids(self) -> list[str]:
        return sorted(self.k.flows, key=lambda f: (FLOW_ORDER.index(f) if f in FLOW_ORDER else 99, f))

    def flow_title(self, flow_id: str) -> str:
        flow = self.k.flows.get(flow_id)
        return self.k.pick(flow.title, self.lang) if flow and flow.title else flow_id

    def entry_title(self, entry: Entry) -> str:
        return self.k.pick(entry.title, self.lang)

    # -- actions ----------------------------------------------------------------------------------------------

    def act(self, action: str) -> Outcome:
        kind, _, arg = action.partition(":")
        if kind in FLOW_ACTIONS and self.state.flow is not None:
            return self.flow_action(kind, arg)
        if kind == "faq" and arg in self.k.entries:
            return self.answer(self.k.entries[arg], self.state.why)
        if kind == "flow" and arg in self.k.flows:
            return self.start_flow(arg)
        if kind == "complain" and arg:
            return self.start_flow("complaint", prefill=self.complaint_about(arg))
        if kind == "lang" and arg in self.k.languages:
            self.lang = arg
            return self.after(self.t("language_set", language=self.t("language_name")), self.menu_offers(), lang=arg)
        if kind == "language":
            return self.say(self.t("language_prompt"), self.language_offers())
        if kind == "privacy":
            return self.after(self.t("privacy", retention_days=self.brain.policy.retention_days), self.menu_offers())
        if kind == "ask":
            themes = sorted({e.principle for e in self.k.entries.values()})
            return self.say(self.t("ask_prompt"), tuple(Offer(self.t(f"theme_{p}"), f"theme:{p}") for p in themes))
        if kind == "theme" and arg.isdigit():
            entries = [e for e in self.k.entries.values() if e.principle == int(arg)]
            offers = tuple(Offer(self.entry_title(e), f"faq:{e.id}") for e in entries)
            return self.say(self.t("theme_prompt", theme=self.t(f"theme_{arg}")),
                            (*offers, Offer(self.t("choice_menu"), "menu")))
        if kind == "status":
            return self.status(arg)
        if kind == "contacts":
            return self.after(self.contacts(), self.menu_offers())
        if kind == "letter":
            return self.letter(arg)
        if kind == "none":
            return self.dont_know(None)
        if kind == "leave":
            return self.leave_handoff()
        if kind == "forget":
            if arg != "yes":
                return self.say(self.t("forget_kept"), self.menu_offers())
            # Erase (GDPR Art. 17): the store deletes this conversation; the resident starts afresh.
            self.effects.append(Forget())
            delivered = sum(1 for c in self.state.cases if c.status in ("delivered", "answered"))
            self.state = State(lang=self.state.lang)
            text = self.t("forget_done") + ("\n" + self.t("forget_delivered", count=delivered) if delivered else "")
            return self.say(text, self.menu_offers())
        return self.menu()

    def after(self, text: str, offers: tuple[Offer, ...] = (), **changes: object) -> Outcome:
        """Say `text`; inside a flow, add "Back to your request" and the question the flow waits for."""
        if self.state.flow is None or self.state.flow.get("phase") == "resume":
            return self.say(text, offers, **changes)
        self.pre.append(Reply(text))
        return self.reprompt(self.t("back_to_request"), **changes)

    def menu(self) -> Outcome:
        return self.say(self.t("menu_prompt"), self.menu_offers())

    def command(self, text: str) -> Outcome:
        name, _, arg = text.partition(" ")
        name = name.lower().split("@", 1)[0]  # Telegram appends @botname in groups
        arg = arg.strip()
        if name == "/start" and arg:
            # A deep link (t.me/bot?start=privacy.cctv, or start=flow-data-request) opens that entry or flow.
            payload = arg.split()[0]
            if payload in self.k.entries:
                return self.act(f"faq:{payload}")
            if payload.startswith("flow-") and payload[5:] in self.k.flows:
                return self.act(f"flow:{payload[5:]}")
        if name == "/start":
            city = self.k.pick(self.k.city.name, self.lang)
            greeting = self.t("greeting", city=city)
            if self.state.flow is not None:
                return self.after(greeting)
            return self.say(greeting + "\n\n" + self.t("menu_prompt"), self.menu_offers())
        if name == "/help":
            return self.after(self.t("help"), self.menu_offers())
        if name == "/menu":
            return self.after(self.t("menu_prompt"), self.menu_offers()) if self.state.flow is None else self.say(
                self.t("menu_prompt"), self.menu_offers())
        if name == "/language":
            chosen = self._language_named(arg)
            return self.act(f"lang:{chosen}") if chosen else self.act("language")
        if name == "/cancel":
            if self.state.flow is not None:
                return self.say(self.t("cancelled"), self.menu_offers(), flow=None)
            return self.say(self.t("nothing_to_cancel"), self.menu_offers())
        if name == "/back":
            return self.back()
        if name == "/why":
            return self.why()
        if name == "/privacy":
            return self.act("privacy")
        if name == "/topics":
            return self.act("ask")
        if name in ("/contact", "/contacts"):
            return self.act("contacts")
        if name == "/status":
            return self.status(arg)
        if name == "/letter":
            return self.letter(arg)
        if name == "/extended":
            return self.extended(arg)
        if name == "/bot":
            return self.leave_handoff()
        if name == "/mydata":
            self.effects.append(Export())
            return self.after(self.t("mydata"), self.menu_offers())
        if name == "/forget":
            offers = (Offer(self.t("forget_yes"), "forget:yes"), Offer(self.t("forget_no"), "forget:no"))
            return self.say(self.t("forget_confirm"), offers)
        return self.after(self.t("unknown_command", command=name[:40]), self.menu_offers())

    def _language_named(self, arg: str) -> str | None:
        wanted = normalise(arg)
        if not wanted:
            return None
        for lg in self.k.languages:
            if wanted in (lg, normalise(self.k.text("language_name", lg))):
                return lg
        return None

    def why(self) -> Outcome:
        why = self.state.why
        if why is None or why.entry not in self.k.entries:
            return self.after(self.t("why_nothing"), self.menu_offers())
        entry = self.k.entries[why.entry]
        sources = "\n".join(f"- {s.title}: {s.url}" for s in entry.sources)
        text = self.t(
            "why",
            title=self.entry_title(entry),
            phrasing=why.phrasing,
            score=f"{why.score:.2f}",
            sources=sources,
            reviewed=entry.reviewed.isoformat(),
        )
        return self.after(text, self.state.offers)

    # -- questions --------------------------------------------------------------------------------------------

    def question(self, text: str) -> Outcome:
        match = self.brain.matcher.match(text, prefer=self.state.lang or self.state.last_lang)
        if self.state.lang is None and match.lang:
            self.lang = match.lang
        if match.best is not None:
            target, best = match.best.target, match.best
            if target.entry:
                why = Why(target.entry, best.phrasing, best.score)
                return self.answer(self.k.entries[target.entry], why)
            return self.start_flow(target.flow or "")
        if match.unsure:
            return self.did_you_mean(match)
        if match.outside is not None:
            # A city matter this bot does not handle (knowledge outside/): point to the city's general line. Not
            # a gap in the FAQ, so the question is not kept for staff, and it is not a miss that offers a person.
            return self.say(self.t("outside_topic", contact=self.helpdesk_contact()), self.menu_offers(), why=None)
        return self.dont_know(text)

    def answer(self, entry: Entry, why: Why | None) -> Outcome:
        offers: list[Offer] = []
        if entry.flow in self.k.flows and self.state.flow is None:
            offers.append(Offer(self.flow_title(entry.flow), f"flow:{entry.flow}"))
        for rel in entry.related[:MAX_RELATED]:
            if rel in self.k.entries:
                offers.append(Offer(self.entry_title(self.k.entries[rel]), f"faq:{rel}"))
        offers.append(Offer(self.t("choice_menu"), "menu"))
        return self.after(self.k.pick(entry.answer, self.lang), tuple(offers), why=why, misses=0)

    def did_you_mean(self, match: Match) -> Outcome:
        offers = [Offer(self._label(c.target), c.target.key) for c in match.candidates]
        offers.append(Offer(self.t("none_of_these"), "none"))
        return self.say(self.t("did_you_mean"), tuple(offers))

    def _label(self, target: Target) -> str:
        if target.entry:
            return self.entry_title(self.k.entries[target.entry])
        return self.flow_title(target.flow or "")

    def dont_know(self, text: str | None) -> Outcome:
        if text is not None:
            # Kept for staff to improve the FAQ: text and language only, with contact and ID numbers masked.
            self.effects.append(Unanswered(mask(text[:500]), self.lang))
        misses = self.state.misses + 1
        if (misses >= self.brain.policy.escalate_after and self.brain.policy.helpdesk and "handoff" in self.k.flows
                and self.state.handoff is None):
            # Failing again and again helps nobody: offer a person, with the question already filled in.
            self.pre.append(Reply(self.t("dont_know") + "\n" + self.t("escalate")))
            self.state = self.state.but(misses=0)
            return self.start_flow("handoff", prefill={"question": text[:1000]} if text else None)
        offers = (Offer(self.t("choice_menu"), "menu"), Offer(self.t("choice_person"), "flow:handoff"))
        offers = tuple(o for o in offers if o.action != "flow:handoff" or "handoff" in self.k.flows)
        return self.say(self.t("dont_know"), offers, misses=self.state.misses + 1)

    # -- flows ------------------------------------------------------------------------------------------------

    def start_flow(self, flow_id: str, prefill: dict[str, str] | None = None) -> Outcome:
        flow = self.k.flows[flow_id]
        if flow.ticket and not self.brain.policy.helpdesk:
            # No staff room is connected to this bot: say so, and how to reach the city, instead of a queue that
            # nobody reads.
            return self.say(self.t("no_helpdesk", contact=self.helpdesk_contact()), self.menu_offers())
        if flow.ticket and self.state.handoff is not None:
            return self.say(self.t("already_ticket", ref=self.state.handoff["ref"]),
                            (Offer(self.t("back_to_bot"), "leave"),))
        at = self.message.at.isoformat()
        answers = dict(prefill or {})
        first = flow_engine.next_step(flow, answers)
        while first is not None and flow.steps[first].name in answers:  # prefilled answers are not asked again
            first = flow_engine.next_step(flow, answers, first)
        state = {"id": flow_id, "phase": "step", "at": first, "answers": answers, "history": [],
                 "editing": False, "started": at, "touched": at}
        self.state = self.state.but(flow=state, why=None)
        self.pre.append(Reply(self.t("flow_intro", flow=self.flow_title(flow_id))))
        if first is None:
            return self.summary()
        return self.ask_step()

    def flow_is_valid(self) -> bool:
        fstate = self.state.flow or {}
        flow = self.k.flows.get(fstate.get("id", ""))
        at = fstate.get("at")
        return (flow is not None and fstate.get("phase") in ("step", "summary", "edit", "resume")
                and isinstance(fstate.get("answers"), dict)
                and (at is None or (isinstance(at, int) and 0 <= at < len(flow.steps))))

    def flow(self) -> tuple[Flow, dict[str, Any]]:
        fstate = dict(self.state.flow or {})
        return self.k.flows[fstate["id"]], fstate

    def set_flow(self, fstate: dict[str, Any] | None) -> None:
        if fstate is not None:
            fstate["touched"] = self.message.at.isoformat()
        self.state = self.state.but(flow=fstate)

    def ask_step(self, lead: str | None = None) -> Outcome:
        """Ask the question of the current step, with its choices."""
        flow, fstate = self.flow()
        step = flow.steps[fstate["at"]]
        offers: list[Offer] = []
        if step.type == "choice":
            offers = [Offer(self.k.pick(o.label, self.lang), f"answer:{o.value}") for o in step.options]
        elif step.type in ("yesno", "consent"):
            offers = [Offer(self.t("answer_yes"), "answer:yes"), Offer(self.t("answer_no"), "answer:no")]
        if step.optional:
            offers.append(Offer(self.t("skip"), "skip"))
        text = self.k.pick(step.prompt, self.lang)
        kind = "yesno" if step.type == "consent" else step.type
        return self.say(f"{lead}\n{text}" if lead else text, tuple(offers), Field(step.name, kind))

    def reprompt(self, lead: str, **changes: object) -> Outcome:
        """Show again what the flow waits for (a step, the summary or the edit menu), after `lead`."""
        _, fstate = self.flow()
        if changes:
            self.state = self.state.but(**changes)
        if fstate.get("phase") == "summary":
            return self.summary(lead)
        if fstate.get("phase") == "edit":
            return self.edit_menu(lead)
        return self.ask_step(lead)

    def in_flow(self, text: str) -> Outcome:
        """Text typed while a flow waits for something."""
        flow, fstate = self.flow()
        if fstate.get("phase") == "resume":
            return self.resume_prompt()
        if self._is_stale(fstate):
            fstate["phase"] = "resume"
            self.set_flow(fstate)
            return self.resume_prompt()
        if fstate.get("phase") != "step":
            return self.question_mid_flow(text) or self.reprompt(self.t("choose_one"))
        step = flow.steps[fstate["at"]]
        if step.optional and self._is_word(text, "skip"):
            return self.take(None)  # "Skip" typed rather than tapped, in any of the bot's languages
        looks_like_question = text.rstrip().endswith("?") or len(text.split()) >= QUESTION_WORDS
        if step.type in ("choice", "yesno", "consent"):
            value = self._yes_no(text) if step.type != "choice" else self._option(step, text)
            if value:
                return self.flow_action("answer", value)
            asked = self.question_mid_flow(text) if looks_like_question else None
            return asked or self.ask_step(self.t("invalid_choice"))
        if text.rstrip().endswith("?"):
            asked = self.question_mid_flow(text)
            if asked:
                return asked
        value, problem = flow_engine.validate(step, text)
        if problem:
            asked = self.question_mid_flow(text) if looks_like_question else None
            return asked or self.ask_step(self.t(problem, limit=step.max))
        return self.take(value)

    def _option(self, step: flow_engine.Step, text: str) -> str | None:
        """The option a typed answer names: its value, or words found in exactly one option's label."""
        wanted = normalise(text)
        if not wanted:
            return None
        for option in step.options:
            if wanted == normalise(option.value):
                return option.value
        found = [o.value for o in step.options
                 if any(wanted in normalise(label) for label in o.label.values())]
        return found[0] if len(found) == 1 else None

    def _is_stale(self, fstate: dict[str, Any]) -> bool:
        try:
            touched = datetime.fromisoformat(fstate.get("touched", ""))
        except (TypeError, ValueError):
            return False
        return self.message.at - touched > STALE_FLOW

    def _is_word(self, text: str, key: str) -> bool:
        """Whether `text` is the label of text `key` in any of the bot's languages (typed, not tapped)."""
        return normalise(text) in {normalise(self.k.text(key, lg)) for lg in self.k.languages}

    def _yes_no(self, text: str) -> str | None:
        for value in ("yes", "no"):
            if self._is_word(text, f"answer_{value}"):
                return value
        return None

    def question_mid_flow(self, text: str) -> Outcome | None:
        """A question asked in the middle of a flow: its FAQ answer, then back to the request."""
        if not has_letters(text):
            return None
        match = self.brain.matcher.match(text, prefer=self.lang)
        if match.best is None or not match.best.target.entry:
            return None
        entry = self.k.entries[match.best.target.entry]
        why = Why(entry.id, match.best.phrasing, match.best.score)
        self.pre.append(Reply(self.k.pick(entry.answer, self.lang)))
        return self.reprompt(self.t("back_to_request"), why=why)

    def flow_action(self, kind: str, arg: str) -> Outcome:
        flow, fstate = self.flow()
        if kind == "resume":
            if arg == "drop":
                return self.say(self.t("resume_dropped"), self.menu_offers(), flow=None)
            fstate["phase"] = "summary" if fstate.get("at") is None else "step"
            self.set_flow(fstate)
            return self.reprompt(self.t("back_to_request"))
        if fstate.get("phase") == "resume":
            return self.resume_prompt()
        if kind in ("answer", "skip") and fstate.get("phase") == "step":
            step = flow.steps[fstate["at"]]
            if kind == "skip":
                return self.take(None) if step.optional else self.ask_step(self.t("invalid_choice"))
            if step.type == "consent" and arg == "no":
                # Consent refused: end the flow and keep nothing it collected (GDPR Art. 6(1)(a), 7).
                return self.say(self.t("consent_declined"), self.menu_offers(), flow=None)
            return self.take(arg)
        if kind == "cancel":
            return self.say(self.t("cancelled"), self.menu_offers(), flow=None)
        if kind == "confirm" and fstate.get("phase") == "summary":
            return self.file_case()
        if kind == "edit" and fstate.get("phase") in ("summary", "edit"):
            if not arg:
                fstate["phase"] = "edit"
                self.set_flow(fstate)
                return self.edit_menu()
            index = next((i for i, s in enumerate(flow.steps) if s.name == arg), None)
            if index is None:
                return self.edit_menu()
            fstate.update(phase="step", at=index, editing=True)
            self.set_flow(fstate)
            return self.ask_step()
        return self.reprompt(self.t("choose_one"))

    def take(self, value: str | None) -> Outcome:
        """Keep the answer to the current step and move on (to the summary once nothing is left)."""
        flow, fstate = self.flow()
        step = flow.steps[fstate["at"]]
        answers = dict(fstate["answers"])
        answers[step.name] = value
        # Answers to steps whose condition no longer holds are dropped: keep only what the request needs.
        answers = {s.name: answers[s.name] for s in flow.steps if s.name in answers and
                   flow_engine.applies(s, answers)}
        fstate["answers"] = answers
        fstate["history"] = [*fstate.get("history", []), fstate["at"]]
        after = -1 if fstate.get("editing") else fstate["at"]
        nxt = flow_engine.next_step(flow, answers, after)
        while nxt is not None and fstate.get("editing") and flow.steps[nxt].name in answers:
            nxt = flow_engine.next_step(flow, answers, nxt)
        fstate["at"] = nxt
        if nxt is None:
            fstate.update(phase="summary", editing=False)
            self.set_flow(fstate)
            return self.summary()
        self.set_flow(fstate)
        return self.ask_step()

    def back(self) -> Outcome:
        if self.state.flow is None:
            return self.say(self.t("nothing_to_go_back"), self.menu_offers())
        flow, fstate = self.flow()
        history = list(fstate.get("history", []))
        if not history:
            return self.ask_step(self.t("nothing_to_go_back")) if fstate.get("at") is not None else self.summary()
        previous = history.pop()
        answers = dict(fstate["answers"])
        answers.pop(flow.steps[previous].name, None)
        fstate.update(history=history, at=previous, answers=answers, phase="step", editing=False)
        self.set_flow(fstate)
        return self.ask_step()

    def summary(self, lead: str | None = None) -> Outcome:
        flow, fstate = self.flow()
        lines = [self.t("summary", flow=self.flow_title(flow.id))]
        for step in flow.steps:
            if step.type == "consent" or step.name not in fstate["answers"]:
                continue
            value = self.shown(flow, step, fstate["answers"][step.name], self.lang)
            lines.append(f"- {self.k.pick(step.label, self.lang)}: {value}")
        offers = (Offer(self.t("confirm"), "confirm"), Offer(self.t("edit"), "edit"),
                  Offer(self.t("cancel_request"), "cancel"))
        text = "\n".join(lines)
        return self.say(f"{lead}\n{text}" if lead else text, offers)

    def shown(self, flow: Flow, step: flow_engine.Step, value: Any, lang: str) -> str:
        if step.type == "yesno" and value in ("yes", "no"):
            return self.k.text(f"answer_{value}", lang)
        return flow_engine.shown(flow, step, value, lang, self.k.pick)

    def edit_menu(self, lead: str | None = None) -> Outcome:
        flow, fstate = self.flow()
        offers = tuple(Offer(self.k.pick(s.label, self.lang), f"edit:{s.name}") for s in flow.steps
                       if s.type != "consent" and flow_engine.applies(s, fstate["answers"]))
        text = self.t("edit_which")
        return self.say(f"{lead}\n{text}" if lead else text, offers)

    def resume_prompt(self) -> Outcome:
        flow, _ = self.flow()
        offers = (Offer(self.t("resume_continue"), "resume:continue"), Offer(self.t("resume_drop"), "resume:drop"))
        return self.say(self.t("resume_offer", flow=self.flow_title(flow.id)), offers)

    def file_case(self) -> Outcome:
        """Confirming creates the case, its letter and its delivery, all in this message's transaction."""
        flow, fstate = self.flow()
        if flow.ticket:
            return self.open_ticket(flow, fstate["answers"])
        answers = fstate["answers"]
        city = self.k.city
        ref = make_ref(city.code, flow.code, self.message.channel, self.message.user, self.message.at.isoformat(),
                       flow.id, str(len(self.state.cases)))
        rule = self.k.deadlines.get(flow.deadline) if flow.deadline else None
        deadline = deadlinelib.due(self.today, rule, self.k.calendar) if rule else None
        resident_subject, resident_body = self.render_letter(flow, answers, ref, deadline, rule, self.lang)
        letter = resident_body
        if city.working_language != self.lang:
            _, city_body = self.render_letter(flow, answers, ref, deadline, rule, city.working_language)
            letter = f"{resident_body}\n\n{LETTER_SEPARATOR}\n\n{city_body}"
        case = Case(ref=ref, flow=flow.id, city=city.id, lang=self.lang, filed_at=self.message.at, filed=self.today,
                    answers={k: v for k, v in answers.items()}, subject=resident_subject, letter=letter,
                    resident_letter=resident_body, inbox=flow.inbox, deadline=deadline,
                    rule=rule.id if rule else None)
        self.effects.append(CaseFiled(case))
        info = CaseInfo(ref=ref, flow=flow.id, filed=self.today.isoformat(),
                        deadline=deadline.isoformat() if deadline else None, rule=case.rule,
                        letter=resident_body)
        self.state = self.state.but(cases=(*self.state.cases, info))
        if deadline:
            text = self.t("filed", ref=ref, deadline=deadline.isoformat(), law=self.k.pick(rule.law, self.lang))
        else:
            text = self.t("filed_no_deadline", ref=ref)
        offers = (Offer(self.t("show_letter"), f"letter:{ref}"), Offer(self.t("choice_menu"), "menu"))
        return self.say(text, offers, flow=None)

    def render_letter(self, flow: Flow, answers: dict[str, Any], ref: str, deadline: date | None,
                      rule: deadlinelib.Rule | None, lang: str) -> tuple[str, str]:
        office = self.k.city.offices.get(flow.office or "")
        values = flow_engine.letter_values(flow, answers, lang, self.k.pick)
        for step in flow.steps:
            if step.type == "yesno" and answers.get(step.name) in ("yes", "no"):
                values[step.name] = self.shown(flow, step, answers[step.name], lang)
        values.update(
            ref=ref,
            date=self.today.isoformat(),
            deadline=deadline.isoformat() if deadline else "",
            deadline_rule=self.k.pick(rule.law, lang) if rule else "",
            city=self.k.pick(self.k.city.name, lang),
            office=self.k.pick(office.name, lang) if office and office.name else self.k.pick(self.k.city.name, lang),
            flow=self.k.pick(flow.title, lang),
        )
        if flow.letter is None:
            body = "\n".join(f"{k}: {v}" for k, v in values.items() if v)
            return f"{values['flow']} {ref}", body
        subject = flow_engine.render(self.k.pick(flow.letter.subject, lang), values)
        body = flow_engine.render(self.k.pick(flow.letter.body, lang), values)
        return subject, body.strip()

    # -- the help desk ----------------------------------------------------------------------------------------

    def contacts(self) -> str:
        """The city's offices from city.yaml, in the resident's language: who to contact for what."""
        lines = [self.t("contacts_intro", city=self.k.pick(self.k.city.name, self.lang))]
        for key in OFFICE_ORDER:
            office = self.k.city.offices.get(key)
            if office is None or not office.name:
                continue
            name = self.k.pick(office.name, self.lang)
            details = [d for d in (office.phone, office.email, office.url) if d and d not in name]
            lines.append(f"- {self.t('office_' + key)}: {name}" + (f" ({', '.join(details)})" if details else ""))
        return "\n".join(lines)

    def helpdesk_contact(self) -> str:
        return self.k.helpdesk_contact(self.lang)

    def open_ticket(self, flow: Flow, answers: dict[str, Any]) -> Outcome:
        ref = make_ref(self.k.city.code, flow.code, self.message.channel, self.message.user,
                       self.message.at.isoformat(), flow.id)
        ticket = Ticket(ref=ref, lang=self.lang, opened_at=self.message.at, question=str(answers.get("question", "")),
                        share_transcript=answers.get("share_transcript") == "yes",
                        cases=tuple(c.ref for c in self.state.cases))
        self.effects.append(TicketOpened(ticket))
        hours = self.brain.policy.office_hours
        if hours.is_open(self.message.at):
            when = self.t("helpdesk_open")
        else:
            opening = hours.next_opening(self.message.at)
            when = self.t("helpdesk_closed", opening=opening.strftime("%Y-%m-%d %H:%M") if opening else "")
        offers = (Offer(self.t("back_to_bot"), "leave"),)
        return self.say(self.t("ticket_opened", ref=ref, when=when), offers, flow=None,
                        handoff={"ref": ref, "acked": False})

    def relay(self, text: str) -> Outcome:
        """While a ticket is open, the resident talks to the agent, not to the matcher."""
        handoff = dict(self.state.handoff or {})
        self.effects.append(Relay(handoff["ref"], text))
        if handoff.get("acked"):
            return Outcome(self.state.but(last_lang=self.lang), tuple(self.pre), tuple(self.effects))
        handoff["acked"] = True
        return self.say(self.t("relayed"), (Offer(self.t("back_to_bot"), "leave"),), handoff=handoff)

    def leave_handoff(self) -> Outcome:
        if self.state.handoff is None:
            return self.say(self.t("no_ticket"), self.menu_offers())
        self.effects.append(TicketLeft(self.state.handoff["ref"]))
        return self.say(self.t("left_ticket"), self.menu_offers(), handoff=None)

    # -- cases ------------------------------------------------------------------------------------------------

    def case(self, ref: str) -> CaseInfo | None:
        wanted = ref.strip().upper()
        return next((c for c in self.state.cases if c.ref == wanted), None)

    def status_word(self, case: CaseInfo) -> str:
        if case.status == "answered":
            return self.t("status_answered")
        if case.deadline and case.deadline < self.today.isoformat():
            return self.t("status_overdue")
        if case.extended:
            return self.t("status_extended")
        return self.t("status_delivered" if case.status == "delivered" else "status_submitted")

    def status(self, ref: str) -> Outcome:
        if not self.state.cases:
            return self.after(self.t("status_none"), self.menu_offers())
        if ref:
            case = self.case(ref)
            if case is None:
                return self.after(self.t("no_such_case", ref=ref[:20]), self.menu_offers())
            cases = (case,)
        else:
            cases = self.state.cases[-MAX_STATUS_LINES:]
        lines = [self.t("status_header")] + [
            self.t("status_line", ref=c.ref, flow=self.flow_title(c.flow), status=self.status_word(c),
                   deadline=c.deadline or self.t("no_deadline"))
            for c in cases
        ]
        offers = tuple(Offer(f"{self.t('show_letter')} {c.ref}", f"letter:{c.ref}") for c in cases[-3:])
        return self.after("\n".join(lines), (*offers, Offer(self.t("choice_menu"), "menu")))

    def letter(self, ref: str) -> Outcome:
        case = self.case(ref) if ref else (self.state.cases[-1] if self.state.cases else None)
        if case is None:
            return self.after(self.t("no_such_case", ref=ref[:20]) if ref else self.t("status_none"),
                              self.menu_offers())
        return self.after(case.letter or case.ref, (Offer(self.t("choice_menu"), "menu"),))

    def extended(self, ref: str) -> Outcome:
        """The resident records that the city extended the deadline, so that no reminder fires early."""
        case = self.case(ref) if ref else None
        if case is None:
            return self.after(self.t("no_such_case", ref=ref[:20]), self.menu_offers())
        rule = self.k.deadlines.get(case.rule or "")
        if rule is None or rule.extension is None:
            return self.after(self.t("no_extension", ref=case.ref), self.menu_offers())
        new = deadlinelib.due(date.fromisoformat(case.filed), rule, self.k.calendar, extended=True)
        self.effects.append(CaseChanged(case.ref, extended=True, deadline=new))
        cases = tuple(replace(c, extended=True, deadline=new.isoformat()) if c.ref == case.ref else c
                      for c in self.state.cases)
        self.state = self.state.but(cases=cases)
        return self.after(self.t("extended_ok", ref=case.ref, deadline=new.isoformat()), self.menu_offers())

    def notice_deadlines(self) -> None:
        """Tell the resident, once per case and deadline, that a deadline passed without an answer."""
        cases = list(self.state.cases)
        for i, case in enumerate(cases):
            if (case.deadline and case.status != "answered" and case.deadline < self.today.isoformat()
                    and case.reminded != case.deadline):
                self.effects.append(CaseChanged(case.ref, reminded=case.deadline))
                cases[i] = replace(case, reminded=case.deadline)
                if "complaint" in self.k.flows:
                    self.notice_offers.append(Offer(f"{self.t('overdue_complain')} ({case.ref})",
                                                    f"complain:{case.ref}"))
                self.notice_offers.append(Offer(f"{self.t('show_letter')} ({case.ref})", f"letter:{case.ref}"))
                self.pre.append(Reply(
                    self.t("overdue", ref=case.ref, flow=self.flow_title(case.flow), deadline=case.deadline)))
                self.state = self.state.but(cases=tuple(cases))

    def complaint_about(self, ref: str) -> dict[str, str]:
        """Answers that pre-fill a complaint to the supervisory authority about an unanswered case."""
        case = self.case(ref)
        if case is None:
            return {}
        return {"topic": "privacy" if case.flow == "data-request" else "other",
                "what": self.t("overdue_complaint_text", ref=case.ref, flow=self.flow_title(case.flow),
                               filed=case.filed, deadline=case.deadline or "")}
