"""Dubbing (`task=dub`, lightning_modules/tasks/dub.py) and its evaluation (`task=eval`) on real mp4 files.

The generators are real checkpoints of the suite, trained for a few steps on the tiny corpus by the real
run.py tasks (`tiny_chain`, and `tiny_motion` for the motion DiT; tests/conftest.py): what is tested here
is the dubbing front and back end (frame counts, rates, durations, audio, missing faces, paste-back,
inputs, the motion DiT in place of stage 1), which does not depend on how well they learnt.
The faces are the tiny corpus's synthetic ones and a real photograph (Grace Hopper) filmed into a
talking clip at 30 fps.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from datamodules.media import audio as audio_lib
from datamodules.media.video import decode_frames, load_speech, probe, write_mp4
from tests.helpers import Chain
from tests.real_footage import talking_clip


def dub_config(chain: Chain, tmp_path: Path, overrides: list[str]):
    from lightning_modules.common.config import compose_config

    # The pipeline's checkpoints, unless another generator is chosen (whose node has no such keys); the
    # renderer run also says how a video is analysed for a generator without a run of its own.
    pipeline = [f"generator.a2e_checkpoint={chain.a2e}", f"generator.renderer_checkpoint={chain.renderer}"]
    if any(o.startswith("generator=") for o in overrides):
        pipeline = []
    return compose_config(
        [
            "task=dub",
            f"paths.log_dir={tmp_path}",
            *pipeline,
            f"dub.analysis_renderer={chain.renderer}",
            "dub.progress=false",
            *overrides,
        ],
        tmp_path / "run",
    )


def run_dub(chain: Chain, tmp_path: Path, video: Path, audio: Path, *overrides: str) -> dict:
    from lightning_modules.tasks.dub import run_dub as dub

    output = tmp_path / "out.mp4"
    cfg = dub_config(chain, tmp_path, [f"video={video}", f"audio={audio}", f"output={output}", *overrides])
    (report,) = dub(cfg)
    return report


def audio_of(path: Path) -> np.ndarray:
    return load_speech(path)


def _raw_clips(tiny_corpus) -> list[Path]:
    return sorted(tiny_corpus.raw_dir.glob("mp4/*/*/*.mp4"))


def assert_unchanged_above_the_mouth(video: Path, output: Path, tmp_path: Path) -> None:
    """Above the mouth region (eyes, background) the output differs from the source by what encoding the
    source's own frames again at the same settings costs, no more."""
    a, b = decode_frames(video), decode_frames(output)
    write_mp4(tmp_path / "again.mp4", a, None, fps=25, crf=17)
    again = decode_frames(tmp_path / "again.mp4")
    top = slice(0, a.shape[1] // 3)

    def error(x: np.ndarray) -> float:
        return float(np.abs(a[:, top].astype(int) - x[:, top].astype(int)).mean())

    assert error(b) <= 1.1 * error(again) + 0.1, (error(b), error(again))


def test_a_synthetic_clip_is_dubbed_with_its_frame_count_duration_and_the_new_audio(
    tiny_chain, tiny_corpus, tmp_path
) -> None:
    video, speech = _raw_clips(tiny_corpus)[:2]
    report = run_dub(tiny_chain, tmp_path, video, speech, "dub.on_long_audio=trim")
    source, out = probe(video), probe(report["output"])
    assert out.num_frames == source.num_frames
    assert out.fps == pytest.approx(source.fps, rel=1e-3)
    assert out.video_duration_s == pytest.approx(source.video_duration_s, abs=1e-3)
    assert out.has_audio and out.audio_duration_s == pytest.approx(source.video_duration_s, abs=0.07)
    # The new speech is in the output, not the video's own: the waveforms correlate.
    heard, new, old = audio_of(Path(report["output"])), audio_of(speech), audio_of(video)
    n = min(len(heard), len(new), len(old)) - 2048
    assert np.corrcoef(heard[:n], new[:n])[0, 1] > 0.9
    assert abs(np.corrcoef(heard[:n], old[:n])[0, 1]) < 0.5
    assert report["dubbed_frames"] == source.num_frames and report["passed_through"] == []
    assert_unchanged_above_the_mouth(video, Path(report["output"]), tmp_path)
    assert Path(report["output"]).with_suffix(".png").is_file()
    written = json.loads((tmp_path / "run" / "dub_report.json").read_text())
    assert written["dubbed"][0]["output"] == report["output"]


@pytest.fixture
def rendered(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every `SynergyDubber.render` call of the test, in order: (track, expression, its real result)."""
    from lightning_modules.inference.generators import SynergyDubber

    calls = []
    render = SynergyDubber.render

    def spy(self, track, expression):
        result = render(self, track, expression)
        calls.append((track, expression, result))
        return result

    monkeypatch.setattr(SynergyDubber, "render", spy)
    return calls


def test_the_motion_dit_dubs_in_place_of_stage_1_and_the_video_keeps_its_pose(
    tiny_chain, tiny_motion, tiny_corpus, rendered, tmp_path
) -> None:
    """`task=dub motion=diffusion emotion=happy`: the video's frame count, rate and the new audio; every
    frame is rendered with the source track's fitted coefficients but for the expression, which is the
    DiT's one sequence for the whole speech sliced per chunk (the chunks join where the DiT's windows do:
    no jump); above the mouth the output is the source's."""
    from datamodules.media.audio import fit_length
    from lightning_modules.inference.motion_source import DiffusionMotion
    from lightning_modules.inference.tracks import Speech

    video, speech = _raw_clips(tiny_corpus)[:2]
    overrides = ["motion=diffusion", "emotion=happy", f"motion.checkpoint={tiny_motion.emotion}"]
    overrides += ["dub.chunk_frames=16", "dub.on_long_audio=trim", "generator.silence=null"]
    # The stage-1 checkpoint is not read: a path that does not exist is no problem.
    overrides.append(f"generator.a2e_checkpoint={tmp_path / 'none.ckpt'}")
    report = run_dub(tiny_chain, tmp_path, video, speech, *overrides)
    source, out = probe(video), probe(report["output"])
    assert out.num_frames == source.num_frames and out.fps == pytest.approx(source.fps, rel=1e-3)
    heard, new = audio_of(Path(report["output"])), audio_of(speech)
    n = min(len(heard), len(new)) - 2048
    assert np.corrcoef(heard[:n], new[:n])[0, 1] > 0.9
    assert len(rendered) == 2 and report["dubbed_frames"] == source.num_frames  # two chunks, one track each
    for track, expression, result in rendered:
        coeffs = result.coeffs.numpy()
        np.testing.assert_array_equal(coeffs[:, 80:144], expression)
        kept = np.r_[0:80, 144:257]  # identity, texture, angles, light, translation: the track's own
        np.testing.assert_array_equal(coeffs[:, kept], track.coeffs[:, kept].astype(np.float32))
    # The expression is the DiT's whole-speech sequence (first track's identity), frame by frame.
    motion = DiffusionMotion(str(tiny_motion.emotion), emotion="happy", level=2, seed=0)
    wave = fit_length(audio_of(speech), int(round(source.num_frames / source.fps * 16000)))
    identity = rendered[0][0].coeffs[:, :80].mean(axis=0)
    whole = motion.expression_of(motion.generate(Speech.from_wave(wave), identity))
    np.testing.assert_allclose(np.concatenate([e for _, e, _ in rendered]), whole, atol=1e-5)
    assert_unchanged_above_the_mouth(video, Path(report["output"]), tmp_path)


def test_the_motion_dit_dubs_a_real_30_fps_portrait_at_its_rate_and_pose(
    tiny_chain, tiny_motion, rendered, tmp_path
) -> None:
    """Grace Hopper's photo panned and zoomed into a 30 fps talking clip, dubbed with `motion=diffusion
    emotion=sad`: it stays 30 fps with its frame count; every frame is rendered with the track's own
    fitted pose, identity, texture and light; the expression is the DiT's 25 fps sequence interpolated to
    the frames' times (between ticks at 30 fps); above the mouth the output is the source's."""
    from datamodules.media.audio import fit_length
    from lightning_modules.inference.motion_source import DiffusionMotion
    from lightning_modules.inference.tracks import Speech

    clip = talking_clip(tmp_path / "hopper.mp4", "grace_hopper", 2.0, fps=30, seed=5)
    speech = tmp_path / "speech.wav"
    audio_lib.write_wav(speech, audio_lib.synthesize_speech(2.0, seed=11))
    overrides = ["motion=diffusion", "emotion=sad", f"motion.checkpoint={tiny_motion.emotion}"]
    overrides += ["generator.silence=null", f"generator.a2e_checkpoint={tmp_path / 'none.ckpt'}"]
    report = run_dub(tiny_chain, tmp_path, clip.path, speech, *overrides)
    source, out = probe(clip.path), probe(report["output"])
    assert out.fps == pytest.approx(30.0, rel=1e-3) and out.num_frames == source.num_frames
    assert report["dubbed_frames"] == source.num_frames
    motion = DiffusionMotion(str(tiny_motion.emotion), emotion="sad", level=2, seed=0)
    wave = fit_length(audio_of(speech), int(round(source.num_frames / source.fps * 16000)))
    identity = rendered[0][0].coeffs[:, :80].mean(axis=0)
    whole = motion.expression_of(motion.generate(Speech.from_wave(wave), identity))
    for track, expression, result in rendered:
        coeffs = result.coeffs.numpy()
        kept = np.r_[0:80, 144:257]
        np.testing.assert_array_equal(coeffs[:, kept], track.coeffs[:, kept].astype(np.float32))
        ticks = track.times * 25.0
        assert np.any(np.abs(ticks - np.round(ticks)) > 0.1)  # frames between the DiT's ticks
        between = np.stack([np.interp(ticks, np.arange(len(whole)), whole[:, k]) for k in range(64)], 1)
        np.testing.assert_allclose(expression, between, atol=1e-5)
    assert_unchanged_above_the_mouth(clip.path, Path(report["output"]), tmp_path)


def test_an_emotion_needs_the_motion_dit_and_its_controller(
    tiny_chain, tiny_motion, tiny_corpus, tmp_path
) -> None:
    from lightning_modules.common.errors import ConfigurationError

    video, speech = _raw_clips(tiny_corpus)[:2]
    cases = [
        (["emotion=happy"], "needs the diffusion motion"),
        (["motion=diffusion", "emotion=elated"], "unknown emotion 'elated'"),
        (["motion=diffusion", "emotion=sad", f"motion.checkpoint={tiny_motion.dit}"], "emotion controller"),
        (
            ["motion=diffusion", "generator=wav2lip", f"generator.checkpoint={tiny_chain.wav2lip}"],
            "has no stage 1",
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            run_dub(tiny_chain, tmp_path, video, speech, *overrides)
        assert not (tmp_path / "out.mp4").exists()


def test_a_real_30_fps_portrait_keeps_its_rate_and_faceless_frames_pass_through_unchanged(
    tiny_chain, tmp_path
) -> None:
    clip = talking_clip(tmp_path / "hopper.mp4", "grace_hopper", 2.0, fps=30, seed=4)
    frames = decode_frames(clip.path)
    blank = slice(20, 32)  # 0.4 s without a face in the middle: a cut to a plain wall
    frames[blank] = np.full_like(frames[blank], 96)
    edited = tmp_path / "hopper_cut.mp4"
    write_mp4(edited, frames, load_speech(clip.path), fps=30)
    speech = tmp_path / "speech.wav"
    audio_lib.write_wav(speech, audio_lib.synthesize_speech(2.0, seed=9))
    report = run_dub(tiny_chain, tmp_path, edited, speech, "dub.chunk_frames=25")
    out = probe(report["output"])
    assert out.fps == pytest.approx(30.0, rel=1e-3) and out.num_frames == len(frames)
    assert report["passed_through"] == [(blank.start, blank.stop - 1)]
    assert report["dubbed_frames"] == len(frames) - (blank.stop - blank.start)
    source, dubbed = decode_frames(edited).astype(int), decode_frames(report["output"]).astype(int)
    assert np.abs(source[blank] - dubbed[blank]).mean() < 0.5  # the encoder's rounding only
    x0, y0, x1, y1 = clip.face_box_at(0.0)
    mouth = (
        slice(int(y0 + 0.6 * (y1 - y0)), int(y1)),
        slice(int(x0 + 0.25 * (x1 - x0)), int(x1 - 0.25 * (x1 - x0))),
    )
    changed = np.abs(source[:, mouth[0], mouth[1]] - dubbed[:, mouth[0], mouth[1]]).mean(axis=(1, 2, 3))
    assert changed[: blank.start].mean() > 3 * changed[blank].mean()


def test_audio_longer_than_the_video_follows_the_policy(tiny_chain, tiny_corpus, tmp_path) -> None:
    from lightning_modules.inference.dubber import output_plan

    assert output_plan(4, 25, 0.16, "loop").tolist() == [0, 1, 2, 3]
    assert output_plan(4, 25, 0.4, "loop").tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert output_plan(4, 25, 0.4, "pingpong").tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert output_plan(4, 25, 0.4, "freeze").tolist() == [0, 1, 2, 3, 3, 3, 3, 3, 3, 3]
    assert output_plan(4, 25, 0.4, "trim").tolist() == [0, 1, 2, 3]
    assert output_plan(4, 25, 0.2, "loop", tolerance_s=0.05).tolist() == [0, 1, 2, 3]
    video = _raw_clips(tiny_corpus)[0]
    speech = tmp_path / "long.wav"
    seconds = probe(video).video_duration_s + 0.8
    audio_lib.write_wav(speech, audio_lib.synthesize_speech(seconds, seed=3))
    report = run_dub(tiny_chain, tmp_path, video, speech, "dub.on_long_audio=pingpong")
    out = probe(report["output"])
    assert out.video_duration_s == pytest.approx(seconds, abs=0.05)
    assert out.audio_duration_s == pytest.approx(seconds, abs=0.07)


def test_speech_files_of_any_common_format_are_resampled_to_16_khz(tmp_path) -> None:
    """wav at 44.1 kHz, m4a (AAC), mp3 where PyAV can encode it, and a video's audio track: a 440 Hz tone
    comes back at 16 kHz, as long, at 440 Hz."""
    rate, seconds = 44100, 1.5
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)
    audio_lib.write_wav(tmp_path / "tone.wav", tone, sample_rate=rate)
    files = [tmp_path / "tone.wav"]
    for suffix, codec in ((".m4a", "aac"), (".mp3", "libmp3lame")):
        path = tmp_path / f"tone{suffix}"
        try:
            with av.open(str(path), "w") as container:
                stream = container.add_stream(codec, rate=rate)
                stream.layout = "mono"
                frame = av.AudioFrame.from_ndarray(
                    audio_lib.to_int16(tone)[None], format="s16", layout="mono"
                )
                frame.sample_rate = rate
                container.mux(stream.encode(frame))
                container.mux(stream.encode(None))
        except (av.error.FFmpegError, ValueError) as error:  # no mp3 encoder in this FFmpeg build
            assert codec == "libmp3lame", error
            continue
        files.append(path)
    tone16 = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(16000 * seconds)) / 16000)).astype(np.float32)
    write_mp4(tmp_path / "tone.mp4", np.zeros((38, 32, 32, 3), np.uint8), tone16, fps=25)
    files.append(tmp_path / "tone.mp4")
    for path in files:
        wave = load_speech(path)
        assert abs(len(wave) / 16000 - seconds) < 0.1, path
        spectrum = np.abs(np.fft.rfft(wave[2000:18000]))
        peak = np.fft.rfftfreq(16000, 1 / 16000)[spectrum.argmax()]
        assert abs(peak - 440) < 3, (path, peak)


