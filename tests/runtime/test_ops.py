"""runtime.ops: the NumPy reference on hand-computed cases, the C extension against the
reference, and the OpenCV baseline chain against the reference within stated tolerances."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime.ops as ops
from runtime.ops import opencv_chain, reference
from runtime.ops.reference import OpsInputError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture
def c_ops():
    """runtime.ops running the C extension; a missing build is a failure, not a skip."""
    if ops.BACKEND != "c":
        pytest.fail("the C extension runtime.ops._ops is not built: run `pip install -e .`")
    return ops


@pytest.fixture(params=["reference", "c", "opencv_chain"])
def any_impl(request):
    if request.param == "c":
        return request.getfixturevalue("c_ops")
    return {"reference": reference, "opencv_chain": opencv_chain}[request.param]


def random_frame(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def street_like_frame(rng, height, width):
    """Smooth gradients plus sensor noise: the statistics of a real frame, not white noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([80 + 120 * y / height, 60 + 150 * x / width, 200 - 100 * (x + y) / (height + width)], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def half_ulp(values: np.ndarray) -> np.ndarray:
    """Half the float16 spacing at each value: the largest correct rounding error."""
    return np.spacing(np.abs(values).astype(np.float16)).astype(np.float64) / 2


# ---------------------------------------------------------------------------------------------
# Reference: hand-computed values.


def test_half_pixel_taps_by_hand():
    # 2 -> 3 samples src = -1/6, 1/2, 7/6: the outer two clamp to the edge pixels.
    i0, i1, frac, frac_q = reference.half_pixel_taps(2, 3)
    assert i0.tolist() == [0, 0, 1] and i1.tolist() == [0, 1, 1]
    assert frac.tolist() == [0.0, 0.5, 0.0] and frac_q.tolist() == [0, 1024, 0]
    # 4 -> 3 samples src = 1/6, 3/2, 17/6.
    i0, i1, frac, frac_q = reference.half_pixel_taps(4, 3)
    assert i0.tolist() == [0, 1, 2] and i1.tolist() == [1, 2, 3]
    np.testing.assert_allclose(frac, [1 / 6, 1 / 2, 5 / 6], rtol=1e-7)
    assert frac_q.tolist() == [341, 1024, 1707]  # 2048/6 = 341.33, 2048*5/6 = 1706.67


def test_align_corners_taps_by_hand():
    i0, i1, frac, _ = reference.align_corners_taps(3, 5)  # src = 0, 0.5, 1, 1.5, 2
    assert i0.tolist() == [0, 0, 1, 1, 2] and i1.tolist() == [1, 1, 2, 2, 2]
    assert frac.tolist() == [0.0, 0.5, 0.0, 0.5, 0.0]
    i0, i1, frac, _ = reference.align_corners_taps(4, 1)  # one output pixel samples src 0
    assert (i0.tolist(), i1.tolist(), frac.tolist()) == ([0], [1], [0.0])


def test_nearest_indices_by_hand():
    assert reference.nearest_indices(3, 5).tolist() == [0, 0, 1, 1, 2]
    assert reference.nearest_indices(5, 2).tolist() == [0, 2]
    assert reference.nearest_indices(2, 98)[49] == 1  # exact, where OpenCV's float math gives 0


def test_preprocess_by_hand():
    # A 1x2 frame widened to 1x3: [p0, (p0 + p1) / 2, p1] per channel.
    frame = np.array([[[0, 51, 102], [255, 153, 204]]], dtype=np.uint8)  # BGR
    out = reference.preprocess(frame, (1, 3), mean=(0.4, 0.4, 0.5), std=(0.2, 0.2, 0.5))
    # R: (0.4, 0.6, 0.8 - 0.4) / 0.2; G: (0.2, 0.4, 0.6 - 0.4) / 0.2; B: (0, 0.5, 1 - 0.5) / 0.5.
    expected = np.array([[[0, 1, 2]], [[-1, 0, 1]], [[-1, 0, 1]]], dtype=np.float32)
    assert out.shape == (3, 1, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    as_bytes = reference.preprocess(frame, (1, 3), MEAN, STD, layout="nhwc_uint8")
    # The blue midpoint 127.5 rounds half up to 128.
    assert as_bytes.tolist() == [[[102, 51, 0], [153, 102, 128], [204, 153, 255]]]


def test_preprocess_2x2_to_1x1_averages_the_four_pixels():
    frame = np.array([[[0, 0, 10], [0, 0, 20]], [[0, 0, 30], [0, 0, 41]]], dtype=np.uint8)
    out = reference.preprocess(frame, (1, 1), (0, 0, 0), (1 / 255, 1, 1))
    np.testing.assert_allclose(out[0, 0, 0], 25.25, rtol=1e-6)  # red = (10 + 20 + 30 + 41) / 4
    assert reference.preprocess(frame, (1, 1), MEAN, STD, layout="nhwc_uint8")[0, 0, 0] == 25


def test_preprocess_letterbox_region_by_hand():
    # The 1x2 frame of test_preprocess_by_hand kept 1x2 in columns 1..2 of a 1x4 input: the
    # padding is the mean colour, 0.0 once normalised, and its bytes floor(mean * 255 + 0.5).
    frame = np.array([[[0, 51, 102], [255, 153, 204]]], dtype=np.uint8)  # BGR
    out = reference.preprocess(frame, (1, 4), mean=(0.4, 0.4, 0.5), std=(0.2, 0.2, 0.5), region=(0, 1, 1, 2))
    expected = np.array([[[0, 0, 2, 0]], [[0, -1, 1, 0]], [[0, -1, 1, 0]]], dtype=np.float32)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    as_bytes = reference.preprocess(frame, (2, 2), (0.4, 0.5, 1.0), STD, layout="nhwc_uint8", region=(1, 0, 1, 2))
    # 0.4 * 255 = 102, 0.5 * 255 = 127.5 -> 128, 1.0 * 255 = 255.
    assert as_bytes.tolist() == [[[102, 128, 255], [102, 128, 255]], [[102, 51, 0], [204, 153, 255]]]


def test_pad_bytes_round_half_up_and_clip():
    # 0.485 * 255 = 123.675, 0.456 * 255 = 116.28, 0.406 * 255 = 103.53.
    assert reference.pad_bytes(MEAN).tolist() == [124, 116, 104]
    assert reference.pad_bytes((-0.1, 1.2, 0.5)).tolist() == [0, 255, 128]


def test_upsample_argmax_2x2_to_3x3_by_hand():
    # Class 0 upsamples to [[0, 1, 2], [2, 3, 4], [4, 5, 6]]; class 1 is 3 everywhere, so the
    # centre (exactly 3.0 for both) is a tie that the lower class wins.
    logits = np.array([[[0, 2], [4, 6]], [[3, 3], [3, 3]]], dtype=np.float32)
    np.testing.assert_array_equal(reference.upsample_logits(logits, (3, 3))[0],
                                  [[0, 1, 2], [2, 3, 4], [4, 5, 6]])
    assert reference.upsample_argmax(logits, (3, 3)).tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]


def test_argmax_by_hand_lowest_class_wins_ties():
    logits = np.array([[[1, 5, 2, 2]], [[3, 5, 1, 2]], [[2, 0, 3, 2]]], dtype=np.float32)
    assert reference.argmax(logits).tolist() == [[1, 0, 2, 0]]


INF, NAN = np.inf, np.nan


@pytest.mark.parametrize("column, label", [
    ([NAN, -INF, 1.0], 2), ([NAN, -INF], 0), ([NAN, NAN], 0), ([-INF, NAN], 0), ([NAN, -5.0], 1),
    ([1.0, INF, INF], 1), ([INF, NAN, INF], 0), ([-INF, -INF, -3.0], 2)])
@pytest.mark.parametrize("impl", ["reference", "c"])
def test_argmax_non_finite_by_hand(request, impl, column, label):
    """NaN counts as -inf; every tie (+inf with +inf, NaN with -inf) goes to the lowest class."""
    module = reference if impl == "reference" else request.getfixturevalue("c_ops")
    for dtype in (np.float32, np.float16):
        labels, seen = module.argmax(np.array(column, dtype=dtype).reshape(-1, 1, 1), report_nonfinite=True)
        assert (labels.tolist(), seen) == ([[label]], True)


@pytest.mark.parametrize("class0, class1, labels", [
    ([INF, 0.0], [1.0, 1.0], [0, 0, 1]),       # 2^126 + 0.5 * (0 - 2^126) = 2^125 beats 1
    ([-INF, 0.0], [-1.0, -1.0], [1, 1, 0]),    # -2^126, -2^125 lose to -1
    ([NAN, 0.0], [-1.0, -1.0], [1, 1, 0]),     # NaN interpolates as -inf does
    ([INF, -INF], [0.0, 0.0], [0, 0, 1]),      # 2^126 + 0.5 * (-2^127) = 0: a tie, class 0
    ([INF, INF], [INF, 0.0], [0, 0, 0]),       # 2^126 against 2^126, then 2^126 against 2^125
    ([NAN, NAN], [-INF, -INF], [0, 0, 0])])    # both -2^126 everywhere: ties
@pytest.mark.parametrize("impl", ["reference", "c"])
def test_upsample_argmax_non_finite_by_hand(request, impl, class0, class1, labels):
    """1 x 2 -> 1 x 3 samples x = 0, 0.5, 1; logits saturate to +-2^126 before interpolating."""
    module = reference if impl == "reference" else request.getfixturevalue("c_ops")
    for dtype in (np.float32, np.float16):
        got, seen = module.upsample_argmax(np.array([[class0], [class1]], dtype=dtype), (1, 3), report_nonfinite=True)
        assert (got.tolist(), seen) == ([labels], True)


def test_saturate_logits_by_hand():
    limit = 2.0 ** 126
    values = np.array([NAN, INF, -INF, 3e38, -3e38, 1.5, -0.0], np.float32)
    assert reference.saturate_logits(values).tolist() == [-limit, limit, -limit, limit, -limit, 1.5, -0.0]
    assert not reference.has_nonfinite(values[3:]) and reference.has_nonfinite(values[:1])


def nonfinite_logits(kind: str, dtype, shape=(7, 23, 41), seed=0) -> np.ndarray:
    """Random logits with 10 % of the entries NaN, +inf, -inf or a mix of the three; "corner"
    makes every entry non-finite (whole pixels of ties between infinities)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape).astype(dtype)
    specials = {"nan": [NAN], "+inf": [INF], "-inf": [-INF], "mixed": [NAN, INF, -INF], "corner": [NAN, INF, -INF]}
    mask = rng.random(shape) < (1.0 if kind == "corner" else 0.1)
    logits[mask] = rng.choice(specials[kind], int(mask.sum()))
    return logits


NONFINITE_KINDS = ["nan", "+inf", "-inf", "mixed", "corner"]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("kind", NONFINITE_KINDS)
def test_c_non_finite_logits_are_the_reference_on_every_pixel(c_ops, kind, dtype):
    logits = nonfinite_logits(kind, dtype)
    labels, seen = c_ops.argmax(logits, report_nonfinite=True)
    np.testing.assert_array_equal(labels, reference.argmax(logits))
    assert seen is True
    for out_hw in ((47, 113), (23, 41), (5, 3), (1, 1)):
        labels, seen = c_ops.upsample_argmax(logits, out_hw, report_nonfinite=True)
        np.testing.assert_array_equal(labels, reference.upsample_argmax(logits, out_hw), err_msg=f"{out_hw}")
        assert seen is True


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_c_reports_finite_logits_as_finite(c_ops, dtype):
    """The largest finite values (float16 65504, float32 3.4e38) are not inf; one inf in the last
    pixel of the last class is seen."""
    logits = np.full((3, 5, 2100), np.finfo(dtype).max, dtype)  # more pixels than one argmax chunk
    logits[1] = np.finfo(dtype).min
    assert c_ops.argmax(logits, report_nonfinite=True)[1] is False
    assert c_ops.upsample_argmax(logits, (9, 4000), report_nonfinite=True)[1] is False
    logits[-1, -1, -1] = INF
    assert c_ops.argmax(logits, report_nonfinite=True)[1] is True
    assert c_ops.upsample_argmax(logits, (9, 4000), report_nonfinite=True)[1] is True


def test_blend_one_pixel_by_hand():
    frame = np.array([[[10, 100, 200], [10, 100, 200]]], dtype=np.uint8)  # BGR
    labels = np.array([[0, 255]], dtype=np.uint8)
    palette = np.array([[255, 0, 51]], dtype=np.uint8)  # RGB -> BGR (51, 0, 255)
    out = reference.blend(frame, labels, palette, alpha=0.25)
    # 0.75 * (10, 100, 200) + 0.25 * (51, 0, 255) = (20.25, 75, 213.75); ignore keeps the pixel.
    assert out.tolist() == [[[20, 75, 214], [10, 100, 200]]]


def test_blend_rounds_half_up_and_quantises_alpha():
    assert reference.quantise_alpha("blend", 0.5) == 128
    assert reference.quantise_alpha("blend", 1 / 3) == 85  # 85.33
    assert reference.quantise_alpha("blend", 2.5 / 256) == 3  # half up, not to even
    frame = np.full((1, 1, 3), 1, dtype=np.uint8)
    palette = np.array([[2, 2, 2]], dtype=np.uint8)
    assert reference.blend(frame, np.zeros((1, 1), np.uint8), palette, 0.5).tolist() == [[[2, 2, 2]]]


def test_blend_samples_smaller_labels_nearest():
    frame = np.zeros((4, 5, 3), dtype=np.uint8)
    labels = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    palette = np.arange(6, dtype=np.uint8)[:, None].repeat(3, 1) * 10
    out = reference.blend(frame, labels, palette, alpha=1.0)
    # rows floor(y * 2 / 4) = 0, 0, 1, 1; columns floor(x * 3 / 5) = 0, 0, 1, 1, 2.
    assert out[..., 0].tolist() == [[0, 0, 10, 10, 20]] * 2 + [[30, 30, 40, 40, 50]] * 2


# ---------------------------------------------------------------------------------------------
# C extension against the reference.


@pytest.mark.parametrize("frame_hw, out_hw", [
    ((37, 53), (20, 31)),    # downscale
    ((37, 53), (80, 101)),   # upscale
    ((37, 53), (37, 53)),    # same size
    ((37, 53), (90, 17)),    # up in one axis, down in the other
    ((1, 1), (3, 4)),
])
def test_c_preprocess_matches_reference(c_ops, frame_hw, out_hw):
    frame = random_frame(np.random.default_rng(sum(frame_hw + out_hw)), *frame_hw)
    expected = reference.preprocess(frame, out_hw, MEAN, STD)
    got = c_ops.preprocess(frame, out_hw, MEAN, STD)
    assert got.shape == (3, *out_hw) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    as_bytes = c_ops.preprocess(frame, out_hw, MEAN, STD, layout="nhwc_uint8")
    np.testing.assert_array_equal(as_bytes, reference.preprocess(frame, out_hw, MEAN, STD, layout="nhwc_uint8"))


def test_c_preprocess_street_like_frame(c_ops):
    rng = np.random.default_rng(5)
    frame = street_like_frame(rng, 120, 160)
    for out_hw in [(64, 128), (200, 300)]:
        np.testing.assert_allclose(c_ops.preprocess(frame, out_hw, MEAN, STD),
                                   reference.preprocess(frame, out_hw, MEAN, STD), rtol=1e-6, atol=1e-5)
        np.testing.assert_array_equal(c_ops.preprocess(frame, out_hw, MEAN, STD, layout="nhwc_uint8"),
                                      reference.preprocess(frame, out_hw, MEAN, STD, layout="nhwc_uint8"))


@pytest.mark.parametrize("mean, std, float_error", [
    (MEAN, STD, 1e-6),                   # v * scale + bias cancels near 0: absolute float32 error
    ((0, 0, 0), (1e4, 1e4, 1e4), 0.0),   # subnormal halves
    ((0, 0, 0), (1e-9, 1e-9, 1e-9), 0.0),  # overflow to inf
], ids=["normal", "subnormal-halves", "overflow-to-inf"])
def test_c_preprocess_float16_rounds_to_nearest(c_ops, mean, std, float_error):
    frame = random_frame(np.random.default_rng(6), 37, 53)
    got = c_ops.preprocess(frame, (29, 41), mean, std, dtype=np.float16)
    exact = reference.preprocess(frame, (29, 41), mean, std)  # float32
    assert got.dtype == np.float16
    finite = np.abs(exact) < 65520  # float16 rounds 65520 and above to inf
    np.testing.assert_array_equal(np.isinf(got), ~finite)
    error = np.abs(got[finite].astype(np.float64) - exact[finite])
    assert np.all(error <= half_ulp(exact[finite]) + float_error + 1e-6 * np.abs(exact[finite]))


def test_c_float16_output_rounds_ties_to_even(c_ops):
    # On a black frame every output is -mean / std, so with std 1 chosen values reach the
    # float16 conversion unchanged: midpoints between neighbouring halves (ties), their float32
    # neighbours, subnormals and the overflow edge.
    halves = np.arange(0x7c00, dtype=np.uint16).view(np.float16).astype(np.float32)
    midpoints = (halves[:-1] + halves[1:]) / 2  # exact in float32
    picked = np.concatenate([midpoints[:1100], midpoints[1100::23]])
    values = np.concatenate([picked, np.nextafter(picked, np.float32(0)), np.nextafter(picked, np.float32(np.inf)),
                             [65504, 65519.996, 65520, 1e30, 2.0 ** -25, 2.0 ** -24 * 1.5]]).astype(np.float32)
    values[::2] *= -1
    values = np.concatenate([values, np.zeros(-len(values) % 3, np.float32)]).reshape(-1, 3)
    black = np.zeros((1, 1, 3), np.uint8)
    got = np.array([c_ops.preprocess(black, (1, 1), -v, (1, 1, 1), dtype=np.float16)[:, 0, 0] for v in values])
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("region", [(0, 0, 20, 31), (3, 0, 14, 31), (0, 5, 20, 21), (2, 7, 1, 1), (19, 30, 1, 1)])
def test_c_preprocess_letterbox_matches_reference(c_ops, region):
    frame = random_frame(np.random.default_rng(sum(region)), 37, 53)
    for kwargs in ({}, {"dtype": np.float16}):
        got = c_ops.preprocess(frame, (20, 31), MEAN, STD, region=region, **kwargs)
        expected = reference.preprocess(frame, (20, 31), MEAN, STD, region=region, **kwargs)
        np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=1e-3, atol=1e-5)
        top, left, height, width = region
        padding = np.ones((20, 31), bool)
        padding[top:top + height, left:left + width] = False
        assert not got[:, padding].any()  # exactly 0.0 outside the frame
    np.testing.assert_array_equal(c_ops.preprocess(frame, (20, 31), MEAN, STD, layout="nhwc_uint8", region=region),
                                  reference.preprocess(frame, (20, 31), MEAN, STD, layout="nhwc_uint8", region=region))


def test_c_preprocess_writes_into_out(c_ops):
    frame = random_frame(np.random.default_rng(7), 37, 53)
    for kwargs, out in [({}, np.empty((3, 20, 31), np.float32)),
                        ({"dtype": np.float16}, np.empty((3, 20, 31), np.float16)),
                        ({"layout": "nhwc_uint8"}, np.empty((20, 31, 3), np.uint8))]:
        result = c_ops.preprocess(frame, (20, 31), MEAN, STD, out=out, **kwargs)
        assert result is out
        np.testing.assert_array_equal(out, c_ops.preprocess(frame, (20, 31), MEAN, STD, **kwargs))


def smooth_logits(rng, classes, height, width, scale=4):
    """Class fields varying over about `scale` pixels: regions, so most cells are filled."""
    coarse = rng.standard_normal((classes, height // scale + 2, width // scale + 2)) * 3
    rows = np.linspace(0, coarse.shape[1] - 1, height)
    cols = np.linspace(0, coarse.shape[2] - 1, width)
    r0 = np.minimum(rows.astype(int), coarse.shape[1] - 2)
    c0 = np.minimum(cols.astype(int), coarse.shape[2] - 2)
    fy, fx = (rows - r0)[:, None], (cols - c0)[None, :]
    top = coarse[:, r0][:, :, c0] * (1 - fx) + coarse[:, r0][:, :, c0 + 1] * fx
    bottom = coarse[:, r0 + 1][:, :, c0] * (1 - fx) + coarse[:, r0 + 1][:, :, c0 + 1] * fx
    return np.ascontiguousarray(top * (1 - fy) + bottom * fy, dtype=np.float32)


def near_tie_logits(rng, height, width):
    """Class 0 one float32 step below class 1 everywhere: class 1 wins every low-resolution
    pixel, yet the interpolation's rounding ties or reverses the two between them."""
    upper = rng.uniform(-4, 4, (1, height, width)).astype(np.float32)
    return np.concatenate([np.nextafter(upper, np.float32(-np.inf)), upper])


def assert_upsample_matches_reference(c_ops, logits, out_hw):
    for dtype in (np.float32, np.float16):
        source = np.ascontiguousarray(logits.astype(dtype))
        got = c_ops.upsample_argmax(source, out_hw)
        assert got.shape == out_hw and got.dtype == np.uint8
        np.testing.assert_array_equal(got, reference.upsample_argmax(source, out_hw))


@pytest.mark.parametrize("classes", [1, 3, 19])
@pytest.mark.parametrize("low_hw, out_hw", [((7, 9), (37, 53)), ((16, 32), (121, 250)), ((7, 9), (7, 9)),
                                            ((9, 13), (5, 6)), ((1, 5), (3, 11)), ((6, 1), (20, 3))])
def test_c_upsample_argmax_equals_reference_on_random_logits(c_ops, classes, low_hw, out_hw):
    rng = np.random.default_rng(classes * 100 + sum(out_hw))
    assert_upsample_matches_reference(c_ops, rng.standard_normal((classes, *low_hw)), out_hw)
    assert_upsample_matches_reference(c_ops, smooth_logits(rng, classes, *low_hw), out_hw)
    assert_upsample_matches_reference(c_ops, np.round(rng.standard_normal((classes, *low_hw))), out_hw)  # ties


def test_c_upsample_argmax_fills_whole_regions_like_the_reference(c_ops):
    rng = np.random.default_rng(8)
    logits = smooth_logits(rng, 19, 32, 64, scale=12)
    labels = reference.upsample_argmax(logits, (270, 480))
    assert len(np.unique(labels)) > 3  # several regions, most cells inside one
    np.testing.assert_array_equal(c_ops.upsample_argmax(logits, (270, 480)), labels)


@pytest.mark.parametrize("seed", range(6))
def test_c_upsample_argmax_keeps_the_reference_on_near_ties(c_ops, seed):
    rng = np.random.default_rng(seed)
    logits = near_tie_logits(rng, 4, 5)
    expected = reference.upsample_argmax(logits, (23, 29))
    # Adversarial: filling cells whose four corners agree would give class 1 everywhere.
    assert (reference.argmax(logits) == 1).all() and (expected == 0).any()
    np.testing.assert_array_equal(c_ops.upsample_argmax(logits, (23, 29)), expected)


def test_c_upsample_argmax_exact_ties_at_the_corners(c_ops):
    # Class 0 upsamples to [[0, 1, 2], [2, 3, 4], [4, 5, 6]]; class 1 is 3 everywhere, so the
    # centre (exactly 3.0 for both) is a tie that the lower class wins.
    logits = np.array([[[0, 2], [4, 6]], [[3, 3], [3, 3]]], dtype=np.float32)
    assert c_ops.upsample_argmax(logits, (3, 3)).tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    # Equal classes at every corner: the lowest wins everywhere.
    equal = np.repeat(np.random.default_rng(9).standard_normal((1, 5, 6)).astype(np.float32), 3, axis=0)
    assert not c_ops.upsample_argmax(equal, (17, 19)).any()
    half_equal = equal.copy()
    half_equal[1, :, :3] += 1  # class 1 wins the left half, ties class 0 on the right
    assert_upsample_matches_reference(c_ops, half_equal, (17, 19))


@pytest.mark.parametrize("scale", [1e-30, 1e-40, 1e36, 3e38], ids=["tiny", "subnormal", "huge", "near-max"])
def test_c_upsample_argmax_at_extreme_magnitudes(c_ops, scale):
    rng = np.random.default_rng(10)
    logits = (smooth_logits(rng, 4, 6, 7, scale=3) * np.float32(scale / 12)).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = reference.upsample_argmax(logits, (31, 37))
    np.testing.assert_array_equal(c_ops.upsample_argmax(logits, (31, 37)), expected)


@pytest.mark.parametrize("classes, hw", [(3, (37, 53)), (19, (29, 151)), (1, (5, 7))])
def test_c_argmax_matches_reference(c_ops, classes, hw):
    logits = np.random.default_rng(classes).standard_normal((classes, *hw)).astype(np.float32)
    logits[:, ::3] = np.round(logits[:, ::3])  # plenty of exact ties
    for dtype in (np.float32, np.float16):
        np.testing.assert_array_equal(c_ops.argmax(logits.astype(dtype)), reference.argmax(logits.astype(dtype)))
    tie = np.array([[[1, 5, 2, 2]], [[3, 5, 1, 2]], [[2, 0, 3, 2]]], dtype=np.float32)
    assert c_ops.argmax(tie).tolist() == [[1, 0, 2, 0]]


def test_c_float16_logits_every_finite_value(c_ops):
    # Two random permutations of all finite halves compared pairwise, both ops, including
    # subnormals, signed zeros and the extremes.
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    halves = halves[np.isfinite(halves)]
    rng = np.random.default_rng(9)
    logits = np.stack([rng.permutation(halves), rng.permutation(halves)])[:, None, :]
    np.testing.assert_array_equal(c_ops.argmax(logits), reference.argmax(logits))
    width = logits.shape[2]
    np.testing.assert_array_equal(c_ops.upsample_argmax(logits, (1, width)),
                                  reference.upsample_argmax(logits, (1, width)))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 0.3])
