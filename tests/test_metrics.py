"""The main paper's evaluation metrics on real photographs and known perturbations: PSNR / SSIM / LMD /
CSIM of identical images, shifted faces, two different people; AED of a constant offset; the LSE-D /
LSE-C protocol of joonson/syncnet_python against a loop-by-loop transcription of its `calc_pdist` /
`evaluate`, its crop rule, the SyncNet v2 network and its loader; temporal stability; FID's weights
handling; and DDP-style merging of the accumulating metrics' states."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from datamodules.media.audio import mel_windows, melspectrogram, synthesize_speech
from datamodules.media.detect import FAN_FILE, DlibDetector
from lightning_modules.metrics.expression import (
    AverageExpressionDistance,
    ImageLandmarkDistance,
    average_expression_distance,
)
from lightning_modules.metrics.identity import ARCFACE_FILE, CSIM
from lightning_modules.metrics.image import INCEPTION_FILES, TemporalStability, fid_metric
from lightning_modules.metrics.sync import (
    LipSyncMetric,
    lse_from_embeddings,
    lse_measures,
    lse_window_count,
    syncnet_mfcc,
    syncnet_python_crop,
)
from lightning_modules.networks.syncnet import SYNC_FRAMES, SyncNet
from lightning_modules.networks.syncnet_v2 import SYNCNET_V2_URL, SyncNetV2, load_syncnet_v2
from tests.real_footage import FACE_BOXES, portrait


def as_batch(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None] / 255.0


def face_crop(name: str, size: int = 256) -> np.ndarray:
    """The portrait's face, 1.6 times its landmark box, resized to size x size."""
    x0, y0, x1, y1 = FACE_BOXES[name]
    scale = size / ((x1 - x0) * 1.6)
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    matrix = np.array(
        [[scale, 0, size / 2 - scale * centre[0]], [0, scale, size / 2 - scale * centre[1]]], dtype=np.float64
    )
    return cv2.warpAffine(portrait(name), matrix, (size, size), borderMode=cv2.BORDER_REPLICATE)


@pytest.fixture(scope="module")
def hopper() -> tuple[np.ndarray, torch.Tensor]:
    """Grace Hopper's photo and its 68 dlib landmarks (found inside the known face box)."""
    image = portrait("grace_hopper")
    landmarks = DlibDetector().landmarks_in_box(image, np.array(FACE_BOXES["grace_hopper"]))
    return image, torch.from_numpy(np.asarray(landmarks, np.float32))


# --- image metrics -----------------------------------------------------------------------------------------


def test_identical_images_score_perfectly(hopper) -> None:
    image, landmarks = hopper
    x = as_batch(image)
    assert PeakSignalNoiseRatio(data_range=1.0)(x, x.clone()).item() == float("inf")
    assert StructuralSimilarityIndexMeasure(data_range=1.0)(x, x.clone()).item() == pytest.approx(
        1.0, abs=1e-6
    )
    lmd = ImageLandmarkDistance()
    lmd.update(x, x.clone(), landmarks[None])
    assert lmd.compute().item() == 0.0


def test_a_shifted_face_moves_the_landmarks_by_the_shift_and_lowers_psnr(hopper) -> None:
    image, landmarks = hopper
    x = as_batch(image)
    psnr = {}
    for k in (4, 8):
        shifted = as_batch(np.roll(image, k, axis=1))  # k pixels to the right
        lmd = ImageLandmarkDistance()
        lmd.update(shifted, x, landmarks[None])
        # dlib, started from the same box, follows the face (measured: 4.9 at k = 4, 8.9 at k = 8).
        assert abs(lmd.compute().item() - k) < 0.2 * k + 0.5
        psnr[k] = PeakSignalNoiseRatio(data_range=1.0)(shifted, x).item()
    assert np.isfinite(psnr[4]) and psnr[8] < psnr[4] < 40


def test_image_landmark_distance_merges_like_one_pass(hopper) -> None:
    image, landmarks = hopper
    x = as_batch(image)
    shifted = [as_batch(np.roll(image, k, axis=1)) for k in (3, 6)]
    whole = ImageLandmarkDistance()
    whole.update(torch.cat(shifted), torch.cat([x, x]), landmarks[None].repeat(2, 1, 1))
    first, second = ImageLandmarkDistance(), ImageLandmarkDistance()
    first.update(shifted[0], x, landmarks[None])
    second.update(shifted[1], x, landmarks[None])
    first.merge_state(second)
    assert first.compute().item() == pytest.approx(whole.compute().item(), rel=1e-6)


