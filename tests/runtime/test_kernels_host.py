"""The CUDA kernels themselves, executed without a GPU: runtime/cuda/kernels.cu compiled for the
CPU through tests/runtime/host_cuda/cuda_host_shim.h and launched by runtime.cuda.ops.CudaOps on
the stand-in pycuda device (tests/runtime/cuda_standins.py: device memory is host bytes, the
launches run the host build over the whole grid).

Every kernel, dtype and layout is compared with runtime/ops/reference.py on random, smooth, tie
and extreme inputs. kernels.cu promises the reference's float32 rounding (no contraction, the
same operations in the same order), so every output, float or integer, must be identical. Then
the GPU frame path (runtime.gpu_path) runs frames of a synthetic dashcam drive end to end on the
same kernels and must give the CPU path's labels.
"""
from __future__ import annotations

import re
import shutil
import subprocess

from pathlib import Path

import numpy as np
import pytest

from runtime.contract import ModelContract
from runtime.cuda.ops import COMPILE_OPTIONS, KERNEL_SOURCE, SIGNATURES, CudaOps
from runtime.gpu_path import GpuProcessor
from runtime.ops import reference
from runtime.pipeline import Processor, run_pipeline
from tests.runtime.cuda_standins import StandInDeviceEngine, pycuda_device
from tests.runtime.host_cuda import NoCompiler, build, compiler
from tests.runtime.test_gpu_path import KeepAll
from tests.runtime.test_ops import NONFINITE_KINDS, nonfinite_logits

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    try:
        compiler()
    except NoCompiler as exc:
        pytest.skip(str(exc))
    return tmp_path_factory.mktemp("host_kernels")


@pytest.fixture(scope="module")
def host(build_dir):
    """CudaOps over the stand-in device, running the host-compiled kernels; and the library."""
    device, _, module = pycuda_device(kernels=build_dir)
    ops = CudaOps(device)
    return ops, module, build(KERNEL_SOURCE.read_text(), COMPILE_OPTIONS, build_dir)


def run(ops, call, *args, **kwargs):
    """An op through the stand-in device, its result downloaded."""
    return getattr(ops, call)(*args, **kwargs).get()


def launched(module, name):
    return sum(1 for launch in module.launches if launch[0] == name)


# ------------------------------------------------------------------------------ the build


def test_every_global_kernel_has_a_signature_and_a_host_launcher(host):
    _, _, library = host
    source = KERNEL_SOURCE.read_text()
    kernels = dict(re.findall(r"__global__ void (\w+)\(([^)]*)\)", source))
    assert set(kernels) == set(SIGNATURES) and len(kernels) == 10
    for name, parameters in kernels.items():
        codes = "".join("P" if "*" in p else "f" if p.split()[0] == "float" else "i" for p in parameters.split(","))
        assert codes == SIGNATURES[name], name  # the launch argument types match the kernel's
        library.kernel(name, SIGNATURES[name])  # raises where the host build lacks the kernel


def nvrtc_ptx(source: str, options: list[str]) -> str:
    """`source` compiled by NVRTC (as CuPy compiles it) to PTX, through its C API; skips where no
    libnvrtc is installed (torch's CUDA wheels bring one)."""
    import ctypes
    import glob
    import sysconfig

    found = sorted(glob.glob(f"{sysconfig.get_paths()['purelib']}/nvidia/*/lib/libnvrtc.so.*"))
    if not found:
        pytest.skip("no libnvrtc here (it comes with CuPy's or torch's CUDA wheels)")
    folder = Path(found[0]).parent
    for builtins in folder.glob("libnvrtc-builtins.so.*"):  # NVRTC opens it by name, off the library path
        ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
    nvrtc = ctypes.CDLL(found[0])
    program = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"kernels.cu", 0, None, None) == 0
    flags = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
    status = nvrtc.nvrtcCompileProgram(program, len(options), flags)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    assert status == 0, log.value.decode()
    nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(program, ptx)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    return ptx.value.decode()


