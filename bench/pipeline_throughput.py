"""End-to-end images/s of `pipeline.label` vs `SFPSegmenter.segment` in one process, and the driver's memory.

For each architecture (random weights) the same generated corpus of JPEGs
(500 x 375 by default) is labelled twice, each in a fresh process:
  bare      load the model, then decode (Pillow, EXIF) + `segment` in batches, one process;
  pipeline  `label()` into a local folder (listing, decode/resize tasks, one actor,
            PNG encoding, Parquet), Ray already started (cluster start-up is not counted).
Both end-to-end times include loading the model once; with --repeats the
two sides alternate and each side's best run counts (the machine may be
shared). The driver's peak RSS
during `label()` is sampled for a corpus and one 10x larger (cheap settings,
since only the driver's memory is measured there).

  .venv/bin/python bench/pipeline_throughput.py                        # tiny ViT 500, ViT-B-16 60, memory 500/5000
  .venv/bin/python bench/pipeline_throughput.py --archs SFP-Tiny-16 --images 200 --memory-sizes

Writes bench/results/pipeline_throughput.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "pipeline_throughput.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CLASSES = [["background", "sky", "wall"], ["cat"], ["dog"], ["person"], ["car"]]
MEMORY_CONFIG = {"short_side": 64, "slide_crop": 0}  # one small window per image: the model is not under test


def make_corpus(directory: Path, count: int, size: tuple[int, int] = (500, 375)) -> Path:
    """`count` JPEGs of `size` (W, H): smooth gradients, blobs and noise, so they compress like photos."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    width, height = size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    existing = len(list(directory.glob("*.jpg")))
    for index in range(existing, count):
        base = rng.uniform(0, 255, 3) * (xx[..., None] / width) + rng.uniform(0, 255, 3) * (yy[..., None] / height)
        cy, cx, radius = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(20, 120)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2)[..., None] * rng.uniform(-120, 120, 3)
        pixels = np.clip(base / 2 + blob + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(directory / f"img_{index:06d}.jpg", quality=90)
    return directory


def _rss(pid: str = "self") -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _processes() -> dict[str, tuple[bytes, float]]:
    """Every process on the machine: pid -> (command line, CPU seconds used so far, user + system)."""
    found = {}
    for pid in (name for name in os.listdir("/proc") if name.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline, open(f"/proc/{pid}/stat") as stat:
                command, fields = cmdline.read(), stat.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        found[pid] = (command, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


def _actor_rss(processes: dict[str, tuple[bytes, float]]) -> int:
    """Resident memory of the SFP actor processes (Ray titles them `ray::...SFPPredictor...`), summed."""
    total = 0
    for pid, (command, _) in processes.items():
        if b"SFPPredictor" in command:
            with contextlib.suppress(OSError):  # the process ended meanwhile
                total += _rss(pid)
    return total


def _group(command: bytes) -> str:
    """Which part of the run a process is (Ray titles its workers `ray::<task or actor>`)."""
    if command.startswith(b"ray::MapWorker") and b"SFPPredictor" in command:
        return "SFP actor"
    if command.startswith(b"ray::") and b"MapBatches" in command:
        return "read / decode / encode tasks"
    if command.startswith(b"ray::IDLE"):
        return "idle Ray workers"
    if command.startswith(b"ray::") or b"/ray/" in command:
        return "Ray's own processes (raylet, GCS, agents, Ray Data's actors)"
    return "rest of the machine"


class CpuAccount:
    """CPU seconds each part of the run used, from /proc samples: for every process, its last sample minus
    its first (a process that started during the run counts from 0), under the last task title it was seen
    with (Ray retitles a pooled worker for each task and back to IDLE after). The sampling itself is
    counted in the driver (a few tenths of a second per minute)."""

    def __init__(self) -> None:
        self.driver = os.getpid()
        self.first = {pid: cpu for pid, (_, cpu) in _processes().items()}
        self.last: dict[str, tuple[bytes, float]] = {}

    def sample(self, processes: dict[str, tuple[bytes, float]]) -> None:
        for pid, (command, cpu) in processes.items():
            self.first.setdefault(pid, 0.0)
            if command.startswith(b"ray::IDLE") and pid in self.last:  # back in the pool after a task
                command = self.last[pid][0]
            self.last[pid] = (command, cpu)

    def by_part(self) -> dict[str, float]:
        parts: dict[str, float] = {}
        for pid, (command, cpu) in self.last.items():
            part = "driver (label(), the writer)" if int(pid) == self.driver else _group(command)
            parts[part] = round(parts.get(part, 0.0) + cpu - self.first[pid], 1)
        return dict(sorted(parts.items(), key=lambda item: -item[1]))


class PeakRSS:
    """Samples the driver's resident memory (Linux /proc) every 20 ms, and every 0.5 s the SFP actors'
    memory and every process's CPU time; `peak` and `actor_peak` are the highest seen, `cpu` the account."""

    def __init__(self) -> None:
        self.peak = self.current()
        self.actor_peak = 0
        self.cpu = CpuAccount()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current() -> int:
        return _rss()

    def _run(self) -> None:
        ticks = 0
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.current())
            ticks += 1
            if ticks % 25 == 0:  # one scan of /proc serves both
                processes = _processes()
                self.actor_peak = max(self.actor_peak, _actor_rss(processes))
                self.cpu.sample(processes)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())
        self.cpu.sample(_processes())


def child_bare(spec: dict) -> dict:
    """Decode + `segment` in one process. The clock starts before torch is imported, as the pipeline's
    does before its actor process imports it (the pipeline's driver never imports torch)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    import torch
    from PIL import Image, ImageOps

    from sfp_core import SFPConfig, SFPSegmenter, Vocabulary

    paths = sorted(Path(spec["corpus"]).glob("*.jpg"))[: spec["images"]]
    segmenter = SFPSegmenter.from_pretrained(spec["arch"], "random", Vocabulary(CLASSES), SFPConfig(**spec["config"]))
    loaded = time.perf_counter()
    for first in range(0, len(paths), spec["batch_size"]):
        images = [
            np.array(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
            for p in paths[first : first + spec["batch_size"]]
        ]
        segmenter.segment(images)
    done = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "images": len(paths),
        "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
        "load_s": loaded - start,
        "run_s": done - loaded,
        "e2e_s": done - start,
        "torch_threads": torch.get_num_threads(),
    }


def child_pipeline(spec: dict) -> dict:
    import ray

    from pipeline import Destination, LabelRequest, ModelChoice, Resources, Source, label
    from sfp_core import SFPConfig, Vocabulary

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    output = Path(spec["output"])
    shutil.rmtree(output, ignore_errors=True)
    corpus = Path(spec["corpus"])
    before = PeakRSS.current()
    start = time.perf_counter()
    with PeakRSS() as rss:
        request = LabelRequest(
            input=Source(uri=str(corpus)),
            output=Destination(uri=str(output), mode="overwrite"),
            vocabulary=Vocabulary(CLASSES),
            model=ModelChoice(arch=spec["arch"], weights="random"),
            config=SFPConfig(**spec["config"]),
            resources=Resources(actors=(1, 1), batch_size=spec["batch_size"]),
        )
        summary = label(request)
    done = time.perf_counter()
    assert summary.ok == summary.total == spec["images"], summary
    return {
        "stages": stage_times(ray.timeline(), done - start),
        "images": summary.ok,
        "e2e_s": done - start,
        "driver_rss_before_mb": before / 2**20,
        "driver_peak_rss_mb": rss.peak / 2**20,
        "driver_growth_mb": (rss.peak - before) / 2**20,
        "driver_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "actor_peak_rss_mb": rss.actor_peak / 2**20,
        "cpu_s": rss.cpu.by_part(),
        "cpu_capacity_s": (os.cpu_count() or 1) * (done - start),
    }


def stage_times(events: list[dict], wall_s: float) -> list[dict]:
    """Where the run's time went, from Ray's task timeline: per task (Ray Data names its tasks after their
    operators, e.g. `MapBatches(decode_batch)`; actor calls are `<class>.<method>`), the seconds spent in
    it summed over its runs, how many ran, and that sum as a share of the run's wall time."""
    totals: dict[str, list[float]] = {}
    for event in events:
        kind = str(event.get("cat", ""))
        if event.get("ph") != "X" or not event.get("dur") or not kind.startswith("task::"):
            continue  # the phases inside a task (deserialise, execute, store) are counted in it
        name = kind.removeprefix("task::")
        seconds, count = totals.get(name, [0.0, 0])
        totals[name] = [seconds + event["dur"] / 1e6, count + 1]
    ranked = sorted(totals.items(), key=lambda item: -item[1][0])[:12]
    return [
        {"name": name, "seconds": round(seconds, 2), "tasks": int(count), "share_of_wall": round(seconds / wall_s, 3)}
        for name, (seconds, count) in ranked
    ]


def wait_for_quiet(max_load: float | None, patience: float = 600) -> None:
    """On a shared machine, start a measurement only once the 1-minute load average is below `max_load`."""
    deadline = time.monotonic() + patience
    while max_load is not None and os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(5)


def run_child(kind: str, spec: dict, timeout: float, max_load: float | None = None) -> dict:
    """One measurement in a fresh interpreter, so neither side inherits the other's threads, caches or memory."""
    wait_for_quiet(max_load)
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{kind} child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result["ips"] = result["images"] / result["e2e_s"]
    result["loadavg_before"] = load
    result["loadavg_after"] = os.getloadavg()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="*", default=["SFP-Tiny-16", "ViT-B-16"])
    parser.add_argument("--images", type=int, default=500, help="corpus size for the tiny ViT")
    parser.add_argument("--vitb-images", type=int, default=60, help="corpus size for ViT-B-16 (slow on CPU)")
    parser.add_argument("--memory-sizes", nargs="*", type=int, default=[500, 5000])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per side; the best of each counts")
    parser.add_argument("--max-load", type=float, default=None, help="wait for the 1-min load average to drop below")
    parser.add_argument("--workdir", default=None, help="where corpora and outputs go (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, spec = args.child
        result = (child_bare if kind == "bare" else child_pipeline)(json.loads(spec))
        print("RESULT " + json.dumps(result), flush=True)
        return

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sfp-bench-"))
    corpus_size = max([args.images, *args.memory_sizes, args.vitb_images if "ViT-B-16" in args.archs else 0])
    t0 = time.perf_counter()
    make_corpus(workdir / "corpus", corpus_size)
    print(f"corpus of {corpus_size} JPEGs in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "image_size": [500, 375],
        "batch_size": args.batch_size,
        "throughput": [],
        "driver_memory": [],
    }
    for arch in args.archs:
        count = args.vitb_images if arch == "ViT-B-16" else args.images
        subset = workdir / f"corpus-{count}"
        if not subset.exists():
            subset.mkdir()
            for path in sorted((workdir / "corpus").glob("*.jpg"))[:count]:
                os.symlink(path, subset / path.name)
        spec = {"arch": arch, "corpus": str(subset), "images": count, "batch_size": args.batch_size, "config": {}}
        samples: dict[str, list[dict]] = {"bare": [], "pipeline": []}
        for _ in range(args.repeats):  # alternating, so load from other processes hits both sides alike
            samples["bare"].append(run_child("bare", spec, args.timeout, args.max_load))
            out = {**spec, "output": str(workdir / "out")}
            samples["pipeline"].append(run_child("pipeline", out, args.timeout, args.max_load))
        bare = max(samples["bare"], key=lambda r: r["ips"])
        piped = max(samples["pipeline"], key=lambda r: r["ips"])
        row = {"arch": arch, "images": count, "bare": bare, "pipeline": piped, "samples": samples}
        row["ratio_e2e"] = piped["ips"] / bare["ips"]
        row["ratio_vs_bare_steady"] = piped["ips"] / (bare["images"] / bare["run_s"])
        results["throughput"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    for count in args.memory_sizes:
        subset = workdir / f"memory-{count}"
        if not subset.exists():
            subset.mkdir()
            for path in sorted((workdir / "corpus").glob("*.jpg"))[:count]:
                os.symlink(path, subset / path.name)
        spec = {
            "arch": "SFP-Tiny-16",
            "corpus": str(subset),
            "images": count,
            "batch_size": args.batch_size,
            "config": MEMORY_CONFIG,
            "output": str(workdir / f"out-memory-{count}"),
        }
        results["driver_memory"].append({"images": count, **run_child("pipeline", spec, args.timeout, args.max_load)})
        print(json.dumps(results["driver_memory"][-1]), file=sys.stderr, flush=True)

    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [
        "| model (random weights) | images | bare segmenter img/s (e2e / steady) | pipeline img/s (e2e) | ratio e2e "
        "| actor peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["throughput"]:
        bare, piped = row["bare"], row["pipeline"]
        lines.append(
            f"| {row['arch']} | {row['images']} | {bare['ips']:.2f} / {bare['images'] / bare['run_s']:.2f} "
            f"| {piped['ips']:.2f} | {row['ratio_e2e']:.2f}x | {piped.get('actor_peak_rss_mb', 0):.0f} MiB |"
        )
    for row in results["throughput"]:
        wall = row["pipeline"]["e2e_s"]
        lines += [
            "",
            f"Where {row['arch']}'s pipeline time went (Ray timeline; shares of {wall:.1f} s):",
            "",
            "| stage (task or actor method) | tasks | seconds | share of wall |",
            "|---|---|---|---|",
        ]
        for stage in row["pipeline"].get("stages", []):
            lines.append(
                f"| {stage['name']} | {stage['tasks']} | {stage['seconds']:.1f} | {stage['share_of_wall']:.0%} |"
            )
        lines += cpu_table(row)
    if results["driver_memory"]:
        lines += [
            "",
            "| corpus | driver RSS before label() | driver peak during label() | growth |",
            "|---|---|---|---|",
        ]
        for row in results["driver_memory"]:
            lines.append(
                f"| {row['images']} images | {row['driver_rss_before_mb']:.0f} MiB "
                f"| {row['driver_peak_rss_mb']:.0f} MiB | {row['driver_growth_mb']:+.0f} MiB |"
            )
    return "\n".join(lines)


def cpu_table(row: dict) -> list[str]:
    """Who used the cores: the pipeline's CPU seconds by part beside the bare run's."""
    piped, bare = row["pipeline"], row["bare"]
    if "cpu_s" not in piped or "cpu_s" not in bare:
        return []
    capacity = piped["cpu_capacity_s"]
    lines = [
        "",
        f"CPU seconds of the pipeline run ({capacity:.0f} core-seconds available: {os.cpu_count()} cores x "
        f"{piped['e2e_s']:.1f} s) and of the bare run ({bare['e2e_s']:.1f} s):",
        "",
        "| part | CPU s | cores busy on average |",
        "|---|---|---|",
    ]
    for part, seconds in piped["cpu_s"].items():
        lines.append(f"| {part} | {seconds:.1f} | {seconds / piped['e2e_s']:.2f} |")
    lines.append(f"| bare run, whole process | {bare['cpu_s']:.1f} | {bare['cpu_s'] / bare['e2e_s']:.2f} |")
    return lines


if __name__ == "__main__":
    main()
