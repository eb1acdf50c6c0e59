"""`task=animate` (lightning_modules/tasks/animate.py) and its console script on a real photograph: Grace
Hopper,
as matplotlib ships her, animated by the motion DiT and the renderer that the real tasks trained for two
steps on the tiny corpus (tests/conftest.py `tiny_chain`, `tiny_motion`). What is tested does not depend
on how well they learnt: the mp4 (rate, duration, audio), the head pose of each pose mode through the
coefficients every frame was rendered with, the emotion reaching the motion, determinism, bad inputs.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from datamodules.media import audio as audio_lib
from datamodules.media.video import decode_frames, load_speech, probe, write_mp4
from tests.helpers import Chain, MotionCheckpoints
from tests.real_footage import portrait

SPEECH_S = 0.8  # 20 frames
DRIVING_FRAMES = 12  # the driving clip (the tiny corpus's first 12 frames) is shorter: pingpong
POSE = slice(224, 227), slice(254, 257)  # angles, translation


def pose_of(coeffs: np.ndarray) -> np.ndarray:
    return np.concatenate([coeffs[:, POSE[0]], coeffs[:, POSE[1]]], axis=1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_corpus) -> dict[str, Path]:
    """The portrait as a PNG, a speech wav, a faceless image, a driving video with a moving head."""
    root = tmp_path_factory.mktemp("animate_inputs")
    photo = root / "hopper.png"
    cv2.imwrite(str(photo), cv2.cvtColor(portrait("grace_hopper"), cv2.COLOR_RGB2BGR))
    speech = root / "speech.wav"
    audio_lib.write_wav(speech, audio_lib.synthesize_speech(SPEECH_S, seed=11))
    wall = root / "wall.png"
    cv2.imwrite(str(wall), np.full((240, 320, 3), 128, np.uint8))
    (clip,) = sorted(tiny_corpus.raw_dir.glob("mp4/*/*/*.mp4"))[:1]
    driving = root / f"{clip.parent.parent.name}.mp4"  # named after its speaker
    write_mp4(driving, decode_frames(clip)[:DRIVING_FRAMES], load_speech(clip)[: 640 * DRIVING_FRAMES])
    return {"image": photo, "audio": speech, "wall": wall, "driving": driving}


def animate_config(chain: Chain, motion: MotionCheckpoints, tmp_path: Path, overrides: list[str]):
    from lightning_modules.common.config import compose_config

    return compose_config(
        [
            "task=animate",
            f"paths.log_dir={tmp_path}",
            f"generator.renderer_checkpoint={chain.renderer}",
            f"animate.motion.checkpoint={motion.emotion}",
            "dub.progress=false",
            *overrides,
        ],
        tmp_path / "run",
    )


@pytest.fixture(scope="module")
def animate(tiny_chain, tiny_motion, inputs, tmp_path_factory):
    """Runs `task=animate` (cached by its arguments, so that tests share runs)."""
    from lightning_modules.tasks.animate import run_animate

    done: dict[tuple, object] = {}

    def run(pose: str = "generated", emotion: str | None = "happy", *overrides: str):
        key = (pose, emotion, overrides)
        if key not in done:
            tmp_path = tmp_path_factory.mktemp(f"animate_{pose}_{emotion}")
            output = tmp_path / "out.mp4"
            args = [f"image={inputs['image']}", f"audio={inputs['audio']}", f"output={output}"]
            args += [f"pose={pose}", f"emotion={emotion or 'null'}", *overrides]
            if pose == "source":
                args.append(f"pose_video={inputs['driving']}")
            done[key] = run_animate(animate_config(tiny_chain, tiny_motion, tmp_path, args))
        return done[key]

    return run


@pytest.mark.parametrize("pose", ["generated", "still", "source"])
def test_each_pose_mode_writes_a_25_fps_mp4_as_long_as_the_speech_with_its_audio(animate, pose) -> None:
    animation = animate(pose, None if pose == "still" else "happy")
    report = animation.report
    out = probe(report["output"])
    frames = int(np.ceil(SPEECH_S * 25 - 1e-6))
    assert out.num_frames == frames == len(animation.coeffs)
    assert out.fps == pytest.approx(25.0, rel=1e-3)
    assert out.video_duration_s == pytest.approx(SPEECH_S, abs=1 / 25)
    assert out.has_audio and out.audio_duration_s == pytest.approx(SPEECH_S, abs=0.07)
    assert Path(report["output"]).with_suffix(".png").is_file()
    coeffs, own = animation.coeffs, animation.portrait_coeffs
    # Identity, texture and light are the portrait's on every frame; the expression is generated.
    for part in (slice(0, 80), slice(144, 224), slice(227, 254)):
        np.testing.assert_array_equal(coeffs[:, part], np.repeat(own[None, part], len(coeffs), 0))
    assert np.abs(np.diff(coeffs[:, 80:144], axis=0)).max() > 0
    pose_track, own_pose = pose_of(coeffs), pose_of(own[None])[0]
    if pose == "still":
        np.testing.assert_array_equal(pose_track, np.repeat(own_pose[None], len(coeffs), 0))
        # Pasted back into the whole portrait: its size, and outside the face its own pixels.
        assert (out.width, out.height) == (512, 600)
        # Above the nose (the eyes included) the frames differ from the photo by what encoding the photo
        # itself costs at the same settings, no more.
        source = np.repeat(portrait("grace_hopper")[None], len(coeffs), 0)
        write_mp4(Path(report["output"]).with_name("still.mp4"), source, None, fps=25, crf=17)
        top = slice(0, 240)  # Grace Hopper's eyes are at about y = 215, her mouth at 300

        def error(path: Path) -> float:
            return float(np.abs(decode_frames(path)[:, top].astype(int) - source[:, top].astype(int)).mean())

        assert error(report["output"]) <= 1.1 * error(Path(report["output"]).with_name("still.mp4")) + 0.1
    else:
        assert (pose_track.std(axis=0) > 0).all(), pose_track.std(axis=0)
        size = out.width
        assert out.height == size and size < 512  # the face crop at the renderer's size
    if pose == "source":
        # The driving video's pose about its own mean, around the portrait's pose.
        np.testing.assert_allclose(pose_track.mean(axis=0), own_pose, atol=1e-5)


def test_the_driving_video_pose_follows_the_driving_head(animate, inputs, tiny_corpus) -> None:
    """pose=source: the offsets from the portrait's pose follow the driving clip's head (its 3DMM pose as
    preprocessing fitted it, about its mean), and past the clip's end they play it backwards."""
    from datamodules.shards import ShardReader

    animation = animate("source", "happy")
    offsets = pose_of(animation.coeffs) - pose_of(animation.portrait_coeffs[None])
    speaker = inputs["driving"].stem
    fitted = next(
        pose_of(np.asarray(clip["coeffs"]))[:DRIVING_FRAMES]
        for split in ("train", "val", "test")
        for clip in ShardReader(tiny_corpus.shard_dir / split)
        if clip["identity"] == speaker
    )
    n = DRIVING_FRAMES
    axis = int(np.argmax(fitted.std(axis=0)[:3]))  # the rotation that moves most
    assert np.corrcoef(offsets[:n, axis], fitted[:, axis])[0, 1] > 0.8
    # Pingpong: after the clip's last frame n - 1, frame n - 1 + k shows the clip's frame n - 1 - k.
    back = np.arange(n, len(offsets))
    np.testing.assert_allclose(offsets[back], offsets[2 * (n - 1) - back], atol=1e-6)


