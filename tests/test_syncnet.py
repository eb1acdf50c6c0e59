"""Wav2Lip's SyncNet expert: shapes, gradients, the official key names, the sync measures, the
contrastive objective, and a short training run on the synthetic corpus that learns to tell in-sync
from off-sync audio."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from lightning_modules.losses import contrastive_sync_loss
from lightning_modules.metrics.sync import sync_measures, sync_probability
from lightning_modules.networks.syncnet import SyncNet, face_window, load_syncnet
from lightning_modules.syncnet import SyncNetModule
from tests.official_weights import official_unit, random_state_dict, save_official_checkpoint


def official_syncnet_shapes() -> dict[str, tuple]:
    """SyncNet_color's state-dict keys and shapes, transcribed from the layer list of
    Rudrabha/Wav2Lip models/syncnet.py (independently of lightning_modules.networks.syncnet)."""
    face = [(15, 32, 7), (32, 64, 5), (64, 64, 3), (64, 64, 3), (64, 128, 3), (128, 128, 3), (128, 128, 3)]
    face += [(128, 128, 3), (128, 256, 3), (256, 256, 3), (256, 256, 3), (256, 512, 3), (512, 512, 3)]
    face += [(512, 512, 3), (512, 512, 3), (512, 512, 3), (512, 512, 1)]
    audio = [(1, 32, 3), (32, 32, 3), (32, 32, 3), (32, 64, 3), (64, 64, 3), (64, 64, 3), (64, 128, 3)]
    audio += [(128, 128, 3), (128, 128, 3), (128, 256, 3), (256, 256, 3), (256, 256, 3), (256, 512, 3)]
    audio += [(512, 512, 1)]
    shapes: dict[str, tuple] = {}
    for name, layers in (("face_encoder", face), ("audio_encoder", audio)):
        for index, (cin, cout, kernel) in enumerate(layers):
            shapes |= official_unit(f"{name}.{index}", cin, cout, kernel)
    return shapes


def test_syncnet_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    syncnet = SyncNet()
    frames = torch.rand(2, 5, 3, 128, 128)
    mel = torch.randn(2, 80, 16)
    audio, face = syncnet(mel, face_window(frames))
    assert audio.shape == face.shape == (2, 512)
    assert torch.allclose(audio.norm(dim=1), torch.ones(2)) and torch.allclose(
        face.norm(dim=1), torch.ones(2)
    )
    probability = sync_probability(syncnet, frames, mel)
    assert probability.shape == (2,) and (probability >= 0).all() and (probability <= 1).all()
    probability.sum().backward()
    for name in ("face_encoder.0.conv_block.0.weight", "audio_encoder.0.conv_block.0.weight"):
        grad = dict(syncnet.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_face_window_stacks_lower_halves_frame_by_frame_in_bgr() -> None:
    """Wav2Lip concatenates the five BGR crops along the channels and keeps rows 48..95."""
    frames = torch.zeros(1, 5, 3, 96, 96)
    for k in range(5):
        for c in range(3):
            frames[0, k, c, :48] = 0.9  # the upper half must not reach the expert
            frames[0, k, c, 48:] = (10 * k + c) / 100
    stacked = face_window(frames)
    assert stacked.shape == (1, 15, 48, 96)
    expected = torch.tensor([(10 * k + (2 - c)) / 100 for k in range(5) for c in range(3)])
    assert torch.allclose(stacked[0, :, 0, 0], expected)
    assert torch.allclose(stacked[0].amax(dim=(1, 2)), expected)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_syncnet_loads_official_key_names(prefix: str, tmp_path: Path) -> None:
    shapes = official_syncnet_shapes()
    state = random_state_dict(shapes, seed=1)
    path = tmp_path / "lipsync_expert.pth"
    save_official_checkpoint(path, state, prefix)
    syncnet = load_syncnet(path)
    loaded = syncnet.state_dict()
    assert set(loaded) == set(shapes)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert not syncnet.training and not any(p.requires_grad for p in syncnet.parameters())


def test_syncnet_loader_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere/lipsync_expert\.pth.*experiment=syncnet"):
        load_syncnet(tmp_path / "nowhere" / "lipsync_expert.pth")
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(ValueError, match="notes.pth"):
        load_syncnet(not_a_checkpoint)


def test_syncnet_loads_from_a_module_checkpoint(tmp_path: Path) -> None:
    """A checkpoint of experiment=syncnet (Lightning's layout: the module's state dict, keys under
    `syncnet.`, with hyper-parameters beside it) loads, its width read from the weights."""
    torch.manual_seed(0)
    module = SyncNetModule(SyncNet(width=0.125), optimizer=partial(torch.optim.Adam, lr=1e-4))
    path = tmp_path / "last.ckpt"
    torch.save(
        {
            "epoch": 3,
            "global_step": 40,
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
        },
        path,
    )
    syncnet = load_syncnet(path)
    assert syncnet.width == 0.125
    frames, mel = torch.rand(2, 5, 3, 96, 96), torch.randn(2, 80, 16)
    assert torch.allclose(
        sync_probability(syncnet, frames, mel), sync_probability(module.syncnet.eval(), frames, mel)
    )


def test_sync_measures_match_a_direct_offset_search() -> None:
    """The batched offset search equals the loop of syncnet_python: for each offset, the mean distance
    of face window s to audio window s + o over the pairs inside the clip."""
    torch.manual_seed(0)
    syncnet = SyncNet(width=0.125).eval()
    frames, mel = torch.rand(2, 9, 3, 96, 96), torch.randn(2, 9, 80, 16)
    measures = sync_measures(syncnet, frames, mel, max_offset=3)
    for b in range(2):
        curve = []
        for offset in range(-3, 4):
            distances = []
            for s in range(9 - 5 + 1):
                if 0 <= s + offset < 9:
                    audio, face = syncnet(mel[b, s + offset][None], face_window(frames[b, s : s + 5][None]))
                    distances.append((audio - face).norm())
            curve.append(torch.stack(distances).mean())
        curve = torch.stack(curve)
        assert torch.allclose(measures["distance"][b], curve.min(), atol=1e-5)
        assert torch.allclose(measures["confidence"][b], curve.median() - curve.min(), atol=1e-5)
        assert measures["offset"][b] == curve.argmin() - 3
    with pytest.raises(ValueError, match="at least 6 frames"):
        sync_measures(syncnet, frames[:, :5], mel[:, :5])


# --- the contrastive objective ---------------------------------------------------------------------


def orthonormal_clips(batch: int, length: int) -> torch.Tensor:
    """(B, T, B T) audio embeddings, one basis vector per mel window: every cosine is 0 or 1."""
    return torch.eye(batch * length).view(batch, length, batch * length)


@pytest.mark.parametrize("other_clips", [False, True])
def test_contrastive_loss_is_low_in_sync_and_high_off_sync(other_clips: bool) -> None:
    """Faces equal to their own in-sync audio give log(1 + n e^-s) over the n negatives; the same faces
    against audio shifted by 3 frames (one negative now matches exactly) give log(n + e^s) - 0. The
    two windows next to the positive (min_offset 2) are no candidates at all, and other clips count
    only with `other_clips`."""
    batch, length, scale = 3, 9, 5.0
    audio = orthonormal_clips(batch, length)
    starts = torch.tensor([[0, 4], [2, 5], [1, 3]])
    rows = torch.arange(batch)[:, None]
    in_sync = audio[rows, starts]
    shifted = audio[rows, starts + 3]
    # Own clip: T minus the positive minus its neighbours within 1 frame (one at the clip's start).
    near = ((torch.arange(length) - starts[..., None]).abs() == 1).sum(-1).float()
    negatives = (length - 1 - near) + (batch - 1) * length * other_clips
    low = contrastive_sync_loss(in_sync, audio, starts, 2, scale, other_clips)
    high = contrastive_sync_loss(shifted, audio, starts, 2, scale, other_clips)
    assert torch.allclose(low, torch.log1p(negatives * torch.exp(torch.tensor(-scale))).mean())
    assert torch.allclose(high, torch.log(negatives - 1 + torch.exp(torch.tensor(scale)) + 1).mean())
    assert low < 0.2 < 4.0 < high


def test_contrastive_loss_matches_a_direct_softmax() -> None:
    """Against a loop over the face windows: cross-entropy of the in-sync audio among the admissible
    windows of the face's own clip (|j - s| >= min_offset, or j = s)."""
    torch.manual_seed(0)
    face = torch.nn.functional.normalize(torch.randn(3, 2, 8), dim=-1)
    audio = torch.nn.functional.normalize(torch.randn(3, 10, 8), dim=-1)
    starts = torch.tensor([[0, 5], [3, 4], [9, 1]])
    expected = []
    for b in range(3):
        for k in range(2):
            s = int(starts[b, k])
            keep = [j for j in range(10) if j == s or abs(j - s) >= 3]
            logits = 7.0 * audio[b, keep] @ face[b, k]
            expected.append(-torch.log_softmax(logits, 0)[keep.index(s)])
    loss = contrastive_sync_loss(face, audio, starts, min_offset=3, logit_scale=7.0)
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-6)


