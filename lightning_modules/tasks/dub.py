"""`python run.py task=dub video=FACE.mp4 audio=SPEECH` and the `synergydub-dub` console script: builds the
dubber from the config (the root `generator` group, the root `motion` source) and dubs one pair or a batch
(`dub.batch`: a folder or CSV; failures listed, finished outputs skipped). The pipeline itself is
lightning_modules/inference/dubber.py."""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_modules.common.checkpoints import run_config
from lightning_modules.common.errors import ConfigurationError, DubbingError
from lightning_modules.inference.dubber import AUDIO_SUFFIXES, LONG_AUDIO_POLICIES, VIDEO_SUFFIXES, Dubber
from lightning_modules.inference.generators import SynergyDubber, build_dubber
from lightning_modules.tasks.console import run_console_script

log = logging.getLogger(__name__)


def make_dubber(cfg: DictConfig) -> Dubber:
    """The dubber of a `task=dub` config: the root `generator` (conf/generator/: the suite's pipeline, or
    `generator=wav2lip`) with the root `motion` source (conf/motion/: stage 1, or `motion=diffusion` with
    the root `emotion`) and its analysis settings."""
    node = OmegaConf.to_container(cfg.generator, resolve=True)
    motion = cfg.get("motion")
    motion = None if motion is None else OmegaConf.to_container(motion, resolve=True)
    if issubclass(hydra.utils.get_class(node["_target_"]), SynergyDubber):
        node["motion"] = motion
    elif motion and (motion.get("source", "stage1") != "stage1" or motion.get("emotion") is not None):
        raise ConfigurationError(
            f"motion={motion.get('source')} / emotion={motion.get('emotion')} replace stage 1 of the "
            f"suite's pipeline; {node.get('_target_')} has no stage 1 (drop generator=..., or use "
            "motion=stage1 emotion=null)"
        )
    generator = build_dubber(node, str(cfg.dub.device))
    analysis = generator.preprocess_config() if isinstance(generator, SynergyDubber) else None
    if analysis is None:
        analysis = _analysis_config(cfg)
    return Dubber(generator, analysis, cfg.dub)


def _analysis_config(cfg: DictConfig) -> DictConfig:
    """Analysis settings for a generator that has no run of its own (the official Wav2Lip file): those of
    the renderer run `dub.analysis_renderer` when it exists, else the composed `data` config."""

    renderer = cfg.dub.get("analysis_renderer")
    if renderer and Path(renderer).is_file():
        return run_config(renderer).data
    return cfg.data


