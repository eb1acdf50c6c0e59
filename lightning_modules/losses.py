"""Losses shared by the stages (main paper, stages A-B). Plain functions of tensors; the LightningModules
weight and log them.

The paper writes its stage-1 losses as sums over frames; here they are means (over frames, batch and
coefficients or landmark coordinates), so a loss weight does not depend on the window length or the
batch size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def expression_l1(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_exp: mean absolute error of the 64 expression coefficients (main paper, stage A)."""
    if predicted.shape != target.shape:
        raise ValueError(f"expression shapes differ: {tuple(predicted.shape)} vs {tuple(target.shape)}")
    return (predicted - target).abs().mean()


def landmark_l1(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_shape: mean absolute error, in pixels, of 2D landmark coordinates (..., 68, 2): the landmarks
    of the mesh built with the predicted expression against those built with the ground-truth one."""
    if predicted.shape != target.shape:
        raise ValueError(f"landmark shapes differ: {tuple(predicted.shape)} vs {tuple(target.shape)}")
    return (predicted - target).abs().mean()


def sync_loss(probability: Tensor, in_sync: Tensor) -> Tensor:
    """Wav2Lip's `cosine_loss`: binary cross-entropy of the cosine similarity (clamped away from 0 and
    1 so that the log stays finite) against the in-sync label."""
    return F.binary_cross_entropy(probability.clamp(1e-6, 1 - 1e-6), in_sync.to(probability.dtype))


# --- the renderer (stages 2-4, main paper, stage B) ---------------------------------------------------------


def masked_l1(predicted: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over the pixels where `mask` (B, 1, H, W) is set (L_rec^e over the face
    region), averaged over channels; 0 for an empty mask."""
    weight = mask.expand_as(predicted)
    return ((predicted - target).abs() * weight).sum() / weight.sum().clamp(min=1.0)


def ssim_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """L_SSIM = 1 - SSIM(I_t, I*), through torchmetrics' differentiable SSIM (11 x 11 Gaussian window,
    sigma 1.5, images in [0, 1])."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return 1.0 - structural_similarity_index_measure(predicted.float(), target.float(), data_range=1.0)


def critic_loss(critic: torch.nn.Module, real: Tensor, fakes: list[Tensor], lambda_gp: float) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017) for the critic, as the paper writes it with two generated images:
    minimise sum_g (E[D(I_g)] - E[D(I_t)]) + lambda_gp E[(|grad D(x_hat)|_2 - 1)^2], with x_hat = eps I_t +
    (1 - eps) I_g, eps ~ U(0, 1) per sample, for each generated I_g."""
    real_score = critic(real).mean()
    loss = real.new_zeros(())
    for fake in fakes:
        loss = loss + critic(fake).mean() - real_score
        loss = loss + lambda_gp * gradient_penalty(critic, real, fake)
    return loss


