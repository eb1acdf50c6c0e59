"""The pinhole camera shared by the renderer and the landmark projection (Deep3DFaceRecon's numbers)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class PerspectiveCamera:
    """Deep3DFaceRecon's camera: on the z axis at `distance` from the model origin, looking at it.

    World (model) frame: x right, y up, z towards the camera. Camera frame: the same x and y, and
    depth `z_cam = distance - z` (positive in front of the camera). Pixel coordinates follow the suite's
    convention (origin at the top-left pixel corner, x right, y down):
        u = center + focal * x / z_cam,    v = center - focal * y / z_cam.
    Deep3DFaceRecon's image-plane `v` points up; ours is `image_size - v_deep3d`.
    Defaults: 224 px, focal 1015, principal point 112, distance 10.
    """

    image_size: int = 224
    focal: float = 1015.0
    center: float = 112.0
    distance: float = 10.0

    def resized(self, image_size: int) -> PerspectiveCamera:
        """The same field of view at another resolution: focal length and principal point scale."""
        s = image_size / self.image_size
        return replace(self, image_size=int(image_size), focal=self.focal * s, center=self.center * s)

    def to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """World points (..., 3) -> camera frame (x, y, depth)."""
        return torch.cat([points[..., :2], self.distance - points[..., 2:3]], dim=-1)

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """World points (..., 3) -> pixel coordinates (..., 2), differentiable."""
        cam = self.to_camera(points)
        depth = cam[..., 2:3]
        u = self.center + self.focal * cam[..., 0:1] / depth
        v = self.center - self.focal * cam[..., 1:2] / depth
        return torch.cat([u, v], dim=-1)
