"""SFP throughput on CPU (or CUDA): batch 1 vs batched, against plain ViT forwards of the same windows.

Two floors run exactly the windows SFP runs, in the same forward sizes:
open_clip's own `encode_image`, and the true floor, our `ViTRunner` (fused
attention in every block, no SFP part at all). "All-weights" is SFP with
attention probabilities materialised in every block, which is what the
authors' code does. Ratios are from one run, interleaved (A B C ..., A B C ...),
each mode's best repeat counting (on a shared machine the best run is the least
disturbed one, as with `timeit`; the JSON keeps every repeat). `--tta` adds the
cost of test-time augmentation: the batched mode again with `flip`, with scales
0.75 / 1 / 1.25, and with both ("x SFP" = time / SFP batched's; windows/s counts
the images' windows, not the views').

    python bench/sfp_throughput.py --arch ViT-B-16 --images 8 --repeats 5
    python bench/sfp_throughput.py --arch ViT-B-16 --images 8 --repeats 3 --tta \
        --out bench/results/sfp_throughput_tta.json
    python bench/sfp_throughput.py --arch ViT-B-16 --images 8 --profile   # torch.profiler: top ops of a batched call
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from sfp_core import SFPConfig, SFPSegmenter
from sfp_core.vit import ViTRunner
from sfp_core.windows import normalise, window_grid

VOCAB = Path(__file__).parent.parent / "jobs" / "vocab" / "voc21.txt"


def corpus(count: int, height: int, width: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(count)]


def window_batches(segmenter: SFPSegmenter, images: list[np.ndarray]) -> list[torch.Tensor]:
    """The exact windows SFP runs, stacked in the same forward sizes."""
    by_shape: dict[tuple[int, int], list[torch.Tensor]] = {}
    for image in images:
        pixels = normalise(torch.from_numpy(segmenter.prepare(image)).to(segmenter.device))
        for y1, x1, y2, x2 in window_grid(pixels.shape[1], pixels.shape[2], 224, 112):
            by_shape.setdefault((y2 - y1, x2 - x1), []).append(pixels[:, y1:y2, x1:x2])
    batches = []
    for (height, width), crops in by_shape.items():
        limit = segmenter.windows_per_forward(height, width)
        batches += [torch.stack(crops[i : i + limit]) for i in range(0, len(crops), limit)]
    return batches


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def all_blocks_materialise_attention():
    original = ViTRunner.run_block

    def run_block(self, index, x, need_weights=False):
        return original(self, index, x, need_weights=True)

    ViTRunner.run_block = run_block
    try:
        yield
    finally:
        ViTRunner.run_block = original


def profile(call) -> None:
    """Where a batched `segment` call spends its time: torch.profiler's table, by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    call()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities, profile_memory=True) as prof:
        call()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def page_faults() -> int:
    """Minor page faults of this process so far: fresh pages the kernel had to hand out (and zero)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="images per segment() call in the batched mode")
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sfp_throughput.json"))
    parser.add_argument("--profile", action="store_true", help="profile one batched call instead, print top ops")
    parser.add_argument("--tta", action="store_true", help="also the batched mode with flip, three scales, both")
    args = parser.parse_args()

    device = torch.device(args.device)
    config = SFPConfig.preset("voc21", precision=args.precision)
    segmenter = SFPSegmenter.from_pretrained(args.arch, "random", VOCAB, config, device)
    images = corpus(args.images, args.height, args.width)
    batches = window_batches(segmenter, images)
    windows = sum(len(b) for b in batches)
    model = segmenter.model
    runner = segmenter.runner
    autocast = segmenter._autocast  # the same precision context SFP uses

    def plain_forward():
        with torch.inference_mode(), autocast():
            for batch in batches:
                model.encode_image(batch)

    def fused_forward():
        with torch.inference_mode(), autocast():
            for batch in batches:
                tokens, _ = runner.embed(batch)
                for index in range(runner.depth):
                    tokens, _ = runner.run_block(index, tokens)

    def sfp_batch1():
        for image in images:
            segmenter.segment([image])

    def sfp_batched():
        for start in range(0, len(images), args.batch):
            segmenter.segment(images[start : start + args.batch])

    def sfp_all_weights():
        with all_blocks_materialise_attention():
            sfp_batched()

    def sfp_augmented(**views):
        """The batched mode with test-time augmentation: a segmenter on the same model and vocabulary."""
        augmented = SFPSegmenter(
            segmenter.backbone, segmenter.vocabulary, SFPConfig(**{**config.to_dict(), **views}), device
        )

        def run():
            for start in range(0, len(images), args.batch):
                augmented.segment(images[start : start + args.batch])

        return run

    if args.profile:
        profile(lambda: segmenter.segment(images[: args.batch]))
        return
    modes = {
        "fused ViT forward (floor)": fused_forward,
        "open_clip encode_image": plain_forward,
        "SFP batch 1": sfp_batch1,
        f"SFP batched ({args.batch} images/call)": sfp_batched,
        "SFP, attention weights in every block": sfp_all_weights,
    }
    batched = f"SFP batched ({args.batch} images/call)"
    if args.tta:
        modes["SFP batched, flip"] = sfp_augmented(flip=True)
        modes["SFP batched, scales 0.75/1/1.25"] = sfp_augmented(scales=[0.75, 1.0, 1.25])
        modes["SFP batched, flip and scales 0.75/1/1.25"] = sfp_augmented(flip=True, scales=[0.75, 1.0, 1.25])
    for fn in modes.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in modes}
    faults: dict[str, list[int]] = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name, fn in modes.items():
            before = page_faults()
            times[name].append(timed(fn, device))
            faults[name].append(page_faults() - before)
    latencies = []
    for image in images[: min(8, len(images))]:
        latencies.append(timed(lambda image=image: segmenter.segment([image]), device))

    floor = min(times["fused ViT forward (floor)"])
    sfp = min(times[batched])
    rows = []
    for name, samples in times.items():
        seconds = min(samples)
        rows.append(
            {
                "mode": name,
                "seconds": round(seconds, 3),
                "repeats_s": [round(t, 3) for t in samples],
                "page_faults_per_repeat": faults[name],
                "windows_per_s": round(windows / seconds, 2),
                "images_per_s": round(len(images) / seconds, 3),
                "vs_floor": round(seconds / floor, 3),
                "vs_sfp_batched": round(seconds / sfp, 3),
            }
        )
    report = {
        "arch": args.arch,
        "weights": "random",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "precision": args.precision,
        "images": len(images),
        "image_size": [args.height, args.width],
        "windows": windows,
        "batch1_latency_s": {"median": round(statistics.median(latencies), 3), "max": round(max(latencies), 3)},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cuda_peak_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.arch}, {len(images)} images {args.height}x{args.width} = {windows} windows, {report['device']}")
    print("| mode | s | windows/s | images/s | x floor | x SFP |\n|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['seconds']} | {row['windows_per_s']} | {row['images_per_s']} | {row['vs_floor']} "
            f"| {row['vs_sfp_batched']} |"
        )
    print(f"batch-1 latency median {report['batch1_latency_s']['median']} s; peak RSS {report['peak_rss_mib']} MiB")


if __name__ == "__main__":
    main()
