"""Raw corpora (VoxCeleb1/2, MEAD, LRW, the synthetic corpus) -> litdata shards + manifest.jsonl.

`python run.py task=preprocess data=voxceleb2|voxceleb1|mead|lrw|synthetic` calls
`preprocess_corpus(cfg.data)`.
"""

from datamodules.media.face_fit import ClipOptions
from datamodules.media.video import ClipRejected
from datamodules.preprocess.layout import ClipSource, discover_clips
from datamodules.preprocess.pipeline import (
    PREPROCESS_VERSION,
    PreprocessSettings,
    preprocess_corpus,
    preprocess_recipe,
    run_preprocessing,
    settings_from_config,
)

__all__ = [
    "PREPROCESS_VERSION",
    "ClipOptions",
    "ClipRejected",
    "ClipSource",
    "PreprocessSettings",
    "discover_clips",
    "preprocess_corpus",
    "preprocess_recipe",
    "run_preprocessing",
    "settings_from_config",
]
