"""Speed of the stage-2 renderer (SFM + TMN + RBFIN at the configured paper size, 192 x 192) against the
machine's own GEMM rate, measured in the same run.

    .venv/bin/python bench/bench_renderer.py [--device cpu|cuda] [--batches 2 16] [--modes eager ...]

For each batch size and mode (eager, channels_last, bf16-mixed autocast, torch.compile):
- the forward pass (K = 2 references: SFM twice, TMN, RBFIN) and one training step (forward, L1 + SSIM
  backward, optimiser step) in seconds;
- the multiply-accumulates per second they achieve (forward MACs counted by FlopCounterMode; a training
  step counts 3 x the forward: the backward pass costs about twice the forward), as a ratio of the
  MACs/s of a large float32 GEMM (4096^3, torch.mm) timed at the start of the run: the roofline;
- peak memory: torch.cuda.max_memory_allocated on a GPU; on a CPU the growth of the process's peak
  resident set during the measurement (resource.getrusage), each configuration in its own process so
  that peaks do not mix.
Then the loader: `view: frame` examples/s of the synthetic corpus at 192 px (0 and 2 workers) against
the examples/s a training step consumes, so that the loader is shown never to be the bottleneck.
Prints markdown tables (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("eager", "channels_last", "bf16", "compile")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def gemm_rate(device: str, size: int = 4096, repeats: int = 3) -> float:
    """MACs/s of a float32 size^3 matrix product (the best of `repeats`)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.mm(a, b)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return size**3 / best


def build(device: str):
    import hydra
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "conf/model/stage2.yaml")
    sfm, tmn = hydra.utils.instantiate(cfg.flow_net), hydra.utils.instantiate(cfg.texture_net)
    rbfin = hydra.utils.instantiate(cfg.inpainting_net)(texture_channels=tmn.texture_channels())
    return torch.nn.ModuleList([sfm, tmn, rbfin]).to(device)


def renderer_forward(nets, render3d, references, masked, mask):
    from lightning_modules.networks.flow_net import warp_references

    sfm, tmn, rbfin = nets
    warp = warp_references(sfm, render3d, references)
    texture = tmn(warp["warped"], render3d)
    return texture["image"], rbfin(warp["warped"], render3d, masked, texture["texture"], mask)["image"]


def measure(device: str, batch: int, mode: str, steps: int) -> dict[str, float]:
    """One configuration, in this process: seconds per forward and per training step, peak memory."""
    from lightning_modules.losses import ssim_loss
    from lightning_modules.networks.complexity import count_complexity

    torch.manual_seed(0)
    nets = build(device)
    size = 192
    render3d, masked, target = (torch.rand(batch, 3, size, size, device=device) for _ in range(3))
    references = torch.rand(batch, 2, 3, size, size, device=device)
    mask = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    if mode == "channels_last":
        nets = nets.to(memory_format=torch.channels_last)
        render3d, masked, target = (
            x.contiguous(memory_format=torch.channels_last) for x in (render3d, masked, target)
        )
    forward = renderer_forward
    if mode == "compile":
        forward = torch.compile(renderer_forward)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=mode == "bf16")
    optimizer = torch.optim.Adam(nets.parameters(), 1e-4)

    def train_step() -> None:
        with autocast:
            intermediate, output = forward(nets, render3d, references, masked, mask)
            loss = (output - target).abs().mean() + (intermediate - target).abs().mean()
        loss = loss + ssim_loss(output.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def forward_pass() -> None:
        with torch.no_grad(), autocast:
            forward(nets, render3d, references, masked, mask)

    # MACs of one forward pass at this batch (float32 eager, counted once).
    one = count_complexity(nets[0], [render3d[:1], references[:1, 0]])["macs"] * 2
    texture = nets[1](render3d[:1], render3d[:1])["texture"]
    one += count_complexity(nets[1], [render3d[:1], render3d[:1]])["macs"]
    one += count_complexity(nets[2], [render3d[:1], render3d[:1], masked[:1], texture, mask[:1]])["macs"]
    macs = one * batch
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = {}
    for name, fn in (("forward", forward_pass), ("train_step", train_step)):
        fn()  # warm-up (and compilation)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        times[name] = (time.perf_counter() - start) / steps
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    )
    return {
        "forward_s": times["forward"],
        "train_step_s": times["train_step"],
        "forward_macs_per_s": macs / times["forward"],
        "train_macs_per_s": 3 * macs / times["train_step"],
        "peak_mb": peak,
    }


def loader_rate(batch: int, workers: int, batches: int, data_dir: Path) -> float:
    """`view: frame` examples/s of the synthetic corpus at 192 px, built here if missing."""
    import hydra

    from lightning_modules.common.config import compose_config

    cfg = compose_config(
        [
            "experiment=stage2",
            f"paths.data_dir={data_dir}",
            f"data.batch_size={batch}",
            f"data.num_workers={workers}",
            "data.pin_memory=false",
            "data.examples_per_clip=16",
        ],
        data_dir / "bench_config",
    )
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    iterator = iter(datamodule.train_dataloader())
    next(iterator)  # worker start-up
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        count += next(iterator)["target"].shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=2, help="timed repeats per measurement")
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: "batch,mode" in a child process
    args = parser.parse_args()
    if args.one:
        batch, mode = args.one.split(",")
        print(json.dumps(measure(args.device, int(batch), mode, args.steps)))
        return
    gemm = gemm_rate(args.device)
    print(
        f"GEMM roofline: {gemm / 1e9:.1f} G MACs/s (float32 4096^3, {args.device}, "
        f"{torch.get_num_threads()} threads)\n"
    )
    print(
        "| batch | mode | forward s | forward G MACs/s | / GEMM | train step s | train G MACs/s | / GEMM "
        "| peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    step_rate = {}
    for batch in args.batches:
        for mode in args.modes:
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--device",
                    args.device,
                    "--steps",
                    str(args.steps),
                    "--one",
                    f"{batch},{mode}",
                ],
                capture_output=True,
                text=True,
            )
            if child.returncode != 0:
                print(f"| {batch} | {mode} | failed: {child.stderr.strip().splitlines()[-1]} |||||||")
                continue
            r = json.loads(child.stdout.strip().splitlines()[-1])
            if mode == "eager":
                step_rate[batch] = batch / r["train_step_s"]
            print(
                f"| {batch} | {mode} | {r['forward_s']:.3f} | {r['forward_macs_per_s'] / 1e9:.1f} | "
                f"{r['forward_macs_per_s'] / gemm:.2f} | {r['train_step_s']:.3f} | "
                f"{r['train_macs_per_s'] / 1e9:.1f} | "
                f"{r['train_macs_per_s'] / gemm:.2f} | {r['peak_mb']:.0f} |",
                flush=True,
            )
    print("\n| batch | loader workers | loader examples/s | a training step consumes (eager) | ratio |")
    print("|---|---|---|---|---|")
    for batch in args.batches:
        for workers in (0, 2):
            rate = loader_rate(batch, workers, batches=4, data_dir=Path(args.data_dir))
            need = step_rate.get(batch, float("nan"))
            print(f"| {batch} | {workers} | {rate:.1f} | {need:.2f} | {rate / need:.0f} x |", flush=True)


if __name__ == "__main__":
    main()
