"""Input formats: images/s of each `input.format` vs loose files on the same images, the driver's memory
while planning 1x and 10x shards and row groups, and Ray Data's `read_webdataset` on the same shards.

The same generated JPEGs (500 x 375) are stored four ways: loose files, WebDataset shards, a Parquet
table (row groups of 16) and a text list. Each is labelled by `label()` in its own fresh process (Ray
already started, not counted; SFP-Tiny-16 with random weights by default, so the input side weighs as
much as it can), the formats interleaved over `--repeats` rounds, best run each.

Planning memory: the driver's Python allocations (tracemalloc peak) and RSS growth while planning and
counting `--shards` shards, then ten times as many (one sample each; only the plan is under test), and
Parquet row groups likewise.

Ray Data's reader: `ray.data.read_webdataset` over the same shards, counted, against our plan + read
stage (no model in either); then both on the shards with one of them truncated.

  .venv/bin/python bench/input_formats.py                                 # 48 images, 3 repeats
  .venv/bin/python bench/input_formats.py --images 96 --arch ViT-B-16 --repeats 2

Writes bench/results/input_formats.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_throughput import make_corpus

RESULTS = Path(__file__).parent / "results" / "input_formats.json"
CLASSES = [["background", "sky", "wall"], ["cat"], ["dog"], ["person"], ["car"]]
FORMATS = ("files", "webdataset", "parquet", "list")


def store_formats(images: Path, root: Path, per_shard: int) -> dict[str, str]:
    """The corpus as shards, one table and a list; format -> input URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(p.name for p in images.glob("*.jpg"))
    shards = root / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(names), per_shard):
        with tarfile.open(shards / f"{start // per_shard:05d}.tar", "w") as tar:
            for name in names[start : start + per_shard]:
                data = (images / name).read_bytes()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    table = pa.table({"id": names, "image": [(images / n).read_bytes() for n in names]})
    (root / "tables").mkdir(exist_ok=True)
    pq.write_table(table, root / "tables" / "images.parquet", row_group_size=16)
    (root / "list.txt").write_text("".join(f"{images / n}\n" for n in names))
    return {
        "files": str(images),
        "webdataset": str(shards),
        "parquet": str(root / "tables"),
        "list": str(root / "list.txt"),
    }


_LABEL = """
import json, sys, time
import ray
from pipeline import Destination, LabelRequest, ModelChoice, Resources, Source, label
from sfp_core import SFPConfig, Vocabulary
fmt, uri, out, arch, address = sys.argv[1:6]
ray.init(address=address)
request = LabelRequest(
    input=Source(uri=uri, format=fmt), output=Destination(uri=out, mode="overwrite"),
    vocabulary=Vocabulary(json.loads(sys.argv[6])), model=ModelChoice(arch=arch, weights="random"),
    config=SFPConfig(), resources=Resources(batch_size=8),
)
started = time.perf_counter()
summary = label(request)
print(json.dumps({"seconds": time.perf_counter() - started, "ok": summary.ok, "error": summary.error}))
"""


