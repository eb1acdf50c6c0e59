"""Shared fixtures.

`tiny_corpus` (session scope): a tiny synthetic corpus (4 identities x 1 clip x 30 frames at 160 px,
splits 2 train / 1 val / 1 test by identity) generated and preprocessed into shards once per test
session, in a temporary data dir, by the datamodule's `prepare_data` with `TINY_OVERRIDES`. It goes
through the real pipeline: PyTorch3D renders, H.264/AAC mp4 files, PyAV decoding, dlib detection,
FOMM-style cropping, 3DMM and appearance fitting, I_3D rendering, the shard writer, and the Wav2Lip
teacher's semantic images (a randomly initialised generator in the official file layout: the real
loading and inference path, with weights no test can download). Fields:
    tiny_corpus.data_dir   the data dir (paths.data_dir) holding synthetic/{raw,work,shards}
    tiny_corpus.raw_dir    the synthetic corpus (mp4/idXXXXX/<video>/00001.mp4 + 00001.npz ground truth)
    tiny_corpus.shard_dir  shard_dir/{train,val,test} litdata datasets + shard_dir/manifest.jsonl
    tiny_corpus.work_dir   per-clip results of the preprocessing run
    tiny_corpus.settings   the PreprocessSettings used (a dataclass; `dataclasses.replace` it for variants)
For a config-driven test, the `corpus_args` fixture gives the overrides (`paths.data_dir=...` and
`TINY_OVERRIDES`).

`tiny_chain` (session scope): the dubbing pipeline's checkpoints (stage 1 by the demo recipe, stages 2-4,
the demo Wav2Lip), two steps each on the tiny corpus through `run_task`, as a user trains them.
`tiny_motion` (session scope): the motion DiT (`experiment=demo_motion_diffusion`, shrunk) and its emotion
stage (`demo_motion_emotion` on its last.ckpt), two steps each on the tiny corpus (all neutral clips:
labelled, one label).

`default_corpus` (session scope): the default synthetic corpus of conf/data/synthetic.yaml (16 speakers:
10 train / 4 val / 2 test, one 3-s clip each), built by the datamodule's `prepare_data` exactly as
`make demo` builds it, in a temporary data dir: the corpus the learning tests train and validate on
(about a minute to build). Its value is the data dir (`paths.data_dir=...`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TINY_EMOTION, TINY_MOTION

os.environ.setdefault("SYNERGYDUB_ROOT", str(Path(__file__).resolve().parents[1]))

TINY_CORPUS = {"num_identities": 4, "clips_per_identity": 1, "num_frames": 30, "image_size": 160, "seed": 7}
TINY_CROP = 128
# Fewer fitting steps than conf/face_model (50 + 300): the fit is most of the preprocessing time on CPU.
TINY_FIT = {"rigid_steps": 30, "steps": 100}


@dataclass(frozen=True)
class TinyCorpus:
    data_dir: Path
    raw_dir: Path
    shard_dir: Path
    work_dir: Path
    settings: Any


def random_teacher_checkpoint(path: Path, width: float = 0.25) -> Path:
    """A Wav2Lip generator file as the official release stores it (`{"state_dict": ...}`)."""
    import torch

    from lightning_modules.networks.wav2lip import Wav2LipGenerator

    torch.manual_seed(0)
    torch.save({"state_dict": Wav2LipGenerator(width=width).state_dict()}, path)
    return path


def tiny_settings(
    raw_dir: Path,
    shard_dir: Path,
    work_dir: Path,
    num_workers: int = 0,
    teacher_checkpoint: Path | None = None,
    corpus: str = "synthetic",
    overrides: tuple[str, ...] = (),
):
    """Preprocessing settings from the composed config (conf/data/<corpus>.yaml) for the tiny corpus: the
    shorter tube minimum its 30-frame clips need, the 128 px crop, a shorter fit, and `overrides`."""
    from datamodules.preprocess import settings_from_config
    from lightning_modules.common.config import compose_config

    cfg = compose_config(
        [
            f"data={corpus}",
            f"data.preprocess.input_dir={raw_dir}",
            f"data.shard_dir={shard_dir}",
            f"data.preprocess.work_dir={work_dir}",
            f"data.preprocess.num_workers={num_workers}",
            "data.preprocess.torch_threads=null",
            f"data.preprocess.teacher_checkpoint={teacher_checkpoint or 'null'}",
            f"data.preprocess.clip.crop_size={TINY_CROP}",
            "data.preprocess.clip.min_frames=20",
            "data.preprocess.clip.min_face_size=64",
            *(f"face_model.fitting.{key}={value}" for key, value in TINY_FIT.items()),
            *overrides,
        ],
        Path(shard_dir).parent / "config",
    )
    return settings_from_config(cfg.data)


# The tiny corpus is the synthetic corpus at these settings: the overrides that make it, and that every
# config pointed at it repeats (its recipe then matches, so the datamodule uses it as it is).
TINY_OVERRIDES = [
    *(f"data.synthetic.{key}={value}" for key, value in TINY_CORPUS.items()),
    f"data.preprocess.clip.crop_size={TINY_CROP}",
    "data.preprocess.clip.min_frames=20",
    *(f"face_model.fitting.{key}={value}" for key, value in TINY_FIT.items()),
]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> TinyCorpus:
    import hydra

    from datamodules.preprocess import settings_from_config
    from lightning_modules.common.config import compose_config

    root = tmp_path_factory.mktemp("tiny_corpus")
    teacher = random_teacher_checkpoint(root / "wav2lip.pth")
    cfg = compose_config(
        [f"paths.data_dir={root}", *TINY_OVERRIDES, f"data.preprocess.teacher_checkpoint={teacher}"],
        root / "run",
    )
    hydra.utils.instantiate(cfg.data).prepare_data()
    settings = settings_from_config(cfg.data)
    return TinyCorpus(
        data_dir=root,
        raw_dir=Path(settings.input_dir),
        shard_dir=Path(settings.shard_dir),
        work_dir=Path(settings.work_dir),
        settings=settings,
    )


@pytest.fixture(scope="session")
def corpus_args(tiny_corpus) -> list[str]:
    """Overrides that point a composed config (or `run.py`) at the tiny corpus."""
    return [f"paths.data_dir={tiny_corpus.data_dir}", *TINY_OVERRIDES, "data.num_workers=0"]


@pytest.fixture(scope="session")
def default_corpus(tmp_path_factory) -> Path:
    """The data dir holding the default synthetic corpus, built as `make demo` builds it (module
    docstring): point a config at it with `paths.data_dir=<it>`."""
    import hydra

    from lightning_modules.common.config import compose_config

    root = tmp_path_factory.mktemp("default_corpus")
    cfg = compose_config([f"paths.data_dir={root}"], root / "run")
    hydra.utils.instantiate(cfg.data).prepare_data()
    return root


@pytest.fixture(scope="session")
def tiny_chain(corpus_args, tmp_path_factory):
    """Stage 1 (the demo recipe), stages 2-4 and the demo Wav2Lip, two steps each on the tiny corpus."""
    from lightning_modules.common.config import compose_config
    from lightning_modules.tasks.dispatch import run_task
    from tests.helpers import SHORT, Chain

    root = tmp_path_factory.mktemp("chain")
    common = [*corpus_args, f"paths.log_dir={root}", *SHORT]
    run_task(compose_config(["experiment=demo", *common, "callbacks.a2e_media=null"], root / "a2e"))
    previous = None
    for stage in "234":
        init = [f"model.init_checkpoint={previous}"] if previous else []
        run_task(
            compose_config(
                [f"experiment=demo_stage{stage}", *common, "callbacks.renderer_media=null", *init],
                root / stage,
            )
        )
        previous = root / stage / "checkpoints" / "last.ckpt"
    run_task(compose_config(["experiment=demo_wav2lip", *common], root / "wav2lip"))
    return Chain(
        root / "a2e" / "checkpoints" / "last.ckpt",
        previous,
        root / "wav2lip" / "checkpoints" / "last.ckpt",
        root,
    )


@pytest.fixture(scope="session")
def tiny_motion(corpus_args, tmp_path_factory):
    """`demo_motion_diffusion` then `demo_motion_emotion` on its last.ckpt, two steps each (module
    docstring)."""
    from lightning_modules.common.config import compose_config
    from lightning_modules.tasks.dispatch import run_task
    from tests.helpers import SHORT, MotionCheckpoints

    root = tmp_path_factory.mktemp("motion")
    common = [f"paths.log_dir={root}", *SHORT, *corpus_args, *TINY_MOTION]
    common.append("model.validation.sample_windows=none")
    run_task(compose_config(["experiment=demo_motion_diffusion", *common], root / "dit"))
    dit = root / "dit" / "checkpoints" / "last.ckpt"
    emotion = [
        "experiment=demo_motion_emotion",
        f"model.init_checkpoint={dit}",
        *TINY_EMOTION,
    ]
    run_task(compose_config([*emotion, *common], root / "emotion"))
    return MotionCheckpoints(dit, root / "emotion" / "checkpoints" / "last.ckpt")