@pytest.mark.parametrize("objective", ["contrastive", "bce"])
def test_training_step_reaches_both_encoders(objective: str, monkeypatch) -> None:
    """One training step of either objective gives every SyncNet encoder a gradient (and the
    contrastive one its learnable temperature); shapes follow a `view: window` batch."""
    torch.manual_seed(0)
    module = SyncNetModule(
        SyncNet(width=0.125),
        optimizer=partial(torch.optim.Adam, lr=1e-4),
        objective=objective,
        learn_temperature=True,
        faces_per_clip=2,
    )
    logged: dict[str, float] = {}
    monkeypatch.setattr(
        module, "log", lambda name, value, **_: logged.update({name: float(torch.as_tensor(value).detach())})
    )
    batch = {"frames": torch.rand(3, 9, 3, 96, 96), "mel": torch.randn(3, 9, 80, 16)}
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and logged["train/loss"] == float(loss)
    for name in ("face_encoder.0.conv_block.0.weight", "audio_encoder.0.conv_block.0.weight"):
        grad = dict(module.syncnet.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    if objective == "contrastive":
        assert module.log_logit_scale.grad is not None and module.log_logit_scale.grad != 0
        assert 0.0 <= logged["train/top1"] <= 1.0
    else:
        assert not hasattr(module, "log_logit_scale")


def test_contrastive_options_are_checked() -> None:
    net, optimizer = SyncNet(width=0.125), partial(torch.optim.Adam, lr=1e-4)
    with pytest.raises(ValueError, match="objective"):
        SyncNetModule(net, optimizer, objective="triplet")
    with pytest.raises(ValueError, match="faces_per_clip"):
        SyncNetModule(net, optimizer, objective="contrastive", faces_per_clip=0)
    module = SyncNetModule(net, optimizer, objective="contrastive", faces_per_clip=6)
    with pytest.raises(ValueError, match="window_frames >= 10"):
        module.training_step({"frames": torch.rand(2, 9, 3, 96, 96), "mel": torch.randn(2, 9, 80, 16)}, 0)


# --- learning on the synthetic corpus ---------------------------------------------------------------


@pytest.mark.slow  # 800 steps: about 7 min on 2 cores
def test_demo_syncnet_separates_unseen_speakers(default_corpus, tmp_path: Path) -> None:
    """experiment=demo_syncnet (the CPU recipe of the expert) trained on the default synthetic corpus
    separates in-sync from off-sync pairs (>= 2 frames apart) of the 4 validation speakers, none seen in
    training, far better than chance and than before training (measured ROC AUC 0.82-0.87 over 5 seeds),
    through the module's own validation metrics."""
    import lightning as L

    from lightning_modules.common.config import compose_config
    from tests.helpers import instantiate_quietly

    L.seed_everything(1234)
    cfg = compose_config(
        ["experiment=demo_syncnet", f"paths.data_dir={default_corpus}", f"paths.log_dir={tmp_path}"],
        tmp_path / "run",
    )
    datamodule, module, trainer = instantiate_quietly(cfg)
    before = float(trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/auc"])
    trainer.fit(module, datamodule=datamodule)
    after = float(trainer.callback_metrics["val/auc"])
    separation = float(trainer.callback_metrics["val/separation"])
    print(
        f"held-out ROC AUC {before:.3f} -> {after:.3f} after {trainer.global_step} steps; "
        f"in-sync minus off-sync similarity {separation:.3f}"
    )
    assert trainer.global_step == 800
    assert after > 0.65 and after > before + 0.1
    assert separation > 0.05
