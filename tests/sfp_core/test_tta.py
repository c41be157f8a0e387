"""Test-time augmentation (`flip`, `scales`): mirror symmetry, the views' mean against an independent
computation, outlier statistics from the identity view, one set of batched forwards, and the settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import sfp_core.segmenter as segmenter_module
from sfp_core import SFPConfig, SFPSegmenter, Vocabulary
from sfp_core.windows import resize_image, view_size

REFERENCE_HASH = "b2f1c8057f6cec91"  # SFPConfig().config_hash() before test-time augmentation existed
# Two names the tiny random CLIP splits smooth images between (about 40 / 60% of the pixels; its masks
# with the golden vocabulary are one class almost everywhere, symmetric whatever the code did).
SPLIT = Vocabulary([["sheep"], ["bottle"]])


def blobs(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour regions: unlike noise, they give the tiny random CLIP masks with several classes."""
    small = torch.from_numpy(rng.integers(0, 256, (1, 3, height // 40 + 2, width // 40 + 2)).astype(np.float32))
    image = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)
    return image.clamp(0, 255).round()[0].permute(1, 2, 0).to(torch.uint8).numpy()


def mirror(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array[:, ::-1])


# (original size, settings): windows that tile mirror-symmetrically or not, whole-image mode, three scales
LAYOUTS = {
    "3 columns of windows, not symmetric": ((240, 400), {"short_side": 240, "long_side": 600}),
    "2 columns of windows, symmetric": ((150, 260), {"short_side": 160}),
    "one window smaller than the crop": ((180, 200), {"short_side": 180}),
    "whole image": ((160, 300), {"short_side": 160, "slide_crop": 0}),
    "three scales": ((200, 333), {"short_side": 200, "scales": (0.75, 1.0, 1.25)}),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_flip_is_mirror_symmetric(tiny_backbone, rng, layout):
    """Both runs average the same two views, so the mirror's mask is the mask's mirror."""
    size, settings = LAYOUTS[layout]
    image = blobs(rng, *size)
    segmenter = SFPSegmenter(tiny_backbone, SPLIT, SFPConfig(flip=True, templates="single", **settings))
    mask, mirrored = (r.mask for r in segmenter.segment([image, mirror(image)]))
    assert 0.01 < mask.mean() < 0.99  # both classes hold a share of the pixels
    assert (mirror(mask) == mirrored).mean() >= 0.999


def test_without_flip_the_asymmetric_layout_is_not_mirror_symmetric(tiny_backbone, rng):
    """The test above earns its symmetry: without flip, the same image and layout disagree."""
    size, settings = LAYOUTS["3 columns of windows, not symmetric"]
    image = blobs(rng, *size)
    segmenter = SFPSegmenter(tiny_backbone, SPLIT, SFPConfig(templates="single", **settings))
    mask, mirrored = (r.mask for r in segmenter.segment([image, mirror(image)]))
    assert (mirror(mask) == mirrored).mean() < 0.99


def independent_mean(tiny_backbone, golden_vocab, config: SFPConfig, image: np.ndarray) -> np.ndarray:
    """docs/algorithm.md section 7, item 4 done by hand: each view (the working image resized by its scale,
    mirrored if flipped) segmented alone by the plain path, its logits un-mirrored, resampled bilinearly
    to the original size and averaged."""
    segmenter = SFPSegmenter(tiny_backbone, golden_vocab, config)
    working = segmenter.prepare(image)
    total = 0.0
    for scale, flipped in config.views():
        size = view_size(*working.shape[:2], scale, segmenter.runner.patch)
        view = resize_image(working, size)
        view = mirror(view) if flipped else view
        # a plain segmenter whose preparation leaves the view as it is
        plain_settings = {"flip": False, "scales": [1.0], "short_side": min(size), "long_side": max(size)}
        plain = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(**{**config.to_dict(), **plain_settings}))
        logits = plain.segment([view], original_sizes=[size], return_logits=True)[0].logits
        logits = logits[:, :, ::-1].copy() if flipped else logits
        resampled = F.interpolate(
            torch.from_numpy(logits)[None], size=image.shape[:2], mode="bilinear", align_corners=False
        )[0].numpy()
        total = total + resampled
    return total / len(config.views())


@pytest.mark.parametrize("flip", [False, True])
def test_scales_average_what_each_view_gives_alone(tiny_backbone, golden_vocab, rng, flip):
    config = SFPConfig(short_side=160, long_side=400, flip=flip, scales=(1.25, 1.0, 0.75))
    image = blobs(rng, 150, 260)  # working 160 x 277; views 120 x 208 (one window) and 200 x 346 (two)
    built_in = SFPSegmenter(tiny_backbone, golden_vocab, config).segment([image], return_logits=True)[0]
    expected = independent_mean(tiny_backbone, golden_vocab, config, image)
    assert built_in.logits.shape == expected.shape == (len(golden_vocab.query_names), 150, 260)
    np.testing.assert_allclose(built_in.logits, expected, atol=1e-5, rtol=0)


def test_the_logits_returned_are_what_post_processing_turns_into_the_mask(tiny_backbone, golden_vocab, rng):
    config = SFPConfig(short_side=160, flip=True, scales=(0.75, 1.0))
    result = SFPSegmenter(tiny_backbone, golden_vocab, config).segment([blobs(rng, 150, 260)], return_logits=True)
    logits = result[0].logits
    probs = torch.softmax(config.logit_scale * torch.from_numpy(logits), dim=0)
    pooled = torch.zeros((golden_vocab.num_classes, *logits.shape[1:]))
    index = torch.tensor(golden_vocab.query_to_class).view(-1, 1, 1).expand_as(probs)
    pooled.scatter_reduce_(0, index, probs, "amax", include_self=False)
    np.testing.assert_array_equal(result[0].mask, pooled.argmax(0).numpy())


def test_outlier_statistics_are_the_identity_views(tiny_backbone, golden_vocab, rng):
    images = [blobs(rng, 240, 400), blobs(rng, 150, 260)]
    plain = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(short_side=200))
    tta = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(short_side=200, flip=True, scales=(0.5, 1.0, 1.5)))
    for alone, augmented in zip(plain.segment(images), tta.segment(images), strict=True):
        assert augmented.working_size == alone.working_size
        assert (augmented.stats.windows, augmented.stats.patches) == (alone.stats.windows, alone.stats.patches)
        assert [(o.window, o.window_y, o.window_x, o.row, o.col, o.box) for o in augmented.outliers] == [
            (o.window, o.window_y, o.window_x, o.row, o.col, o.box) for o in alone.outliers
        ]
        np.testing.assert_allclose([o.score for o in augmented.outliers], [o.score for o in alone.outliers], 1e-5)
        assert augmented.stats.outlier_count == alone.stats.outlier_count


