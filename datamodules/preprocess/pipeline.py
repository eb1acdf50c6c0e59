"""Preprocessing a corpus into shards: parallel over clips, shardable over SLURM array tasks, resumable.

Crash safety (kill -9 at any moment):
1. every clip's outcome (its shard sample, or its rejection) is pickled to `work_dir/clips/<key>.pkl`
   through a temporary file and `os.replace`, so a result file is either complete or absent; a rerun
   skips the clips that have one;
2. once every clip of the corpus has a result (whichever task or run made it), the results are packed:
   `datamodules.shards.write_shards` writes each split into a temporary dir and renames it into place,
   then `manifest.jsonl` is replaced atomically. One result file per clip id means no duplicates.
3. with `identity: speaker`, a speaker pass follows (`fit_speaker_identities`): each speaker's identity
   is the mean of their clips' fitted ones, and each clip is fitted again with it held fixed, its result
   written to `work_dir/speaker/<key>.pkl` the same way (so it resumes too); packing reads those;
4. `work_dir/recipe.json` records how the results are made (`datamodules.recipe`); a rerun with other
   settings is refused rather than mixing the two, and the shards carry the same recipe.
With SLURM arrays (`shard=i/n`, by default from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT) each task
takes clips i, i + n, ...; the task that finds the corpus complete runs the speaker pass (with its
workers) and packs it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
import traceback
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.media.detect import make_detector
from datamodules.media.face_fit import ClipOptions, Tools
from datamodules.media.files import atomic_write
from datamodules.media.video import ClipRejected
from datamodules.preprocess.clip import process_clip, refit_with_identity
from datamodules.preprocess.layout import ClipSource, discover_clips
from datamodules.recipe import face_model_recipe, file_digest, read_recipe, recipe_differences, write_recipe
from datamodules.shards import MANIFEST_NAME, SPLITS, write_shards

log = logging.getLogger(__name__)


@dataclass
class PreprocessSettings:
    """Everything `run_preprocessing` needs, as plain values: `settings_from_config(cfg.data)` builds it
    from the `data` config node, the one place the defaults live."""

    corpus: str
    input_dir: str
    shard_dir: str
    work_dir: str
    face_model: dict[str, Any]
    camera: dict[str, float]
    detector: dict[str, Any]
    clip: ClipOptions
    num_workers: int
    torch_threads: int | None
    device: str  # where fitting, I_3D rendering and the teacher run ("cuda" on a GPU node)
    shard: tuple[int, int]
    teacher_checkpoint: str | None
    # The class that turns `teacher_checkpoint` into a callable (crops uint8 (T, S, S, 3), mel windows
    # (T, 80, 16)) -> semantic frames uint8 (conf/data/corpus.yaml `preprocess.teacher_class`): named in
    # the config so that the data layer imports no network.
    teacher_class: str
    split_fractions: dict[str, float]
    chunk_bytes: str
    identity: str  # clip | speaker: whose identity coefficients a clip's fit holds

    def __post_init__(self) -> None:
        if self.identity not in IDENTITY_MODES:
            raise ValueError(f"preprocess.identity is {self.identity!r}: one of {IDENTITY_MODES}")


IDENTITY_MODES = ("clip", "speaker")
WAV2LIP_TEACHER = "lightning_modules.networks.wav2lip.SemanticTeacher"

# Bumped whenever the pipeline's code changes what it writes for the same settings (3: the emotion labels).
PREPROCESS_VERSION = 3


def preprocess_recipe(settings: PreprocessSettings, source: dict[str, Any] | None) -> dict[str, Any]:
    """What shards made with `settings` from a raw corpus of recipe `source` (the synthetic corpus's;
    None for a real one) are made of: `datamodules.recipe`."""
    return {
        "version": PREPROCESS_VERSION,
        "corpus": settings.corpus,
        "source": source,
        "face_model": face_model_recipe(settings.face_model),
        "camera": settings.camera,
        "detector": settings.detector,
        "clip": asdict(settings.clip),
        "teacher": file_digest(settings.teacher_checkpoint),
        "split_fractions": settings.split_fractions,
        "identity": settings.identity,
    }


def check_work_dir(settings: PreprocessSettings, recipe: dict[str, Any]) -> None:
    """Resuming reuses the per-clip results in work_dir only when they were made the same way; the first
    run writes its recipe there."""
    recorded = read_recipe(settings.work_dir)
    if recorded is None:
        write_recipe(settings.work_dir, recipe)
        return
    changes = recipe_differences(recorded, recipe)
    if changes:
        raise RuntimeError(
            f"{settings.work_dir} holds per-clip results made with other settings ("
            + "; ".join(changes)
            + "): preprocess into a new data.preprocess.work_dir and data.shard_dir, or delete these"
        )


def parse_shard(shard: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n); None -> this SLURM array task's (index, count), else (0, 1)."""
    if shard:
        index, count = (int(v) for v in str(shard).split("/"))
    elif "SLURM_ARRAY_TASK_ID" in os.environ and "SLURM_ARRAY_TASK_COUNT" in os.environ:
        index = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", 0))
        count = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
    else:
        index, count = 0, 1
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: index must be in [0, {count})")
    return index, count


