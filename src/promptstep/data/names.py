"""Invented two-word person names built from syllables, with a fixed hash rule splitting train from test."""

from __future__ import annotations

import hashlib
import random

from promptstep.errors import InputError

FIRST_STARTS = (
    "Ab", "Al", "Ar", "Bel", "Bran", "Bren", "Cal", "Cas", "Cor", "Dar", "Del", "Ed", "El", "Em",
    "Ev", "Fen", "Gar", "Gil", "Hal", "Is", "Jas", "Jor", "Kel", "Lan", "Lor", "Mal", "Mar", "Mel",
    "Nor", "Ol", "Per", "Quin", "Ros", "Sel", "Tam", "Tor", "Val", "Wil", "Yor", "Zan",
)
FIRST_ENDS = (
    "a", "an", "en", "ia", "ie", "in", "is", "o", "on", "ora",
    "el", "ette", "ius", "yn", "ric", "ine", "ey", "ara", "ian", "us",
)
LAST_STARTS = (
    "Ar", "Ash", "Bel", "Black", "Brad", "Brook", "Cald", "Cart", "Cor", "Cross", "Dal", "Dun",
    "East", "Fair", "Finch", "Gold", "Grey", "Har", "Hart", "Hazel", "Holl", "King", "Lang", "Lock",
    "Marl", "Mill", "Moor", "Mor", "North", "Oak", "Pem", "Red", "Ridge", "Rook", "Sand", "Shel",
    "Stan", "Stone", "Thorn", "Wal", "West", "Whit", "Wins", "Wood", "Wyn",
)
LAST_ENDS = (
    "ley", "ton", "wick", "ford", "by", "den", "more", "worth", "ridge", "field",
    "well", "wood", "lowe", "brook", "dale", "ham", "stead", "mere", "hurst", "combe",
    "ett", "ing", "son", "ard", "vale", "shaw", "cott", "land", "bury", "gate",
)
SPLITS = ("train", "test")


def name_pool_size() -> int:
    """How many distinct full names the generator can produce (before the train/test split)."""
    return len(FIRST_STARTS) * len(FIRST_ENDS) * len(LAST_STARTS) * len(LAST_ENDS)


def name_syllables() -> list[str]:
    """Every syllable names are built from, in a fixed order (material for training a tokenizer)."""
    return [*FIRST_STARTS, *FIRST_ENDS, *LAST_STARTS, *LAST_ENDS]


def random_name(rng: random.Random) -> str:
    """One invented full name such as 'Evan Marlowe', drawn without regard to the split."""
    first = rng.choice(FIRST_STARTS) + rng.choice(FIRST_ENDS)
    last = rng.choice(LAST_STARTS) + rng.choice(LAST_ENDS)
    return f"{first} {last}"


def is_test_key(key: str) -> bool:
    """True iff `key` (a name, an article title) belongs to the test split: SHA-256(key) as an integer is 0 mod 10."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return int(digest, 16) % 10 == 0


def sample_name(rng: random.Random, split: str) -> str:
    """Draw names from `rng` until one belongs to `split` ('train' or 'test'); return it."""
    if split not in SPLITS:
        raise InputError(f"unknown name split '{split}' (choose from {', '.join(SPLITS)})")
    want_test = split == "test"
    while True:
        name = random_name(rng)
        if is_test_key(name) == want_test:
            return name
