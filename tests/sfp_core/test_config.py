"""SFPConfig: reference defaults, presets, validation and round trips; Vocabulary parsing."""

from __future__ import annotations

import pydantic
import pytest
from helpers import ROOT

from sfp_core import PRESETS, SFPConfig, Vocabulary


def test_defaults_are_the_reference_profile():
    config = SFPConfig()
    assert (config.outlier_method, config.top_k, config.res_cls, config.res_scale, config.tau) == (
        "som",
        10,
        0.3,
        5.0,
        0.4,
    )
    assert (config.ref_block, config.aux_block, config.fuse_start, config.fuse_end) == (9, 4, 4, 10)
    assert (config.slide_crop, config.slide_stride, config.short_side, config.long_side) == (224, 112, 336, 2048)
    assert (config.pamr_steps, config.area_thd, config.precision, config.detect_block) == (0, None, "fp32", None)
    assert config.with_block_defaults(12).detect_block == 11
    assert config.with_block_defaults(24).detect_block == 23


@pytest.mark.parametrize(
    "name,short_side,logit_scale,prob_thd,area_thd",
    [
        ("voc21", 336, 50, 0.15, 0.1),
        ("context60", 336, 40, 0.15, None),
        ("coco_object", 336, 55, 0.35, None),
        ("voc20", 336, 40, 0.0, None),
        ("context59", 336, 40, 0.0, None),
        ("coco_stuff", 336, 40, 0.0, None),
        ("cityscapes", 560, 40, 0.0, None),
        ("ade20k", 384, 40, 0.0, None),
    ],
)
def test_presets_follow_the_spec_table(name, short_side, logit_scale, prob_thd, area_thd):
    config = SFPConfig.preset(name)
    assert (config.short_side, config.logit_scale, config.prob_thd, config.area_thd) == (
        short_side,
        logit_scale,
        prob_thd,
        area_thd,
    )
    assert config.slide_crop == 224 and config.outlier_method == "som"


def test_every_preset_has_a_vocabulary_file():

    vocab_dir = ROOT / "jobs" / "vocab"
    expected_classes = {
        "voc21": 21,
        "context60": 60,
        "coco_object": 81,
        "voc20": 20,
        "context59": 59,
        "coco_stuff": 171,
        "cityscapes": 19,
        "ade20k": 150,
    }
    assert set(PRESETS) == set(expected_classes)
    for name, count in expected_classes.items():
        assert Vocabulary.from_file(vocab_dir / f"{name}.txt").num_classes == count, name
    background = Vocabulary.from_file(vocab_dir / "voc21.txt").classes[0]
    assert background[0] == "background" and len(background) > 5


def test_preset_overrides_and_unknown_preset():
    assert SFPConfig.preset("VOC21", prob_thd=0.3).prob_thd == 0.3
    with pytest.raises(ValueError, match="unknown SFP preset 'voc99'"):
        SFPConfig.preset("voc99")


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"outlier_method": "median"}, "outlier_method"),
        ({"top_k": 0}, "top_k"),
        ({"lof_contamination": 1.5}, "lof_contamination"),
        ({"precision": "fp8"}, "precision"),
        ({"slide_stride": 0}, "slide_stride"),
        ({"no_such_knob": 1}, "no_such_knob"),
        ({"fuse_start": 8, "fuse_end": 5}, "fuse_start"),
        ({"slide_crop": 224, "slide_stride": 300}, "slide_stride"),
        ({"prob_thd": 2.0}, "prob_thd"),
    ],
)
def test_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(pydantic.ValidationError, match=field):
        SFPConfig(**kwargs)


def test_round_trip_and_hash():
    config = SFPConfig.preset("voc21", purify_stream=(3, 5))
    data = config.to_dict()
    assert data["purify_stream"] == [3, 5]
    assert SFPConfig.from_dict(data) == config
    assert SFPConfig.from_dict({"preset": "voc21", "purify_stream": [3, 5]}) == config
    assert config.config_hash() == SFPConfig.from_dict(data).config_hash()
    assert config.config_hash() != SFPConfig.preset("voc21").config_hash()
    assert config.config_hash() == config.model_copy(update={"max_windows_per_forward": 3}).config_hash()


def test_config_is_immutable():
    with pytest.raises(pydantic.ValidationError):
        SFPConfig().top_k = 3


def test_vocabulary_parsing_and_views(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("background , sky,wall\n\n  cat\ndog, puppy\n")
    vocab = Vocabulary.from_file(path)
    assert vocab.classes == (("background", "sky", "wall"), ("cat",), ("dog", "puppy"))
    assert vocab.query_names == ["background", "sky", "wall", "cat", "dog", "puppy"]
    assert vocab.query_to_class == [0, 0, 0, 1, 2, 2]
    assert vocab.class_names == ["background", "cat", "dog"]
    assert Vocabulary.from_lines(vocab.to_lines()) == vocab
    assert Vocabulary(["cat", ["dog", "puppy"]]).classes == (("cat",), ("dog", "puppy"))


@pytest.mark.parametrize(
    "classes,message",
    [
        ([], "empty"),
        ([["cat", ""]], "class 0 has an empty name"),
        ([["a"], []], "class 1"),
        # One class per line is how names are stored: a break inside one would shift every later class.
        (["sky", "cat\ndog"], "class 1 has a name with a line break"),
        (["sky", ["car", "bus\u2028tram"]], "class 1 has a name with a line break"),
        (["a\x85b"], "class 0 has a name with a line break"),
    ],
)
def test_bad_vocabularies(classes, message):
    with pytest.raises(ValueError, match=message):
        Vocabulary(classes)


def test_vocabulary_file_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read vocabulary file"):
        Vocabulary.from_file(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("cat\ndog,,puppy\n")
    with pytest.raises(ValueError, match=r"bad\.txt: vocabulary class 1"):
        Vocabulary.from_file(bad)
