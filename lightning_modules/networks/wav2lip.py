"""The Wav2Lip generator (Prajwal et al., "A Lip Sync Expert Is All You Need for Speech to Lip
Generation In The Wild", ACM MM 2020), reimplemented from the layer list of Rudrabha/Wav2Lip
`models/wav2lip.py` and `models/conv.py`.

The module names (`face_encoder_blocks`, `audio_encoder`, `face_decoder_blocks`, `output_block`, each
conv unit's `conv_block.0` conv and `conv_block.1` batch norm) are the official ones, so the released
`wav2lip.pth` / `wav2lip_gan.pth` load by key (`load_wav2lip`). `width` scales every channel count for
small test networks; `width=1` is the official architecture (36.3 M parameters).

Conventions: images are RGB in [0, 1]; the official weights were trained on OpenCV's BGR frames, so the
networks reverse the channel order on the way in and out. Mel windows are Wav2Lip's 80 x 16 (0.2 s).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGE_SIZE = 96  # Wav2Lip's face crop, in pixels
MEL_STEPS = 16  # mel frames per window: 0.2 s at 80 steps/s, i.e. five video frames
NUM_MELS = 80

# (in, out, kernel, stride, padding, residual) at width 1, as in Rudrabha/Wav2Lip models/wav2lip.py.
ConvSpec = tuple[int, int, int, int | tuple[int, int], int, bool]

FACE_ENCODER: list[list[ConvSpec]] = [
    [(6, 16, 7, 1, 3, False)],  # 96 x 96
    [(16, 32, 3, 2, 1, False)] + [(32, 32, 3, 1, 1, True)] * 2,  # 48
    [(32, 64, 3, 2, 1, False)] + [(64, 64, 3, 1, 1, True)] * 3,  # 24
    [(64, 128, 3, 2, 1, False)] + [(128, 128, 3, 1, 1, True)] * 2,  # 12
    [(128, 256, 3, 2, 1, False)] + [(256, 256, 3, 1, 1, True)] * 2,  # 6
    [(256, 512, 3, 2, 1, False), (512, 512, 3, 1, 1, True)],  # 3
    [(512, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False)],  # 1
]

# The audio encoder of the generator (the SyncNet one has one more residual unit at 256 channels).
AUDIO_ENCODER: list[ConvSpec] = [
    (1, 32, 3, 1, 1, False),
    (32, 32, 3, 1, 1, True),
    (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False),  # 27 x 16
    (64, 64, 3, 1, 1, True),
    (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False),  # 9 x 6
    (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False),  # 3 x 3
    (256, 256, 3, 1, 1, True),
    (256, 512, 3, 1, 0, False),  # 1 x 1
    (512, 512, 1, 1, 0, False),
]

# Decoder: per block, the output channels of its (transposed conv or 1x1 conv) head, then how many
# residual 3x3 units follow; the head's input is the previous block's output concatenated with the
# matching encoder feature (a U-Net skip).
DECODER: list[tuple[int, int]] = [(512, 0), (512, 1), (512, 2), (384, 2), (256, 2), (128, 2), (64, 2)]
OUTPUT_HIDDEN = 32

# RGB <-> BGR for a stack of 3-channel images along dim 1.
BGR_ORDER = [2, 1, 0]


def scaled(channels: int, width: float) -> int:
    """Channel count at `width` (the image and mel inputs keep theirs)."""
    return max(1, round(channels * width))


class Conv(nn.Module):
    """Conv + BatchNorm + ReLU, with an identity shortcut when `residual` (Wav2Lip's `Conv2d` unit;
    the attribute names are the official checkpoint's)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int | tuple[int, int],
        padding: int,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if residual and (in_channels != out_channels or stride != 1):
            raise ValueError("a residual unit keeps its channel count and resolution")
        self.conv_block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.BatchNorm2d(out_channels)
        )
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_block(x)
        return self.act(out + x if self.residual else out)


