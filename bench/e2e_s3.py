"""End to end on S3, two code trees side by side: `sfp-label run` of the tiny model into SeaweedFS.

Each tree (a checkout of this project; `--before` names the older one, this checkout is the other) runs the
same job in a fresh process, the two interleaved `--rounds` times on the same server: a folder of generated
JPEGs, `SFP-Tiny-16` with random weights, `output.confidence: true`, an overwrite into its own prefix of
one bucket on SeaweedFS at 127.0.0.1 (credentials from the environment). The figure is the run's own
seconds as its summary line states them (request to commit, Ray's start included) and its images/s; the
best of the rounds counts for each tree (the machine may be shared).

  git clone -q . /tmp/before && git -C /tmp/before checkout -q 1a6d7d3   # the driver writer (0.2.0)
  .venv/bin/python bench/e2e_s3.py --before /tmp/before --images 400 --rounds 2

Writes bench/results/e2e_s3.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "e2e_s3.json"


def _module(name: str, path: Path):
    """A helper module loaded from its file (tests/ holds folders named like the packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def job_text(corpus: Path, output_uri: str, endpoint: str) -> str:
    return json.dumps(
        {
            "input": {"uri": str(corpus)},
            "output": {
                "uri": output_uri,
                "mode": "overwrite",
                "confidence": True,
                "storage_options": {"endpoint_url": endpoint},
            },
            "model": {"arch": "SFP-Tiny-16", "weights": "random"},
            "vocabulary": {"classes": [["background", "sky"], ["cat"], ["dog"], ["person"], ["car"]]},
            "sfp": {"short_side": 224},
            "resources": {"actors": 1, "gpus_per_actor": 0, "batch_size": 8},
        }
    )  # JSON is YAML


def run_once(tree: Path, job: Path, env: dict[str, str]) -> dict:
    """One `sfp-label run` with `tree`'s code; its summary line's images ok and seconds."""
    code = "import sys; from jobs.cli.main import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, "run", str(job), "--no-progress"],
        env={**env, "PYTHONPATH": str(tree)},
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: exit {done.returncode}\n{done.stderr[-3000:]}")
    said = re.search(r": (\d+) ok, .* in ([\d.]+)s \(", done.stdout + done.stderr)
    if said is None:
        raise RuntimeError(f"{tree}: no summary line in\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return {"ok": int(said.group(1)), "seconds": float(said.group(2))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the older checkout")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    s3server = _module("s3server", ROOT / "tests" / "s3server.py")
    corpus_of = _module("pipeline_throughput", ROOT / "bench" / "pipeline_throughput.py").make_corpus
    trees = {"before": args.before.resolve(), "after": ROOT}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        corpus = corpus_of(work / "corpus", args.images)
        (work / "s3").mkdir()
        server = s3server.SeaweedS3(work / "s3", "benchkey" + secrets.token_hex(4), secrets.token_hex(16))
        server.start()
        try:
            server.create_bucket("bench")
            env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
            env.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
            env.update(AWS_REGION=s3server.REGION)
            best: dict[str, dict] = {}
            for round_number in range(args.rounds):
                for name, tree in trees.items():
                    job = work / f"{name}-{round_number}.yaml"
                    job.write_text(job_text(corpus, f"s3://bench/{name}-{round_number}", server.endpoint_url))
                    summary = run_once(tree, job, env)
                    assert summary["ok"] == args.images, summary
                    if name not in best or summary["seconds"] < best[name]["seconds"]:
                        best[name] = summary
        finally:
            server.stop()
    rows = {
        name: {"seconds": s["seconds"], "images_per_second": args.images / s["seconds"]} for name, s in best.items()
    }
    result = {
        "images": args.images,
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "trees": {name: str(tree) for name, tree in trees.items()},
        "best": rows,
        "after_over_before": rows["after"]["images_per_second"] / rows["before"]["images_per_second"],
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print("| tree | seconds | images/s | x before |\n|---|---:|---:|---:|")
    for name, row in rows.items():
        ratio = row["images_per_second"] / rows["before"]["images_per_second"]
        print(f"| {name} | {row['seconds']:.1f} | {row['images_per_second']:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
