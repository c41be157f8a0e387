"""Outlier tokens block by block: how many each detector finds and how large they are.

SFP's motivation figure: for every block 1 .. L-1 of a CLIP ViT, over the sliding windows SFP runs on a
folder of images, the mean number of outliers per window that SOM, L2 and LOF find in that block's
output, and the mean L2 norm of those outlier tokens against the other patch tokens. Each block is
looked at independently (no purification), with SFPConfig's detector settings. Writes the plot (PNG)
and the numbers (JSON beside it).

    python bench/outliers.py examples/images --arch ViT-B-16 --weights openai
    python bench/outliers.py examples/images            # SFP-Tiny-16, random weights: a smoke run

Needs matplotlib (`pip install -e ".[bench]"`).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from sfp_core import SFPConfig, prepare_image
from sfp_core.backbone import load_backbone
from sfp_core.outliers import detect_l2, detect_lof, detect_som
from sfp_core.vit import ViTRunner
from sfp_core.windows import normalise, window_grid

METHODS = ("som", "l2", "lof")
COLOURS = {"som": "tab:red", "l2": "tab:blue", "lof": "tab:green"}
EXTENSIONS = (".jpg", ".jpeg", ".png")


def load_images(folder: Path, limit: int) -> list[np.ndarray]:
    """Up to `limit` images under `folder` (sorted), EXIF-oriented RGB."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS)[:limit]
    if not paths:
        raise SystemExit(f"no {'/'.join(EXTENSIONS)} images under {folder}")
    return [np.array(ImageOps.exif_transpose(Image.open(p)).convert("RGB")) for p in paths]


def window_batches(
    images: list[np.ndarray], config: SFPConfig, patch: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """SFP's windows of every image at its working size, stacked by shape, at most max_windows_per_forward."""
    by_shape: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
    for image in images:
        working = prepare_image(image, config.short_side, config.long_side, patch)
        pixels = normalise(torch.from_numpy(np.ascontiguousarray(working)).to(device))
        for y1, x1, y2, x2 in window_grid(pixels.shape[1], pixels.shape[2], config.slide_crop, config.slide_stride):
            by_shape[(y2 - y1, x2 - x1)].append(pixels[:, y1:y2, x1:x2])
    limit = config.max_windows_per_forward
    for crops in by_shape.values():
        for start in range(0, len(crops), limit):
            yield torch.stack(crops[start : start + limit])


def detect(method: str, tokens: torch.Tensor, probs: torch.Tensor, config: SFPConfig) -> torch.Tensor:
    """`B x n` outlier mask of one block: its output tokens, its attention probabilities."""
    if method == "som":
        return detect_som(probs, config.res_cls * config.res_scale, config.top_k)[0]
    if method == "l2":
        return detect_l2(tokens[:, 1:], config.top_k)[0]
    return detect_lof(tokens[:, 1:], config.lof_neighbors, config.lof_contamination)[0]


class Tally:
    """Per method and block: outliers found, and norm sums of outlier and other patch tokens."""

    def __init__(self, blocks: int):
        self.windows = 0
        self.count = {m: np.zeros(blocks) for m in METHODS}
        self.outlier_norm = {m: np.zeros(blocks) for m in METHODS}
        self.other_norm = {m: np.zeros(blocks) for m in METHODS}
        self.other_count = {m: np.zeros(blocks) for m in METHODS}

    def add(self, method: str, block: int, mask: torch.Tensor, norms: torch.Tensor) -> None:
        self.count[method][block] += int(mask.sum())
        self.outlier_norm[method][block] += float(norms[mask].sum())
        self.other_norm[method][block] += float(norms[~mask].sum())
        self.other_count[method][block] += int((~mask).sum())

    def summary(self) -> dict[str, dict[str, list[float | None]]]:
        def ratio(num: np.ndarray, den: np.ndarray) -> list[float | None]:
            return [float(a / b) if b else None for a, b in zip(num, den, strict=True)]

        return {
            m: {
                "outliers_per_window": (self.count[m] / max(self.windows, 1)).tolist(),
                "outlier_norm": ratio(self.outlier_norm[m], self.count[m]),
                "other_norm": ratio(self.other_norm[m], self.other_count[m]),
            }
            for m in METHODS
        }


@torch.inference_mode()
def measure(runner: ViTRunner, batches: Iterator[torch.Tensor], config: SFPConfig) -> Tally:
    """Run blocks 1 .. L-1 with attention probabilities and apply every detector to every block."""
    tally = Tally(runner.depth - 1)
    for batch in batches:
        tally.windows += batch.shape[0]
        tokens, _ = runner.embed(batch)
        for index in range(runner.depth - 1):
            tokens, probs = runner.run_block(index, tokens, need_weights=True)
            norms = tokens[:, 1:].float().norm(dim=-1)
            for method in METHODS:
                tally.add(method, index, detect(method, tokens, probs, config), norms)
    return tally


def plot(result: dict, path: Path) -> None:
    blocks = result["blocks"]
    fig = Figure(figsize=(11, 4.2))  # no pyplot: no GUI backend, nothing global
    counts, norms = fig.subplots(1, 2)
    for method, series in result["methods"].items():
        colour = COLOURS[method]
        counts.plot(blocks, series["outliers_per_window"], "o-", color=colour, label=method.upper())
        outlier = [np.nan if v is None else v for v in series["outlier_norm"]]
        other = [np.nan if v is None else v for v in series["other_norm"]]
        norms.plot(blocks, outlier, "o-", color=colour, label=f"{method.upper()} outliers")
        norms.plot(blocks, other, "--", color=colour, alpha=0.6, label=f"{method.upper()} other tokens")
    counts.set(xlabel="block", ylabel="outliers per window", title="outliers found")
    norms.set(xlabel="block", ylabel="mean L2 norm", title="norm of outlier tokens vs the rest")
    for axis in (counts, norms):
        axis.set_xticks(blocks)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(f"{result['arch']} ({result['weights']}): {result['images']} images, {result['windows']} windows")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path, help="folder of .jpg/.jpeg/.png images (searched recursively)")
    parser.add_argument("--arch", default="SFP-Tiny-16", help="open_clip ViT name (default SFP-Tiny-16)")
    parser.add_argument("--weights", default="random", help="open_clip tag | file | URI | random (default random)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-images", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "outliers.png")
    args = parser.parse_args(argv)

    config = SFPConfig()
    device = torch.device(args.device)
    backbone = load_backbone(args.arch, args.weights)
    runner = ViTRunner(backbone.model.to(device).eval().visual)
    images = load_images(args.images, args.max_images)
    tally = measure(runner, window_batches(images, config, runner.patch, device), config)
    result = {
        "arch": args.arch,
        "weights": args.weights,
        "images": len(images),
        "windows": tally.windows,
        "blocks": list(range(1, runner.depth)),
        "detectors": {
            "top_k": config.top_k,
            "som_gamma": config.res_cls * config.res_scale,
            "lof_neighbors": config.lof_neighbors,
            "lof_contamination": config.lof_contamination,
        },
        "methods": tally.summary(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(result, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return result


if __name__ == "__main__":
    main()
