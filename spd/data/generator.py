"""Deterministic story generator with planted features (see spd/data/features.py for the list).

Document `i` of a corpus with seed `s` is drawn from its own `random.Random(f"{s}:{i}")`, so a corpus of N
documents is a prefix of one of N + M documents with the same seed, and any document can be regenerated alone.
Python's string seeding (sha512) and `random()`/`randrange` are stable across CPython 3 releases; we use no
other RNG method. Text is plain ASCII, so character offsets are byte offsets.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from spd.data.features import (
    ADJECTIVES_CONSONANT,
    ADJECTIVES_VOWEL,
    COUNT_WORDS,
    CREATURES,
    EMOTIONS,
    FIXED_SUCCESSORS,
    NAMES,
    PRONOUNS,
    SETTING_WORDS,
    SETTINGS,
    SYLLABLES,
)


@dataclass
class Occurrence:
    """One planted feature occurrence inside one document (character span [char_start, char_end))."""

    feature: str
    char_start: int
    char_end: int
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Document:
    doc_id: int
    split: str
    setting: str
    hero: str
    text: str
    occurrences: list[Occurrence]


class _Rng:
    """The only RNG calls the generator makes (all stable across Python versions)."""

    def __init__(self, seed: str) -> None:
        self._r = random.Random(seed)

    def random(self) -> float:
        return self._r.random()

    def below(self, n: int) -> int:
        return self._r.randrange(n)

    def pick(self, seq):
        return seq[self._r.randrange(len(seq))]

    def weighted(self, items: list[tuple[str, float]]) -> str:
        total = sum(w for _, w in items)
        x = self._r.random() * total
        for name, w in items:
            x -= w
            if x < 0:
                return name
        return items[-1][0]


class _Builder:
    """Appends text and records feature spans by character offset as it goes."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n = 0
        self.occ: list[Occurrence] = []

    def text(self, s: str) -> None:
        self.parts.append(s)
        self.n += len(s)

    def mark(self, s: str, feature: str, **attrs: Any) -> int:
        """Append `s` as an occurrence of `feature`; returns its start offset."""
        start = self.n
        self.text(s)
        self.occ.append(Occurrence(feature, start, self.n, attrs))
        return start

    def span(self, feature: str, start: int, end: int, **attrs: Any) -> None:
        self.occ.append(Occurrence(feature, start, end, attrs))

    def build(self) -> tuple[str, list[Occurrence]]:
        text = "".join(self.parts)
        occ = sorted(self.occ, key=lambda o: (o.char_start, o.char_end, o.feature))
        return text, occ


