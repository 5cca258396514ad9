"""Property tests of the C ops against runtime/ops/reference.py, on any input Python can give.

For every op, shapes from 1 x 1 to extreme aspect ratios, logits with ties, NaN and infinities,
and arguments damaged the ways a caller gets them wrong (non-contiguous, negatively strided,
unaligned, byte-swapped, wrong dtype or rank, read-only or misshapen outputs, sizes whose 32-bit
products overflow): the C op must raise OpsInputError exactly where the reference does and
otherwise give its result. Memory safety is what `make sanitize` adds: it runs this module with
the extension built under AddressSanitizer and UndefinedBehaviorSanitizer (OPS_EXTENSION names
that build) and many more examples (HYPOTHESIS_PROFILE=sanitize); `make test` runs a few.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="hypothesis comes with the dev extra: pip install -e '.[dev]'")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import runtime.ops as ops  # noqa: E402
from runtime.ops import reference  # noqa: E402
from runtime.ops.reference import MAX_ELEMENTS, OpsInputError  # noqa: E402

# No deadline: example run times say nothing about correctness (and a sanitized build is slow).
_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("quick", max_examples=12, derandomize=True, **_COMMON)
settings.register_profile("sanitize", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _extension():
    """The C extension under test: the build OPS_EXTENSION names (the sanitized one), else the
    one runtime.ops loaded."""
    path = os.environ.get("OPS_EXTENSION")
    if path is None:
        return ops._ops
    spec = importlib.util.spec_from_file_location("runtime.ops._ops", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def c_extension():
    """runtime.ops' wrappers calling the extension under test for this module's tests."""
    if ops.BACKEND != "c":
        pytest.fail("the C extension runtime.ops._ops is not built: run `pip install -e .`")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ops, "_ops", _extension())
        yield ops._ops


# ------------------------------------------------------------------------------ strategies


@st.composite
def extents(draw, most: int = 48, longest: int = 1500):
    """(height, width): small, or one side 1..3 and the other up to `longest` (extreme aspect)."""
    if draw(st.booleans()):
        return draw(st.integers(1, most)), draw(st.integers(1, most))
    thin, long = draw(st.integers(1, 3)), draw(st.integers(1, longest))
    return (thin, long) if draw(st.booleans()) else (long, thin)


VALUE_POOLS = {
    "normal": None,
    "ties": [-1.0, 0.0, 1.0, 2.0],
    "non-finite": [np.nan, np.inf, -np.inf, 0.0, 1.0, -1.0],
    "extreme": [3e38, -3e38, 1e-40, -1e-40, 65504.0, -65504.0, np.inf, 0.0],
}


def make_logits(seed: int, shape, dtype, pool: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape)
    if VALUE_POOLS[pool] is not None:
        mask = rng.random(shape) < rng.uniform(0.05, 1.0)
        values[mask] = rng.choice(VALUE_POOLS[pool], int(mask.sum()))
    with np.errstate(over="ignore"):
        return values.astype(dtype)


def damaged(array: np.ndarray, how: str) -> np.ndarray:
    """`array` as a caller gets it wrong: every way but "as is" and "read-only" breaks a demand
    of check_array, unless the array's shape makes it harmless (a reversed axis of length 1)."""
    if how == "as is":
        return array
    if how == "read-only":
        view = array.view()
        view.flags.writeable = False
        return view
    if how == "reversed":
        return array[::-1]
    if how == "reversed last":
        return array[..., ::-1]
    if how == "strided":
        return np.repeat(array, 2, axis=-1)[..., ::2]
    if how == "transposed":
        return array.T
    if how == "unaligned":  # at an odd address (harmless for bytes)
        view = np.ndarray(array.shape, array.dtype, buffer=np.zeros(array.nbytes + 1, np.uint8), offset=1)
        view[...] = array
        return view
    if how == "byte-swapped":
        return array.astype(array.dtype.newbyteorder())
    if how == "float64":
        return array.astype(np.float64)
    if how == "int32":
        with np.errstate(invalid="ignore"):  # NaN and inf logits have no int32 value: any will do
            return array.astype(np.int32)
    if how == "one rank less":
        return array[0]
    if how == "one rank more":
        return array[np.newaxis]
    if how == "list":
        return array.tolist()
    raise ValueError(how)


DAMAGE = ["as is", "as is", "as is", "read-only", "reversed", "reversed last", "strided", "transposed", "unaligned",
          "byte-swapped", "float64", "int32", "one rank less", "one rank more", "list"]


def outcome(call):
    """("ok", result) or ("error", None) where the call raised OpsInputError."""
    try:
        return "ok", call()
    except OpsInputError:
        return "error", None


