"""Match a resident's question to FAQ entries and flows, and know when it does not know.

How a question is scored (the measurements behind each choice are in docs/matching.md):
1. Words are normalised (case, accents, punctuation), mapped through the staff's synonyms and stemmed per
   language (Snowball). A word the knowledge never uses is mended when it can be: a Dutch compound is split into
   known parts (camerabeelden -> camera + beelden), and a typo that is not a real word of the language
   (wordfreq) is mapped to the nearest known stem (rapidfuzz).
2. Each entry (and each flow) is one document: the terms of all its phrasings and its title, a term counted once
   per phrasing that uses it. Documents are ranked with BM25, so a long message whose words are spread over
   several phrasings still finds its entry, and words every entry uses count for little.
3. Confidence is the BM25 score over the square root of the question's evidence mass: the weight of its known
   terms plus that of its unknown words, an unknown word counting more the more common it is in the language
   ("sneakers", "wedding": the question is about something else) and little when rare (a name or a typo).
4. The message is scored in the language(s) it is written in; a phrasing in another language counts less.
5. Below REJECT the bot says it does not know; when runners-up score within MARGIN of the best, it asks
   "Did you mean ...?" rather than pick one of two near-equal answers.
"""

from __future__ import annotations

import gc
import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain

import numpy as np
from rapidfuzz import fuzz, process
from wordfreq import zipf_frequency

from bot.knowledge import Knowledge
from bot.language import Detector, normalise, stem, stop_words

REJECT = 0.5  # confidence below this: "I don't know" (calibrated on dev.jsonl, see docs/matching.md)
RERANK = 8  # how many of the best BM25 candidates are re-scored by their closest phrasing
PHRASE_BONUS = 0.5  # a question identical to a phrasing scores this much more (x1.5)
MARGIN = 0.08  # runners-up within this share of the best are offered as "Did you mean"
EXCLUSIVE = 1.0  # keyness of words no outside subject uses ("data", "privacy") that keeps a question in scope
EXPLAIN_MARGIN = 0.2  # a form ahead of its explaining entry by less than this share answers with the entry
OTHER_LANGUAGE = 0.9  # a phrasing in a language other than the message's counts this much
FUNCTION_WORD = 0.25  # weight factor of function words ("the", "de", "el") in the evidence mass
K1, B = 1.2, 0.75  # BM25's usual term-saturation and length-normalisation constants
FUZZY_MIN_LEN = 5  # words shorter than this are not typo-corrected (too many false friends)
FUZZY_CUTOFF = 84  # rapidfuzz ratio for a typo to count as a known stem
TYPO_ZIPF = 2.5  # a word this common in the language (wordfreq Zipf scale) is a real word, not a typo
COMMON_ZIPF = 4.0  # an unknown word this common counts in full against a match
UNKNOWN_FLOOR = 0.15  # the least an unknown word counts (rare: a name or a typo)
KEYNESS_FULL = 2.0  # a term 10^2 times likelier in the knowledge than in everyday language weighs in full
KEYNESS_FLOOR = 0.4  # the least a known but everyday word weighs
RARE_FREQ = 1e-8  # everyday frequency assumed for a word wordfreq does not know


@contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """Hold the cyclic garbage collector while building: the index allocates millions of objects and no cycles,
    and a collection every few thousand allocations spends a third of the build scanning them. Freed memory is
    unaffected (reference counting); the collector is restored as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@lru_cache(maxsize=100_000)
def commonness(word: str, lang: str) -> float:
    """How common a word is in everyday language, on wordfreq's Zipf scale (0 unknown .. ~7.5 'the')."""
    return zipf_frequency(word, lang, wordlist="small")


@dataclass(frozen=True)
class Target:
    """Something a question can lead to: an FAQ entry or a flow started directly."""

    entry: str | None
    flow: str | None
    outside: str | None = None  # a city matter the bot does not handle (knowledge outside/): decline, politely

    @property
    def key(self) -> str:
        if self.entry:
            return f"faq:{self.entry}"
        return f"flow:{self.flow}" if self.flow else f"outside:{self.outside}"


