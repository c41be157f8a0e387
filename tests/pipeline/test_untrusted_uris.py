"""URIs from strangers (list entries, job keys, the rows' `uri` column) make us fetch only from the storage
the user chose: chained fsspec URLs and unsupported protocols are refused before anything is opened, and
no form of user info in a URI (a password holding `/` included) reaches a row, a message or a log."""

from __future__ import annotations

import http.server
import os
import threading
import time
from typing import ClassVar

import pyarrow.parquet as pq
import pytest
from helpers import run_label
from PIL import Image
from pydantic import ValidationError

from pipeline import Destination, ModelChoice, Source, UnsupportedStorage, path_of_uri
from pipeline.errors import HostUnresolvable
from pipeline.inputs.files import fetch_files
from pipeline.output import ERROR_CLASS_TRANSIENT, error_class
from pipeline.retry import Retry
from pipeline.secrets import find_secrets
from pipeline.storage import Location, Redactor, public_uri
from sfp_core import UnsupportedURI, Vocabulary, check_weights

pytestmark = pytest.mark.timeout(300)

HOSTILE = (
    "simplecache::http://127.0.0.1:{port}/a.jpg",
    "blockcache::http://bob:PASSWORD1234@127.0.0.1:{port}/b.jpg",
    "filecache::http://127.0.0.1:{port}/c.jpg",
    "http://127.0.0.1:{port}/d.jpg",
    "ftp://127.0.0.1:{port}/e.jpg",
    "memory://x::http://127.0.0.1:{port}/f.jpg",
)


@pytest.mark.parametrize("uri", [u.format(port=9) for u in HOSTILE] + ["zip://a.jpg::s3://b/x.zip", "hf://d/x"])
def test_every_entry_point_refuses_chained_and_unsupported_uris(uri, tmp_path):
    with pytest.raises(UnsupportedURI, match=r"chained|not supported"):
        Location.parse(uri)
    for section in (Source, Destination):
        with pytest.raises(ValidationError, match=r"chained|not supported"):
            section(uri=uri)
    with pytest.raises(ValidationError, match=r"chained|not supported"):
        ModelChoice(weights=uri)
    with pytest.raises(UnsupportedURI):
        check_weights("SFP-Tiny-16", uri)
    with pytest.raises(UnsupportedStorage):
        path_of_uri(uri)
    with pytest.raises(UnsupportedURI) as refused:
        Location.parse(uri)
    assert "PASSWORD1234" not in str(refused.value)


def test_plain_paths_with_double_colons_are_just_names(tmp_path):
    """`::` chains only after a protocol: a local file may be called `a::b.jpg`."""
    assert Location.parse(str(tmp_path / "a::b")).path == str(tmp_path / "a::b")


@pytest.mark.parametrize(
    ("uri", "public"),
    [
        ("s3://KEY:abc/SECRET99@bucket/x/y.jpg", "s3://bucket/x/y.jpg"),
        ("s3://KEY:abc%2FSECRET99@bucket/x", "s3://bucket/x"),
        ("gs://user:pa:ss/w0rd@bkt/k", "gs://bkt/k"),
        ("blockcache::http://bob:PASSWORD1234@host/b.jpg", "blockcache::http://host/b.jpg"),
        ("s3://bucket/users/bob@example.com/a.jpg", "s3://bucket/users/bob@example.com/a.jpg"),
        ("s3://justauser@bucket/k", "s3://bucket/k"),
    ],
)
def test_user_info_is_recognised_however_the_password_is_spelled(uri, public):
    assert public_uri(uri) == public
    if public.endswith("bob@example.com/a.jpg"):
        return
    secret = uri.split("://", 1)[1].split("@", 1)[0]
    text = f"failed reading {uri} (took 3 s)"
    assert secret not in Redactor.for_options(uris=(uri,))(text)
    assert secret not in Redactor()(text)
    if ":" in secret:
        assert list(find_secrets({"uri": uri})), "a job file holding it must be refused"


def test_a_secret_holding_a_slash_moves_to_options_instead_of_naming_the_bucket():
    location = Location.parse("s3://AKIDEXAMPLE:wJalr/K7MDENG@bucket/data")
    assert (location.path, location.uri) == ("bucket/data", "s3://bucket/data")
    assert (location.options["key"], location.options["secret"]) == ("AKIDEXAMPLE", "wJalr/K7MDENG")
    assert "K7MDENG" not in repr(location)


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"\xff\xd8not really a jpeg")

    do_HEAD = do_GET

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def counting_server():
    _CountingHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], _CountingHandler.requests
    server.shutdown()
    server.server_close()


