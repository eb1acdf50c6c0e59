"""Per-clip texture and per-frame SH lighting from the visible vertex colours, by linear least squares.

Why: the landmark fit leaves `tex` and `gamma` at zero, so every I_3D would show the model's mean
texture (for the procedural model, one real person) under default light. Fitting appearance through the
renderer by gradient descent costs a rasterisation per frame and step on CPU; this fit rasterises each
frame once and solves small linear systems instead.

The image model is Deep3DFaceRecon's (Deng et al. 2019): Lambertian reflectance with 3-band spherical
harmonics lighting (Ramamoorthi & Hanrahan 2001, "An efficient representation for irradiance environment
maps"; Basri & Jacobs 2003), per vertex

    colour(v, t, c) = albedo(v, c) * sum_b Y_b(n_v,t) (gamma_t,c,b + default_b)  (Y: MorphableModel.sh_basis)
    albedo(v, c)    = (T_mean + B_tex delta)(v, c) / 255

which is bilinear in (albedo, gamma): with the texture fixed each frame's 3 x 9 light is a ridge least
squares problem, with the light fixed the 80 texture coefficients are one. The fit alternates the two
(`iterations` times, light first, light last), reweighting observations with a Cauchy weight so that
glasses, hair or an open mouth do not pull the light. The observations are the image, sampled
bilinearly at the projected vertices that one rasterisation pass says are visible: unoccluded (the
vertex's camera depth agrees with the z-buffer at its pixel), facing the camera and not within
`silhouette_margin` of the face outline, where background and face mix.

`texture: basis` keeps the model's texture basis (what Deep3DFaceRecon does with BFM's PCA of 200 real
scans). `texture: per_vertex` then estimates each vertex's albedo from the clip itself (the median over
the frames where it is visible of colour / irradiance, shrunk towards the basis albedo by `shrinkage`
pseudo-frames); vertices never seen (often the mouth cavity) keep the basis albedo. The procedural
model's basis is one portrait plus smooth tints and cannot reach another person, hence per_vertex there.

The fragments of the rasterisation are kept (`AppearanceFit.render`), so preprocessing shades the final
I_3D from them instead of rasterising the clip a second time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from face3d.camera import PerspectiveCamera
from face3d.morphable_model import COEFF_DIMS, MorphableModel
from face3d.renderer import FaceRenderer

TEXTURE_MODES = ("basis", "per_vertex")
REFERENCE_SIZE = 224  # silhouette_margin is in pixels at this resolution, as the landmark fit's errors


@dataclass
class AppearanceFit:
    """coeffs (T, 257) with `tex` (shared) and `gamma` (per frame) fitted; albedo (N, 3) in [0, 1] per
    vertex (texture=per_vertex) or None (texture=basis: the albedo is the texture of `tex`);
    error_before / error_after (T,): mean absolute RGB difference over the rendered face mask of the
    mean texture under default light (tex = gamma = 0) / of the fit; seen (N,) frames each vertex was
    observed in; fragments: the rasterisation of the clip (None unless kept)."""

    coeffs: torch.Tensor
    albedo: torch.Tensor | None
    error_before: torch.Tensor
    error_after: torch.Tensor
    seen: torch.Tensor
    fragments: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def render(self, renderer: FaceRenderer) -> dict[str, torch.Tensor]:
        """I_3D of the fit, dict(image, mask, depth) as FaceRenderer gives, shaded from the kept
        fragments (no second rasterisation) when there are any; `renderer`: the fit's model and camera."""
        with torch.no_grad():
            if self.fragments is None:
                return renderer(self.coeffs, albedo=self.albedo)
            if self.fragments[0].shape[1] != renderer.camera.image_size:
                raise ValueError(
                    f"the fit was rasterised at {self.fragments[0].shape[1]} px, the renderer draws "
                    f"{renderer.camera.image_size} px"
                )
            out = renderer.model(self.coeffs, albedo=self.albedo)
            return renderer.shade(self.fragments, out["color"])


