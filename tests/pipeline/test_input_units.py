"""The input formats' parts without Ray: the tar reader against Python's `tarfile`, hostile and broken tars,
brace expansion against the `braceexpand` package, globs, and the request's format options."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import tarfile

import fsspec
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from braceexpand import braceexpand
from pydantic import ValidationError

from pipeline import Source
from pipeline.inputs.patterns import FilePattern, _glob_regex, expand_braces
from pipeline.inputs.tables import _footer_error
from pipeline.inputs.tarstream import MAX_META_BYTES, TarDamaged, TarTruncated, members
from pipeline.output import ERROR_CLASS_TRANSIENT, error_class

ALL = lambda name, size: True  # noqa: E731  (read every member's bytes)


def tar_bytes(entries: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


ENTRIES = [
    ("a.jpg", b"\xff\xd8" + bytes(range(256)) * 3),
    ("a.json", b'{"url": "x"}'),
    ("deep/" + "d" * 120 + "/b.png", b"png" * 1000),  # over 100 bytes: pax or GNU long name, or ustar prefix
    ("ünïcode/c.jpg", b"jpeg"),
    ("empty.txt", b""),
]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_members_match_what_tarfile_wrote_and_reads(fmt):
    entries = ENTRIES if fmt != tarfile.USTAR_FORMAT else [e for e in ENTRIES if not e[0].startswith("ü")]
    data = tar_bytes(entries, fmt)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # the reference reader
        expected = [(m.name, m.offset, tar.extractfile(m).read()) for m in tar.getmembers()]
    got = [(m.name, m.offset, m.data) for m in members(io.BytesIO(data), ALL)]
    assert got == expected
    assert [name for name, _ in entries] == [name for name, _, _ in got]


def test_only_wanted_members_are_read_and_gzip_shards_read_the_same():
    data = tar_bytes(ENTRIES)
    wanted = [m for m in members(io.BytesIO(data), lambda name, size: name.endswith(".json"))]
    assert [m.data for m in wanted if m.data is not None] == [b'{"url": "x"}']
    assert [m.size for m in wanted] == [len(d) for _, d in ENTRIES]
    compressed = gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(data)))
    assert [m.data for m in members(compressed, ALL)] == [d for _, d in ENTRIES]


def test_a_truncated_tar_yields_the_whole_members_before_the_cut_then_says_where():
    data = tar_bytes(ENTRIES)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        infos = tar.getmembers()
    for cut in range(100, len(data) - 1024, 397):
        got, problem = [], None
        try:
            got.extend(members(io.BytesIO(data[:cut]), ALL))
        except TarTruncated as exc:
            problem = exc
        whole = [i.name for i in infos if i.offset_data + i.size <= cut]
        assert [m.name for m in got] == whole[: len(got)] and len(whole) - len(got) <= 1, cut
        if problem is None:  # cut in the end-of-archive blocks: every entry is whole
            assert len(got) == len(infos) and infos[-1].offset_data + infos[-1].size <= cut
        elif problem.offset != cut:  # cut inside an entry: reading stopped at its first header
            assert problem.offset == infos[len(got)].offset < cut
        else:  # cut in the padding after a whole entry
            assert got[-1].offset + 512 + got[-1].size <= cut


def test_damaged_headers_and_oversized_metadata_stop_the_shard():
    data = bytearray(tar_bytes(ENTRIES))
    first_size = -(-len(ENTRIES[0][1]) // 512) * 512
    second = 512 + first_size
    damaged = bytes(data[:second]) + b"garbage!" * 64 + bytes(data[second + 512 :])
    with pytest.raises(TarDamaged) as caught:
        list(members(io.BytesIO(damaged), ALL))
    assert caught.value.offset == second

    # A pax header that claims 10 GiB: refused from its header, nothing of it read into memory.
    info = tarfile.TarInfo("x")
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    header[124:136] = b"%011o\0" % (10 << 30)
    header[156:157] = b"x"
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    with pytest.raises(TarDamaged, match=str(MAX_META_BYTES)):
        list(members(io.BytesIO(bytes(header) + bytes(4096)), ALL))


def test_links_devices_and_directories_are_named_for_what_they_are():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, kind in (("dir", tarfile.DIRTYPE), ("s.jpg", tarfile.SYMTYPE), ("h.jpg", tarfile.LNKTYPE),
                           ("c.jpg", tarfile.CHRTYPE), ("f.jpg", tarfile.FIFOTYPE)):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            tar.addfile(info)
        tar.addfile(tarfile.TarInfo("after.jpg"), io.BytesIO(b""))
    kinds = [(m.name, m.kind) for m in members(io.BytesIO(buffer.getvalue()), ALL)]
    assert kinds == [
        ("dir/", "directory"),  # as stored: tarfile adds the slash
        ("s.jpg", "symbolic link"),
        ("h.jpg", "hard link"),
        ("c.jpg", "character device"),
        ("f.jpg", "FIFO"),
        ("after.jpg", "file"),
    ]


@pytest.mark.parametrize(
    "pattern",
    ["s/{00000..00012}.tar", "{a,b}/{0..3}-{x,y}.tar", "{9..11}.tar", "{10..08}.tar", "plain.tar", "{007..010}.tgz"],
)
def test_brace_expansion_agrees_with_braceexpand(pattern):
    assert list(expand_braces(pattern)) == list(braceexpand(pattern))


def test_globs_stay_in_a_folder_unless_double_starred():
    assert FilePattern.parse("s3://b/x/train-*.tar") == FilePattern("s3://b/x", "train-*.tar")
    assert FilePattern.parse("/data/shards/{000..009}.tar") == FilePattern("/data/shards", "{000..009}.tar")
    assert FilePattern.parse("s3://b/shards") == FilePattern("s3://b/shards", "")
    star = _glob_regex("train-*.tar")
    assert star.match("train-01.tar") and not star.match("sub/train-01.tar") and not star.match("train-01.tar.gz")
    deep = _glob_regex("**/*.tar")
    assert deep.match("a.tar") and deep.match("x/y/a.tar") and not deep.match("x/a.tgz")
    assert _glob_regex("s[0-9]?.tar").match("s1a.tar") and not _glob_regex("s[!0-9].tar").match("s1.tar")


def test_format_options_are_checked_where_they_are_given():
    assert Source(uri="s3://b/s", format="webdataset").extensions == ["jpg", "jpeg", "png", "webp"]
    assert Source(uri="/d").extensions[:2] == ["jpg", "jpeg"] and Source(uri="/d").format == "files"
    with pytest.raises(ValidationError, match="loose files have no fields"):
        Source(uri="/d", fields={"caption": "txt"})
    with pytest.raises(ValidationError, match="already a column of the output"):
        Source(uri="/d", format="parquet", fields={"status": "s"})
    with pytest.raises(ValidationError, match="not a column name"):
        Source(uri="/d", format="parquet", fields={"bad name": "s"})
    with pytest.raises(ValidationError, match="image_column is for parquet"):
        Source(uri="/d", format="list", image_column="img")
    with pytest.raises(ValidationError, match="format"):
        Source(uri="/d", format="zip")


def test_a_rows_uri_leads_back_to_its_image_in_a_shard_or_a_table(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import read_source
    from pipeline.storage import Location

    where = Location.parse(str(tmp_path))
    (tmp_path / "a#b.jpg").write_bytes(b"loose")
    (tmp_path / "s.tar").write_bytes(tar_bytes([("k.json", b"{}"), ("dir/k #1.jpg", b"member"), ("z.jpg", b"z")]))
    table = pa.table({"id": ["r0", "r1", "r2"], "image": [{"bytes": b"r%d" % i, "path": None} for i in range(3)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)
    assert read_source(where.uri_of(f"{tmp_path}/a#b.jpg")) == b"loose"  # a quoted "#" is part of the name
    assert read_source(where.uri_of(f"{tmp_path}/s.tar") + "#dir/k%20%231.jpg") == b"member"
    assert read_source(where.uri_of(f"{tmp_path}/t.parquet") + "#row=2") == b"r2"
    with pytest.raises(LookupError, match="no member"):
        read_source(where.uri_of(f"{tmp_path}/s.tar") + "#nope.jpg")
    with pytest.raises(LookupError, match="has 3 rows"):
        read_source(where.uri_of(f"{tmp_path}/t.parquet") + "#row=3")


def test_progress_of_shard_inputs_counts_shards_until_the_images_are_known():
    import io as text_io

    from jobs.cli.progress import ProgressDisplay, figures
    from pipeline import Progress

    reading = Progress(done=30, ok=29, error=1, total=None, skipped=5, elapsed_s=60.0, units_done=3,
                       units_total=12, unit_name="shards")  # fmt: skip
    assert figures(reading) == "30 images (29 ok, 1 error, 5 already done), 3/12 shards read 0.50 images/s, ETA 3m00s"
    assert reading.share == 0.25 and not reading.finished
    files = Progress(done=5, ok=5, error=0, total=10, skipped=0, elapsed_s=10.0)
    assert figures(files) == "5/10 images (5 ok, 0 error) 0.50 images/s, ETA 10s" and files.share == 0.5
    stream = text_io.StringIO()
    ProgressDisplay(stream, line_every_s=0)(reading)
    assert stream.getvalue() == f"progress: {figures(reading)}\n"


def test_a_repeated_key_gets_an_id_no_real_key_can_have(tmp_path):
    """`a` seen again after `b` gets `<shard>/a.<offset>`; a real key spelled like the old form (`a#<offset>`)
    or anything else keeps its own id: every row's id is distinct."""
    from pipeline.inputs.samples import KnownIds, SampleBatcher
    from pipeline.inputs.shards import ShardReading, shard_rows
    from pipeline.storage import Location

    def add(tar: tarfile.TarFile, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"\xff\xd8\xff\xe0"))

    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        add(tar, "a.jpg")
        add(tar, "b.jpg")
        add(tar, "a.jpg")
    with tarfile.open(tmp_path / "s.tar") as tar:
        offset = [m.offset for m in tar.getmembers()][2]
    with tarfile.open(tmp_path / "s.tar", "a") as tar:
        add(tar, f"a#{offset}.jpg")  # what a repeated `a` was called before
    reading = ShardReading(Location.parse(str(tmp_path)), ("jpg",))
    rows = [r for block in shard_rows(reading, str(tmp_path / "s.tar"), "s.tar", SampleBatcher((), KnownIds()))
            for r in block.to_pylist()]  # fmt: skip
    ids = [r["image_id"] for r in rows]
    assert ids == ["s.tar/a", "s.tar/b", f"s.tar/a.{offset}", f"s.tar/a#{offset}"]
    assert rows[2]["error"].startswith("duplicate: ")


