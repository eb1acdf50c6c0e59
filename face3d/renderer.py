"""Batched differentiable rendering of the morphable model with PyTorch3D's rasteriser.

The vertices are projected by the same `PerspectiveCamera.project` as the landmarks and handed to
PyTorch3D in its NDC convention (+x left, +y up, pixel centres at (2i + 1) / S - 1), with the camera
depth as z for the depth test and perspective-correct barycentrics. So a landmark vertex lands in the
image exactly where `landmarks_2d` says. Shading is per-vertex (Lambertian SH, computed by the model)
interpolated over the faces, as Deep3DFaceRecon renders with nvdiffrast.

On CPU PyTorch3D has only the naive rasteriser (cost ~ pixels x faces); on CUDA it bins.
"""

from __future__ import annotations

import torch
from pytorch3d.ops import interpolate_face_attributes
from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
from pytorch3d.structures import Meshes
from torch import nn

from face3d.camera import PerspectiveCamera
from face3d.morphable_model import MorphableModel


def _tile_for(image_size: int, tile_size: int) -> int:
    """The largest tile edge <= tile_size that divides the image (the whole image when tile_size <= 0)."""
    if tile_size <= 0 or tile_size >= image_size:
        return image_size
    return next(t for t in range(tile_size, 0, -1) if image_size % t == 0)