def result_path(work_dir: str | Path, clip_id: str, stage: str = "clips") -> Path:
    """A clip's result file: its own fit (`clips/`) or the speaker pass's (`speaker/`)."""
    return Path(work_dir) / stage / (clip_id.replace("/", "__") + ".pkl")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def _remove_stale_temporaries(directory: Path) -> None:
    """Temporary result files of killed processes (`.<name>.<pid>.tmp` whose pid is gone)."""
    for path in directory.glob(".*.tmp"):
        pid = path.name.rsplit(".", 2)[-2]
        if pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                path.unlink(missing_ok=True)
            except PermissionError:
                pass


# --- workers -----------------------------------------------------------------------------------------

_TOOLS: dict[str, Tools] = {}


def build_tools(settings: PreprocessSettings) -> Tools:
    import face3d

    detector_cfg = dict(settings.detector)
    backend = detector_cfg.get("backend", "dlib")
    detector = make_detector(backend, detector_cfg.get(backend) or {})
    model = face3d.face_model_from_config(settings.face_model).to(settings.device)
    camera = face3d.PerspectiveCamera(**settings.camera).resized(settings.clip.crop_size)
    teacher = None
    if settings.teacher_checkpoint:
        import hydra

        teacher = hydra.utils.get_class(settings.teacher_class)(settings.teacher_checkpoint, settings.device)
    return Tools(detector=detector, model=model, camera=camera, teacher=teacher)


def _worker_setup(settings: PreprocessSettings) -> None:
    import torch

    if settings.torch_threads:
        torch.set_num_threads(int(settings.torch_threads))
    _TOOLS["tools"] = build_tools(settings)


def run_in_workers(settings: PreprocessSettings, function: Any, jobs: list[tuple]) -> list[dict[str, Any]]:
    """`function(*job)` for every job (each returns a manifest record), in `num_workers` spawned processes
    that build the tools once, or in this process; logs each outcome as it lands."""
    records: list[dict[str, Any]] = []

    def landed(record: dict[str, Any]) -> None:
        records.append(record)
        log.info("%s: %s %s", record["clip_id"], record["status"], record.get("reason", ""))

    if settings.num_workers > 0 and len(jobs) > 1:
        context = get_context("spawn")
        with ProcessPoolExecutor(
            settings.num_workers, mp_context=context, initializer=_worker_setup, initargs=(settings,)
        ) as pool:
            for future in as_completed([pool.submit(function, *job) for job in jobs]):
                landed(future.result())
    elif jobs:
        _TOOLS["tools"] = build_tools(settings)
        for job in jobs:
            landed(function(*job))
    return records


def run_clip(source: ClipSource, settings: PreprocessSettings) -> dict[str, Any]:
    """Processes one clip in a worker and writes its result file; returns the manifest record."""
    base = {
        "clip_id": source.clip_id,
        "identity": source.identity,
        "split": source.split,
        "source": source.path,
        "audio_source": source.audio_path or source.path,
        "emotion": source.emotion,
        "emotion_level": source.emotion_level,
    }
    started = time.perf_counter()
    sample = None
    try:
        sample, record = process_clip(source, settings.clip, _TOOLS["tools"])
        record = {**base, **record}
    except ClipRejected as rejection:
        record = {**base, "status": "rejected", "reason": rejection.reason, "detail": rejection.detail}
    except Exception as error:  # one broken clip must not stop the corpus: it is listed with its error
        log.error("clip %s failed:\n%s", source.clip_id, traceback.format_exc())
        record = {
            **base,
            "status": "rejected",
            "reason": "error",
            "detail": f"{type(error).__name__}: {error}",
        }
    record["seconds"] = round(time.perf_counter() - started, 3)
    write_result(result_path(settings.work_dir, source.clip_id), record, sample)
    return record


