"""Decompression bombs in the inputs: a few KiB of Parquet or gzip that expand to GiBs. Memory is bounded by
bytes, not rows: each image over `input.max_image_bytes` is one `too large` error row, never an allocation,
and the process reading a bomb stays under 1 GiB. Measured in a process of its own (its peak resident size,
reset once the imports are done), as a read task would run."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import run_label
from PIL import Image

from pipeline import DEFAULT_MAX_IMAGE_BYTES
from sfp_core import Vocabulary

pytestmark = pytest.mark.timeout(300)

GIB = 1 << 30
CELL = 128 << 20  # each bomb's image: twice the default limit


class _Zeros(io.RawIOBase):
    """`size` zero bytes as a stream, so writing a bomb never holds it."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def write_tar_bomb(path: Path, members: int, size: int) -> None:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for k in range(members):
            info = tarfile.TarInfo(f"sample{k:03d}.jpg")
            info.size = size
            tar.addfile(info, io.BufferedReader(_Zeros(size)))


def write_parquet_bombs(folder: Path) -> None:
    """Eight 128 MiB cells in a few KiB: stored once in a dictionary page, and as one 1 GiB plain page."""
    zeros = pa.array([bytes(CELL)], pa.binary())
    dictionary = pa.DictionaryArray.from_arrays(pa.array([0] * 8, pa.int32()), zeros)
    ids = pa.array([f"d{k}" for k in range(8)])
    pq.write_table(pa.table({"id": ids, "image": dictionary}), folder / "dictionary.parquet", compression="zstd")
    del dictionary
    plain = pa.array([bytes(CELL)] * 8, pa.binary())
    ids = pa.array([f"p{k}" for k in range(8)])
    pq.write_table(
        pa.table({"id": ids, "image": plain}), folder / "plain.parquet", compression="zstd", use_dictionary=False
    )


READER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import pyarrow.parquet as pq
    from pipeline.inputs.samples import KnownIds, SampleBatcher
    from pipeline.inputs.shards import ShardReading, shard_rows
    from pipeline.inputs.tables import TableReading, group_rows
    from pipeline.storage import Location

    def status(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    path = Path(sys.argv[1])
    location = Location.parse(str(path.parent))
    if path.suffix == ".parquet":
        meta = pq.read_metadata(path)
        units = [{"unit": g, "path": str(path), "name": path.name, "row_group": g, "first_row": 0, "error": None}
                 for g in range(meta.num_row_groups)]
        reading = TableReading(location, "image")
        read = lambda batcher: (t for u in units for t in group_rows(reading, u, batcher))
    else:
        reading = ShardReading(location, ("jpg",))
        read = lambda batcher: shard_rows(reading, str(path), path.name, batcher)
    Path("/proc/self/clear_refs").write_text("5")  # the peak resident size restarts from here
    before = status("VmRSS")
    rows = []
    for block in read(SampleBatcher((), KnownIds())):
        rows += [(r["image_id"], r["error"], len(r["data"] or b"")) for r in block.to_pylist()]
    print(json.dumps({"peak": status("VmHWM") - before, "rows": rows}))
""")


def read_in_own_process(path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_parquet_bombs_give_one_error_row_per_image_in_bounded_memory(tmp_path):
    write_parquet_bombs(tmp_path)
    assert all(p.stat().st_size < 8 << 20 for p in tmp_path.glob("*.parquet"))
    for name in ("dictionary.parquet", "plain.parquet"):
        read = read_in_own_process(tmp_path / name)
        assert read["peak"] < GIB, (name, read["peak"])
        rows = read["rows"]
        assert len(rows) == 8 and len({image_id for image_id, _, _ in rows}) == 8
        assert all(error.startswith("too large: ") and size == 0 for _, error, size in rows), rows


def test_a_gzip_shard_bomb_gives_one_error_row_per_member_in_bounded_memory(tmp_path):
    shard = tmp_path / "bomb.tar.gz"
    write_tar_bomb(shard, members=16, size=96 << 20)  # 1.5 GiB of members in a few MiB
    assert shard.stat().st_size < 16 << 20
    read = read_in_own_process(shard)
    assert read["peak"] < GIB, read["peak"]
    rows = read["rows"]
    assert [image_id for image_id, _, _ in rows] == [f"bomb.tar.gz/sample{k:03d}" for k in range(16)]
    assert all(error.startswith("too large: ") and "limit" in error for _, error, _ in rows), rows


def test_members_at_the_limit_are_read_and_blocks_are_cut_by_bytes(tmp_path):
    """16 members of 60 MiB (under the 64 MiB default) are all read, yet no block holds more than two of them."""
    shard = tmp_path / "big.tar.gz"
    write_tar_bomb(shard, members=16, size=60 << 20)
    read = read_in_own_process(shard)
    assert all(error is None and size == 60 << 20 for _, error, size in read["rows"])
    assert len(read["rows"]) == 16
    assert read["peak"] < GIB, read["peak"]


def test_the_byte_limit_is_a_job_key_applied_to_every_format(ray_local, tmp_path):
    """`input.max_image_bytes` turns a larger file, shard member or table cell into a `too large` row; the
    images under it are labelled."""
    small = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 10)).save(small, format="PNG")
    large = io.BytesIO()
    Image.effect_noise((400, 300), 80).convert("RGB").save(large, format="PNG")
    limit = len(large.getvalue()) - 1
    assert len(small.getvalue()) < limit
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "small.png").write_bytes(small.getvalue())
    (tmp_path / "files" / "large.png").write_bytes(large.getvalue())
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "s.tar", "w") as tar:
        for key, data in (("small", small.getvalue()), ("large", large.getvalue())):
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "tables").mkdir()
    cells = {"id": ["small", "large"], "image": [small.getvalue(), large.getvalue()]}
    pq.write_table(pa.table(cells), tmp_path / "tables" / "t.parquet")
    (tmp_path / "list.txt").write_text("files/small.png\nfiles/large.png\n")
    inputs = {
        "files": str(tmp_path / "files"),
        "webdataset": str(tmp_path / "shards"),
        "parquet": str(tmp_path / "tables"),
        "list": str(tmp_path / "list.txt"),
    }
    run = {"vocabulary": Vocabulary([["background"], ["green"]]), "arch": "SFP-Tiny-16", "weights": "random"}
    for kind, uri in inputs.items():
        output = tmp_path / f"out-{kind}"
        extra = {"extensions": ["png"]} if kind == "webdataset" else {}
        run_label(uri, str(output), format=kind, max_image_bytes=limit, **extra, **run)
        rows = pq.read_table(next(output.glob("data-*"))).to_pylist()
        outcome = {r["image_id"].rsplit("/", 1)[-1].removesuffix(".png"): r["error"] for r in rows}
        assert outcome["small"] is None, (kind, outcome)
        assert outcome["large"].startswith("too large: ") and str(limit) in outcome["large"], (kind, outcome)
    assert DEFAULT_MAX_IMAGE_BYTES == 64 << 20
