"""Data: the embedded synthetic corpus, preprocessing of raw corpora into shards, and the
LightningDataModules every stage trains from."""

from datamodules.base import ShardDataModule

__all__ = ["ShardDataModule"]