def test_hostile_list_entries_become_error_rows_and_fetch_nothing(ray_local, tmp_path, counting_server):
    port, requests = counting_server
    Image.new("RGB", (32, 24), (200, 10, 10)).save(tmp_path / "real.png")
    Image.new("RGB", (32, 24), (10, 10, 200)).save(tmp_path / "odd::name.png")  # a name, not a chain
    hostile = [entry.format(port=port) for entry in HOSTILE]
    Image.new("RGB", (32, 24), (10, 200, 10)).save(tmp_path / "line\u2028sep.png")  # one name, not two lines
    os.mkfifo(tmp_path / "fifo.png")  # read, it would block forever
    # `odd::name.png` alone reads as protocol `odd`; `./` makes it the path it is
    local = ["real.png", "./odd::name.png", "line\u2028sep.png", "fifo.png", "/dev/zero"]
    (tmp_path / "list.txt").write_text("\n".join([*local, *hostile]) + "\n", encoding="utf-8")
    output = tmp_path / "out"
    summary = run_label(
        str(tmp_path / "list.txt"),
        str(output),
        format="list",
        vocabulary=Vocabulary([["background"], ["red"]]),
        arch="SFP-Tiny-16",
        weights="random",
    )
    assert requests == [], "a listed URI made us fetch from elsewhere"
    assert (summary.ok, summary.error) == (3, len(hostile) + 2)
    rows = pq.read_table(next(output.glob("data-*"))).to_pylist()
    odd = next(r for r in rows if r["image_id"] == "./odd::name.png")
    assert path_of_uri(odd["uri"])[1] == str(tmp_path / "odd::name.png")
    errors = {r["image_id"]: r["error"] for r in rows if r["status"] == "error"}
    assert errors.pop("fifo.png") == errors.pop("/dev/zero") == "unreadable: not a regular file (a FIFO or device)"
    assert len(errors) == len(hostile)
    assert all(e.startswith("unsupported: ") and ("chained" in e or "not supported" in e) for e in errors.values())
    everything = b"".join(p.read_bytes() for p in output.rglob("*") if p.is_file())
    assert b"PASSWORD1234" not in everything and b"bob:" not in everything


def test_uris_name_keys_as_data_and_read_back_what_uri_of_wrote(tmp_path):
    """A URI's path is percent-decoded and never cut at `#` or `?`: the rows' own `uri` column, and any
    URI naming such a key, read the file it names."""
    for name in ("a#b.jpg", "q?1.jpg", "sp ace.jpg", "odd::name.jpg", "100%.jpg"):
        (tmp_path / name).write_bytes(name.encode())
        folder = Location.parse(str(tmp_path))
        for uri in (folder.uri_of(str(tmp_path / name)), f"file://{tmp_path}/{name}".replace(" ", "%20")):
            if "::" in uri:
                continue  # written by hand, `::` chains; uri_of quotes the colons
            location = Location.parse(uri)
            with location.filesystem().open_input_stream(location.path) as stream:
                assert stream.read() == name.encode(), uri


def test_weights_uri_credentials_never_reach_a_message():
    """A weights URI with user info (the secret holding `/`) is refused in job files; from Python its
    credentials go to the storage options, and what the failure says holds neither part."""
    from sfp_core import WeightsUnavailable

    options = {"endpoint_url": "http://127.0.0.1:9", "config_kwargs": {"retries": {"max_attempts": 1}}}
    with pytest.raises(WeightsUnavailable) as failed:
        check_weights("SFP-Tiny-16", "s3://AKEYID77:pass/word99@bucket/w.pt", storage_options=options)
    message = str(failed.value)
    assert "s3://bucket/w.pt" in message
    assert "pass" not in message and "word99" not in message and "AKEYID77" not in message


UNRESOLVABLE = {"endpoint_url": "http://no-such-host.invalid:8333", "anon": True}  # .invalid never resolves


def test_a_store_whose_host_does_not_resolve_fails_its_listed_files_not_the_run(tmp_path):
    """After the retry window a listed file on such a store is a transient error row; later files of the
    same store get that row at once. A folder's own store failing the same way still fails the run."""
    stores = [Location.parse(f"s3://bucket-{i % 2}/x{i}.jpg", UNRESOLVABLE) for i in range(4)]
    wanted = [(location, location.path, None) for location in stores]
    started = time.monotonic()
    fetched = fetch_files(wanted, Redactor(), Retry(patience_s=1.0, first_delay_s=0.1), 1024, hosts_per_entry=True)
    assert all(data is None and error_class(error) == ERROR_CLASS_TRANSIENT for data, error in fetched), fetched
    assert "resolve" in fetched[0][1]
    assert time.monotonic() - started < 30  # one window per store (run at once), not one per file in turn
    with pytest.raises(HostUnresolvable):
        fetch_files(wanted[:1], Redactor(), Retry(patience_s=0.5, first_delay_s=0.1), 1024)


def test_a_list_naming_an_unresolvable_store_labels_the_rest(ray_local, tmp_path):
    Image.new("RGB", (32, 24), (200, 10, 10)).save(tmp_path / "real.png")
    (tmp_path / "list.txt").write_text("real.png\ns3://nowhere/a.jpg\ns3://nowhere/b.jpg\n")
    summary = run_label(
        str(tmp_path / "list.txt"),
        str(tmp_path / "out"),
        format="list",
        input_storage_options=UNRESOLVABLE,
        storage_retry_s=1.0,
        vocabulary=Vocabulary([["background"], ["red"]]),
        arch="SFP-Tiny-16",
        weights="random",
    )
    assert (summary.ok, summary.error) == (1, 2)
    rows = pq.read_table(next((tmp_path / "out").glob("data-*"))).to_pylist()
    errors = [r["error"] for r in rows if r["status"] == "error"]
    assert all(error_class(e) == ERROR_CLASS_TRANSIENT and "resolve" in e for e in errors), errors