@pytest.mark.parametrize("name", ["image", "data", "mask", "confidence"])
def test_fields_may_not_take_the_names_the_stages_use(name):
    """They validated and then broke every run; now they are refused where they are given."""
    with pytest.raises(ValidationError, match="a column the pipeline uses while labelling"):
        Source(uri="/d", format="parquet", fields={name: "caption"})


@pytest.mark.parametrize("content", [b"", bytes(1024), bytes(512) + b"junk" * 200])
def test_a_shard_without_samples_gets_one_error_row(tmp_path, content):
    """A 0-byte tar and a tar that starts with the end-of-archive blocks gave no row at all."""
    from pipeline.inputs.samples import KnownIds, SampleBatcher
    from pipeline.inputs.shards import ShardReading, shard_rows
    from pipeline.storage import Location

    (tmp_path / "e.tar").write_bytes(content)
    reading = ShardReading(Location.parse(str(tmp_path)), ("jpg",))
    blocks = shard_rows(reading, str(tmp_path / "e.tar"), "e.tar", SampleBatcher((), KnownIds()))
    rows = [r for block in blocks for r in block.to_pylist()]
    assert [(r["image_id"], r["error"].split(":")[0]) for r in rows] == [("e.tar", "no image")]


def _sparse_file(path, regions: int) -> None:
    """A file of `regions` short data runs between 64 KiB holes (more than the 4 an old-GNU header maps)."""
    with open(path, "wb") as handle:
        for index in range(regions):
            handle.seek(index * (64 << 10))
            handle.write(b"data%03d" % index * 100)
        handle.truncate(regions * (64 << 10))


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar to write sparse entries")
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_a_sparse_member_is_named_and_the_members_after_it_are_read(tmp_path, fmt):
    (tmp_path / "a.jpg").write_bytes(b"first")
    _sparse_file(tmp_path / "b.jpg", regions=30)  # old GNU: extension blocks follow its header
    (tmp_path / "c.jpg").write_bytes(b"after")
    shard = tmp_path / "s.tar"
    subprocess.run(
        ["tar", "--sparse", f"--format={fmt}", "-cf", str(shard), "-C", str(tmp_path), "a.jpg", "b.jpg", "c.jpg"],
        check=True,
    )
    with tarfile.open(shard) as tar:  # the reference reader agrees the entry is sparse
        assert tar.getmember("b.jpg").issparse()
    got = [(m.name, m.kind, m.data) for m in members(io.BytesIO(shard.read_bytes()), ALL)]
    assert got == [("a.jpg", "file", b"first"), ("b.jpg", "sparse file", None), ("c.jpg", "file", b"after")]


class _Forbidding(pafs.FSSpecHandler):
    """A store that lists a file but refuses to open it, as S3 does for a key without read permission."""

    def open_input_file(self, path):
        raise PermissionError(13, "Access Denied", path)

    open_input_stream = open_input_file


def test_a_parquet_file_that_cannot_be_opened_at_planning_is_transient_and_garbage_is_permanent(tmp_path):
    forbidden = pafs.PyFileSystem(_Forbidding(fsspec.filesystem("memory")))
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"not parquet at all")
    local = pafs.LocalFileSystem()
    for fs, path, expected in ((forbidden, "b/t.parquet", ERROR_CLASS_TRANSIENT), (local, str(garbage), "permanent")):
        try:
            pq.read_metadata(path, filesystem=fs)
        except Exception as exc:
            reason = _footer_error(fs, path, exc)
        assert error_class(reason) == expected, reason
