"""Emotion in the data: the labels and their parser, the synthetic corpus's emotional faces (an offset per
emotion, scaled by the level) and per-speaker pose style, the default corpus left all neutral, labels
carried from the raw corpus through preprocessing into the shards and batches, MEAD's layout with its
separate audio files, and unlabelled corpora."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from datamodules import ShardDataModule
from datamodules.emotions import (
    EMOTIONS,
    NEUTRAL,
    UNKNOWN,
    emotion_offset,
    offset_table,
    parse_emotion,
    parse_level,
)
from datamodules.media import audio as audio_lib
from datamodules.media.video import decode_frames, write_mp4
from datamodules.preprocess import discover_clips, run_preprocessing
from datamodules.shards import MANIFEST_NAME, ShardReader, random_clip_sample, write_shards
from datamodules.synthetic import (
    MotionParams,
    clip_emotion,
    generate_synthetic_corpus,
    head_pose,
    mouth_expression,
    pose_style,
    with_emotion,
)
from face3d.procedural import EXPRESSION_NAMES
from lightning_modules.common.config import compose_config

from .conftest import tiny_settings

MEAD_NAMES = ("angry", "disgusted", "contempt", "fear", "happy", "neutral", "sad", "surprised")
FAST_FIT = ("face_model.fitting.rigid_steps=10", "face_model.fitting.steps=20")


def synthetic_options(tmp_path: Path, data: str = "synthetic", **overrides) -> dict:
    """The generator's settings of conf/data/<data>.yaml, as `generate_corpus` reads them."""
    cfg = compose_config([f"data={data}", f"paths.data_dir={tmp_path}"], tmp_path / "config")
    options = OmegaConf.to_container(cfg.data.synthetic, resolve=True)
    return {**options, "num_workers": 0, **overrides}


def component(exp: np.ndarray, name: str) -> np.ndarray:
    return exp[..., EXPRESSION_NAMES.index(name)]


# --- labels ------------------------------------------------------------------------------------------


def test_mead_names_and_levels_parse_to_the_label_order() -> None:
    assert [parse_emotion(name) for name in MEAD_NAMES] == [1, 2, 3, 4, 5, 0, 6, 7]
    assert EMOTIONS[parse_emotion("Happy")] == "happy" and NEUTRAL == 0 and UNKNOWN == -1
    assert [parse_level(f"level_{n}") for n in (1, 2, 3)] == [1, 2, 3]
    for bad in ("calm", "happiness", ""):
        with pytest.raises(ValueError, match="unknown emotion"):
            parse_emotion(bad)
    for bad in ("level_0", "level", "2"):
        with pytest.raises(ValueError, match="intensity level"):
            parse_level(bad)


def test_each_emotion_has_its_offset_scaled_by_the_level(tmp_path: Path) -> None:
    """The configured table: every emotion but neutral moves the face, each its own way, and a level's
    offset is its gain times the full one."""
    options = synthetic_options(tmp_path)
    table = offset_table(options["emotion_offsets"], EXPRESSION_NAMES)
    gains = options["emotion_level_gains"]
    assert not table[NEUTRAL].any()
    others = table[1:]
    assert all(row.any() for row in others)
    assert np.linalg.matrix_rank(others) == len(others)  # no emotion is another's weaker or stronger self
    happy, sad, angry = (table[parse_emotion(n)] for n in ("happy", "sad", "angry"))
    assert component(happy, "smile") > 0.5 and component(sad, "smile") < -0.5
    assert component(angry, "brows_frown") > 0.5
    levels = [emotion_offset(table, parse_emotion("happy"), level, gains) for level in (1, 2, 3)]
    assert component(levels[0], "smile") < component(levels[1], "smile") < component(levels[2], "smile")
    for level, offset in zip((1, 2, 3), levels):
        np.testing.assert_allclose(offset, gains[level - 1] * happy, rtol=1e-6)
    with pytest.raises(ValueError, match="level 4"):
        emotion_offset(table, 1, 4, gains)
    with pytest.raises(ValueError, match="neutral must be empty"):
        offset_table({"neutral": {"smile": 0.1}}, EXPRESSION_NAMES)
    with pytest.raises(ValueError, match="unknown component 'grin'"):
        offset_table({"happy": {"grin": 1.0}}, EXPRESSION_NAMES)


