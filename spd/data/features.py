"""The planted features of the synthetic story corpus: what each one is and what counts as an occurrence.

Every occurrence the generator plants is recorded (document, split, character span, token span, attributes),
so harvest, autointerp labels and detection/fuzzing/intruder scores can be checked against ground truth.
A feature's `span` says which text the recorded span covers; token spans are the tokens overlapping it.

The list is part of the corpus format: adding or changing a feature bumps `GENERATOR_VERSION`
(spd/data/corpus.py), so a corpus directory built by an older generator is rebuilt rather than reused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class FeatureSpec:
    """One planted feature: a stable id, a category, a one-line label a good autointerp label should match."""

    id: str
    category: str
    description: str
    span: str
    attrs: tuple[str, ...] = ()

    def to_json(self) -> dict:
        d = asdict(self)
        d["attrs"] = list(self.attrs)
        return d


# Settings: each story has exactly one; its topic nouns appear in no story of another setting.
SETTINGS: dict[str, dict] = {
    "forest": {
        "place": "in a quiet forest",
        "nouns": {
            "tree": "trees",
            "fox": "foxes",
            "mushroom": "mushrooms",
            "acorn": "acorns",
            "squirrel": "squirrels",
            "leaf": "leaves",
        },
    },
    "sea": {
        "place": "by the sea",
        "nouns": {
            "crab": "crabs",
            "boat": "boats",
            "shell": "shells",
            "wave": "waves",
            "seagull": "seagulls",
            "pebble": "pebbles",
        },
    },
    "space": {
        "place": "on a space station",
        "nouns": {
            "rocket": "rockets",
            "star": "stars",
            "planet": "planets",
            "comet": "comets",
            "robot": "robots",
            "moon": "moons",
        },
    },
    "kitchen": {
        "place": "in a warm kitchen",
        "nouns": {
            "spoon": "spoons",
            "cookie": "cookies",
            "pot": "pots",
            "cup": "cups",
            "apple": "apples",
            "muffin": "muffins",
        },
    },
    "farm": {
        "place": "on a small farm",
        "nouns": {"cow": "cows", "pig": "pigs", "hen": "hens", "goat": "goats", "tractor": "tractors", "barn": "barns"},
    },
    "city": {
        "place": "in a busy city",
        "nouns": {
            "bus": "buses",
            "car": "cars",
            "shop": "shops",
            "tower": "towers",
            "bike": "bikes",
            "bridge": "bridges",
        },
    },
}

# The word naming the setting itself ("forest", "sea", ...) is a topic word of that setting too.
SETTING_WORDS: dict[str, str] = {
    "forest": "forest",
    "sea": "sea",
    "space": "space",
    "kitchen": "kitchen",
    "farm": "farm",
    "city": "city",
}

NAMES: dict[str, str] = {  # name -> pronoun set key
    "Mia": "she",
    "Leo": "he",
    "Ava": "she",
    "Sam": "he",
    "Lily": "she",
    "Max": "he",
    "Zoe": "she",
    "Ben": "he",
    "Emma": "she",
    "Tom": "he",
    "Nora": "she",
    "Finn": "he",
}
PRONOUNS: dict[str, dict[str, str]] = {  # the forms the stories use: sentence-initial subject, object
    "she": {"Subj": "She", "obj": "her"},
    "he": {"Subj": "He", "obj": "him"},
}

# A context token that is always followed by the same next token (and that next token never appears elsewhere).
FIXED_SUCCESSORS: dict[str, str] = {"Professor": "Quill", "Captain": "Marlow"}

COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# Syllables of invented creature names: several BPE tokens each, so a later repeat is predictable only by
# copying the earlier mention (an induction feature).
SYLLABLES: tuple[str, ...] = (
    "zor",
    "blax",
    "mim",
    "doo",
    "ka",
    "lu",
    "pim",
    "ra",
    "fen",
    "tok",
    "vi",
    "sul",
    "ba",
    "nek",
    "qua",
    "rin",
    "gog",
    "wex",
)
CREATURES: tuple[str, ...] = ("dragon", "bunny", "kitten", "puppy", "bird", "turtle")

ADJECTIVES_CONSONANT: tuple[str, ...] = (
    "big",
    "small",
    "red",
    "blue",
    "green",
    "shiny",
    "tiny",
    "soft",
    "bright",
    "funny",
)
ADJECTIVES_VOWEL: tuple[str, ...] = ("old", "orange", "icy", "enormous", "odd", "ugly")
EMOTIONS: tuple[str, ...] = ("happy", "sad", "scared", "excited", "calm", "proud", "curious", "sleepy")


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec(
        "fixed_successor",
        "bigram",
        "the name that always follows its title: 'Quill' after 'Professor', 'Marlow' after 'Captain'",
        "the successor word (the title is in attrs.context and attrs.context_char_start)",
        ("context", "context_char_start"),
    ),
    *(
        FeatureSpec(
            f"topic_{s}",
            "topic",
            f"a {s}-setting word ({', '.join([*SETTINGS[s]['nouns'], SETTING_WORDS[s]])}, or a plural); "
            f"only in {s} stories",
            "the word",
            ("lemma",),
        )
        for s in SETTINGS
    ),
    FeatureSpec(
        "dialogue",
        "syntax",
        "words spoken inside double quotes",
        "the quoted words, without the quote marks and the closing punctuation",
        ("speaker", "question"),
    ),
    FeatureSpec(
        "number",
        "number",
        "a number written in digits (2 to 99)",
        "the digits",
        ("value",),
    ),
    FeatureSpec(
        "count_word",
        "number",
        "a number word (one..ten) counting the noun that follows",
        "the number word",
        ("value",),
    ),
    FeatureSpec(
        "plural_noun",
        "agreement",
        "a noun in plural form after a count of two or more",
        "the plural noun",
        ("lemma", "count"),
    ),
    FeatureSpec(
        "agreement_verb",
        "agreement",
        "'was' or 'were' agreeing with the counted noun before it (was: one, were: two or more)",
        "the verb",
        ("number",),
    ),
    FeatureSpec(
        "article_an",
        "agreement",
        "the article 'an', which appears exactly before a vowel-initial adjective",
        "the article",
        ("next_word",),
    ),
    FeatureSpec(
        "name",
        "entity",
        "a character's first name (Mia, Leo, Ava, ...)",
        "the name",
        ("name", "gender"),
    ),
    FeatureSpec(
        "pronoun",
        "entity",
        "he/she/him/her referring to the story's hero",
        "the pronoun",
        ("referent", "gender"),
    ),
    FeatureSpec(
        "counting_sequence",
        "sequence",
        "the next number word in a count 'one, two, three, ...' (every item after the first)",
        "the number word",
        ("value",),
    ),
    FeatureSpec(
        "invented_name_intro",
        "induction",
        "the first mention of an invented creature name ('a little dragon called Zorblax')",
        "the whole invented name (several tokens)",
        ("invented",),
    ),
    FeatureSpec(
        "invented_name_repeat",
        "induction",
        "a later mention of the invented name, predictable only by copying the first mention",
        "the whole invented name (several tokens)",
        ("invented", "first_char_start"),
    ),
    FeatureSpec(
        "story_end",
        "structure",
        "the closing 'The end.' of every story, right before the end-of-text token",
        "'The end.'",
    ),
)

FEATURE_IDS: tuple[str, ...] = tuple(f.id for f in FEATURES)


def feature_spec(feature_id: str) -> FeatureSpec:
    for f in FEATURES:
        if f.id == feature_id:
            return f
    raise KeyError(f"unknown feature {feature_id!r}; known: {', '.join(FEATURE_IDS)}")


def feature_words() -> dict[str, list[str]]:
    """For each feature with a closed word list, the surface words (as they appear after a space)."""
    words: dict[str, list[str]] = {
        "fixed_successor": list(FIXED_SUCCESSORS.values()),
        "count_word": list(COUNT_WORDS),
        "counting_sequence": list(COUNT_WORDS[1:]),
        "plural_noun": sorted({p for s in SETTINGS.values() for p in s["nouns"].values()}),
        "agreement_verb": ["was", "were"],
        "article_an": ["an"],
        "name": list(NAMES),
        "pronoun": sorted({w for p in PRONOUNS.values() for w in (p["Subj"], p["obj"])}),
    }
    for s, info in SETTINGS.items():
        words[f"topic_{s}"] = sorted({*info["nouns"], *info["nouns"].values(), SETTING_WORDS[s]})
    return words