def test_every_view_of_every_image_shares_the_batched_forwards(tiny_backbone, golden_vocab, rng, monkeypatch):
    batches = []
    forward = segmenter_module.sfp_forward

    def counting(runner, batch, *args):
        batches.append(len(batch))
        return forward(runner, batch, *args)

    monkeypatch.setattr(segmenter_module, "sfp_forward", counting)
    config = SFPConfig(short_side=240, long_side=600, flip=True, max_windows_per_forward=64)
    segmenter = SFPSegmenter(tiny_backbone, golden_vocab, config)
    assert segmenter.windows_per_forward(224, 224) >= 24
    # 240 x 400: 2 x 3 windows of 224 x 224 per view; two images with two views each
    segmenter.segment([blobs(rng, 240, 400), blobs(rng, 240, 400)])
    assert batches == [24]
    batches.clear()
    limited = SFPSegmenter(tiny_backbone, golden_vocab, config.model_copy(update={"max_windows_per_forward": 5}))
    limited.segment([blobs(rng, 240, 400), blobs(rng, 240, 400)])
    assert batches == [5, 5, 5, 5, 4]


def test_an_image_alone_and_in_a_batch_give_the_same_mean(tiny_backbone, golden_vocab, rng):
    config = SFPConfig(short_side=160, flip=True, scales=(0.75, 1.0, 1.25), max_windows_per_forward=3)
    segmenter = SFPSegmenter(tiny_backbone, golden_vocab, config)
    target = blobs(rng, 150, 260)
    alone = segmenter.segment([target], return_logits=True)[0]
    batch = segmenter.segment([blobs(rng, 300, 90), target, blobs(rng, 90, 90)], return_logits=True)
    np.testing.assert_allclose(batch[1].logits, alone.logits, atol=1e-5, rtol=0)


