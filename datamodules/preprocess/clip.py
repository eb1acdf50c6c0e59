"""One clip from raw mp4 to a shard sample: validate, decode, detect, track and crop, fit the 3DMM,
render I_3D, compute the audio features and (optionally) the teacher's semantic images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from datamodules import audio as audio_lib
from datamodules.preprocess.layout import ClipSource
from datamodules.preprocess.render import render_faces
from datamodules.preprocess.track import crop_box, crop_frames, interpolate_boxes, select_tube, to_crop_pixels
from datamodules.preprocess.video import (
    ClipRejected,
    decode_audio,
    decode_frames,
    is_grayscale,
    probe,
    validate,
)
from datamodules.shards import make_clip_sample


@dataclass
class ClipOptions:
    """Every number of the per-clip pipeline (the `preprocess` config node)."""

    crop_size: int = 128
    fps: float = 25.0
    max_side: int = 1920
    vfr_tolerance: float = 0.2
    audio_tolerance_s: float = 0.04
    grayscale_tolerance: float = 2.0
    min_frames: int = 25  # shortest accepted face tube (frames)
    max_frames: int = 0  # longest clip kept (0: no limit); longer tubes are cut
    iou_with_initial: float = 0.25  # FOMM crop-video.py
    increase: float = 0.1  # FOMM crop-video.py: box margin on each side, fraction of its size
    max_gap: int = 3  # missed detections bridged inside a tube
    several_faces_fraction: float = 0.3  # share of frames with a second face that rejects the clip
    min_face_size: int = 64  # smallest crop side in source pixels
    fit: dict[str, Any] = field(default_factory=dict)  # face3d.fit_landmarks keyword arguments
    render_batch: int = 25
    jpeg_quality: int = 95


@dataclass
class Tools:
    """The heavy objects a worker builds once: detector, face model, camera at crop size, teacher."""

    detector: Any
    model: Any
    camera: Any
    teacher: Any = None


def face_tube(detections: list, height: int, width: int, options: ClipOptions) -> tuple[Any, tuple]:
    """The clip's face tube (FOMM protocol: one face joined over time) and its square crop box."""
    tube = select_tube(
        detections,
        options.min_frames,
        options.iou_with_initial,
        options.max_gap,
        options.several_faces_fraction,
    )
    return tube, crop_box(tube, height, width, options.increase)


def landmarks_for_tube(frames: np.ndarray, tube, detector) -> np.ndarray:
    """(length, 68, 2) frame-pixel landmarks over the tube: the detector's where it found the face,
    the landmark predictor inside the interpolated box where it missed."""
    boxes = interpolate_boxes(tube)
    out = []
    for k, t in enumerate(range(tube.start, tube.end)):
        face = tube.faces.get(t)
        out.append(face.landmarks if face is not None else detector.landmarks_in_box(frames[t], boxes[k]))
    return np.stack(out).astype(np.float32)


def process_clip(
    source: ClipSource, options: ClipOptions, tools: Tools
) -> tuple[dict[str, Any], dict[str, Any]]:
    """-> (shard sample, manifest record); raises ClipRejected with the reason when the clip is unusable."""
    import face3d

    info = probe(source.path, options.vfr_tolerance)
    validate(
        info,
        source.path,
        options.fps,
        max_side=options.max_side,
        min_frames=options.min_frames,
        audio_tolerance_s=options.audio_tolerance_s,
    )
    frames = decode_frames(source.path)
    if is_grayscale(frames, options.grayscale_tolerance):
        raise ClipRejected("grayscale", f"{source.path}: colour channels are equal (a grayscale video)")
    height, width = frames.shape[1:3]
    tube, box = face_tube([tools.detector(frame) for frame in frames], height, width, options)
    if box[2] < options.min_face_size:
        raise ClipRejected(
            "face_too_small", f"{source.path}: face crop of {box[2]} px < {options.min_face_size}"
        )
    start, end = tube.start, tube.end
    if options.max_frames and end - start > options.max_frames:
        end = start + options.max_frames
    landmarks_frame = landmarks_for_tube(frames, tube, tools.detector)[: end - start]
    crops = crop_frames(frames[start:end], box, options.crop_size)
    landmarks = to_crop_pixels(landmarks_frame, box, options.crop_size)
    num_frames = end - start
    spf = audio_lib.SAMPLES_PER_FRAME
    pcm = decode_audio(source.path, len(frames) * spf)[start * spf : end * spf]
    wave = audio_lib.to_float(pcm)

    device = tools.model.mean_shape.device
    fit = face3d.fit_landmarks(
        tools.model, tools.camera, torch.from_numpy(landmarks).to(device), **options.fit
    )
    coeffs = fit.coeffs.detach().float().cpu()
    image, mask = render_faces(tools.model, tools.camera, coeffs, options.render_batch)
    render3d = (image * 255).round().astype(np.uint8)
    face_mask = (mask[..., 0] > 0.5).astype(np.uint8) * 255

    mel = audio_lib.melspectrogram(wave)
    semantic = None
    if tools.teacher is not None:
        from lightning_modules.networks.wav2lip import generate_semantic_frames

        semantic = generate_semantic_frames(
            tools.teacher, crops, audio_lib.mel_windows(mel, np.arange(num_frames))
        )
    sample = make_clip_sample(
        clip_id=source.clip_id,
        identity=source.identity,
        frames=crops,
        render3d=render3d,
        face_mask=face_mask,
        coeffs=coeffs.numpy(),
        landmarks=landmarks,
        audio=pcm,
        mfcc=audio_lib.mfcc(wave),
        mel=mel,
        semantic=semantic,
        source=source.path,
        jpeg_quality=options.jpeg_quality,
    )
    residual = (
        (tools.model.landmarks_2d(coeffs, tools.camera) - torch.from_numpy(landmarks)).norm(dim=-1).mean()
    )
    record = {
        "status": "accepted",
        "num_frames": num_frames,
        "start_frame": int(start),
        "crop_box": [int(v) for v in box],
        "fit_landmark_error_px": round(float(residual), 3),
    }
    return sample, record
