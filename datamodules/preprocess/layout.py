"""Where the clips of each corpus are, and which split each belongs to.

- VoxCeleb1 / VoxCeleb2 / synthetic: `<root>/**/idXXXXX/<video-id>/<clip>.mp4`; clip id
  `idXXXXX/<video-id>/<clip>`, identity `idXXXXX`. The split comes from a `splits.json`
  (identity -> split) at the root when there is one (the synthetic corpus writes it), else from a
  `dev`/`train`, `val` or `test` folder in the path, else from a stable hash of the identity
  (splits are always by identity). Synthetic clips carry the emotion labels of the ground-truth npz
  beside them; VoxCeleb's are UNKNOWN.
- MEAD: `<root>/<id>/video/front/<emotion>/level_<n>/<clip>.mp4` (the frontal camera), its audio in
  `<root>/<id>/audio/<emotion>/level_<n>/<clip>.m4a`; clip id `<id>/<emotion>/level_<n>/<clip>`,
  identity `<id>` (M003, W009, ...), labels from the folder names, split from `splits.json` or the hash.
- LRW: `<root>/lipread_mp4/WORD/{train,val,test}/WORD_00001.mp4`; clip id `WORD/split/WORD_00001`.
  LRW has no speaker labels: the identity is the clip id; no emotion labels either (UNKNOWN).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.emotions import UNKNOWN, parse_emotion, parse_level

VIDEO_EXTENSIONS = (".mp4",)
SPLIT_FOLDERS = {"dev": "train", "train": "train", "val": "val", "test": "test"}
_IDENTITY = re.compile(r"^id\d+$")


@dataclass(frozen=True)
class ClipSource:
    """One clip of a raw corpus: where its video is, its labels, and where its audio is when not in the
    video's own track (`audio_path`: MEAD's separate m4a; None: the video's audio)."""

    clip_id: str
    identity: str
    split: str
    path: str
    emotion: int = UNKNOWN
    emotion_level: int = 0
    audio_path: str | None = None


def hashed_split(identity: str, fractions: dict[str, float]) -> str:
    """A split drawn from a stable hash of the identity (same answer on every machine and run)."""
    u = int(hashlib.sha1(identity.encode()).hexdigest()[:8], 16) / 16**8
    val, test = fractions.get("val", 0.0), fractions.get("test", 0.0)
    return "val" if u < val else "test" if u < val + test else "train"


def synthetic_labels(video: Path) -> tuple[int, int]:
    """(emotion, level) of a synthetic clip from its ground-truth npz; UNKNOWN, 0 when it has none."""
    truth = video.with_suffix(".npz")
    if not truth.is_file():
        return UNKNOWN, 0
    with np.load(truth) as data:
        if "emotion" not in data.files:
            return UNKNOWN, 0
        return int(data["emotion"]), int(data["emotion_level"])


def discover_clips(
    root: str | Path, corpus: str, fractions: dict[str, float] | None = None
) -> list[ClipSource]:
    """All clips under `root` for `corpus` (voxceleb1 | voxceleb2 | synthetic | mead | lrw), sorted by
    clip id."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus root {root} does not exist")
    fractions = fractions or {"train": 0.9, "val": 0.05, "test": 0.05}
    splits_file = root / "splits.json"
    splits = json.loads(splits_file.read_text()) if splits_file.exists() else {}
    clips = []
    if corpus == "lrw":
        for path in sorted(root.rglob("*")):
            parts = path.relative_to(root).parts
            if (
                path.suffix.lower() in VIDEO_EXTENSIONS
                and len(parts) >= 3
                and parts[-2] in ("train", "val", "test")
            ):
                word, split = parts[-3], parts[-2]
                clip_id = f"{word}/{split}/{path.stem}"
                clips.append(ClipSource(clip_id, clip_id, split, str(path)))
    elif corpus == "mead":
        for path in sorted(root.glob("*/video/front/*/*/*")):
            if path.suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            identity, emotion, level = path.parts[-6], path.parts[-3], path.parts[-2]
            audio = root / identity / "audio" / emotion / level / (path.stem + ".m4a")
            clips.append(
                ClipSource(
                    clip_id=f"{identity}/{emotion}/{level}/{path.stem}",
                    identity=identity,
                    split=splits.get(identity) or hashed_split(identity, fractions),
                    path=str(path),
                    emotion=parse_emotion(emotion),
                    emotion_level=parse_level(level),
                    audio_path=str(audio),
                )
            )
    elif corpus in ("voxceleb1", "voxceleb2", "synthetic"):
        for path in sorted(root.rglob("*")):
            parts = path.relative_to(root).parts
            if (
                path.suffix.lower() not in VIDEO_EXTENSIONS
                or len(parts) < 3
                or not _IDENTITY.match(parts[-3])
            ):
                continue
            identity, video = parts[-3], parts[-2]
            folder_split = next((SPLIT_FOLDERS[p] for p in parts[:-3] if p in SPLIT_FOLDERS), None)
            split = splits.get(identity) or folder_split or hashed_split(identity, fractions)
            clip_id = f"{identity}/{video}/{path.stem}"
            emotion, level = synthetic_labels(path) if corpus == "synthetic" else (UNKNOWN, 0)
            clips.append(ClipSource(clip_id, identity, split, str(path), emotion, level))
    else:
        raise ValueError(f"unknown corpus {corpus!r} (voxceleb1 | voxceleb2 | mead | lrw | synthetic)")
    return sorted(clips, key=lambda c: c.clip_id)
