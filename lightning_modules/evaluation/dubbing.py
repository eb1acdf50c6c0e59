"""`python run.py task=eval`: dubbing models and stage-1 checkpoints scored on a test split, over every
frame of every clip, in the layouts of the main paper's Table 1 and Table 3.

Table 1 (one row per model of `eval.models`: the suite's pipeline, the Wav2Lip-architecture peer, ...):
every test clip is re-dubbed with its own speech (self-reconstruction, as the paper's Table 1), through
the very code `task=dub` runs (lightning_modules/inference/generators.py), and the crop the viewer would
see -- the
generated crop pasted into the ground-truth crop through the paste-back weights of lightning_modules/
dub.py -- is scored against the ground truth: PSNR, SSIM, LPIPS and FID (where their weights are in
`paths.weights_dir`), LMD (dlib), CSIM (dlib's identity embedding, or ArcFace), LSE-D / LSE-C
(syncnet_python's protocol, with the official SyncNet v2 when `eval.syncnet_v2` exists, else the suite's
own expert, which the table then names: those numbers are not comparable with the paper's), and the
mouth's frame-to-frame change against the source's (the paper's stated limitation: flicker).
Each clip is also dubbed with another test clip's speech ("cross" rows: only Sync and stability have a
meaning there), and the ground truth's own Sync is given beside them.

Table 3 (one row per checkpoint of `eval.a2e_checkpoints`): AED, LMD of the projected landmarks (all and
mouth), Sync of faces rendered with the predicted expressions, and the mean-expression baseline.

Written into the run directory: table1.md / .csv, table1_per_clip.csv, table3.md / .csv, eval.json; the
tables also go to the configured loggers (a W&B table).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from datamodules.datasets import ClipDataset, ViewOptions, mfcc_windows
from datamodules.media.audio import SAMPLES_PER_FRAME, fit_length, mel_windows
from datamodules.media.detect import FAN_FILE
from datamodules.media.images import to_float_images, to_uint8_images
from datamodules.shards import decode_images, num_images
from face3d import expression_of
from lightning_modules.common.checkpoints import load_trained_module
from lightning_modules.common.config import instantiate_group
from lightning_modules.common.pretrained import weights_path
from lightning_modules.common.runs import finish_wandb
from lightning_modules.evaluation.tables import _cell, write_table
from lightning_modules.inference.generators import build_dubber
from lightning_modules.inference.paste import paste_weights
from lightning_modules.inference.tracks import DubbedTrack, FaceTrack, Speech, resize_images
from lightning_modules.metrics.expression import (
    MOUTH_LANDMARKS,
    ImageLandmarkDistance,
    average_expression_distance,
    landmark_distance,
)
from lightning_modules.metrics.identity import ARCFACE_FILE, CSIM
from lightning_modules.metrics.image import (
    INCEPTION_FILES,
    TemporalStability,
    fid_metric,
    fid_weights_path,
    lpips_metric,
)
from lightning_modules.metrics.sync import LipSyncMetric, syncnet_python_crop
from lightning_modules.networks.syncnet import load_syncnet
from lightning_modules.networks.syncnet_v2 import SyncNetV2, load_syncnet_v2

log = logging.getLogger(__name__)

TABLE1_COLUMNS = ("PSNR", "SSIM", "LPIPS", "FID", "LMD", "CSIM", "LSE-D", "LSE-C", "mouth change / source")


TABLE3_COLUMNS = ("AED", "LMD", "LMD mouth", "Sync")


def test_clips(shard_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Every clip of a split's shard dir, whole, in storage order."""
    dataset = ClipDataset(str(shard_dir), ViewOptions(), vary_per_epoch=False)
    for index in range(len(dataset)):
        yield dataset.clip_at(index)


def clip_track(clip: dict[str, Any]) -> tuple[FaceTrack, Speech]:
    """A test clip as a face track on its own 25 fps clock, and its speech."""
    frames = decode_images(clip["frames"], clip["frame_offsets"], range(clip["num_frames"]))
    albedo = clip["albedo"] if len(clip["albedo"]) else None
    track = FaceTrack(
        crops=frames,
        landmarks=clip["landmarks"],
        coeffs=clip["coeffs"],
        albedo=albedo,
        times=np.arange(clip["num_frames"]) / 25.0,
    )
    return track, Speech.from_wave(clip["audio"])