@pytest.mark.parametrize("labels_hw", [(37, 53), (11, 13), (80, 100)])
def test_c_blend_matches_reference_bit_exactly(c_ops, alpha, labels_hw):
    rng = np.random.default_rng(sum(labels_hw))
    frame = random_frame(rng, 37, 53)
    labels = rng.integers(0, 25, labels_hw, dtype=np.uint8)  # >= 19 keeps the frame
    labels[0, 0] = 255
    palette = rng.integers(0, 256, (19, 3), dtype=np.uint8)
    np.testing.assert_array_equal(c_ops.blend(frame, labels, palette, alpha),
                                  reference.blend(frame, labels, palette, alpha))


def test_c_blend_in_place_and_out(c_ops):
    rng = np.random.default_rng(10)
    frame = street_like_frame(rng, 37, 53)
    labels = rng.integers(0, 4, (37, 53), dtype=np.uint8)
    palette = rng.integers(0, 256, (3, 3), dtype=np.uint8)
    expected = reference.blend(frame, labels, palette, 0.6)
    out = np.empty_like(frame)
    assert c_ops.blend(frame, labels, palette, 0.6, out=out) is out
    np.testing.assert_array_equal(out, expected)
    assert c_ops.blend(frame, labels, palette, 0.6, out=frame) is frame
    np.testing.assert_array_equal(frame, expected)


