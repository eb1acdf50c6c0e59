"""ShardDataModule over small shards built here: batch keys and shapes, audio alignment, masking,
reference policies, determinism, disjoint DDP ranks, and mid-epoch resume."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pytest
import torch

from datamodules import ShardDataModule
from datamodules.datasets import choose_references, evaluation_items, mel_windows, mfcc_windows
from datamodules.media.masks import mouth_mask, mouth_masked_crop
from datamodules.shards import COEFF_SLICES, MANIFEST_NAME, random_clip_sample, write_shards

CONF = Path(__file__).resolve().parents[1] / "conf"
NUM_TRAIN = 12
SIZE = 32


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    for split, count in (("train", NUM_TRAIN), ("val", 4), ("test", 3)):
        samples = (
            random_clip_sample(
                rng, f"{split}{i:02d}", f"id{i % 3}", num_frames=8 + i % 4, image_size=SIZE, semantic_size=16
            )
            for i in range(count)
        )
        write_shards(samples, root / split, chunk_bytes="40KB")  # several chunks: exercises chunk assignment
    (root / MANIFEST_NAME).write_text("")  # what preprocessing writes last
    return root


def make_dm(shard_dir: Path, **overrides) -> ShardDataModule:
    """A datamodule over the hand-made shards (as a real corpus: the synthetic one would be rebuilt)."""
    args = dict(corpus="voxceleb2", shard_dir=str(shard_dir), batch_size=2, image_size=SIZE, seed=7)
    dm = ShardDataModule(**{**args, **overrides})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def epoch(loader) -> list[tuple[str, int]]:
    """(clip_id, window start or frame index) of every sample of one pass."""
    out = []
    for batch in loader:
        where = batch["start"] if "start" in batch else batch["frame_index"]
        out += list(zip(batch["clip_id"], where.tolist()))
    return out


def test_window_batches_have_the_documented_keys_and_shapes(shard_dir: Path) -> None:
    dm = make_dm(shard_dir, view="window", window_frames=5, load_frames=True, image_size=24)
    batch = next(iter(dm.train_dataloader()))
    shapes = {k: tuple(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    assert shapes == {
        "mfcc": (2, 5, 1, 13, 28),
        "mel": (2, 5, 80, 16),
        "coeffs": (2, 5, 257),
        "landmarks": (2, 5, 68, 2),
        "semantic": (2, 5, 3, 24, 24),  # stored at 16 px by the teacher, served at image_size
        "frames": (2, 5, 3, 24, 24),
        "audio": (2, 640 * 5),
        "albedo": (2, 0, 3),  # these clips carry no per-vertex albedo
        "start": (2,),
        "emotion": (2,),
        "emotion_level": (2,),
    }
    assert len(batch["clip_id"]) == 2 and all(isinstance(c, str) for c in batch["clip_id"])
    assert (
        batch["frames"].dtype == torch.float32 and batch["frames"].min() >= 0 and batch["frames"].max() <= 1
    )
    assert batch["audio"].abs().max() <= 1
    # landmarks come in the pixels of the returned (resized) image
    assert batch["landmarks"].max() <= 0.8 * 24 + 1e-4


def test_evaluation_windows_have_their_own_length(shard_dir: Path) -> None:
    """`eval_window_frames`: val / test windows of that length, the same every epoch, while training keeps
    `window_frames`; the windows tile every clip, the last one ending at its end."""
    dm = make_dm(shard_dir, view="window", window_frames=3, eval_window_frames=8)
    assert next(iter(dm.train_dataloader()))["coeffs"].shape[1] == 3
    for loader in (dm.val_dataloader, dm.test_dataloader):
        batch = next(iter(loader()))
        assert batch["coeffs"].shape[1] == batch["mfcc"].shape[1] == batch["mel"].shape[1] == 8
        assert batch["audio"].shape[1] == 640 * 8
    first, again = epoch(dm.val_dataloader()), epoch(dm.val_dataloader())
    # val clips val00..val03 have 8, 9, 10, 11 frames: one window of 8 for the first, two for the others
    expected = [
        ("val00", 0),
        ("val01", 0),
        ("val01", 1),
        ("val02", 0),
        ("val02", 2),
        ("val03", 0),
        ("val03", 3),
    ]
    assert first == again == expected
    windows_of_3 = epoch(make_dm(shard_dir, view="window", window_frames=3).val_dataloader())
    assert windows_of_3[:3] == [("val00", 0), ("val00", 3), ("val00", 5)]


def test_training_draws_several_examples_per_clip(shard_dir: Path) -> None:
    """`examples_per_clip`: that many draws of each clip an epoch, each its own window, so that a paper-size
    batch fills from few clips."""
    drawn = epoch(make_dm(shard_dir, view="window", examples_per_clip=3, batch_size=4).train_dataloader())
    assert len(drawn) == 3 * NUM_TRAIN
    assert {clip: sum(c == clip for c, _ in drawn) for clip, _ in drawn} == {
        f"train{i:02d}": 3 for i in range(NUM_TRAIN)
    }
    assert len(set(drawn)) > 2 * NUM_TRAIN  # the draws of a clip are not one window thrice
    big_batch = make_dm(shard_dir, view="window", examples_per_clip=2, batch_size=16).train_dataloader()
    assert len(big_batch) == 1


def test_prediction_takes_whole_clips(shard_dir: Path) -> None:
    dm = make_dm(shard_dir, view="window", window_frames=3)
    lengths = [batch["coeffs"].shape[1] for batch in dm.predict_dataloader()]
    assert lengths == [8, 9, 10]  # the 3 test clips, whole, one a batch


def test_frame_batches_have_the_documented_keys_and_shapes(shard_dir: Path) -> None:
    dm = make_dm(shard_dir, view="frame", num_references=3, mask_mode="landmark_hull")
    batch = next(iter(dm.train_dataloader()))
    shapes = {k: tuple(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    assert shapes == {
        "target": (2, 3, SIZE, SIZE),
        "render3d": (2, 3, SIZE, SIZE),
        "masked": (2, 3, SIZE, SIZE),
        "mouth_mask": (2, 1, SIZE, SIZE),
        "face_mask": (2, 1, SIZE, SIZE),
        "references": (2, 3, 3, SIZE, SIZE),
        "references_render3d": (2, 3, 3, SIZE, SIZE),
        "coeffs": (2, 257),
        "landmarks": (2, 68, 2),
        "references_coeffs": (2, 3, 257),
        "frame_index": (2,),
        "emotion": (2,),
        "emotion_level": (2,),
    }
    # the masked crop is the target with the mouth mask blanked out, nothing else changed
    changed = (batch["masked"] != batch["target"]).any(dim=1)
    assert changed.any() and (batch["masked"].permute(0, 2, 3, 1)[changed] == 0).all()
    assert (batch["mouth_mask"][:, 0].bool() | ~changed).all()


def test_frame_view_resizes_images_and_landmarks_together(shard_dir: Path) -> None:
    stored = next(iter(make_dm(shard_dir, view="frame").val_dataloader()))
    resized = next(iter(make_dm(shard_dir, view="frame", image_size=48).val_dataloader()))
    assert resized["target"].shape == (2, 3, 48, 48) and resized["references"].shape == (2, 2, 3, 48, 48)
    assert resized["face_mask"].shape == (2, 1, 48, 48) and resized["masked"].shape == (2, 3, 48, 48)
    assert resized["clip_id"] == stored["clip_id"] and torch.equal(
        resized["frame_index"], stored["frame_index"]
    )
    torch.testing.assert_close(resized["landmarks"], stored["landmarks"] * 1.5)


def test_audio_windows_follow_the_frame_clock() -> None:
    mfcc = np.repeat(np.arange(40, dtype=np.float32)[:, None], 13, axis=1)  # 10 frames at 100 steps/s
    windows = mfcc_windows(mfcc, np.array([0, 5, 9]), 28)
    assert windows.shape == (3, 1, 13, 28)
    # frame t is centred on MFCC step 4 t + 1; edges repeat the first / last step
    np.testing.assert_array_equal(windows[1, 0, 0], np.arange(21 - 14, 21 + 14))
    np.testing.assert_array_equal(windows[0, 0, 0], np.clip(np.arange(1 - 14, 1 + 14), 0, 39))
    np.testing.assert_array_equal(windows[2, 0, 0], np.clip(np.arange(37 - 14, 37 + 14), 0, 39))
    mel = np.repeat(np.arange(33, dtype=np.float32)[None, :], 80, axis=0)  # 10 frames at 80 steps/s
    windows = mel_windows(mel, np.array([0, 3, 9]), 16)
    assert windows.shape == (3, 80, 16)
    np.testing.assert_array_equal(windows[1, 0], np.arange(9, 25))  # int(80 * 3 / 25) = 9 (Wav2Lip)
    np.testing.assert_array_equal(windows[2, 0], np.clip(np.arange(28, 44), 0, 32))


def test_window_audio_is_the_windows_samples(shard_dir: Path) -> None:
    from datamodules.shards import ShardReader

    dm = make_dm(shard_dir, view="window", window_frames=4)
    batch = next(iter(dm.val_dataloader()))
    clips = {c["clip_id"]: c for c in ShardReader(shard_dir / "val")}
    for clip_id, start, audio, coeffs in zip(
        batch["clip_id"], batch["start"], batch["audio"], batch["coeffs"]
    ):
        clip = clips[clip_id]
        expected = clip["audio"][640 * start : 640 * (start + 4)].astype(np.float32) / 32768
        np.testing.assert_allclose(audio.numpy(), expected)
        np.testing.assert_array_equal(coeffs.numpy(), clip["coeffs"][start : start + 4])


def test_mouth_masks() -> None:
    landmarks = np.zeros((68, 2), np.float32)
    landmarks[:, 0], landmarks[:, 1] = 16, 8  # everything at the top except the hull points below
    landmarks[2:15] = np.stack([np.linspace(6, 26, 13), np.full(13, 28)], axis=1)
    landmarks[31:36] = np.stack([np.linspace(12, 20, 5), np.full(5, 18)], axis=1)
    half = mouth_mask(32, 32, landmarks, "lower_half")
    assert half[16:].all() and not half[:16].any()
    hull = mouth_mask(32, 32, landmarks, "landmark_hull", dilation=0.0)
    assert hull[23, 16] and not hull[10, 16] and not hull[23, 2]
    assert mouth_mask(32, 32, landmarks, "landmark_hull", dilation=0.1).sum() > hull.sum()
    image = np.full((32, 32, 3), 0.5, np.float32)
    masked = mouth_masked_crop(image, landmarks, "landmark_hull", 0.0)
    assert (masked[hull] == 0).all() and (masked[~hull] == 0.5).all() and (image == 0.5).all()
    with pytest.raises(ValueError, match="mask_mode"):
        mouth_mask(32, 32, landmarks, "ellipse")


def test_reference_policies() -> None:
    rng = np.random.default_rng(0)
    coeffs = np.zeros((20, 257), np.float32)
    coeffs[:, COEFF_SLICES["angle"].start] = np.arange(20)  # yaw grows with time
    coeffs[:, COEFF_SLICES["exp"].start] = np.abs(np.arange(20) - 12.5)  # expression nearest to 10's at 15
    refs = choose_references(coeffs, 10, 4, "random", 3, rng)
    assert len(set(refs)) == 4 and all(abs(r - 10) >= 3 for r in refs)
    assert list(choose_references(coeffs, 10, 2, "farthest_pose", 3, rng)) == [0, 1]
    assert list(choose_references(coeffs, 10, 1, "nearest_expression", 3, rng)) == [15]
    # a clip too short for the gap still gets references other than the target; a 1-frame clip repeats
    assert 1 not in choose_references(coeffs[:3], 1, 2, "random", 5, rng)
    assert list(choose_references(coeffs[:1], 0, 2, "random", 5, rng)) == [0, 0]
    with pytest.raises(ValueError, match="reference_policy"):
        choose_references(coeffs, 0, 1, "closest", 1, rng)


def test_samples_are_seeded_and_deterministic(shard_dir: Path) -> None:
    first = epoch(make_dm(shard_dir, view="frame").train_dataloader())
    assert first == epoch(make_dm(shard_dir, view="frame").train_dataloader())
    assert len(first) == NUM_TRAIN and {c for c, _ in first} == {f"train{i:02d}" for i in range(NUM_TRAIN)}
    assert first != epoch(make_dm(shard_dir, view="frame", seed=8).train_dataloader())
    loader = make_dm(shard_dir, view="frame").train_dataloader()
    assert epoch(loader) == first and epoch(loader) != first  # a new epoch draws anew
    val = make_dm(shard_dir, view="frame").val_dataloader()
    assert epoch(val) == epoch(val)  # validation draws the same examples every epoch
    # ... every frame of every clip once
    assert epoch(val) == [(f"val{i:02d}", t) for i in range(4) for t in range(8 + i)]


def test_ddp_ranks_see_disjoint_samples(shard_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """litdata takes the ranks from the distributed environment; two ranks simulated in-process."""
    seen = []
    for rank in range(2):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("GLOBAL_RANK", str(rank))
        dm = make_dm(shard_dir, view="window", batch_size=1)
        seen.append([clip for clip, _ in epoch(dm.train_dataloader())])
    assert len(seen[0]) == len(seen[1]) == NUM_TRAIN // 2
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == NUM_TRAIN


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_evaluation_covers_every_clip_once_under_any_number_of_ranks(
    shard_dir: Path, world_size: int
) -> None:
    """Each rank takes a contiguous block of the (clip, window) list: together every window of every clip
    once, no repeats to even the ranks out, no dropped tail."""
    dm = make_dm(shard_dir, view="window", window_frames=4)
    examples = dm.make_dataset("test", "test")
    counts = [8, 9, 10]  # the 3 test clips
    everything = [(c, p) for c, n in enumerate(counts) for p in examples.positions(n)]
    blocks = [evaluation_items(examples, counts, rank, world_size) for rank in range(world_size)]
    assert [item for block in blocks for item in block] == everything
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1 and min(map(len, blocks)) >= 1
    with pytest.raises(ValueError, match="cannot give each of 9 ranks one"):
        evaluation_items(examples, counts, 0, 9)


def _gloo_rank(rank: int, shard_dir: str, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        clips = [clip for clip, _ in epoch(make_dm(Path(shard_dir), view="frame").train_dataloader())]
        Path(out_dir, f"rank{rank}.txt").write_text("\n".join(clips))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~40 s on 2 busy cores: two spawned interpreters importing torch and litdata
def test_ddp_ranks_see_disjoint_samples_under_a_real_process_group(shard_dir: Path, tmp_path: Path) -> None:
    """Two gloo processes: litdata reads the ranks from torch.distributed."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gloo_rank, args=(str(shard_dir), port, str(tmp_path)), nprocs=2, join=True)
    seen = [(tmp_path / f"rank{r}.txt").read_text().split("\n") for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == NUM_TRAIN // 2
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == NUM_TRAIN


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_loader_yields_exactly_the_samples_not_yet_seen(shard_dir: Path, num_workers: int) -> None:
    loader = make_dm(shard_dir, view="window", num_workers=num_workers).train_dataloader()
    full, full_next = epoch(loader), epoch(loader)
    dm = make_dm(shard_dir, view="window", num_workers=num_workers)
    seen = []
    for step, batch in enumerate(dm.train_dataloader()):
        seen += list(zip(batch["clip_id"], batch["start"].tolist()))
        if step == 1:
            break
    state = dm.state_dict()  # what Lightning puts in the checkpoint
    resumed = make_dm(shard_dir, view="window", num_workers=num_workers)
    resumed.load_state_dict(state)  # Lightning restores before it asks for the loaders
    loader = resumed.train_dataloader()
    rest = epoch(loader)
    assert len(seen) == 4 and len(rest) == NUM_TRAIN - 4
    assert sorted(seen + rest) == sorted(full)
    assert not set(seen) & set(rest)
    assert epoch(loader) == full_next  # then a fresh epoch, as if never interrupted


def test_too_small_a_corpus_for_one_batch_is_an_error(shard_dir: Path) -> None:
    with pytest.raises(
        ValueError, match="holds 12 clips, 12 training examples an epoch .* not one full batch of 16"
    ):
        make_dm(shard_dir, batch_size=16).train_dataloader()


def test_real_shards_made_otherwise_are_refused(shard_dir: Path, tmp_path: Path) -> None:
    """A real corpus is never silently reused with a face model its coefficients were not fitted with, nor
    read as samples of another preprocessing version."""
    import shutil

    from datamodules.preprocess import PREPROCESS_VERSION
    from datamodules.recipe import face_model_recipe, write_recipe

    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    face_model = {"source": "procedural", "num_vertices": 1000, "seed": 0}
    preprocess = {"face_model": face_model}
    recipe = {"version": PREPROCESS_VERSION, "face_model": face_model_recipe(face_model)}
    write_recipe(copy, recipe)
    make_dm(copy, preprocess=preprocess)  # the same model: fine
    write_recipe(copy, {**recipe, "face_model": {**recipe["face_model"], "fingerprint": "0123456789abcdef"}})
    with pytest.raises(ValueError, match="fitted with another face model .*fingerprint: '0123456789abcdef'"):
        make_dm(copy, preprocess=preprocess)
    # shards of an older preprocessing lack keys this code reads (the emotion labels of version 3)
    write_recipe(copy, {**recipe, "version": PREPROCESS_VERSION - 1})
    with pytest.raises(ValueError, match=f"preprocessing version {PREPROCESS_VERSION - 1}, this code reads"):
        make_dm(copy, preprocess=preprocess)


def test_real_corpus_without_shards_says_how_to_build_them(tmp_path: Path) -> None:
    dm = ShardDataModule(corpus="voxceleb2", shard_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"python run.py task=preprocess data=voxceleb2"):
        dm.prepare_data()
    write_shards([random_clip_sample(np.random.default_rng(0), "c0")], tmp_path / "train")
    with pytest.raises(FileNotFoundError, match="manifest.jsonl"):  # packing was interrupted
        dm.prepare_data()
    (tmp_path / MANIFEST_NAME).write_text("")
    dm.prepare_data()


@pytest.mark.parametrize("corpus", ["synthetic", "voxceleb1", "voxceleb2", "mead", "lrw"])
def test_corpus_configs_instantiate_the_datamodule(
    corpus: str, shard_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """conf/data/<corpus>.yaml through the real composition of conf/config.yaml."""
    from lightning_modules.common.config import compose_config

    monkeypatch.setenv("SYNERGYDUB_ROOT", str(CONF.parent))
    overrides = [f"data={corpus}", f"paths.data_dir={tmp_path}", "seed=3"]
    cfg = compose_config(overrides, hydra_config=False)
    assert cfg.data.shard_dir == f"{tmp_path}/{corpus}/shards"
    assert cfg.data.image_size == (128 if corpus == "synthetic" else 192)
    cfg.data.shard_dir = str(shard_dir)
    cfg.data.batch_size, cfg.data.num_workers, cfg.data.pin_memory = 2, 0, False  # 12 clips, a CPU
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, ShardDataModule) and dm.seed == 3 and dm.corpus == corpus
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["mfcc"].shape[-1] == cfg.data.mfcc_window


def test_lightning_checkpoint_resumes_mid_epoch(shard_dir: Path, tmp_path: Path) -> None:
    """The loader state travels through a real Lightning checkpoint: fit 2 steps, stop, resume."""
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[tuple[str, int]] = []

        def training_step(self, batch, batch_idx):
            self.seen += list(zip(batch["clip_id"], batch["start"].tolist()))
            return (self.weight * batch["coeffs"].mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def trainer(**kwargs) -> L.Trainer:
        args = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
        args.update(enable_model_summary=False, limit_val_batches=0, use_distributed_sampler=False)
        return L.Trainer(default_root_dir=tmp_path, **args, **kwargs)

    # A 2-epoch run that checkpoints every 2 steps (6 steps an epoch); a crashed run resumes from one.
    full = Recorder()
    every_2_steps = L.pytorch.callbacks.ModelCheckpoint(tmp_path, every_n_train_steps=2, save_top_k=-1)
    trainer(max_epochs=2, callbacks=[every_2_steps]).fit(full, datamodule=make_dm(shard_dir))
    assert len(full.seen) == 2 * NUM_TRAIN
    checkpoint = torch.load(tmp_path / "epoch=0-step=2.ckpt", weights_only=False)
    assert checkpoint["ShardDataModule"]["train_loader"]["num_samples_yielded"] == 4

    for name, done in (("epoch=0-step=2.ckpt", 4), ("epoch=0-step=6.ckpt", NUM_TRAIN)):  # mid, end of epoch
        resumed = Recorder()
        trainer(max_epochs=2, enable_checkpointing=False).fit(
            resumed, datamodule=make_dm(shard_dir), ckpt_path=tmp_path / name
        )
        assert resumed.seen == full.seen[done:], name
