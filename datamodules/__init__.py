"""Data: the embedded synthetic corpus, preprocessing of raw corpora into shards, and the
LightningDataModules every stage trains from; `media/` below them holds what preprocessing, dubbing,
metrics and callbacks share (video, speech, detection, tracking, crops, masks, image layouts, files)."""

from typing import Any

__all__ = ["ShardDataModule"]


def __getattr__(name: str) -> Any:
    """`datamodules.ShardDataModule` is imported on first use, so that the preprocessing workers, which
    import `datamodules.*` modules, do not pay for importing Lightning and litdata."""
    if name == "ShardDataModule":
        from datamodules.base import ShardDataModule

        return ShardDataModule
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