def test_landmark_backends_are_checked(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        ImageLandmarkDistance(backend="face_alignment", weights_dir=str(tmp_path))
    assert str(tmp_path / FAN_FILE) in str(error.value)
    with pytest.raises(ValueError, match="unknown landmark backend"):
        ImageLandmarkDistance(backend="mediapipe")


def test_csim_is_one_for_the_same_face_and_lower_for_another_person() -> None:
    hopper, astronaut = as_batch(face_crop("grace_hopper")), as_batch(face_crop("astronaut"))
    same, nudged, other = CSIM(), CSIM(), CSIM()
    same.update(hopper, hopper.clone())  # faces found by dlib's detector
    nudged.update(as_batch(np.roll(face_crop("grace_hopper"), 6, axis=1)), hopper)
    other.update(astronaut, hopper)
    merged = same.clone()  # DDP: two ranks' states merged give the pooled mean
    merged.merge_state(other)
    assert same.compute().item() == pytest.approx(1.0, abs=1e-6) and same.missing.item() == 0
    # dlib's embeddings of two people still have cosine ~0.89 (measured); the same face moved 6 px ~0.999.
    assert other.compute().item() < 0.95 < nudged.compute().item()
    assert merged.compute().item() == pytest.approx((1.0 + other.compute().item()) / 2, abs=1e-6)
    assert merged.count.item() == 2


def test_csim_counts_faceless_pairs_and_checks_its_backends(tmp_path, caplog) -> None:
    blank = torch.full((1, 3, 128, 128), 0.5)
    metric = CSIM()
    metric.update(blank, blank)
    assert metric.missing.item() == 1 and metric.count.item() == 0
    with pytest.raises(FileNotFoundError) as error:
        CSIM(backend="arcface", weights_dir=str(tmp_path))
    assert str(tmp_path / ARCFACE_FILE) in str(error.value)
    with caplog.at_level(logging.WARNING, logger="lightning_modules.metrics"):
        assert CSIM(backend="auto", weights_dir=str(tmp_path)).backend == "dlib"
    assert ARCFACE_FILE in caplog.text


class ShapeCheckingEmbedder(torch.nn.Module):
    """A tiny scripted stand-in for an ArcFace file that refuses anything but (N, 3, 112, 112) in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (3, 112, 112) or bool(x.min() < -1.0) or bool(x.max() > 1.0):
            raise ValueError("expected (N, 3, 112, 112) in [-1, 1]")
        return self.conv(x).mean(dim=(2, 3))


def test_csim_arcface_backend_runs_a_torchscript_file_on_aligned_112_crops(tmp_path) -> None:
    torch.manual_seed(0)
    torch.jit.script(ShapeCheckingEmbedder()).save(str(tmp_path / ARCFACE_FILE))
    metric = CSIM(backend="auto", weights_dir=str(tmp_path))
    assert metric.backend == "arcface"
    hopper = as_batch(face_crop("grace_hopper"))
    metric.update(hopper, hopper.clone())
    assert metric.compute().item() == pytest.approx(1.0, abs=1e-6) and metric.missing.item() == 0


# --- AED and temporal stability ------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.25, -0.07])
def test_aed_of_a_constant_offset_is_its_size(offset) -> None:
    target = torch.randn(2, 10, 64)
    assert average_expression_distance(target + offset, target).item() == pytest.approx(abs(offset), rel=1e-5)
    first, second, whole = (
        AverageExpressionDistance(),
        AverageExpressionDistance(),
        AverageExpressionDistance(),
    )
    first.update(target[:1] + offset, target[:1])
    second.update(target[1:, :3] + 2 * offset, target[1:, :3])  # a shorter batch, twice the offset
    whole.update(target[:1] + offset, target[:1])
    whole.update(target[1:, :3] + 2 * offset, target[1:, :3])
    first.merge_state(second)
    expected = abs(offset) * (10 + 2 * 3) / (10 + 3)  # pooled by coefficients
    assert first.compute().item() == pytest.approx(expected, rel=1e-5)
    assert whole.compute().item() == pytest.approx(expected, rel=1e-5)


def test_temporal_stability_of_static_and_steadily_changing_clips() -> None:
    torch.manual_seed(0)
    base = torch.rand(1, 3, 16, 16) * 0.5
    static = base.repeat(6, 1, 1, 1)
    steps = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1)
    mask = torch.zeros(1, 16, 16)
    mask[:, 8:, 4:12] = 1.0  # the "mouth"
    metric = TemporalStability()
    metric.update(static, static.clone(), mask)
    assert metric.compute()["generated"].item() == 0.0

    generated = base + 0.02 * steps  # every pixel changes by 0.02 a frame
    source = base + 0.01 * steps
    generated_outside = generated.clone()
    generated_outside[:, :, :8] += torch.rand(6, 3, 8, 16)  # flicker outside the mask does not count
    metric = TemporalStability()
    metric.update(generated_outside, source, mask)
    result = metric.compute()
    assert result["generated"].item() == pytest.approx(0.02, rel=1e-5)
    assert result["source"].item() == pytest.approx(0.01, rel=1e-5)
    assert result["ratio"].item() == pytest.approx(2.0, rel=1e-5)

    # per-frame masks and DDP merging: two clips on two "ranks" equal one metric over both
    moving = mask.repeat(6, 1, 1).unsqueeze(1)
    first, second, whole = TemporalStability(), TemporalStability(), TemporalStability()
    first.update(generated, source, moving)
    second.update(static, source, mask)
    whole.update(generated, source, moving)
    whole.update(static, source, mask)
    first.merge_state(second)
    for key, value in whole.compute().items():
        assert first.compute()[key].item() == pytest.approx(value.item(), rel=1e-6)
    assert whole.compute()["generated"].item() == pytest.approx(0.01, rel=1e-5)  # (0.02 + 0) / 2, equal masks
    with pytest.raises(ValueError, match="T >= 2"):
        metric.update(static[:1], static[:1], mask)


# --- LSE-D / LSE-C: syncnet_python's protocol -------------------------------------------------------------


def reference_lse(video: torch.Tensor, audio: torch.Tensor, vshift: int) -> dict[str, torch.Tensor]:
    """syncnet_python's `calc_pdist` and the tail of `SyncNetInstance.evaluate`, loop by loop."""
    window = vshift * 2 + 1
    padded = F.pad(audio, (0, 0, vshift, vshift))
    dists = [
        F.pairwise_distance(video[[i], :].repeat(window, 1), padded[i : i + window, :])
        for i in range(len(video))
    ]
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    return {
        "offset": vshift - minidx,
        "confidence": torch.median(mdist) - minval,
        "distance": minval,
        "mean": mdist,
    }


@pytest.mark.parametrize(("windows", "vshift"), [(40, 15), (7, 15), (25, 4)])
def test_lse_from_embeddings_matches_the_reference_loop(windows, vshift) -> None:
    torch.manual_seed(windows)
    video, audio = torch.randn(windows, 1024) * 3, torch.randn(windows, 1024) * 3
    ours, reference = lse_from_embeddings(video, audio, vshift), reference_lse(video, audio, vshift)
    assert ours["mean_distances"].shape == (2 * vshift + 1,)
    torch.testing.assert_close(ours["mean_distances"], reference["mean"], rtol=1e-6, atol=1e-5)
    assert int(ours["offset"]) == int(reference["offset"])
    assert ours["distance"].item() == pytest.approx(reference["distance"].item(), rel=1e-6)
    assert ours["confidence"].item() == pytest.approx(reference["confidence"].item(), rel=1e-4, abs=1e-4)


def test_lse_finds_a_known_audio_offset_and_scores_it_better_than_unrelated_audio() -> None:
    torch.manual_seed(1)
    windows, shift = 60, 3
    content = torch.randn(windows + shift, 128)
    video = content[:windows]
    audio = content[shift:] + 0.3 * torch.randn(windows, 128)  # audio window k carries video window k + 3
    synced = lse_from_embeddings(video, audio)
    assert int(synced["offset"]) == shift
    assert int(lse_from_embeddings(video, video + 0.3 * torch.randn_like(video))["offset"]) == 0
    unrelated = lse_from_embeddings(video, torch.randn(windows, 128))
    assert synced["distance"] < 0.5 * unrelated["distance"]
    assert synced["confidence"] > 3 * unrelated["confidence"]


def test_lse_window_count_and_mfcc_windows_follow_the_reference() -> None:
    # The reference run on a 40-frame clip with 26624 samples of audio gave 35 windows.
    assert lse_window_count(40, 26624) == 35
    assert lse_window_count(40, 640 * 20 + 639) == 15  # audio shorter than the video decides
    for frames in (6, 12, 50):
        mfcc = syncnet_mfcc(np.zeros(640 * frames, dtype=np.int16) + 1)
        assert mfcc.shape == (13, 4 * frames - 1)  # 100 columns/s, 25 ms windows
        last = lse_window_count(frames, 640 * frames) - 1
        assert (
            4 * last + 20 <= mfcc.shape[1] < 4 * (last + 1) + 20
        )  # the last window fits, one more would not
    wave = synthesize_speech(0.5, seed=3)
    from datamodules.media.audio import to_int16

    # a float waveform is read as the int16 PCM that ffmpeg writes
    np.testing.assert_allclose(syncnet_mfcc(wave), syncnet_mfcc(to_int16(wave)))


# scipy warns that its median filter zero-pads tracks shorter than the kernel: the reference's behaviour.
SHORT_TRACK = pytest.mark.filterwarnings("ignore:kernel_size exceeds volume extent")


@SHORT_TRACK
def test_syncnet_python_crop_places_the_box_and_smooths_the_track() -> None:
    frames = np.zeros((20, 240, 320, 3), dtype=np.uint8)
    boxes = np.tile(
        np.array([[100.0, 60.0, 180.0, 140.0]]), (20, 1)
    )  # 80 x 80: half size 40, centre (140, 100)
    frames[:, 60:140, 100:180] = 255
    boxes[9] = [10.0, 10.0, 50.0, 30.0]  # one bad detection: the 13-tap median filter ignores it
    crops = syncnet_python_crop(frames, boxes)
    assert crops.shape == (20, 224, 224, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops[9], crops[0])
    # rows y - s .. y + 1.8 s (2.8 s), columns x - 1.4 s .. x + 1.4 s: the box covers rows 0 .. 160 and
    # columns 32 .. 192 of the 224 crop
    white = crops[0, :, :, 0] > 127
    rows, cols = np.nonzero(white)
    assert (
        rows.min() == 0
        and abs(rows.max() - 160) <= 1
        and abs(cols.min() - 32) <= 1
        and abs(cols.max() - 192) <= 1
    )

    # a face at the frame's edge is padded with 110, as the reference pads
    edge = syncnet_python_crop(frames[:8], np.tile(np.array([[0.0, 0.0, 40.0, 40.0]]), (8, 1)))
    assert edge[0, 112, 5, 0] == 110
    with pytest.raises(ValueError, match="at least 7 frames"):
        syncnet_python_crop(frames[:6], boxes[:6])


def official_syncnet_v2_shapes() -> dict[str, tuple]:
    """syncnet_python's `S` state dict (keys and shapes) transcribed from its layer list in
    SyncNetModel.py, independently of lightning_modules.networks.syncnet_v2; pre-1.0 files have no
    `num_batches_tracked`."""
    shapes: dict[str, tuple] = {}
    audio = {0: (64, 1, 3, 3), 4: (192, 64, 3, 3), 8: (384, 192, 3, 3), 11: (256, 384, 3, 3)}
    audio |= {14: (256, 256, 3, 3), 18: (512, 256, 5, 4)}
    lip = {0: (96, 3, 5, 7, 7), 4: (256, 96, 1, 5, 5), 8: (256, 256, 1, 3, 3), 11: (256, 256, 1, 3, 3)}
    lip |= {14: (256, 256, 1, 3, 3), 18: (512, 256, 1, 6, 6)}
    for name, convs in (("netcnnaud", audio), ("netcnnlip", lip)):
        for index, weight in convs.items():
            shapes[f"{name}.{index}.weight"], shapes[f"{name}.{index}.bias"] = weight, weight[:1]
            for part in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{name}.{index + 1}.{part}"] = weight[:1]
    for name in ("netfcaud", "netfclip"):
        shapes |= {f"{name}.0.weight": (512, 512), f"{name}.0.bias": (512,), f"{name}.3.weight": (1024, 512)}
        shapes |= {f"{name}.3.bias": (1024,)}
        shapes |= {f"{name}.1.{part}": (512,) for part in ("weight", "bias", "running_mean", "running_var")}
    return shapes


def test_syncnet_v2_shapes_and_the_official_layout(tmp_path) -> None:
    torch.manual_seed(0)
    network = SyncNetV2().eval()
    with torch.no_grad():
        video, audio = network(torch.rand(2, 3, 5, 224, 224) * 255, torch.randn(2, 1, 13, 20))
    assert video.shape == audio.shape == (2, 1024)
    mine = {
        k: tuple(v.shape) for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    assert mine == official_syncnet_v2_shapes()
    with pytest.raises(ValueError, match="224"):
        network.forward_lip(torch.rand(1, 3, 5, 96, 96))


def test_load_syncnet_v2_reads_state_dicts_by_key_and_names_a_missing_file(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    network = SyncNetV2().eval()
    for module in network.modules():  # non-trivial running statistics, so eval mode shows
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    faces, mfcc = torch.rand(2, 3, 5, 224, 224) * 255, torch.randn(2, 1, 13, 20) * 10
    with torch.no_grad():
        expected = network(faces, mfcc)
    old_style = {k: v for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}
    files = {
        "syncnet_v2.model": old_style,  # the official file's layout
        "saved.pth": network.state_dict(),
        "instance.pth": {f"__S__.{k}": v for k, v in old_style.items()},  # a saved SyncNetInstance
    }
    for name, content in files.items():
        torch.save(content, tmp_path / name)
        loaded = load_syncnet_v2(tmp_path / name)
        assert not loaded.training and loaded.source == str(tmp_path / name)
        with torch.no_grad():
            got = loaded(faces, mfcc)
        torch.testing.assert_close(got, expected)

    torch.save(network, tmp_path / "whole.pth")  # a whole pickled model: weights_only cannot read it
    with pytest.raises(ValueError, match="weights_only=True"):
        load_syncnet_v2(tmp_path / "whole.pth", allow_pickle=False)
    with caplog.at_level(logging.WARNING, logger="lightning_modules.networks.syncnet_v2"):
        loaded = load_syncnet_v2(tmp_path / "whole.pth")
    assert "weights_only=False" in caplog.text and str(tmp_path / "whole.pth") in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(loaded(faces, mfcc), expected)

    with pytest.raises(FileNotFoundError) as error:
        load_syncnet_v2(tmp_path / "absent" / "syncnet_v2.model")
    assert str(tmp_path / "absent" / "syncnet_v2.model") in str(error.value) and SYNCNET_V2_URL in str(
        error.value
    )
    torch.save({"netfclip.3.weight": torch.zeros(1024, 512)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="does not match the SyncNet v2 architecture"):
        load_syncnet_v2(tmp_path / "partial.pth")


@pytest.fixture(scope="module")
def talking_clip() -> tuple[np.ndarray, np.ndarray]:
    """12 frames (0.48 s) of 224 x 224 syncnet_python crops of a slightly moving real face, with
    speech-like audio."""
    image = portrait("grace_hopper")
    box = np.array(FACE_BOXES["grace_hopper"])
    frames = np.stack([np.roll(image, 2 * t, axis=0) for t in range(12)])
    boxes = np.stack([box + [0, 2 * t, 0, 2 * t] for t in range(12)])
    return syncnet_python_crop(frames, boxes), synthesize_speech(12 / 25, seed=5)


class PlantedOffset:
    """Embeddings with a known audio offset: video window u -> row u, audio window v -> row v + shift, so the
    audio of window v is the video of window v + shift (the sound `shift` frames early: syncnet_python's
    AV offset +shift). The video windows with no audio partner at that offset are zero rows, which the
    zero padding matches: at the planted offset every distance is 0 (up to pairwise_distance's eps)."""

    def __init__(self, count: int, shift: int, dim: int = 16, seed: int = 0) -> None:
        self.count, self.shift, self.margin = count, shift, abs(shift)
        self.rows = torch.randn(count + 2 * self.margin, dim, generator=torch.Generator().manual_seed(seed))
        for u in range(count):
            if not 0 <= u - shift < count:
                self.rows[u + self.margin] = 0.0
        self.video_seen: list[int] = []
        self.audio_seen: list[int] = []

    def video(self, windows: list[int]) -> torch.Tensor:
        assert all(0 <= u < self.count for u in windows), f"video windows outside the clip's: {windows}"
        self.video_seen += windows
        return self.rows[[u + self.margin for u in windows]]

    def audio(self, windows: list[int]) -> torch.Tensor:
        assert all(0 <= v < self.count for v in windows), f"audio windows outside the clip's: {windows}"
        self.audio_seen += windows
        return self.rows[[v + self.shift + self.margin for v in windows]]

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(video, audio) (count, dim) of the clip's windows, as the offset search should receive them."""
        return self.video(list(range(self.count))), self.audio(list(range(self.count)))


def frame_coded_clip(num_frames: int, size: int = 224) -> np.ndarray:
    """(T, size, size, 3) uint8 RGB frames whose blue channel codes the frame index (3 + 5 t); red 0."""
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    frames[..., 1] = 128
    frames[..., 2] = (3 + 5 * np.arange(num_frames))[:, None, None]
    return frames


def first_frame(blue: torch.Tensor) -> int:
    """The index of the first frame of a window from its frames' blue values (5,) in 0..255, checked to
    be 5 consecutive frames."""
    index = (blue.double() - 3) / 5
    first = int(torch.round(index[0]))
    expected = first + torch.arange(SYNC_FRAMES, dtype=torch.float64)
    assert torch.allclose(index, expected, atol=0.05), f"not frames {first}..{first + 4} in order: {index}"
    return first


def find_windows(windows: torch.Tensor, batch: torch.Tensor) -> list[int]:
    """For each of `batch` (N, ...), the index of the one row of `windows` (M, ...) equal to it."""
    equal = (batch.flatten(1)[:, None] - windows.flatten(1)[None]).abs().amax(dim=2) <= 1e-6  # (N, M)
    matches = equal.sum(dim=1)
    assert (matches == 1).all(), f"audio windows matching 0 or several reference windows: {matches.tolist()}"
    return equal.double().argmax(dim=1).tolist()


class PlantedSyncNetV2(SyncNetV2):
    """SyncNet v2 with `PlantedOffset` embeddings: the video window read from the frames' codes (channel 0
    of syncnet_python's BGR input), the audio window from where its 20 MFCC columns lie in the clip's
    `syncnet_mfcc` (window v must start at column 4 v)."""

    def __init__(self, planted: PlantedOffset, wave: np.ndarray) -> None:
        super().__init__(embedding_size=planted.rows.shape[1])
        self.planted = planted
        self.columns = torch.from_numpy(syncnet_mfcc(wave)).float().unfold(1, 20, 1).transpose(0, 1)

    def forward_lip(self, faces: torch.Tensor) -> torch.Tensor:
        assert faces.shape[1:] == (3, SYNC_FRAMES, 224, 224)
        return self.planted.video([first_frame(face[0, :, 112, 112]) for face in faces])

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        assert mfcc.shape[1:] == (1, 13, 20)
        columns = find_windows(self.columns, mfcc[:, 0])
        assert all(c % 4 == 0 for c in columns), f"MFCC windows not at 4 columns a frame: {columns}"
        return self.planted.audio([c // 4 for c in columns])


class PlantedSyncNet(SyncNet):
    """The suite's SyncNet with `PlantedOffset` embeddings: the video window read from the frames' codes in
    `face_window`'s BGR stack, the audio window from which frame's 80 x 16 mel window it is."""

    def __init__(self, planted: PlantedOffset, wave: np.ndarray, num_frames: int) -> None:
        super().__init__(width=0.25)
        self.planted = planted
        self.mel = torch.from_numpy(mel_windows(melspectrogram(wave), np.arange(num_frames)))

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert faces.shape[1:] == (3 * SYNC_FRAMES, 48, 96)
        frames = [first_frame(face[0::3, 24, 48] * 255) for face in faces]
        windows = find_windows(self.mel, mel.reshape(-1, 80, 16))
        return self.planted.audio(windows), self.planted.video(frames)


@SHORT_TRACK
def test_lse_measures_run_end_to_end_with_both_networks(talking_clip) -> None:
    """Random networks run the protocol end to end; networks with a planted audio offset get it found, at
    distance 0, the windows each paired with their own audio, and exactly `lse_from_embeddings`' numbers
    on those embeddings."""
    frames, wave = talking_clip
    torch.manual_seed(0)
    for network in (SyncNetV2(), SyncNet(width=0.25)):
        result = lse_measures(frames, wave, network)
        assert result["mean_distances"].shape == (31,)
        assert torch.isfinite(result["mean_distances"]).all() and -15 <= int(result["offset"]) <= 15
        assert result["distance"].item() == result["mean_distances"].min().item()
        assert result["confidence"].item() >= 0
        assert network.training  # left as it was found
    with pytest.raises(ValueError, match="224"):
        lse_measures(frames[:, :96, :96], wave, SyncNetV2())
    with pytest.raises(ValueError, match="at least 6 frames"):
        lse_measures(frames[:5], wave, SyncNetV2())

    num_frames = 40
    coded = frame_coded_clip(num_frames)
    # Speech with a faint noise floor: no two audio windows alike, also in the pauses.
    noise = np.random.default_rng(0).standard_normal(640 * num_frames) * 0.01
    speech = np.clip(synthesize_speech(num_frames / 25, seed=5) + noise, -1, 1).astype(np.float32)
    count = lse_window_count(num_frames, len(speech))
    assert count == 35
    for shift in (3, -2):
        for make in (
            lambda planted: PlantedSyncNetV2(planted, speech),
            lambda planted: PlantedSyncNet(planted, speech, num_frames),
        ):
            planted = PlantedOffset(count, shift)
            network = make(planted)
            result = lse_measures(coded, speech, network, batch_size=8)
            name = type(network).__name__
            assert sorted(planted.video_seen) == list(range(count)), (name, planted.video_seen)
            assert sorted(planted.audio_seen) == list(range(count)), (name, planted.audio_seen)
            expected = lse_from_embeddings(*planted.embeddings())
            assert torch.equal(result["mean_distances"], expected["mean_distances"]), name
            assert int(result["offset"]) == int(expected["offset"]) == shift, (name, int(result["offset"]))
            assert result["distance"].item() == pytest.approx(0.0, abs=1e-4), name
            mean = result["mean_distances"]
            assert result["distance"].item() == mean.min().item()
            assert result["confidence"].item() == pytest.approx((torch.median(mean) - mean.min()).item())
            assert result["confidence"].item() > 1.0, (name, result["confidence"].item())
            assert network.training  # left as it was found


@SHORT_TRACK
def test_lip_sync_metric_names_its_network_and_merges_clips(talking_clip, tmp_path) -> None:
    frames, wave = talking_clip
    torch.manual_seed(0)
    suite = SyncNet(width=0.25).eval()
    clips = [(frames, wave), (frames[::-1], wave)]  # the second one played backwards
    single = [lse_measures(f, w, suite) for f, w in clips]
    first = LipSyncMetric(suite, source="checkpoints/syncnet.ckpt")
    second = LipSyncMetric(suite, source="checkpoints/syncnet.ckpt")
    first.update(*clips[0])
    second.update(*clips[1])
    first.merge_state(second)
    result = first.compute()
    assert result["lse_d"].item() == pytest.approx(np.mean([s["distance"].item() for s in single]), rel=1e-5)
    assert result["lse_c"].item() == pytest.approx(
        np.mean([s["confidence"].item() for s in single]), abs=1e-5
    )
    assert first.clips.item() == 2
    assert first.network_name.startswith("suite SyncNet (checkpoints/syncnet.ckpt)")
    assert list(first.children()) == [] and not first.state_dict()  # the network is not part of the metric

    torch.save(SyncNetV2().state_dict(), tmp_path / "syncnet_v2.model")
    official = LipSyncMetric(load_syncnet_v2(tmp_path / "syncnet_v2.model"))
    assert official.network_name == f"syncnet_v2 (official: {tmp_path / 'syncnet_v2.model'})"
    assert "random init" in LipSyncMetric(SyncNetV2()).network_name


# --- FID ---------------------------------------------------------------------------------------------------


class NotATensor:
    """Any object a weights-only load must refuse."""


def test_fid_needs_its_inception_file(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lightning_modules.metrics"):
        assert fid_metric(str(tmp_path)) is None
        assert fid_metric(None) is None
    assert str(tmp_path / INCEPTION_FILES[0]) in caplog.text and "FID is off" in caplog.text

    # A file that is not Inception's: torch-fidelity builds the graph, then its strict load names the file.
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, tmp_path / INCEPTION_FILES[1])
    with pytest.raises(ValueError, match="does not match torch-fidelity's Inception") as error:
        fid_metric(str(tmp_path))
    assert INCEPTION_FILES[1] in str(error.value) and "Mixed_7c" in str(error.value)
    # torch-fidelity would unpickle anything (weights_only=False): such a file is refused first.
    torch.save({"fc.weight": NotATensor()}, tmp_path / INCEPTION_FILES[0])
    with pytest.raises(ValueError, match="not a plain Inception state dict"):
        fid_metric(str(tmp_path))
