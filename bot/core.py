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

import re
from dataclasses import dataclass

from bot.knowledge import Entry, Knowledge
from bot.language import has_letters, normalise
from bot.matcher import Match, Matcher, Target
from bot.messages import Effect, Incoming, Offer, Outcome, Reply, State, Unanswered, Why

MAX_MESSAGE_CHARS = 4000  # a resident's question fits easily; 100 kB pastes get a kind refusal, not a parse
MAX_RELATED = 2  # follow-up buttons after an answer, besides the flow and the menu
FLOW_ORDER = ("data-request", "complaint", "foi-request", "handoff")  # the menu shows flows in this order
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\ufeff]")


@dataclass(frozen=True)
class Policy:
    """Deployment choices the core needs (defaults are the embedded demo's)."""

    retention_days: int = 30


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
    if len(text) > MAX_MESSAGE_CHARS:
        return turn.say(turn.t("too_long", limit=MAX_MESSAGE_CHARS))
    if not text:
        return turn.say(turn.t("empty"), turn.menu_offers())
    action = _chosen(text, state)
    if action:
        return turn.act(action)
    if text.startswith("/"):
        return turn.command(text)
    if not has_letters(text):
        return turn.say(turn.t("unreadable"), turn.language_offers())
    return turn.question(text)


def _chosen(text: str, state: State) -> str | None:
    """The action of the offered choice that the resident picked by number or by label, if any."""
    if text.isascii() and text.isdigit() and 1 <= int(text) <= len(state.offers):  # "¹".isdigit() too
        return state.offers[int(text) - 1].action
    wanted = normalise(text)
    for offer in state.offers:
        if normalise(offer.label) == wanted:
            return offer.action
    return None


class _Turn:
    """One message being handled: the language to speak and helpers to compose the outcome."""

    def __init__(self, brain: Brain, state: State, message: Incoming) -> None:
        self.brain = brain
        self.k = brain.knowledge
        self.state = state
        self.message = message
        self.lang = state.lang or state.last_lang or self.k.languages[0]
        self.effects: list[Effect] = []

    # -- composing --------------------------------------------------------------------------------------------

    def t(self, key: str, **values: object) -> str:
        return self.k.text(key, self.lang, **values)

    def say(self, text: str, offers: tuple[Offer, ...] = (), **state_changes: object) -> Outcome:
        state = self.state.but(offers=offers, last_lang=self.lang, **state_changes)
        reply = Reply(text, tuple(o.label for o in offers))
        return Outcome(state, (reply,), tuple(self.effects))

    def menu_offers(self) -> tuple[Offer, ...]:
        offers = [Offer(self.t("menu_ask"), "ask")]
        offers += [Offer(self.flow_title(f), f"flow:{f}") for f in self.flow_ids()]
        offers += [Offer(self.t("menu_language"), "language"), Offer(self.t("menu_privacy"), "privacy")]
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
        if kind == "faq" and arg in self.k.entries:
            return self.answer(self.k.entries[arg], self.state.why)
        if kind == "flow" and arg in self.k.flows:
            return self.start_flow(arg)
        if kind == "lang" and arg in self.k.languages:
            self.lang = arg
            return self.say(self.t("language_set", language=self.t("language_name")), self.menu_offers(), lang=arg)
        if kind == "language":
            return self.say(self.t("language_prompt"), self.language_offers())
        if kind == "privacy":
            return self.say(self.t("privacy", retention_days=self.brain.policy.retention_days), self.menu_offers())
        if kind == "ask":
            return self.say(self.t("ask_prompt"))
        if kind == "none":
            return self.dont_know(None)
        return self.menu()

    def menu(self) -> Outcome:
        return self.say(self.t("menu_prompt"), self.menu_offers())

    def command(self, text: str) -> Outcome:
        name, _, arg = text.partition(" ")
        name = name.lower().split("@", 1)[0]  # Telegram appends @botname in groups
        arg = arg.strip()
        if name == "/start":
            city = self.k.pick(self.k.city.name, self.lang)
            return self.say(self.t("greeting", city=city) + "\n\n" + self.t("menu_prompt"), self.menu_offers())
        if name == "/help":
            return self.say(self.t("help"), self.menu_offers())
        if name == "/menu":
            return self.menu()
        if name == "/language":
            chosen = self._language_named(arg)
            return self.act(f"lang:{chosen}") if chosen else self.act("language")
        if name == "/cancel":
            if self.state.flow is not None:
                return self.say(self.t("cancelled"), self.menu_offers(), flow=None)
            return self.say(self.t("nothing_to_cancel"), self.menu_offers())
        if name == "/why":
            return self.why()
        if name == "/privacy":
            return self.act("privacy")
        return self.say(self.t("unknown_command", command=name[:40]), self.menu_offers())

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
            return self.say(self.t("why_nothing"), self.menu_offers())
        entry = self.k.entries[why.entry]
        sources = "\n".join(f"- {s.title}: {s.url}" for s in entry.sources)
        text = self.t(
            "why",
            title=self.entry_title(entry),
            phrasing=why.phrasing,
            score=f"{why.score:.0%}",
            sources=sources,
            reviewed=entry.reviewed.isoformat(),
        )
        return self.say(text, self.state.offers)

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
        return self.dont_know(text)

    def answer(self, entry: Entry, why: Why | None) -> Outcome:
        offers: list[Offer] = []
        if entry.flow in self.k.flows:
            offers.append(Offer(self.flow_title(entry.flow), f"flow:{entry.flow}"))
        for rel in entry.related[:MAX_RELATED]:
            if rel in self.k.entries:
                offers.append(Offer(self.entry_title(self.k.entries[rel]), f"faq:{rel}"))
        offers.append(Offer(self.t("choice_menu"), "menu"))
        return self.say(self.k.pick(entry.answer, self.lang), tuple(offers), why=why, misses=0)

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
            self.effects.append(Unanswered(text[:500], self.lang))
        offers = (Offer(self.t("choice_menu"), "menu"), Offer(self.t("choice_person"), "flow:handoff"))
        offers = tuple(o for o in offers if o.action != "flow:handoff" or "handoff" in self.k.flows)
        return self.say(self.t("dont_know"), offers, misses=self.state.misses + 1)

    def start_flow(self, flow_id: str) -> Outcome:
        # The steps engine (bot.flows) takes over here once flows have steps; until then the flow is announced.
        return self.say(self.flow_title(flow_id), self.menu_offers())