def pairs_of(batch: str | Path) -> list[tuple[Path, Path]]:
    """(video, audio) pairs of a batch: a CSV with `video` and `audio` columns (paths relative to the CSV),
    or a folder where each video has a speech file of the same stem (an audio file, or `<stem>.audio.mp4`)."""
    batch = Path(batch)
    if batch.is_file():
        with open(batch, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or not {"video", "audio"} <= set(rows[0]):
            raise DubbingError(f"{batch}: a batch CSV needs the columns video,audio")
        return [((batch.parent / r["video"]).resolve(), (batch.parent / r["audio"]).resolve()) for r in rows]
    if not batch.is_dir():
        raise DubbingError(f"{batch}: no such batch folder or CSV")
    pairs = []
    for video in sorted(p for p in batch.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        if video.name.endswith(".audio" + video.suffix):
            continue
        speech = [p for p in batch.iterdir() if p.stem == video.stem and p.suffix.lower() in AUDIO_SUFFIXES]
        speech += [p for p in batch.iterdir() if p.name == f"{video.stem}.audio{video.suffix}"]
        if speech:
            pairs.append((video, speech[0]))
        else:
            log.warning("%s: no speech file of the same stem in %s, skipped", video.name, batch)
    if not pairs:
        raise DubbingError(f"{batch}: no (video, speech) pairs (a video and an audio file of the same stem)")
    return pairs


def run_dub(cfg: DictConfig) -> list[dict[str, Any]]:
    """`task=dub`: one pair (`video`, `audio`, `output`) or a batch (`dub.batch`: a folder or CSV); a
    batch goes on past a pair that fails, lists the failures at the end, and skips outputs that exist
    (a rerun resumes). Writes `dub_report.json` into the run directory."""
    import json

    dub = cfg.dub
    if dub.batch:
        out_dir = Path(dub.output_dir or Path(cfg.paths.output_dir) / "dubbed")
        jobs = [(v, a, out_dir / f"{v.stem}__{a.stem}.mp4") for v, a in pairs_of(dub.batch)]
    else:
        if not cfg.video or not cfg.audio:
            raise DubbingError("task=dub needs video=PATH and audio=PATH (or dub.batch=FOLDER_OR_CSV)")
        output = (
            cfg.output or Path(cfg.paths.output_dir) / f"{Path(cfg.video).stem}__{Path(cfg.audio).stem}.mp4"
        )
        jobs = [(Path(cfg.video), Path(cfg.audio), Path(output))]
    dubber = make_dubber(cfg)
    reports, failures = [], []
    for video, audio, output in jobs:
        if dub.batch and output.exists():
            log.info("%s exists, skipped", output)
            continue
        try:
            reports.append(dubber.dub(video, audio, output).as_dict())
        except DubbingError as error:
            if not dub.batch:
                raise
            log.error("%s", error)
            failures.append({"video": str(video), "audio": str(audio), "error": str(error)})
    path = Path(cfg.paths.output_dir) / "dub_report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dubbed": reports, "failed": failures}, indent=1))
    for report in reports:
        print(f"dubbed: {report['output']}")
    if failures:
        log.error("%d of %d pairs failed: %s", len(failures), len(jobs), [f["video"] for f in failures])
    return reports


def cli_overrides(argv: list[str] | None = None) -> list[str]:
    """The Hydra overrides of a `synergydub-dub` command line (options and overrides in any order)."""
    parser = argparse.ArgumentParser(description="Dub a face video with a new speech track.")
    parser.add_argument("video", nargs="?", help="face video (any frame rate and size)")
    parser.add_argument("audio", nargs="?", help="speech: wav/mp3/m4a/... or a video's audio track")
    parser.add_argument("-o", "--output", help="output mp4 (default: logs/dub/... run directory)")
    parser.add_argument("--on-long-audio", choices=LONG_AUDIO_POLICIES, default=None)
    parser.add_argument("--generator", choices=("synergydub", "wav2lip"), default="synergydub")
    parser.add_argument("--motion", choices=("stage1", "diffusion"), default=None, help="expression source")
    parser.add_argument("--emotion", default=None, help="with --motion diffusion: happy, sad, ...")
    parser.add_argument("--batch", help="a folder or CSV of (video, audio) pairs")
    parser.add_argument("overrides", nargs="*", default=[], help="Hydra overrides, e.g. dub.device=cuda")
    # Intermixed: Hydra overrides may follow the options (`... -o out.mp4 dub.device=cuda`).
    args = parser.parse_intermixed_args(argv)
    overrides = ["task=dub", *args.overrides]
    for key, value in (("video", args.video), ("audio", args.audio), ("output", args.output)):
        if value:
            overrides.append(f"{key}={Path(value).resolve()}")
    if args.on_long_audio:
        overrides.append(f"dub.on_long_audio={args.on_long_audio}")
    if args.generator != "synergydub":
        overrides.append(f"generator={args.generator}")
    if args.motion:
        overrides.append(f"motion={args.motion}")
    if args.emotion:
        overrides.append(f"emotion={args.emotion}")
    if args.batch:
        overrides.append(f"dub.batch={Path(args.batch).resolve()}")
    return overrides


def main(argv: list[str] | None = None) -> None:
    """`synergydub-dub VIDEO AUDIO [-o OUT] [--on-long-audio loop] [--generator wav2lip] [--motion diffusion]
    [--emotion happy] [hydra overrides]`: the console script, composing the suite's config as
    `python run.py task=dub` does."""
    run_console_script(run_dub, cli_overrides(argv))
