"""The tiny ViT end to end: shapes, determinism, batch independence, `none`, knobs."""

from __future__ import annotations

import numpy as np
import pytest

from sfp_core import SFPConfig, SFPSegmenter, Vocabulary


def _image(rng, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def small_config() -> SFPConfig:
    return SFPConfig(short_side=160, long_side=400, logit_scale=40)


def test_shapes_and_types(tiny_backbone, golden_vocab, small_config, rng):
    segmenter = SFPSegmenter(tiny_backbone, golden_vocab, small_config)
    images = [_image(rng, 120, 200), _image(rng, 300, 90)]
    results = segmenter.segment(images, return_probs=True)
    for image, result in zip(images, results, strict=True):
        assert result.mask.shape == image.shape[:2] and result.mask.dtype == np.uint8
        assert result.probs.shape == (golden_vocab.num_classes, *image.shape[:2])
        assert result.confidence.shape == image.shape[:2]
        np.testing.assert_allclose(result.confidence, result.probs.max(axis=0), rtol=1e-6)
        np.testing.assert_array_equal(result.mask, result.probs.argmax(axis=0))
        assert sum(result.stats.class_pixels.values()) == image.shape[0] * image.shape[1]
        assert result.stats.outlier_count == len(result.outliers)
        assert result.stats.outlier_ratio == pytest.approx(len(result.outliers) / result.stats.patches)
        assert result.stats.mean_confidence == pytest.approx(float(result.confidence.mean()), rel=1e-5)
        for outlier in result.outliers:
            x0, y0, x1, y1 = outlier.box
            assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]


def test_working_size_and_stats_windows(tiny_backbone, golden_vocab, small_config, rng):
    segmenter = SFPSegmenter(tiny_backbone, golden_vocab, small_config)
    result = segmenter.segment([_image(rng, 240, 400)])[0]
    assert result.working_size == (160, 267)
    # crop 224 on a 160 x 267 image: one row, two columns of 160 x 224 windows (10 x 14 patches)
    assert result.stats.windows == 2 and result.stats.patches == 2 * 10 * 14


def test_deterministic(tiny_backbone, golden_vocab, small_config, rng):
    segmenter = SFPSegmenter(tiny_backbone, golden_vocab, small_config)
    image = _image(rng, 150, 260)
    first = segmenter.segment([image], return_probs=True)[0]
    second = segmenter.segment([image], return_probs=True)[0]
    np.testing.assert_array_equal(first.probs, second.probs)
    assert first.outliers == second.outliers


@pytest.mark.parametrize("method", ["som", "l2", "lof"])
def test_batch_independence(tiny_backbone, golden_vocab, method, rng):
    config = SFPConfig(short_side=224, long_side=500, outlier_method=method, max_windows_per_forward=5)
    segmenter = SFPSegmenter(tiny_backbone, golden_vocab, config)
    target = _image(rng, 230, 310)
    others = [_image(rng, 100, 100), _image(rng, 400, 250), _image(rng, 224, 224), _image(rng, 50, 700)]
    alone = segmenter.segment([target], return_probs=True)[0]
    batch = segmenter.segment([others[0], others[1], target, others[2], others[3]], return_probs=True)
    np.testing.assert_allclose(batch[2].probs, alone.probs, atol=1e-5, rtol=0)
    assert {(o.window, o.row, o.col) for o in batch[2].outliers} == {(o.window, o.row, o.col) for o in alone.outliers}
    one_by_one = [segmenter.segment([img], return_probs=True)[0] for img in others]
    for single, batched in zip(one_by_one, [batch[0], batch[1], batch[3], batch[4]], strict=True):
        np.testing.assert_allclose(batched.probs, single.probs, atol=1e-5, rtol=0)


def test_none_skips_purification_while_all_else_runs(tiny_backbone, golden_vocab, rng):
    image = _image(rng, 224, 300)
    none = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(outlier_method="none", short_side=224))
    result = none.segment([image], original_sizes=[image.shape[:2]], return_probs=True)[0]
    assert result.outliers == [] and result.stats.outlier_count == 0
    assert np.isfinite(result.probs).all()
    # An independent way to get an empty outlier set: SOM with gamma = res_cls * res_scale = 0.
    no_candidates = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(res_scale=0.0, short_side=224))
    same = no_candidates.segment([image], original_sizes=[image.shape[:2]], return_probs=True)[0]
    assert same.outliers == []
    np.testing.assert_allclose(result.probs, same.probs, atol=1e-6)
    som = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(short_side=224))
    purified = som.segment([image], original_sizes=[image.shape[:2]], return_probs=True)[0]
    assert purified.outliers and np.abs(purified.probs - result.probs).max() > 1e-4


def test_images_smaller_than_a_patch_and_panoramas(tiny_backbone, golden_vocab, rng):
    segmenter = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig())
    tiny, panorama = _image(rng, 1, 1), _image(rng, 200, 20000)
    results = segmenter.segment([tiny, panorama])
    assert results[0].mask.shape == (1, 1)
    assert results[1].mask.shape == (200, 20000)
    assert results[1].working_size == (20, 2048)


