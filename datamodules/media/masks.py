"""Mouth masks of a face crop from its 68 landmarks (the main paper's I_crop: the face with its mouth region
blanked out), shared by the datasets, dubbing and animation."""

from __future__ import annotations

import cv2
import numpy as np

# iBUG-68 points whose convex hull is the lower face around the mouth: jaw from below the ears to the
# chin and back (2..14) and the base of the nose (31..35).
MOUTH_HULL_POINTS = np.r_[2:15, 31:36]


MASK_MODES = ("lower_half", "landmark_hull")


def mouth_mask(
    height: int, width: int, landmarks: np.ndarray, mode: str = "lower_half", dilation: float = 0.03
) -> np.ndarray:
    """Bool (H, W) mask of the region the generator must fill in: the lower half of the crop (Wav2Lip)
    or the convex hull of the lower-face landmarks dilated by `dilation` x the image side (the main
    paper draws the blanked mouth region from the landmarks with OpenCV)."""
    if mode == "lower_half":
        mask = np.zeros((height, width), dtype=bool)
        mask[height // 2 :] = True
        return mask
    if mode != "landmark_hull":
        raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mode!r}")
    points = np.asarray(landmarks, dtype=np.float32).reshape(-1, 2)[MOUTH_HULL_POINTS]
    hull = cv2.convexHull(np.round(points).astype(np.int32))
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.fillConvexPoly(canvas, hull, 1)
    radius = int(round(dilation * max(height, width)))
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        canvas = cv2.dilate(canvas, kernel)
    return canvas.astype(bool)


def mouth_masked_crop(
    image: np.ndarray, landmarks: np.ndarray, mode: str = "lower_half", dilation: float = 0.03
) -> np.ndarray:
    """I_crop: a copy of the (H, W, C) face crop with the mouth region set to 0.

    Made in the loader from the stored frame and landmarks, not stored in the shards: it costs one
    polygon fill, the masking can change (`mask_mode`, `mask_dilation`) without preprocessing the corpus
    again, and the shards stay smaller. Preprocessing and inference (dubbing a new video) call this same
    function, so the model always sees exactly the masking it was trained with."""
    out = np.array(image, copy=True)
    out[mouth_mask(image.shape[0], image.shape[1], landmarks, mode, dilation)] = 0
    return out