def test_c_results_do_not_depend_on_thread_count(c_ops):
    rng = np.random.default_rng(11)
    frame = random_frame(rng, 37, 53)
    logits = rng.standard_normal((5, 9, 11)).astype(np.float32)
    full = rng.standard_normal((5, 61, 77)).astype(np.float32)
    regions = smooth_logits(rng, 7, 12, 15)
    before = c_ops.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            c_ops.set_num_threads(count)
            assert c_ops.get_num_threads() == count
            results.append((c_ops.preprocess(frame, (41, 29), MEAN, STD), c_ops.upsample_argmax(logits, (40, 50)),
                            c_ops.argmax(full), c_ops.blend(frame, logits[0].astype(np.uint8), np.eye(3, dtype=np.uint8), 0.5),
                            c_ops.preprocess(frame, (41, 29), MEAN, STD, region=(4, 1, 30, 27)),
                            c_ops.upsample_argmax(regions, (97, 113))))
    finally:
        c_ops.set_num_threads(before)
    for single, multi in zip(*results):
        np.testing.assert_array_equal(single, multi)


@pytest.mark.parametrize("count", [0, -1, 1.5, True])
def test_set_num_threads_rejects_bad_counts(count):
    with pytest.raises(OpsInputError, match="thread count"):
        ops.set_num_threads(count)