def test_whole_image_mode_and_windows_per_forward_do_not_change_results(tiny_backbone, golden_vocab, rng):
    image = _image(rng, 224, 336)
    base = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(short_side=224))
    chunked = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(short_side=224, max_windows_per_forward=1))
    a = base.segment([image], return_probs=True)[0]
    b = chunked.segment([image], return_probs=True)[0]
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
    whole = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(short_side=224, slide_crop=0))
    w = whole.segment([image])[0]
    assert w.stats.windows == 1 and w.stats.patches == 14 * 21


def test_thresholds_are_applied(tiny_backbone, golden_vocab, rng):
    image = _image(rng, 224, 224)
    strict = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(prob_thd=1.0))
    assert (strict.segment([image])[0].mask == 0).all()


def test_purify_stream_and_detect_block_knobs(tiny_backbone, golden_vocab, rng):
    image = _image(rng, 224, 224)
    sizes = [image.shape[:2]]
    base = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(short_side=224)).segment(
        [image], original_sizes=sizes, return_probs=True
    )[0]
    stream = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(purify_stream=(6, 8), short_side=224))
    streamed = stream.segment([image], original_sizes=sizes, return_probs=True)[0]
    assert np.abs(streamed.probs - base.probs).max() > 1e-6
    earlier = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(detect_block=6, outlier_method="l2", short_side=224))
    assert earlier.config.detect_block == 6
    assert len(earlier.segment([image], original_sizes=sizes)[0].outliers) == 10
    with pytest.raises(ValueError, match="ref_block=12 is out of range"):
        SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(ref_block=12))


def test_pamr_option_runs_at_the_original_size(tiny_backbone, golden_vocab, rng):
    image = _image(rng, 100, 140)
    plain = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(short_side=224))
    refined = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(pamr_steps=3, short_side=224))
    a = plain.segment([image], return_probs=True)[0]
    b = refined.segment([image], return_probs=True)[0]
    assert b.mask.shape == (100, 140) and np.isfinite(b.probs).all()
    assert np.abs(a.probs - b.probs).max() > 1e-4


def test_uint16_masks_above_255_classes(tiny_backbone, rng):
    vocab = Vocabulary([[f"thing {i}"] for i in range(256)])  # one above what uint8 masks allow
    segmenter = SFPSegmenter(tiny_backbone, vocab, SFPConfig(short_side=64, long_side=64))
    result = segmenter.segment([_image(rng, 32, 48)])[0]
    assert result.mask.dtype == np.uint16 and result.mask.shape == (32, 48)


def test_switching_vocabulary_reuses_cached_names(tiny_backbone, golden_vocab):
    segmenter = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig())
    first = segmenter.text_features.clone()
    segmenter.set_vocabulary(Vocabulary([["red square"], ["green disc"]]))
    assert segmenter.text_features.shape[0] == 2
    segmenter.set_vocabulary(golden_vocab)
    assert (segmenter.text_features == first).all()


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.zeros((4, 4), dtype=np.uint8), "H x W x 3 uint8"),
        (np.zeros((4, 4, 3), dtype=np.float32), "H x W x 3 uint8"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "empty"),
        ("not an image", "H x W x 3 uint8"),
    ],
)
def test_bad_images_are_refused_with_a_clear_error(tiny_segmenter, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_segmenter.segment([bad])


def test_prepared_images_must_match_the_segmenters_preparation(tiny_backbone, golden_vocab, rng):
    """A caller that resized elsewhere (the pipeline's decode stage) cannot hand over pixels of another size."""
    segmenter = SFPSegmenter(tiny_backbone, golden_vocab, SFPConfig(short_side=336))
    original = _image(rng, 224, 300)
    prepared = segmenter.prepare(original)
    assert prepared.shape[:2] == segmenter.preparation.size_for(224, 300) == (336, 450)
    direct = segmenter.segment([original])[0]
    handed_over = segmenter.segment([prepared], original_sizes=[(224, 300)])[0]
    np.testing.assert_array_equal(direct.mask, handed_over.mask)
    with pytest.raises(ValueError, match="resized with other settings"):
        segmenter.segment([original], original_sizes=[(224, 300)])


def test_blocks_with_parts_the_runner_does_not_compute_are_refused():
    import copy

    from torch import nn

    from sfp_core.backbone import load_backbone
    from sfp_core.vit import ViTRunner

    visual = copy.deepcopy(load_backbone("SFP-Tiny-16", "random").model.visual)
    ViTRunner(visual)  # the plain tower runs
    visual.transformer.resblocks[3].q_norm = nn.LayerNorm(64)
    with pytest.raises(ValueError, match=r"block 3 .*has q_norm"):
        ViTRunner(visual)
    del visual.transformer.resblocks[3].q_norm
    attn = visual.transformer.resblocks[5].attn
    visual.transformer.resblocks[5].attn = nn.MultiheadAttention(attn.embed_dim, attn.num_heads, add_bias_kv=True)
    with pytest.raises(ValueError, match=r"block 5 .*key/value biases"):
        ViTRunner(visual)
