"""`task=eval_motion` (Playmate's evaluation): the diffusion motion
generator and its emotion control against deterministic stage 1 and the ground truth, on speakers never
seen in training (`motion_eval.split` of `data`), every clip generated from its own audio and identity.

- Emotion accuracy: the judge (`experiment=emotion_classifier`, trained on ground-truth motion) names
  the emotion of sequences generated with each of the 8 emotions requested, for every emotion guidance
  weight of `motion_eval.emotion_guidance`; its mean probability of the requested emotion is the
  confidence. The judge's accuracy on the real clips is the ceiling.
- Lip sync: the mouth opening (inner-lip gap of the projected landmarks) correlated over time with the
  ground truth's (Pearson, mean over clips), and the mouth-landmark distance (px, the 20 iBUG mouth
  points, ground-truth pose), for the generator with each clip's own emotion, without emotion, without
  audio, for stage 1 and for the ground truth itself; Sync (LSE-C of I_3D renders through the suite's
  SyncNet expert, as Table 3's) when `motion_eval.syncnet_checkpoint` is given.
- Diversity: the mean distance (px) between the 68 projected landmarks of two samples of the same clip
  drawn with different seeds (`motion_eval.seeds` of them, every pair), the expression on the
  ground-truth pose; 0 for a deterministic model.
- Fréchet distance between the judge's pooled features of the generated and the real clips' windows
  (`motion_eval.feature_window` frames every `feature_stride`), as FID does with Inception's. With fewer
  windows than feature dimensions the covariances are rank-deficient and the distance is biased upwards:
  compare rows of one run, not runs on corpora of other sizes.

Outputs in the run dir: `motion_eval.md` (the three tables), `motion_eval.json`, and the tables as CSV.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from scipy import linalg

import face3d
from datamodules.emotions import EMOTIONS
from lightning_modules.common.checkpoints import load_trained_module
from lightning_modules.evaluation.tables import markdown_table, write_table
from lightning_modules.metrics.expression import MOUTH_LANDMARKS
from lightning_modules.motion.dit import MotionDiffusionModule, mouth_opening, temporal_correlation
from lightning_modules.motion.judge import load_emotion_classifier

log = logging.getLogger(__name__)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (FID's formula; scipy's
    matrix square root, its imaginary round-off dropped); NaN with fewer than 2 in either set."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * np.real(root)))


class _Row:
    """One model's sums over the clips of the split."""

    def __init__(self) -> None:
        self.corr, self.lmd, self.diversity, self.sync = [], [], [], []
        self.correct = self.judged = 0
        self.features: list[np.ndarray] = []

    def as_dict(self, real_features: np.ndarray | None) -> dict[str, Any]:
        mean = lambda values: float(np.nanmean(values)) if values else float("nan")  # noqa: E731
        fd = (
            frechet_distance(np.concatenate(self.features), real_features)
            if self.features and real_features is not None
            else float("nan")
        )
        return {
            "emotion acc": self.correct / self.judged if self.judged else float("nan"),
            "mouth corr": mean(self.corr),
            "mouth LMD": mean(self.lmd),
            "diversity": mean(self.diversity),
            "FD": fd,
            "Sync": mean(self.sync),
        }


ROW_COLUMNS = ["emotion acc", "mouth corr", "mouth LMD", "diversity", "FD", "Sync"]