def speech_for(speech: Speech, num_frames: int) -> Speech:
    """Another clip's speech cut or silence-padded to `num_frames` frames (the cross-dubbing setting)."""
    return Speech.from_wave(fit_length(speech.wave, num_frames * SAMPLES_PER_FRAME))


def composite(track: FaceTrack, result: DubbedTrack, feather: float) -> tuple[Tensor, Tensor]:
    """What a dubbed video shows in the crop: the generated crop blended into the ground-truth crop by the
    paste-back weights of `task=dub`, at the ground truth's size. Returns (images (T, 3, S, S) in [0, 1],
    the weights (T, 1, S, S): the region whose change is measured)."""
    size = track.crops.shape[1]
    scale = result.images.shape[-1] / size
    weights = []
    for k in range(len(track)):
        sets = [track.landmarks[k] * scale]
        if result.landmarks is not None:
            sets.append(result.landmarks[k].numpy())
        weights.append(torch.from_numpy(paste_weights(result.mouth_mask[k, 0].numpy(), sets, feather)))
    weights = F.interpolate(torch.stack(weights)[:, None], size=(size, size), mode="bilinear")
    generated = F.interpolate(result.images, size=(size, size), mode="bilinear", antialias=True)
    return (weights * generated + (1 - weights) * to_float_images(track.crops)).clamp(0, 1), weights


def sync_metric(cfg: DictConfig) -> LipSyncMetric | None:
    """LSE-D / LSE-C: the official SyncNet v2 (`eval.syncnet_v2`) when it exists, else the suite's expert
    (`eval.syncnet_checkpoint`); None, with a warning naming both files, when neither does."""

    official, suite = cfg.eval.get("syncnet_v2"), cfg.eval.get("syncnet_checkpoint")
    if official and Path(official).is_file():
        return LipSyncMetric(load_syncnet_v2(official), source=str(official))
    if suite and Path(suite).is_file():
        return LipSyncMetric(load_syncnet(suite), source=str(suite))
    log.warning(
        "Sync columns are empty: neither %s (official SyncNet v2) nor %s (the suite's expert) exists",
        official,
        suite,
    )
    return None


def update_sync(metric: LipSyncMetric, track: FaceTrack, frames: np.ndarray, wave: np.ndarray) -> None:
    """One clip into the Sync metric, cropped as its network expects."""

    if isinstance(metric._network, SyncNetV2):
        low, high = track.landmarks.min(axis=1), track.landmarks.max(axis=1)
        frames = syncnet_python_crop(frames, np.concatenate([low, high], axis=1))
    metric.update(frames, wave)


def lmd_backend(cfg: DictConfig) -> str:
    """`eval.lmd_backend`; `auto`: face_alignment's 2D-FAN when its file is in weights_dir, else dlib."""

    choice = str(cfg.eval.lmd_backend)
    if choice != "auto":
        return choice
    return "face_alignment" if (Path(cfg.paths.weights_dir) / FAN_FILE).is_file() else "dlib"


