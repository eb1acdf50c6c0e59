"""The measures that read published weights compute through them: the renderer's perceptual and style
losses (VGG-19), LPIPS (AlexNet) and FID (torch-fidelity's Inception), each from a file under its
released name in paths.weights_dir. The files here hold randomly initialised networks of the released
architectures (nothing can be downloaded here): what is tested is the loading and the arithmetic, not
the published numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_modules.metrics.image import INCEPTION_FILES, fid_metric, lpips_metric


@pytest.fixture(scope="module")
def released_weights(tmp_path_factory) -> Path:
    from torchvision.models import alexnet, vgg19

    weights = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(vgg19(weights=None).state_dict(), weights / "vgg19-dcbb9e9d.pth")
    torch.save(alexnet(weights=None).state_dict(), weights / "alexnet-owt-7be5be79.pth")
    torch.save(random_inception_state(), weights / INCEPTION_FILES[0])
    return weights


def random_inception_state() -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception with its own initialisation: its constructor always loads weights (a
    download without a path), so the load is stepped over while it is built."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    extractor = inception.FeatureExtractorInceptionV3
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(extractor, "load_state_dict", lambda self, state, *args, **kwargs: None)
        network = extractor("inception-v3-compat", ["2048"])
    return network.state_dict()


def test_perceptual_and_style_losses_run_through_vgg19_from_its_file(released_weights, tmp_path) -> None:
    import hydra

    from lightning_modules.common.config import compose_config

    cfg = compose_config(["experiment=demo_stage2", f"paths.weights_dir={released_weights}"], tmp_path)
    module = hydra.utils.instantiate(cfg.model)
    assert module.perceptual is not None and module.lpips is not None
    assert "perceptual" not in module.switched_off and module.losses["perceptual"] > 0
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 64, 64, generator=generator)
    image = torch.rand(2, 3, 64, 64, generator=generator, requires_grad=True)
    terms = module.image_terms(image, target, style=True)
    assert {"perceptual", "style"} <= set(terms)
    assert terms["perceptual"] > 0 and terms["style"] > 0
    (terms["perceptual"] + terms["style"]).backward()
    assert image.grad.abs().sum() > 0
    same = module.image_terms(target, target, style=True)
    assert float(same["perceptual"]) == 0 and float(same["style"]) == 0
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert not any(key.startswith(("perceptual.", "lpips.")) for key in checkpoint["state_dict"])


def test_lpips_and_fid_compute_from_their_files(released_weights) -> None:
    generator = torch.Generator().manual_seed(2)
    a = torch.rand(4, 3, 64, 64, generator=generator)
    b = torch.rand(4, 3, 64, 64, generator=generator)

    lpips = lpips_metric(str(released_weights))
    assert lpips is not None
    lpips.update(a, a)
    assert float(lpips.compute()) == pytest.approx(0.0, abs=1e-6)
    lpips.reset()
    lpips.update(a, b)
    assert float(lpips.compute()) > 0

    fid = fid_metric(str(released_weights), feature=64)
    assert fid is not None
    real = (a * 255).round().to(torch.uint8)
    fid.update(real, real=True)
    fid.update(real, real=False)
    same = float(fid.compute())
    fid.reset()
    fid.update(real, real=True)
    fid.update((b * 255).round().to(torch.uint8), real=False)
    different = float(fid.compute())
    assert abs(same) < 1e-2 and different > same, (same, different)
