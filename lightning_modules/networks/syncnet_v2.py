"""SyncNet v2 of Chung & Zisserman ("Out of time: automated lip sync in the wild", ACCV workshops 2016),
the network behind the LSE-D / LSE-C numbers that Wav2Lip, the main paper and most dubbing papers report,
reimplemented from the layer list of joonson/syncnet_python `SyncNetModel.py` (class `S`).

Two streams embed 0.2 s of a talking face into a shared 1024-d space (no normalisation; syncnet_python
compares raw embeddings by Euclidean distance):
- `netcnnlip` + `netfclip`: five consecutive 224 x 224 face crops, (N, 3, 5, 224, 224), BGR channel order
  with raw pixel values 0..255 (syncnet_python feeds `cv2.imread` frames, unnormalised);
- `netcnnaud` + `netfcaud`: 20 columns of 13 MFCCs (python_speech_features defaults, 100 columns/s, on
  int16-scaled samples), (N, 1, 13, 20).

The module names and `nn.Sequential` indices are the official ones (pooling and ReLU layers included, so
the indices of the conv / BatchNorm layers match), so the official `syncnet_v2.model` loads by its own key
names (`load_syncnet_v2`).

The file: syncnet_python's `loadParameters` does `torch.load(path)` and then iterates `.items()` of the
result, copying each tensor into `S().state_dict()[name]`, so the official file is a mapping of tensors
(a state dict; as a pre-1.0 PyTorch file it may lack BatchNorm's `num_batches_tracked`). That loads with
`torch.load(..., weights_only=True)`. Only a re-saved copy that pickles a whole model needs
`weights_only=False`; `load_syncnet_v2` then says so in a warning before unpickling (and refuses when
`allow_pickle=False`).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

SYNCNET_V2_FILE = "syncnet_v2.model"
SYNCNET_V2_URL = "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"
SYNCNET_V2_HINT = (
    f"Download the official SyncNet v2 weights ({SYNCNET_V2_URL}, fetched by joonson/syncnet_python's "
    "download_model.sh) on a machine with a network and put the file there; nothing is fetched at run time."
)
EMBEDDING_SIZE = 1024
FACE_SIZE = 224  # syncnet_python's crop side (run_pipeline.py crop_video)
MFCC_COEFFICIENTS = 13
MFCC_WINDOW = 20  # MFCC columns per window: 0.2 s at 100 columns/s, i.e. five video frames at 25 fps


def _conv2d_block(cin: int, cout: int, kernel: tuple[int, int], inplace: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=kernel, padding=(1, 1)), nn.BatchNorm2d(cout), nn.ReLU(inplace)]


def _conv3d_block(cin: int, cout: int, kernel: tuple[int, int, int], **conv: object) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, kernel_size=kernel, **conv), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


def _fc(out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, out_features))


class SyncNetV2(nn.Module):
    """syncnet_python's `S`: `forward_lip(faces) -> (N, 1024)`, `forward_aud(mfcc) -> (N, 1024)`.

    The spatial sizes are fixed by the last convolutions (6 x 6 on the lip side, 5 x 4 on the audio side),
    so inputs must be exactly (N, 3, 5, 224, 224) and (N, 1, 13, 20)."""

    def __init__(self, embedding_size: int = EMBEDDING_SIZE) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.source: str | None = None  # the weights file, set by load_syncnet_v2
        self.netcnnaud = nn.Sequential(
            *_conv2d_block(1, 64, (3, 3)),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),  # 13 x 20
            *_conv2d_block(64, 192, (3, 3)),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),  # 11 x 9
            *_conv2d_block(192, 384, (3, 3)),
            *_conv2d_block(384, 256, (3, 3)),
            *_conv2d_block(256, 256, (3, 3)),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),  # 5 x 4
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)),  # 1 x 1
            nn.BatchNorm2d(512),
            nn.ReLU(),
        )
        self.netfcaud = _fc(embedding_size)
        self.netfclip = _fc(embedding_size)
        self.netcnnlip = nn.Sequential(
            *_conv3d_block(3, 96, (5, 7, 7), stride=(1, 2, 2), padding=0),  # 1 x 109 x 109
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 54 x 54
            *_conv3d_block(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),  # 26 x 26
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # 13 x 13
            *_conv3d_block(256, 256, (1, 3, 3), padding=(0, 1, 1)),
            *_conv3d_block(256, 256, (1, 3, 3), padding=(0, 1, 1)),
            *_conv3d_block(256, 256, (1, 3, 3), padding=(0, 1, 1)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 6 x 6
            *_conv3d_block(256, 512, (1, 6, 6), padding=0),  # 1 x 1
        )

    def forward_aud(self, mfcc: Tensor) -> Tensor:
        """(N, 1, 13, 20) MFCC windows -> (N, D) audio embeddings."""
        if mfcc.dim() != 4 or mfcc.shape[1:] != (1, MFCC_COEFFICIENTS, MFCC_WINDOW):
            raise ValueError(f"mfcc must be (N, 1, 13, 20), got {tuple(mfcc.shape)}")
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, faces: Tensor) -> Tensor:
        """(N, 3, 5, 224, 224) BGR 0..255 face windows -> (N, D) video embeddings."""
        if faces.dim() != 5 or faces.shape[1:] != (3, 5, FACE_SIZE, FACE_SIZE):
            raise ValueError(f"faces must be (N, 3, 5, 224, 224), got {tuple(faces.shape)}")
        return self.netfclip(self.netcnnlip(faces).flatten(1))

    def forward(self, faces: Tensor, mfcc: Tensor) -> tuple[Tensor, Tensor]:
        """(video embeddings, audio embeddings) of matching windows."""
        return self.forward_lip(faces), self.forward_aud(mfcc)


def _strip(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def _read(path: Path, allow_pickle: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not allow_pickle:
            raise ValueError(
                f"{path} cannot be read with torch.load(weights_only=True) ({error}); it is not a plain "
                "state dict. Re-save its state_dict(), or pass allow_pickle=True for a file you trust."
            ) from error
        log.warning(
            "SyncNet v2: %s is not loadable with weights_only=True (it pickles more than tensors); "
            "unpickling it with weights_only=False, which runs code from the file: use only a copy of "
            "joonson/syncnet_python's syncnet_v2.model that you trust",
            path,
        )
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as second:
            raise ValueError(f"{path} is not a readable SyncNet v2 file: {second}") from second
    except Exception as error:
        raise ValueError(f"{path} is not a readable SyncNet v2 file: {error}") from error


def load_syncnet_v2(path: str | Path, allow_pickle: bool = True) -> SyncNetV2:
    """A frozen SyncNetV2 (eval mode, no gradients) with the weights of `path`: the official
    `syncnet_v2.model` (a state dict with syncnet_python's key names), a state dict saved from
    `SyncNetV2`, either possibly nested under `state_dict` or prefixed `module.` / `__S__.` (a saved
    `SyncNetInstance`), or, only when `allow_pickle`, a whole pickled model (after a warning).

    BatchNorm's `num_batches_tracked` counters, absent from pre-1.0 PyTorch files, are filled with 0;
    every other key must match (strict load). A missing file raises FileNotFoundError naming it and
    where to get it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SyncNet v2 weights not found: {path}. {SYNCNET_V2_HINT}")
    loaded = _read(path, allow_pickle)
    if isinstance(loaded, nn.Module):
        loaded = loaded.state_dict()
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"{path} holds no SyncNet v2 state dict (expected a mapping of tensors)")
    state_dict = _strip(_strip(loaded, "module."), "__S__.")
    first = state_dict.get("netfclip.3.weight")
    if first is None:
        raise ValueError(f"{path} has no 'netfclip.3.weight': not a syncnet_python SyncNet")
    network = SyncNetV2(embedding_size=first.shape[0])
    for key, value in network.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros_like(value)
    try:
        network.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(f"{path} does not match the SyncNet v2 architecture: {error}") from error
    network.source = str(path)
    return network.eval().requires_grad_(False)
