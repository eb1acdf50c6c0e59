"""`task=synthesize` and `task=preprocess`: the data layer's corpus generation and preprocessing, run on
the composed `data` config."""

from __future__ import annotations

from omegaconf import DictConfig

from datamodules.preprocess import preprocess_corpus
from datamodules.synthetic import generate_corpus


def synthesize(cfg: DictConfig) -> None:
    generate_corpus(cfg.data)


def preprocess(cfg: DictConfig) -> None:
    preprocess_corpus(cfg.data)