class RowScores:
    """The Table 1 metrics of one row. Each clip is scored once, by fresh metric objects (its per-clip
    values), and the row is the frame-weighted mean of those (clip means for LSE, whose protocol is per
    clip; sums of changes for the stability ratio; FID over every frame at once): the same numbers as one
    pass over the whole split, without scoring a frame twice."""

    def __init__(self, cfg: DictConfig, sync: LipSyncMetric | None, with_images: bool) -> None:
        weights_dir = cfg.paths.weights_dir
        self.metrics: dict[str, Any] = {}
        self.fid = None
        if with_images:
            self.metrics = {
                "PSNR": PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)),
                "SSIM": StructuralSimilarityIndexMeasure(data_range=1.0),
                "LMD": ImageLandmarkDistance(backend=lmd_backend(cfg), weights_dir=weights_dir),
                "CSIM": CSIM(backend=str(cfg.eval.csim_backend), weights_dir=weights_dir),
            }
            lpips = lpips_metric(weights_dir)
            if lpips is not None:
                self.metrics["LPIPS"] = lpips
            self.fid = fid_metric(weights_dir)
        self.sync = sync
        self.stability = TemporalStability()
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def _add(self, name: str, value: float, count: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value * count
        self.counts[name] = self.counts.get(name, 0.0) + count

    def update(self, track: FaceTrack, output: Tensor, mask: Tensor, wave: np.ndarray) -> dict[str, float]:
        """One clip; returns its own values (the per-clip CSV)."""
        truth = to_float_images(track.crops)
        clip: dict[str, float] = {}
        boxes = torch.from_numpy(np.concatenate([track.landmarks.min(1), track.landmarks.max(1)], 1))
        for name, prototype in self.metrics.items():
            metric = prototype.clone()
            metric.reset()
            if name == "LMD":
                metric.update(output, truth, torch.from_numpy(track.landmarks))
            elif name == "CSIM":
                metric.update(output, truth, boxes)
            else:
                metric.update(output, truth)
            clip[name] = float(metric.compute())
            self._add(name, clip[name], float(metric.count) if name == "CSIM" else len(track))
        if self.fid is not None:
            self.fid.update((truth * 255).round().to(torch.uint8), real=True)
            self.fid.update((output * 255).round().to(torch.uint8), real=False)
        if self.sync is not None:
            metric = self.sync.clone()
            metric.reset()
            update_sync(metric, track, to_uint8_images(output), wave)
            values = metric.compute()
            clip["LSE-D"], clip["LSE-C"] = float(values["lse_d"]), float(values["lse_c"])
            self._add("LSE-D", clip["LSE-D"], 1)
            self._add("LSE-C", clip["LSE-C"], 1)
        single = TemporalStability()
        for part in (single, self.stability):  # tensor arithmetic only: cheap to do twice
            part.update(output, truth, mask)
        clip["mouth change / source"] = float(single.compute()["ratio"])
        return clip

    def compute(self) -> dict[str, float]:
        out = {name: self.sums[name] / max(self.counts[name], 1e-12) for name in self.sums}
        if self.fid is not None:
            out["FID"] = float(self.fid.compute())
        out["mouth change / source"] = float(self.stability.compute()["ratio"])
        return out


def evaluate_models(cfg: DictConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Table 1's rows and the per-clip rows; the name of the Sync network."""
    shard_dir = Path(cfg.data.shard_dir) / str(cfg.eval.split)
    clips = list(test_clips(shard_dir))
    if not clips:
        raise FileNotFoundError(f"no clips in {shard_dir}: preprocess the corpus first (task=preprocess)")
    sync = sync_metric(cfg)
    feather = float(cfg.dub.feather)
    rows, per_clip = [], []
    tracks = [clip_track(clip) for clip in clips]
    truth_values = {"LSE-D": math.nan, "LSE-C": math.nan}
    if sync is not None:
        truth = sync.clone()
        for track, speech in tracks:
            update_sync(truth, track, track.crops, speech.wave)
        values = truth.compute()
        truth_values = {"LSE-D": float(values["lse_d"]), "LSE-C": float(values["lse_c"])}
    rows.append({"model": "ground truth", "setting": "real frames", **truth_values})
    for name, node in cfg.eval.models.items():
        dubber = build_dubber(node, str(cfg.dub.device))
        own, cross = RowScores(cfg, sync, with_images=True), RowScores(cfg, sync, with_images=False)
        for index, (clip, (track, speech)) in enumerate(zip(clips, tracks)):
            output, mask = composite(track, dubber.dub(track, speech), feather)
            values = own.update(track, output, mask, speech.wave)
            per_clip.append({"model": name, "setting": "own speech", "clip_id": clip["clip_id"], **values})
            other = tracks[(index + 1) % len(tracks)][1]
            driving = speech_for(other, len(track))
            output, mask = composite(track, dubber.dub(track, driving), feather)
            values = cross.update(track, output, mask, driving.wave)
            per_clip.append({"model": name, "setting": "other speech", "clip_id": clip["clip_id"], **values})
            log.info("eval %s: clip %d/%d %s", name, index + 1, len(clips), clip["clip_id"])
        rows.append({"model": name, "setting": "own speech", **own.compute()})
        rows.append({"model": name, "setting": "other speech", **cross.compute()})
    return rows, per_clip, sync.network_name if sync is not None else "none"


def semantic_images(clip: dict[str, Any], size: int, checkpoint: str) -> Tensor:
    """The teacher's frames a test clip's shards hold (preprocessing with `data.preprocess.teacher_checkpoint`
    stores them for the clip's own speech: what a stage-1 model that reads semantic images is trained on),
    (1, T, 3, size, size) in [0, 1]."""
    if num_images(clip["semantic_offsets"]) == 0:
        raise ValueError(
            f"{checkpoint} reads the teacher's semantic images, and the test shards hold none for "
            f"{clip['clip_id']}: preprocess the corpus with data.preprocess.teacher_checkpoint=TEACHER"
        )
    frames = decode_images(clip["semantic"], clip["semantic_offsets"], range(clip["num_frames"]))
    return resize_images(to_float_images(frames), size).clamp(0, 1)[None]


@torch.no_grad()
def evaluate_a2e(cfg: DictConfig) -> list[dict[str, Any]]:
    """Table 3's rows: each stage-1 checkpoint on every frame of the test clips (whole clips); a model that
    reads semantic images reads the teacher's frames stored with the clips."""

    rows = []
    shard_dir = Path(cfg.data.shard_dir) / str(cfg.eval.split)
    suite_syncnet = cfg.eval.get("syncnet_checkpoint")
    syncnet = load_syncnet(suite_syncnet) if suite_syncnet and Path(suite_syncnet).is_file() else None
    for name, checkpoint in cfg.eval.a2e_checkpoints.items():
        module, run_cfg = load_trained_module(checkpoint)
        reads_semantic = getattr(module.net, "use_semantic", False)
        if syncnet is not None:
            module.syncnet, module.sync_camera = (
                syncnet,
                module.camera.resized(module.hparams.sync_image_size),
            )
        sums = {key: 0.0 for key in ("AED", "LMD", "LMD mouth", "Sync", "AED mean", "LMD mean")}
        frames = 0
        mean = module.train_expression_sum / module.train_expression_count.clamp(min=1)
        for clip in test_clips(shard_dir):
            count = clip["num_frames"]
            mfcc = torch.from_numpy(
                mfcc_windows(clip["mfcc"], np.arange(count), int(run_cfg.data.mfcc_window))
            )
            coeffs = torch.from_numpy(clip["coeffs"])[None]
            semantic = (
                semantic_images(clip, int(run_cfg.data.image_size), checkpoint) if reads_semantic else None
            )
            prediction = module.net(mfcc[None], semantic)
            target = expression_of(coeffs)
            predicted_points = module.project_landmarks(coeffs, prediction)
            true_points = module.project_landmarks(coeffs, target)
            mean_points = module.project_landmarks(coeffs, mean.expand_as(target))
            sums["AED"] += float(average_expression_distance(prediction, target)) * count
            sums["LMD"] += float(landmark_distance(predicted_points, true_points)) * count
            sums["LMD mouth"] += (
                float(landmark_distance(predicted_points, true_points, MOUTH_LANDMARKS)) * count
            )
            sums["AED mean"] += float(average_expression_distance(mean.expand_as(target), target)) * count
            sums["LMD mean"] += float(landmark_distance(mean_points, true_points)) * count
            if syncnet is not None:
                mel = torch.from_numpy(mel_windows(clip["mel"], np.arange(count)))[None]
                albedo = torch.from_numpy(clip["albedo"])[None] if len(clip["albedo"]) else None
                sums["Sync"] += float(module.sync_score(coeffs, prediction, mel, albedo)) * count
            frames += count
        row = {"model": name, **{key: value / frames for key, value in sums.items() if key in TABLE3_COLUMNS}}
        if syncnet is None:
            row["Sync"] = math.nan
        rows.append(row)
        rows.append(
            {
                "model": f"{name}: mean-expression baseline",
                "AED": sums["AED mean"] / frames,
                "LMD": sums["LMD mean"] / frames,
            }
        )
    return rows


def _log_tables(cfg: DictConfig, tables: dict[str, tuple[list[dict[str, Any]], list[str]]]) -> None:
    """Each table as a W&B table (and whatever the other configured loggers do with a table)."""

    finish_wandb(False)  # a run left open in this process (a sweep's last job) must not get these tables
    loggers = instantiate_group(cfg.get("logger"))
    for logger in loggers:
        if hasattr(logger, "log_table"):
            for key, (rows, keys) in tables.items():
                logger.log_table(
                    key=key, columns=list(keys), data=[[_cell(r.get(k)) for k in keys] for r in rows]
                )
    finish_wandb(False)


def switched_off_columns(weights_dir: str) -> dict[str, str]:
    """Table 1's columns whose pretrained network is missing from `weights_dir`, with the file."""
    off = {}
    alexnet = weights_path("alexnet", weights_dir)
    if not alexnet.is_file():
        off["LPIPS"] = f"{alexnet} missing"
    if fid_weights_path(weights_dir) is None:
        off["FID"] = f"{Path(weights_dir) / INCEPTION_FILES[0]} missing"
    return off


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """`task=eval`: Table 1 for `eval.models`, Table 3 for `eval.a2e_checkpoints`, into the run dir."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    tables = {}
    if cfg.eval.models:
        rows, per_clip, sync_name = evaluate_models(cfg)
        keys = ["model", "setting", *TABLE1_COLUMNS]
        arcface = Path(cfg.paths.weights_dir) / ARCFACE_FILE
        auto_arcface = cfg.eval.csim_backend == "auto" and arcface.is_file()
        csim = "ArcFace" if cfg.eval.csim_backend == "arcface" or auto_arcface else "dlib"
        off = switched_off_columns(cfg.paths.weights_dir)
        result["switched_off"] = off
        note = (
            f"Every frame of the {cfg.eval.split} split ({cfg.data.shard_dir}). Sync: {sync_name}. "
            + "".join(f"{column}: off ({reason}). " for column, reason in off.items())
            + f"LMD: {lmd_backend(cfg)} landmarks; CSIM: {csim} identity embeddings. "
            "'own speech': each clip re-dubbed with its own audio, scored against its frames; "
            "'other speech': dubbed with the next test clip's audio (only Sync and the mouth change mean "
            "anything there). Mouth change / source: the generated mouth's mean frame-to-frame change over "
            "that of the real frames."
        )
        text = write_table(out_dir / "table1", rows, keys, note)
        write_table(
            out_dir / "table1_per_clip", per_clip, ["model", "setting", "clip_id", *TABLE1_COLUMNS], ""
        )
        print(f"\nTable 1 layout ({out_dir / 'table1.md'}):\n{text}")
        result["table1"], result["sync_network"] = rows, sync_name
        tables["eval/table1"] = (rows, keys)
    if cfg.eval.a2e_checkpoints:
        rows = evaluate_a2e(cfg)
        keys = ["model", *TABLE3_COLUMNS]
        expert = cfg.eval.get("syncnet_checkpoint")
        sync = (
            f"LSE-C of faces rendered with the predicted expressions, by the suite's expert {expert} (not "
            "comparable with syncnet_v2)"
            if expert and Path(expert).is_file()
            else f"none ({expert} does not exist)"
        )
        note = (
            f"Every frame of the {cfg.eval.split} split. LMD: pixels of the face model's camera between the "
            f"landmarks projected with the predicted and the fitted expressions. Sync: {sync}."
        )
        text = write_table(out_dir / "table3", rows, keys, note)
        print(f"\nTable 3 layout ({out_dir / 'table3.md'}):\n{text}")
        result["table3"] = rows
        tables["eval/table3"] = (rows, keys)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=1, default=float))
    _log_tables(cfg, tables)
    return result
