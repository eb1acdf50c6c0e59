"""Where the clips of each corpus are, and which split each belongs to.

- VoxCeleb1 / VoxCeleb2 / synthetic: `<root>/**/idXXXXX/<video-id>/<clip>.mp4`; clip id
  `idXXXXX/<video-id>/<clip>`, identity `idXXXXX`. The split comes from a `splits.json`
  (identity -> split) at the root when there is one (the synthetic corpus writes it), else from a
  `dev`/`train`, `val` or `test` folder in the path, else from a stable hash of the identity
  (splits are always by identity).
- LRW: `<root>/lipread_mp4/WORD/{train,val,test}/WORD_00001.mp4`; clip id `WORD/split/WORD_00001`.
  LRW has no speaker labels: the identity is the clip id.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4",)
SPLIT_FOLDERS = {"dev": "train", "train": "train", "val": "val", "test": "test"}
_IDENTITY = re.compile(r"^id\d+$")


@dataclass(frozen=True)
class ClipSource:
    clip_id: str
    identity: str
    split: str
    path: str


def hashed_split(identity: str, fractions: dict[str, float]) -> str:
    """A split drawn from a stable hash of the identity (same answer on every machine and run)."""
    u = int(hashlib.sha1(identity.encode()).hexdigest()[:8], 16) / 16**8
    val, test = fractions.get("val", 0.0), fractions.get("test", 0.0)
    return "val" if u < val else "test" if u < val + test else "train"


def discover_clips(
    root: str | Path, corpus: str, fractions: dict[str, float] | None = None
) -> list[ClipSource]:
    """All clips under `root` for `corpus` (voxceleb1 | voxceleb2 | synthetic | lrw), sorted by clip id."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus root {root} does not exist")
    fractions = fractions or {"train": 0.9, "val": 0.05, "test": 0.05}
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
    elif corpus in ("voxceleb1", "voxceleb2", "synthetic"):
        splits_file = root / "splits.json"
        splits = json.loads(splits_file.read_text()) if splits_file.exists() else {}
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
            clips.append(ClipSource(clip_id, identity, split, str(path)))
    else:
        raise ValueError(f"unknown corpus {corpus!r} (voxceleb1 | voxceleb2 | lrw | synthetic)")
    return sorted(clips, key=lambda c: c.clip_id)
