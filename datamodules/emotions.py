"""Emotion labels (Playmate's emotion control) and the synthetic corpus's emotional faces.

A clip carries one of `EMOTIONS` (the tuple's order is the label index, as the shards store it) at an
intensity level: MEAD's 1 (weak) to 3 (strong), neutral at level 1 only. Clips of corpora without
emotion labels carry `UNKNOWN` at level 0.

The synthetic corpus shows an emotion as a lasting offset of the expression coefficients, written per
emotion in the procedural model's named components (conf/data/synthetic.yaml `emotion_offsets`) and
scaled by the level's gain (`emotion_level_gains`); the audio-driven mouth plays on top of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

EMOTIONS = ("neutral", "angry", "disgusted", "contempt", "fear", "happy", "sad", "surprised")
UNKNOWN = -1
NEUTRAL = EMOTIONS.index("neutral")
_LEVEL = re.compile(r"^level_?(\d+)$")


def parse_emotion(name: str) -> int:
    """An emotion's name as MEAD spells it (any case) -> its index in EMOTIONS; ValueError for a name that
    is none of them (a mislabelled clip must not pass as another emotion)."""
    key = name.strip().lower()
    if key not in EMOTIONS:
        raise ValueError(f"unknown emotion {name!r}: one of {EMOTIONS} expected")
    return EMOTIONS.index(key)


def parse_level(name: str) -> int:
    """MEAD's intensity folder name (`level_2`) -> 2."""
    match = _LEVEL.match(name.strip().lower())
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"{name!r} is not an intensity level folder (level_1, level_2, ...)")
    return int(match.group(1))


def offset_table(
    offsets: Mapping[str, Mapping[str, float]], names: Sequence[str], num_coeffs: int = 64
) -> np.ndarray:
    """(len(EMOTIONS), num_coeffs) expression offsets at full intensity from the config's table
    {emotion: {component name: coefficient}}; emotions it leaves out get none. Neutral is the face at
    rest: an offset for it is an error, as is an unknown emotion or component name."""
    table = np.zeros((len(EMOTIONS), num_coeffs), dtype=np.float32)
    for emotion, components in offsets.items():
        index = parse_emotion(emotion)
        for component, value in (components or {}).items():
            if component not in names:
                raise ValueError(
                    f"emotion_offsets.{emotion}: unknown component {component!r} (one of {names})"
                )
            table[index, list(names).index(component)] = value
    if np.any(table[NEUTRAL]):
        raise ValueError("emotion_offsets.neutral must be empty: neutral is the face at rest")
    return table


def emotion_offset(table: np.ndarray, emotion: int, level: int, level_gains: Sequence[float]) -> np.ndarray:
    """The lasting expression offset of `emotion` at `level` (1-based): its row of `offset_table` times
    the level's gain."""
    if not 1 <= level <= len(level_gains):
        raise ValueError(f"level {level} outside 1..{len(level_gains)} (emotion_level_gains)")
    return (table[emotion] * np.float32(level_gains[level - 1])).astype(np.float32)
