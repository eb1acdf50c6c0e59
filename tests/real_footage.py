"""Talking clips made from real photographs, for tests on footage the suite did not render itself: a
portrait that a package ships (matplotlib's Grace Hopper, scikit-image's astronaut), filmed by a camera
that pans and zooms smoothly over it, with speech-like audio, written as H.264 + AAC at any frame rate
(25, 30, 29.97, ...) and with the audio optionally ending before the video.

A real photograph brings what a rendered face does not: skin, hair, clothing and background texture that
the detector may take for a face (dlib finds one on the astronaut's suit, at a tenth of her face's
score), and a face whose landmarks nobody placed. Where the face is in each frame is known from the
camera path: `RealClip.face_box_at(t)` carries the face's extent on the still photo (its 68 landmarks'
bounding box, measured once with dlib on the still) through the camera's transform at time t.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from datamodules.media import audio as audio_lib
from datamodules.media.video import write_mp4

# x0, y0, x1, y1 in photo pixels: the 68 landmarks' extent, jaw to brows (dlib on the still photo).
FACE_BOXES = {"astronaut": (178.0, 85.0, 273.0, 180.0), "grace_hopper": (180.0, 150.0, 370.0, 335.0)}


def portrait(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB photograph: 'grace_hopper' (matplotlib, 512 wide x 600 high) or
    'astronaut' (scikit-image, 512 x 512)."""
    if name == "grace_hopper":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        image = cv2.imread(str(path))
        if image is None:
            raise FileNotFoundError(f"{path} is missing from the matplotlib package")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if name == "astronaut":
        import skimage.data

        return np.ascontiguousarray(skimage.data.astronaut())
    raise ValueError(f"unknown portrait {name!r} (grace_hopper | astronaut)")


@dataclass(frozen=True)
class Shot:
    """A camera path over a photo: a square window (centre and side in photo pixels) that swings
    smoothly to `centre + pan` and `side * zoom` and back once per `period_s`, shown at `size` px."""

    centre: tuple[float, float]
    side: float
    pan: tuple[float, float] = (0.0, 0.0)
    zoom: float = 1.0
    period_s: float = 4.0
    size: int = 512

    def transform(self, time_s: float) -> np.ndarray:
        """(2, 3) affine map from photo pixels to frame pixels at `time_s`."""
        phase = 0.5 - 0.5 * np.cos(2 * np.pi * time_s / self.period_s)
        cx = self.centre[0] + phase * self.pan[0]
        cy = self.centre[1] + phase * self.pan[1]
        scale = self.size / (self.side * (1.0 + phase * (self.zoom - 1.0)))
        return np.array([[scale, 0.0, self.size / 2 - scale * cx], [0.0, scale, self.size / 2 - scale * cy]])

    def film(self, image: np.ndarray, times: np.ndarray) -> np.ndarray:
        """(T, size, size, 3) uint8 frames of the photo through the moving window (edges replicated)."""
        return np.stack(
            [
                cv2.warpAffine(
                    image,
                    self.transform(float(t)),
                    (self.size, self.size),
                    flags=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE,
                )
                for t in times
            ]
        )


# The astronaut framed down to her suit's mission patch, where dlib finds a false face in about three
# frames of four (at 0.05-0.3, a fifth of her face's score at most); Grace Hopper head and shoulders.
# Both drift and zoom by a few percent over 4 s, as a handheld camera would.
SHOTS = {
    "astronaut": Shot(centre=(235.0, 280.0), side=512.0, pan=(-10.0, -14.0), zoom=0.94),
    "grace_hopper": Shot(centre=(268.0, 262.0), side=500.0, pan=(24.0, -18.0), zoom=0.88),
}


@dataclass(frozen=True)
class RealClip:
    path: Path
    fps: float
    num_frames: int  # at the source rate
    audio_duration_s: float
    shot: Shot
    face_box: tuple[float, float, float, float]  # in photo pixels
    offset_x: float = 0.0  # where the shot's frame lies in the written frame (side by side: 0 or W / 2)

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    def face_box_at(self, time_s: float) -> np.ndarray:
        """(4,) x0, y0, x1, y1 of the face in frame pixels at `time_s` (seconds from the first frame)."""
        corners = (
            np.array([[*self.face_box[:2], 1.0], [*self.face_box[2:], 1.0]]) @ self.shot.transform(time_s).T
        )
        return corners.reshape(-1) + np.array([self.offset_x, 0.0, self.offset_x, 0.0])


def _write(
    path: Path, frames: np.ndarray, fps: float | Fraction, audio_duration_s: float, seed: int
) -> float:
    wave = audio_lib.synthesize_speech(audio_duration_s, seed=seed)
    write_mp4(path, frames, wave, fps=fps)
    return len(wave) / audio_lib.SAMPLE_RATE


def talking_clip(
    path: str | Path,
    name: str,
    duration_s: float,
    fps: float | Fraction = 25,
    audio_duration_s: float | None = None,
    seed: int = 0,
) -> RealClip:
    """The portrait `name` filmed along its shot for `duration_s` at `fps`, with `audio_duration_s` of
    speech (None: as long as the video), written to `path`."""
    num_frames = int(round(duration_s * float(fps)))
    shot = SHOTS[name]
    frames = shot.film(portrait(name), np.arange(num_frames) / float(fps))
    heard = _write(
        Path(path), frames, fps, duration_s if audio_duration_s is None else audio_duration_s, seed
    )
    return RealClip(Path(path), float(fps), num_frames, heard, shot, FACE_BOXES[name])


def two_person_clip(
    path: str | Path,
    duration_s: float,
    fps: float | Fraction = 25,
    visible: int = 8,
    hidden: int = 4,
    seed: int = 0,
) -> RealClip:
    """Grace Hopper and, beside her, the astronaut, each in half of a square frame; the astronaut
    steps out of shot for `hidden` frames after every `visible` (her half then shows an empty blurred
    wall), so her face tube breaks into pieces shorter than any tube minimum while she is in shot for
    `visible / (visible + hidden)` of the clip. The returned face box is Grace Hopper's."""
    num_frames = int(round(duration_s * float(fps)))
    times = np.arange(num_frames) / float(fps)
    shot = SHOTS["grace_hopper"]
    size = shot.size
    left = shot.film(portrait("grace_hopper"), times)[:, :, size // 4 : size // 4 + size // 2]
    right = Shot(centre=(222.0, 200.0), side=300.0, pan=(10.0, -8.0), zoom=0.95).film(
        portrait("astronaut"), times
    )
    right = right[:, :, size // 4 : size // 4 + size // 2]
    wall = cv2.GaussianBlur(right[0], (0, 0), sigmaX=40)
    away = (np.arange(num_frames) % (visible + hidden)) >= visible
    right[away] = wall
    frames = np.concatenate([left, right], axis=2)
    heard = _write(Path(path), frames, fps, duration_s, seed)
    return RealClip(Path(path), float(fps), num_frames, heard, shot, FACE_BOXES["grace_hopper"], -size / 4)
