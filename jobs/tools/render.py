"""`sfp-label render`: PNGs and one HTML page to look at an output with.

For each ok row (up to a limit): `overlays/N-<id>.png` (the image, and the mask in colour over it)
and `outliers/N-<id>.png` (the image with every window's outlier patches boxed). `index.html` lists
them with per-image statistics, sortable by outlier count, and a legend in HTML (each class present
in its colour, with its share); pointing at the overlay names the class under the pointer (the page
carries a run-length coded copy of each mask at a quarter of the picture's size). It is
self-contained (relative links, inline style and script), so the folder can be copied anywhere.
"""

from __future__ import annotations

import html
import io
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw

from pipeline import DEFAULT_MAX_PIXELS, STATUS_OK, LabelledOutput, OutputError, decode_image, read_source

from .destination import writable_folder

COLUMNS = (
    "image_id", "uri", "status", "error", "width", "height", "mask_png", "class_ids", "class_pixels",
    "mean_confidence", "outlier_count", "outlier_ratio", "score_max", "windows", "outliers",
)  # fmt: skip
OVERLAY_DIR = "overlays"
OUTLIER_DIR = "outliers"
INDEX = "index.html"
MASK_ALPHA = 0.55
HOVER_STEP = 4  # the hover map keeps one mask pixel per HOVER_STEP x HOVER_STEP block of the picture
MIN_SIDE = 256  # tiny images are enlarged to this long side so the page stays readable
TOP_CLASSES = 5
ERROR_ROWS_LISTED = 200
MAX_SOURCE_PIXELS = DEFAULT_MAX_PIXELS  # the pipeline's limit: never decode a decompression bomb
OUTLIER_COLOUR = (255, 32, 32)


def palette(count: int) -> np.ndarray:
    """`count x 3` uint8 colours, PASCAL VOC's bit-interleaved palette: class i has one colour everywhere."""
    ids = np.arange(count, dtype=np.int64)
    colours = np.zeros((count, 3), np.int64)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours.astype(np.uint8)


@dataclass(frozen=True)
class RenderedImage:
    """One table row of the page."""

    number: int
    image_id: str
    overlay: str  # paths relative to the render folder
    outliers: str
    width: int
    height: int
    classes: list[tuple[int, str, float]]  # (class id, name, share of the image), largest first
    mean_confidence: float | None
    outlier_count: int
    outlier_ratio: float | None
    score_max: float | None
    windows: int | None
    note: str | None  # why the source image is missing from the pictures
    hover: HoverMap


