"""How a corpus was made, recorded beside it, so that a corpus made differently from what the config now
asks for is rebuilt (the synthetic corpus) or refused with the differences (a preprocessed real corpus),
never silently reused.

A recipe is a JSON-able dict of everything that changes the data: the generator's settings and audio
source, the face model (its settings and a fingerprint of its arrays), the preprocessing options, the
teacher's weights (a hash), and a version number per stage that is bumped when its code changes its
output. Where the data lands and how fast it is made (paths, worker counts, devices) are left out.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.media.files import atomic_write

RECIPE_NAME = "recipe.json"
# The keys of a face model node that say which model it is (its camera, fitting and appearance settings
# are recorded by what uses them).
_FACE_MODEL_KEYS = ("source", "num_vertices", "seed")


def face_model_recipe(node: Mapping[str, Any]) -> dict[str, Any]:
    """Which face model a config node builds: its source settings plus a fingerprint of its arrays (so an
    edited procedural generator or another BFM file counts as another model)."""
    import face3d

    model = face3d.face_model_from_config(node)
    digest = hashlib.sha1()
    for name, buffer in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(buffer.cpu().numpy()).tobytes())
    settings = {key: node[key] for key in _FACE_MODEL_KEYS if key in node}
    return {**settings, "fingerprint": digest.hexdigest()[:16]}


def file_digest(path: str | os.PathLike | None) -> str | None:
    """sha1 of a file's bytes (None for no file): a retrained teacher at the same path is another teacher."""
    if path is None:
        return None
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def as_json(value: Any) -> Any:
    """The recipe as plain JSON types (tuples become lists), so a recorded and a computed one compare."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def read_recipe(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / RECIPE_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def write_recipe(directory: str | os.PathLike, recipe: Mapping[str, Any]) -> None:
    """Atomically (a reader never sees half a recipe)."""
    path = Path(directory) / RECIPE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        handle.write(json.dumps(as_json(recipe), indent=1, sort_keys=True))


def recipe_differences(recorded: Any, wanted: Any, prefix: str = "") -> list[str]:
    """`key: recorded -> wanted` for every leaf that differs (dotted keys), for the messages."""
    recorded, wanted = as_json(recorded), as_json(wanted)
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        lines = []
        for key in sorted(set(recorded) | set(wanted)):
            name = f"{prefix}.{key}" if prefix else key
            if key not in recorded:
                lines.append(f"{name}: (absent) -> {wanted[key]!r}")
            elif key not in wanted:
                lines.append(f"{name}: {recorded[key]!r} -> (absent)")
            else:
                lines += recipe_differences(recorded[key], wanted[key], name)
        return lines
    return [] if recorded == wanted else [f"{prefix or '(recipe)'}: {recorded!r} -> {wanted!r}"]