def refit_clip(clip_id: str, identity: list[float], settings: PreprocessSettings) -> dict[str, Any]:
    """The speaker pass for one clip in a worker: its result fitted again with the speaker's identity,
    written to its speaker/ result file; returns the manifest record."""
    result = load_result(result_path(settings.work_dir, clip_id))
    sample, figures = refit_with_identity(
        result["sample"], np.asarray(identity), settings.clip, _TOOLS["tools"]
    )
    record = {**result["record"], **figures, "identity_fit": "speaker"}
    write_result(result_path(settings.work_dir, clip_id, "speaker"), record, sample)
    return record


def speaker_identities(
    settings: PreprocessSettings, clips: list[ClipSource]
) -> tuple[dict[str, np.ndarray], list[ClipSource]]:
    """Each speaker's identity (80,), the mean of the identities their accepted clips were fitted with,
    and the accepted clips. Every clip's own fit has taken up what lasts through it (a held emotion, a
    habitual expression) into its identity; over a speaker's clips -- MEAD's actors show every emotion
    -- that averages out to what the speaker always shows."""
    import face3d

    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    accepted = []
    for clip in clips:
        result = load_result(result_path(settings.work_dir, clip.clip_id))
        if result["record"]["status"] != "accepted":
            continue
        accepted.append(clip)
        identity = result["sample"]["coeffs"][:, : face3d.COEFF_DIMS["id"]].astype(np.float64).mean(0)
        sums[clip.identity] = sums.get(clip.identity, 0.0) + identity
        counts[clip.identity] = counts.get(clip.identity, 0) + 1
    return {speaker: sums[speaker] / counts[speaker] for speaker in sums}, accepted


def fit_speaker_identities(settings: PreprocessSettings, clips: list[ClipSource]) -> int:
    """The speaker pass (`identity: speaker`, module docstring): fits every accepted clip that has no
    speaker/ result yet again with its speaker's identity held fixed. Returns how many it fitted."""
    (Path(settings.work_dir) / "speaker").mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(Path(settings.work_dir) / "speaker")
    identities, accepted = speaker_identities(settings, clips)
    jobs = [
        (clip.clip_id, identities[clip.identity].tolist(), settings)
        for clip in accepted
        if not result_path(settings.work_dir, clip.clip_id, "speaker").exists()
    ]
    log.info("speaker pass: %d speakers, %d clips to fit again", len(identities), len(jobs))
    return len(run_in_workers(settings, refit_clip, jobs))


# --- orchestration -----------------------------------------------------------------------------------


def write_result(path: Path, record: dict[str, Any], sample: dict[str, Any] | None) -> None:
    _atomic_write_bytes(
        path, pickle.dumps({"record": record, "sample": sample}, protocol=pickle.HIGHEST_PROTOCOL)
    )


def load_result(path: Path) -> dict[str, Any]:
    with open(path, "rb") as handle:
        return pickle.load(handle)


def pack(settings: PreprocessSettings, clips: list[ClipSource]) -> dict[str, int]:
    """Writes one litdata dataset per split and `manifest.jsonl` from the per-clip results."""
    shard_dir = Path(settings.shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)

    def chosen_result(clip: ClipSource) -> Path:
        """The speaker pass's result where it fitted the clip (`identity: speaker`, accepted clips), else
        the clip's own."""
        speaker = result_path(settings.work_dir, clip.clip_id, "speaker")
        if settings.identity == "speaker" and speaker.exists():
            return speaker
        return result_path(settings.work_dir, clip.clip_id)

    paths = {c.clip_id: chosen_result(c) for c in clips}
    records = [load_result(paths[c.clip_id])["record"] for c in clips]
    counts = {}
    for split in SPLITS:
        accepted = [c for c, r in zip(clips, records) if r["status"] == "accepted" and c.split == split]

        def samples(chosen: list[ClipSource] = accepted) -> Iterator[dict[str, Any]]:
            for clip in chosen:
                yield load_result(paths[clip.clip_id])["sample"]

        counts[split] = len(accepted)
        if accepted:
            write_shards(samples(), shard_dir / split, chunk_bytes=settings.chunk_bytes, overwrite=True)
    write_recipe(shard_dir, read_recipe(settings.work_dir))  # before the manifest, which marks completion
    text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
    _atomic_write_bytes(shard_dir / MANIFEST_NAME, text.encode())
    return counts