class ConvTranspose(nn.Module):
    """Transposed conv + BatchNorm + ReLU (Wav2Lip's `Conv2dTranspose` unit)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        output_padding: int,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(out_channels),
        )
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv_block(x))


def conv_stack(specs: Sequence[ConvSpec], width: float, fixed_input: int | None = None) -> nn.Sequential:
    """An `nn.Sequential` of `Conv` units from a spec list; `fixed_input` keeps the first input width
    (image or mel channels) unscaled."""
    units = []
    for index, (cin, cout, kernel, stride, padding, residual) in enumerate(specs):
        cin = fixed_input if index == 0 and fixed_input is not None else scaled(cin, width)
        units.append(Conv(cin, scaled(cout, width), kernel, stride, padding, residual))
    return nn.Sequential(*units)


def as_mel_batch(mel: Tensor) -> Tensor:
    """(N, 80, 16) or (N, 1, 80, 16) -> (N, 1, 80, 16), with a clear error for anything else."""
    if mel.dim() == 3:
        mel = mel.unsqueeze(1)
    if mel.dim() != 4 or mel.shape[1:] != (1, NUM_MELS, MEL_STEPS):
        raise ValueError(f"mel windows must be (N, 80, 16) or (N, 1, 80, 16), got {tuple(mel.shape)}")
    return mel


class Wav2LipGenerator(nn.Module):
    """Wav2Lip's generator: a 96 x 96 face encoder over [lower-half-masked target, reference] (6
    channels), an audio encoder over one 80 x 16 mel window, and a decoder that upsamples the audio
    embedding with U-Net skips from the face encoder to a 96 x 96 face (sigmoid output)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.width = width
        self.face_encoder_blocks = nn.ModuleList(
            conv_stack(block, width, fixed_input=6 if i == 0 else None)
            for i, block in enumerate(FACE_ENCODER)
        )
        self.audio_encoder = conv_stack(AUDIO_ENCODER, width, fixed_input=1)

        skips = [scaled(block[-1][1], width) for block in FACE_ENCODER][::-1]  # deepest first
        blocks = []
        in_channels = scaled(AUDIO_ENCODER[-1][1], width)
        for index, (out, residual_units) in enumerate(DECODER):
            out = scaled(out, width)
            if index == 0:
                head: nn.Module = Conv(in_channels, out, 1, 1, 0)
            elif index == 1:
                head = ConvTranspose(in_channels, out, 3, 1, 0, 0)  # 1 x 1 -> 3 x 3
            else:
                head = ConvTranspose(in_channels, out, 3, 2, 1, 1)  # doubles the resolution
            blocks.append(
                nn.Sequential(head, *[Conv(out, out, 3, 1, 1, True) for _ in range(residual_units)])
            )
            in_channels = out + skips[index]
        self.face_decoder_blocks = nn.ModuleList(blocks)
        hidden = scaled(OUTPUT_HIDDEN, width)
        self.output_block = nn.Sequential(
            Conv(in_channels, hidden, 3, 1, 1), nn.Conv2d(hidden, 3, kernel_size=1), nn.Sigmoid()
        )

    def forward(self, mel: Tensor, faces: Tensor) -> Tensor:
        """mel (N, 80, 16) or (N, 1, 80, 16); faces (N, 6, 96, 96) RGB in [0, 1]: the target with its
        lower half zeroed, then the reference. Returns (N, 3, 96, 96) RGB in [0, 1]."""
        if faces.dim() != 4 or faces.shape[1:] != (6, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"faces must be (N, 6, 96, 96), got {tuple(faces.shape)}")
        x = faces[:, [*BGR_ORDER, *(c + 3 for c in BGR_ORDER)]]
        features = []
        for block in self.face_encoder_blocks:
            x = block(x)
            features.append(x)
        x = self.audio_encoder(as_mel_batch(mel))
        for block in self.face_decoder_blocks:
            x = torch.cat([block(x), features.pop()], dim=1)
        return self.output_block(x)[:, BGR_ORDER]