# ---------------------------------------------------------------------------------------------
# Input validation (every implementation raises OpsInputError naming the argument).

FRAME = np.zeros((6, 8, 3), np.uint8)
LOGITS = np.zeros((3, 4, 5), np.float32)
LABELS = np.zeros((6, 8), np.uint8)
PALETTE = np.zeros((3, 3), np.uint8)


@pytest.mark.parametrize("call, message", [
    (lambda o: o.preprocess(FRAME.astype(np.float32), (4, 4), MEAN, STD), "frame_bgr"),
    (lambda o: o.preprocess(FRAME[:, ::2], (4, 4), MEAN, STD), "C-contiguous"),
    (lambda o: o.preprocess(FRAME[..., 0], (4, 4), MEAN, STD), "frame_bgr"),
    (lambda o: o.preprocess(np.zeros((6, 8, 4), np.uint8), (4, 4), MEAN, STD), "3 channels"),
    (lambda o: o.preprocess(FRAME.tolist(), (4, 4), MEAN, STD), "numpy"),
    (lambda o: o.preprocess(np.zeros((0, 8, 3), np.uint8), (4, 4), MEAN, STD), "empty"),
    (lambda o: o.preprocess(FRAME, (0, 4), MEAN, STD), "out_hw"),
    (lambda o: o.preprocess(FRAME, (4, 4, 4), MEAN, STD), "out_hw"),
    (lambda o: o.preprocess(FRAME, (4.0, 4), MEAN, STD), "out_hw"),
    (lambda o: o.preprocess(FRAME, (4, 4), (0.5, 0.5), STD), "mean"),
    (lambda o: o.preprocess(FRAME, (4, 4), MEAN, (0.2, 0.0, 0.2)), "std"),
    (lambda o: o.preprocess(FRAME, (4, 4), MEAN, STD, layout="nchw"), "layout"),
    (lambda o: o.preprocess(FRAME, (4, 4), MEAN, STD, dtype=np.float64), "dtype"),
    (lambda o: o.preprocess(FRAME, (4, 4), MEAN, STD, out=np.empty((3, 4, 5), np.float32)), "out"),
    (lambda o: o.preprocess(FRAME, (4, 4), MEAN, STD, out=np.empty((3, 4, 4), np.float16)), "out"),
    (lambda o: o.preprocess(FRAME, (4, 4), MEAN, STD, layout="nhwc_uint8",
                            out=np.empty((3, 4, 4), np.float32)), "out"),
    (lambda o: o.upsample_argmax(LOGITS.astype(np.float64), (8, 8)), "logits"),
    (lambda o: o.upsample_argmax(LOGITS[0], (8, 8)), "logits"),
    (lambda o: o.upsample_argmax(np.zeros((300, 2, 2), np.float32), (8, 8)), "256"),
    (lambda o: o.upsample_argmax(LOGITS, (8, -8)), "out_hw"),
    (lambda o: o.upsample_argmax(LOGITS.transpose(0, 2, 1), (8, 8)), "C-contiguous"),
    (lambda o: o.argmax(LOGITS.astype(np.int32)), "logits"),
    (lambda o: o.argmax(LOGITS[:, :, ::2]), "C-contiguous"),
    (lambda o: o.blend(FRAME, LABELS.astype(np.int32), PALETTE, 0.5), "labels"),
    (lambda o: o.blend(FRAME, LABELS, np.zeros((3, 4), np.uint8), 0.5), "palette_rgb"),
    (lambda o: o.blend(FRAME, LABELS, PALETTE, 1.5), "alpha"),
    (lambda o: o.blend(FRAME, LABELS, PALETTE, float("nan")), "alpha"),
    (lambda o: o.blend(FRAME, LABELS, PALETTE, 0.5, out=np.empty((6, 8, 3), np.float32)), "out"),
])
def test_bad_input_raises_ops_input_error(any_impl, call, message):
    with pytest.raises(OpsInputError, match=message):
        call(any_impl)