class _Story:
    """State of one story while it is generated; each method appends one sentence (leading space included)."""

    def __init__(self, rng: _Rng, setting: str) -> None:
        self.r = rng
        self.b = _Builder()
        self.setting = setting
        self.nouns: dict[str, str] = SETTINGS[setting]["nouns"]
        self.lemmas = list(self.nouns)
        names = list(NAMES)
        self.hero = rng.pick(names)
        self.friend = rng.pick([n for n in names if n != self.hero])
        self.invented: str | None = None
        self.invented_start: int | None = None

    # -- word helpers ---------------------------------------------------------------------------------
    def topic(self, lemma: str, plural: bool = False) -> None:
        self.b.mark(self.nouns[lemma] if plural else lemma, f"topic_{self.setting}", lemma=lemma)

    def name(self, who: str) -> None:
        self.b.mark(who, "name", name=who, gender=NAMES[who])

    def pronoun(self, form: str) -> None:
        gender = NAMES[self.hero]
        self.b.mark(PRONOUNS[gender][form], "pronoun", referent=self.hero, gender=gender)

    def adjective(self) -> str:
        return self.r.pick(ADJECTIVES_CONSONANT + ADJECTIVES_VOWEL)

    def article_adjective(self) -> None:
        """'a big' or 'an old': the article agrees with the next word's first sound."""
        adj = self.adjective()
        if adj[0] in "aeiou":
            self.b.mark("an", "article_an", next_word=adj)
        else:
            self.b.text("a")
        self.b.text(f" {adj}")

    def noun2(self, exclude: str) -> str:
        return self.r.pick([n for n in self.lemmas if n != exclude])

    def subject(self) -> None:
        """The hero by name or pronoun (sentence-initial)."""
        if self.r.random() < 0.5:
            self.name(self.hero)
        else:
            self.pronoun("Subj")

    def invented_name(self) -> str:
        n = 2 + self.r.below(2)
        word = "".join(self.r.pick(SYLLABLES) for _ in range(n))
        return word.capitalize()

    # -- sentences ------------------------------------------------------------------------------------
    def opening(self) -> None:
        self.b.text("Once upon a time, ")
        self.name(self.hero)
        place = SETTINGS[self.setting]["place"]
        word = SETTING_WORDS[self.setting]
        head, _, tail = place.rpartition(word)
        self.b.text(f" lived {head}")
        self.b.mark(word, f"topic_{self.setting}", lemma=word)
        self.b.text(f"{tail}.")

    def introduce_invented(self) -> None:
        self.invented = self.invented_name()
        self.b.text(" ")
        self.subject()
        self.b.text(f" met a little {self.r.pick(CREATURES)} called ")
        self.invented_start = self.b.mark(self.invented, "invented_name_intro", invented=self.invented)
        self.b.text(".")

    def repeat_invented(self) -> None:
        assert self.invented is not None
        kind = self.r.below(3)
        self.b.text(" ")
        if kind == 0:
            self.b.mark(
                self.invented, "invented_name_repeat", invented=self.invented, first_char_start=self.invented_start
            )
            self.b.text(" laughed and ran to the ")
            self.topic(self.r.pick(self.lemmas))
            self.b.text(".")
        elif kind == 1:
            self.name(self.hero)
            self.b.text(" and ")
            self.b.mark(
                self.invented, "invented_name_repeat", invented=self.invented, first_char_start=self.invented_start
            )
            self.b.text(" played with the ")
            self.topic(self.r.pick(self.lemmas), plural=True)
            self.b.text(".")
        else:
            self.b.text("Then ")
            self.b.mark(
                self.invented, "invented_name_repeat", invented=self.invented, first_char_start=self.invented_start
            )
            self.b.text(" fell asleep.")

    def see(self) -> None:
        lemma = self.r.pick(self.lemmas)
        self.b.text(" ")
        self.subject()
        self.b.text(" saw ")
        self.article_adjective()
        self.b.text(" ")
        self.topic(lemma)
        self.b.text(" near the ")
        self.topic(self.noun2(lemma))
        self.b.text(".")

    def count_found(self) -> None:
        """'Mia found three tiny foxes.' / 'Mia found one tiny fox.'"""
        lemma = self.r.pick(self.lemmas)
        k = 1 + self.r.below(len(COUNT_WORDS))
        self.b.text(" ")
        self.name(self.hero)
        self.b.text(" found ")
        self.b.mark(COUNT_WORDS[k - 1], "count_word", value=k)
        self.b.text(f" {self.adjective()} ")
        if k == 1:
            self.topic(lemma)
        else:
            start = self.b.n
            self.topic(lemma, plural=True)
            self.b.span("plural_noun", start, self.b.n, lemma=lemma, count=k)
        self.b.text(".")

    def agreement(self) -> None:
        """Subject and verb agree across an attractor of the other number:
        'The three foxes by the tree were sleepy.' / 'The old fox by the trees was sleepy.'"""
        lemma = self.r.pick(self.lemmas)
        other = self.noun2(lemma)
        plural = self.r.random() < 0.5
        self.b.text(" The ")
        if plural:
            k = 2 + self.r.below(len(COUNT_WORDS) - 1)
            self.b.mark(COUNT_WORDS[k - 1], "count_word", value=k)
            self.b.text(" ")
            start = self.b.n
            self.topic(lemma, plural=True)
            self.b.span("plural_noun", start, self.b.n, lemma=lemma, count=k)
            self.b.text(" by the ")
            self.topic(other)
        else:
            self.b.text(f"{self.adjective()} ")
            self.topic(lemma)
            self.b.text(" by the ")
            self.topic(other, plural=True)
        self.b.text(" ")
        self.b.mark("were" if plural else "was", "agreement_verb", number="plural" if plural else "singular")
        self.b.text(f" {self.r.pick(EMOTIONS)}.")

    def digits(self) -> None:
        lemma = self.r.pick(self.lemmas)
        value = 2 + self.r.below(98)
        self.b.text(" ")
        if self.r.random() < 0.5:
            self.subject()
            self.b.text(" saw ")
            self.b.mark(str(value), "number", value=value)
            self.b.text(" ")
            self.topic(lemma, plural=True)
            self.b.text(" that day.")
        else:
            self.b.text("It took ")
            self.b.mark(str(value), "number", value=value)
            self.b.text(" minutes to reach the ")
            self.topic(lemma)
            self.b.text(".")

    def dialogue(self) -> None:
        speaker = self.hero if self.r.random() < 0.6 else self.friend
        lemma = self.r.pick(self.lemmas)
        question = self.r.random() < 0.35
        if question:
            words = self.r.pick(["Can we see the {} again", "Where did the {} go", "Is the {} big"])
            end = "?"
        else:
            words = self.r.pick(["I love the {}", "Look at the {}", "Let us go to the {}", "The {} is mine"])
            end = self.r.pick([",", "!"]) if self.r.random() < 0.5 else ","
        before, _, after = words.partition("{}")
        speaker_first = self.r.random() < 0.4
        self.b.text(" ")
        if speaker_first:
            self.name(speaker)
            self.b.text(" asked, " if question else " said, ")
            end = "?" if question else "."
        self.b.text('"')
        start = self.b.n
        self.b.text(before)
        self.topic(lemma)
        self.b.text(after)
        self.b.span("dialogue", start, self.b.n, speaker=speaker, question=question)
        self.b.text(f'{end}"')
        if not speaker_first:
            self.b.text(" asked " if question else " said ")
            self.name(speaker)
            self.b.text(".")

    def successor(self) -> None:
        context = self.r.pick(list(FIXED_SUCCESSORS))
        kind = self.r.below(3)
        self.b.text(" ")
        if kind == 0:
            self.name(self.hero)
            self.b.text(" visited ")
        elif kind == 1:
            self.b.text("One day ")
        else:
            self.b.text("Later ")
        ctx_start = self.b.n
        self.b.text(context + " ")
        self.b.mark(FIXED_SUCCESSORS[context], "fixed_successor", context=context, context_char_start=ctx_start)
        if kind == 0:
            self.b.text(", who knew a lot about ")
            self.topic(self.r.pick(self.lemmas), plural=True)
            self.b.text(".")
        elif kind == 1:
            self.b.text(" came to the ")
            self.topic(self.r.pick(self.lemmas))
            self.b.text(".")
        else:
            self.b.text(" smiled at ")
            self.pronoun("obj")
            self.b.text(".")

    def counting(self) -> None:
        n = 3 + self.r.below(6)
        self.b.text(" ")
        self.subject()
        self.b.text(" counted: one")
        for k in range(2, n + 1):
            self.b.text(", ")
            self.b.mark(COUNT_WORDS[k - 1], "counting_sequence", value=k)
        self.b.text(".")

    def feeling(self) -> None:
        self.b.text(" ")
        self.subject()
        self.b.text(f" felt {self.r.pick(EMOTIONS)}.")

    def friend_visit(self) -> None:
        self.b.text(" ")
        self.name(self.friend)
        self.b.text(" came to play with ")
        self.pronoun("obj")
        self.b.text(" by the ")
        self.topic(self.r.pick(self.lemmas))
        self.b.text(".")

    def ending(self) -> None:
        self.b.text(" ")
        self.b.mark("The end.", "story_end")


