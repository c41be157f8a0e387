"""Prompt templates as a setting: the reference list by default (hash unchanged), `single`, a list or a
file of templates; the text embedding is the normalised mean over the normalised templates, as before."""

from __future__ import annotations

import pydantic
import pytest
import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from sfp_core import SFPConfig, SFPSegmenter, Vocabulary
from sfp_core.templates import (
    MAX_TEMPLATES_FILE_BYTES,
    REFERENCE_TEMPLATES,
    TemplatesError,
    read_templates,
    templates_fingerprint,
)

NAMES = ["red square", "blue stripe"]


def ensemble(backbone, name: str, templates: list[str]) -> torch.Tensor:
    """The embedding computed here, apart from sfp_core.text: open_clip's own encode_text over every prompt."""
    with torch.inference_mode():
        each = backbone.model.encode_text(backbone.tokenizer([t.replace("{}", name) for t in templates]))
    each = each / each.norm(dim=-1, keepdim=True)
    mean = each.mean(dim=0)
    return mean / mean.norm()


def text_features(backbone, templates) -> torch.Tensor:
    return SFPSegmenter(backbone, Vocabulary(NAMES), SFPConfig(templates=templates)).text_features


def test_the_reference_templates_are_open_clips_imagenet_ones_in_order():
    assert tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES) == REFERENCE_TEMPLATES
    assert len(REFERENCE_TEMPLATES) == 80
    assert SFPConfig().prompt_templates() == REFERENCE_TEMPLATES


def test_the_default_hash_is_the_one_before_templates_were_a_setting():
    # Computed at e2b3e90, before `templates` existed: outputs labelled then must not be refused now.
    assert SFPConfig().config_hash() == "b2f1c8057f6cec91"
    assert SFPConfig.preset("voc21").config_hash() == "b974df94714a4540"
    assert SFPConfig(templates=list(REFERENCE_TEMPLATES)).config_hash() == "b2f1c8057f6cec91"


def test_other_templates_change_the_hash_by_their_text():
    single = SFPConfig(templates="single")
    assert single.config_hash() != SFPConfig().config_hash()
    assert single.config_hash() == SFPConfig(templates=["a photo of a {}."]).config_hash()
    assert templates_fingerprint("single") == templates_fingerprint(["a photo of a {}."])
    assert templates_fingerprint("single") != templates_fingerprint("reference")
    two = SFPConfig(templates=["a photo of a {}.", "a drawing of a {}."])
    assert two.config_hash() not in (single.config_hash(), SFPConfig().config_hash())
    assert two.to_dict()["templates"] == ["a photo of a {}.", "a drawing of a {}."]
    assert SFPConfig.from_dict(two.to_dict()) == two
    assert SFPConfig.from_dict(single.to_dict()) == single


def test_single_is_one_photo_prompt_per_name(tiny_backbone):
    got = text_features(tiny_backbone, "single")
    for row, name in zip(got, NAMES, strict=True):
        with torch.inference_mode():
            alone = tiny_backbone.model.encode_text(tiny_backbone.tokenizer([f"a photo of a {name}."]))[0]
        torch.testing.assert_close(row, alone / alone.norm(), atol=1e-5, rtol=1e-5)


def test_two_templates_from_a_file_give_the_mean_of_the_two(tiny_backbone, tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text("  a photo of a {}.\n\nan origami {} on a table\n", encoding="utf-8")
    templates = read_templates(path)
    assert templates == ("a photo of a {}.", "an origami {} on a table")
    got = text_features(tiny_backbone, templates)
    for row, name in zip(got, NAMES, strict=True):
        torch.testing.assert_close(row, ensemble(tiny_backbone, name, list(templates)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, text_features(tiny_backbone, "single"), atol=1e-3)


def test_the_default_is_the_mean_over_the_80_reference_templates(tiny_backbone):
    got = text_features(tiny_backbone, "reference")
    for row, name in zip(got, NAMES, strict=True):
        torch.testing.assert_close(row, ensemble(tiny_backbone, name, list(REFERENCE_TEMPLATES)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "templates,words",
    [
        ("imagenet", "one of reference, single"),
        ([], "non-empty list"),
        (["a photo"], "has 0 {}"),
        (["a {} and a {}"], "has 2 {}"),
        (["a photo of\na {}"], "line break"),
        ([3], "list of strings"),
    ],
)
def test_templates_that_cannot_hold_a_name_are_refused(templates, words):
    with pytest.raises(pydantic.ValidationError, match="templates") as caught:
        SFPConfig(templates=templates)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    "content,words",
    [
        (b"a photo of a {}.\na photo\n", "line 2: 'a photo' has 0 {}"),
        (b"\na {} next to a {}\n", "line 2: 'a {} next to a {}' has 2 {}"),
        (b"\n  \n", "is empty"),
        (b"a photo of a \xff{}.\n", "is not UTF-8"),
        (b"a photo of a {}.\n" * (MAX_TEMPLATES_FILE_BYTES // 17 + 1), "the limit is"),
    ],
)
def test_bad_templates_files_name_the_file_and_line(tmp_path, content, words):
    path = tmp_path / "templates.txt"
    path.write_bytes(content)
    with pytest.raises(TemplatesError) as caught:
        read_templates(path)
    assert str(path) in str(caught.value) and words in str(caught.value)