def device_ptx(compiler_name: str, tmp_path) -> str:
    options = [*COMPILE_OPTIONS, "-arch=compute_90"]
    if compiler_name == "nvrtc":
        return nvrtc_ptx(KERNEL_SOURCE.read_text(), options)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH (the CUDA toolkit, as pycuda needs it)")
    subprocess.run([nvcc, "--ptx", *options, str(KERNEL_SOURCE), "-o", str(tmp_path / "k.ptx")], check=True)
    # nvcc -c also compiles the file's host pass, which must see kernels.cu's host conversions
    subprocess.run([nvcc, "-c", *options, str(KERNEL_SOURCE), "-o", str(tmp_path / "k.o")], check=True)
    return (tmp_path / "k.ptx").read_text()


@pytest.mark.parametrize("compiler_name", ["nvcc", "nvrtc"])
def test_device_build_compiles_and_keeps_the_ptx_half_conversions(compiler_name, tmp_path):
    """The compile check of the device build, where a CUDA compiler is installed (no GPU needed):
    every kernel is in the PTX and the half conversions are the cvt instructions, not the host
    branch, with no fused multiply-add."""
    ptx = device_ptx(compiler_name, tmp_path)
    assert set(re.findall(r"\.visible \.entry (\w+)\(", ptx)) == set(SIGNATURES)
    assert "cvt.rn.f16.f32" in ptx and "cvt.f32.f16" in ptx
    assert "fma.rn.f32" not in ptx


# ------------------------------------------------------------------------------ half floats


def test_half_to_float_is_exact_for_every_half(host):
    _, _, library = host
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = np.array([library.half_to_float(int(h)) for h in halves], np.float32)
    want = halves.view(np.float16).astype(np.float32)
    nan = np.isnan(want)  # NaN payloads are outside the contract (ctypes' float return quietens them)
    assert np.isnan(got[nan]).all() and nan.sum() == 2 * 1023
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))  # -0.0 and subnormals too


def float_to_half_cases() -> np.ndarray:
    """Floats at every rounding decision: each midpoint between neighbouring halves (a tie) and the
    floats either side of it, the half values themselves, the subnormal and overflow edges, and
    random bit patterns."""
    halves = np.arange(0x7c00, dtype=np.uint16).view(np.float16).astype(np.float32)
    midpoints = (halves[:-1].astype(np.float64) + halves[1:]) / 2  # exact in float32 (12 bits)
    midpoints = midpoints.astype(np.float32)
    edges = np.array([65504, 65519.996, 65520, 65536, 1e10, np.inf, 2.0 ** -24, 2.0 ** -25, 2.0 ** -26,
                      1.5 * 2.0 ** -25, 2.0 ** -14, 1e-45, 0.0], np.float32)
    random_bits = np.random.default_rng(0).integers(0, 1 << 32, 100_000, dtype=np.uint64).astype(np.uint32)
    finite = random_bits.view(np.float32)
    finite = finite[np.isfinite(finite)]
    cases = np.concatenate([halves, midpoints, np.nextafter(midpoints, np.float32(0)),
                            np.nextafter(midpoints, np.float32(np.inf)), edges, finite])
    return np.concatenate([cases, -cases])


def test_float_to_half_rounds_to_nearest_even_like_numpy(host):
    _, _, library = host
    cases = float_to_half_cases()
    got = np.array([library.float_to_half(float(v)) for v in cases], np.uint16)
    with np.errstate(over="ignore"):  # beyond the largest half: inf, as asked
        np.testing.assert_array_equal(got, cases.astype(np.float16).view(np.uint16))
    # hand-computed: 1 + 2^-11 is the tie between 1 and 1 + 2^-10, to the even 1.0 (0x3c00);
    # 1 + 3 * 2^-11 ties between 1 + 2^-10 and 1 + 2^-9, to the even 0x3c02
    assert library.float_to_half(1 + 2 ** -11) == 0x3c00 and library.float_to_half(1 + 3 * 2 ** -11) == 0x3c02
    assert library.float_to_half(65520.0) == 0x7c00 and library.float_to_half(2.0 ** -25) == 0
    assert np.isnan(np.uint16(library.float_to_half(float("nan"))).view(np.float16))


# ------------------------------------------------------------------------------ preprocess