def run_preprocessing(settings: PreprocessSettings) -> dict[str, Any]:
    """Processes this task's share of the corpus, then packs the shards if the corpus is complete.
    Returns a summary (clip counts, accepted per split, rejections by reason, seconds, frames/s)."""
    started = time.perf_counter()
    clips = discover_clips(settings.input_dir, settings.corpus, settings.split_fractions)
    if not clips:
        raise FileNotFoundError(f"no {settings.corpus} clips found under {settings.input_dir}")
    check_work_dir(settings, preprocess_recipe(settings, read_recipe(settings.input_dir)))
    (Path(settings.work_dir) / "clips").mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(Path(settings.work_dir) / "clips")
    index, count = settings.shard
    mine = clips[index::count]
    todo = [c for c in mine if not result_path(settings.work_dir, c.clip_id).exists()]
    log.info(
        "preprocess %s: %d clips, shard %d/%d has %d, %d to do",
        settings.corpus,
        len(clips),
        index,
        count,
        len(mine),
        len(todo),
    )
    records = run_in_workers(settings, run_clip, [(clip, settings) for clip in todo])
    seconds = time.perf_counter() - started
    frames = sum(r.get("num_frames", 0) for r in records)
    missing = [c for c in clips if not result_path(settings.work_dir, c.clip_id).exists()]
    summary: dict[str, Any] = {
        "clips": len(clips),
        "processed_now": len(records),
        "frames_now": frames,
        "seconds": round(seconds, 2),
        "frames_per_second": round(frames / seconds, 2) if seconds > 0 else 0.0,
        "waiting_for": len(missing),
    }
    if missing:
        log.info(
            "%d clips are still to be processed by other tasks; the last task packs the shards", len(missing)
        )
        return summary
    if settings.identity == "speaker":
        summary["speaker_refits"] = fit_speaker_identities(settings, clips)
    summary["accepted"] = pack(settings, clips)
    rejected: dict[str, int] = {}
    for line in (Path(settings.shard_dir) / MANIFEST_NAME).read_text().splitlines():
        record = json.loads(line)
        if record["status"] == "rejected":
            rejected[record["reason"]] = rejected.get(record["reason"], 0) + 1
    summary["rejected"] = rejected
    log.info("preprocess %s done: %s", settings.corpus, summary)
    return summary


def settings_from_config(data_cfg: Mapping[str, Any]) -> PreprocessSettings:
    """The data config node (`corpus`, `shard_dir`, `preprocess`) -> PreprocessSettings."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg) else dict(data_cfg)
    pre = dict(node["preprocess"])
    return PreprocessSettings(
        corpus=node["corpus"],
        input_dir=pre["input_dir"],
        shard_dir=node["shard_dir"],
        work_dir=pre["work_dir"],
        face_model=dict(pre["face_model"]),
        camera=dict(pre["camera"]),
        detector=dict(pre["detector"]),
        clip=ClipOptions(**pre["clip"]),
        num_workers=int(pre["num_workers"]),
        torch_threads=pre["torch_threads"],
        device=str(pre["device"]),
        shard=parse_shard(pre["shard"]),
        teacher_checkpoint=pre["teacher_checkpoint"],
        # A run config written before `teacher_class` existed (a checkpoint's) used the Wav2Lip teacher.
        teacher_class=str(pre.get("teacher_class", WAV2LIP_TEACHER)),
        split_fractions=dict(pre["split_fractions"]),
        chunk_bytes=str(pre["chunk_bytes"]),
        # A run config written before `identity` existed (a checkpoint's) fitted each clip on its own.
        identity=str(pre.get("identity", "clip")),
    )


def preprocess_corpus(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`python run.py task=preprocess data=voxceleb2|voxceleb1|mead|lrw|synthetic
    [data.preprocess.shard=i/n]`."""
    return run_preprocessing(settings_from_config(data_cfg))
