"""The dataset card `OUTPUT/README.md`: a Hugging Face card whose YAML header is the second pointer.

`datasets.load_dataset(OUTPUT)` reads its header: the config names the
current data folder, the features make `mask_png` / `confidence_png` decode
as images and `class_ids` carry the class names. The text says what made the
labels. The card is rewritten whole (`layout.replace_file`) after every run
and after every pointer flip, from the pointer and the data files' counts.

Counts cost O(new files), not O(output): `_sfp/counts.json` keeps each data
file's rows and ok rows with its size; a run adds what its records say of
the files it wrote, and only a file the list does not know at that size (an
interrupted run's, one rewritten by a relabel, an upgraded one) has its
status column read.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ..retry import Retry
from ..storage import Location
from .layout import card_path, counts_path, folder_file_sizes, read_small_file, relative_path, replace_file
from .parts import count_rows
from .versions import Pointer

MARKER = "<!-- written by sfp-label: rewritten after every run -->"
_IMAGE_COLUMNS = ("mask_png", "confidence_png")
_CLASS_COLUMN = "class_ids"


def is_our_card(output: Location, retry: Retry) -> bool:
    """Whether the README.md at the output root is one this project wrote (or there is none)."""
    raw = read_small_file(output, card_path(output), retry)
    return raw is None or MARKER.encode() in raw


def card_is_current(output: Location, pointer: Pointer, retry: Retry) -> bool:
    """Whether the card names the pointer's data folder (a run killed between the two writes leaves it stale)."""
    raw = read_small_file(output, card_path(output), retry)
    return raw is not None and f"path: {pointer.data}/*.parquet".encode() in raw


class FileCount(BaseModel):
    """One data file's size (which version of it was counted), rows and ok rows."""

    model_config = ConfigDict(frozen=True)

    size: int
    rows: int
    ok: int