def photometric_error(rendered: torch.Tensor, mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(T,) mean absolute RGB difference over the rendered face mask, in [0, 1] units."""
    per_pixel = (rendered - images).abs().mean(1, keepdim=True) * mask
    return per_pixel.sum((1, 2, 3)) / mask.sum((1, 2, 3)).clamp(min=1.0)


def rasterize_clip(
    renderer: FaceRenderer, vertices: torch.Tensor, batch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World vertices (T, N, 3) -> fragments of the whole clip, rasterised `batch` frames at a time
    (pix_to_face indexes the clip's packed faces t * F + f, as one batch would)."""
    num_faces, parts = renderer.model.num_faces, []
    for start in range(0, vertices.shape[0], max(int(batch), 1)):
        pix_to_face, zbuf, bary = renderer.rasterize(vertices[start : start + batch])
        pix_to_face = torch.where(pix_to_face >= 0, pix_to_face + start * num_faces, pix_to_face)
        parts.append((pix_to_face, zbuf, bary))
    return tuple(torch.cat(p, dim=0) for p in zip(*parts))


def observe_vertices(
    camera: PerspectiveCamera,
    vertices: torch.Tensor,
    normals: torch.Tensor,
    fragments: tuple[torch.Tensor, ...],
    images: torch.Tensor,
    silhouette_margin: float,
    min_facing: float,
    depth_tolerance: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (visible (T, N) bool, colour (T, N, 3)): which vertices each frame shows, and the image
    there (bilinear, the suite's pixel convention: pixel i covers [i, i + 1))."""
    pix_to_face, zbuf = fragments[0][..., 0], fragments[1][..., 0]  # (T, S, S)
    frames, size = vertices.shape[0], camera.image_size
    pixels = camera.project(vertices)  # (T, N, 2)
    depth = camera.to_camera(vertices)[..., 2]
    ix, iy = pixels[..., 0].floor().long(), pixels[..., 1].floor().long()
    inside = (ix >= 0) & (ix < size) & (iy >= 0) & (iy < size)
    flat = (iy.clamp(0, size - 1) * size + ix.clamp(0, size - 1)).view(frames, -1)
    mask = pix_to_face >= 0
    radius = int(round(silhouette_margin * size / REFERENCE_SIZE))
    if radius > 0:  # erode: a pixel counts only if its whole (2r + 1)^2 neighbourhood is face
        outside = F.max_pool2d((~mask).float().unsqueeze(1), 2 * radius + 1, stride=1, padding=radius)
        mask = outside[:, 0] < 0.5
    interior = mask.view(frames, -1).gather(1, flat)
    unoccluded = (zbuf.reshape(frames, -1).gather(1, flat) - depth).abs() < depth_tolerance
    to_camera = torch.tensor([0.0, 0.0, camera.distance], device=vertices.device) - vertices
    facing = (normals * F.normalize(to_camera, dim=-1)).sum(-1) > min_facing
    visible = inside & interior & unoccluded & facing
    grid = (2.0 * pixels / size - 1.0).unsqueeze(2)  # (T, N, 1, 2): align_corners=False convention
    colour = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return visible, colour[..., 0].permute(0, 2, 1)


def _solve_light(
    albedo: torch.Tensor,
    basis: torch.Tensor,
    observed: torch.Tensor,
    weight: torch.Tensor,
    default_light: torch.Tensor,
    ridge: float,
    chroma_ridge: float,
) -> torch.Tensor:
    """Per frame: gamma (T, 3, 9) minimising mean_v,c w (a B.(g0 + gamma_c) - o)^2 + ridge |gamma|^2
    + chroma_ridge sum_c |gamma_c - mean_c gamma|^2 (Deep3DFaceRecon's prior towards white light:
    the colour of a face belongs to its albedo)."""
    frames, nb = basis.shape[0], basis.shape[-1]
    count = weight.sum(1).clamp(min=1.0)[:, None, None, None]  # (T, 1, 1, 1)
    wa = weight.unsqueeze(-1) * albedo  # (T, N, 3); no (T, N, 3, 9) design matrix: BFM has 35k vertices
    target = observed - albedo * (basis @ default_light).unsqueeze(-1)  # the residual of the default light
    wa2 = wa * albedo
    blocks = torch.stack(
        [torch.einsum("tnk,tnl->tkl", basis * wa2[..., c, None], basis) for c in range(3)], 1
    )
    blocks = blocks / count  # (T, 3, 9, 9): the channels' 9 x 9 normal matrices
    rhs = torch.einsum("tnc,tnk->tck", wa * target, basis) / count[..., 0]  # (T, 3, 9)
    eye_c = torch.eye(3, dtype=basis.dtype, device=basis.device)
    normal = torch.einsum("tckl,cd->tckdl", blocks, eye_c).reshape(frames, 3 * nb, 3 * nb)
    centring = eye_c - 1.0 / 3.0  # sum_c |gamma_c - mean|^2 = gamma^T (centring x I_9) gamma
    prior = ridge * torch.eye(3 * nb, dtype=basis.dtype, device=basis.device)
    prior = prior + chroma_ridge * torch.kron(centring, torch.eye(nb, dtype=basis.dtype, device=basis.device))
    gamma = torch.linalg.solve(normal + prior, rhs.reshape(frames, 3 * nb, 1))
    return gamma.view(frames, 3, nb)


def _solve_texture(
    mean_albedo: torch.Tensor,
    tex_basis: torch.Tensor,
    irradiance: torch.Tensor,
    observed: torch.Tensor,
    weight: torch.Tensor,
    ridge: float,
) -> torch.Tensor:
    """delta (80,) minimising mean_{t,v,c} w ((a_mean + U delta) e - o)^2 + ridge |delta|^2; U (N, 3, 80)."""
    count = weight.sum().clamp(min=1.0) * 3
    w = weight.unsqueeze(-1)  # (T, N, 1)
    energy = (w * irradiance.square()).sum(0)  # (N, 3): sum_t w e^2 per vertex and channel
    residual = (w * irradiance * (observed - mean_albedo * irradiance)).sum(0)  # (N, 3)
    normal = torch.einsum("nck,ncl->kl", tex_basis * energy.unsqueeze(-1), tex_basis) / count
    rhs = torch.einsum("nck,nc->k", tex_basis, residual) / count
    eye = torch.eye(tex_basis.shape[-1], dtype=tex_basis.dtype, device=tex_basis.device)
    return torch.linalg.solve(normal + ridge * eye, rhs)


def _per_vertex_albedo(
    basis_albedo: torch.Tensor,
    irradiance: torch.Tensor,
    observed: torch.Tensor,
    visible: torch.Tensor,
    shrinkage: float,
    min_irradiance: float,
) -> torch.Tensor:
    """(N, 3): the median over the frames that see a vertex of colour / irradiance, shrunk towards the
    basis albedo by `shrinkage` pseudo-frames; never seen: the basis albedo."""
    usable = visible.unsqueeze(-1) & (irradiance > min_irradiance)  # (T, N, 3)
    ratio = torch.where(usable, observed / irradiance.clamp(min=min_irradiance), float("nan"))
    median = ratio.nanmedian(dim=0).values  # (N, 3), nan where never usable
    count = usable.sum(0).to(basis_albedo.dtype)
    blend = count / (count + shrinkage) if shrinkage > 0 else (count > 0).to(basis_albedo.dtype)
    estimate = torch.where(count > 0, median, basis_albedo)
    return (blend * estimate + (1 - blend) * basis_albedo).clamp(0.0, 1.0)


@torch.no_grad()
def fit_appearance(
    model: MorphableModel,
    camera: PerspectiveCamera,
    coeffs: torch.Tensor,
    images: torch.Tensor,
    texture: str = "per_vertex",
    iterations: int = 3,
    light_ridge: float = 1e-3,
    chroma_ridge: float = 1e-1,
    texture_ridge: float = 1e-4,
    robust_scale: float = 0.1,
    silhouette_margin: float = 2.0,
    min_facing: float = 0.2,
    depth_tolerance: float = 0.05,
    shrinkage: float = 0.5,
    min_irradiance: float = 0.05,
    refit_light: bool = True,
    batch: int = 25,
    renderer: FaceRenderer | None = None,
    keep_fragments: bool = True,
) -> AppearanceFit:
    """Fit one clip's appearance: coeffs (T, 257) of the landmark fit, images (T, 3, S, S) in [0, 1]
    aligned with `camera` (S = camera.image_size) -> AppearanceFit (see the module docstring).

    texture: `basis` | `per_vertex`; iterations: light / texture alternations; light_ridge,
    texture_ridge: ridge weights on gamma and delta (the mean squared residual is the data term);
    chroma_ridge: weight of the white-light prior on gamma;
    robust_scale: residual (in [0, 1] colour) of Cauchy weight 1/2; silhouette_margin: px at 224 of the
    face outline not observed; min_facing: least cosine between normal and view ray; depth_tolerance:
    world units between a vertex and the z-buffer; shrinkage: pseudo-frames of the basis albedo in a
    per-vertex estimate; min_irradiance: darker observations are not divided by; refit_light: solve the
    light again for the per-vertex albedo; batch: frames per rasterisation call. `renderer` (default
    FaceRenderer(model, camera)) rasterises; `keep_fragments` keeps its fragments for `render`.
    Every number is a config value (conf/face_model/*.yaml, key `appearance`).
    """
    if texture not in TEXTURE_MODES:
        raise ValueError(f"unknown texture mode {texture!r}: expected one of {TEXTURE_MODES}")
    frames = coeffs.shape[0]
    size = camera.image_size
    if images.shape != (frames, 3, size, size):
        raise ValueError(
            f"images must be (T={frames}, 3, S={size}, S) like the camera, got {tuple(images.shape)}"
        )
    renderer = renderer if renderer is not None else FaceRenderer(model, camera)
    if renderer.camera != camera:
        raise ValueError(f"the renderer's camera {renderer.camera} is not {camera}")
    device = model.mean_shape.device
    coeffs, images = coeffs.detach().to(device).float(), images.to(device).float()
    parts = model.split_coeffs(coeffs)
    zero_appearance = dict(parts, tex=torch.zeros_like(parts["tex"]), gamma=torch.zeros_like(parts["gamma"]))
    coeffs = model.join_coeffs(**zero_appearance)

    vertices, normals = model.posed_geometry(coeffs)
    fragments = rasterize_clip(renderer, vertices, batch)
    visible, observed = observe_vertices(
        camera, vertices, normals, fragments, images, silhouette_margin, min_facing, depth_tolerance
    )
    basis = model.sh_basis(normals)  # (T, N, 9)
    default_light = model.default_light

    def irradiance_of(gamma: torch.Tensor) -> torch.Tensor:
        return torch.einsum("tnk,tck->tnc", basis, gamma + default_light)  # (T, N, 3)

    def error_of(albedo: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        out = renderer.shade(fragments, albedo.expand(frames, -1, -1) * irradiance_of(gamma))
        return photometric_error(out["image"], out["mask"], images)

    mean_albedo = model.mean_tex / 255.0  # (N, 3)
    tex_basis = model.tex_base.view(model.num_vertices, 3, -1) / 255.0  # (N, 3, 80)
    gamma = torch.zeros(frames, 3, 9, device=device)
    error_before = error_of(mean_albedo, gamma)

    weight = visible.float()
    delta = torch.zeros(tex_basis.shape[-1], device=device)
    albedo = mean_albedo

    def reweighted(albedo: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        residual = (albedo * irradiance_of(gamma) - observed).abs().mean(-1)  # (T, N)
        return visible.float() / (1.0 + (residual / robust_scale).square())

    for _ in range(max(int(iterations), 0)):
        gamma = _solve_light(albedo, basis, observed, weight, default_light, light_ridge, chroma_ridge)
        weight = reweighted(albedo, gamma)
        delta = _solve_texture(mean_albedo, tex_basis, irradiance_of(gamma), observed, weight, texture_ridge)
        albedo = mean_albedo + tex_basis @ delta
        weight = reweighted(albedo, gamma)
    gamma = _solve_light(albedo, basis, observed, weight, default_light, light_ridge, chroma_ridge)

    vertex_albedo = None
    if texture == "per_vertex":
        vertex_albedo = _per_vertex_albedo(
            albedo.clamp(0.0, 1.0), irradiance_of(gamma), observed, visible, shrinkage, min_irradiance
        )
        if refit_light:
            weight = reweighted(vertex_albedo, gamma)
            gamma = _solve_light(
                vertex_albedo, basis, observed, weight, default_light, light_ridge, chroma_ridge
            )
    final_albedo = vertex_albedo if vertex_albedo is not None else albedo
    error_after = error_of(final_albedo, gamma)

    fitted = dict(
        parts,
        tex=delta.expand(frames, -1).clone(),
        gamma=gamma.reshape(frames, COEFF_DIMS["gamma"]),
    )
    return AppearanceFit(
        coeffs=model.join_coeffs(**fitted),
        albedo=None if vertex_albedo is None else vertex_albedo.float(),
        error_before=error_before,
        error_after=error_after,
        seen=visible.sum(0),
        fragments=fragments if keep_fragments else None,
    )
