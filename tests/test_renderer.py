"""The renderer (stages 2-4): the flow convention, MSAF, shapes and gradients of every network, the sizes
of Table 7, and the stage chain (each stage starts from the previous one's checkpoint)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from lightning_modules.networks.complexity import count_complexity
from lightning_modules.networks.correction import ReferenceCorrectionNet, keypoint_heatmaps
from lightning_modules.networks.critic import PatchCritic
from lightning_modules.networks.flow import flow_image, pixel_grid, resize_flow, warp
from lightning_modules.networks.flow_net import FlowNet, warp_references
from lightning_modules.networks.fusion import ConfidenceFusionNet, feather, paste_back
from lightning_modules.networks.inpainting_net import MSAF, InpaintingNet
from lightning_modules.networks.texture_net import TextureNet

TINY_FLOW = {"channels": [8, 8, 16, 16, 16], "bottleneck_blocks": 1}
TINY_TEXTURE = {
    "encoder_channels": [8, 8, 16, 16],
    "middle_blocks": 1,
    "decoder_channels": [16, 16, 8, 8],
    "spade_hidden": 8,
}
TINY_INPAINTING = {"channels": [8, 8, 16, 16, 16, 16], "bottleneck_blocks": 1, "spade_hidden": 8}


# --- flow ----------------------------------------------------------------------------------------------


def test_zero_flow_is_the_identity_and_a_shift_moves_pixels_by_exactly_that() -> None:
    image = torch.rand(2, 3, 16, 20)
    torch.testing.assert_close(warp(image, torch.zeros(2, 2, 16, 20)), image, rtol=0, atol=1e-6)
    shift = torch.zeros(2, 2, 16, 20)
    shift[:, 0], shift[:, 1] = 3.0, -2.0  # out[y, x] = image[y - 2, x + 3]
    moved = warp(image, shift)
    torch.testing.assert_close(moved[..., 2:, :-3], image[..., :-2, 3:], rtol=0, atol=1e-6)
    # Half a pixel is the average of the two neighbours (bilinear, pixel centres: align_corners=False).
    half = torch.zeros(1, 2, 16, 20)
    half[:, 0] = 0.5
    torch.testing.assert_close(
        warp(image[:1], half)[..., :-1], (image[:1, ..., :-1] + image[:1, ..., 1:]) / 2
    )
    # A flow at half resolution means the same displacement in pixels of its own grid.
    coarse = torch.full((1, 2, 8, 10), 1.5)
    torch.testing.assert_close(resize_flow(coarse, (16, 20)), torch.full((1, 2, 16, 20), 3.0))
    grid = pixel_grid(2, 3, image)
    assert grid[0, :, 1, 2].tolist() == [2.0, 1.0]  # (x, y)
    assert flow_image(shift).shape == (2, 3, 16, 20)


# --- MSAF ----------------------------------------------------------------------------------------------


def test_msaf_weights_sum_to_one_and_sigma_stays_in_the_unit_interval() -> None:
    msaf = MSAF(8, 6)
    assert torch.isclose(msaf.scale_weights.sum(), torch.tensor(1.0))
    with torch.no_grad():
        msaf.scale_logits.copy_(torch.tensor([3.0, -1.0, 0.5]))
        assert torch.isclose(msaf.scale_weights.sum(), torch.tensor(1.0)) and (msaf.scale_weights > 0).all()
        for logit in (-50.0, 50.0):
            msaf.sigma_logit.fill_(logit)
            assert 0.0 <= float(msaf.sigma) <= 1.0
    features, texture = torch.rand(2, 8, 12, 12), torch.rand(2, 6, 12, 12)
    off = MSAF(8, 6, sigma_mode="fixed", sigma=0.0)
    torch.testing.assert_close(off(features, texture)["features"], features)  # Table 5's sigma = 0
    full = MSAF(8, 6, sigma_mode="fixed", sigma=1.0)
    out = full(features, texture)
    assert not torch.allclose(out["features"], features) and out["gate"].shape == (2, 1, 12, 12)
    assert float(out["gate"].min()) >= 0 and float(out["gate"].max()) <= 1
    with pytest.raises(ValueError, match="sigma must lie in"):
        MSAF(8, 6, sigma=1.5)


# --- the networks --------------------------------------------------------------------------------------


def _grads_reach_every_parameter(module: torch.nn.Module, loss: torch.Tensor) -> None:
    module.zero_grad()
    loss.backward()
    missing = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"


def test_renderer_networks_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    size, k = 64, 2
    render3d, masked, target = (
        torch.rand(2, 3, size, size),
        torch.rand(2, 3, size, size),
        torch.rand(2, 3, size, size),
    )
    references = torch.rand(2, k, 3, size, size)
    sfm, tmn = FlowNet(**TINY_FLOW), TextureNet(**TINY_TEXTURE)
    rbfin = InpaintingNet(texture_channels=tmn.texture_channels(), **TINY_INPAINTING)
    warped = warp_references(sfm, render3d, references)
    assert warped["warped"].shape == (2, 3, size, size) and warped["flows"].shape == (2, k, 2, size, size)
    torch.testing.assert_close(warped["weights"].sum(dim=1), torch.ones(2, 1, size, size))
    # The flow head starts at zero: the identity warp, equal fusion weights.
    torch.testing.assert_close(warped["warped"], references.mean(dim=1), rtol=0, atol=1e-5)
    texture = tmn(warped["warped"], render3d)
    assert texture["image"].shape == (2, 3, size, size) and texture["alpha"].shape == (2, 1, size, size)
    assert {s: t.shape[-1] for s, t in texture["texture"].items()} == {4: size // 4, 1: size}
    mask = torch.zeros(2, 1, size, size)
    mask[..., size // 2 :, size // 4 : -size // 4] = 1
    masked = masked * (1 - mask)
    inpainted = rbfin(warped["warped"], render3d, masked, texture["texture"], mask)
    # Both start from the warped reference: I_e* is I_warp, I_i* is I_warp pasted into I_crop.
    torch.testing.assert_close(texture["image"], warped["warped"])
    pasted = mask * warped["warped"] + (1 - mask) * masked
    torch.testing.assert_close(inpainted["image"], pasted, rtol=0, atol=0.01)
    assert inpainted["image"].shape == (2, 3, size, size) and set(inpainted["gates"]) == {4, 1}
    for image in (texture["image"], inpainted["image"]):
        assert float(image.min()) >= 0 and float(image.max()) <= 1
    # I_i* = A C + (1 - A) I_crop exactly
    expected = inpainted["alpha"] * inpainted["colour"] + (1 - inpainted["alpha"]) * masked
    torch.testing.assert_close(inpainted["image"], expected)
    loss = (inpainted["image"] - target).abs().mean() + (texture["image"] - target).abs().mean()
    _grads_reach_every_parameter(torch.nn.ModuleList([sfm, tmn, rbfin]), loss)

    critic = PatchCritic(channels=[8, 16, 16])
    assert critic(target).shape == (2,)
    correction = ReferenceCorrectionNet(channels=[8, 8, 16, 16], heads=2)
    keypoints = torch.rand(2, 68, 2) * size
    corrected = correction(inpainted["image"].detach(), keypoints, references, torch.rand(2, k, 68, 2) * size)
    assert corrected["image"].shape == (2, 3, size, size)
    # the correction starts as the identity: C_c is I_i* plus a residual whose head starts at zero
    torch.testing.assert_close(corrected["image"], inpainted["image"].detach())
    _grads_reach_every_parameter(correction, (corrected["image"] - target).abs().mean())
    fusion = ConfidenceFusionNet(channels=[8, 8, 16])
    candidates = torch.stack([texture["image"], inpainted["image"], corrected["image"]], dim=1).detach()
    fused = fusion(candidates, render3d, torch.ones(2, 1, size, size))
    torch.testing.assert_close(fused["confidence"].sum(dim=1), torch.ones(2, size, size))
    torch.testing.assert_close(fused["image"], candidates.mean(dim=1))  # equal confidences at the start


def test_keypoint_heatmaps_peak_at_the_keypoints() -> None:
    points = torch.tensor([[[5.0, 13.0], [31.0, 3.0]]])  # pixels of a 32 px image: centres of 2 px cells
    maps = keypoint_heatmaps(points, 16, 32, sigma=0.5)
    assert maps.shape == (1, 2, 16, 16)
    peaks = [divmod(int(m.argmax()), 16) for m in maps[0]]
    assert peaks == [(6, 2), (1, 15)]  # (row, column) of the cells holding the points


def test_paste_back_keeps_the_frame_outside_the_feathered_mask() -> None:
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 10:20, 8:24] = 1
    generated, frame = torch.ones(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)
    pasted = paste_back(generated, frame, mask, radius=3)
    assert (pasted[..., 10:20, 8:24] == 1).all()  # inside: the generated pixels
    assert (pasted[..., :4, :] == 0).all() and (pasted[..., 26:, :] == 0).all()  # far outside: the frame
    soft = feather(mask, 3)[0, 0]
    row = soft[15, :8]  # leaving the mask, the weight falls off smoothly, not in one step
    assert (row.diff() >= 0).all() and 0 < float(row[5]) < 1


# --- Table 7 ------------------------------------------------------------------------------------------


def test_parameters_and_macs_near_table_7() -> None:
    """At 192 x 192 with the configured widths (conf/model/stage2.yaml): params and multiply-accumulates
    within 10% of Table 7; the activation memory (feature maps at batch 1) is printed beside Table 7's."""
    import hydra
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/model/stage2.yaml")
    sfm, tmn = hydra.utils.instantiate(cfg.flow_net), hydra.utils.instantiate(cfg.texture_net)
    rbfin = hydra.utils.instantiate(cfg.inpainting_net)(texture_channels=tmn.texture_channels())
    x = torch.rand(1, 3, 192, 192)
    texture = tmn(x, x)["texture"]
    mask = torch.ones(1, 1, 192, 192)
    rows = {
        "SFM": (count_complexity(sfm, [x, x]), 38.68, 2.27, 17.9),
        "TMN": (count_complexity(tmn, [x, x]), 12.53, 39.23, 267.2),
        "RBFIN": (count_complexity(rbfin, [x, x, x, texture, mask]), 37.68, 31.08, 285.0),
    }
    print("\n| network | params (M) | Table 7 | GMACs | Table 7 | activations (MB) | Table 7 memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    for name, (c, params, macs, memory) in rows.items():
        print(
            f"| {name} | {c['params'] / 1e6:.2f} | {params} | {c['macs'] / 1e9:.2f} | {macs} | "
            f"{c['activation_mb']:.1f} | {memory} |"
        )
    for name, (c, params, macs, _) in rows.items():
        assert abs(c["params"] / 1e6 - params) / params < 0.10, name
        assert abs(c["macs"] / 1e9 - macs) / macs < 0.10, name


# --- the stage chain -----------------------------------------------------------------------------------

SHORT = [
    "logger=csv",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
    "callbacks.renderer_media=null",
    "trainer.max_steps=2",
    "trainer.limit_val_batches=1",
    "trainer.check_val_every_n_epoch=1",
    "data.examples_per_clip=1",
    "data.batch_size=2",
]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_each_stage_starts_from_the_previous_stage_checkpoint(corpus_args, tmp_path) -> None:
    """demo_stage2 -> demo_stage3 -> demo_stage4 on the tiny corpus, two steps each: stage 3 holds stage 2's
    networks as trained (frozen) and trains its correction; stage 4 keeps both and trains the fusion."""
    from lightning_modules.common.config import compose_config
    from lightning_modules.tasks.dispatch import run_task

    common = [*corpus_args, f"paths.log_dir={tmp_path}", *SHORT]
    checkpoints = {}
    for stage, previous in (("2", None), ("3", "2"), ("4", "3")):
        init = [f"model.init_checkpoint={checkpoints[previous]}"] if previous else []
        run_task(compose_config([f"experiment=demo_stage{stage}", *common, *init], tmp_path / stage))
        checkpoints[stage] = tmp_path / stage / "checkpoints" / "last.ckpt"
    stage2, stage3, stage4 = (_state(checkpoints[s]) for s in "234")
    for key in [k for k in stage2 if k.startswith(("flow_net.", "texture_net.", "inpainting_net."))]:
        torch.testing.assert_close(stage3[key], stage2[key], msg=key)
        torch.testing.assert_close(stage4[key], stage2[key], msg=key)
    correction = [k for k in stage3 if k.startswith("correction_net.")]
    assert correction and not any(k.startswith("correction_net.") for k in stage2)
    for key in correction:
        torch.testing.assert_close(stage4[key], stage3[key], msg=key)
    assert any(k.startswith("fusion_net.") for k in stage4)
    assert not any(k.startswith(("perceptual.", "correspondence.", "lpips.")) for k in stage4)
    with pytest.raises(FileNotFoundError, match="train that stage first"):
        run_task(
            compose_config(
                ["experiment=demo_stage3", *common, f"model.init_checkpoint={tmp_path / 'none.ckpt'}"],
                tmp_path / "x",
            )
        )


def test_pretrained_losses_come_from_weights_dir_or_switch_off_naming_the_file(tmp_path, caplog) -> None:
    """Without files in paths.weights_dir the perceptual / style, correspondence and LPIPS measures are off
    (weight 0, no network), each warning names its torchvision file; with RAFT's file there (here
    torchvision's raft_small with its own initialisation, saved under the released name) the
    correspondence loss runs through it, reaches the warped image, and stays out of the checkpoint."""
    import logging

    import hydra
    from torchvision.models.optical_flow import raft_small

    from lightning_modules.common.config import compose_config

    weights = tmp_path / "weights"
    weights.mkdir()
    overrides = ["experiment=demo_stage2", f"paths.weights_dir={weights}", "model.losses.correspondence=0.1"]
    with caplog.at_level(logging.WARNING):
        module = hydra.utils.instantiate(compose_config(overrides, tmp_path / "a").model)
    assert module.perceptual is None and module.correspondence is None and module.lpips is None
    assert module.losses["perceptual"] == module.losses["style"] == module.losses["correspondence"] == 0
    for name in ("vgg19-dcbb9e9d.pth", "raft_small_C_T_V2-01064c6d.pth", "alexnet-owt-7be5be79.pth"):
        assert str(weights / name) in caplog.text, name

    torch.save(raft_small(weights=None).state_dict(), weights / "raft_small_C_T_V2-01064c6d.pth")
    module = hydra.utils.instantiate(compose_config(overrides, tmp_path / "b").model)
    assert module.correspondence is not None and module.losses["correspondence"] == 0.1
    warped = torch.rand(2, 3, 128, 128, requires_grad=True)
    loss = module.correspondence(warped, torch.rand(2, 3, 128, 128))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0 and warped.grad.abs().sum() > 0
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert not any(key.startswith("correspondence.") for key in checkpoint["state_dict"])


def test_the_phase_schedule_resumes_where_it_stopped(corpus_args, tmp_path) -> None:
    """Three generator steps of a schedule whose second phase (eps 0.2) starts at generator step 4,
    stopped, resumed from last.ckpt to six: the resumed run continues the generator-step count, so its
    first step is still in phase one and the next two in phase two (a count restarted at 0 would keep
    eps 0 throughout)."""
    from lightning_modules.common.config import compose_config
    from lightning_modules.tasks.dispatch import run_task

    overrides = [
        "experiment=demo_stage2",
        *corpus_args,
        f"paths.log_dir={tmp_path}",
        *SHORT,
        "trainer.log_every_n_steps=1",
        "model.phases=[{start:0,epsilon:0.0},{start:4,epsilon:0.2}]",
    ]
    run_task(compose_config([*overrides, "trainer.max_steps=3"], tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert int(torch.load(last, weights_only=True)["state_dict"]["generator_steps"]) == 3
    run_task(compose_config([*overrides, "trainer.max_steps=6", f"ckpt_path={last}"], tmp_path / "run"))
    assert int(torch.load(last, weights_only=True)["state_dict"]["generator_steps"]) == 6
    with open(tmp_path / "run" / "csv" / "metrics.csv") as handle:  # the resumed run's own rows
        rows = [row for row in csv.DictReader(handle) if row.get("train/epsilon")]
    epsilon = [round(float(row["train/epsilon"]), 3) for row in sorted(rows, key=lambda r: int(r["step"]))]
    assert epsilon == [0.0, 0.2, 0.2], epsilon


def test_training_stays_finite_in_bf16_and_channels_last(corpus_args, tmp_path) -> None:
    """bf16-mixed autocast with channels-last tensors (how a GPU user runs it), four steps through both
    phases of the schedule (SFM + TMN, then joint), then validation: every logged loss and score is
    finite."""
    from lightning_modules.common.config import compose_config
    from lightning_modules.tasks.dispatch import run_task

    overrides = [
        "experiment=demo_stage2",
        *corpus_args,
        f"paths.log_dir={tmp_path}",
        *SHORT,
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=1",
        "model.phases=[{start:0,epsilon:0.0},{start:2,epsilon:0.2}]",
        "trainer.precision=bf16-mixed",
        "model.channels_last=true",
    ]
    run_task(compose_config(overrides, tmp_path / "run"))
    with open(tmp_path / "run" / "csv" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    values = {
        key: float(v) for row in rows for key, v in row.items() if v and key.startswith(("train/", "val/"))
    }
    assert {"train/loss", "train/rec_i", "val/psnr", "val/ssim", "val/psnr_warp_baseline"} <= set(values)
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values()), values


def test_wandb_panel_shows_the_renderer_images(corpus_args, tmp_path) -> None:
    """The offline W&B run of a stage-2 run holds the validation image grid and the PSNR / SSIM metrics."""
    from tests.helpers import run_cli, wandb_history_keys, wandb_records

    run_cli(
        ["experiment=demo_stage2", "logger=wandb", "run_name=wb", *corpus_args, f"paths.log_dir={tmp_path}"]
        + [a for a in SHORT if not a.startswith(("logger=", "callbacks.renderer_media"))],
        env={"WANDB_SILENT": "true"},
    )
    run = next((tmp_path / "train" / "demo_stage2" / "wb" / "wandb").glob("offline-run-*"))
    history = wandb_history_keys(wandb_records(next(run.glob("run-*.wandb"))))
    assert {"val/psnr", "val/ssim", "val/psnr_render_baseline", "val/renderer"} <= history, sorted(history)
    assert list((run / "files" / "media" / "images").rglob("*.png")), "no image grid"


# --- learning on the synthetic corpus ------------------------------------------------------------------


@pytest.mark.slow  # the three demo recipes in a row: several minutes each on 2 cores
def test_demo_recipes_beat_both_baselines_on_unseen_speakers(default_corpus, tmp_path) -> None:
    """demo_stage2, then demo_stage3 on its checkpoint, then demo_stage4 on that one, on the default
    synthetic corpus: on every frame of the 4 validation speakers (none seen in training) each stage's
    output pasted into the crop beats, on PSNR and SSIM, pasting I_3D and pasting the warped reference,
    both measured in the same run."""
    import json

    from lightning_modules.common.config import compose_config
    from lightning_modules.tasks.dispatch import run_task

    common = [
        f"paths.data_dir={default_corpus}",
        f"paths.log_dir={tmp_path}",
        "logger=csv",
        "callbacks.rich_progress_bar=null",
        "callbacks.renderer_media=null",
    ]
    previous = None
    for stage in ("demo_stage2", "demo_stage3", "demo_stage4"):
        init = [f"model.init_checkpoint={previous}"] if previous else []
        run_dir = tmp_path / stage
        run_task(compose_config([f"experiment={stage}", *common, *init], run_dir))
        metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
        print(
            f"{stage}: "
            + ", ".join(f"{key} {metrics[key]:.4f}" for key in sorted(metrics) if key.startswith("val/"))
        )
        for score in ("psnr", "ssim"):
            for baseline in ("render_baseline", "warp_baseline"):
                assert metrics[f"val/{score}"] > metrics[f"val/{score}_{baseline}"], (stage, score, baseline)
        previous = run_dir / "checkpoints" / "last.ckpt"


def test_missing_weights_stop_the_recipe_before_training_unless_allowed(corpus_args, tmp_path) -> None:
    """A renderer recipe whose perceptual, style and correspondence terms and LPIPS need files missing from
    paths.weights_dir stops before any step, naming every file; allow_missing_weights=true (the demo
    recipes' setting) goes on without them, and the run's metrics.json lists what was off."""
    from lightning_modules.common.config import compose_config
    from lightning_modules.tasks.dispatch import run_task

    weights = tmp_path / "weights"
    weights.mkdir()
    common = [
        "experiment=demo_stage2",
        *corpus_args,
        f"paths.log_dir={tmp_path}",
        f"paths.weights_dir={weights}",
    ]
    common += [*SHORT, "model.losses.correspondence=0.1"]
    with pytest.raises(FileNotFoundError) as stopped:
        run_task(compose_config([*common, "allow_missing_weights=false"], tmp_path / "strict"))
    for name in ("vgg19-dcbb9e9d.pth", "raft_small_C_T_V2-01064c6d.pth", "alexnet-owt-7be5be79.pth"):
        assert str(weights / name) in str(stopped.value), name
    assert "allow_missing_weights=true" in str(stopped.value)
    assert not (tmp_path / "strict" / "checkpoints").exists()  # stopped before training

    run_task(compose_config(common, tmp_path / "allowed"))
    record = json.loads((tmp_path / "allowed" / "metrics.json").read_text())
    assert sorted(record["switched_off"]) == ["correspondence", "lpips", "perceptual", "style"]
    assert record["global_step"] > 0