def test_clips_cycle_through_every_emotion_and_level() -> None:
    """The emotion corpus's schedule (24 speakers x 4 clips): each emotion as often, every level of it as
    often, neutral at level 1 only, and every speaker a run of different emotions."""
    shown = [[clip_emotion(i, j, EMOTIONS, 3) for j in range(4)] for i in range(24)]
    flat = [clip for speaker in shown for clip in speaker]
    assert all(sum(e == k for e, _ in flat) == 12 for k in range(len(EMOTIONS)))
    assert {level for e, level in flat if e == NEUTRAL} == {1}
    for k in range(1, len(EMOTIONS)):
        assert sorted(level for e, level in flat if e == k) == [1] * 4 + [2] * 4 + [3] * 4
    assert all(len({e for e, _ in speaker}) == 4 for speaker in shown)


def test_the_default_corpus_is_neutral_with_no_offset_and_no_pose_style(tmp_path: Path) -> None:
    """conf/data/synthetic.yaml (the demo's and the learning tests' corpus) makes the frames it made before
    emotions existed: every clip neutral at level 1, the offset exactly zero and leaving the expression
    bit for bit as it was (blinks included), and every speaker's pose style the identity."""
    options = synthetic_options(tmp_path)
    assert options["emotions"] == ["neutral"]
    table = offset_table(options["emotion_offsets"], EXPRESSION_NAMES)
    gains = options["emotion_level_gains"]
    for i in range(options["num_identities"]):
        for j in range(options["clips_per_identity"]):
            emotion, level = clip_emotion(i, j, options["emotions"], len(gains))
            assert (emotion, level) == (NEUTRAL, 1)
            assert not emotion_offset(table, emotion, level, gains).any()
    rng = np.random.default_rng(0)
    exp = rng.normal(size=(40, 64)).astype(np.float32)
    exp[:, EXPRESSION_NAMES.index("blink")] = np.clip(rng.normal(size=40), 0, 1)
    assert np.array_equal(with_emotion(exp, np.zeros(64, np.float32), EXPRESSION_NAMES.index("blink")), exp)
    motion = MotionParams(**options["motion"])
    for i in range(options["num_identities"]):
        style = pose_style(np.random.default_rng([options["seed"], i, 2]), motion)
        assert np.array_equal(style["scale"], np.ones(3)) and style["speed"] == 1.0
        assert np.array_equal(style["tilt"], np.zeros(3))


def test_the_emotion_corpus_has_its_own_directories(tmp_path: Path) -> None:
    """data=synthetic_emotion: the synthetic generator and layout, all 8 emotions, in directories of its
    own, so that it and the default corpus never rebuild each other."""
    cfg = compose_config(["data=synthetic_emotion", f"paths.data_dir={tmp_path}"], tmp_path / "config")
    assert cfg.data.corpus == "synthetic" and list(cfg.data.synthetic.emotions) == list(EMOTIONS)
    own = tmp_path / "synthetic_emotion"
    assert Path(cfg.data.shard_dir) == own / "shards"
    assert Path(cfg.data.preprocess.input_dir) == Path(cfg.data.synthetic.output_dir) == own / "raw"
    assert Path(cfg.data.preprocess.work_dir) == own / "work"


