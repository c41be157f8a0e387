"""The dataset card `OUTPUT/README.md`: a Hugging Face card whose YAML header is the second pointer.

`datasets.load_dataset(OUTPUT)` reads its header: the config names the
current data folder, the features make `mask_png` / `confidence_png` decode
as images and `class_ids` carry the class names. The text says what made the
labels. The card is rewritten whole (`layout.replace_file`) after every run
and after every pointer flip, from the pointer and the data files' footers.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import yaml

from ..retry import Retry
from ..storage import Location
from .layout import card_path, folder_files, read_small_file, replace_file
from .rows import STATUS_OK
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


def write_card(output: Location, pointer: Pointer, runs: int, retry: Retry) -> None:
    files = folder_files(output, pointer.data, retry)
    ok, total = _counts(output, files, retry)
    text = render_card(pointer, ok=ok, total=total, runs=runs)
    replace_file(output, card_path(output), text.encode(), retry)


def _counts(output: Location, files: list[str], retry: Retry) -> tuple[int, int]:
    """(ok rows, all rows) of the current data folder; only the status column is read."""
    if not files:
        return 0, 0
    dataset = pads.dataset(files, filesystem=output.filesystem(), format="parquet")
    status = retry.call(f"counting the rows of {output.uri}", lambda: dataset.to_table(columns=["status"]))
    ok = pc.sum(pc.equal(status.column("status"), STATUS_OK)).as_py() or 0
    return ok, status.num_rows


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
    ]
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n" + "\n".join(body)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


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
