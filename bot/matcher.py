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
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, reduce
from itertools import chain, compress, repeat
from operator import add, ge

from rapidfuzz import fuzz, process
from wordfreq import zipf_frequency

from bot.knowledge import Knowledge
from bot.language import Detector, normalise, stem, stop_words

REJECT = 0.5  # confidence below this: "I don't know" (calibrated on dev.jsonl, see docs/matching.md)
RERANK = 8  # how many of the best BM25 candidates are re-scored by their closest phrasing
PHRASE_BONUS = 0.5  # a question identical to a phrasing scores this much more (x1.5)
MARGIN = 0.08  # runners-up within this share of the best are offered as "Did you mean"
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
PRUNE_MARGIN = 1e-9  # a bound must be this much (relatively) below the cut to skip documents: floats round


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

    @property
    def key(self) -> str:
        return f"faq:{self.entry}" if self.entry else f"flow:{self.flow}"


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
        self.phrasings: dict[Target, list[tuple[str, frozenset[str]]]] = defaultdict(list)
        used: dict[Target, list[str]] = defaultdict(list)
        for target, text in items:
            terms = frozenset(map(terms_of, split[text]))
            if terms:
                self.phrasings[target].append((text, terms))
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
        if KEYNESS_FULL:
            key = self._keyness([text for _, text in items] + list(prose), split)
            self.idf = {t: w * key.get(t, 1.0) for t, w in self.idf.items()}
        self.unknown_idf = 1.0  # an unknown word weighs as much as a term only one entry uses
        self.vocab = sorted(self.idf)
        self._vocab_set = frozenset(self.vocab)
        avg = sum(sum(doc.values()) for doc in docs.values()) / max(n, 1)
        # Postings (documents and weights of a term, in document order) to find candidates, each term's highest
        # weight to bound what its documents can gain from it, and each document's weights to score a candidate.
        ids: dict[str, array] = defaultdict(lambda: array("i"))
        values: dict[str, array] = defaultdict(lambda: array("d"))
        self.weights: list[dict[str, float]] = []
        for i, target in enumerate(self.targets):
            doc = docs[target]
            norm = K1 * (1 - B + B * sum(doc.values()) / avg)
            weights = {t: self.idf[t] * tf * (K1 + 1) / (tf + norm) for t, tf in doc.items()}
            self.weights.append(weights)
            for t, w in weights.items():
                ids[t].append(i)
                values[t].append(w)
        self.postings: dict[str, array] = dict(ids)
        self.posted: dict[str, array] = dict(values)
        self.ceiling: dict[str, float] = {t: max(ws) for t, ws in values.items()}

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

    def score(self, text: str) -> dict[Target, float]:
        """Confidence for every target sharing a term with the question."""
        terms, mass = self.analyse(text)
        if not terms:
            return {}
        sums: dict[int, float] = defaultdict(float)
        for t in terms:
            for i in self.postings.get(t, ()):
                sums[i] += self.weights[i][t]
        scale = (K1 + 1) * math.sqrt(mass)
        return {self.targets[i]: s / scale for i, s in sums.items()}

    def raw(self, i: int, terms: frozenset[str]) -> float | None:
        """Target i's BM25 sum over the question's terms (None: it shares none), added in the order `score` adds."""
        found = [w for w in map(self.weights[i].get, terms) if w is not None]
        return reduce(add, found) if found else None

    def best(self, terms: frozenset[str], k: int) -> dict[int, float]:
        """Raw sums of a set of targets that surely holds the k best for `terms` (MaxScore pruning).

        Terms join from the highest ceiling down, adding their weights to partial sums. The k-th best sum is at
        least the k-th best exact sum of the targets that have led the partial sums so far (`cut`). Joining stops
        when the ceilings of the terms left add up to less than the cut: a target using only those terms cannot
        reach it. The terms left are then added to the targets still in reach only, dropping each one whose
        partial sum plus the ceilings left stays below the cut; the rest get their exact sum from `raw`
        (Turtle and Flood 1995, "Query evaluation: strategies and optimizations"). All comparisons keep a margin
        for rounding (PRUNE_MARGIN): partial sums add the same weights in another order.

        Why the exact sums of leaders: on a base of near-copies, hundreds of targets tie near the top, and the
        k-th best partial sum stays far below the k-th best sum until nearly every term has joined.
        """
        ceiling = self.ceiling
        order = sorted((t for t in terms if t in self.postings), key=lambda t: (ceiling[t], t))
        partial: dict[int, float] = {}
        exact: dict[int, float] = {}  # the exact sums of every target that was among the k leading partial sums
        leaders: list[int] = []
        cut = -1.0  # every target is in reach until k targets are known
        while order:
            term = order.pop()
            left = sum(ceiling[t] for t in order)
            ids = self.postings[term]
            # partial[i] = partial.get(i, 0.0) + w for each posting, with the loop in C (a third of the time).
            partial.update(zip(ids, list(map(add, map(partial.get, ids, repeat(0.0)), self.posted[term])), strict=True))
            if len(partial) >= k:
                # Once there are leaders, only the targets of this term moved: the new k leaders are among them
                # and the previous leaders.
                moved = set(leaders).union(ids) if leaders else partial
                leaders = heapq.nlargest(k, moved, key=partial.__getitem__)
                for i in leaders:
                    if i not in exact:
                        exact[i] = self.raw(i, terms) or 0.0  # never None: i uses a term
                cut = heapq.nlargest(k, exact.values())[-1] * (1 - PRUNE_MARGIN)
                if left < cut:
                    break
        left = sum(ceiling[t] for t in order)
        reach = {i: p for i, p in partial.items() if p >= cut - left}
        weights = self.weights
        while order and len(reach) > k:
            term = order.pop()
            left = sum(ceiling[t] for t in order)
            # reach[i] + weights[i].get(term, 0.0) for every target in reach, with the loops in C.
            gains = map(dict.get, map(weights.__getitem__, reach), repeat(term), repeat(0.0))
            sums = list(map(add, reach.values(), gains))
            floor = cut - left
            reach = dict(compress(zip(reach, sums, strict=True), map(ge, sums, repeat(floor))))
        return {i: exact[i] if i in exact else self.raw(i, terms) or 0.0 for i in reach}

    def closest_phrasing(self, target: Target, terms: frozenset[str]) -> tuple[str, float]:
        """The phrasing of `target` closest to the question's terms, and how close (weighted Jaccard, 0..1)."""
        best, closeness = "", 0.0
        idf = self.idf
        for text, phrasing in self.phrasings.get(target, ()):
            if terms.isdisjoint(phrasing):
                continue  # closeness 0: never better than the best so far
            # Every term of a question's analysis and of a phrasing has an idf: the lookups of the first version
            # (idf.get with a default) give the same values, added in the same order.
            shared = sum(map(idf.__getitem__, terms & phrasing))
            union = sum(map(idf.__getitem__, terms | phrasing))
            c = shared / union if union else 0.0
            if c > closeness:
                best, closeness = text, c
        return best, closeness


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
        # its best language's): gather those (pruned, bot/matcher.py _LanguageIndex.best), then score each of
        # them in every language exactly as a full pass would.
        sums: dict[str, dict[int, float]] = {}
        wanted: set[str] = set()
        for lg in tried:
            index, (terms, mass) = self.indexes[lg], analysed[lg]
            if not terms:
                continue
            sums[lg] = found = index.best(terms, RERANK)
            scale = (K1 + 1) * math.sqrt(mass)
            factor = 1.0 if lg == lang or lang is None else OTHER_LANGUAGE
            ranked_here = heapq.nsmallest(RERANK, found, key=lambda i: (-(found[i] / scale * factor), index.keys[i]))
            wanted.update(index.keys[i] for i in ranked_here)
        combined: dict[str, tuple[float, str]] = {}
        for lg in tried:
            index, (terms, mass) = self.indexes[lg], analysed[lg]
            if lg not in sums:
                continue
            scale = (K1 + 1) * math.sqrt(mass)
            factor = 1.0 if lg == lang or lang is None else OTHER_LANGUAGE
            found = sums[lg]
            for key in wanted:
                i = index.position.get(key)
                if i is None:
                    continue
                s = found[i] if i in found else index.raw(i, terms)
                if s is None:
                    continue
                score = s / scale
                score *= factor
                if score > combined.get(key, (-1.0, ""))[0]:
                    combined[key] = (score, lg)
        ranked = heapq.nsmallest(RERANK, combined.items(), key=lambda x: (-x[1][0], x[0]))
        # A question close to one phrasing as a whole is stronger evidence than the same words spread out.
        scored = []
        for key, (score, lg) in ranked:
            index, target = self.indexes[lg], self.targets[key]
            phrasing, closeness = index.closest_phrasing(target, analysed[lg][0])
            scored.append(Scored(target, round(score * (1 + PHRASE_BONUS * closeness), 4), phrasing, lg))
        scored.sort(key=lambda x: (-x.score, x.target.key))
        top = tuple(scored[:limit])
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
        return Match(lang, first, top)

    def _same_request(self, close: tuple[Scored, ...]) -> bool:
        """A flow and entries that offer that very flow are one request, not a choice to ask about: starting
        the flow, or answering with the entry and its button, both lead the resident to it."""
        flows = {c.target.flow for c in close if c.target.flow}
        if len(flows) != 1:
            return False
        (flow,) = flows
        return all(c.target.flow or self.offers.get(c.target.entry or "") == flow for c in close)