def test_a_speaker_keeps_their_pose_style(tmp_path: Path) -> None:
    """With the emotion corpus's style ranges, two speakers differ in sway size and habitual orientation,
    the same speaker's style being used in every clip."""
    motion = MotionParams(**synthetic_options(tmp_path, "synthetic_emotion")["motion"])
    styles = [pose_style(np.random.default_rng([5, i, 2]), motion) for i in range(2)]
    assert not np.allclose(styles[0]["tilt"], styles[1]["tilt"])
    for style in styles:
        clips = [
            head_pose(5000, np.random.default_rng(c), replace(motion, large_turn_probability=0), style)
            for c in range(3)
        ]
        for angles in clips:
            np.testing.assert_allclose(angles.mean(0), style["tilt"], atol=0.02)
            # the sway's spread follows the speaker's amplitude scale on each axis
            expected = np.array([motion.sway_pitch, motion.sway_yaw, motion.sway_roll]) * style["scale"]
            np.testing.assert_allclose(angles.std(0) / expected, 0.5, atol=0.2)


# --- the synthetic generator -------------------------------------------------------------------------


def test_generator_writes_each_emotion_into_the_ground_truth(tmp_path: Path) -> None:
    """One speaker, one clip per emotion: the npz beside each clip names its emotion and level, holds the
    offset, and its expression coefficients show it on top of the speech (happy smiles, sad pulls the
    mouth corners down, angry frowns, surprised raises the brows and opens the eyes)."""
    options = synthetic_options(
        tmp_path,
        output_dir=str(tmp_path / "raw"),
        num_identities=1,
        clips_per_identity=8,
        num_frames=10,
        image_size=64,
        emotions=list(EMOTIONS),
    )
    generate_synthetic_corpus(**options)
    table = offset_table(options["emotion_offsets"], EXPRESSION_NAMES)
    motion = MotionParams(**options["motion"])
    truth = {}
    for j in range(8):
        with np.load(tmp_path / "raw" / "mp4" / "id00000" / f"syn{j:04d}" / "00001.npz") as data:
            emotion, level = clip_emotion(0, j, EMOTIONS, 3)
            assert (int(data["emotion"]), int(data["emotion_level"])) == (emotion, level) == (j, level)
            offset = emotion_offset(table, emotion, level, options["emotion_level_gains"])
            np.testing.assert_array_equal(data["emotion_offset"], offset)
            exp = truth[EMOTIONS[j]] = data["coeffs"][:, 80:144]
            # the speech still plays on top: the lips press in the clip's pauses as without an emotion
            wave = audio_lib.speech(10 / 25, int(data["audio_seed"]), "builtin")
            features = audio_lib.frame_features(audio_lib.fit_length(wave, 10 * 640), 10)
            speaking = mouth_expression(features, EXPRESSION_NAMES, motion, np.ones(3))
            np.testing.assert_allclose(
                component(exp, "lips_press") - component(offset, "lips_press"),
                component(speaking, "lips_press"),
                atol=1e-5,
            )
    smile = {name: component(exp, "smile").mean() for name, exp in truth.items()}
    assert smile["happy"] > smile["neutral"] + 0.8  # the neutral clip smiles 0.3 at most
    assert smile["sad"] < 0 <= smile["neutral"]
    assert component(truth["neutral"], "brows_frown").max() == 0
    assert component(truth["angry"], "brows_frown").min() > 0.3
    assert component(truth["surprised"], "brows_raise").min() > 0.5
    assert component(truth["surprised"], "blink").min() < -0.2  # eyes wide between blinks


# --- preprocessing, shards and batches ---------------------------------------------------------------


