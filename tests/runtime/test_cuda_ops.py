"""runtime.cuda kernels against the NumPy reference; needs pycuda and a CUDA GPU."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.ops import reference
from runtime.ops.reference import OpsInputError

pytestmark = pytest.mark.gpu

driver = pytest.importorskip("pycuda.driver")
gpuarray = pytest.importorskip("pycuda.gpuarray")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def cuda_ops():
    try:
        driver.init()
        if driver.Device.count() == 0:
            pytest.skip("no CUDA device")
        context = driver.Device(0).make_context()
    except driver.Error as exc:
        pytest.skip(f"CUDA is not usable here: {exc}")
    try:
        from runtime.cuda.ops import CudaOps
        yield CudaOps()
    finally:
        context.pop()


def random_frame(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("frame_hw, out_hw", [((37, 53), (20, 31)), ((37, 53), (80, 101)), ((1, 1), (3, 4))])
def test_preprocess_matches_reference(cuda_ops, frame_hw, out_hw):
    frame = random_frame(np.random.default_rng(sum(out_hw)), *frame_hw)
    stream = driver.Stream()
    got = cuda_ops.preprocess(frame, out_hw, MEAN, STD, stream=stream)
    stream.synchronize()
    np.testing.assert_allclose(got.get(), reference.preprocess(frame, out_hw, MEAN, STD), rtol=1e-6, atol=1e-5)
    device_frame = gpuarray.to_gpu(frame)
    half = cuda_ops.preprocess(device_frame, out_hw, MEAN, STD, dtype=np.float16).get()
    np.testing.assert_array_equal(half, reference.preprocess(frame, out_hw, MEAN, STD, dtype=np.float16))
    as_bytes = cuda_ops.preprocess(device_frame, out_hw, MEAN, STD, layout="nhwc_uint8").get()
    np.testing.assert_array_equal(as_bytes, reference.preprocess(frame, out_hw, MEAN, STD, layout="nhwc_uint8"))


def test_preprocess_writes_into_out(cuda_ops):
    frame = random_frame(np.random.default_rng(1), 37, 53)
    out = gpuarray.empty((3, 20, 31), np.float32)
    assert cuda_ops.preprocess(frame, (20, 31), MEAN, STD, out=out) is out
    np.testing.assert_allclose(out.get(), reference.preprocess(frame, (20, 31), MEAN, STD), rtol=1e-6, atol=1e-5)
    with pytest.raises(OpsInputError, match="out"):
        cuda_ops.preprocess(frame, (20, 31), MEAN, STD, out=gpuarray.empty((3, 20, 30), np.float32))


@pytest.mark.parametrize("classes", [3, 19])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_upsample_argmax_matches_reference(cuda_ops, classes, dtype):
    rng = np.random.default_rng(classes)
    logits = rng.standard_normal((classes, 16, 32)).astype(dtype)
    got = cuda_ops.upsample_argmax(gpuarray.to_gpu(logits), (121, 250)).get()
    values = reference.upsample_logits(logits, (121, 250))
    mismatch = got != np.argmax(values, axis=0)
    top2 = np.sort(values, axis=0)[-2:]
    assert np.all((top2[1] - top2[0])[mismatch] < 1e-5)
    hand = np.array([[[0, 2], [4, 6]], [[3, 3], [3, 3]]], dtype=dtype)
    assert cuda_ops.upsample_argmax(hand, (3, 3)).get().tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_argmax_matches_reference(cuda_ops, dtype):
    logits = np.random.default_rng(2).standard_normal((19, 29, 151)).astype(dtype)
    logits[:, ::3] = np.round(logits[:, ::3])  # exact ties: the lowest class wins
    np.testing.assert_array_equal(cuda_ops.argmax(gpuarray.to_gpu(logits)).get(), reference.argmax(logits))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 0.3])
@pytest.mark.parametrize("labels_hw", [(37, 53), (11, 13)])
def test_blend_matches_reference(cuda_ops, alpha, labels_hw):
    rng = np.random.default_rng(sum(labels_hw))
    frame = random_frame(rng, 37, 53)
    labels = rng.integers(0, 25, labels_hw, dtype=np.uint8)
    palette = rng.integers(0, 256, (19, 3), dtype=np.uint8)
    got = cuda_ops.blend(frame, gpuarray.to_gpu(labels), palette, alpha).get()
    np.testing.assert_array_equal(got, reference.blend(frame, labels, palette, alpha))


def test_device_chain_never_downloads_logits(cuda_ops):
    rng = np.random.default_rng(3)
    frame = random_frame(rng, 37, 53)
    logits = rng.standard_normal((19, 10, 14)).astype(np.float32)
    palette = rng.integers(0, 256, (19, 3), dtype=np.uint8)
    stream = driver.Stream()
    labels = cuda_ops.upsample_argmax(gpuarray.to_gpu(logits), (37, 53), stream=stream)
    device_frame = gpuarray.to_gpu(frame)
    assert cuda_ops.blend(device_frame, labels, palette, 0.5, out=device_frame, stream=stream) is device_frame
    stream.synchronize()
    expected = reference.blend(frame, reference.upsample_argmax(logits, (37, 53)), palette, 0.5)
    np.testing.assert_array_equal(device_frame.get(), expected)


def test_bad_device_input_raises(cuda_ops):
    with pytest.raises(OpsInputError, match="logits"):
        cuda_ops.argmax(gpuarray.zeros((3, 4, 5), np.float64))
    with pytest.raises(OpsInputError, match="frame_bgr"):
        cuda_ops.preprocess(gpuarray.zeros((4, 5, 4), np.uint8), (2, 2), MEAN, STD)