def mask_lower_half(faces: Tensor) -> Tensor:
    """Zero the lower half of (..., H, W) images, as Wav2Lip masks the target it must re-draw."""
    masked = faces.clone()
    masked[..., faces.shape[-2] // 2 :, :] = 0.0
    return masked


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Drop `prefix` from every key that carries it (`module.` from DataParallel checkpoints)."""
    return {
        (key[len(prefix) :] if key.startswith(prefix) else key): value for key, value in state_dict.items()
    }


def read_state_dict(path: str | Path, what: str, hint: str, owner_prefix: str) -> dict[str, Tensor]:
    """The network's tensors in a checkpoint file, loaded with weights_only=True.

    Accepts a bare state dict or a dict with `state_dict` (the official Wav2Lip files and Lightning
    checkpoints). In a Lightning checkpoint the network's keys start with `owner_prefix` (the
    LightningModule attribute), which is removed along with DataParallel's `module.`. A missing or
    unreadable file raises an error that names it and says where to put it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint not found: {path}. {hint}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable {what} checkpoint: {error}") from error
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} holds no {what} state dict (expected tensors, or a dict with 'state_dict')")
    if any(key.startswith(owner_prefix) for key in checkpoint):
        checkpoint = {k[len(owner_prefix) :]: v for k, v in checkpoint.items() if k.startswith(owner_prefix)}
    return strip_prefix(checkpoint, "module.")


def load_weights(network: nn.Module, state_dict: Mapping[str, Tensor], path: str | Path, what: str) -> None:
    """`load_state_dict` (strict) with an error that names the file."""
    try:
        network.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(f"{path} does not match the {what} architecture: {error}") from error


WAV2LIP_HINT = (
    "Put the official Wav2Lip generator (wav2lip.pth or wav2lip_gan.pth from Rudrabha/Wav2Lip) there, "
    "or train one with `python run.py experiment=teacher`, and point the configured path at it."
)


def load_wav2lip(path: str | Path) -> Wav2LipGenerator:
    """A Wav2LipGenerator with the weights of `path`: an official `wav2lip.pth` / `wav2lip_gan.pth`
    (its `state_dict`, keys possibly prefixed `module.`), a bare state dict with the same keys, or a
    checkpoint of `experiment=teacher` (keys under `generator.`). The width is read from the first
    conv's channel count. Returned in eval mode."""
    state_dict = read_state_dict(path, "Wav2Lip generator", WAV2LIP_HINT, owner_prefix="generator.")
    first = state_dict.get("face_encoder_blocks.0.0.conv_block.0.weight")
    if first is None:
        raise ValueError(
            f"{path} has no 'face_encoder_blocks.0.0.conv_block.0.weight': not a Wav2Lip generator"
        )
    generator = Wav2LipGenerator(width=first.shape[0] / FACE_ENCODER[0][0][1])
    load_weights(generator, state_dict, path, "Wav2Lip generator")
    return generator.eval()


# --- inference: the teacher's semantic images ----------------------------------------------------


