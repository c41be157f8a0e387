"""Test-time augmentation is part of an output's identity when it is on: an incremental run with other
`flip` or `scales` is refused like one with other settings; outputs labelled before it existed still match."""

from __future__ import annotations

from helpers import label_request

from sfp_core import SFPConfig, Vocabulary

RUN = {"vocabulary": Vocabulary([["background"], ["cat"]]), "arch": "SFP-Tiny-16", "weights": "random"}


def identity(tmp_path, config: SFPConfig):
    return label_request(str(tmp_path / "in"), str(tmp_path / "out"), config=config, **RUN).identity()


def test_other_tta_settings_are_another_identity(tmp_path):
    plain = identity(tmp_path, SFPConfig())
    before = plain.model_copy(update={"config": {k: v for k, v in plain.config.items() if k not in ("flip", "scales")}})
    assert (plain.config["flip"], plain.config["scales"]) == (False, [1.0])
    assert before.conflict_with(plain) is None and plain.conflict_with(identity(tmp_path, SFPConfig())) is None
    flipped = identity(tmp_path, SFPConfig(flip=True))
    scaled = identity(tmp_path, SFPConfig(scales=(0.75, 1.0, 1.25)))
    both = identity(tmp_path, SFPConfig(flip=True, scales=(1.25, 1.0, 0.75)))
    for other in (flipped, scaled, both):
        assert before.conflict_with(other) == f"SFP settings {other.config_hash}"
    assert flipped.conflict_with(scaled) == f"SFP settings {scaled.config_hash}"
    assert both.config["scales"] == [0.75, 1.0, 1.25] and both.config["flip"] is True
    assert both.conflict_with(identity(tmp_path, SFPConfig(flip=True, scales=(0.75, 1.0, 1.25)))) is None