@dataclass(frozen=True)
class HoverMap:
    """The mask at a coarse grid, run-length coded ("value*count,..." row by row) for the page's script."""

    columns: int
    rows: int
    runs: str

    @classmethod
    def of(cls, mask: np.ndarray, step: int = HOVER_STEP) -> HoverMap:
        coarse = mask[step // 2 :: step, step // 2 :: step] if min(mask.shape) > step else mask
        flat = coarse.reshape(-1).astype(np.int64)
        starts = np.flatnonzero(np.diff(flat, prepend=flat[0] - 1))
        lengths = np.diff(np.append(starts, flat.size))
        runs = ",".join(f"{int(flat[a])}*{int(n)}" for a, n in zip(starts, lengths, strict=True))
        return cls(columns=coarse.shape[1], rows=coarse.shape[0], runs=runs)


@dataclass
class RenderReport:
    directory: Path
    rendered: list[RenderedImage] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (image_id, error), the first ERROR_ROWS_LISTED
    error_rows: int = 0
    not_rendered: int = 0  # ok rows beyond the limit

    def one_line(self) -> str:
        more = f", {self.not_rendered} more ok images not rendered (--limit)" if self.not_rendered else ""
        errors = f", {self.error_rows} error rows listed" if self.error_rows else ""
        return f"rendered {len(self.rendered)} images{more}{errors}: open {self.directory / INDEX}"


class _Painter:
    """Draws the pictures of one output: its class names, colours and font."""

    def __init__(self, class_names: list[str], max_side: int):
        self.names = class_names
        self.colours = palette(max(len(class_names), 1))
        self.max_side = max_side

    def scale(self, width: int, height: int) -> float:
        """Display scale: the long side between MIN_SIDE and `max_side` pixels."""
        long_side = max(width, height)
        return min(max(1.0, MIN_SIDE / long_side), self.max_side / long_side)

    def overlay(self, image: Image.Image, mask: np.ndarray) -> Image.Image:
        """[image | mask blended over it], at display size (the legend is HTML, in the page)."""
        size = image.size
        coloured = Image.fromarray(self.colours[np.clip(mask, 0, len(self.colours) - 1)]).resize(size, Image.NEAREST)
        canvas = Image.new("RGB", (2 * size[0], size[1]), "white")
        canvas.paste(image, (0, 0))
        canvas.paste(Image.blend(image, coloured, MASK_ALPHA), (size[0], 0))
        return canvas

    def colour(self, class_id: int) -> str:
        """The class's colour as CSS `#rrggbb` (grey for ids past the palette)."""
        if class_id >= len(self.colours):
            return "#808080"
        red, green, blue = (int(c) for c in self.colours[class_id])
        return f"#{red:02x}{green:02x}{blue:02x}"

    def outlier_map(self, image: Image.Image, outliers: list[dict[str, Any]], scale: float) -> Image.Image:
        """The image with each outlier patch (original-pixel box) filled and outlined."""
        layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for o in outliers:
            x0, y0 = o["x0"] * scale, o["y0"] * scale
            x1, y1 = max(x0, o["x1"] * scale - 1), max(y0, o["y1"] * scale - 1)  # boxes end exclusive
            draw.rectangle([x0, y0, x1, y1], fill=(*OUTLIER_COLOUR, 70), outline=(*OUTLIER_COLOUR, 255), width=2)
        return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")

    def name(self, class_id: int) -> str:
        return self.names[class_id] if class_id < len(self.names) else f"class {class_id}"


def _safe_name(image_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", image_id.rsplit(".", 1)[0])[-80:]


def _source_image(
    uri: str, storage_options: dict[str, Any] | None, size: tuple[int, int]
) -> tuple[Image.Image, str | None]:
    """The labelled image as the pipeline saw it (EXIF-oriented RGB), or a grey stand-in and the reason."""
    try:  # a file, a shard member or a table row: the row's URI is quoted, never parsed as a URL
        pixels = decode_image(read_source(uri, storage_options), MAX_SOURCE_PIXELS)
    except Exception as exc:  # moved, unreadable or broken: only this picture suffers
        return Image.new("RGB", size, (128, 128, 128)), f"source image unreadable: {type(exc).__name__}: {exc}"
    if (pixels.shape[1], pixels.shape[0]) != size:
        note = f"source image is {pixels.shape[1]}x{pixels.shape[0]} now, labelled at {size[0]}x{size[1]}"
        return Image.fromarray(pixels).resize(size, Image.BILINEAR), note
    return Image.fromarray(pixels), None


def _render_row(
    painter: _Painter, row: dict[str, Any], number: int, directory: Path, storage_options: dict[str, Any] | None
) -> RenderedImage:
    size = (int(row["width"]), int(row["height"]))
    image, note = _source_image(row["uri"], storage_options, size)
    mask = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
    total = float(sum(row["class_pixels"] or [])) or 1.0
    present = sorted(zip(row["class_ids"] or [], row["class_pixels"] or [], strict=True), key=lambda c: -c[1])
    shares = [(int(c), p / total) for c, p in present]
    scale = painter.scale(*size)
    display = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    small = image.resize(display, Image.BILINEAR) if display != size else image
    small_mask = np.asarray(Image.fromarray(mask).resize(display, Image.NEAREST)) if display != size else mask
    stem = f"{number:05d}-{_safe_name(row['image_id'])}.png"
    overlay, outliers = f"{OVERLAY_DIR}/{stem}", f"{OUTLIER_DIR}/{stem}"
    painter.overlay(small, small_mask).save(directory / overlay, optimize=False)
    painter.outlier_map(small, row["outliers"] or [], scale).save(directory / outliers, optimize=False)
    return RenderedImage(
        number=number,
        image_id=row["image_id"],
        overlay=overlay,
        outliers=outliers,
        width=size[0],
        height=size[1],
        classes=[(c, painter.name(c), share) for c, share in shares],
        mean_confidence=row["mean_confidence"],
        outlier_count=int(row["outlier_count"] or 0),
        outlier_ratio=row["outlier_ratio"],
        score_max=row["score_max"],
        windows=row["windows"],
        note=note,
        hover=HoverMap.of(small_mask),
    )


def render(
    output: LabelledOutput,
    directory: Path,
    *,
    limit: int | None = 100,
    max_side: int = 640,
    storage_options: dict[str, Any] | None = None,
) -> RenderReport:
    """Render the first `limit` ok rows (all with None) and list the error rows; writes `index.html` last."""
    if limit is not None and limit < 0:
        raise OutputError(f"--limit {limit}: expected a count, 0 for all")
    if max_side < MIN_SIDE:
        raise OutputError(f"--max-side {max_side}: pictures need at least {MIN_SIDE} pixels")
    names = output.class_names()
    if names is None:
        raise OutputError(f"{output.uri}: no run manifest names the classes; was it written by sfp-label?")
    painter = _Painter(names, max_side)
    writable_folder(directory)
    for sub in (OVERLAY_DIR, OUTLIER_DIR):
        writable_folder(directory / sub).mkdir(parents=True, exist_ok=True)
    report = RenderReport(directory)
    for batch in output.batches(COLUMNS):
        for row in batch.to_pylist():
            if row["status"] != STATUS_OK or row["mask_png"] is None:
                report.error_rows += 1
                if len(report.errors) < ERROR_ROWS_LISTED:
                    report.errors.append((row["image_id"], row["error"] or "(no message)"))
            elif limit is not None and len(report.rendered) >= limit:
                report.not_rendered += 1
            else:
                number = len(report.rendered) + 1
                report.rendered.append(_render_row(painter, row, number, directory, storage_options))
    (directory / INDEX).write_text(page(output.uri, report, painter), encoding="utf-8")
    return report


PAGE = string.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>SFP labels: $title</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1em; }
table { border-collapse: collapse; }
td, th { border-bottom: 1px solid #ddd; padding: 6px; vertical-align: top; text-align: left; }
th button { font: inherit; font-weight: bold; border: none; background: none; cursor: pointer; padding: 0; }
td.num { text-align: right; white-space: nowrap; }
img { max-width: 100%; display: block; }
.note { color: #a00; }
.legend { list-style: none; padding: 0; margin: 4px 0 0 0; }
.swatch { display: inline-block; width: 12px; height: 12px; border: 1px solid #000; margin-right: 6px;
          vertical-align: -1px; }
.mask { position: relative; }
#pointer-class { position: fixed; pointer-events: none; background: #222; color: #fff; padding: 2px 6px;
                 border-radius: 3px; display: none; }
</style>
</head>
<body>
<h1>$title</h1>
<p>$summary</p>
<table id="images">
<thead><tr>
<th><button data-key="number">#</button></th><th>image</th><th>mask</th><th>outlier patches</th>
<th><button data-key="outliers" id="sort-outliers">outliers &#8597;</button></th>
<th><button data-key="confidence">confidence &#8597;</button></th><th>windows</th>
</tr></thead>
<tbody>
$rows
</tbody>
</table>
$errors
<div id="pointer-class"></div>
<script>
var CLASS_NAMES = $names;
var tip = document.getElementById("pointer-class");
function classAt(box, event) {
  var image = box.querySelector("img"), rect = image.getBoundingClientRect();
  var half = rect.width / 2, x = event.clientX - rect.left - half, y = event.clientY - rect.top;
  if (x < 0) { x += half; }  // the plain picture and the overlay show the same pixels
  var columns = Number(box.dataset.columns), rows = Number(box.dataset.rows);
  var col = Math.min(columns - 1, Math.floor(x / half * columns));
  var row = Math.min(rows - 1, Math.floor(y / rect.height * rows));
  if (col < 0 || row < 0) { return null; }
  var index = row * columns + col, runs = box.dataset.runs.split(",");
  for (var i = 0; i < runs.length; i++) {
    var run = runs[i].split("*");
    index -= Number(run[1]);
    if (index < 0) { var id = Number(run[0]); return CLASS_NAMES[id] || ("class " + id); }
  }
  return null;
}
document.querySelectorAll(".mask").forEach(function (box) {
  box.addEventListener("mousemove", function (event) {
    var name = classAt(box, event);
    tip.style.display = name === null ? "none" : "block";
    tip.textContent = name;
    tip.style.left = (event.clientX + 14) + "px";
    tip.style.top = (event.clientY + 14) + "px";
  });
  box.addEventListener("mouseleave", function () { tip.style.display = "none"; });
});
document.querySelectorAll("th button").forEach(function (button) {
  button.addEventListener("click", function () {
    var key = button.dataset.key, body = document.querySelector("#images tbody");
    var descending = button.dataset.order !== "desc";
    button.dataset.order = descending ? "desc" : "asc";
    Array.from(body.rows).sort(function (a, b) {
      var d = parseFloat(a.dataset[key]) - parseFloat(b.dataset[key]);
      return descending ? -d : d;
    }).forEach(function (row) { body.appendChild(row); });
  });
});
</script>
</body>
</html>
""")


def _cell_number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _picture(path: str, alt: str) -> str:
    return f'<a href="{quote(path)}"><img src="{quote(path)}" alt="{html.escape(alt)}"></a>'


def _legend(item: RenderedImage, painter: _Painter) -> str:
    entries = "".join(
        f'<li><span class="swatch" style="background:{painter.colour(class_id)}"></span>{html.escape(name)} '
        f"{share:.1%}</li>"
        for class_id, name, share in item.classes[:TOP_CLASSES]
    )
    more = f"<li>and {len(item.classes) - TOP_CLASSES} more</li>" if len(item.classes) > TOP_CLASSES else ""
    return f'<ul class="legend">{entries}{more}</ul>'


def _row_html(item: RenderedImage, painter: _Painter) -> str:
    e = html.escape
    hover = item.hover
    mask = (
        f'<div class="mask" data-columns="{hover.columns}" data-rows="{hover.rows}" data-runs="{hover.runs}">'
        f"{_picture(item.overlay, f'mask of {item.image_id}')}</div>"
    )
    note = f'<div class="note">{e(item.note)}</div>' if item.note else ""
    confidence = item.mean_confidence if item.mean_confidence is not None else -1.0
    return (
        f'<tr data-number="{item.number}" data-outliers="{item.outlier_count}" data-confidence="{confidence}">'
        f'<td class="num">{item.number}</td>'
        f"<td>{e(item.image_id)}<br>{item.width}x{item.height}{note}{_legend(item, painter)}</td>"
        f"<td>{mask}</td>"
        f"<td>{_picture(item.outliers, f'outliers of {item.image_id}')}</td>"
        f'<td class="num">{item.outlier_count}<br>ratio {_cell_number(item.outlier_ratio, ".4f")}'
        f"<br>max score {_cell_number(item.score_max, '.3f')}</td>"
        f'<td class="num">{_cell_number(item.mean_confidence, ".3f")}</td>'
        f'<td class="num">{_cell_number(item.windows, "d")}</td></tr>'
    )


def page(uri: str, report: RenderReport, painter: _Painter) -> str:
    """The self-contained `index.html`."""
    summary = f"{len(report.rendered)} images rendered"
    if report.not_rendered:
        summary += f", {report.not_rendered} more not rendered (--limit)"
    summary += f", {report.error_rows} error rows. Click a column title to sort."
    errors = ""
    if report.errors:
        items = "\n".join(f"<li>{html.escape(i)}: {html.escape(m)}</li>" for i, m in report.errors)
        errors = f"<h2>Error rows ({report.error_rows})</h2>\n<ul>\n{items}\n</ul>"
    return PAGE.substitute(
        title=html.escape(uri),
        summary=summary,
        rows="\n".join(_row_html(item, painter) for item in report.rendered),
        errors=errors,
        # Every `<` escaped: a class name such as `<!--<script>` must not end or bend the page's script.
        names=json.dumps(painter.names).replace("<", "\\u003c"),
    )
