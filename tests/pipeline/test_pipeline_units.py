"""pipeline stages one at a time, without Ray: decode, encode, storage and credentials, reading.

The output lease has its own file, test_pipeline_lease.py."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageOps

from pipeline import DEFAULT_MAX_PIXELS, RunSummary, Source, UnsupportedStorage
from pipeline.decode import ImageError, decode_batch, decode_image
from pipeline.encode import encode_png
from pipeline.inputs.files import read_files
from pipeline.retry import Retry
from pipeline.secrets import REDACTED
from pipeline.settings import DecodeSettings
from pipeline.storage import Location, Redactor, path_of_uri, public_options, public_uri
from sfp_core import ImagePreparation

pytestmark = pytest.mark.timeout(60)

MAX_PIXELS = DEFAULT_MAX_PIXELS


# decode ------------------------------------------------------------------------------------------------


def test_every_corpus_image_decodes_or_says_why(image_corpus):
    root, expected = image_corpus
    for image_id, (status, detail) in expected.items():
        data = (root / image_id).read_bytes()
        if status == "ok":
            pixels = decode_image(data, MAX_PIXELS)
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, image_id
            assert (pixels.shape[1], pixels.shape[0]) == detail, image_id
        else:
            with pytest.raises(ImageError) as info:
                decode_image(data, MAX_PIXELS)
            assert info.value.reason == detail, (image_id, str(info.value))
            assert str(info.value).startswith(f"{detail}: "), image_id


def test_exif_orientation_is_applied(image_corpus):
    root, _ = image_corpus
    stored = Image.open(root / "exif_rot90.jpg")
    assert stored.size == (80, 60)
    pixels = decode_image((root / "exif_rot90.jpg").read_bytes(), MAX_PIXELS)
    assert np.array_equal(pixels, np.asarray(ImageOps.exif_transpose(stored).convert("RGB")))


def test_sixteen_bit_grey_keeps_its_top_byte(image_corpus):
    root, _ = image_corpus
    grey16 = np.asarray(Image.open(root / "gray16.png"))
    assert grey16.dtype == np.uint16
    pixels = decode_image((root / "gray16.png").read_bytes(), MAX_PIXELS)
    assert np.array_equal(pixels[..., 0], (grey16 >> 8).astype(np.uint8))
    assert np.array_equal(pixels[..., 0], pixels[..., 2])


def test_pixel_limit_is_checked_on_the_header_and_pillow_limit_restored():
    image = Image.new("RGB", (200, 100))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    saved = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError) as info:
        decode_image(buffer.getvalue(), max_pixels=19_999)
    assert info.value.reason == "over the pixel limit" and info.value.size == (200, 100)
    assert decode_image(buffer.getvalue(), max_pixels=20_000).shape == (100, 200, 3)
    assert saved == Image.MAX_IMAGE_PIXELS


def test_corrupt_pixel_data_is_an_error_row_not_an_exception():
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    idat = data.index(b"IDAT") + 4
    data[idat : idat + 40] = b"\xff" * 40  # garbage inside the compressed stream
    with pytest.raises(ImageError) as info:
        decode_image(bytes(data), MAX_PIXELS)
    assert info.value.reason in ("corrupt", "truncated")


def test_decode_batch_resizes_to_working_size_and_passes_errors_through():
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(jpeg, "JPEG")
    batch = pa.table(
        {
            "image_id": ["a.jpg", "b.jpg", "c.jpg"],
            "uri": ["file:///x/a.jpg", "file:///x/b.jpg", "file:///x/c.jpg"],
            "data": pa.array([jpeg.getvalue(), None, b""], pa.large_binary()),
            "error": pa.array([None, "unreadable: OSError: gone", None], pa.string()),
        }
    )
    out = decode_batch(batch, settings=DecodeSettings(ImagePreparation(64, 512, 16), MAX_PIXELS))
    assert out.column("status").to_pylist() == ["ok", "error", "error"]
    assert out.column("error").to_pylist()[1:] == ["unreadable: OSError: gone", "zero bytes: the file is empty"]
    assert out.column("width").to_pylist() == [40, None, None]
    assert out.column("height").to_pylist() == [30, None, None]
    images = [a for chunk in out.column("image").chunks for a in chunk.to_numpy(zero_copy_only=False)]
    assert images[0].shape == (64, 85, 3)  # short side 64, aspect kept
    assert images[1].size == 0 and images[2].size == 0


# encode ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_mask_png_round_trips(dtype):
    mask = (np.arange(35 * 17).reshape(35, 17) % (7 if dtype == np.uint8 else 300)).astype(dtype)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(mask))))
    assert decoded.dtype == dtype and np.array_equal(decoded, mask)


# storage and credentials -------------------------------------------------------------------------------


def test_locations_parse_to_filesystem_paths(tmp_path):
    assert Location.parse(str(tmp_path)).path == str(tmp_path)
    assert Location.parse(f"file://{tmp_path}/").path == str(tmp_path)
    s3 = Location.parse("s3://bucket/some/prefix/", {"endpoint_url": "http://127.0.0.1:9", "region": "r"})
    assert (s3.scheme, s3.path, s3.uri) == ("s3", "bucket/some/prefix", "s3://bucket/some/prefix")
    assert s3.uri_of("bucket/some/prefix/a.jpg") == "s3://bucket/some/prefix/a.jpg"
    assert Location.parse("gs://bkt/x").scheme == "gs"
    memory = Location.parse("memory://corpus/dir")
    assert memory.scheme == "memory" and memory.uri.startswith("memory://")


def test_credentials_in_uris_move_to_options_and_out_of_every_record():
    location = Location.parse("s3://AKIDEXAMPLE:wJalrXUtnFEMI%2FK7MDENG@bucket/data")
    assert location.uri == "s3://bucket/data"
    assert "wJalrXUtnFEMI" not in repr(location)
    assert location.options["key"] == "AKIDEXAMPLE"
    assert public_uri("https://user:pw@host:9000/path?X-Amz-Signature=abc#frag") == "https://host:9000/path"


def test_public_options_redact_credentials_recursively():
    options = {
        "endpoint_url": "http://127.0.0.1:9000",
        "region": "eu-west-1",
        "key": "AKID",
        "secret": "s3cr3t",
        "client_kwargs": {"aws_session_token": "tok", "region_name": "eu"},
    }
    public = public_options(options)
    assert public["endpoint_url"] == "http://127.0.0.1:9000" and public["region"] == "eu-west-1"
    assert public["key"] == public["secret"] == public["client_kwargs"]["aws_session_token"] == REDACTED
    assert public["client_kwargs"]["region_name"] == "eu"


def test_environment_secrets_are_redacted_but_flags_are_not(monkeypatch):
    monkeypatch.setenv("SOME_SERVICE_API_TOKEN", "tok-1234567890")
    monkeypatch.setenv("RAY_ENABLE_TOKEN_AUTH", "false")  # a flag, not a credential
    redact = Redactor.for_options()
    assert redact('{"confidence": false, "note": "tok-1234567890"}') == '{"confidence": false, "note": "***"}'


def test_redactor_replaces_every_known_secret(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-environment")
    redact = Redactor.for_options({"secret": "from-options"}, uris=("s3://user:from-the-uri@bkt/x",))
    text = redact("a from-the-environment b from-options c from-the-uri")
    assert "from-" not in text and text.count("***") == 3
    assert "from" not in repr(redact)


def test_s3_options_translate_to_pyarrow():
    location = Location.parse("s3://bucket/x", {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"})
    fs = location.filesystem()
    assert fs.type_name == "s3" and fs.region == "eu-west-1"
    with pytest.raises(ValueError, match="storage options not understood"):
        Location.parse("s3://bucket/x", {"no_such_option": 1}).filesystem()


def test_join_never_leaves_the_location(tmp_path):
    location = Location.parse(str(tmp_path))
    assert location.join("_runs", "x.json") == f"{tmp_path}/_runs/x.json"
    for bad in ("../escape", "/abs", "a/../../b", ""):
        with pytest.raises(ValueError):
            location.join(bad)


def test_extensions_are_normalised():
    normalised = Source(uri="images", extensions=["JPG", ".png", "jpeg", "jpg"]).extensions
    assert normalised == ["jpg", "png", "jpeg"]  # lower case, no dots, each once, in the order given
    with pytest.raises(ValueError):
        Source(uri="images", extensions=[".", ""])


# reading -----------------------------------------------------------------------------------------------


def test_a_file_that_cannot_be_read_becomes_an_error_row(tmp_path):
    (tmp_path / "here.jpg").write_bytes(b"abc")
    location = Location.parse(str(tmp_path))
    listing = pa.table(
        {
            "image_id": ["here.jpg", "gone.jpg"],
            "path": [f"{tmp_path}/here.jpg", f"{tmp_path}/gone.jpg"],
            "error": pa.nulls(2, pa.string()),
        }
    )
    out = read_files(listing, location=location, redact=Redactor(), retry=Retry())
    assert out.column("data").to_pylist() == [b"abc", None]
    assert out.column("error").to_pylist()[0] is None
    assert out.column("error").to_pylist()[1].startswith("unreadable: FileNotFoundError")
    assert out.column("uri").to_pylist() == [f"file://{tmp_path}/here.jpg", f"file://{tmp_path}/gone.jpg"]


def test_run_summary_one_line():
    summary = RunSummary(
        run_id="r1",
        run_name=None,
        input_uri="s3://in/x",
        output_uri="s3://out/y",
        mode="incremental",
        ok=9,
        error=1,
        skipped=5,
        total=15,
        seconds=2.0,
        images_per_second=5.0,
        manifest_uri="s3://out/y/_runs/r1.json",
        config_hash="abc",
        files=("part-r1-000000.parquet",),
    )
    assert summary.one_line() == ("run r1: 9 ok, 1 error, 5 skipped of 15 images in 2.0s (5.00 images/s) -> s3://out/y")
    assert summary.to_dict()["files"] == ["part-r1-000000.parquet"]


def test_uris_are_built_by_quoting_and_give_back_the_exact_key(tmp_path):
    """`#`, `?`, `%`, tabs and newlines in names: the uri column names the same file, never another."""
    names = ["hash#x.jpg", "q?x=1.jpg", "pct%41.jpg", "tab\tx.jpg", "nl\nx.jpg", "sp ace & co.jpg"]
    for index, name in enumerate(names):
        (tmp_path / name).write_bytes(f"bytes {index}".encode())
    location = Location.parse(str(tmp_path))
    listing = pa.table(
        {
            "image_id": names,
            "path": [f"{tmp_path}/{name}" for name in names],
            "error": pa.nulls(len(names), pa.string()),
        }
    )
    out = read_files(listing, location=location, redact=Redactor(), retry=Retry())
    for index, uri in enumerate(out.column("uri").to_pylist()):
        assert "\n" not in uri and "\t" not in uri and "#" not in uri and "?" not in uri
        where, path = path_of_uri(uri)
        assert path == f"{tmp_path}/{names[index]}"
        with where.filesystem().open_input_stream(path) as stream:
            assert stream.read() == f"bytes {index}".encode()
    s3 = Location.parse("s3://bucket/root")
    where, key = path_of_uri(s3.uri_of("bucket/root/dir/hash#x?y.jpg"))
    assert (where.scheme, where.path, key) == ("s3", "bucket", "bucket/root/dir/hash#x?y.jpg")


def test_archive_and_web_filesystems_are_refused_as_storage():
    for uri in ("zip://images::/data/photos.zip", "tar://x::/data/a.tar", "https://example.com/photos/"):
        with pytest.raises(UnsupportedStorage, match=r"not accepted|not supported"):
            Location.parse(uri)
