"""Pretrained torchvision networks that losses and metrics use (VGG-19, AlexNet for LPIPS, RAFT), read
from the user's `paths.weights_dir`: nothing is ever downloaded.

Each file keeps the name torchvision gives it (its download URL's last part), so a user fetches it once
on a machine with a network and copies it into `weights_dir`. `torchvision_weights(name, weights_dir)`
is the loaded state dict or None; callers switch the loss or metric off with a warning that names the
file and where it comes from (`missing_weights_message`), never computing it through a random network.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

TORCHVISION_URLS = {
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "alexnet": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "raft_large": "https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth",
    "raft_small": "https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth",
}


def weights_path(name: str, weights_dir: str | os.PathLike) -> Path:
    if name not in TORCHVISION_URLS:
        raise ValueError(f"unknown pretrained network {name!r}; one of {sorted(TORCHVISION_URLS)}")
    return Path(weights_dir) / TORCHVISION_URLS[name].rsplit("/", 1)[-1]


def missing_weights_message(name: str, weights_dir: str | os.PathLike, what: str) -> str:
    path = weights_path(name, weights_dir)
    return (
        f"{what} is off: {path} is missing (download {TORCHVISION_URLS[name]} into paths.weights_dir; "
        "nothing is fetched at run time)"
    )


def torchvision_weights(name: str, weights_dir: str | os.PathLike | None) -> dict[str, torch.Tensor] | None:
    """The state dict of torchvision's pretrained `name`, or None when the file is not in `weights_dir`."""
    if weights_dir is None:
        return None
    path = weights_path(name, weights_dir)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def offline_torch_hub(weights_dir: str | os.PathLike) -> Iterator[None]:
    """While open, torch hub's checkpoint folder is `weights_dir`: library code that asks torchvision for
    pretrained weights (torchmetrics' LPIPS backbone) finds the user's files there instead of
    downloading."""
    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as hub:
        os.symlink(Path(weights_dir).resolve(), Path(hub) / "checkpoints")
        torch.hub.set_dir(hub)
        try:
            yield
        finally:
            torch.hub.set_dir(previous)