def frames() -> dict[str, np.ndarray]:
    """Random, smooth (a gradient), tie (flat: every lerp weight meets equal pixels) and extreme
    (a 0/255 checkerboard) BGR frames; odd sizes, so grids have partial blocks."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:37, 0:53]
    smooth = np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    checker = (((y + x) % 2) * 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    return {"random": rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), "smooth": smooth,
            "flat": np.full((37, 53, 3), 128, np.uint8), "checker": checker}


PREPROCESS_CASES = [  # (out_hw, region): down, up, a single pixel, and letterboxed (region) inputs
    ((20, 31), None), ((80, 101), None), ((1, 1), None), ((24, 40), (4, 0, 16, 40)), ((24, 40), (0, 7, 24, 26)),
    ((24, 40), (3, 5, 1, 1))]


@pytest.mark.parametrize("name", ["random", "smooth", "flat", "checker"])
@pytest.mark.parametrize("layout, dtype", [("nchw_float", np.float32), ("nchw_float", np.float16),
                                           ("nhwc_uint8", np.float32)])
def test_preprocess_is_the_reference_exactly(host, name, layout, dtype):
    ops, module, _ = host
    frame = frames()[name]
    for out_hw, region in PREPROCESS_CASES:
        got = run(ops, "preprocess", frame, out_hw, MEAN, STD, layout=layout, dtype=dtype, region=region)
        want = reference.preprocess(frame, out_hw, MEAN, STD, layout=layout, dtype=dtype, region=region)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want, err_msg=f"{out_hw} {region}")
    assert launched(module, {"nhwc_uint8": "preprocess_nhwc_u8", np.float16: "preprocess_nchw_f16"}.get(
        layout if layout == "nhwc_uint8" else dtype, "preprocess_nchw_f32")) >= len(PREPROCESS_CASES)


def test_letterbox_padding_is_the_mean_colour(host):
    """Hand-computed: a white 2 x 2 frame letterboxed into rows 1..2 of a 4 x 2 input."""
    ops, _, _ = host
    white, region = np.full((2, 2, 3), 255, np.uint8), (1, 0, 2, 2)
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.5, 1.0)
    as_float = run(ops, "preprocess", white, (4, 2), mean, std, region=region)
    assert as_float[:, 1:3].tolist() == [[[1.0] * 2] * 2, [[1.5] * 2] * 2, [[1.0] * 2] * 2]  # (1 - mean) / std
    assert not as_float[:, [0, 3]].any()  # padding 0.0: the mean colour, normalised
    as_bytes = run(ops, "preprocess", white, (4, 2), mean, std, layout="nhwc_uint8", region=region)
    assert as_bytes[0, 0].tolist() == [128, 64, 0]  # floor(mean * 255 + 0.5): 128, 64, 0
    assert (as_bytes[1:3] == 255).all() and (as_bytes[3] == as_bytes[0]).all()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_preprocess_extremes_overflow_and_round_like_the_reference(host):
    """Tiny std overflows float16 (and, far enough, float32) to inf; a mean of -v with std 1 on a
    black frame gives exactly v, so float16 ties and their neighbours reach the kernel's rounding."""
    ops, _, _ = host
    frame = frames()["checker"]
    for std in ((1e-3, 1e-6, 1e-38), (2.0 ** -20,) * 3):
        for dtype in (np.float32, np.float16):
            got = run(ops, "preprocess", frame, (9, 13), (0.0, 1.0, 0.5), std, dtype=dtype)
            np.testing.assert_array_equal(got, reference.preprocess(frame, (9, 13), (0.0, 1.0, 0.5), std, dtype=dtype))
    black = np.zeros((1, 1, 3), np.uint8)
    ties = np.float32([1 + 2 ** -11, 1 + 3 * 2 ** -11, 2048 + 1, 2048 + 3, 65519.996, 65520, 2.0 ** -25,
                       3 * 2.0 ** -25, -(1 + 2 ** -11)])
    for start in range(0, len(ties), 3):
        values = np.resize(ties[start:start + 3], 3)
        got = run(ops, "preprocess", black, (1, 1), -values, (1, 1, 1), dtype=np.float16)[:, 0, 0]
        np.testing.assert_array_equal(got.view(np.uint16), values.astype(np.float16).view(np.uint16))


# ------------------------------------------------------------------------------ upsample + argmax, argmax