@pytest.mark.parametrize("region", [(0, 0, 5, 4), (-1, 0, 2, 2), (0, 3, 2, 2), (0, 0, 0, 2), (0, 0, 2), (0.0, 0, 2, 2)])
@pytest.mark.parametrize("impl", ["reference", "c"])
def test_bad_letterbox_region_raises_ops_input_error(request, impl, region):
    module = request.getfixturevalue("c_ops") if impl == "c" else reference
    with pytest.raises(OpsInputError, match="region"):
        module.preprocess(FRAME, (4, 4), MEAN, STD, region=region)


def test_c_rejects_out_sharing_memory_with_frame(c_ops):
    backing = np.zeros(2 * 6 * 8 * 3, np.uint8)
    frame = backing[:144].reshape(6, 8, 3)
    with pytest.raises(OpsInputError, match="share memory"):
        c_ops.preprocess(frame, (4, 4), MEAN, STD, layout="nhwc_uint8", out=backing[:48].reshape(4, 4, 3))
    with pytest.raises(OpsInputError, match="share memory"):
        c_ops.blend(frame, LABELS, PALETTE, 0.5, out=backing[72:216].reshape(6, 8, 3))


def test_ops_input_error_is_a_value_error():
    assert issubclass(OpsInputError, ValueError)


