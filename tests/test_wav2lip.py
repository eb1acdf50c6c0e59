"""The Wav2Lip generator: shapes, gradients, loading state dicts with the official key names, the
teacher's training step and `generate_semantic_frames`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_modules.networks.syncnet import SyncNet
from lightning_modules.networks.wav2lip import Wav2LipGenerator, generate_semantic_frames, load_wav2lip
from lightning_modules.wav2lip_teacher import Wav2LipTeacherModule
from tests.official_weights import official_unit, random_state_dict, save_official_checkpoint


def official_wav2lip_shapes() -> dict[str, tuple]:
    """The official generator's state-dict keys and shapes, transcribed from the layer list of
    Rudrabha/Wav2Lip models/wav2lip.py (independently of lightning_modules.networks.wav2lip)."""
    shapes: dict[str, tuple] = {}
    face = [  # block -> [(in, out, kernel)]
        [(6, 16, 7)],
        [(16, 32, 3), (32, 32, 3), (32, 32, 3)],
        [(32, 64, 3), (64, 64, 3), (64, 64, 3), (64, 64, 3)],
        [(64, 128, 3), (128, 128, 3), (128, 128, 3)],
        [(128, 256, 3), (256, 256, 3), (256, 256, 3)],
        [(256, 512, 3), (512, 512, 3)],
        [(512, 512, 3), (512, 512, 1)],
    ]
    for b, block in enumerate(face):
        for u, (cin, cout, k) in enumerate(block):
            shapes |= official_unit(f"face_encoder_blocks.{b}.{u}", cin, cout, k)
    audio = [(1, 32, 3), (32, 32, 3), (32, 32, 3), (32, 64, 3), (64, 64, 3), (64, 64, 3), (64, 128, 3)]
    audio += [(128, 128, 3), (128, 128, 3), (128, 256, 3), (256, 256, 3), (256, 512, 3), (512, 512, 1)]
    for u, (cin, cout, k) in enumerate(audio):
        shapes |= official_unit(f"audio_encoder.{u}", cin, cout, k)
    decoder = [  # (transposed head in, out, residual units); block 0 is a 1x1 conv 512 -> 512
        (1024, 512, 1),
        (1024, 512, 2),
        (768, 384, 2),
        (512, 256, 2),
        (320, 128, 2),
        (160, 64, 2),
    ]
    shapes |= official_unit("face_decoder_blocks.0.0", 512, 512, 1)
    for b, (cin, cout, residual) in enumerate(decoder, start=1):
        shapes |= official_unit(f"face_decoder_blocks.{b}.0", cin, cout, 3, transpose=True)
        for u in range(1, residual + 1):
            shapes |= official_unit(f"face_decoder_blocks.{b}.{u}", cout, cout, 3)
    shapes |= official_unit("output_block.0", 80, 32, 3)
    shapes |= {"output_block.1.weight": (3, 32, 1, 1), "output_block.1.bias": (3,)}
    return shapes


def test_generator_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    generator = Wav2LipGenerator()
    mel = torch.randn(2, 80, 16)
    faces = torch.rand(2, 6, 96, 96)
    out = generator(mel, faces)
    assert out.shape == (2, 3, 96, 96)
    assert out.min() >= 0 and out.max() <= 1
    out.mean().backward()
    for name in ("face_encoder_blocks.0.0.conv_block.0.weight", "audio_encoder.0.conv_block.0.weight"):
        grad = dict(generator.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match=r"\(N, 6, 96, 96\)"):
        generator(mel, torch.rand(2, 6, 128, 128))


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_generator_loads_official_key_names(prefix: str, tmp_path: Path) -> None:
    shapes = official_wav2lip_shapes()
    state = random_state_dict(shapes)
    path = tmp_path / "wav2lip_gan.pth"
    save_official_checkpoint(path, state, prefix)
    generator = load_wav2lip(path)
    loaded = generator.state_dict()
    assert set(loaded) == set(shapes)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert not generator.training
    assert sum(p.numel() for p in generator.parameters()) == 36_298_035


def test_generator_loader_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "wav2lip.pth"
    with pytest.raises(FileNotFoundError, match=r"wav2lip\.pth.*Rudrabha/Wav2Lip"):
        load_wav2lip(missing)
    state = random_state_dict(official_wav2lip_shapes())
    del state["output_block.1.bias"]
    truncated = tmp_path / "truncated.pth"
    save_official_checkpoint(truncated, state, "module.")
    with pytest.raises(ValueError, match="truncated.pth"):
        load_wav2lip(truncated)


def test_generated_frames_never_see_their_own_mouth() -> None:
    """The default reference of frame t is frame t - T/2, and the target's lower half is masked: so
    changing the mouth of frame 0 changes the output of frame T/2 only."""
    torch.manual_seed(0)
    generator = Wav2LipGenerator(width=0.125).eval()
    length = 6
    frames = (np.random.default_rng(0).random((length, 96, 96, 3)) * 255).astype(np.uint8)
    mel = np.random.default_rng(1).standard_normal((length, 80, 16)).astype(np.float32)
    out = generate_semantic_frames(generator, frames, mel)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == frames.shape
    changed = frames.copy()
    changed[0, 48:] = 255 - changed[0, 48:]
    out_changed = generate_semantic_frames(generator, changed, mel)
    differs = [not np.array_equal(out[t], out_changed[t]) for t in range(length)]
    assert differs == [t == length // 2 for t in range(length)]


def test_generated_frames_keep_layout_and_follow_the_audio() -> None:
    torch.manual_seed(0)
    generator = Wav2LipGenerator(width=0.125).eval()
    frames = torch.rand(5, 3, 120, 120)
    mel = torch.randn(5, 80, 16)
    out = generate_semantic_frames(generator, frames, mel, output_size=64, batch_size=2)
    assert out.shape == (5, 3, 64, 64) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    # mel_lead = 1: frame t is driven by the window of frame t - 1 (frame 0 by window 0).
    other = mel.clone()
    other[3] = torch.randn(80, 16)
    out_other = generate_semantic_frames(generator, frames, other, output_size=64, batch_size=2)
    assert torch.equal(out[:4], out_other[:4]) and not torch.equal(out[4], out_other[4])
    with pytest.raises(ValueError, match=r"mel must be \(5, 80, 16\)"):
        generate_semantic_frames(generator, frames, mel[:4])


def _teacher_batch(length: int = 11, size: int = 96) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "frames": torch.rand(2, length, 3, size, size, generator=generator),
        "mel": torch.randn(2, length, 80, 16),
    }


def test_teacher_step_trains_the_generator_through_the_frozen_expert(tmp_path: Path) -> None:
    torch.manual_seed(0)
    expert_path = tmp_path / "lipsync_expert.pth"
    torch.save({"state_dict": SyncNet(width=0.125).state_dict()}, expert_path)
    module = Wav2LipTeacherModule(
        generator=Wav2LipGenerator(width=0.125),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
        syncnet_checkpoint=str(expert_path),
        sync_weight=0.5,
    )
    module.setup("fit")
    module.train()
    assert not module.syncnet.training
    module.sync_active.fill_(True)
    batch = _teacher_batch()
    loss = module.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is not None for p in module.generator.parameters())
    assert all(p.grad is None for p in module.syncnet.parameters())
    # The sync term carries gradient: with only it, the generator still gets one.
    module.generator.zero_grad()
    losses, _ = module._losses(batch, torch.tensor([5, 5]))
    losses["sync"].backward()
    assert module.generator.face_decoder_blocks[0][0].conv_block[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="window_frames >= 11"):
        module.training_step(_teacher_batch(length=10), 0)