def assert_same_outcome(c_call, reference_call, compare=np.testing.assert_array_equal):
    """The C op fails exactly where the reference does, and otherwise gives its result."""
    want_kind, want = outcome(reference_call)
    got_kind, got = outcome(c_call)
    assert got_kind == want_kind
    if want_kind == "ok":
        if isinstance(want, tuple):
            for got_part, want_part in zip(got, want):
                compare(got_part, want_part)
        else:
            compare(got, want)


def close_floats(got, want):
    """C preprocess folds /255, -mean and /std into one multiply-add in float32: within float
    rounding. For float16, one unit in the last place of the reference's value, or 1e-5 near zero:
    there the multiply-add cancels terms near 2, whose float32 rounding (about 2e-7) is several
    float16 subnormal steps (6e-8), so a value of 5.2e-5 may land two steps from the reference's."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype == np.float16:
        tolerance = np.maximum(np.spacing(np.abs(want)).astype(np.float32), 1e-5)
        assert (np.abs(got.astype(np.float32) - want.astype(np.float32)) <= tolerance).all()
    elif got.dtype == np.float32:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    else:
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------ results


@given(frame_hw=extents(), out_hw=extents(), layout=st.sampled_from(reference.LAYOUTS),
       dtype=st.sampled_from([np.float32, np.float16]), seed=st.integers(0, 2 ** 32 - 1),
       letterbox=st.booleans(), frame_damage=st.sampled_from(DAMAGE), out_damage=st.sampled_from(DAMAGE + ["none"]))
@example(frame_hw=(34, 3), out_hw=(352, 2), layout="nchw_float", dtype=np.float16, seed=1, letterbox=False,
         frame_damage="as is", out_damage="as is")  # -5.232e-5: C gives -5.245e-5, the reference -5.233e-5
def test_preprocess_is_the_reference(frame_hw, out_hw, layout, dtype, seed, letterbox, frame_damage, out_damage):
    rng = np.random.default_rng(seed)
    frame = damaged(rng.integers(0, 256, (*frame_hw, 3), dtype=np.uint8), frame_damage)
    region = None
    if letterbox:
        height, width = int(rng.integers(1, out_hw[0] + 1)), int(rng.integers(1, out_hw[1] + 1))
        region = (int(rng.integers(0, out_hw[0] - height + 1)), int(rng.integers(0, out_hw[1] - width + 1)),
                  height, width)
    shape = (*out_hw, 3) if layout == "nhwc_uint8" else (3, *out_hw)
    out_dtype = np.uint8 if layout == "nhwc_uint8" else dtype

    def call(impl):
        out = None if out_damage == "none" else damaged(np.full(shape, 7, out_dtype), out_damage)
        return impl.preprocess(frame, out_hw, MEAN, STD, layout=layout, dtype=dtype, out=out, region=region)

    assert_same_outcome(lambda: call(ops), lambda: call(reference), close_floats)


@given(classes=st.integers(1, 24), low_hw=extents(most=24, longest=400), out_hw=extents(most=64, longest=1500),
       dtype=st.sampled_from([np.float32, np.float16]), pool=st.sampled_from(sorted(VALUE_POOLS)),
       seed=st.integers(0, 2 ** 32 - 1), damage=st.sampled_from(DAMAGE))
def test_upsample_argmax_and_argmax_are_the_reference(classes, low_hw, out_hw, dtype, pool, seed, damage):
    """Every label, ties and non-finite logits included, and the inf/NaN report."""
    logits = damaged(make_logits(seed, (classes, *low_hw), dtype, pool), damage)
    with np.errstate(invalid="ignore", over="ignore"):
        assert_same_outcome(lambda: ops.upsample_argmax(logits, out_hw, report_nonfinite=True),
                            lambda: reference.upsample_argmax(logits, out_hw, report_nonfinite=True))
        assert_same_outcome(lambda: ops.argmax(logits, report_nonfinite=True),
                            lambda: reference.argmax(logits, report_nonfinite=True))


@given(frame_hw=extents(), labels_hw=extents(), classes=st.integers(1, 256), alpha=st.floats(0.0, 1.0),
       seed=st.integers(0, 2 ** 32 - 1), out=st.sampled_from(["none", "frame", "separate", "read-only", "misshapen"]),
       damage=st.sampled_from(DAMAGE), damaged_argument=st.sampled_from(["frame", "labels", "palette"]))
def test_blend_is_the_reference(frame_hw, labels_hw, classes, alpha, seed, out, damage, damaged_argument):
    rng = np.random.default_rng(seed)
    arguments = {"frame": rng.integers(0, 256, (*frame_hw, 3), dtype=np.uint8),
                 "labels": rng.integers(0, 256, labels_hw, dtype=np.uint8),
                 "palette": rng.integers(0, 256, (classes, 3), dtype=np.uint8)}
    arguments[damaged_argument] = damaged(arguments[damaged_argument], damage)

    def call(impl):
        frame = np.array(arguments["frame"], copy=True) if isinstance(arguments["frame"], np.ndarray) \
            else arguments["frame"]
        target = {"none": None, "frame": frame, "separate": np.zeros((*frame_hw, 3), np.uint8),
                  "read-only": damaged(np.zeros((*frame_hw, 3), np.uint8), "read-only"),
                  "misshapen": np.zeros((frame_hw[0], frame_hw[1] + 1, 3), np.uint8)}[out]
        return impl.blend(frame, arguments["labels"], arguments["palette"], alpha, out=target)

    assert_same_outcome(lambda: call(ops), lambda: call(reference))


# ------------------------------------------------------------------------------ sizes and raw arguments


@st.composite
def oversized(draw, channels: int):
    """(height, width) positive, each up to 2^63 - 1, whose output of `channels` values per
    pixel has more than MAX_ELEMENTS elements: products that wrap in 32 (or 64) bits."""
    height = draw(st.one_of(st.sampled_from([1, 2, 3, 46341, 65536, 2 ** 31, 2 ** 32]), st.integers(1, 2 ** 63 - 1)))
    least = MAX_ELEMENTS // (height * channels) + 1
    width = draw(st.one_of(st.just(least), st.integers(least, 2 ** 63 - 1)))
    return (height, width) if draw(st.booleans()) else (width, height)


@given(size=oversized(3), layout=st.sampled_from(reference.LAYOUTS))
def test_preprocess_refuses_outputs_beyond_2_31_elements(size, layout):
    frame = np.zeros((2, 2, 3), np.uint8)
    for impl in (ops, reference):
        with pytest.raises(OpsInputError, match="2\\^31"):
            impl.preprocess(frame, size, MEAN, STD, layout=layout)
    with pytest.raises((OpsInputError, OverflowError)):  # the extension itself, past the wrappers
        ops._ops.preprocess(frame, *size, MEAN, STD, layout == "nhwc_uint8", False, None, (0, 0, 1, 1))


@given(size=oversized(1))
def test_upsample_argmax_refuses_outputs_beyond_2_31_elements(size):
    logits = np.zeros((2, 2, 2), np.float32)
    for impl in (ops, reference):
        with pytest.raises(OpsInputError, match="2\\^31"):
            impl.upsample_argmax(logits, size)
    with pytest.raises((OpsInputError, OverflowError)):
        ops._ops.upsample_argmax(logits, *size)


def test_size_limit_by_hand():
    """65536 x 65536 wraps to 0 in 32 bits: refused. 46341^2 = 2147488281 > 2^31 - 1: refused;
    46340^2 = 2147395600 fits (as one uint8 plane; three channels do not)."""
    assert reference.parse_size("op", "out_hw", (46340, 46340)) == (46340, 46340)
    for size, channels in (((65536, 65536), 1), ((46341, 46341), 1), ((46340, 46340), 3), ((2 ** 31, 1), 1)):
        with pytest.raises(OpsInputError, match="2\\^31"):
            reference.parse_size("op", "out_hw", size, channels)


BIG = st.integers(-(2 ** 63), 2 ** 63 - 1)


@given(height=st.integers(1, 12), width=st.integers(1, 12), region=st.tuples(BIG, BIG, BIG, BIG) | st.tuples(
    *(st.integers(-2, 14),) * 4))
def test_raw_regions_are_checked_in_c(height, width, region):
    """Any region the extension is handed (past the wrappers) is refused or is the reference's."""
    frame = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert_same_outcome(
        lambda: ops._ops.preprocess(frame, height, width, MEAN, STD, True, False, None, region),
        lambda: reference.preprocess(frame, (height, width), MEAN, STD, layout="nhwc_uint8", region=region))


@given(weight=st.integers(-(2 ** 31), 2 ** 31 - 1) | st.integers(-2, 258))
def test_raw_blend_weights_are_checked_in_c(weight):
    frame = np.full((2, 3, 3), 100, np.uint8)
    labels, palette = np.array([[0, 1, 2], [2, 1, 0]], np.uint8), np.array([[0, 0, 200], [9, 9, 9]], np.uint8)
    assert_same_outcome(lambda: ops._ops.blend(frame, labels, palette, weight, None),
                        lambda: reference.blend(frame, labels, palette, weight / 256 if 0 <= weight <= 256 else 2.0))
