"""Stand-ins for published weight files: random tensors in the official files' layouts (Wav2Lip, its SyncNet
expert), for tests that read those files the way the real ones are read."""

from __future__ import annotations

from pathlib import Path

import torch


def official_unit(prefix: str, cin: int, cout: int, kernel: int, transpose: bool = False) -> dict[str, tuple]:
    """Key -> shape of one `Conv2d` / `Conv2dTranspose` unit of Rudrabha/Wav2Lip models/conv.py
    (`conv_block` = [conv with bias, BatchNorm2d])."""
    weight = (cin, cout, kernel, kernel) if transpose else (cout, cin, kernel, kernel)
    return {
        f"{prefix}.conv_block.0.weight": weight,
        f"{prefix}.conv_block.0.bias": (cout,),
        f"{prefix}.conv_block.1.weight": (cout,),
        f"{prefix}.conv_block.1.bias": (cout,),
        f"{prefix}.conv_block.1.running_mean": (cout,),
        f"{prefix}.conv_block.1.running_var": (cout,),
        f"{prefix}.conv_block.1.num_batches_tracked": (),
    }


def random_state_dict(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = 0.05 * torch.randn(shape, generator=generator)
    return state


def save_official_checkpoint(path: Path, state: dict[str, torch.Tensor], prefix: str) -> None:
    """A file laid out like the released ones: `save_checkpoint` of wav2lip_train.py (state_dict,
    Adam state, step, epoch)."""
    tiny = torch.nn.Parameter(torch.zeros(3))
    adam = torch.optim.Adam([tiny], lr=1e-4)
    tiny.grad = torch.ones(3)
    adam.step()
    checkpoint = {
        "state_dict": {prefix + key: value for key, value in state.items()},
        "optimizer": adam.state_dict(),
        "global_step": 250000,
        "global_epoch": 12,
    }
    torch.save(checkpoint, path)
