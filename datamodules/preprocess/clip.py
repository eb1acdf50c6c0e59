"""One clip from raw mp4 to a shard sample: validate, decode onto the suite's 25 fps clock (trimmed to
the time both streams cover), detect, track and crop, fit the 3DMM, render I_3D, compute the audio
features and (optionally) the teacher's semantic images. The audio is the video's own track, or the
separate file the clip's source names (MEAD's m4a, on a clock that starts with the video's)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from datamodules.media import audio as audio_lib
from datamodules.media.face_fit import ClipOptions, Tools, face_tube, fit_face, landmarks_for_tube
from datamodules.media.images import to_uint8_images
from datamodules.media.track import crop_frames, to_crop_pixels
from datamodules.media.video import (
    ClipRejected,
    common_span,
    decode_audio,
    decode_frames,
    is_grayscale,
    probe,
    probe_audio,
    trim_record,
    validate,
)
from datamodules.preprocess.layout import ClipSource
from datamodules.shards import decode_images, encode_images, make_clip_sample, validate_clip_sample


def process_clip(
    source: ClipSource, options: ClipOptions, tools: Tools
) -> tuple[dict[str, Any], dict[str, Any]]:
    """-> (shard sample, manifest record); raises ClipRejected with the reason when the clip is unusable."""
    info = probe(source.path, options.vfr_tolerance)
    audio_path = source.audio_path or source.path
    if source.audio_path:
        start_s, duration_s = probe_audio(source.audio_path)
        info = replace(info, has_audio=True, audio_start_s=start_s, audio_duration_s=duration_s)
    validate(info, source.path, options.fps, max_side=options.max_side, min_frames=options.min_frames)
    span = common_span(info, source.path, options.fps, options.min_frames, options.audio_tolerance_s)
    frames = decode_frames(source.path, span.frame_times())
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
    pcm = decode_audio(audio_path, len(frames) * spf, start_s=span.start_s)[start * spf : end * spf]
    wave = audio_lib.to_float(pcm)

    appearance, rendered = fit_face(crops, landmarks, options, tools)
    coeffs, render3d, face_mask, albedo = _fitted_arrays(appearance, rendered)

    mel = audio_lib.melspectrogram(wave)
    semantic = None
    if tools.teacher is not None:
        semantic = tools.teacher(crops, audio_lib.mel_windows(mel, np.arange(num_frames)))
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
        albedo=albedo,
        source=source.path,
        emotion=source.emotion,
        emotion_level=source.emotion_level,
        jpeg_quality=options.jpeg_quality,
    )
    record = {
        "status": "accepted",
        "num_frames": num_frames,
        "start_frame": int(start),
        "crop_box": [int(v) for v in box],
        **_fit_record(appearance, landmarks, tools),
        "source_fps": round(info.fps, 3),
        "trim": trim_record(info, span),
    }
    return sample, record


def _fitted_arrays(appearance: Any, rendered: dict) -> tuple[torch.Tensor, np.ndarray, np.ndarray, Any]:
    """The shard's arrays of a fit: coefficients, I_3D (uint8), its face mask (0 / 255), the albedo."""
    coeffs = appearance.coeffs.detach().float().cpu()
    render3d = to_uint8_images(rendered["image"])
    face_mask = (rendered["mask"][:, 0].cpu().numpy() > 0.5).astype(np.uint8) * 255
    albedo = None if appearance.albedo is None else appearance.albedo.float().cpu().numpy()
    return coeffs, render3d, face_mask, albedo


def _fit_record(appearance: Any, landmarks: np.ndarray, tools: Tools) -> dict[str, float]:
    """The manifest's fit figures: landmark residual (px) and the mean |I_3D - frame| over the rendered
    face, with the mean texture under default light and after the appearance fit (colour in [0, 1])."""
    coeffs = appearance.coeffs.detach().float().cpu()
    residual = (
        (tools.model.landmarks_2d(coeffs, tools.camera) - torch.from_numpy(landmarks)).norm(dim=-1).mean()
    )
    return {
        "fit_landmark_error_px": round(float(residual), 3),
        "photometric_error_before": round(float(appearance.error_before.mean()), 4),
        "photometric_error": round(float(appearance.error_after.mean()), 4),
    }


def refit_with_identity(
    sample: dict[str, Any], identity: np.ndarray, options: ClipOptions, tools: Tools
) -> tuple[dict[str, Any], dict[str, float]]:
    """A packed clip sample fitted again with its speaker's `identity` (80,) held fixed (the speaker
    pass, `preprocess.identity: speaker`): expression, pose, texture, light and I_3D from the sample's
    own crops and landmarks; everything else (frames, audio, semantic images) is kept as it is.
    -> (the new sample, its fit figures for the manifest)."""

    crops = decode_images(sample["frames"], sample["frame_offsets"], range(sample["num_frames"]))
    appearance, rendered = fit_face(
        crops, sample["landmarks"], options, tools, identity=torch.as_tensor(identity, dtype=torch.float32)
    )
    coeffs, render3d, face_mask, albedo = _fitted_arrays(appearance, rendered)
    render_blob, render_offsets = encode_images(render3d, "jpeg", options.jpeg_quality)
    mask_blob, mask_offsets = encode_images(face_mask, "png")
    refitted = {
        **sample,
        "coeffs": np.ascontiguousarray(coeffs.numpy(), dtype=np.float32),
        "render3d": render_blob,
        "render3d_offsets": render_offsets,
        "face_mask": mask_blob,
        "face_mask_offsets": mask_offsets,
        "albedo": np.zeros((0, 3), np.float32)
        if albedo is None
        else np.ascontiguousarray(albedo, dtype=np.float32),
    }
    validate_clip_sample(refitted)
    return refitted, _fit_record(appearance, sample["landmarks"], tools)