@dataclass(frozen=True)
class Scored:
    target: Target
    score: float  # confidence: comparable across questions (see REJECT)
    phrasing: str  # the phrasing that shares most with the question, for /why
    lang: str  # the language of that phrasing


@dataclass(frozen=True)
class Match:
    """The matcher's verdict on one question."""

    lang: str | None  # the language the question is written in (None: no word we know)
    best: Scored | None  # what to answer with; None when it does not know or is unsure
    candidates: tuple[Scored, ...]  # the best few, highest first (what "Did you mean" offers when unsure)
    outside: Scored | None = None  # the question is closest to a city matter the bot does not handle

    @property
    def unsure(self) -> bool:
        return self.best is None and len(self.candidates) > 1


class _LanguageIndex:
    """Every entry and flow of one language as a BM25 document, with an inverted index."""

    def __init__(self, lang: str, items: list[tuple[Target, str]], synonyms: Mapping[str, str],
                 prose: list[str] = (), normalised: dict[str, list[str]] | None = None) -> None:
        self.lang = lang
        self.synonyms = {w: c for w, c in synonyms.items() if " " not in w}
        # Phrases first, longest first, so that "wi fi" becomes "wifi" before single words are looked up.
        self.phrases = sorted(((f" {w} ", f" {c} ") for w, c in synonyms.items() if " " in w),
                              key=lambda pc: -len(pc[0]))
        self._phrase_heads = frozenset(phrase.split()[0] for phrase, _ in self.phrases if phrase.split())
        self.stop_words = stop_words(lang)
        # The term of every word the knowledge uses (bounded by the knowledge; a question's new words are not kept).
        self._terms: dict[str, str] = {}
        # Building reads each text two or three times (documents, keyness); split it into words once. The
        # normalised words of most texts come from the caller (`normalised`: shared with the detector).
        self._normalised = normalised if normalised is not None else {}
        texts = list(dict.fromkeys(chain((t for _, t in items), prose)))
        split: dict[str, list[str]] = dict(zip(texts, map(self.words_of, texts), strict=True))
        for word in dict.fromkeys(chain.from_iterable(split.values())):
            self._terms[word] = stem(self.synonyms.get(word, word), self.lang)
        self._normalised = {}
        terms_of = self._terms.__getitem__
        phrasings: dict[Target, list[tuple[str, frozenset[str]]]] = defaultdict(list)
        # Each phrasing with its terms and the sum of their weights (for closest_phrasing), once weights are known.
        self.phrasings: dict[Target, list[tuple[str, frozenset[str], float]]] = {}
        used: dict[Target, list[str]] = defaultdict(list)
        for target, text in items:
            terms = frozenset(map(terms_of, split[text]))
            if terms:
                phrasings[target].append((text, terms))
                used[target].extend(terms)
        # One Counter per document from all its phrasings' terms: the counts and key order of updating it
        # phrasing by phrasing, without a Python-level update call per phrasing.
        docs = {target: Counter(terms) for target, terms in used.items()}
        self.targets = list(docs)
        self.keys = [t.key for t in self.targets]
        self.position = {key: i for i, key in enumerate(self.keys)}
        n = len(self.targets)
        df = Counter(t for doc in docs.values() for t in doc)
        # idf scaled so that a term only one entry uses weighs 1: confidence then means the same for a base of
        # 40 entries or 10,000, and one threshold serves both.
        rarest = math.log(1 + (n - 0.5) / 1.5) if n > 1 else 1.0
        self.idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) / rarest for t, d in df.items()}
        self.keyness: dict[str, float] = {}  # term -> weight factor (1.0 for a term it does not list)
        if KEYNESS_FULL:
            self.keyness = self._keyness([text for _, text in items] + list(prose), split)
            self.idf = {t: w * self.keyness.get(t, 1.0) for t, w in self.idf.items()}
        self.unknown_idf = 1.0  # an unknown word weighs as much as a term only one entry uses
        self.outside_terms = frozenset(t for target, found in phrasings.items() if target.outside
                                       for _, terms in found for t in terms)
        idf = self.idf
        self.phrasings = {target: [(text, terms, sum(map(idf.__getitem__, sorted(terms)))) for text, terms in found]
                          for target, found in phrasings.items()}
        self.vocab = sorted(self.idf)
        self._vocab_set = frozenset(self.vocab)
        avg = sum(sum(doc.values()) for doc in docs.values()) / max(n, 1)
        # Postings in one pair of arrays (numpy): the documents using each term and the term's BM25 weight in
        # each, term after term, with `span` giving each term's slice. Scoring a question is then one vectorised
        # add per term over every document that uses it: exhaustive and exact, in C, at any size of base.
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for i, target in enumerate(self.targets):
            doc = docs[target]
            norm = K1 * (1 - B + B * sum(doc.values()) / avg)
            for t, tf in doc.items():
                found = postings.get(t)
                if found is None:
                    postings[t] = found = ([], [])
                found[0].append(i)
                found[1].append(self.idf[t] * tf * (K1 + 1) / (tf + norm))
        self.span: dict[str, tuple[int, int]] = {}
        start = 0
        for t, (docs_of, _) in postings.items():
            self.span[t] = (start, start + len(docs_of))
            start += len(docs_of)
        self.doc_ids = np.fromiter(chain.from_iterable(d for d, _ in postings.values()), dtype=np.intp, count=start)
        self.doc_weights = np.fromiter(chain.from_iterable(w for _, w in postings.values()), dtype=np.float64,
                                       count=start)

    def _keyness(self, texts: list[str], split: Mapping[str, list[str]] | None = None) -> dict[str, float]:
        """How much likelier each term is in the knowledge than in everyday language, as a weight factor.

        log10(p_knowledge / p_everyday) over the term's surface words (wordfreq): "privacy" or "wifi" count in
        full, "tell", "long" or "time" little, so that a generic word an entry happens to use cannot carry a
        question about something else ("how long is the waiting list for a parking permit").
        """
        counts: Counter = Counter()
        forms: dict[str, set[str]] = defaultdict(set)
        # Count words first (in order of first use), then gather them by term: the same counts and the same
        # insertion order of forms as counting word by word, at a fraction of the calls.
        # Each distinct text is split once and counted once, then once more for each repeat (a phrasing is both a
        # document text and prose): the same counts, and words still come in the order of their first use.
        words_of = self.words_of if split is None else lambda text: split.get(text) or self.words_of(text)
        repeats = Counter(texts)
        words = Counter(chain.from_iterable(map(words_of, repeats)))
        words.update(chain.from_iterable(map(words_of, [t for t, n in repeats.items() for _ in range(n - 1)])))
        for word, c in words.items():
            term = self._term(word)
            counts[term] += c
            forms[term].add(word)
        total = sum(counts.values()) or 1
        out = {}
        for term, c in counts.items():
            # Sorted: a set's order changes from run to run (hash seeds), and so would the float sum's last bit.
            everyday = sum(10 ** (z - 9) if (z := commonness(w, self.lang)) > 0 else RARE_FREQ
                           for w in sorted(forms[term]))
            ratio = math.log10((c / total) / everyday)
            out[term] = min(1.0, max(KEYNESS_FLOOR, ratio / KEYNESS_FULL))
        return out

    def words_of(self, text: str) -> list[str]:
        words = self._normalised.get(text)
        if words is None:
            words = normalise(text).split()
        # A phrase can only occur when its first word does; most texts have none, and skip the replacements.
        if self._phrase_heads.isdisjoint(words):
            return words
        padded = f" {' '.join(words)} "  # the normalised text: single spaces, none at either end
        for phrase, canonical in self.phrases:
            padded = padded.replace(phrase, canonical)
        return padded.split()

    def _term(self, word: str) -> str:
        term = self._terms.get(word)
        return term if term is not None else stem(self.synonyms.get(word, word), self.lang)

    def analyse(self, text: str) -> tuple[frozenset[str], float]:
        """The question's known terms (mending unknown words where it can) and its evidence mass."""
        terms: set[str] = set()
        mass = 0.0
        for word in self.words_of(text):
            term = self._term(word)
            found = (term,) if term in self._vocab_set else self._mend(word)
            if found:
                new = [t for t in found if t not in terms]
                terms.update(new)
                mass += sum(self.idf[t] for t in new) * (FUNCTION_WORD if word in self.stop_words else 1.0)
            else:
                mass += self._unknown(word)
        return frozenset(terms), mass

    def _unknown(self, word: str) -> float:
        """Evidence mass of a word the knowledge never uses: the more common it is in the language, the more it
        says that the question is about something else ("sneakers", "wedding"); a rare one is likely a name or
        a typo and says little."""
        share = min(1.0, max(UNKNOWN_FLOOR, commonness(word, self.lang) / COMMON_ZIPF))
        w = self.unknown_idf * share
        return w * FUNCTION_WORD if word in self.stop_words else w

    @lru_cache(maxsize=50_000)  # noqa: B019 - one index per knowledge load; the cache dies with it
    def _mend(self, word: str) -> tuple[str, ...]:
        """Known terms for an unknown word: a compound's parts, or the nearest stem to a typo."""
        if len(word) >= 8:
            for cut in range(3, len(word) - 3):
                head, tail = self._term(word[:cut]), self._term(word[cut:])
                if head in self._vocab_set and tail in self._vocab_set:
                    return (head, tail)
        term = self._term(word)
        # A real word of the language is not a typo: "block" must not become "lock".
        if len(term) >= FUZZY_MIN_LEN and commonness(word, self.lang) < TYPO_ZIPF:
            found = process.extractOne(term, self.vocab, scorer=fuzz.ratio, score_cutoff=FUZZY_CUTOFF)
            if found:
                return (found[0],)
        return ()

    def sums(self, terms: frozenset[str]) -> np.ndarray:
        """Every target's BM25 sum over the question's terms (0: it shares none; weights are all positive).

        Terms are added in sorted order, so that a sum does not depend on a set's iteration order (hash seeds)."""
        acc = np.zeros(len(self.targets))
        span, ids, weights = self.span, self.doc_ids, self.doc_weights
        for t in sorted(terms):
            found = span.get(t)
            if found is not None:
                a, b = found
                acc[ids[a:b]] += weights[a:b]  # a term's documents are distinct: a plain fancy-index add is exact
        return acc

    def leaders(self, sums: np.ndarray, k: int) -> np.ndarray:
        """The targets whose sums are among the k highest (all of those tied with the k-th), sharing a term."""
        n = len(sums)
        if n > k:
            kth = np.partition(sums, n - k)[n - k]
            return np.flatnonzero((sums >= kth) & (sums > 0))
        return np.flatnonzero(sums > 0)

    def exclusive(self, terms: frozenset[str]) -> float:
        """The weight of the question's terms that only entries and flows use, never an outside subject ("data",
        "privacy"): evidence that a question naming a city matter is still about digital rights."""
        return sum(self.keyness.get(t, 1.0) for t in sorted(terms) if t not in self.outside_terms)

    def closest_phrasing(self, target: Target, terms: frozenset[str]) -> tuple[str, float]:
        """The phrasing of `target` closest to the question's terms, and how close (weighted Jaccard, 0..1).

        Jaccard = shared / (question + phrasing - shared), each a sum of idf weights: the phrasing's sum is kept
        from the build and the question's taken once, so only the shared part is added up per phrasing."""
        best, closeness = "", 0.0
        idf = self.idf
        question = sum(map(idf.__getitem__, sorted(terms)))  # every term of an analysis has an idf
        for text, phrasing, mass in self.phrasings.get(target, ()):
            if terms.isdisjoint(phrasing):
                continue  # closeness 0: never better than the best so far
            # Sums in sorted order: the same floats whatever a set's order (hash seeds), so ties break alike.
            shared = sum(map(idf.__getitem__, sorted(terms & phrasing)))
            union = question + mass - shared
            c = min(1.0, shared / union) if union > 0 else 0.0
            if c > closeness:
                best, closeness = text, c
        return best, closeness