def resize_faces(images: Tensor, size: int = IMAGE_SIZE) -> Tensor:
    """(N, 3, H, W) -> (N, 3, size, size), antialiased bilinear (a no-op at that size)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)


def generator_input(targets: Tensor, references: Tensor) -> Tensor:
    """(N, 3, H, W) targets and references -> (N, 6, 96, 96): [lower-half-masked target, reference]."""
    targets, references = resize_faces(targets), resize_faces(references)
    return torch.cat([mask_lower_half(targets), references], dim=1)


def _as_float_nchw(frames: np.ndarray | Tensor) -> tuple[Tensor, bool, bool]:
    """frames (T, H, W, 3) or (T, 3, H, W), uint8 in [0, 255] or float in [0, 1] -> float (T, 3, H, W),
    whether the input was channels-last, and whether it was uint8."""
    tensor = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    if tensor.dim() != 4 or 3 not in (tensor.shape[1], tensor.shape[-1]):
        raise ValueError(f"frames must be (T, H, W, 3) or (T, 3, H, W), got {tuple(tensor.shape)}")
    channels_last = tensor.shape[-1] == 3 and tensor.shape[1] != 3
    is_uint8 = tensor.dtype == torch.uint8
    tensor = tensor.permute(0, 3, 1, 2) if channels_last else tensor
    tensor = tensor.float() / 255.0 if is_uint8 else tensor.float()
    return tensor, channels_last, is_uint8


@torch.no_grad()
def generate_semantic_frames(
    generator: Wav2LipGenerator,
    frames: np.ndarray | Tensor,
    mel: np.ndarray | Tensor,
    references: np.ndarray | Tensor | None = None,
    mel_lead: int = 1,
    output_size: int | None = None,
    batch_size: int = 32,
) -> np.ndarray | Tensor:
    """The teacher's frames for one clip: each face with its lower half re-drawn for the audio.

    Args:
        generator: a `Wav2LipGenerator`, e.g. `load_wav2lip(path)` of an official `wav2lip.pth` /
            `wav2lip_gan.pth` or of an `experiment=teacher` checkpoint (load it once per corpus).
        frames: the clip's face crops, (T, H, W, 3) or (T, 3, H, W), RGB, uint8 in [0, 255] or float
            in [0, 1].
        mel: (T, 80, 16), the mel window starting at each frame (as `view: window` batches carry it).
            Frame t is driven by the window of frame t - `mel_lead` (clamped at 0), the timing the
            teacher is trained with.
        references: faces shown to the generator as its reference, same layout as `frames`; by default
            the clip rolled by half its length, so that a frame's own mouth never reaches the generator
            (the semantic image must follow the audio, not copy the frame).
        output_size: side of the returned frames; default: the input's H x W.
        batch_size: frames per generator call.

    Returns the T generated frames in the layout and dtype of `frames` (uint8 stays uint8; numpy stays
    numpy). The generator runs in eval mode on the device of its parameters."""
    generator.eval()
    device = next(generator.parameters()).device
    was_numpy = isinstance(frames, np.ndarray)
    faces, channels_last, is_uint8 = _as_float_nchw(frames)
    length, height, width = faces.shape[0], faces.shape[2], faces.shape[3]
    mel = torch.as_tensor(np.asarray(mel) if isinstance(mel, np.ndarray) else mel).float()
    if mel.shape != (length, 80, 16):
        raise ValueError(f"mel must be ({length}, 80, 16) for {length} frames, got {tuple(mel.shape)}")
    if references is None:
        refs = faces.roll(shifts=length // 2, dims=0)
    else:
        refs = _as_float_nchw(references)[0]
        if refs.shape[0] != length:
            raise ValueError(f"references must have one face per frame ({length}), got {refs.shape[0]}")
    driving = mel[(torch.arange(length) - mel_lead).clamp(min=0)]
    outputs = []
    for start in range(0, length, batch_size):
        chunk = slice(start, start + batch_size)
        inputs = generator_input(faces[chunk].to(device), refs[chunk].to(device))
        outputs.append(generator(driving[chunk].to(device), inputs).cpu())
    out = torch.cat(outputs)
    size = (output_size, output_size) if output_size is not None else (height, width)
    if out.shape[-2:] != size:
        out = F.interpolate(out, size=size, mode="bilinear", antialias=True).clamp(0, 1)
    if is_uint8:
        out = (out * 255.0).round().to(torch.uint8)
    if channels_last:
        out = out.permute(0, 2, 3, 1).contiguous()
    return out.numpy() if was_numpy else out


class SemanticTeacher:
    """The Wav2Lip teacher as preprocessing calls it (conf/data/corpus.yaml `preprocess.teacher_class`):
    built once per worker from a checkpoint (`load_wav2lip`), then (crops (T, S, S, 3) uint8, mel windows
    (T, 80, 16)) -> the semantic frames (T, 96, 96, 3) uint8, at the teacher's own 96 px (the loader serves
    them at the size the model is configured for)."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu") -> None:
        self.generator = load_wav2lip(checkpoint).to(device)

    def __call__(self, crops: np.ndarray, mel: np.ndarray) -> np.ndarray:
        return generate_semantic_frames(self.generator, crops, mel, output_size=IMAGE_SIZE)