def test_bad_inputs_stop_with_the_file_and_the_reason_and_leave_no_output(
    tiny_chain, tiny_corpus, tmp_path
) -> None:
    from lightning_modules.common.errors import DubbingError

    video = _raw_clips(tiny_corpus)[0]
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    silent = tmp_path / "silent.mp4"
    write_mp4(silent, decode_frames(video)[:30], None, fps=25)
    noise = tmp_path / "noise.mp4"
    rng = np.random.default_rng(0)
    write_mp4(
        noise, rng.integers(0, 255, (30, 96, 96, 3), dtype=np.uint8), audio_lib.synthesize_speech(1.2, 1)
    )
    cases = [
        (text, video, "notes.mp4: not_a_video"),
        (tmp_path / "missing.mp4", video, "missing.mp4 does not exist"),
        (video, silent, "silent.mp4 has no audio stream"),
        (noise, video, "no face found in any of the"),
    ]
    for face, speech, message in cases:
        with pytest.raises(DubbingError, match=message):
            run_dub(tiny_chain, tmp_path, face, speech)
        assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out.mp4.tmp").exists()


def test_the_console_script_takes_hydra_overrides_after_its_options() -> None:
    from lightning_modules.tasks.dub import cli_overrides

    overrides = cli_overrides(
        [
            "face.mp4",
            "speech.wav",
            "-o",
            "out.mp4",
            "--motion",
            "diffusion",
            "--emotion",
            "sad",
            "dub.device=cuda",
        ]
    )
    assert overrides[:2] == ["task=dub", "dub.device=cuda"]
    assert {f"video={Path('face.mp4').resolve()}", "motion=diffusion", "emotion=sad"} <= set(overrides)