def test_pamr_and_thresholds_run_on_the_mean(tiny_backbone, golden_vocab, rng):
    image = blobs(rng, 100, 140)
    config = SFPConfig(short_side=112, flip=True, scales=(1.0, 1.5), pamr_steps=2, area_thd=0.1, prob_thd=0.2)
    result = SFPSegmenter(tiny_backbone, golden_vocab, config).segment([image], return_probs=True)[0]
    assert result.mask.shape == (100, 140) and np.isfinite(result.probs).all()
    np.testing.assert_array_equal(result.mask[result.confidence < 0.2], 0)


def test_defaults_leave_the_reference_profile_and_its_hash_alone():
    assert SFPConfig().flip is False and SFPConfig().scales == (1.0,)
    assert SFPConfig().views() == ((1.0, False),)
    assert SFPConfig().config_hash() == REFERENCE_HASH
    assert SFPConfig(flip=False, scales=[1.0]).config_hash() == REFERENCE_HASH
    hashes = {SFPConfig(flip=True), SFPConfig(scales=(0.75, 1.0)), SFPConfig(flip=True, scales=(0.75, 1.0))}
    assert len({c.config_hash() for c in hashes} | {REFERENCE_HASH}) == 4


def test_scales_are_kept_sorted_and_round_trip():
    config = SFPConfig(flip=True, scales=[1.25, 1, 0.75])
    assert config.scales == (0.75, 1.0, 1.25)
    assert config.views() == tuple((s, f) for s in (0.75, 1.0, 1.25) for f in (False, True))
    assert config.to_dict()["scales"] == [0.75, 1.0, 1.25] and config.to_dict()["flip"] is True
    assert SFPConfig.from_dict(config.to_dict()) == config
    assert config.config_hash() == SFPConfig(flip=True, scales=(0.75, 1.0, 1.25)).config_hash()


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"scales": []}, "scales is a non-empty list of short-side factors"),
        ({"scales": 1.25}, "scales is a non-empty list of short-side factors"),
        ({"scales": ["big", 1.0]}, "scales is a non-empty list of short-side factors"),
        ({"scales": [True, 1.0]}, "scales is a non-empty list of short-side factors"),
        ({"scales": [0.1, 1.0]}, r"scales must lie in 0.25..4.0, got 0.1"),
        ({"scales": [1.0, 8]}, r"scales must lie in 0.25..4.0, got 8.0"),
        ({"scales": [1.0, float("nan")]}, r"scales must lie in 0.25..4.0, got nan"),
        ({"scales": [1.0, 1.5, 1.5]}, "scales must not repeat a factor"),
        ({"scales": [0.75, 1.25]}, r"scales must include 1.0 \(the identity view"),
        ({"flip": "maybe"}, "valid boolean"),
    ],
)
def test_bad_settings_are_refused_clearly(settings, message):
    with pytest.raises(ValidationError, match=message) as refused:
        SFPConfig(**settings)
    assert refused.value.errors()[0]["loc"] == (next(iter(settings)),)