def logits_cases(dtype) -> dict[str, np.ndarray]:
    """Random, smooth, tie (classes equal, or rounded to few values) and extreme logits."""
    rng = np.random.default_rng(2)
    big = 60000.0 if dtype == np.float16 else 1e30
    y, x = np.mgrid[0:11, 0:17]
    smooth = np.stack([np.sin(x / 3 + k) + np.cos(y / 4 - k) for k in range(5)])
    tied = np.round(rng.standard_normal((7, 11, 17)))
    tied[3] = tied[1]
    extreme = rng.choice([-big, -1.0, 0.0, 1.0, big], (4, 11, 17))
    return {name: np.ascontiguousarray(value, dtype=dtype) for name, value in
            {"random": rng.standard_normal((19, 11, 17)), "smooth": smooth, "tied": tied,
             "equal": np.full((3, 11, 17), 0.25), "extreme": extreme}.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_upsample_argmax_is_the_reference_exactly(host, dtype):
    ops, module, _ = host
    for name, logits in logits_cases(dtype).items():
        for out_hw in ((41, 67), (11, 17), (5, 3), (1, 1)):
            got = run(ops, "upsample_argmax", logits, out_hw)
            np.testing.assert_array_equal(got, reference.upsample_argmax(logits, out_hw), err_msg=f"{name} {out_hw}")
        # a letterboxed input's logits: only the frame's rectangle, read in place
        crop = np.ascontiguousarray(logits[:, 2:9, 3:15])
        got = run(ops, "upsample_argmax", logits, (29, 47), region=(2, 3, 7, 12))
        np.testing.assert_array_equal(got, reference.upsample_argmax(crop, (29, 47)), err_msg=name)
    assert launched(module, f"upsample_argmax_{'f16' if dtype == np.float16 else 'f32'}") >= 25


def test_upsample_argmax_hand_computed(host):
    """Two classes on 2 x 2: class 0 rises 0, 2 / 4, 6, class 1 is 3; at 3 x 3 the middle row's
    class 0 is 2, 3, 4 (a tie at the centre goes to the lower class 0)."""
    ops, _, _ = host
    hand = np.array([[[0, 2], [4, 6]], [[3, 3], [3, 3]]], np.float32)
    assert run(ops, "upsample_argmax", hand, (3, 3)).tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_argmax_is_the_reference_exactly(host, dtype):
    ops, module, _ = host
    cases = logits_cases(dtype)
    infinite = cases["extreme"].copy()
    infinite[1, ::2] = np.inf
    infinite[2, ::3] = -np.inf
    cases["infinite"] = infinite
    for name, logits in cases.items():
        np.testing.assert_array_equal(run(ops, "argmax", logits), reference.argmax(logits), err_msg=name)
    assert run(ops, "argmax", cases["equal"]).max() == 0  # every class equal: the lowest wins
    assert launched(module, f"argmax_{'f16' if dtype == np.float16 else 'f32'}") >= len(cases) + 1


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("kind", NONFINITE_KINDS)
def test_non_finite_logits_are_the_reference_on_every_pixel(host, kind, dtype):
    """NaN as -inf, ties to the lowest class, logits saturated to +-2^126 before interpolating."""
    ops, _, _ = host
    logits = nonfinite_logits(kind, dtype)
    np.testing.assert_array_equal(run(ops, "argmax", logits), reference.argmax(logits))
    for out_hw in ((47, 113), (23, 41), (5, 3), (1, 1)):
        got = run(ops, "upsample_argmax", logits, out_hw)
        np.testing.assert_array_equal(got, reference.upsample_argmax(logits, out_hw), err_msg=f"{out_hw}")


def test_non_finite_hand_computed(host):
    """1 x 2 -> 1 x 3: +inf, 0 interpolates to 2^126, 2^125, 0 and beats 1 twice; +inf, -inf
    gives 0 in the middle, a tie with class 1 that class 0 wins; NaN and -inf tie (class 0)."""
    ops, _, _ = host
    beats_one = np.array([[[np.inf, 0.0]], [[1.0, 1.0]]], np.float32)
    assert run(ops, "upsample_argmax", beats_one, (1, 3)).tolist() == [[0, 0, 1]]
    ties_zero = np.array([[[np.inf, -np.inf]], [[0.0, 0.0]]], np.float16)
    assert run(ops, "upsample_argmax", ties_zero, (1, 3)).tolist() == [[0, 0, 1]]
    column = np.array([np.nan, -np.inf, np.nan], np.float16).reshape(3, 1, 1)
    assert run(ops, "argmax", column).tolist() == [[0]]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("kind", NONFINITE_KINDS)
def test_find_nonfinite_is_the_reference(host, kind, dtype):
    """Over the whole logits and over rectangles of them, read in place; with one non-finite value
    placed inside and then just outside a rectangle."""
    ops, module, _ = host
    logits = nonfinite_logits(kind, dtype)
    assert run(ops, "find_nonfinite", logits).tolist() == [1]
    finite = np.zeros((3, 11, 17), dtype)
    assert run(ops, "find_nonfinite", finite).tolist() == [0]
    for value in (np.nan, np.inf, -np.inf):
        finite[2, 4, 9] = value
        assert run(ops, "find_nonfinite", finite, region=(2, 3, 5, 7)).tolist() == [1]  # rows 2..6, columns 3..9
        assert run(ops, "find_nonfinite", finite, region=(2, 3, 5, 6)).tolist() == [0]  # columns 3..8
        assert run(ops, "find_nonfinite", finite, region=(5, 0, 6, 17)).tolist() == [0]  # rows 5..10
        finite[2, 4, 9] = 0
    big = np.full((2, 3, 3), np.finfo(dtype).max, dtype)  # the largest finite value is not inf
    assert run(ops, "find_nonfinite", big).tolist() == [0]
    assert launched(module, f"find_nonfinite_{'f16' if dtype == np.float16 else 'f32'}") >= 12


def test_f16_logits_of_every_finite_half_order_like_the_reference(host):
    """Every finite half in turn against its neighbour: the kernel reads each half exactly."""
    ops, _, _ = host
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    halves = halves[np.isfinite(halves)]
    logits = np.stack([halves, np.roll(halves, 1), np.full_like(halves, 0.5)]).reshape(3, 1, -1)
    np.testing.assert_array_equal(run(ops, "argmax", logits), reference.argmax(logits))


# ------------------------------------------------------------------------------ blend


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_blend_is_the_reference_exactly(host, alpha):
    ops, module, _ = host
    rng = np.random.default_rng(3)
    palette = rng.integers(0, 256, (19, 3), dtype=np.uint8)
    palette[0], palette[1] = 0, 255  # extreme colours
    for name, frame in frames().items():
        for labels_hw in ((37, 53), (11, 13), (40, 60)):
            labels = rng.integers(0, 25, labels_hw, dtype=np.uint8)  # some beyond the palette: frame kept
            labels[0, 0] = 255
            got = run(ops, "blend", frame, labels, palette, alpha)
            np.testing.assert_array_equal(got, reference.blend(frame, labels, palette, alpha), err_msg=name)
        region = (3, 5, 20, 30)  # labels of a letterboxed input: the frame's rectangle, read in place
        crop = np.ascontiguousarray(labels[3:23, 5:35])
        got = run(ops, "blend", frame, labels, palette, alpha, labels_region=region)
        np.testing.assert_array_equal(got, reference.blend(frame, crop, palette, alpha), err_msg=name)
    assert launched(module, "blend") >= 16


def test_blend_hand_computed(host):
    """alpha 0.3 -> a = 77: ((256 - 77) * 100 + 77 * 200 + 128) >> 8 = 130 (BGR 200 from RGB blue)."""
    ops, _, _ = host
    frame = np.full((1, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1]], np.uint8)
    palette = np.array([[0, 0, 200]], np.uint8)  # one class: label 1 keeps the frame
    assert run(ops, "blend", frame, labels, palette, 0.3).tolist() == [[[130, 70, 70], [100, 100, 100]]]