_BODY = [
    ("see", 3.0),
    ("count_found", 2.0),
    ("agreement", 2.0),
    ("digits", 1.5),
    ("dialogue", 2.5),
    ("successor", 1.0),
    ("counting", 1.0),
    ("feeling", 1.5),
    ("friend_visit", 1.0),
]


def generate_document(seed: int, doc_id: int, val_fraction: float, min_sentences: int, max_sentences: int) -> Document:
    """Document `doc_id` of the corpus with `seed` (independent of every other document)."""
    r = _Rng(f"spd-stories:{seed}:{doc_id}")
    split = "val" if r.random() < val_fraction else "train"
    settings = list(SETTINGS)
    story = _Story(r, r.pick(settings))
    story.opening()
    n_body = min_sentences + r.below(max_sentences - min_sentences + 1)
    has_invented = r.random() < 0.6
    intro_at = r.below(2) if has_invented else -1
    for i in range(n_body):
        if i == intro_at:
            story.introduce_invented()
        elif story.invented is not None and r.random() < 0.25:
            story.repeat_invented()
        else:
            getattr(story, r.weighted(_BODY))()
    if story.invented is not None and r.random() < 0.7:
        story.repeat_invented()
    story.ending()
    text, occ = story.b.build()
    return Document(doc_id, split, story.setting, story.hero, text, occ)
