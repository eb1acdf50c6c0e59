"""`python run.py task=animate image=PORTRAIT audio=SPEECH` and the `synergydub-animate` console script:
checks the inputs, then animates through lightning_modules/inference/animator.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from datamodules.emotions import EMOTIONS
from lightning_modules.common.errors import AnimationError, ConfigurationError
from lightning_modules.inference.animator import (
    POSE_MODES,
    Animation,
    Animator,
    check_pose,
    read_portrait,
    read_speech,
)
from lightning_modules.inference.generators import SynergyDubber
from lightning_modules.inference.motion_source import emotion_label
from lightning_modules.tasks.console import run_console_script


def run_animate(cfg: DictConfig) -> Animation:
    """`task=animate`: `image`, `audio`, `pose`, `pose_video`, `output` (default
    <run dir>/<image>__<audio>.mp4), the root `emotion`; settings `animate` (conf/animate/default.yaml).
    Writes `animate_report.json` into the run directory."""
    if not issubclass(hydra.utils.get_class(cfg.generator._target_), SynergyDubber):
        raise ConfigurationError(
            f"task=animate renders with the suite's pipeline, not {cfg.generator._target_} "
            "(drop generator=...)"
        )
    if not cfg.image or not cfg.audio:
        raise AnimationError("task=animate needs image=PATH (a portrait) and audio=PATH (the speech)")
    output = cfg.output or Path(cfg.paths.output_dir) / f"{Path(cfg.image).stem}__{Path(cfg.audio).stem}.mp4"
    # The inputs are checked before the models load: a wrong path fails at once.
    read_portrait(cfg.image)
    read_speech(cfg.audio)
    check_pose(str(cfg.pose), cfg.get("pose_video"))
    emotion_label(cfg.get("emotion"))
    animator = Animator(cfg.generator, cfg.animate)
    animation = animator.animate(cfg.image, cfg.audio, output, str(cfg.pose), cfg.get("pose_video"))
    path = Path(cfg.paths.output_dir) / "animate_report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(animation.report, indent=1))
    print(f"animated: {animation.report['output']}")
    return animation


def cli_overrides(argv: list[str] | None = None) -> list[str]:
    """The Hydra overrides of a `synergydub-animate` command line (options and overrides in any order)."""
    parser = argparse.ArgumentParser(description="Make a portrait talk with a speech track.")
    parser.add_argument("image", help="portrait photo (any image OpenCV reads)")
    parser.add_argument("audio", help="speech: wav/mp3/m4a/... or a video's audio track")
    parser.add_argument("-o", "--output", help="output mp4 (default: logs/animate/... run directory)")
    parser.add_argument("--emotion", default=None, help="one of " + ", ".join(EMOTIONS))
    parser.add_argument("--pose", choices=POSE_MODES, default=None, help="head pose (default: generated)")
    parser.add_argument("--pose-video", help="the driving video of --pose source")
    parser.add_argument("overrides", nargs="*", default=[], help="Hydra overrides, e.g. animate.device=cuda")
    args = parser.parse_intermixed_args(argv)
    overrides = ["task=animate", *args.overrides]
    for key, value in (
        ("image", args.image),
        ("audio", args.audio),
        ("output", args.output),
        ("pose_video", args.pose_video),
    ):
        if value:
            overrides.append(f"{key}={Path(value).resolve()}")
    if args.pose:
        overrides.append(f"pose={args.pose}")
    if args.emotion:
        overrides.append(f"emotion={args.emotion}")
    return overrides


def main(argv: list[str] | None = None) -> None:
    """`synergydub-animate IMAGE AUDIO [--emotion sad] [--pose generated|source|still] [--pose-video V]
    [-o OUT.mp4] [hydra overrides]`: the console script, composing the suite's config as
    `python run.py task=animate` does."""
    run_console_script(run_animate, cli_overrides(argv))