# ------------------------------------------------------------------------------ the GPU frame path


@pytest.fixture(scope="module")
def drive():
    """Six consecutive BGR frames of the synthetic dashcam drive (the demo video's generator), 64 x 128."""
    from training.data.synthetic.street import render_video_frames

    return [np.ascontiguousarray(rgb[:, :, ::-1]) for rgb, _ in render_video_frames(7, 64, 128, 6)]


def contract(layout: str, kind: str) -> ModelContract:
    classes = tuple(f"class{k}" for k in range(19))
    palette = tuple(((37 * k) % 256, (91 * k) % 256, (53 * k) % 256) for k in range(19))
    return ModelContract(classes=classes, palette=palette, mean=MEAN, std=STD, input_size=(64, 96),
                         input_layout=layout, output_kind=kind, dataset="synthetic")


FRAME_PATH_CASES = [(layout, kind, dtype) for layout in ("nchw_float", "nhwc_uint8")
                    for kind, dtype in (("lowres_logits", np.float32), ("lowres_logits", np.float16),
                                        ("logits", np.float32), ("logits", np.float16), ("labels", np.uint8))]


@pytest.mark.parametrize("letterbox", ["off", "on"])
@pytest.mark.parametrize("layout, kind, dtype", FRAME_PATH_CASES)
def test_gpu_frame_path_gives_the_cpu_paths_labels_on_the_drive(build_dir, drive, letterbox, layout, kind, dtype):
    """The GPU frame path on the host-compiled kernels against the CPU path (the C ops), with the
    same stand-in network (StandInDeviceEngine: a TensorRT engine on the stand-in device)."""
    device, driver, module = pycuda_device(kernels=build_dir)
    engine = StandInDeviceEngine(contract(layout, kind), device, driver, logits_dtype=dtype)
    cpu, gpu = KeepAll(), KeepAll()
    run_pipeline(enumerate(drive), Processor(engine, letterbox=letterbox), [cpu])
    processor = GpuProcessor(engine, ops=CudaOps(device))
    processor.letterbox = letterbox
    stats = run_pipeline(enumerate(drive), processor, [gpu])
    processor.close()
    # 64 x 128 frames in a 64 x 96 input: letterboxed into rows 8..55, as the CPU path computes it
    assert processor.region((64, 128)) == ((8, 0, 48, 96) if letterbox == "on" else None)
    assert stats.frames_out == len(drive) == len(gpu.frames) == len(cpu.frames)
    preprocess = "preprocess_nhwc_u8" if layout == "nhwc_uint8" else "preprocess_nchw_f32"
    assert launched(module, preprocess) == len(drive) and launched(module, "blend") == len(drive)
    for (cpu_overlay, cpu_labels), (gpu_overlay, gpu_labels) in zip(cpu.frames, gpu.frames):
        assert gpu_labels.shape == cpu_labels.shape == (64, 128)
        np.testing.assert_array_equal(gpu_labels, cpu_labels)
        np.testing.assert_array_equal(gpu_overlay, cpu_overlay)
    assert len({label for _, labels in gpu.frames for label in np.unique(labels)}) > 3  # not a trivial map


