"""Seeded synthetic text: random sentences of common English words (about one token per word).

Every workload builds its data from a `random.Random(seed)`, so a run is reproducible and needs
no download; the words are common so the tokenizer keeps them whole.
"""

from __future__ import annotations

import random

_WORD_TEXT = (
    "the of and to in is was for on that with as by at from his her are be this an which or had "
    "not were but have one all their they new more has been also its first two who time would can "
    "after people year only other into most some these over many such years may world state city "
    "made used when then during life part three later between about small under known water house "
    "school name number old early high group system river south north west east area work team "
    "music power line family story market road field church book game light stone court "
    "island ship army land trade paper summer winter garden bridge station window letter table "
    "doctor teacher village forest mountain valley coast harbor castle library museum theater "
    "farmer soldier writer painter student engine animal flower bird horse green blue red black "
    "white long short great little large young good better best strong quiet bright simple "
    "general public local final open clear common modern ancient central major"
)
_NAME_TEXT = (
    "Arden Belmont Carlow Dunmore Elston Fairhaven Glenrock Harwick Ivydale Jarrow Kestrel Lindon "
    "Marlow Norcross Oakhurst Pembury Quenton Ravensby Stanmore Thornbury Upwell Valcourt Westby Yarrow"
)
WORDS = _WORD_TEXT.split()
NAMES = _NAME_TEXT.split()


class TextGen:
    """Random words, sentences and paragraphs from one seeded generator."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def words(self, n: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(n))

    def sentence(self, min_words: int = 6, max_words: int = 14) -> str:
        text = self.words(self.rng.randint(min_words, max_words))
        return text[0].upper() + text[1:] + "."

    def paragraph(self, approx_words: int) -> str:
        """Sentences until about `approx_words` words (never fewer than one sentence)."""
        out: list[str] = []
        count = 0
        while count < approx_words:
            s = self.sentence()
            out.append(s)
            count += s.count(" ") + 1
        return " ".join(out)

    def name(self) -> str:
        return self.rng.choice(NAMES)

    def topic(self) -> str:
        return f"{self.rng.choice(WORDS)} {self.rng.choice(WORDS)}"

    def randint(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def choice(self, items: list) -> object:
        return self.rng.choice(items)