def label_once(fmt: str, uri: str, out: Path, arch: str, address: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, "-c", _LABEL, fmt, uri, str(out), arch, address, json.dumps(CLASSES)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


_PLAN = """
import json, os, sys, time, tracemalloc
import ray
from pipeline import Source
from pipeline.retry import Retry
from pipeline.inputs import InputReader
from pipeline.storage import Redactor
fmt, uri, address = sys.argv[1:4]
ray.init(address=address)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
reader = InputReader(Source(uri=uri, format=fmt), Redactor(), Retry())
before = rss()
tracemalloc.start()
started = time.perf_counter()
plan = reader.plan(0.5).materialize()
units = plan.count()
seconds = time.perf_counter() - started
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"units": units, "seconds": seconds, "python_peak_bytes": peak, "rss_growth_bytes": rss() - before}))
"""


def plan_memory(fmt: str, uri: str, address: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _PLAN, fmt, uri, address], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def tiny_shards(root: Path, count: int, sample: bytes) -> str:
    root.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("s.jpg")
        info.size = len(sample)
        tar.addfile(info, io.BytesIO(sample))
    for index in range(count):
        (root / f"{index:06d}.tar").write_bytes(buffer.getvalue())
    return str(root)


def many_row_groups(root: Path, groups: int, sample: bytes) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    per_file = 1000
    for start in range(0, groups, per_file):
        n = min(per_file, groups - start)
        table = pa.table({"image": [sample] * n})
        pq.write_table(table, root / f"part-{start // per_file:04d}.parquet", row_group_size=1)
    return str(root)


_READERS = """
import json, sys, time
import ray
from pipeline import Source
from pipeline.retry import Retry
from pipeline.inputs import InputReader, KnownIds, start_ledger
from pipeline.storage import Redactor
which, shards, address = sys.argv[1:4]
ray.init(address=address)
started = time.perf_counter()
try:
    if which == "ray":
        rows = ray.data.read_webdataset(shards).count()
    else:
        reader = InputReader(Source(uri=shards, format="webdataset"), Redactor(), Retry())
        ledger = start_ledger()
        read = reader.read(reader.plan(0.5).materialize(), KnownIds(), ledger, 0.5)
        rows = sum(len(b["image_id"]) for b in read.iter_batches(batch_size=None, batch_format="pyarrow"))
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - started}))
except Exception as exc:
    print(json.dumps({"failed": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}"}))
"""


def read_only(which: str, shards: str, address: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _READERS, which, shards, address], capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--per-shard", type=int, default=12)
    parser.add_argument("--arch", default="SFP-Tiny-16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards", type=int, default=1000, help="planning memory at this many shards and 10x")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    address = ray.get_runtime_context().gcs_address
    work = Path(tempfile.mkdtemp(prefix="sfp-input-bench-"))
    try:
        images = make_corpus(work / "images", args.images)
        uris = store_formats(images, work, args.per_shard)
        runs: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
        for _ in range(args.repeats):
            for fmt in FORMATS:
                result = label_once(fmt, uris[fmt], work / f"out-{fmt}", args.arch, address)
                assert result["ok"] == args.images, result
                runs[fmt].append(result["seconds"])
        best = {fmt: min(times) for fmt, times in runs.items()}
        throughput = {
            fmt: {"best_s": round(best[fmt], 2), "images_per_s": round(args.images / best[fmt], 2),
                  "vs_files": round(best["files"] / best[fmt], 3), "runs_s": [round(t, 2) for t in runs[fmt]]}
            for fmt in FORMATS
        }  # fmt: skip

        sample = (images / sorted(p.name for p in images.glob("*.jpg"))[0]).read_bytes()
        planning = {}
        for scale in (1, 10):
            n = args.shards * scale
            planning[f"webdataset_{n}_shards"] = plan_memory(
                "webdataset", tiny_shards(work / f"tiny-{n}", n, sample), address
            )
            planning[f"parquet_{n}_row_groups"] = plan_memory(
                "parquet", many_row_groups(work / f"groups-{n}", n, sample), address
            )

        readers = {
            "ours": read_only("ours", uris["webdataset"], address),
            "ray": read_only("ray", uris["webdataset"], address),
        }
        broken = Path(uris["webdataset"]) / "00000.tar"
        broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
        readers["ours_truncated_shard"] = read_only("ours", uris["webdataset"], address)
        readers["ray_truncated_shard"] = read_only("ray", uris["webdataset"], address)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "arch": args.arch},
        "images": args.images,
        "per_shard": args.per_shard,
        "throughput": throughput,
        "planning": planning,
        "readers_no_model": readers,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("| format | best s | images/s | vs files |\n|---|---|---|---|")
    for fmt, row in throughput.items():
        print(f"| {fmt} | {row['best_s']} | {row['images_per_s']} | {row['vs_files']} |")
    print("\n| plan | units | seconds | driver Python peak | driver RSS growth |\n|---|---|---|---|---|")
    for name, row in planning.items():
        print(f"| {name} | {row['units']} | {row['seconds']:.2f} | {row['python_peak_bytes'] / 2**20:.1f} MiB "
              f"| {row['rss_growth_bytes'] / 2**20:.1f} MiB |")  # fmt: skip
    print("\nreaders (no model):", json.dumps(readers))


if __name__ == "__main__":
    main()