def test_a_batch_dubs_every_pair_lists_failures_and_resumes(tiny_chain, tiny_corpus, tmp_path) -> None:
    from lightning_modules.tasks.dub import run_dub as dub

    videos = _raw_clips(tiny_corpus)[:2]
    folder = tmp_path / "batch"
    folder.mkdir()
    for k, video in enumerate(videos):
        (folder / f"take{k}.mp4").symlink_to(video)
        audio_lib.write_wav(folder / f"take{k}.wav", audio_lib.synthesize_speech(1.0, seed=k))
    (folder / "broken.mp4").write_text("x")
    audio_lib.write_wav(folder / "broken.wav", audio_lib.synthesize_speech(1.0, seed=5))
    cfg = dub_config(tiny_chain, tmp_path, [f"dub.batch={folder}", f"dub.output_dir={tmp_path / 'out'}"])
    reports = dub(cfg)
    assert sorted(Path(r["output"]).name for r in reports) == ["take0__take0.mp4", "take1__take1.mp4"]
    failed = json.loads((tmp_path / "run" / "dub_report.json").read_text())["failed"]
    assert [Path(f["video"]).name for f in failed] == ["broken.mp4"] and "not_a_video" in failed[0]["error"]
    assert dub(cfg) == []  # a rerun finds every output there


