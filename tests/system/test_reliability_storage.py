"""Storage outages: the S3 server (SeaweedFS, stopped and restarted by its pid) goes away mid-run.

A short outage is ridden out (reads and writes retry with backoff) and the
run finishes with every image exactly once; an outage longer than the
run's patience fails the run with a message naming the URI, and the next
incremental run completes the output. Outages never become error rows.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from helpers import remote_output_table, run_label
from PIL import Image

from pipeline import StorageUnavailable
from pipeline.inputs.files import read_files
from pipeline.retry import Retry, is_transient
from pipeline.storage import Location, Redactor
from sfp_core import SFPConfig, Vocabulary

pytestmark = pytest.mark.timeout(180)

IMAGES = [f"photo_{i:02d}.jpg" for i in range(40)]
RUN = {
    "vocabulary": Vocabulary([["background", "sky"], ["cat"], ["dog"]]),
    "arch": "SFP-Tiny-16",
    "weights": "random",
    "config": SFPConfig(short_side=448),  # slow enough (~10 s on 2 cores) for an outage to land mid-run
    "batch_size": 2,
    "rows_per_file": 2,  # a commit every two images: the outage hits writes in flight
}
OUTAGE_S = 3.0


@pytest.fixture(scope="module")
def flaky_s3(tmp_path_factory, s3_credentials):
    """This module's own SeaweedFS, so stopping it never disturbs other tests' server."""
    from s3server import SeaweedS3

    server = SeaweedS3.started(tmp_path_factory.mktemp("flaky-seaweedfs"), s3_credentials)
    try:
        for bucket in ("sfp-in", "sfp-out"):
            server.create_bucket(bucket)
        fs = server.filesystem()
        gen = np.random.default_rng(3)
        for name in IMAGES:
            buffer = io.BytesIO()
            Image.fromarray(gen.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
            with fs.open_output_stream(f"sfp-in/corpus/{name}") as stream:
                stream.write(buffer.getvalue())
        yield server
    finally:  # stopped by its pid even when the setup above failed
        server.stop()


@pytest.fixture
def server(flaky_s3):
    """The module's server, running again after each test whatever the test did to it."""
    yield flaky_s3
    if flaky_s3.process is None or flaky_s3.process.poll() is not None:
        flaky_s3.start()


def options(server) -> dict:
    return {"input_storage_options": server.storage_options, "output_storage_options": server.storage_options}


def committed(server, prefix: str) -> list[str]:
    selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
    names = [info.path for info in server.filesystem().get_file_info(selector)]
    return [n for n in names if n.endswith(".parquet") and "/_" not in n]


def output_ids(server, prefix: str) -> list[str]:
    table = remote_output_table(server.filesystem(), prefix, columns=["image_id"])
    return table.column("image_id").to_pylist()


def in_background(fn: Callable[[], object]) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_first_commit(server, prefix: str, thread: threading.Thread, outcome: dict) -> None:
    deadline = time.monotonic() + 90
    while not committed(server, prefix):
        assert thread.is_alive(), outcome.get("error")
        assert time.monotonic() < deadline, "the run committed nothing in time"
        time.sleep(0.1)


def test_only_outages_are_retried_and_patience_is_bounded():
    """Which errors count as an outage, and how the backoff ends (no server needed)."""
    outage = OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 7, Could not connect")
    endpoint = type("EndpointConnectionError", (Exception,), {})("Could not connect to the endpoint URL")
    s3fs = OSError(5, "An error occurred (ServiceUnavailable) when calling the GetObject operation: Please retry")
    bare = OSError(5, "An error occurred (503) when calling the HeadObject operation: Service Unavailable")
    for transient in (outage, ConnectionResetError(), TimeoutError(), endpoint, OSError("HTTP status 503"), s3fs, bare):
        assert is_transient(transient), transient
    refused = OSError(5, "An error occurred (InvalidObjectState) when calling the GetObject operation: archived")
    loop = OSError(40, "Too many levels")
    for per_file in (FileNotFoundError("gone"), PermissionError("no"), loop, ValueError(), refused):
        assert not is_transient(per_file), per_file

    calls = []
    quick = Retry(patience_s=0.3, first_delay_s=0.01, max_delay_s=0.05)

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise outage
        return "bytes"

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("s3://b/k")

    def down() -> None:
        raise outage

    assert quick.call("reading s3://b/k", flaky) == "bytes" and len(calls) == 3
    with pytest.raises(FileNotFoundError):  # a file's own problem: raised at once, never retried
        quick.call("reading s3://b/k", missing)
    assert len(calls) == 4
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"^storage unavailable while reading s3://b/k: gave up after \d+"):
        quick.call("reading s3://b/k", down)
    assert time.monotonic() - started < 2