# ---------------------------------------------------------------------------------------------
# The OpenCV baseline chain computes the same ops.


def test_opencv_chain_preprocess_close_to_reference():
    rng = np.random.default_rng(12)
    frame = street_like_frame(rng, 37, 53)
    for out_hw in [(20, 31), (80, 101)]:
        # OpenCV rounds the resized frame to bytes (<= 0.5 level) with 11-bit weights (<= 0.3
        # level) before normalising: within one byte level / std.
        tolerance = 1.0 / 255 / min(STD)
        np.testing.assert_allclose(opencv_chain.preprocess(frame, out_hw, MEAN, STD),
                                   reference.preprocess(frame, out_hw, MEAN, STD), rtol=0, atol=tolerance)
        half = opencv_chain.preprocess(frame, out_hw, MEAN, STD, dtype=np.float16)
        assert half.dtype == np.float16 and half.shape == (3, *out_hw)
        as_bytes = opencv_chain.preprocess(frame, out_hw, MEAN, STD, layout="nhwc_uint8").astype(int)
        assert np.abs(as_bytes - reference.preprocess(frame, out_hw, MEAN, STD, layout="nhwc_uint8")).max() <= 1


def test_opencv_chain_upsample_argmax_differs_only_near_ties():
    rng = np.random.default_rng(13)
    logits = rng.standard_normal((19, 9, 13)).astype(np.float32)
    values = reference.upsample_logits(logits, (61, 97))
    got = opencv_chain.upsample_argmax(logits, (61, 97))
    top2 = np.sort(values, axis=0)[-2:]
    # warpAffine quantises positions to 1/32 pixel: logits move by up to |gradient| / 32.
    gradient = max(np.abs(np.diff(logits, axis=1)).max(), np.abs(np.diff(logits, axis=2)).max())
    assert np.all((top2[1] - top2[0])[got != np.argmax(values, axis=0)] < gradient / 16)
    assert (got == reference.upsample_argmax(logits, (61, 97))).mean() > 0.99


