"""Shared fixtures: the bundled knowledge, a brain per city, and a transcript-style chat with the pure core."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest

from bot import knowledge as knowledgelib
from bot.core import Brain, Policy, handle
from bot.messages import Effect, Incoming, Reply, State

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


@cache
def brain_for(city: str = "amsterdam") -> Brain:
    # As deployed with a help desk (the handoff flow opens tickets); tests of a bot without one say so.
    return Brain.build(knowledgelib.load(city=city), Policy(helpdesk=True))


@pytest.fixture
def brain() -> Brain:
    return brain_for("amsterdam")


@dataclass
class Chat:
    """Talk to the pure core as a resident would: `chat.say("...")` returns the bot's replies (errbot's testbot)."""

    brain: Brain
    user: str = "resident-1"
    channel: str = "console"
    state: State = field(default_factory=State)
    at: datetime = T0
    effects: list[Effect] = field(default_factory=list)

    def say(self, text: str) -> tuple[Reply, ...]:
        self.at += timedelta(seconds=5)
        outcome = handle(Incoming(self.channel, self.user, text, self.at), self.state, self.brain)
        self.state = outcome.state
        self.effects.extend(outcome.effects)
        return outcome.replies

    def text(self, text: str) -> str:
        return "\n".join(r.text for r in self.say(text))


@pytest.fixture
def chat(brain: Brain) -> Chat:
    return Chat(brain)


MINI_TOPICS = """\
- id: filler.topic-1
  principle: 1
  sources:
    - {title: GDPR, url: https://eur-lex.europa.eu/eli/reg/2016/679/oj}
  reviewed: 2026-11-01
- id: filler.topic-2
  principle: 1
  sources:
    - {title: GDPR, url: https://eur-lex.europa.eu/eli/reg/2016/679/oj}
  reviewed: 2026-11-01
- id: filler.topic-3
  principle: 1
  sources:
    - {title: GDPR, url: https://eur-lex.europa.eu/eli/reg/2016/679/oj}
  reviewed: 2026-11-01
- id: filler.topic-4
  principle: 1
  sources:
    - {title: GDPR, url: https://eur-lex.europa.eu/eli/reg/2016/679/oj}
  reviewed: 2026-11-01
- id: privacy.cctv
  principle: 2
  flow: complaint
  related: [privacy.sensors]
  sources:
    - {title: GDPR, url: https://eur-lex.europa.eu/eli/reg/2016/679/oj}
  reviewed: 2026-11-01
- id: privacy.sensors
  principle: 2
  sources:
    - {title: GDPR, url: https://eur-lex.europa.eu/eli/reg/2016/679/oj}
  reviewed: 2026-11-01
"""
MINI_EN = """\
- id: filler.topic-1
  title: Filler 1
  phrasings: [library wifi password, library wifi password question, about library wifi password, library wifi password help, library wifi password info, library wifi password rules, library wifi password where, library wifi password how]
  answer: Filler answer 1.
- id: filler.topic-2
  title: Filler 2
  phrasings: [laptop loan tablet, laptop loan tablet question, about laptop loan tablet, laptop loan tablet help, laptop loan tablet info, laptop loan tablet rules, laptop loan tablet where, laptop loan tablet how]
  answer: Filler answer 2.
- id: filler.topic-3
  title: Filler 3
  phrasings: [open data portal, open data portal question, about open data portal, open data portal help, open data portal info, open data portal rules, open data portal where, open data portal how]
  answer: Filler answer 3.
- id: filler.topic-4
  title: Filler 4
  phrasings: [budget vote proposal, budget vote proposal question, about budget vote proposal, budget vote proposal help, budget vote proposal info, budget vote proposal rules, budget vote proposal where, budget vote proposal how]
  answer: Filler answer 4.
- id: privacy.cctv
  title: Cameras in the street
  phrasings: [cameras in the street, who watches the cctv, camera footage of me, street camera,
              cctv near my house, security cameras, camera recording me, box on the lamp pole]
  answer: Cameras answer.
- id: privacy.sensors
  title: Sensors in the street
  phrasings: [sensors in the street, wifi tracking sensors, smart city sensors, sensor register,
              devices counting people, air quality sensors, sensor data, box on the lamp pole]
  answer: Sensors answer.
"""
MINI_FLOW = """\
title: {en: File a complaint}
phrasings: {en: [file a complaint, i want to complain officially]}
steps:
  - name: what
    type: text
    label: {en: What happened}
    prompt: {en: "What happened?"}
"""
MINI_CITY = """\
id: demo
code: DEM
name: {en: Demoville}
languages: [en]
working_language: en
timezone: Europe/Amsterdam
"""


def make_knowledge(root):
    """Write a small, valid knowledge folder at `root` (tests break copies of it on purpose)."""
    from pathlib import Path

    root = Path(root)
    for rel, text in {
        "common/faq/topics.yaml": MINI_TOPICS,
        "common/faq/en.yaml": MINI_EN,
        "common/flows/complaint.yaml": MINI_FLOW,
        "common/texts/en.yaml": (knowledgelib.BUNDLED / "common/texts/en.yaml").read_text(encoding="utf-8"),
        "cities/demo/city.yaml": MINI_CITY,
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def mini(tmp_path):
    return make_knowledge(tmp_path / "knowledge")
