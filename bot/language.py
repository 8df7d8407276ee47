"""Words of a message: normalising, stemming per language, and telling which language a message is in.

Detection uses the knowledge's own vocabulary plus each language's function words (from the `stop-words`
package), not a statistical model: py3langid and lingua are as accurate on our dev set but cost 120-160 MB of
memory, more than the rest of the bot (see ../shared/notes/libraries.md and docs/matching.md). The resident's
`/language` choice always wins over detection.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer
from stop_words import get_stop_words

STEMMERS = {"en": "english", "nl": "dutch", "es": "spanish", "ca": "catalan"}
_NON_WORD = re.compile(r"[^0-9a-z]+")
_MIDDLE_DOT = re.compile(r"l[·.]l")  # Catalan 'l·l' (sol·licitud), often typed 'l.l' or 'll'
MARKS_CACHED = 4096  # characters whose "is a combining mark" answer is kept (bounded: residents type any)


class _Marks(dict):
    """A `str.translate` table that deletes combining marks, deciding each character once (up to a bound)."""

    def __missing__(self, code: int) -> int | None:
        kept = None if unicodedata.combining(chr(code)) else code
        if len(self) < MARKS_CACHED:
            self[code] = kept
        return kept


_MARKS = _Marks()


def normalise(text: str) -> str:
    """Lowercase, strip accents and punctuation, fold spacing.

    'Sol·licitud d’Informació!' -> 'sollicitud d informacio'. ASCII text is unchanged by NFKC and NFKD and has no
    combining marks, so only case, the Catalan dot and punctuation remain to do (measured: docs/performance.md).
    """
    if text.isascii():
        return _NON_WORD.sub(" ", _MIDDLE_DOT.sub("ll", text.lower())).strip()
    text = _MIDDLE_DOT.sub("ll", unicodedata.normalize("NFKC", text).lower())
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKD", text).translate(_MARKS)).strip()


def words(text: str) -> list[str]:
    return normalise(text).split()


def has_letters(text: str) -> bool:
    """Whether a message holds any word we could read (not only emoji, symbols or digits)."""
    return any(c.isalpha() for c in normalise(text))


@lru_cache(maxsize=8)
def stop_words(lang: str) -> frozenset[str]:
    try:
        return frozenset(normalise(w) for w in get_stop_words(lang))
    except Exception:  # the package raises its own error for an unknown language: then we have none
        return frozenset()


@lru_cache(maxsize=8)
def _stemmer(lang: str):  # noqa: ANN202 - snowballstemmer has no types
    name = STEMMERS.get(lang)
    return snowballstemmer.stemmer(name) if name else None


@lru_cache(maxsize=200_000)
def stem(word: str, lang: str) -> str:
    """Stem one normalised word; languages without a stemmer keep the word."""
    stemmer = _stemmer(lang)
    return stemmer.stemWord(word) if stemmer else word


@dataclass(frozen=True)
class Detector:
    """Tell the language of a message from the words each language is known to use."""

    vocab: Mapping[str, frozenset[str]]  # lang -> normalised words seen in that language

    @classmethod
    def build(cls, texts: Mapping[str, Iterable[str]]) -> Detector:
        vocab = {}
        for lang, items in texts.items():
            seen: set[str] = set(stop_words(lang))
            for item in items:
                seen.update(words(item))
            vocab[lang] = frozenset(seen)
        return cls(vocab)

    def scores(self, text: str) -> dict[str, float]:
        """Score each language: a word counts more when fewer languages use it, twice when it is a function word."""
        tokens = words(text)
        out = dict.fromkeys(self.vocab, 0.0)
        for token in tokens:
            holders = [lang for lang, v in self.vocab.items() if token in v]
            if not holders:
                continue
            for lang in holders:
                weight = 1.0 / len(holders)
                if token in stop_words(lang):
                    weight *= 2
                out[lang] += weight
        return out

    def detect(self, text: str, prefer: str | None = None) -> str | None:
        """Return the most likely language, `prefer` on a tie, or None when no word is known at all."""
        scores = self.scores(text)
        best = max(scores.values(), default=0.0)
        if best <= 0:
            return None
        if prefer in scores and scores[prefer] >= best:
            return prefer
        return max(scores, key=lambda lang: scores[lang])