@pytest.fixture(scope="module")
def emotion_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 speakers x 2 clips of 24 frames showing angry, happy / happy, sad."""
    root = tmp_path_factory.mktemp("emotion_corpus")
    options = synthetic_options(
        root,
        output_dir=str(root / "raw"),
        num_identities=2,
        clips_per_identity=2,
        num_frames=24,
        emotions=["angry", "happy", "sad"],
    )
    generate_synthetic_corpus(**options)
    return root / "raw"


def test_labels_survive_preprocessing_into_shards_and_batches(emotion_corpus: Path, tmp_path: Path) -> None:
    expected = {
        "id00000/syn0000/00001": (parse_emotion("angry"), 1),
        "id00000/syn0001/00001": (parse_emotion("happy"), 2),
        "id00001/syn0000/00001": (parse_emotion("happy"), 1),
        "id00001/syn0001/00001": (parse_emotion("sad"), 2),
    }
    clips = discover_clips(emotion_corpus, "synthetic")
    assert {c.clip_id: (c.emotion, c.emotion_level) for c in clips} == expected
    settings = tiny_settings(emotion_corpus, tmp_path / "shards", tmp_path / "work", overrides=FAST_FIT)
    run_preprocessing(settings)
    manifest = (tmp_path / "shards" / MANIFEST_NAME).read_text()
    assert manifest.count('"status": "accepted"') == 4, manifest
    reader = ShardReader(tmp_path / "shards" / "train")  # two speakers: both train
    assert {c["clip_id"]: (c["emotion"], c["emotion_level"]) for c in reader} == expected
    for view in ("window", "frame"):
        dm = ShardDataModule(
            corpus="synthetic", shard_dir=str(tmp_path / "shards"), view=view, batch_size=4, image_size=64
        )
        batch = next(iter(dm.train_dataloader()))
        assert batch["emotion"].dtype == batch["emotion_level"].dtype == torch.long
        got = list(zip(batch["clip_id"], batch["emotion"].tolist(), batch["emotion_level"].tolist()))
        assert all(expected[clip] == (emotion, level) for clip, emotion, level in got), got


def write_m4a(path: Path, wave: np.ndarray) -> None:
    """Mono float audio as AAC in an m4a file, as MEAD ships its audio."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=audio_lib.SAMPLE_RATE)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(audio_lib.to_int16(wave)[None], format="s16", layout="mono")
        frame.sample_rate, frame.pts = audio_lib.SAMPLE_RATE, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_mead_layout_is_discovered_with_its_labels_and_its_separate_audio(
    emotion_corpus: Path, tmp_path: Path
) -> None:
    """A MEAD tree made from a synthetic clip: the video carries other speech in its own track, the m4a the
    clip's own; the shards hold the m4a's audio and the labels of the folders, and a clip whose m4a is
    missing is rejected for it."""
    source = emotion_corpus / "mp4" / "id00000" / "syn0001" / "00001.mp4"
    frames = decode_frames(source)
    speech = audio_lib.speech(
        len(frames) / 25, int(np.load(source.with_suffix(".npz"))["audio_seed"]), "builtin"
    )
    speech = audio_lib.fit_length(speech, len(frames) * audio_lib.SAMPLES_PER_FRAME)
    other = audio_lib.fit_length(audio_lib.synthesize_speech(len(frames) / 25, seed=99), len(speech))
    root = tmp_path / "mead"
    for identity, emotion, level in (("M003", "happy", 2), ("W009", "neutral", 1), ("W011", "sad", 3)):
        video = root / identity / "video" / "front" / emotion / f"level_{level}" / "001.mp4"
        write_mp4(video, frames, other)
        if identity != "W011":
            write_m4a(root / identity / "audio" / emotion / f"level_{level}" / "001.m4a", speech)
    clips = discover_clips(root, "mead")
    assert [(c.clip_id, c.identity, EMOTIONS[c.emotion], c.emotion_level) for c in clips] == [
        ("M003/happy/level_2/001", "M003", "happy", 2),
        ("W009/neutral/level_1/001", "W009", "neutral", 1),
        ("W011/sad/level_3/001", "W011", "sad", 3),
    ]
    assert clips[0].audio_path == str(root / "M003" / "audio" / "happy" / "level_2" / "001.m4a")
    settings = tiny_settings(root, tmp_path / "shards", tmp_path / "work", corpus="mead", overrides=FAST_FIT)
    run_preprocessing(replace(settings, split_fractions={"train": 1.0}))
    lines = (tmp_path / "shards" / MANIFEST_NAME).read_text().splitlines()
    records = {record["clip_id"]: record for record in map(json.loads, lines)}
    assert records["W011/sad/level_3/001"]["reason"] == "missing"
    assert records["M003/happy/level_2/001"]["audio_source"] == clips[0].audio_path
    shards = {c["clip_id"]: c for c in ShardReader(tmp_path / "shards" / "train")}
    assert sorted(shards) == ["M003/happy/level_2/001", "W009/neutral/level_1/001"]
    labels = {clip_id: (clip["emotion"], clip["emotion_level"]) for clip_id, clip in shards.items()}
    assert labels == {
        "M003/happy/level_2/001": (parse_emotion("happy"), 2),
        "W009/neutral/level_1/001": (0, 1),
    }
    # the stored audio is the m4a's from the tube's first frame on, not the video's own track
    heard = audio_lib.to_float(shards["M003/happy/level_2/001"]["audio"])
    first = records["M003/happy/level_2/001"]["start_frame"] * audio_lib.SAMPLES_PER_FRAME
    own, track = (wave[first : first + len(heard)] for wave in (speech, other))
    assert np.corrcoef(heard, own)[0, 1] > 0.9 > 0.3 > abs(np.corrcoef(heard, track)[0, 1])


