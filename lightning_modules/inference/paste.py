"""Paste-back: a generated crop goes into its full frame through a feathered mask that is 0 at the crop's
border, so that outside the mouth region every pixel stays the source's own."""

from __future__ import annotations

import cv2
import numpy as np

from datamodules.media.masks import MOUTH_HULL_POINTS


def paste_weights(mouth_mask: np.ndarray, landmark_sets: list[np.ndarray], feather: float) -> np.ndarray:
    """(S, S) float weights of the generated crop: the lower face (the hull of the jaw and the nose base
    of every landmark set: the source's and, where known, the generated mouth's), inside the generator's
    mouth mask, blurred inward over `feather` x S pixels, and exactly 0 within that distance of the
    crop's border, so that the crop's edge never shows."""
    size = mouth_mask.shape[0]
    radius = max(1, int(round(feather * size)))
    region = np.zeros((size, size), np.uint8)
    for points in landmark_sets:
        hull = cv2.convexHull(np.round(points[MOUTH_HULL_POINTS]).astype(np.int32))
        cv2.fillConvexPoly(region, hull, 1)
    region = cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2))
    region &= (mouth_mask > 0.5).astype(np.uint8)
    region = cv2.erode(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2))
    # A kernel truncated at `radius` on a region eroded by it: the fade stays inside the region.
    weights = cv2.GaussianBlur(region.astype(np.float32), (2 * radius + 1,) * 2, sigmaX=radius / 3.0)
    border = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    taper = np.clip((border - radius) / radius, 0.0, 1.0)
    return np.clip(weights * taper[:, None] * taper[None, :], 0.0, 1.0)


def paste_into_frame(frame: np.ndarray, crop: np.ndarray, weights: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The frame with the generated crop (S, S, 3) float in [0, 1] blended into its box through
    `weights` (S, S); pixels of weight 0 (everything outside the mouth region) stay the source's."""
    x0, y0, side = (int(v) for v in box)
    interpolation = cv2.INTER_LINEAR if side >= crop.shape[0] else cv2.INTER_AREA
    patch = cv2.resize(crop, (side, side), interpolation=interpolation)
    alpha = cv2.resize(weights, (side, side), interpolation=cv2.INTER_LINEAR)[..., None]
    out = frame.copy()
    region = out[y0 : y0 + side, x0 : x0 + side].astype(np.float32)
    blended = alpha * patch * 255.0 + (1.0 - alpha) * region
    changed = alpha[..., 0] > 0
    out[y0 : y0 + side, x0 : x0 + side][changed] = np.clip(np.round(blended[changed]), 0, 255).astype(
        np.uint8
    )
    return out