def gradient_penalty(critic: torch.nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """E[(|grad_x D(x)|_2 - 1)^2] at random interpolates between real and generated images."""
    epsilon = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (epsilon * real + (1 - epsilon) * fake).requires_grad_(True)
    score = critic(mixed)
    (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def generator_wgan_loss(critic: torch.nn.Module, fake: Tensor) -> Tensor:
    """L_wgan = -E[D(I*)]."""
    return -critic(fake).mean()


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of torchvision's VGG-19 `features`.
VGG19_LAYERS = ("features.1", "features.6", "features.11", "features.20", "features.29")


class PerceptualLoss(torch.nn.Module):
    """VGG-19 perceptual and style losses (Johnson et al. 2016; main paper, stage B) through torchvision's
    feature extractor, with ImageNet weights from `weights` (a state dict; see
    lightning_modules/common/pretrained.py):
    - perceptual: sum_l |phi_l(x) - phi_l(y)|_1 / (C_l H_l W_l), i.e. the sum over layers of the mean
      absolute feature difference;
    - style: sum_l |G(phi_l(x)) - G(phi_l(y))|_1 / (C_l H_l W_l)^2 with the Gram matrix G(F) = F F^T,
      computed as |G / (C H W) difference|_1 / (C H W) so that float32 holds it.
    The network is frozen and in eval mode; it is not part of checkpoints (`persistent` buffers only)."""

    def __init__(self, weights: dict[str, Tensor], layers: tuple[str, ...] = VGG19_LAYERS) -> None:
        super().__init__()
        from torchvision.models import vgg19
        from torchvision.models.feature_extraction import create_feature_extractor

        network = vgg19(weights=None)
        network.load_state_dict(weights)
        self.extractor = create_feature_extractor(network.eval(), return_nodes=list(layers)).requires_grad_(
            False
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # always eval: the network is a fixed measure

    def features(self, images: Tensor) -> list[Tensor]:
        return list(self.extractor((images.float() - self.mean) / self.std).values())

    def forward(self, predicted: Tensor, target: Tensor, style: bool = False) -> dict[str, Tensor]:
        with torch.autocast(device_type=predicted.device.type, enabled=False):
            pred, real = self.features(predicted), self.features(target.detach())
            perceptual = sum((p - r).abs().mean() for p, r in zip(pred, real))
            out = {"perceptual": perceptual}
            if style:
                out["style"] = sum(
                    (gram(p) - gram(r)).abs().sum(dim=(1, 2)).mean() / p[0].numel()
                    for p, r in zip(pred, real)
                )
        return out


def gram(features: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, C) Gram matrices F F^T normalised by C H W."""
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2) / flat[0].numel()


class CorrespondenceLoss(torch.nn.Module):
    """The correspondence-wise loss L_corr = |C(I_t) - C(I_warp)|_2 (Geng et al. 2022; main paper, stage
    B), with C the feature encoder of a pretrained optical-flow network: torchvision's RAFT (Teed & Deng
    2020), the
    features RAFT correlates to find correspondences. The loss is the mean over positions of the
    Euclidean distance of the two feature vectors: the warped reference must match the target where an
    optical-flow network would look for matches. Frozen, not in checkpoints."""

    def __init__(self, weights: dict[str, Tensor], variant: str = "raft_small") -> None:
        super().__init__()
        from torchvision.models.optical_flow import raft_large, raft_small

        network = (raft_small if variant == "raft_small" else raft_large)(weights=None)
        network.load_state_dict(weights)
        self.encoder = network.feature_encoder.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> CorrespondenceLoss:
        return super().train(False)

    def forward(self, warped: Tensor, target: Tensor) -> Tensor:
        with torch.autocast(device_type=warped.device.type, enabled=False):
            # RAFT takes images in [-1, 1].
            a = self.encoder(warped.float() * 2 - 1)
            b = self.encoder(target.detach().float() * 2 - 1)
        return (a - b).norm(dim=1).mean()


def contrastive_sync_loss(
    face: Tensor,
    audio: Tensor,
    starts: Tensor,
    min_offset: int,
    logit_scale: Tensor | float,
    other_clips: bool = False,
) -> Tensor:
    """InfoNCE (van den Oord et al. 2018) of face windows against audio windows, on cosine similarities
    times a logit scale as in CLIP (Radford et al. 2021): the multi-way matching of Chung et al.'s
    "Perfect match" (2019) in place of Wav2Lip's one pair at a time.

    face (B, K, D): K face windows of each of B clips, starting at frames `starts` (B, K); audio
    (B, T, D): the mel windows starting at every frame of each clip. The positive of face (b, k) is
    audio[b, starts[b, k]]; its negatives are the windows of its own clip at >= `min_offset` frames
    (the same voice and face, so only the lips tell them apart) and, with `other_clips`, every window
    of the other clips too (as CLIP's batch negatives; other speakers here, told apart by voice and
    face alone). The windows in between overlap the positive too much to call either, and are left
    out. Cross-entropy over the candidates, mean over the face windows."""
    batch, length, dim = audio.shape
    if face.dim() != 3 or face.shape[0] != batch or face.shape[2] != dim or starts.shape != face.shape[:2]:
        raise ValueError(
            f"face {tuple(face.shape)}, audio {tuple(audio.shape)} and starts {tuple(starts.shape)} "
            "must be (B, K, D), (B, T, D) and (B, K)"
        )
    logits = logit_scale * torch.einsum("bkd,cjd->bkcj", face, audio)  # face (b, k) vs audio (c, j)
    frames = torch.arange(length, device=audio.device)
    offset = (frames - starts[..., None]).abs()  # (B, K, T)
    own_clip = torch.eye(batch, dtype=torch.bool, device=audio.device)[:, None, :, None]  # (B, 1, B, 1)
    excluded = own_clip & ((offset > 0) & (offset < min_offset))[:, :, None, :]  # (B, K, B, T)
    if not other_clips:
        excluded = excluded | ~own_clip
    logits = logits.masked_fill(excluded, float("-inf")).flatten(2).flatten(0, 1)  # (B K, B T)
    target = (torch.arange(batch, device=audio.device)[:, None] * length + starts).flatten()
    return F.cross_entropy(logits, target)
