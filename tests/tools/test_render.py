"""`sfp-label render` on a real pipeline output: an overlay and an outlier map per image, and the page
checked in headless Chromium over HTTP (it loads, every picture shows, no console errors, it sorts)."""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import io
import json
import os
import re
import signal
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import helpers
import numpy as np
import pytest
import websocket
from helpers import output_table, run_label
from PIL import Image

from jobs.cli import main
from jobs.tools.render import _Painter, palette
from pipeline.inputs.sources import read_source
from sfp_core import SFPConfig, Vocabulary

pytestmark = pytest.mark.timeout(300)

CHROMIUM = "/usr/bin/chromium"  # Debian's package; .ci/run installs it
GOLDEN_WEIGHTS = str(helpers.GOLDEN_WEIGHTS)
VOCAB = Vocabulary([["background", "sky"], ["cat"], ["dog"], ["car"]])


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """Flat coloured rectangles on a gradient, so masks and outliers are not uniform."""
    gen = np.random.default_rng(seed)
    image = np.broadcast_to(np.linspace(40, 200, width, dtype=np.float32)[None, :, None], (height, width, 3)).copy()
    for _ in range(4):
        y, x = gen.integers(0, height - 8), gen.integers(0, width - 8)
        image[y : y + gen.integers(8, height // 2), x : x + gen.integers(8, width // 2)] = gen.integers(0, 255, 3)
    return np.clip(image + gen.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def labelled(ray_local, tmp_path_factory) -> Path:
    """Three images (one in a subfolder) and a broken file, labelled once by the real pipeline."""
    root = tmp_path_factory.mktemp("render-input")
    Image.fromarray(scene(96, 128, 1)).save(root / "street.jpg", quality=92)
    Image.fromarray(scene(120, 72, 2)).save(root / "tall.png")
    (root / "sub dir").mkdir()
    Image.fromarray(scene(40, 300, 3)).save(root / "sub dir" / "wide & odd.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg at all")
    output = tmp_path_factory.mktemp("render-output") / "out"
    run_label(
        str(root), str(output), vocabulary=VOCAB, arch="SFP-Tiny-16", weights=GOLDEN_WEIGHTS,
        config=SFPConfig(short_side=224), mode="overwrite",
    )  # fmt: skip
    return output


@pytest.fixture(scope="module")
def rendered(labelled, tmp_path_factory) -> tuple[Path, list[dict]]:
    directory = tmp_path_factory.mktemp("render") / "html"
    assert main(["render", str(labelled), str(directory)]) == 0
    return directory, output_table(labelled).to_pylist()  # the order render saw


def pictures(directory: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', (directory / "index.html").read_text())


def test_every_ok_image_gets_an_overlay_and_an_outlier_map_and_errors_are_listed(rendered):
    directory, rows = rendered
    ok = [row for row in rows if row["status"] == "ok"]
    assert len(ok) == 3 and sum(row["outlier_count"] for row in ok) > 0
    sources = pictures(directory)
    assert len(sources) == 2 * len(ok)
    overlays = sorted(p for p in sources if p.startswith("overlays/"))
    maps = sorted(p for p in sources if p.startswith("outliers/"))
    assert [p.split("/", 1)[1] for p in overlays] == [p.split("/", 1)[1] for p in maps]
    for overlay, outlier_map in zip(overlays, maps, strict=True):
        panel = Image.open(directory / outlier_map).size
        with Image.open(directory / overlay) as picture:
            assert picture.size == (2 * panel[0], panel[1])
    page = (directory / "index.html").read_text()
    for row in ok:
        assert row["image_id"].replace("&", "&amp;") in page
    assert "broken.jpg" in page and "not an image" in page


def test_outlier_maps_mark_exactly_the_recorded_patches(rendered):
    """Where the outlier map differs from the plain image (the overlay's first panel) lies a recorded box,
    and every recorded box is marked. Pictures are numbered in the output's row order."""
    directory, rows = rendered
    painter = _Painter([], 640)
    maps = sorted(p for p in pictures(directory) if p.startswith("outliers/"))
    for path, row in zip(maps, [r for r in rows if r["status"] == "ok"], strict=True):
        marked = np.asarray(Image.open(directory / path).convert("RGB")).astype(int)
        plain = np.asarray(Image.open(directory / path.replace("outliers/", "overlays/")).convert("RGB"))
        changed = np.abs(marked - plain[: marked.shape[0], : marked.shape[1]].astype(int)).sum(axis=2) > 0
        boxes = np.zeros_like(changed)
        scale = painter.scale(row["width"], row["height"])
        for o in row["outliers"]:
            y0, x0 = int(o["y0"] * scale), int(o["x0"] * scale)
            y1, x1 = int(np.ceil(o["y1"] * scale)) + 1, int(np.ceil(o["x1"] * scale)) + 1
            boxes[y0:y1, x0:x1] = True
            assert changed[y0 : y1 - 2, x0 : x1 - 2].mean() > 0.5, (row["image_id"], o)
        assert not (changed & ~boxes).any(), row["image_id"]


def test_palette_is_voc_and_the_legend_shows_each_class_in_its_colour(rendered):
    assert palette(6).tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128]]
    directory, rows = rendered
    page = (directory / "index.html").read_text()
    legends = re.findall(r'<ul class="legend">(.*?)</ul>', page)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(legends) == len(ok)
    colours = palette(len(VOCAB))
    for legend, row in zip(legends, ok, strict=True):
        by_area = [c for _, c in sorted(zip(row["class_pixels"], row["class_ids"], strict=True), reverse=True)]
        entries = re.findall(r'background:#([0-9a-f]{6})"></span>([^<]+?) [0-9.]+%', legend)
        assert [bytes.fromhex(hex_colour).hex() for hex_colour, _ in entries] == [
            bytes(colours[c].tolist()).hex() for c in by_area
        ]
        assert [name for _, name in entries] == [VOCAB.classes[c][0] for c in by_area]


def test_unreadable_sources_and_16_bit_masks_still_render(tmp_path, capsys):
    from helpers import ok_row, write_output

    names = [f"class {i}" for i in range(300)]
    mask = np.arange(12 * 20, dtype=np.uint16).reshape(12, 20) + 50
    outliers = [{"window": 0, "window_y": 0, "window_x": 0, "row": 0, "col": 0, "score": 0.9,
                 "x0": 0, "y0": 0, "x1": 8, "y1": 8}]  # fmt: skip
    row = ok_row("gone.jpg", mask, outliers, uri=f"file://{tmp_path}/gone.jpg")
    output = write_output(tmp_path / "out", [[row]], class_names=names)
    assert main(["render", str(output), str(tmp_path / "html"), "--limit", "0"]) == 0
    page = (tmp_path / "html" / "index.html").read_text()
    (legend,) = re.findall(r'<ul class="legend">(.*?)</ul>', page)
    assert "source image unreadable" in page and "class 289" not in legend  # only the top classes are listed
    assert "and 235 more" in legend  # 240 classes present
    assert len(pictures(tmp_path / "html")) == 2
    assert "rendered 1 images" in capsys.readouterr().out


@pytest.mark.timeout(60)  # a FIFO read would block forever, /dev/zero until memory runs out
def test_render_reads_only_regular_files_of_bounded_size_whatever_the_uri_column_says(tmp_path, capsys):
    from helpers import ok_row, write_output

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    big = tmp_path / "big.tar"
    with tarfile.open(big, "w") as tar:  # a shard whose member is over a 1 KiB limit
        info = tarfile.TarInfo("k.jpg")
        info.size = 4096
        tar.addfile(info, io.BytesIO(bytes(4096)))
    mask = np.zeros((12, 20), np.uint8)
    uris = ["file:///dev/zero", f"file://{fifo}", f"file://{fifo}#k.jpg", f"file://{tmp_path}/nowhere.jpg"]
    rows = [ok_row(f"{i}.jpg", mask, [], uri=uri) for i, uri in enumerate(uris)]
    output = write_output(tmp_path / "out", [rows], class_names=["a", "b"])
    assert main(["render", str(output), str(tmp_path / "html")]) == 0
    page = (tmp_path / "html" / "index.html").read_text()
    assert page.count("source image unreadable") == len(uris)
    assert "not a regular file" in page and "rendered 4 images" in capsys.readouterr().out
    with pytest.raises(LookupError, match="4096 bytes"):
        read_source(f"file://{big}#k.jpg", max_bytes=1024)
    assert read_source(f"file://{big}#k.jpg", max_bytes=4096) == bytes(4096)


# --- the page in a real browser -------------------------------------------------------------------------------


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, url: str):
        self.socket = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.events: list[dict] = []
        self.last_id = 0

    def call(self, method: str, **params: object) -> dict:
        self.last_id += 1
        self.socket.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.socket.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                self.events.append(json.loads(self.socket.recv()))
            except websocket.WebSocketTimeoutException:
                raise TimeoutError(f"no {method} within {timeout}s") from None
        self.socket.settimeout(30)
        return next(e for e in self.events if e.get("method") == method)

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")  # undefined has none

    def errors(self) -> list[dict]:
        """Console errors, uncaught exceptions and failed loads the page produced so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if (
                (method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"))
                or method == "Runtime.exceptionThrown"
                or (method == "Log.entryAdded" and params["entry"].get("level") == "error")
            ):
                found.append(event)
        return found


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """The folder over http://127.0.0.1:<free port>/ in a thread, stopped afterwards."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[DevTools]:
    """Headless Debian Chromium with DevTools on a free port; its process group is ended afterwards."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run installs it)")
    args = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
        "--window-size=1280,1000", "about:blank",
    ]  # fmt: skip
    log = (profile.parent / "chromium.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not start: {(profile.parent / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        try:
            yield tools
        finally:
            tools.socket.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()


def test_the_page_loads_in_chromium_with_every_picture_and_no_console_errors(rendered, tmp_path):
    directory, rows = rendered
    ok = [row for row in rows if row["status"] == "ok"]
    (tmp_path / "profile").mkdir()
    with serve(directory) as base, chromium(tmp_path / "profile") as browser:
        for domain in ("Runtime", "Log", "Page"):
            browser.call(f"{domain}.enable")
        browser.call("Page.navigate", url=f"{base}/index.html")
        browser.wait_for("Page.loadEventFired")
        images = browser.evaluate(
            "Array.from(document.images).map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}))"
        )
        assert len(images) == 2 * len(ok) and all(i["ok"] for i in images), images
        assert browser.evaluate("document.querySelectorAll('#images tbody tr').length") == len(ok)

        order = "Array.from(document.querySelectorAll('#images tbody tr')).map(r => Number(r.dataset.outliers))"
        browser.evaluate("document.getElementById('sort-outliers').click()")
        assert browser.evaluate(order) == sorted((row["outlier_count"] for row in ok), reverse=True)
        browser.evaluate("document.getElementById('sort-outliers').click()")
        assert browser.evaluate(order) == sorted(row["outlier_count"] for row in ok)

        for point in pointer_checks(directory, ok[0]):
            assert browser.evaluate(point["script"]) == point["name"], point

        shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        (tmp_path / "page.png").write_bytes(base64.b64decode(shot["data"]))
        time.sleep(0.5)  # let late console messages arrive
        browser.call("Runtime.evaluate", expression="1")
        assert browser.errors() == []
    screenshot = np.asarray(Image.open(tmp_path / "page.png").convert("RGB"))
    assert screenshot.shape[1] >= 800 and len(np.unique(screenshot.reshape(-1, 3), axis=0)) > 100


def pointer_checks(directory: Path, row: dict) -> list[dict]:
    """Points well inside each class region of the first overlay, as scripts that move the pointer there
    (on the mask panel) and read the name the page shows; with the name the stored mask says."""
    with Image.open(directory / pictures(directory)[0]) as overlay:
        display = (overlay.size[0] // 2, overlay.size[1])
    mask = Image.open(io.BytesIO(row["mask_png"]))
    shown = np.asarray(mask.resize(display, Image.NEAREST) if display != mask.size else mask)
    checks = []
    for class_id in row["class_ids"]:
        inside = shown == class_id
        for _ in range(3):  # erode: keep points at least 3 picture pixels from any other class
            inside = (
                inside & np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1) & np.roll(inside, -1, 1)
            )
        ys, xs = np.nonzero(inside[4:-4, 4:-4])
        if not len(ys):
            continue
        y, x = int(ys[len(ys) // 2]) + 4, int(xs[len(xs) // 2]) + 4
        fx, fy = (x + 0.5) / display[0], (y + 0.5) / display[1]
        script = (
            "(function () { var box = document.querySelector('#images tbody tr[data-number=\"1\"] .mask');"
            " var r = box.querySelector('img').getBoundingClientRect();"
            f" var e = new MouseEvent('mousemove', {{bubbles: true, clientX: r.left + r.width / 2 + {fx} * r.width / 2,"
            f" clientY: r.top + {fy} * r.height}});"
            " box.dispatchEvent(e); return document.getElementById('pointer-class').textContent; })()"
        )
        checks.append({"script": script, "name": VOCAB.classes[class_id][0], "at": (x, y)})
    assert checks
    return checks


def test_source_images_in_object_storage_are_read_with_the_storage_options(s3_server, tmp_path, capsys):
    from helpers import ok_row, write_output

    s3_server.create_bucket("sfp-render")
    pixels = scene(30, 40, 4)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    with s3_server.filesystem().open_output_stream("sfp-render/photos/a.png") as stream:
        stream.write(buffer.getvalue())
    mask = np.zeros((30, 40), np.uint8)
    output = write_output(tmp_path / "out", [[ok_row("a.png", mask, uri="s3://sfp-render/photos/a.png")]])
    where = [f"-o{key}={value}" for key, value in s3_server.storage_options.items()]
    assert main(["render", str(output), str(tmp_path / "html"), *where]) == 0, capsys.readouterr().err
    assert "unreadable" not in (tmp_path / "html" / "index.html").read_text()
    overlay = np.asarray(Image.open(tmp_path / "html" / pictures(tmp_path / "html")[0]).convert("RGB"))
    expected = np.asarray(Image.fromarray(pixels).resize((256, 192), Image.BILINEAR))
    assert np.array_equal(overlay[:192, :256], expected)


@pytest.mark.parametrize(("option", "message"), [("--limit=-1", "--limit -1"), ("--max-side=100", "at least 256")])
def test_bad_picture_options_are_refused(tmp_path, capsys, option, message):
    from helpers import ok_row, write_output

    output = write_output(tmp_path / "out", [[ok_row("a.png", np.zeros((4, 4), np.uint8))]])
    assert main(["render", str(output), str(tmp_path / "html"), option]) == 2
    assert message in capsys.readouterr().err