def test_emotions_change_the_expression_and_the_same_seed_repeats_the_video(
    animate, tiny_chain, tiny_motion, inputs, tmp_path
) -> None:
    """Same speech and seed: sad and happy generate different expressions; happy again, through the console
    script, writes exactly the same frames."""
    from lightning_modules.tasks.animate import main

    happy, sad = animate("generated", "happy"), animate("generated", "sad")
    difference = np.abs(happy.coeffs[:, 80:144] - sad.coeffs[:, 80:144]).max()
    assert difference > 1e-6, difference
    output = tmp_path / "again.mp4"
    main(
        [
            str(inputs["image"]),
            str(inputs["audio"]),
            "--emotion",
            "happy",
            "--pose",
            "generated",
            "-o",
            str(output),
            f"paths.log_dir={tmp_path}",
            f"generator.renderer_checkpoint={tiny_chain.renderer}",
            f"animate.motion.checkpoint={tiny_motion.emotion}",
            "dub.progress=false",
        ]
    )
    assert np.array_equal(decode_frames(output), decode_frames(happy.report["output"]))
    assert (tmp_path / "animate" / "cli" / "animate_report.json").is_file()


def test_bad_inputs_stop_with_the_file_and_the_reason_and_leave_no_output(
    tiny_chain, tiny_motion, inputs, tmp_path
) -> None:
    from lightning_modules.common.errors import AnimationError, ConfigurationError
    from lightning_modules.tasks.animate import run_animate

    output = tmp_path / "out.mp4"
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio")
    base = [f"image={inputs['image']}", f"audio={inputs['audio']}", f"output={output}"]
    cases = [
        (AnimationError, "wall.png: no_face: no face found", [f"image={inputs['wall']}"]),
        (AnimationError, "missing.png: missing", [f"image={tmp_path / 'missing.png'}"]),
        (AnimationError, "notes.wav as the speech: not_a_media_file", [f"audio={notes}"]),
        (ConfigurationError, "unknown emotion 'ecstatic'", ["emotion=ecstatic"]),
        (
            ConfigurationError,
            "without an emotion controller",
            ["emotion=sad", f"animate.motion.checkpoint={tiny_motion.dit}"],
        ),
        (ConfigurationError, "pose=source needs the driving video", ["pose=source"]),
        (ConfigurationError, "pose=sideways", ["pose=sideways"]),
    ]
    for error, message, overrides in cases:
        with pytest.raises(error, match=message):
            run_animate(animate_config(tiny_chain, tiny_motion, tmp_path, [*base, *overrides]))
        assert not output.exists() and not output.with_name("out.mp4.tmp").exists(), message
        assert not output.with_suffix(".png").exists()


def test_a_plain_motion_dit_animates_with_the_null_emotion(tiny_chain, tiny_motion, inputs, tmp_path) -> None:
    """A checkpoint without an emotion controller is fine as long as no emotion is asked for."""
    from lightning_modules.tasks.animate import run_animate

    short = tmp_path / "short.wav"
    audio_lib.write_wav(short, audio_lib.synthesize_speech(0.4, seed=2))
    output = tmp_path / "plain.mp4"
    cfg = animate_config(
        tiny_chain,
        tiny_motion,
        tmp_path,
        [
            f"image={inputs['image']}",
            f"audio={short}",
            f"output={output}",
            "pose=still",
            "animate.paste_still=false",
            f"animate.motion.checkpoint={tiny_motion.dit}",
        ],
    )
    animation = run_animate(cfg)
    assert animation.report["emotion"] is None and probe(output).num_frames == 10
