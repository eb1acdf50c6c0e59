"""Every corpus records how it was made (`recipe.json`), and one made otherwise than the config asks is
rebuilt (the synthetic corpus) or refused with the differences (preprocessing results, real shards):
never silently reused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import pytest

from datamodules.preprocess import run_preprocessing
from datamodules.recipe import read_recipe
from datamodules.synthetic import generate_synthetic_corpus
from lightning_modules.common.config import compose_config

from .conftest import tiny_settings

SMALL = {"num_identities": 3, "clips_per_identity": 1, "num_frames": 12, "image_size": 128, "seed": 1}


def test_synthetic_corpus_is_rebuilt_when_made_otherwise(tmp_path: Path, caplog) -> None:
    first = generate_synthetic_corpus(tmp_path, face_model={}, **SMALL)
    recipe = read_recipe(tmp_path)
    assert first["rendered"] == 3 and recipe["audio_source"] == "builtin" and recipe["seed"] == 1
    assert len(recipe["face_model"]["fingerprint"]) == 16
    assert generate_synthetic_corpus(tmp_path, face_model={}, **SMALL)["rendered"] == 0  # same recipe: kept
    with caplog.at_level(logging.WARNING, logger="datamodules.synthetic"):
        again = generate_synthetic_corpus(tmp_path, face_model={}, **{**SMALL, "seed": 2})
    assert again["rendered"] == 3 and read_recipe(tmp_path)["seed"] == 2
    assert "seed: 1 -> 2" in caplog.text


def test_espeak_speech_without_the_program_says_how_to_install_it(tmp_path: Path, monkeypatch) -> None:
    """`audio_source: espeak` on a machine whose PATH has no espeak-ng stops before anything is rendered."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="needs the espeak-ng program.*make system-deps"):
        generate_synthetic_corpus(tmp_path / "raw", face_model={}, **{**SMALL, "audio_source": "espeak"})
    assert not (tmp_path / "raw" / "mp4").exists()


def test_preprocessing_refuses_a_work_dir_made_otherwise(tmp_path: Path) -> None:
    """Resuming into results made with other settings would mix two corpora in one set of shards."""
    raw = tmp_path / "raw"
    for k in range(2):  # clips rejected at once: this test is about the bookkeeping
        path = raw / "mp4" / f"id0000{k}" / "vid" / "00001.mp4"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not a video")
    settings = tiny_settings(raw, tmp_path / "shards", tmp_path / "work", corpus="voxceleb2")
    run_preprocessing(settings)
    assert read_recipe(tmp_path / "work") == read_recipe(tmp_path / "shards")
    assert read_recipe(tmp_path / "shards")["clip"]["crop_size"] == 128
    other = tiny_settings(
        raw,
        tmp_path / "shards",
        tmp_path / "work",
        corpus="voxceleb2",
        overrides=("data.preprocess.clip.crop_size=96",),
    )
    with pytest.raises(RuntimeError, match=r"made with other settings \(clip.crop_size: 128 -> 96\)"):
        run_preprocessing(other)


@pytest.mark.slow  # two corpus builds: some 25 s
def test_the_datamodule_rebuilds_a_stale_synthetic_corpus(tmp_path: Path, caplog) -> None:
    overrides = [
        f"paths.data_dir={tmp_path}",
        *(f"data.synthetic.{key}={value}" for key, value in SMALL.items() if key != "seed"),
        "data.synthetic.num_frames=20",
        "data.preprocess.clip.min_frames=12",
        "data.preprocess.clip.min_face_size=32",
        "data.preprocess.clip.crop_size=96",
        "face_model.fitting.rigid_steps=5",
        "face_model.fitting.steps=10",
    ]
    cfg = compose_config(overrides, tmp_path / "run")
    hydra.utils.instantiate(cfg.data).prepare_data()
    manifest = Path(cfg.data.shard_dir) / "manifest.jsonl"
    built = manifest.stat().st_mtime_ns
    hydra.utils.instantiate(cfg.data).prepare_data()
    assert manifest.stat().st_mtime_ns == built  # as the config asks: reused
    # The corpus a teacher's preprocessing made stays usable without naming the teacher again.
    recipe_path = Path(cfg.data.shard_dir) / "recipe.json"
    recipe_path.write_text(json.dumps({**json.loads(recipe_path.read_text()), "teacher": "0123abcd"}))
    hydra.utils.instantiate(cfg.data).prepare_data()
    assert manifest.stat().st_mtime_ns == built
    stale = compose_config([*overrides, "data.synthetic.seed=5"], tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="datamodules.base"):
        hydra.utils.instantiate(stale.data).prepare_data()
    assert manifest.stat().st_mtime_ns != built
    assert "rebuilding it" in caplog.text and "source.seed: 1234 -> 5" in caplog.text
    assert read_recipe(tmp_path / "synthetic" / "raw")["seed"] == 5