class PoisonedStandIn(StandInDeviceEngine):
    """The stand-in network with NaN in the first logit of class 1: in the letterbox padding of a
    letterboxed frame (not counted), in the frame otherwise."""

    def _run(self, batch):
        logits = super()._run(batch)
        logits[:, 1, 0, 0] = np.nan
        return logits


@pytest.mark.parametrize("letterbox, counted", [("off", 6), ("on", 0)])
@pytest.mark.parametrize("kind", ["lowres_logits", "logits"])
def test_gpu_frame_path_counts_non_finite_frames_as_the_cpu_path(build_dir, drive, kind, letterbox, counted):
    device, driver, _ = pycuda_device(kernels=build_dir)
    engine = PoisonedStandIn(contract("nchw_float", kind), device, driver, logits_dtype=np.float16)
    cpu, gpu = KeepAll(), KeepAll()
    cpu_stats = run_pipeline(enumerate(drive), Processor(engine, letterbox=letterbox), [cpu])
    processor = GpuProcessor(engine, ops=CudaOps(device))
    processor.letterbox = letterbox
    gpu_stats = run_pipeline(enumerate(drive), processor, [gpu])
    processor.close()
    assert gpu_stats.nonfinite_frames == cpu_stats.nonfinite_frames == counted
    for (_, cpu_labels), (_, gpu_labels) in zip(cpu.frames, gpu.frames):
        np.testing.assert_array_equal(gpu_labels, cpu_labels)


def test_gpu_preprocess_writes_the_letterboxed_input_the_reference_gives(build_dir, drive):
    """The network input the GPU path hands the engine, on the device, against reference.preprocess
    with the CPU path's region."""
    device, _, _ = pycuda_device(kernels=build_dir)
    engine = StandInDeviceEngine(contract("nchw_float", "lowres_logits"), device, pycuda_device()[1])
    processor = GpuProcessor(engine, ops=CudaOps(device))
    batch = processor.preprocess(drive[0]).get()
    want = reference.preprocess(drive[0], (64, 96), MEAN, STD, region=(8, 0, 48, 96))
    np.testing.assert_array_equal(batch[0], want)
    processor.close()