def test_wav2lip_dubs_the_same_video_through_the_same_front_and_back_end(
    tiny_chain, tiny_corpus, tmp_path
) -> None:
    video, speech = _raw_clips(tiny_corpus)[:2]
    report = run_dub(
        tiny_chain, tmp_path, video, speech, "generator=wav2lip", f"generator.checkpoint={tiny_chain.wav2lip}"
    )
    assert probe(report["output"]).num_frames == probe(video).num_frames


def test_paste_back_leaves_every_pixel_outside_the_mouth_region_and_the_crop_border_as_it_was() -> None:
    from lightning_modules.inference.paste import paste_into_frame, paste_weights

    rng = np.random.default_rng(0)
    size = 128
    landmarks = np.zeros((68, 2), np.float32)
    landmarks[2:15] = np.stack([np.linspace(20, 108, 13), 64 + 40 * np.sin(np.linspace(0, np.pi, 13))], 1)
    landmarks[31:36] = np.stack([np.linspace(54, 74, 5), np.full(5, 70.0)], 1)
    lower = np.zeros((size, size), np.float32)
    lower[size // 2 :] = 1
    weights = paste_weights(lower, [landmarks], feather=0.04)
    ring = np.ones((size, size), bool)
    ring[5:-5, 5:-5] = False
    assert weights[ring].max() == 0.0 and weights[: size // 2].max() == 0.0
    assert weights.max() == pytest.approx(1.0, abs=1e-3)
    # A soft edge: no step larger than a fraction of the weight range between neighbours.
    assert np.abs(np.diff(weights, axis=0)).max() < 0.35 and np.abs(np.diff(weights, axis=1)).max() < 0.35
    frame = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    crop = rng.random((size, size, 3)).astype(np.float32)
    box = np.array([100, 50, 200])
    out = paste_into_frame(frame, crop, weights, box)
    outside = np.ones(frame.shape[:2], bool)
    outside[50:250, 100:300] = False
    assert np.array_equal(out[outside], frame[outside])
    region_weights = cv2.resize(weights, (200, 200))
    untouched = region_weights == 0
    assert np.array_equal(out[50:250, 100:300][untouched], frame[50:250, 100:300][untouched])
    assert not np.array_equal(out, frame)


def test_eval_writes_table_1_with_the_wav2lip_row_and_table_3(tiny_chain, corpus_args, tmp_path) -> None:
    from lightning_modules.common.config import compose_config
    from lightning_modules.evaluation.dubbing import run_evaluation

    cfg = compose_config(
        [
            *corpus_args,
            "task=eval",
            "logger=many",
            f"paths.log_dir={tmp_path}",
            f"eval.models.synergydub.a2e_checkpoint={tiny_chain.a2e}",
            f"eval.models.synergydub.renderer_checkpoint={tiny_chain.renderer}",
            f"eval.models.wav2lip.checkpoint={tiny_chain.wav2lip}",
            f"eval.a2e_checkpoints.demo={tiny_chain.a2e}",
        ],
        tmp_path / "run",
    )
    result = run_evaluation(cfg)
    rows = {(row["model"], row["setting"]): row for row in result["table1"]}
    assert set(rows) == {
        ("ground truth", "real frames"),
        ("synergydub", "own speech"),
        ("synergydub", "other speech"),
        ("wav2lip", "own speech"),
        ("wav2lip", "other speech"),
    }
    for model in ("synergydub", "wav2lip"):
        row = rows[(model, "own speech")]
        assert 10 < row["PSNR"] < 60 and 0 < row["SSIM"] <= 1 and 0 < row["CSIM"] <= 1 and row["LMD"] >= 0
    assert result["sync_network"] == "none"  # no expert in this run: the Sync columns say so
    table = (tmp_path / "run" / "table1.md").read_text()
    assert "| wav2lip | own speech |" in table and "Sync: none" in table
    # No AlexNet or Inception file here: the table says which columns are off and why.
    assert "LPIPS: off (" in table and "alexnet-owt-7be5be79.pth missing" in table and "FID: off (" in table
    assert set(result["switched_off"]) == {"LPIPS", "FID"}
    per_clip = (tmp_path / "run" / "table1_per_clip.csv").read_text().splitlines()
    assert per_clip[0].startswith("model,setting,clip_id,PSNR") and len(per_clip) == 1 + 2 * 2
    # The tables are in the run's offline W&B run too.
    from tests.helpers import wandb_history_keys, wandb_records

    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    keys = wandb_history_keys(wandb_records(next(run.glob("run-*.wandb"))))
    assert {"eval/table1", "eval/table3"} <= keys, keys
    (demo, baseline) = result["table3"]
    assert demo["model"] == "demo" and demo["AED"] > 0 and baseline["AED"] > 0
    assert (tmp_path / "run" / "table3.csv").is_file()


def test_silent_stretches_of_the_speech_close_the_mouth(tiny_chain, tiny_corpus) -> None:
    """The silence gate: in a stretch of silence the expression is the neutral one (lips closed), in
    sound it is stage 1's, with a ramp between; shorter gaps than `min_s` are left to stage 1."""
    from lightning_modules.evaluation.dubbing import clip_track, test_clips
    from lightning_modules.inference.generators import SynergyDubber, silence_weights
    from lightning_modules.inference.tracks import Speech

    rate = 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(0.4 * rate)) / rate)
    wave = np.concatenate([tone, np.zeros(int(0.4 * rate)), tone, np.zeros(int(0.1 * rate)), tone])
    wave = wave.astype(np.float32)
    times = np.arange(int(len(wave) / 640)) / 25
    weights = silence_weights(wave, times, threshold_db=-45, min_s=0.2, ramp_s=0.08)
    assert weights[:10].max() == 0 and weights[12:18].min() == 1 and weights[20:].max() == 0
    assert 0 < weights[10] < 1 or 0 < weights[11] < 1  # the ramp
    track, _ = clip_track(next(test_clips(tiny_corpus.shard_dir / "test")))
    speech = Speech.from_wave(np.resize(wave, len(track) * 640))
    gated = SynergyDubber(
        str(tiny_chain.a2e),
        str(tiny_chain.renderer),
        silence={"threshold_db": -45, "min_s": 0.2, "ramp_s": 0.08},
    )
    plain = SynergyDubber(str(tiny_chain.a2e), str(tiny_chain.renderer), silence=None)
    closed, free = gated.expressions(track, speech), plain.expressions(track, speech)
    quiet = silence_weights(speech.wave, track.times, -45, 0.2, 0.08) == 1
    assert quiet.sum() >= 5
    assert np.abs(closed[quiet]).max() == 0 and np.abs(free[quiet]).max() > 0
    loud = silence_weights(speech.wave, track.times, -45, 0.2, 0.08) == 0
    np.testing.assert_array_equal(closed[loud], free[loud])