class FaceRenderer(nn.Module):
    """coeffs (B, 257) [, albedo] -> dict(image (B,3,H,W) in [0,1], mask (B,1,H,W), depth (B,1,H,W)).

    `depth` is the camera depth (distance along the optical axis) of the visible surface, 0 off the face.
    The background is `background` (a grey level in [0, 1]; Deep3DFaceRecon renders on black).
    `tile_size` (CPU only): edge in pixels of the tiles the faces are binned into; 0 rasterises the
    whole image against every face (PyTorch3D's naive CPU path).
    """

    def __init__(
        self, model: MorphableModel, camera: PerspectiveCamera, background: float = 0.0, tile_size: int = 32
    ) -> None:
        super().__init__()
        self.model = model
        self.camera = camera
        self.background = float(background)
        self.tile_size = int(tile_size)

    def rasterize(self, vertices: torch.Tensor):
        """World vertices (B, N, 3) -> PyTorch3D fragments (pix_to_face, zbuf, bary_coords) at camera size.

        pix_to_face indexes the packed faces (b * F + f), -1 off the mesh.
        """
        size = self.camera.image_size
        pixels = self.camera.project(vertices)
        depth = self.camera.to_camera(vertices)[..., 2:3]
        ndc = torch.cat([1.0 - 2.0 * pixels / size, depth], dim=-1)  # NDC x points left, y up
        batch, faces = ndc.shape[0], self.model.faces
        tile = _tile_for(size, self.tile_size)
        if vertices.is_cuda or tile == size:
            all_faces = torch.ones(batch, faces.shape[0], dtype=torch.bool, device=ndc.device)
            return self._rasterize_tile(ndc, all_faces, size, 0, 0, size)
        # CPU: bin the faces into square tiles ourselves (PyTorch3D bins only on CUDA), so that each
        # tile of each frame tests only the faces whose bounding box overlaps it.
        corners = ndc[..., :2].detach()[:, faces]  # (B, F, 3, 2)
        lo, hi = corners.amin(dim=2), corners.amax(dim=2)  # (B, F, 2)
        margin = 2.0 / size
        rows = []
        for y0 in range(0, size, tile):
            row = []
            for x0 in range(0, size, tile):
                x_max, y_max = 1 - 2 * x0 / size, 1 - 2 * y0 / size
                x_min, y_min = x_max - 2 * tile / size, y_max - 2 * tile / size
                hit = (hi[..., 0] >= x_min - margin) & (lo[..., 0] <= x_max + margin)
                hit &= (hi[..., 1] >= y_min - margin) & (lo[..., 1] <= y_max + margin)
                row.append(self._rasterize_tile(ndc, hit, size, x0, y0, tile))
            rows.append([torch.cat(parts, dim=2) for parts in zip(*row)])
        return tuple(torch.cat(parts, dim=1) for parts in zip(*rows))

    def _rasterize_tile(self, ndc: torch.Tensor, hit: torch.Tensor, size: int, x0: int, y0: int, tile: int):
        """Rasterise, for each frame b, the faces with hit[b] into the square tile at pixel (x0, y0)."""
        batch, num_faces = hit.shape
        if not bool(hit.any()):
            shape = (batch, tile, tile, 1)
            empty = ndc.new_full(shape, -1.0)
            return ndc.new_full(shape, -1, dtype=torch.int64), empty, empty.unsqueeze(-1).expand(*shape, 3)
        # Map the tile's NDC square onto [-1, 1]; barycentrics and depth are unchanged by this affine map.
        scale = size / tile
        centre = ndc.new_tensor([1 - (2 * x0 + tile) / size, 1 - (2 * y0 + tile) / size])
        verts = torch.cat([(ndc[..., :2] - centre) * scale, ndc[..., 2:]], dim=-1)
        if bool(hit.all()):
            meshes = Meshes(verts=verts, faces=self.model.faces.unsqueeze(0).expand(batch, -1, -1))
        else:
            meshes = Meshes(verts=list(verts.unbind(0)), faces=[self.model.faces[h] for h in hit.unbind(0)])
        pix_to_face, zbuf, bary, _ = rasterize_meshes(
            meshes,
            image_size=tile,
            blur_radius=0.0,
            faces_per_pixel=1,
            bin_size=None if ndc.is_cuda else 0,
            perspective_correct=True,
        )
        # Packed indices of the per-frame face subsets -> packed indices of the full meshes (b * F + f).
        global_ids = hit.nonzero()  # (total, 2) rows (b, f) in packed order
        global_ids = global_ids[:, 0] * num_faces + global_ids[:, 1]
        return torch.where(pix_to_face >= 0, global_ids[pix_to_face.clamp(min=0)], pix_to_face), zbuf, bary

    def interpolate(self, fragments: tuple[torch.Tensor, ...], attributes: torch.Tensor) -> torch.Tensor:
        """Per-vertex attributes (B, N, D) -> per-pixel (B, H, W, D), interpolated with the fragments'
        perspective-correct barycentrics (0 off the mesh)."""
        pix_to_face, _, bary = fragments[:3]
        batch, faces = attributes.shape[0], self.model.faces
        face_attributes = attributes[:, faces].reshape(batch * faces.shape[0], 3, attributes.shape[-1])
        return interpolate_face_attributes(pix_to_face, bary, face_attributes)[..., 0, :]

    def shade(self, fragments: tuple[torch.Tensor, ...], color: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fragments of `rasterize` + per-vertex colours (B, N, 3) -> dict(image, mask, depth).

        Shading is cheap next to rasterising on CPU, so a caller that rasterised once (the appearance
        fit) renders any number of colourings of the same geometry with this.
        """
        pix_to_face, zbuf = fragments[:2]
        color = self.interpolate(fragments, color)  # (B, H, W, 3)
        mask = (pix_to_face[..., :1] >= 0).to(color.dtype)
        image = color.clamp(0.0, 1.0) * mask + self.background * (1.0 - mask)
        return {
            "image": image.permute(0, 3, 1, 2).contiguous(),
            "mask": mask.permute(0, 3, 1, 2).contiguous(),
            "depth": (zbuf[..., :1] * mask).permute(0, 3, 1, 2).contiguous(),
        }

    def forward(self, coeffs: torch.Tensor, albedo: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`albedo` (N, 3) or (B, N, 3) in [0, 1] replaces the texture of `tex` (see MorphableModel)."""
        out = self.model(coeffs, albedo=albedo)
        return self.shade(self.rasterize(out["vertices"]), out["color"])
