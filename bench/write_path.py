"""The write path on a real S3 server (SeaweedFS on 127.0.0.1): rows/s and what the driver does per 1,000 rows.

Two ways to turn labelled rows into committed data files, on the same generated rows:
- driver: the writer of sfp-label <= 0.2.0, in one process: every row through the driver, a Parquet file
  written to `_sfp/staging/` every `rows_per_file` rows, then moved onto its data-file name (a server-side
  COPY + DELETE on S3);
- workers: today's path: Ray tasks stage each block as a part (`output.stage_parts`), the driver receives a
  record per part and has Ray tasks merge groups into data files (`sink.PartCommitter`), with 1, 2 and 4
  staging tasks at a time.

Rows: 8 KB (a mask PNG's worth) and ~120 KB (with a confidence map), random bytes so compression cannot
shrink them, reaching the write path as blocks of 8 rows made by a Ray task each (as encoding makes them).
Per configuration: rows/s, the driver's CPU seconds and the bytes it sent the store, per 1,000 rows, and
as a share of the data bytes. One run, the configurations interleaved twice, best of two. The driver
reaches the store through a counting TCP relay, the workers directly: "driver bytes" is what the driver sent
the store.

  .venv/bin/python bench/write_path.py                       # 4000 rows of 8 KB, 800 of 120 KB
  .venv/bin/python bench/write_path.py --small-rows 8000 --large-rows 1600
  .venv/bin/python bench/write_path.py --stage-rows 64 --results bench/results/write_path_stage64.json

Writes bench/results/write_path.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import resource
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipeline import SCHEMA
from pipeline.lease import OutputLease
from pipeline.output import PartWriting, stage_parts
from pipeline.retry import Retry
from pipeline.sink import PartCommitter, WriterSettings, WrittenFile
from pipeline.storage import Location

ROOT = Path(__file__).resolve().parent.parent


def _s3server_module():
    """The tests' SeaweedFS helper, loaded from its file (tests/ holds folders named like the packages)."""
    spec = importlib.util.spec_from_file_location("s3server", ROOT / "tests" / "s3server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RESULTS = Path(__file__).parent / "results" / "write_path.json"
ROWS_PER_FILE = 1000
BLOCK_ROWS = 8  # rows per block reaching the write stage: one actor batch


def make_rows(count: int, row_bytes: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    mask = row_bytes if row_bytes < 64_000 else 8_000
    confidence = row_bytes - mask if row_bytes >= 64_000 else None
    rows = []
    for i in range(count):
        row = dict.fromkeys(SCHEMA.names)
        row.update(image_id=f"img/{seed}/{i:07d}.jpg", uri=f"s3://in/{i}.jpg", status="ok", width=500, height=375)
        row.update(mask_png=rng.bytes(mask), confidence_png=rng.bytes(confidence) if confidence else None)
        row.update(class_ids=[0, 1], class_pixels=[1, 2], run_id="bench", model="m", config_hash="c")
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def driver_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def blocks_of(rows: pa.Table) -> ray.data.Dataset:
    """The rows as they leave the encode stage: blocks of one actor batch, made by a task per block."""
    blocks = ray.data.from_arrow([rows.slice(s, BLOCK_ROWS) for s in range(0, rows.num_rows, BLOCK_ROWS)])
    return blocks.map_batches(lambda block: block, batch_format="pyarrow", batch_size=None, num_cpus=0.5)


def write_in_driver(output: Location, rows: pa.Table) -> None:
    """The 0.2.0 writer's recipe: every row to the driver, each file staged, then moved onto its name."""
    fs = output.filesystem()
    buffer: list[pa.Table] = []
    held = number = 0
    for batch in blocks_of(rows).iter_batches(batch_size=None, batch_format="pyarrow"):
        buffer.append(batch)
        held += batch.num_rows
        if held >= ROWS_PER_FILE:
            _stage_and_move(fs, output, pa.concat_tables(buffer), number)
            buffer, held, number = [], 0, number + 1
    if buffer:
        _stage_and_move(fs, output, pa.concat_tables(buffer), number)


def _stage_and_move(fs, output: Location, table: pa.Table, number: int) -> None:
    staged = output.join("_sfp", "staging", "bench", f"part-{number:06d}.parquet")
    final = output.join("data-bench", f"part-{number:06d}.parquet")
    pq.write_table(table, staged, filesystem=fs, compression="zstd")
    fs.move(staged, final)


def write_by_workers(
    output: Location, direct: Location, rows: pa.Table, writers: int, stage_rows: int | None
) -> list[WrittenFile]:
    """Today's path: blocks staged by Ray tasks, groups merged by Ray tasks; the driver sees records and
    checks the lease (through `output`; the workers reach the store `direct`ly)."""
    writing = PartWriting(direct, secrets.token_hex(4), SCHEMA, Retry(), ROWS_PER_FILE)
    records = blocks_of(rows).map_batches(
        stage_parts, batch_format="pyarrow", batch_size=stage_rows, fn_kwargs={"writing": writing}, concurrency=writers,
        num_cpus=0.5,
    )  # fmt: skip
    settings = WriterSettings(ROWS_PER_FILE, 60.0, commit_each_file=True)
    with OutputLease(output, "bench") as lease:
        committer = PartCommitter(writing, f"data-{writing.run_id}", settings, claim=lease.claim, merge_cpus=0.5)
        for batch in records.iter_batches(batch_size=None, batch_format="pyarrow"):
            committer.add(batch)
        committer.flush()
    return committer.written


class CountingProxy:
    """A TCP relay on 127.0.0.1 to the S3 server that counts the bytes clients send through it: the driver
    talks to the store through it, the workers do not."""

    def __init__(self, port: int):
        self.target = port
        self.sent = 0
        self._lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if counted:
                    with self._lock:
                        self.sent += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


def write_with(
    mode: str, output: Location, direct: Location, rows: pa.Table, stage_rows: int | None
) -> Callable[[], object]:
    if mode == "driver":
        return lambda: write_in_driver(output, rows)
    return lambda: write_by_workers(output, direct, rows, int(mode.rsplit("x", 1)[1]), stage_rows)


def measure(name: str, fn: Callable[[], object], rows: pa.Table, proxy: CountingProxy) -> dict:
    cpu0, w0 = driver_cpu(), proxy.sent
    started = time.perf_counter()
    written = fn()
    seconds = time.perf_counter() - started
    cpu1, w1 = driver_cpu(), proxy.sent
    data = rows.nbytes
    per_k = 1000 / rows.num_rows
    files = {}
    if isinstance(written, list):  # the data files the workers' path committed: how many, how even
        sizes = sorted(f.rows for f in written)
        files = {"files": len(sizes), "file_rows_min": sizes[0], "file_rows_max": sizes[-1]}
    return {
        **files,
        "mode": name,
        "rows": rows.num_rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows.num_rows / seconds, 1),
        "driver_cpu_s_per_1000": round((cpu1 - cpu0) * per_k, 3),
        "driver_bytes_per_1000": int((w1 - w0) * per_k),
        "driver_bytes_share": round((w1 - w0) / data, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-rows", type=int, default=4000)
    parser.add_argument("--large-rows", type=int, default=800)
    parser.add_argument(
        "--stage-rows", type=int, metavar="N",
        help="stage N rows at a time (Ray Data bundles blocks first) instead of each block as the pipeline does",
    )  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    credentials = {
        "AWS_ACCESS_KEY_ID": "BENCH" + secrets.token_hex(6).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
    }
    os.environ.update(credentials, AWS_EC2_METADATA_DISABLED="true")
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        server = _s3server_module().SeaweedS3.started(Path(workdir), credentials)
        try:
            server.create_bucket("bench")
            proxy = CountingProxy(server.port)
            ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            for label, count, size in (("8 KB", args.small_rows, 8_000), ("120 KB", args.large_rows, 120_000)):
                rows = make_rows(count, size, seed=count)
                best: dict[str, dict] = {}
                for _ in range(2):
                    for mode in ("driver", "workers x1", "workers x2", "workers x4"):
                        prefix = f"s3://bench/{secrets.token_hex(4)}"
                        counted = {**server.storage_options, "endpoint_url": f"http://127.0.0.1:{proxy.port}"}
                        output, direct = Location.parse(prefix, counted), Location.parse(prefix, server.storage_options)
                        result = measure(mode, write_with(mode, output, direct, rows, args.stage_rows), rows, proxy)
                        if mode not in best or result["rows_per_s"] > best[mode]["rows_per_s"]:
                            best[mode] = result
                base = best["driver"]["rows_per_s"]
                for result in best.values():
                    results.append({"row_size": label, **result, "vs_driver": round(result["rows_per_s"] / base, 2)})
        finally:
            ray.shutdown()
            server.stop()
    args.results.parent.mkdir(exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__}
    run = {"stage_rows": args.stage_rows, "block_rows": BLOCK_ROWS, "rows_per_file": ROWS_PER_FILE}
    args.results.write_text(json.dumps({"machine": machine, "run": run, "results": results}, indent=2) + "\n")
    print("| rows | mode | rows/s | x driver | driver CPU s / 1000 rows | driver bytes / 1000 rows | share of data |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['row_size']} | {r['mode']} | {r['rows_per_s']} | {r['vs_driver']} | {r['driver_cpu_s_per_1000']} "
            f"| {r['driver_bytes_per_1000']:,} | {r['driver_bytes_share']:.2%} |"
        )
    for r in results:
        if "files" in r:
            spread = f"{r['file_rows_min']}-{r['file_rows_max']}"
            print(f"{r['row_size']} {r['mode']}: {r['files']} data files of {spread} rows")


if __name__ == "__main__":
    main()
