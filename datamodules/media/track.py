"""Face tubes and the square crop, following the VoxCeleb protocol of the first-order motion model
(Siarohin et al. 2019, `crop-video.py`): per-frame detections are joined into tubes by IoU with the
tube's first box, a tube's boxes are joined (union), enlarged by a margin, made square and cropped;
short tubes are dropped. Our additions: a few missed frames inside a tube are bridged, the speaker's
tube is the most prominent one, and a clip that shows a plausible second person (a face scoring and
measuring close to the speaker's) in a good share of its frames is rejected as "several faces" (a
training clip shows one speaker).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from datamodules.media.detect import Face
from datamodules.media.video import ClipRejected


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class Tube:
    """One face followed over consecutive frames; `faces[t]` is None where the detector missed it."""

    start: int
    initial_box: np.ndarray
    faces: dict[int, Face] = field(default_factory=dict)
    last_seen: int = 0

    @property
    def end(self) -> int:  # exclusive
        return self.last_seen + 1

    @property
    def length(self) -> int:
        return self.end - self.start


def build_tubes(detections: list[list[Face]], iou_with_initial: float = 0.25, max_gap: int = 3) -> list[Tube]:
    """Greedy tube building: each face joins the open tube whose first box it overlaps best (IoU at
    least `iou_with_initial`), else starts a new tube; a tube closes after `max_gap` missed frames."""
    open_tubes: list[Tube] = []
    closed: list[Tube] = []
    for t, faces in enumerate(detections):
        still_open = []
        for tube in open_tubes:
            (still_open if t - tube.last_seen <= max_gap else closed).append(tube)
        open_tubes = still_open
        taken: set[int] = set()
        for face in sorted(faces, key=lambda f: -f.score):
            scores = [
                (iou(face.box, tube.initial_box), i) for i, tube in enumerate(open_tubes) if i not in taken
            ]
            best = max(scores, default=(0.0, -1))
            if best[0] >= iou_with_initial:
                tube = open_tubes[best[1]]
                taken.add(best[1])
            else:
                tube = Tube(start=t, initial_box=face.box.copy())
                open_tubes.append(tube)
                taken.add(len(open_tubes) - 1)
            tube.faces[t] = face
            tube.last_seen = t
    return closed + open_tubes


def select_tube(
    detections: list[list[Face]],
    min_frames: int,
    iou_with_initial: float,
    max_gap: int,
    several_faces_fraction: float,
    second_face_score_ratio: float,
    second_face_size_ratio: float,
) -> Tube:
    """The clip's single speaker tube; ClipRejected('no_face' | 'several_faces' | 'short_tube').

    The speaker's tube is the most prominent one: the most detection score times face size summed
    over its frames (a false detection that lasts as long as the face, such as dlib's faint hits on
    clothing, or a small face far behind, weighs far less). Another tube is a plausible person when
    its median score and size reach `second_face_score_ratio` and `second_face_size_ratio` of the
    speaker's (judged over the tube, not frame by frame: a false detection scores a few percent of the
    face on most frames and more on a few). The clip is rejected when at least `several_faces_fraction`
    of its frames show two separate plausible faces (boxes overlapping less than `iou_with_initial`).
    Frames are counted, not tubes: a second person rejects the clip however their tube breaks up,
    while implausible detections and sporadic ones (too few frames) do not."""
    if not any(detections):
        raise ClipRejected("no_face", f"no face detected in any of {len(detections)} frames")
    tubes = build_tubes(detections, iou_with_initial, max_gap)
    main = max(tubes, key=lambda tube: (_prominence(tube), len(tube.faces), -tube.start))
    main_score, main_size = _median_score_and_size(main)
    plausible: list[list[Face]] = [[] for _ in detections]
    for tube in tubes:
        score, size = _median_score_and_size(tube)
        if score >= second_face_score_ratio * main_score and size >= second_face_size_ratio * main_size:
            for t, face in tube.faces.items():
                plausible[t].append(face)
    crowded = sum(_separate_faces(faces, iou_with_initial) >= 2 for faces in plausible)
    if crowded >= several_faces_fraction * len(detections):
        raise ClipRejected(
            "several_faces",
            f"a second face (median score >= {second_face_score_ratio * main_score:.2f}, size >= "
            f"{second_face_size_ratio * main_size:.0f} px) in {crowded} of {len(detections)} frames",
        )
    if main.length < min_frames:
        raise ClipRejected("short_tube", f"longest face tube has {main.length} frames < {min_frames}")
    return main


def speaker_tubes(
    detections: list[list[Face]],
    iou_with_initial: float,
    max_gap: int,
    min_frames: int,
    second_face_score_ratio: float,
    second_face_size_ratio: float,
) -> list[Tube]:
    """The speaker's tubes of a stretch of video that may lose the face (dubbing, not training): the most
    prominent tube, then every other tube of at least `min_frames` frames that is plausibly the same kind
    of face (median score and size at least those shares of the first's) and overlaps no tube already
    taken in time; sorted by start. Frames outside them show no speaker's face. [] when nothing is
    detected."""
    tubes = [tube for tube in build_tubes(detections, iou_with_initial, max_gap) if tube.length >= min_frames]
    if not tubes:
        return []
    tubes.sort(key=lambda tube: (-_prominence(tube), tube.start))
    main_score, main_size = _median_score_and_size(tubes[0])
    chosen = [tubes[0]]
    for tube in tubes[1:]:
        score, size = _median_score_and_size(tube)
        plausible = (
            score >= second_face_score_ratio * main_score and size >= second_face_size_ratio * main_size
        )
        if plausible and all(tube.end <= other.start or tube.start >= other.end for other in chosen):
            chosen.append(tube)
    return sorted(chosen, key=lambda tube: tube.start)


def _size(face: Face) -> float:
    """Side of the square with the box's area, in pixels."""
    w, h = face.box[2] - face.box[0], face.box[3] - face.box[1]
    return float(np.sqrt(max(0.0, w) * max(0.0, h)))


def _prominence(tube: Tube) -> float:
    return sum(max(0.0, face.score) * _size(face) for face in tube.faces.values())


def _median_score_and_size(tube: Tube) -> tuple[float, float]:
    faces = list(tube.faces.values())
    return max(0.0, float(np.median([f.score for f in faces]))), float(np.median([_size(f) for f in faces]))


def _separate_faces(faces: list[Face], max_iou: float) -> int:
    """How many of the faces do not overlap an earlier (higher-scoring) one."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: -f.score):
        if all(iou(face.box, other.box) < max_iou for other in kept):
            kept.append(face)
    return len(kept)


def crop_box(tube: Tube, frame_height: int, frame_width: int, increase: float) -> np.ndarray:
    """Union of the tube's boxes, widened by `increase` x its size on every side, made square about its
    centre and shifted (never scaled) to stay inside the frame where possible. Returns integer
    (x0, y0, side)."""
    boxes = np.stack([face.box for face in tube.faces.values()])
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
    w, h = x1 - x0, y1 - y0
    side = max(w, h) * (1 + 2 * increase)
    side = min(side, min(frame_height, frame_width))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = float(np.clip(cx - side / 2, 0, frame_width - side))
    top = float(np.clip(cy - side / 2, 0, frame_height - side))
    return np.array([round(left), round(top), round(side)], dtype=np.int64)


def crop_frames(frames: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) -> (T, size, size, 3) square crops resized with area interpolation."""
    x0, y0, side = (int(v) for v in box)
    interpolation = cv2.INTER_AREA if side >= size else cv2.INTER_LINEAR
    return np.stack(
        [
            cv2.resize(f[y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=interpolation)
            for f in frames
        ]
    )


def to_crop_pixels(points: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Frame pixel coordinates -> crop pixel coordinates (same corner-origin convention)."""
    x0, y0, side = (float(v) for v in box)
    return ((points - np.array([x0, y0], dtype=np.float32)) * (size / side)).astype(np.float32)


def interpolate_boxes(tube: Tube) -> np.ndarray:
    """(length, 4) per-frame boxes of the tube, linearly interpolated over missed frames."""
    known = np.array(sorted(tube.faces))
    boxes = np.stack([tube.faces[t].box for t in known])
    frames = np.arange(tube.start, tube.end)
    return np.stack([np.interp(frames, known, boxes[:, k]) for k in range(4)], axis=1).astype(np.float32)
