"""runtime.cuda kernels against the NumPy reference, through each CUDA library installed
(pycuda, CuPy); needs a CUDA GPU."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from runtime.cuda.device import LIBRARIES, CudaUnavailableError, open_device
from runtime.ops import reference
from runtime.ops.reference import OpsInputError

pytestmark = pytest.mark.gpu

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module", params=LIBRARIES)
def cuda_ops(request):
    from runtime.cuda.ops import CudaOps

    try:
        device = open_device(0, library=request.param)
    except CudaUnavailableError as exc:
        pytest.skip(str(exc))
    yield CudaOps(device)
    device.close()


def to_gpu(ops, array):
    return ops.device.to_device(array)


def random_frame(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("frame_hw, out_hw", [((37, 53), (20, 31)), ((37, 53), (80, 101)), ((1, 1), (3, 4))])
def test_preprocess_matches_reference(cuda_ops, frame_hw, out_hw):
    frame = random_frame(np.random.default_rng(sum(out_hw)), *frame_hw)
    stream = cuda_ops.device.new_stream()
    got = cuda_ops.preprocess(frame, out_hw, MEAN, STD, stream=stream)
    cuda_ops.device.synchronize(stream)
    np.testing.assert_allclose(got.get(), reference.preprocess(frame, out_hw, MEAN, STD), rtol=1e-6, atol=1e-5)
    device_frame = to_gpu(cuda_ops, frame)
    half = cuda_ops.preprocess(device_frame, out_hw, MEAN, STD, dtype=np.float16).get()
    np.testing.assert_array_equal(half, reference.preprocess(frame, out_hw, MEAN, STD, dtype=np.float16))
    as_bytes = cuda_ops.preprocess(device_frame, out_hw, MEAN, STD, layout="nhwc_uint8").get()
    np.testing.assert_array_equal(as_bytes, reference.preprocess(frame, out_hw, MEAN, STD, layout="nhwc_uint8"))


def test_preprocess_writes_into_out(cuda_ops):
    frame = random_frame(np.random.default_rng(1), 37, 53)
    out = cuda_ops.device.empty((3, 20, 31), np.float32)
    assert cuda_ops.preprocess(frame, (20, 31), MEAN, STD, out=out) is out
    np.testing.assert_allclose(out.get(), reference.preprocess(frame, (20, 31), MEAN, STD), rtol=1e-6, atol=1e-5)
    with pytest.raises(OpsInputError, match="out"):
        cuda_ops.preprocess(frame, (20, 31), MEAN, STD, out=cuda_ops.device.empty((3, 20, 30), np.float32))


@pytest.mark.parametrize("classes", [3, 19])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_upsample_argmax_matches_reference(cuda_ops, classes, dtype):
    rng = np.random.default_rng(classes)
    logits = rng.standard_normal((classes, 16, 32)).astype(dtype)
    got = cuda_ops.upsample_argmax(to_gpu(cuda_ops, logits), (121, 250)).get()
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
    np.testing.assert_array_equal(cuda_ops.argmax(to_gpu(cuda_ops, logits)).get(), reference.argmax(logits))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 0.3])
@pytest.mark.parametrize("labels_hw", [(37, 53), (11, 13)])
def test_blend_matches_reference(cuda_ops, alpha, labels_hw):
    rng = np.random.default_rng(sum(labels_hw))
    frame = random_frame(rng, 37, 53)
    labels = rng.integers(0, 25, labels_hw, dtype=np.uint8)
    palette = rng.integers(0, 256, (19, 3), dtype=np.uint8)
    got = cuda_ops.blend(frame, to_gpu(cuda_ops, labels), palette, alpha).get()
    np.testing.assert_array_equal(got, reference.blend(frame, labels, palette, alpha))


def test_device_chain_never_downloads_logits(cuda_ops):
    rng = np.random.default_rng(3)
    frame = random_frame(rng, 37, 53)
    logits = rng.standard_normal((19, 10, 14)).astype(np.float32)
    palette = rng.integers(0, 256, (19, 3), dtype=np.uint8)
    stream = cuda_ops.device.new_stream()
    labels = cuda_ops.upsample_argmax(to_gpu(cuda_ops, logits), (37, 53), stream=stream)
    device_frame = to_gpu(cuda_ops, frame)
    assert cuda_ops.blend(device_frame, labels, palette, 0.5, out=device_frame, stream=stream) is device_frame
    cuda_ops.device.synchronize(stream)
    expected = reference.blend(frame, reference.upsample_argmax(logits, (37, 53)), palette, 0.5)
    np.testing.assert_array_equal(device_frame.get(), expected)


def test_bad_device_input_raises(cuda_ops):
    with pytest.raises(OpsInputError, match="logits"):
        cuda_ops.argmax(cuda_ops.device.empty((3, 4, 5), np.float64))
    with pytest.raises(OpsInputError, match="frame_bgr"):
        cuda_ops.preprocess(cuda_ops.device.empty((4, 5, 4), np.uint8), (2, 2), MEAN, STD)


def test_ops_run_from_a_thread_that_never_set_up_cuda(cuda_ops):
    logits = np.random.default_rng(4).standard_normal((5, 7, 9)).astype(np.float32)
    got = {}
    worker = threading.Thread(target=lambda: got.update(labels=cuda_ops.argmax(logits).get()))
    worker.start()
    worker.join()
    np.testing.assert_array_equal(got["labels"], reference.argmax(logits))
