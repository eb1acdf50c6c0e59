"""Loader throughput for `view: frame` (stages 2-4) against the raw decode rate of the same images.

    .venv/bin/python bench/bench_loader.py [--workers 0 2]
    .venv/bin/python bench/bench_loader.py --shard-dir data/synthetic/shards --split train --replicate 20 \
        --source-root data/synthetic/raw

Both are measured in this run on the same shard split:
- raw decode: one process decoding, per clip, the 2 K + 3 images a frame-view example needs (target,
  K references, their K + 1 I_3D renders, the face mask) straight from the shard bytes with OpenCV,
  the bytes already in memory: the most a single loader process could deliver.
- loader: `ShardDataModule(view="frame")` batches (litdata read, decode, mouth-masked crop, resize,
  collate), with the given worker counts.
- decord (when the shards name source mp4s that exist): the same number of frames per example read
  by random access from the H.264 sources, the alternative to JPEG shards.
The figure is the ratio loader samples/s / raw decode samples/s; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from datamodules import ShardDataModule
from datamodules.shards import ShardReader, decode_image, random_clip_sample, write_shards


def raw_decode_rate(clips: list[dict], images_per_example: int, passes: int, seed: int) -> float:
    """Examples/s of decoding images_per_example - 1 JPEGs and one PNG per clip, bytes in memory."""
    rng = np.random.default_rng(seed)
    count = 0
    start = time.perf_counter()
    for _ in range(passes):
        for clip in clips:
            n = clip["num_frames"]
            rgb = rng.integers(0, n, (images_per_example - 1) // 2)
            for i in rgb:
                decode_image(clip["frames"], clip["frame_offsets"], int(i))
                decode_image(clip["render3d"], clip["render3d_offsets"], int(i))
            decode_image(clip["face_mask"], clip["face_mask_offsets"], int(rgb[0]), gray=True)
            count += 1
    return count / (time.perf_counter() - start)


def decord_rate(clips: list[dict], frames_per_example: int, seed: int, source_root: Path) -> float | None:
    """Examples/s of reading frames_per_example random frames of each clip's source mp4 with decord
    (relative `source` paths are taken from `source_root`)."""
    sources = [source_root / c["source"] for c in clips]
    if not sources or not all(p.is_file() for p in sources):
        return None
    import decord

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for clip, path in zip(clips, sources):
        reader = decord.VideoReader(str(path))
        indices = rng.integers(0, min(len(reader), clip["num_frames"]), frames_per_example)
        reader.get_batch(sorted(int(i) for i in indices)).asnumpy()
    return len(clips) / (time.perf_counter() - start)


def loader_rate(shard_root: Path, args: argparse.Namespace, workers: int) -> float:
    """Examples/s of frame-view batches over `args.epochs` epochs (each epoch's first batch, worker
    start-up included, is left out of the timing)."""
    dm = ShardDataModule(
        corpus="bench",
        shard_dir=str(shard_root),
        view="frame",
        batch_size=args.batch_size,
        num_workers=workers,
        image_size=args.image_size,
        num_references=args.references,
        mask_mode=args.mask_mode,
        seed=0,
    )
    loader = dm.train_dataloader()
    count, seconds = 0, 0.0
    for _ in range(args.epochs):
        start = None
        for batch in loader:
            if start is None:  # worker start-up and the first batch are left out
                start = time.perf_counter()
                continue
            count += len(batch["clip_id"])
        if start is not None:
            seconds += time.perf_counter() - start
    if count == 0:
        raise SystemExit(f"too few clips in {shard_root}/train for batches of {args.batch_size}")
    return count / seconds


def make_shards(root: Path, args: argparse.Namespace) -> None:
    """Random clips, or `--replicate` copies (new clip ids) of every clip of `--shard-dir`'s split: real
    face JPEGs in a corpus big enough to time, when the preprocessed one is small."""
    if args.shard_dir is None:
        rng = np.random.default_rng(0)
        samples = (
            random_clip_sample(rng, f"clip{i:04d}", f"id{i % 8:05d}", args.frames, args.image_size)
            for i in range(args.clips)
        )
    else:
        source = list(ShardReader(args.shard_dir / args.split))
        samples = (
            dict(clip, clip_id=f"{clip['clip_id']}-{k}") for k in range(args.replicate) for clip in source
        )
    write_shards(samples, root / "train")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shard-dir", type=Path, help="a preprocessed shard root (default: random clips)")
    parser.add_argument("--split", default="train", help="the split of --shard-dir to read")
    parser.add_argument("--replicate", type=int, default=1, help="copies of each --shard-dir clip")
    parser.add_argument(
        "--source-root", type=Path, default=Path("."), help="where relative `source` paths of clips start"
    )
    parser.add_argument("--clips", type=int, default=160, help="random shards: number of clips")
    parser.add_argument("--frames", type=int, default=30, help="random shards: frames per clip")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--references", type=int, default=2)
    parser.add_argument("--mask-mode", default="landmark_hull")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads of this process (0: torch's default). On a loaded 2-core machine the "
        "collate's torch.stack of small tensors is ~100x slower with 2 OpenMP threads than with 1.",
    )
    args = parser.parse_args()
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_shards(root, args)
        clips = list(ShardReader(root / "train"))
        images = 2 * args.references + 3
        raw = raw_decode_rate(clips, images, args.epochs, seed=0)
        rows = [("raw decode (OpenCV, 1 process, bytes in memory)", raw)]
        mp4 = decord_rate(clips, args.references + 1, seed=0, source_root=args.source_root)
        if mp4 is not None:
            rows.append((f"decord random access on the source mp4s ({args.references + 1} frames)", mp4))
        for workers in args.workers:
            rows.append(
                (f"ShardDataModule view=frame, num_workers={workers}", loader_rate(root, args, workers))
            )

    size = clips[0]["image_size"]
    print(
        f"\n{len(clips)} clips, {size}px shards -> {args.image_size}px, K={args.references} references "
        f"({images} images per example), batch {args.batch_size}, mask {args.mask_mode}, "
        f"torch threads {torch.get_num_threads()}\n"
    )
    print("| measure | examples/s | images/s | ratio to raw decode |")
    print("|---|---|---|---|")
    for name, rate in rows:
        per_example = args.references + 1 if name.startswith("decord") else images
        print(f"| {name} | {rate:.1f} | {rate * per_example:.0f} | {rate / raw:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