def test_s3fs_errors_of_a_busy_or_restarting_server_are_outages():
    """s3fs turns the S3 codes it knows into Python errors that carry only the server's message (InternalError:
    "We encountered an internal error. Please try again.", errno EREMOTEIO; SlowDown, ServiceUnavailable:
    EBUSY). A SeaweedFS restarting under load answered a staged part's GET with InternalError, and the merge
    failed the run instead of waiting; the code is read from the botocore error s3fs keeps as the cause."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    def s3fs_error(code: str, message: str, operation: str = "GetObject") -> BaseException:
        return translate_boto_error(ClientError({"Error": {"Code": code, "Message": message}}, operation))

    for code, message in [
        ("InternalError", "We encountered an internal error. Please try again."),
        ("SlowDown", "Please reduce your request rate."),
        ("ServiceUnavailable", "Please reduce your request rate."),
        ("OperationAborted", "A conflicting conditional operation is currently in progress."),
    ]:
        error = s3fs_error(code, message, "PutObject")
        assert type(error) is OSError and is_transient(error), (code, repr(error))
    for code, message in [
        ("NoSuchKey", "The specified key does not exist."),
        ("AccessDenied", "Access Denied"),
        ("InvalidRange", "The requested range is not satisfiable"),
        ("BadDigest", "The Content-MD5 you specified did not match what we received."),
    ]:
        assert not is_transient(s3fs_error(code, message)), code


def test_reads_ride_out_an_outage_and_say_where_when_it_lasts(server):
    """Per-file reads without Ray: through a 2 s outage the bytes arrive; past the patience, a clear error."""
    location = Location.parse("s3://sfp-in/corpus", server.storage_options)
    names = IMAGES[:3]
    listing = pa.table(
        {
            "image_id": names,
            "path": [f"sfp-in/corpus/{n}" for n in names],
            "error": pa.nulls(len(names), pa.string()),
        }
    )
    expected = [server.filesystem().open_input_stream(f"sfp-in/corpus/{n}").read() for n in names]

    server.stop()
    restart = threading.Timer(2.0, server.start)
    restart.start()
    started = time.monotonic()
    out = read_files(listing, location=location, redact=Redactor(), retry=Retry(patience_s=60))
    restart.join()
    assert time.monotonic() - started >= 1.5  # it did wait for the server
    assert out.column("data").to_pylist() == expected and out.column("error").null_count == len(names)

    server.stop()
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        read_files(listing, location=location, redact=Redactor(), retry=Retry(patience_s=2))
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert "while reading s3://sfp-in/corpus/photo_0" in message and "gave up after" in message
    assert server.secret_key not in message and server.access_key not in message


def test_a_short_outage_mid_run_is_ridden_out_and_every_image_lands_once(ray_local, server):
    run, outcome = in_background(
        lambda: run_label("s3://sfp-in/corpus", "s3://sfp-out/short", **options(server), **RUN)
    )
    wait_for_first_commit(server, "sfp-out/short", run, outcome)
    server.stop()
    assert run.is_alive(), "the run finished before the outage"
    time.sleep(OUTAGE_S)
    server.start()
    run.join(timeout=120)
    assert not run.is_alive() and "error" not in outcome, str(outcome.get("error"))[-4000:]
    summary = outcome["result"]
    assert (summary.ok, summary.error, summary.total) == (len(IMAGES), 0, len(IMAGES))
    assert sorted(output_ids(server, "sfp-out/short")) == IMAGES  # exactly once: no gaps, no duplicates


def test_an_outage_past_the_patience_fails_clearly_and_the_next_run_completes(ray_local, server):
    patience = 5.0
    run, outcome = in_background(
        lambda: run_label("s3://sfp-in/corpus", "s3://sfp-out/long", storage_retry_s=patience, **options(server), **RUN)
    )
    wait_for_first_commit(server, "sfp-out/long", run, outcome)
    server.stop()
    stopped = time.monotonic()
    run.join(timeout=120)
    assert not run.is_alive(), "the run hung on a storage outage"
    assert time.monotonic() - stopped < 90  # bounded: the patience, then best-effort clean-up
    error = outcome.get("error")
    assert type(error) is StorageUnavailable, repr(error)  # ours, not Ray's wrapper with its hints
    message = str(error)
    assert message.startswith("storage unavailable while ") and " s3://sfp-out/long" in message  # root or a key
    assert "gave up after" in message and f"patience {patience:g}s" in message
    assert server.secret_key not in message and server.access_key not in message

    server.start()
    partial = set(output_ids(server, "sfp-out/long"))
    assert 0 < len(partial) < len(IMAGES)
    again = run_label("s3://sfp-in/corpus", "s3://sfp-out/long", **options(server), **RUN)
    assert (again.skipped, again.ok, again.error) == (len(partial), len(IMAGES) - len(partial), 0)
    assert sorted(output_ids(server, "sfp-out/long")) == IMAGES
    staging = pafs.FileSelector("sfp-out/long/_sfp/staging", recursive=True, allow_not_found=True)
    leftovers = [i.path for i in server.filesystem().get_file_info(staging) if i.type == pafs.FileType.File]
    # The failed run's staged files were cleared by the next run. (Objects only: SeaweedFS lists the folder
    # of a deleted object for a moment after the delete, which no S3 client sees as a file.)
    assert leftovers == []


def test_the_cli_reports_an_outage_in_one_line_and_exits_4(tmp_path, monkeypatch, capsys):
    """What `sfp-label run` prints when the storage stayed away: the message, no traceback, exit 4 (retry)."""
    import jobs.jobfile.launch
    from jobs.cli import main
    from jobs.cli.exitcodes import ExitCode

    job = tmp_path / "job.yaml"
    job.write_text(
        "input: {uri: s3://sfp-in/corpus}\noutput: {uri: s3://sfp-out/x}\n"
        "model: {arch: SFP-Tiny-16, weights: random}\nvocabulary: {classes: [cat, dog]}\n"
    )
    message = "storage unavailable while reading s3://sfp-in/corpus/a.jpg: gave up after 9 attempts over 121s"

    def unreachable(*args, **kwargs):
        raise StorageUnavailable(message)

    monkeypatch.setattr(jobs.jobfile.launch, "run_job", unreachable)
    assert main(["run", str(job), "--no-progress"]) == ExitCode.CRASH
    err = capsys.readouterr().err
    assert f"sfp-label: {message}\n" in err and "Traceback" not in err and "resumes" in err


def test_shards_tables_and_lists_ride_out_an_outage(ray_local, server):
    """Each format's read stage, without the model: through a 2 s outage every image arrives whole."""
    import tarfile

    import pyarrow.parquet as pq

    from pipeline import Source
    from pipeline.inputs import InputReader, KnownIds, start_ledger

    fs = server.filesystem()
    images = [fs.open_input_stream(f"sfp-in/corpus/{n}").read() for n in IMAGES[:6]]
    shard = io.BytesIO()
    with tarfile.open(fileobj=shard, mode="w") as tar:
        for index, data in enumerate(images):
            info = tarfile.TarInfo(f"s{index}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    table = io.BytesIO()
    pq.write_table(pa.table({"image": images}), table, row_group_size=2)
    listing = "".join(f"s3://sfp-in/corpus/{n}\n" for n in IMAGES[:6])
    for key, data in (("shards/0.tar", shard.getvalue()), ("tables/t.parquet", table.getvalue()),
                      ("lists/l.txt", listing.encode())):  # fmt: skip
        with fs.open_output_stream(f"sfp-in/formats/{key}") as stream:
            stream.write(data)

    for fmt, uri in (("webdataset", "shards"), ("parquet", "tables"), ("list", "lists/l.txt")):
        source = Source(uri=f"s3://sfp-in/formats/{uri}", format=fmt, storage_options=server.storage_options)
        reader = InputReader(source, Redactor(), Retry(patience_s=60))
        plan = reader.plan(0.5).materialize()
        ledger = start_ledger()
        server.stop()
        restart = threading.Timer(2.0, server.start)
        restart.start()
        started = time.monotonic()
        rows = pa.concat_tables(reader.read(plan, KnownIds(), ledger, 0.5).iter_batches(batch_format="pyarrow"))
        restart.join()
        assert time.monotonic() - started >= 1.5, fmt  # it did wait for the server
        assert rows.column("error").null_count == rows.num_rows, (fmt, rows.column("error").to_pylist())
        assert sorted(rows.column("data").to_pylist()) == sorted(images), fmt
