"""Video analysis for dubbing and animation: the preprocessing front end (detection, the speaker's face
tubes, the square crop, landmarks, the 3DMM and appearance fit) with the settings of the renderer's own
shards, run on a chunk of frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from omegaconf import DictConfig

from datamodules.media.detect import Face
from datamodules.media.face_fit import ClipOptions, Tools, fit_face
from datamodules.media.track import crop_box, crop_frames, interpolate_boxes, speaker_tubes, to_crop_pixels
from datamodules.preprocess.pipeline import build_tools, settings_from_config
from lightning_modules.inference.tracks import FaceTrack


@dataclass
class AnalysedTrack:
    """A face track of a chunk: `start`..`end` (chunk frame indices), its square crop `box` (x0, y0, side)
    in frame pixels, and the analysed crops."""

    start: int
    end: int
    box: np.ndarray
    track: FaceTrack


def analysis_tools(analysis: DictConfig, device: str) -> tuple[Tools, ClipOptions]:
    """The preprocessing front end of a `data` config (a renderer run's: how its shards were made) on
    `device`, without the teacher: the detector, face model and camera, and the per-clip options."""
    preprocess = settings_from_config(analysis)
    preprocess.device = device
    preprocess.teacher_checkpoint = None
    return build_tools(preprocess), preprocess.clip


def detect_faces(frames: np.ndarray, detector: Any, max_side: int) -> list[list[Face]]:
    """Per-frame detections in full-frame pixels, found on a copy at most `max_side` px (the detector
    is the slow part; the landmarks are refined at full resolution later)."""
    height, width = frames.shape[1:3]
    scale = min(1.0, max_side / max(height, width))
    detections = []
    for frame in frames:
        small = (
            frame
            if scale == 1.0
            else cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        )
        detections.append(
            [
                Face(box=face.box / scale, score=face.score, landmarks=face.landmarks / scale)
                for face in detector(small)
            ]
        )
    return detections


def analyse_chunk(
    frames: np.ndarray, times: np.ndarray, tools: Tools, options: ClipOptions, settings: DictConfig
) -> list[AnalysedTrack]:
    """The speaker's face tracks of a chunk of frames (T, H, W, 3) shown at `times` (s), each cropped and
    fitted as preprocessing does."""
    height, width = frames.shape[1:3]
    detections = detect_faces(frames, tools.detector, int(settings.detect_max_side))
    tubes = speaker_tubes(
        detections,
        options.iou_with_initial,
        options.max_gap,
        int(settings.min_track_frames),
        options.second_face_score_ratio,
        options.second_face_size_ratio,
    )
    tracks = []
    for tube in tubes:
        box = crop_box(tube, height, width, options.increase)
        boxes = interpolate_boxes(tube)
        landmarks = np.stack(
            [
                tools.detector.landmarks_in_box(frames[t], boxes[k])
                for k, t in enumerate(range(tube.start, tube.end))
            ]
        )
        crops = crop_frames(frames[tube.start : tube.end], box, options.crop_size)
        landmarks = to_crop_pixels(landmarks, box, options.crop_size)
        appearance, _ = fit_face(crops, landmarks, options, tools)
        albedo = None if appearance.albedo is None else appearance.albedo.float().cpu().numpy()
        track = FaceTrack(
            crops=crops,
            landmarks=landmarks,
            coeffs=appearance.coeffs.detach().float().cpu().numpy(),
            albedo=albedo,
            times=times[tube.start : tube.end],
        )
        tracks.append(AnalysedTrack(tube.start, tube.end, box, track))
    return tracks