def test_upsample_argmax_shortcut_is_nearest_low_resolution_labels():
    # Low-resolution labels [[1, 0], [0, 2]] widened to 2x4: each column pair repeats a label.
    logits = np.zeros((3, 2, 2), np.float32)
    logits[1, 0, 0] = logits[2, 1, 1] = 1
    assert opencv_chain.upsample_argmax_shortcut(logits, (2, 4)).tolist() == [[1, 1, 0, 0], [0, 0, 2, 2]]


def test_opencv_chain_argmax_and_blend_match_reference():
    rng = np.random.default_rng(14)
    logits = rng.standard_normal((19, 11, 17)).astype(np.float32)
    np.testing.assert_array_equal(opencv_chain.argmax(logits), reference.argmax(logits))
    frame = random_frame(rng, 37, 53)
    palette = rng.integers(0, 256, (19, 3), dtype=np.uint8)
    # (19, 27) -> (37, 53) has no whole-number position where OpenCV's float nearest differs.
    for labels_hw in [(37, 53), (19, 27)]:
        labels = rng.integers(0, 25, labels_hw, dtype=np.uint8)
        for alpha in (0.0, 0.5, 1.0, 0.3):
            # addWeighted rounds floats; the reference quantises alpha to 1/256: at most 1 apart.
            chain = opencv_chain.blend(frame, labels, palette, alpha).astype(int)
            assert np.abs(chain - reference.blend(frame, labels, palette, alpha)).max() <= 1