def _in_scope_first(keys: list[str]) -> list[str]:
    """The first RERANK keys that are entries or flows, then the first outside subject (keys in rank order)."""
    in_scope = [k for k in keys if not k.startswith("outside:")][:RERANK]
    return in_scope + [k for k in keys if k.startswith("outside:")][:1]


class Matcher:
    """Ranks targets for a question; build once per knowledge load."""

    def __init__(self, knowledge: Knowledge) -> None:
        with _no_gc_pauses():
            self._build(knowledge)

    def _build(self, knowledge: Knowledge) -> None:
        langs = knowledge.languages
        items: dict[str, list[tuple[Target, str]]] = {lang: [] for lang in langs}
        vocabulary: dict[str, list[str]] = {lang: [] for lang in langs}
        for entry in knowledge.entries.values():
            target = Target(entry.id, None)
            for lang in langs:
                phrasings = entry.phrasings.get(lang, ())
                title = entry.title.get(lang)
                items[lang].extend((target, p) for p in phrasings)
                if title:
                    items[lang].append((target, title))
                vocabulary[lang].extend(phrasings)
                vocabulary[lang].append(entry.answer.get(lang, ""))
        for flow in knowledge.flows.values():
            target = Target(None, flow.id)
            for lang in langs:
                items[lang].extend((target, p) for p in flow.phrasings.get(lang, ()))
                vocabulary[lang].extend(flow.phrasings.get(lang, ()))
        for subject, by_lang in knowledge.outside.items():
            target = Target(None, None, subject)
            for lang in langs:
                items[lang].extend((target, p) for p in by_lang.get(lang, ()))
                vocabulary[lang].extend(by_lang.get(lang, ()))
        for lang in langs:
            vocabulary[lang].extend(knowledge.texts.get(lang, {}).values())
        self.languages = langs
        self.offers = {entry.id: entry.flow for entry in knowledge.entries.values()}
        # Each text is normalised once for the detector and the indexes. The detector gets each language's words
        # as one normalised line: it keeps the set of words, which is the same (normalising is idempotent).
        unique = list(dict.fromkeys(chain.from_iterable(vocabulary.values())))
        split = dict(zip(unique, map(str.split, map(normalise, unique)), strict=True))
        self.detector = Detector.build({
            lang: [" ".join(dict.fromkeys(chain.from_iterable(map(split.__getitem__, texts))))]
            for lang, texts in vocabulary.items()
        })
        self.indexes = {
            lang: _LanguageIndex(lang, items[lang], knowledge.synonyms.get(lang, {}), vocabulary[lang], split)
            for lang in langs
        }
        self.targets = {t.key: t for index in self.indexes.values() for t in index.targets}

    def detect(self, text: str, prefer: str | None = None) -> str | None:
        return self.detector.detect(text, prefer)

    def match(self, text: str, prefer: str | None = None, limit: int = 3) -> Match:
        """Rank targets for `text`; `prefer` is the language to favour when detection is unsure."""
        lang_scores = self.detector.scores(text)
        top = max(lang_scores.values(), default=0.0)
        lang = self.detector.detect(text, prefer)
        if not normalise(text):
            return Match(lang, None, ())
        tried = [lg for lg in self.languages if lg == lang or (top > 0 and lang_scores[lg] >= 0.5 * top)]
        if not tried:
            tried = [prefer if prefer in self.indexes else self.languages[0]]
        analysed = {lg: self.indexes[lg].analyse(text) for lg in tried}
        # Only the RERANK best of each language can be among the RERANK best overall (a target's combined score is
        # its best language's): gather those, then score each of them in every language.
        sums: dict[str, np.ndarray] = {}
        wanted: set[str] = set()
        for lg in tried:
            index, (terms, mass) = self.indexes[lg], analysed[lg]
            if not terms:
                continue
            sums[lg] = found = index.sums(terms)
            keys = index.keys
            # The RERANK best entries and flows, and the best outside subject: subjects must not take their places.
            ranked_here = heapq.nsmallest(2 * RERANK, index.leaders(found, 2 * RERANK).tolist(),
                                          key=lambda i: (-found[i], keys[i]))
            wanted.update(_in_scope_first([keys[i] for i in ranked_here]))
        combined: dict[str, tuple[float, str]] = {}
        for lg, found in sums.items():
            index, (terms, mass) = self.indexes[lg], analysed[lg]
            scale = (K1 + 1) * math.sqrt(mass)
            factor = 1.0 if lg == lang or lang is None else OTHER_LANGUAGE
            for key in wanted:
                i = index.position.get(key)
                if i is None or not found[i]:
                    continue
                score = float(found[i]) / scale * factor
                if score > combined.get(key, (-1.0, ""))[0]:
                    combined[key] = (score, lg)
        order = heapq.nsmallest(2 * RERANK, combined.items(), key=lambda x: (-x[1][0], x[0]))
        ranked = [(key, combined[key]) for key in _in_scope_first([key for key, _ in order])]
        # A question close to one phrasing as a whole is stronger evidence than the same words spread out.
        scored = []
        for key, (score, lg) in ranked:
            index, target = self.indexes[lg], self.targets[key]
            phrasing, closeness = index.closest_phrasing(target, analysed[lg][0])
            scored.append(Scored(target, round(score * (1 + PHRASE_BONUS * closeness), 4), phrasing, lg))
        scored.sort(key=lambda x: (-x.score, x.target.key))
        top = tuple(s for s in scored if not s.target.outside)[:limit]
        outside = next((s for s in scored if s.target.outside), None)
        if outside is not None and self._declines(outside, top[0] if top else None, analysed[outside.lang][0]):
            return Match(lang, None, (), outside=outside)
        if not top or top[0].score < REJECT:
            return Match(lang, None, ())
        first = top[0]
        close = tuple(c for c in top if c.score >= first.score * (1 - MARGIN) and c.score >= REJECT)
        if len(close) > 1:
            if not self._same_request(close):
                return Match(lang, None, close)
            # One request either way: answer with the entry, whose answer explains and whose button starts the
            # flow, rather than start a form the resident may only have asked about.
            first = next(c for c in close if c.target.entry)
        elif first.target.flow:
            # A form ahead of the entry that explains it (and offers it) by less than EXPLAIN_MARGIN: the question
            # may be how it works rather than "start it now"; the entry answers both, its button starts the form.
            explains = [c for c in top[1:] if c.target.entry and self.offers.get(c.target.entry) == first.target.flow
                        and c.score >= max(REJECT, first.score * (1 - EXPLAIN_MARGIN))]
            if explains:
                first = explains[0]
        return Match(lang, first, top)

    def _declines(self, outside: Scored, best: Scored | None, terms: frozenset[str]) -> bool:
        """Whether the question is clearly about a city matter the bot does not handle: say so and point to the
        city, rather than give the nearest digital-rights answer ("how long does a building permit take" is not
        about the deadline of a data request). Within MARGIN of an entry or flow, or when the question also uses
        words only the FAQ uses ("who sees my data when I apply for a building permit"), it answers as usual."""
        if outside.score < REJECT:
            return False
        if best is None or best.score < REJECT:
            return True  # nothing in scope to answer with
        return (best.score < outside.score * (1 - MARGIN)
                and self.indexes[outside.lang].exclusive(terms) < EXCLUSIVE)

    def _same_request(self, close: tuple[Scored, ...]) -> bool:
        """A flow and entries that offer that very flow are one request, not a choice to ask about: starting
        the flow, or answering with the entry and its button, both lead the resident to it."""
        flows = {c.target.flow for c in close if c.target.flow}
        if len(flows) != 1:
            return False
        (flow,) = flows
        return all(c.target.flow or self.offers.get(c.target.entry or "") == flow for c in close)
