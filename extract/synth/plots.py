"""Plot texts for ``mmimdb-like``: the text bits written as words a sentence encoder can read.

Each of the 6 text bits is a theme (the genre it copies: Adventure, Horror, Documentary, Mystery,
Sci-Fi, Fantasy). A plot holds one sentence per set bit, drawn from that theme's variants, and one
or two neutral sentences that name no theme, in random order; a name varies the wording. The
sentences are short so that every plot fits the 64 word pieces the demo gives the shipped MiniLM
model (``--input text=tokens=64``; the worst case is checked in the tests).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

THEMES = (
    ("{name} leads explorers to a lost jungle treasure.",
     "{name} sails the ocean on a daring quest.",
     "{name} climbs a mountain to find an ancient map."),
    ("A ghost haunts the house of {name}.",
     "A bloody demon hunts {name} at midnight.",
     "Zombies crawl from the graves around {name}."),
    ("Real interviews tell the life of {name}.",
     "This documentary films {name} for a year.",
     "Witnesses and archive footage explain {name}."),
    ("Detective {name} finds clues to a murder.",
     "{name} investigates a missing girl.",
     "A detective questions {name} about a crime."),
    ("{name} flies a spaceship to an alien planet.",
     "Robots fight {name} on a space station.",
     "{name} travels through time in a machine."),
    ("A wizard teaches {name} magic spells.",
     "{name} rides a dragon to an elf castle.",
     "A fairy gives {name} an enchanted sword."),
)
NEUTRAL = (
    "{name} lives in a small town.",
    "The story spans one year.",
    "{name} works at a bakery.",
    "Everything changes on a Tuesday.",
    "{name} has an old friend.",
    "The family meets every Sunday.",
)
NAMES = ("Anna", "Ben", "Clara", "David", "Elena", "Frank", "Grace", "Hugo", "Iris", "Jonas", "Kate", "Leo")


def plot_text(rng: np.random.Generator, bits: np.ndarray) -> str:
    """One plot: a sentence per set bit and one or two neutral ones, shuffled."""
    name = str(rng.choice(NAMES))
    sentences = [str(rng.choice(THEMES[k])) for k in np.flatnonzero(bits)]
    neutral = int(rng.integers(1, 3)) if len(sentences) < len(THEMES) else 1  # all six themes: one, to fit
    sentences += [str(s) for s in rng.choice(NEUTRAL, size=neutral, replace=False)]
    order = rng.permutation(len(sentences))
    return " ".join(sentences[i].format(name=name) for i in order)


def write_plot(path: Path, rng: np.random.Generator, bits: np.ndarray) -> None:
    """The plot as a UTF-8 ``.txt`` file, as a scraped plot summary would be."""
    path.write_text(plot_text(rng, bits) + "\n", encoding="utf-8")
