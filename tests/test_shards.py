"""The shard format: round trip, frame-by-frame decoding, validation, and the atomic writer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datamodules.shards import (
    CLIP_SCHEMA,
    ShardReader,
    decode_image,
    decode_images,
    encode_images,
    is_complete_shard_dir,
    make_clip_sample,
    num_images,
    random_clip_sample,
    write_shards,
)


def smooth_frames(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """Gradients plus a bright square: JPEG keeps them within a few grey levels."""
    g = np.linspace(0, 200, size, dtype=np.float32)
    base = rng.uniform(0, 40, (count, 1, 1, 3)) + 0.5 * g[None, :, None, None] + 0.3 * g[None, None, :, None]
    base[:, size // 4 : size // 2, size // 4 : size // 2] = 250
    return np.clip(base, 0, 255).astype(np.uint8)


def test_round_trip_returns_what_was_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    originals = []
    for i in range(5):
        t, s = 6 + i, 32
        arrays = dict(
            frames=smooth_frames(rng, t, s),
            render3d=smooth_frames(rng, t, s),
            face_mask=rng.random((t, s, s)) > 0.5,
            coeffs=rng.normal(size=(t, 257)).astype(np.float32),
            landmarks=rng.uniform(0, s, (t, 68, 2)).astype(np.float32),
            audio=rng.integers(-30000, 30000, 640 * t).astype(np.int16),
            mfcc=rng.normal(size=(4 * t, 13)).astype(np.float32),
            mel=rng.normal(size=(80, 1 + 16 * t // 5)).astype(np.float32),
            semantic=smooth_frames(rng, t, 16) if i % 2 else None,
        )
        originals.append(arrays)
        # an existing file as `source`: litdata must store the path, not the file
        source = str(tmp_path / f"{i}.mp4")
        Path(source).write_bytes(b"\x00\x00\x00\x18ftypmp42")
        yield_sample = make_clip_sample(f"clip{i}", f"id{i % 2}", source=source, **arrays)
        originals[-1]["sample"] = yield_sample
    count = write_shards((o["sample"] for o in originals), tmp_path / "train", chunk_bytes="30KB")
    assert count == 5 and is_complete_shard_dir(tmp_path / "train")

    reader = ShardReader(tmp_path / "train")
    assert len(reader) == 5 and reader.clip_ids() == [f"clip{i}" for i in range(5)]
    for i, original in enumerate(originals):
        clip = reader[i]
        assert list(clip) == list(CLIP_SCHEMA)
        source = str(tmp_path / f"{i}.mp4")
        assert (clip["identity"], clip["source"], clip["num_frames"]) == (f"id{i % 2}", source, 6 + i)
        for key in ("coeffs", "landmarks", "audio", "mfcc", "mel"):
            np.testing.assert_array_equal(clip[key], original[key])
            assert clip[key].dtype == original[key].dtype
        frames = decode_images(clip["frames"], clip["frame_offsets"], range(clip["num_frames"]))
        assert np.abs(frames.astype(int) - original["frames"]).mean() < 2.0  # JPEG quality 95
        masks = decode_images(
            clip["face_mask"], clip["face_mask_offsets"], range(clip["num_frames"]), gray=True
        )
        np.testing.assert_array_equal(masks > 127, original["face_mask"])  # PNG: lossless
        if original["semantic"] is None:
            assert clip["semantic"] == b"" and num_images(clip["semantic_offsets"]) == 0
        else:
            semantic = decode_images(clip["semantic"], clip["semantic_offsets"], range(6 + i))
            assert semantic.shape == (6 + i, 16, 16, 3)


def test_single_frame_decoding_matches_the_stack() -> None:
    rng = np.random.default_rng(1)
    frames = smooth_frames(rng, 7, 24)
    blob, offsets = encode_images(frames)
    assert offsets.shape == (8,) and offsets[0] == 0 and offsets[-1] == len(blob)
    everything = decode_images(blob, offsets, range(7))
    np.testing.assert_array_equal(decode_image(blob, offsets, 4), everything[4])
    np.testing.assert_array_equal(decode_images(blob, offsets, [6, 0, 6]), everything[[6, 0, 6]])
    with pytest.raises(IndexError):
        decode_image(blob, offsets, 7)


def test_bad_samples_are_refused_with_the_clip_and_the_field(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    sample = random_clip_sample(rng, "clipA", num_frames=5)
    bad = dict(sample, coeffs=sample["coeffs"][:, :200])
    with pytest.raises(ValueError, match="clipA.*coeffs"):
        write_shards([bad], tmp_path / "bad")
    bad = dict(sample, audio=sample["audio"][:-1])
    with pytest.raises(ValueError, match="clipA.*audio"):
        write_shards([bad], tmp_path / "bad")
    with pytest.raises(ValueError, match="clipA.*twice"):
        write_shards([sample, sample], tmp_path / "bad")
    with pytest.raises(ValueError, match="no samples"):
        write_shards([], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary dir left behind


def test_writer_is_atomic_and_overwrites_only_when_asked(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    out = tmp_path / "train"
    write_shards([random_clip_sample(rng, f"c{i}") for i in range(3)], out)
    with pytest.raises(FileExistsError):
        write_shards([random_clip_sample(rng, "other")], out)

    def crashing():
        yield random_clip_sample(rng, "x0")
        yield random_clip_sample(rng, "x1")
        raise RuntimeError("decoder crashed")

    with pytest.raises(RuntimeError, match="decoder crashed"):
        write_shards(crashing(), out, overwrite=True)
    assert ShardReader(out).clip_ids() == ["c0", "c1", "c2"]  # the old dataset, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]

    write_shards([random_clip_sample(rng, "n0")], out, overwrite=True)
    assert ShardReader(out).clip_ids() == ["n0"]


def test_a_killed_writer_leaves_no_shard_dir_and_its_leftovers_are_cleaned(tmp_path: Path) -> None:
    """kill -9 in the middle of writing: no output dir; the next writer removes the dead temporary dir."""
    out = tmp_path / "train"
    script = (
        "import os, signal, numpy as np\n"
        "from datamodules.shards import random_clip_sample, write_shards\n"
        "rng = np.random.default_rng(0)\n"
        "def samples():\n"
        "    for i in range(4):\n"
        "        yield random_clip_sample(rng, f'c{i}')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"write_shards(samples(), {str(out)!r}, chunk_bytes='20KB')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -9, result.stderr.decode()
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".train.tmp-")]
    assert len(leftovers) == 1 and any(leftovers[0].iterdir())  # chunks were on disk when it died
    write_shards([random_clip_sample(np.random.default_rng(1), "c0")], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]
    assert os.path.exists(out / "index.json")