class MotionEvaluation:
    """The measurements of `task=eval_motion` (module docstring), batch by batch."""

    def __init__(self, cfg: DictConfig) -> None:
        options = cfg.motion_eval
        self.options = options
        self.generator_module, _ = load_trained_module(options.emotion_checkpoint)
        if not isinstance(self.generator_module, MotionDiffusionModule):
            raise ValueError(
                f"motion_eval.emotion_checkpoint {options.emotion_checkpoint} is not a motion generator's "
                f"checkpoint ({type(self.generator_module).__name__})"
            )
        self.has_emotion = self.generator_module.has_emotion
        self.judge = load_emotion_classifier(options.classifier_checkpoint)
        self.stage1 = None
        if options.a2e_checkpoint:
            self.stage1, stage1_cfg = load_trained_module(options.a2e_checkpoint)
            if getattr(self.stage1.net, "use_semantic", False):
                raise ValueError(f"{options.a2e_checkpoint}: stage 1 reads semantic images; use one without")
            self.stage1_window = int(stage1_cfg.data.mfcc_window)
            if options.syncnet_checkpoint:
                from lightning_modules.networks.syncnet import load_syncnet

                self.stage1.syncnet = load_syncnet(options.syncnet_checkpoint)
                self.stage1.sync_camera = self.stage1.camera.resized(self.stage1.hparams.sync_image_size)
        self.face_model = self.generator_module.face_model
        self.camera = self.generator_module.camera
        self.default_weight = float(self.generator_module.sampling.emotion_guidance)
        self.weights = [float(w) for w in options.emotion_guidance] if self.has_emotion else []
        self.rows = {name: _Row() for name in self.row_names()}
        self.real_features: list[np.ndarray] = []
        # requested-emotion results per guidance weight: [emotion][...] of (correct, probability)
        self.requested = {w: {e: [] for e in range(len(EMOTIONS))} for w in self.weights}
        self.real_per_emotion = {e: [] for e in range(len(EMOTIONS))}

    def row_names(self) -> list[str]:
        names = ["ground truth"]
        if self.has_emotion:
            names += [f"diffusion, own emotion (w_e {self.default_weight:g})", "diffusion, null emotion"]
        else:
            names += ["diffusion"]
        names += ["diffusion, no audio"]
        if self.stage1 is not None:
            names.append("stage 1")
        return names

    # --- generation ----------------------------------------------------------------------------------

    def generate(self, batch: dict[str, Any], seed: int, **overrides: Any) -> torch.Tensor:
        """Coefficients (B, T, 257) sampled for the batch's audio and identity (`generate_coeffs`), with
        `emotion` / `level` (B,) in place of the batch's labels when given, and sampling `overrides`."""
        labels = {
            key: overrides.pop(name)
            for name, key in (("emotion", "emotion"), ("level", "emotion_level"))
            if name in overrides
        }
        module = self.generator_module
        return module.generate_coeffs(
            {**batch, **labels},
            torch.Generator().manual_seed(seed),
            steps=self.options.steps or module.sampling.steps,
            **overrides,
        )

    def with_expression_of(self, batch: dict[str, Any], generated: torch.Tensor) -> torch.Tensor:
        """The ground-truth coefficients with the generated expression (lip sync and the judge see the
        expression only)."""
        return face3d.with_expression(batch["coeffs"].float(), face3d.expression_of(generated))

    # --- the measurements ----------------------------------------------------------------------------

    def _lip_sync(self, row: _Row, batch: dict[str, Any], coeffs: torch.Tensor) -> None:
        truth = batch["coeffs"].float()
        corr = temporal_correlation(
            mouth_opening(self.face_model, self.camera, coeffs),
            mouth_opening(self.face_model, self.camera, truth),
        )
        row.corr += corr.tolist()
        points = self._landmarks(coeffs)[:, :, list(MOUTH_LANDMARKS)]
        truth_points = self._landmarks(truth)[:, :, list(MOUTH_LANDMARKS)]
        row.lmd += (points - truth_points).norm(dim=-1).mean((1, 2)).tolist()
        if self.stage1 is not None and self.options.syncnet_checkpoint:
            for k in range(coeffs.shape[0]):
                albedo = batch["albedo"][k : k + 1] if batch["albedo"].shape[1] else None
                score = self.stage1.sync_score(
                    truth[k : k + 1], face3d.expression_of(coeffs[k : k + 1]), batch["mel"][k : k + 1], albedo
                )
                row.sync.append(float(score))

    def _landmarks(self, coeffs: torch.Tensor) -> torch.Tensor:
        return self.face_model.landmarks_2d(coeffs.flatten(0, 1), self.camera).unflatten(0, coeffs.shape[:2])

    def _judge(self, row: _Row, batch: dict[str, Any], coeffs: torch.Tensor) -> torch.Tensor:
        logits = self.judge.logits(coeffs)
        emotion = torch.as_tensor(batch["emotion"]).long()
        known = emotion >= 0
        row.correct += int((logits.argmax(-1) == emotion)[known].sum())
        row.judged += int(known.sum())
        row.features.append(self.judge.features(self._feature_windows(coeffs)).numpy())
        return logits

    def _feature_windows(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, T, 257) -> (B * n, W, 257): the `feature_window`-frame windows every `feature_stride` frames
        (the whole clip when shorter), so that the Fréchet distance has n times as many feature vectors."""
        window = min(int(self.options.feature_window), coeffs.shape[1])
        return coeffs.unfold(1, window, int(self.options.feature_stride)).permute(0, 1, 3, 2).flatten(0, 1)

    def _diversity(self, row: _Row, samples: list[torch.Tensor]) -> None:
        for a, b in itertools.combinations(samples, 2):
            row.diversity += (self._landmarks(a) - self._landmarks(b)).norm(dim=-1).mean((1, 2)).tolist()

    @torch.no_grad()
    def update(self, batch: dict[str, Any], batch_index: int) -> None:
        options = self.options
        seed = int(options.seed) + 1000 * batch_index
        truth = batch["coeffs"].float()
        emotion = torch.as_tensor(batch["emotion"]).long()
        level = torch.full_like(emotion, int(options.level))

        row = self.rows["ground truth"]
        logits = self._judge(row, batch, truth)
        self.real_features.append(row.features.pop())
        self._lip_sync(row, batch, truth)
        for k, e in enumerate(emotion.tolist()):
            if e >= 0:
                self.real_per_emotion[e].append(int(logits[k].argmax()) == e)

        runs: dict[str, dict[str, Any]] = {}
        if self.has_emotion:
            runs[self.row_names()[1]] = {"emotion_guidance": self.default_weight}
            runs["diffusion, null emotion"] = {"emotion_guidance": 0.0}
        else:
            runs["diffusion"] = {}
        for name, overrides in runs.items():
            samples = [
                self.with_expression_of(batch, self.generate(batch, seed + s, **dict(overrides)))
                for s in range(int(options.seeds))
            ]
            self._judge(self.rows[name], batch, samples[0])
            self._lip_sync(self.rows[name], batch, samples[0])
            self._diversity(self.rows[name], samples)
        audio_free = self.with_expression_of(
            batch, self.generate(batch, seed, audio_guidance=0.0, emotion_guidance=0.0)
        )
        self._judge(self.rows["diffusion, no audio"], batch, audio_free)
        self._lip_sync(self.rows["diffusion, no audio"], batch, audio_free)
        if self.stage1 is not None:
            if batch["mfcc"].shape[-1] != self.stage1_window:
                raise ValueError(
                    f"stage 1 ({options.a2e_checkpoint}) reads {self.stage1_window}-step MFCC windows, the "
                    f"data gives {batch['mfcc'].shape[-1]}: evaluate with its data.mfcc_window"
                )
            outputs = [self.stage1.net(batch["mfcc"].float(), None).float() for _ in range(2)]
            samples = [face3d.with_expression(truth, out) for out in outputs]
            self._judge(self.rows["stage 1"], batch, samples[0])
            self._lip_sync(self.rows["stage 1"], batch, samples[0])
            self._diversity(self.rows["stage 1"], samples)

        for weight in self.weights:
            for requested in range(len(EMOTIONS)):
                wanted = torch.full_like(emotion, requested)
                coeffs = self.with_expression_of(
                    batch,
                    self.generate(batch, seed, emotion=wanted, level=level, emotion_guidance=weight),
                )
                probabilities = self.judge.logits(coeffs).softmax(-1)
                for p in probabilities:
                    self.requested[weight][requested].append(
                        (int(p.argmax()) == requested, float(p[requested]))
                    )

    # --- results -------------------------------------------------------------------------------------

    def results(self) -> dict[str, list[dict[str, Any]]]:
        real = np.concatenate(self.real_features) if self.real_features else None
        rows = []
        for name, row in self.rows.items():
            values = row.as_dict(None if name == "ground truth" else real)
            if name == "ground truth":
                values["diversity"] = float("nan")
            rows.append({"model": name, **values})
        guidance = []
        for weight in self.weights:
            outcomes = [o for e in self.requested[weight].values() for o in e]
            guidance.append(
                {
                    "emotion guidance": weight,
                    "accuracy": float(np.mean([c for c, _ in outcomes])),
                    "confidence": float(np.mean([p for _, p in outcomes])),
                }
            )
        per_emotion = []
        for e, name in enumerate(EMOTIONS):
            entry: dict[str, Any] = {"emotion": name}
            for weight in self.weights:
                outcomes = self.requested[weight][e]
                entry[f"acc w_e={weight:g}"] = float(np.mean([c for c, _ in outcomes]))
                entry[f"conf w_e={weight:g}"] = float(np.mean([p for _, p in outcomes]))
            real_e = self.real_per_emotion[e]
            entry["judge on real"] = float(np.mean(real_e)) if real_e else float("nan")
            per_emotion.append(entry)
        return {"models": rows, "guidance": guidance, "per_emotion": per_emotion}


def evaluation_loader(cfg: DictConfig) -> Any:
    """Whole clips (or `data.eval_window_frames` windows) of `motion_eval.split`, in `view: window`."""
    with open_dict(cfg):
        cfg.data.view = "window"
        cfg.data.batch_size = int(cfg.motion_eval.batch_size)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    split = str(cfg.motion_eval.split)
    if split not in ("val", "test"):
        raise ValueError(f"motion_eval.split is {split!r}: val or test (unseen speakers)")
    datamodule.setup("validate" if split == "val" else "test")
    return datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()


def run_motion_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """`task=eval_motion`: the tables into the run dir (module docstring); returns them."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluation = MotionEvaluation(cfg)
    for index, batch in enumerate(evaluation_loader(cfg)):
        evaluation.update(batch, index)
        log.info("eval_motion: batch %d done", index)
    results = evaluation.results()
    note = (
        f"Unseen speakers: the {cfg.motion_eval.split} split of {cfg.data.shard_dir}. Generator "
        f"{cfg.motion_eval.emotion_checkpoint}, {cfg.motion_eval.seeds} seeds; judge "
        f"{cfg.motion_eval.classifier_checkpoint}. emotion acc: the judge names the clip's own emotion "
        "(ground truth: the judge's accuracy on the real clips). mouth corr / LMD: against the ground "
        "truth's mouth. diversity: px between samples of different seeds. FD: Fréchet distance to the real "
        "clips in the judge's features. Sync: LSE-C of I_3D renders by the suite's expert."
    )
    sections = [("models", ["model", *ROW_COLUMNS], note)]
    if results["guidance"]:
        sections += [
            (
                "guidance",
                ["emotion guidance", "accuracy", "confidence"],
                f"Every clip generated with each of the {len(EMOTIONS)} emotions requested (level "
                f"{cfg.motion_eval.level}); accuracy: the judge names the requested one; confidence: its "
                "mean probability of it.",
            ),
            ("per_emotion", list(results["per_emotion"][0]), "Per requested emotion."),
        ]
    else:
        results.pop("per_emotion")
    text = []
    for name, keys, section_note in sections:
        write_table(out_dir / f"motion_eval_{name}", results[name], keys, section_note)
        text.append(f"## {name}\n\n{markdown_table(results[name], keys)}\n\n{section_note}\n")
    (out_dir / "motion_eval.md").write_text("\n".join(text))
    (out_dir / "motion_eval.json").write_text(json.dumps(results, indent=2))
    print("\n" + "\n".join(text))
    return results
