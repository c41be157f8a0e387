"""The golden cases' settings, shared by the CPU parity tests and the self-contained CUDA ones."""

from __future__ import annotations

from sfp_core import SFPConfig


def golden_config(index: dict, case: dict, precision: str = "fp32") -> SFPConfig:
    """The authors' settings for one golden case; its input is already at its working size."""
    return SFPConfig(
        outlier_method=case["outlier_method"],
        logit_scale=index["logit_scale"],
        slide_crop=index["slide_crop"],
        slide_stride=index["slide_stride"],
        prob_thd=index["prob_thd"],
        area_thd=index["area_thd"],
        short_side=min(case["height"], case["width"]),
        precision=precision,
    )