class FolderCounts(BaseModel):
    """`_sfp/counts.json`: the counted files of one data folder, by their path relative to the output."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    folder: str
    files: dict[str, FileCount] = {}


def write_card(
    output: Location, pointer: Pointer, runs: int, retry: Retry, known: Mapping[str, FileCount] | None = None
) -> None:
    """The card of the current version; `known`: counts of files this run wrote (from its records)."""
    counts = counted_files(output, pointer.data, retry, known or {})
    ok, total = sum(c.ok for c in counts.files.values()), sum(c.rows for c in counts.files.values())
    replace_file(output, counts_path(output), counts.model_dump_json().encode(), retry)
    text = render_card(pointer, ok=ok, total=total, runs=runs)
    replace_file(output, card_path(output), text.encode(), retry)


def counted_files(
    output: Location, folder: str, retry: Retry, known: Mapping[str, FileCount] | None = None
) -> FolderCounts:
    """Every file of `folder` with its counts: remembered or `known` when the size matches, else read."""
    remembered = _read_counts(output, retry)
    cached = {**(remembered.files if remembered and remembered.folder == folder else {}), **(known or {})}
    files = {}
    for path, size in folder_file_sizes(output, folder, retry).items():
        name = relative_path(output, path)
        count = cached.get(name)
        files[name] = count if count is not None and count.size == size else _count(output, path, size, retry)
    return FolderCounts(folder=folder, files=files)


def _read_counts(output: Location, retry: Retry) -> FolderCounts | None:
    raw = read_small_file(output, counts_path(output), retry)
    try:
        return FolderCounts.model_validate_json(raw) if raw is not None else None
    except ValidationError:  # damaged: counted again from the files
        return None


def _count(output: Location, path: str, size: int, retry: Retry) -> FileCount:
    """Rows and ok rows of one file; only its status column is read."""
    fs = output.filesystem()
    rows, ok = retry.call(f"counting the rows of {output.uri_of(path)}", lambda: count_rows(fs, path))
    return FileCount(size=size, rows=rows, ok=ok)


def render_card(pointer: Pointer, *, ok: int, total: int, runs: int) -> str:
    identity = pointer.identity
    header = {
        "pretty_name": f"SFP pseudo-labels ({len(identity.classes)} classes)",
        "task_categories": ["image-segmentation"],
        "tags": ["sfp-label", "pseudo-labels", "semantic-segmentation"],
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": f"{pointer.data}/*.parquet"}]}
        ],
        "dataset_info": {"features": card_features(identity.schema(), identity.class_names)},
    }
    body = [
        MARKER,
        f"# SFP pseudo-labels: {total} images ({ok} ok, {total - ok} error rows)",
        "",
        "Semantic-segmentation masks made by training-free open-vocabulary segmentation (SFP) on a frozen CLIP "
        f"ViT, written by {runs} successful sfp-label run(s). One row per image; `mask_png` holds class indices "
        "(index = the class's position below), error rows say why in `error`.",
        "",
        f"- model: `{identity.arch}`, weights `{identity.weights}`",
        f"- data folder: `{pointer.data}/` (created by run `{pointer.created_by}`)",
        f"- vocabulary fingerprint `{identity.vocabulary_fingerprint}`, SFP settings hash `{identity.config_hash}`",
        "",
        "## Classes",
        "",
        "| index | name | synonyms |",
        "|---:|---|---|",
        *(f"| {i} | {_cell(names[0])} | {_cell(', '.join(names[1:]))} |" for i, names in enumerate(identity.classes)),
        "",
        "## SFP settings",
        "",
        "```json",
        json.dumps(identity.config, indent=2, sort_keys=True),
        "```",
        "",
        "## Reading",
        "",
        "```python",
        "from datasets import load_dataset",
        'rows = load_dataset("<this folder or hub repo>", split="train")  # mask_png decodes as an image',
        "```",
        "",
        "`confidence_png` (runs with `output.confidence: true`) holds each pixel's top class probability x 255. "
        "A pixel whose confidence is below its class's threshold (its mask value's; one default for the others) "
        "can be ignored: set to 255 in the masks, left out of COCO and YOLO files.",
        "",
        "```python",
        "from pipeline import read_labels  # sfp-label's reader",
        'images = read_labels("<this folder>", ignore_below=0.5, ignore_below_class={"<class name>": 0.7})',
        "# sfp-label export <this folder> DEST --ignore-below 0.5 --ignore-below-class NAME=0.7 [--format coco|yolo]",
        "```",
        "",
    ]
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n" + "\n".join(body)


def _cell(text: str) -> str:
    """A class name as a Markdown table cell: no raw HTML (names are data), no cell or row breaks."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def card_features(schema: pa.Schema, class_names: list[str]) -> list[dict]:
    """The card's `dataset_info.features`: each column as the datasets library spells it."""
    features = []
    for field in schema:
        if field.name in _IMAGE_COLUMNS:
            features.append({"name": field.name, "dtype": "image"})
        elif field.name == _CLASS_COLUMN:
            labels = {"class_label": {"names": {str(i): name for i, name in enumerate(class_names)}}}
            features.append({"name": field.name, "list": labels})
        else:
            features.append({"name": field.name, **_feature(field.type)})
    return features


def _feature(kind: pa.DataType) -> dict:
    if pa.types.is_list(kind):
        inner = _feature(kind.value_type)
        return {"list": inner.get("dtype") if set(inner) == {"dtype"} else inner.get("struct", inner)}
    if pa.types.is_struct(kind):
        fields = [kind.field(i) for i in range(kind.num_fields)]
        return {"struct": [{"name": f.name, **_feature(f.type)} for f in fields]}
    return {"dtype": _DTYPES[kind]}


_DTYPES = {
    pa.string(): "string",
    pa.binary(): "binary",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.float32(): "float32",
    pa.float64(): "float64",
    pa.bool_(): "bool",
}