# ---------------------------------------------------------------------------------------------
# Packaging.


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])


def test_falls_back_to_numpy_with_a_warning_without_the_extension():
    result = run_python(
        "import sys; sys.modules['runtime.ops._ops'] = None\n"
        "import numpy as np, runtime.ops as ops\n"
        "print(ops.BACKEND, ops.get_num_threads())\n"
        "print(ops.argmax(np.array([[[0.0]], [[1.0]]], np.float32)).item())\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["numpy", "1", "1"]
    assert "C extension is not available" in result.stderr


@pytest.mark.parametrize("given, shown", [(None, "PASSIVE"), ("active", "ACTIVE")])
def test_openmp_workers_sleep_unless_the_environment_chose(given, shown):
    """OMP_DISPLAY_ENV makes the OpenMP runtime print the policy it read when the extension loaded it."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({"OMP_DISPLAY_ENV": "true", **({"OMP_WAIT_POLICY": given} if given else {})})
    result = subprocess.run([sys.executable, "-c", "import os, runtime.ops as ops\n"
                             "print(ops.BACKEND, os.environ.get('OMP_WAIT_POLICY'))"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["c", str(given)]  # the process's own environment is left as it was
    assert f"OMP_WAIT_POLICY = '{shown}'" in result.stderr


def test_runtime_ops_import_without_torch():
    result = run_python(
        "import sys; sys.modules['torch'] = None\n"
        "import runtime.ops, runtime.ops.opencv_chain, runtime.cuda.ops\n"
        "print('ok')\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