def test_other_corpora_are_unlabelled(tmp_path: Path) -> None:
    """VoxCeleb and LRW clips (and synthetic clips without labels in their npz) are UNKNOWN at level 0 and
    use their video's own audio; the shards keep the labels exactly, UNKNOWN included, and refuse labels
    that contradict each other."""
    for rel in (
        "vox2/dev/mp4/id00012/abc/00001.mp4",
        "lrw/lipread_mp4/ABOUT/train/ABOUT_00001.mp4",
        "syn/mp4/id00000/syn0000/00001.mp4",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    np.savez(tmp_path / "syn/mp4/id00000/syn0000/00001.npz", coeffs=np.zeros((1, 257), np.float32))
    for folder, corpus in (("vox2", "voxceleb2"), ("lrw", "lrw"), ("syn", "synthetic")):
        (clip,) = discover_clips(tmp_path / folder, corpus)
        assert (clip.emotion, clip.emotion_level, clip.audio_path) == (UNKNOWN, 0, None)
    rng = np.random.default_rng(0)
    samples = [random_clip_sample(rng, "unknown"), random_clip_sample(rng, "sad", emotion=6, emotion_level=3)]
    write_shards(samples, tmp_path / "shards")
    assert [(c["emotion"], c["emotion_level"]) for c in ShardReader(tmp_path / "shards")] == [
        (UNKNOWN, 0),
        (6, 3),
    ]
    for emotion, level in ((UNKNOWN, 1), (3, 0), (len(EMOTIONS), 1)):
        with pytest.raises(ValueError, match="emotion"):
            random_clip_sample(rng, "bad", emotion=emotion, emotion_level=level)


# --- the speaker's identity ----------------------------------------------------------------------------


def test_a_held_identity_keeps_a_lasting_expression_in_the_expression() -> None:
    """One speaker, two clips that smile and frown throughout: fitted each with its own identity, part of
    each lasting offset goes into that clip's identity; fitted with the mean of the two identities held
    fixed (the speaker pass), more of the difference between the clips stays in the expression, and the
    identity is exactly the one given."""
    import face3d

    model = face3d.build_face_model("procedural")
    camera = model.camera.resized(128)
    frames = 20
    identity = torch.randn(80, generator=torch.Generator().manual_seed(0)) * 0.5
    smile = EXPRESSION_NAMES.index("smile")

    def landmarks(offsets: dict[str, float]) -> torch.Tensor:
        expression = torch.zeros(frames, 64)
        for name, value in offsets.items():
            expression[:, EXPRESSION_NAMES.index(name)] = value
        expression[:, EXPRESSION_NAMES.index("jaw_open")] += torch.linspace(0, 1, frames)
        zeros = torch.zeros(frames, 3)
        coeffs = model.join_coeffs(id=identity.expand(frames, -1), exp=expression, angle=zeros, trans=zeros)
        return model.landmarks_2d(coeffs, camera)

    clips = [landmarks({"smile": 1.0}), landmarks({"smile": -1.0, "brows_frown": 1.0})]
    fit = dict(rigid_steps=30, steps=200)
    own = [face3d.fit_landmarks(model, camera, points, **fit) for points in clips]
    speaker = torch.stack([result.coeffs[0, :80] for result in own]).mean(0)
    held = [face3d.fit_landmarks(model, camera, points, **fit, identity=speaker) for points in clips]
    torch.testing.assert_close(held[0].coeffs[:, :80], speaker.expand(frames, -1))

    def smile_difference(results) -> float:  # the true one is 2
        first, second = (float(face3d.expression_of(r.coeffs)[:, smile].mean()) for r in results)
        return first - second

    assert smile_difference(held) > smile_difference(own) + 0.15, (
        smile_difference(own),
        smile_difference(held),
    )
    assert max(float(r.landmark_error.mean()) for r in held) < 1.0


def test_the_speaker_pass_holds_each_speakers_mean_identity_and_resumes(
    emotion_corpus: Path, tmp_path: Path
) -> None:
    """identity=speaker: every clip of a speaker is packed with the mean of the identities their clips
    were fitted with on their own, its I_3D rendered anew; the manifest says so; a rerun fits again only
    what is missing and packs the same shards."""
    from datamodules.preprocess.pipeline import load_result, result_path

    overrides = (*FAST_FIT, "data.preprocess.identity=speaker")
    settings = tiny_settings(emotion_corpus, tmp_path / "shards", tmp_path / "work", overrides=overrides)
    summary = run_preprocessing(settings)
    assert summary["speaker_refits"] == 4
    clips = discover_clips(emotion_corpus, "synthetic")
    own = {c.clip_id: load_result(result_path(settings.work_dir, c.clip_id))["sample"] for c in clips}
    packed = {c["clip_id"]: c for c in ShardReader(tmp_path / "shards" / "train")}
    for speaker in ("id00000", "id00001"):
        mine = [clip_id for clip_id in own if clip_id.startswith(speaker)]
        mean = np.mean([own[k]["coeffs"][:, :80].mean(0) for k in mine], axis=0)
        for clip_id in mine:
            np.testing.assert_allclose(packed[clip_id]["coeffs"][:, :80], np.tile(mean, (24, 1)), atol=1e-6)
            assert not np.array_equal(packed[clip_id]["render3d"], own[clip_id]["render3d"])
            assert packed[clip_id]["frames"] == own[clip_id]["frames"]
    records = [json.loads(line) for line in (tmp_path / "shards" / MANIFEST_NAME).read_text().splitlines()]
    assert {r["identity_fit"] for r in records} == {"speaker"}
    assert all(r["fit_landmark_error_px"] < 3.0 for r in records)

    before = {k: v["coeffs"] for k, v in packed.items()}
    result_path(settings.work_dir, clips[1].clip_id, "speaker").unlink()
    assert run_preprocessing(settings)["speaker_refits"] == 1
    after = {c["clip_id"]: c["coeffs"] for c in ShardReader(tmp_path / "shards" / "train")}
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])


def test_a_run_config_from_before_the_speaker_pass_still_analyses_videos(tmp_path: Path) -> None:
    """A checkpoint's run config written before `preprocess.identity` existed (what dubbing and
    animation analyse a video with) reads as the per-clip fit it was made with; a wrong mode is refused."""
    from datamodules.preprocess import settings_from_config

    cfg = compose_config([f"paths.data_dir={tmp_path}"], tmp_path / "config")
    node = OmegaConf.to_container(cfg.data, resolve=True)
    del node["preprocess"]["identity"]
    assert settings_from_config(node).identity == "clip"
    node["preprocess"]["identity"] = "session"
    with pytest.raises(ValueError, match="preprocess.identity"):
        settings_from_config(node)
