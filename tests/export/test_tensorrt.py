"""TensorRT export: build planning, skip logic, engine sidecars; a real build where a GPU and TensorRT exist."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from export import run as export_run
from export import tensorrt as trt_export
from export.onnx_export import ExportError, make_contract, with_precision
from runtime.cuda import device as device_module
from runtime.engines import EngineError
from runtime.engines.sidecar import (EngineSidecar, check_compatible, read_sidecar, sidecar_path,
                                     write_sidecar)
from tests.runtime.cuda_standins import StandInBuilderConfig, StandInTensorRT, pycuda_device
from tests.runtime.test_engines import CONTRACT as TINY_CONTRACT
from tests.runtime.test_engines import tiny_onnx

INFO = {"classes": ["road", "car", "sky", "person", "tree"],
        "palette": [[128, 64, 128], [0, 0, 142], [70, 130, 180], [220, 20, 60], [107, 142, 35]],
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "dataset": "synthetic", "sha256": "01" * 32}
CONTRACT = make_contract(INFO, input_size=(64, 128), input_layout="nchw_float", output_kind="lowres_logits",
                         precision="fp16")
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
ROOT = Path(__file__).resolve().parents[2]


def sidecar(**changes) -> EngineSidecar:
    values = dict(tensorrt_version="10.3.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
                  precision="fp16", contract=CONTRACT, build={"mode": "strongly_typed", "source": "m_fp16.onnx"})
    values.update(changes)
    return EngineSidecar(**values)


# ---------------------------------------------------------------- build planning

@pytest.mark.parametrize("major, source, target, mode", [
    (10, "fp32", "fp32", trt_export.STRONGLY_TYPED),
    (10, "fp16", "fp16", trt_export.STRONGLY_TYPED),
    (10, "int8", "int8", trt_export.STRONGLY_TYPED),
    (10, "fp32", "fp16", trt_export.BUILDER_FLAGS),
    (10, "fp32", "int8", trt_export.BUILDER_FLAGS),
    (11, "int8", "int8", trt_export.STRONGLY_TYPED),
])
def test_build_mode(major, source, target, mode):
    assert trt_export.build_mode(major, source, target) == mode


def test_tensorrt_11_needs_the_precision_onnx():
    with pytest.raises(ExportError, match=r"TensorRT 11 builds strongly typed networks only.*int8 ONNX"):
        trt_export.build_mode(11, "fp32", "int8")


def test_no_engine_from_a_lower_precision_onnx():
    with pytest.raises(ExportError, match="cannot build a fp16 engine from a int8 ONNX"):
        trt_export.build_mode(10, "int8", "fp16")


# ---------------------------------------------------------------- skip logic of the stage

def test_plan_off_does_not_probe():
    assert export_run.tensorrt_plan("off") == {"status": "off"}


def test_plan_auto_records_why_it_skipped(monkeypatch):
    monkeypatch.setattr(trt_export, "unavailable_reason", lambda: "no CUDA GPU found")
    assert export_run.tensorrt_plan("auto") == {"status": "skipped", "reason": "no CUDA GPU found"}
    monkeypatch.setattr(trt_export, "unavailable_reason", lambda: None)
    assert export_run.tensorrt_plan("auto") == {"status": "build"}


def test_plan_required_refuses_when_impossible(monkeypatch):
    monkeypatch.setattr(trt_export, "unavailable_reason", lambda: "no CUDA GPU found")
    with pytest.raises(trt_export.TensorRTUnavailable, match=r"'required' but .*no CUDA GPU found.*tensorrt: auto"):
        export_run.tensorrt_plan("required")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_reason_names_the_package():
    assert "tensorrt" in trt_export.unavailable_reason()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_stage_with_tensorrt_required_exits_2_before_any_work(tmp_path, capsys):
    settings = yaml.safe_load((ROOT / "params.yaml").read_text())  # the project's, so every section is valid
    settings["export"].update(tensorrt="required", out_dir=str(tmp_path / "out"))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(settings))
    with pytest.raises(SystemExit) as exit_info:
        export_run.entry(["--params", str(params), "--metrics", str(tmp_path / "m.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "export.tensorrt is 'required'" in err[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- sidecars

def test_sidecar_round_trips(tmp_path):
    engine = tmp_path / "gen_student_fp16.engine"
    written = write_sidecar(engine, sidecar())
    assert written == sidecar_path(engine) == tmp_path / "gen_student_fp16.engine.json"
    payload = json.loads(written.read_text())
    assert payload["tensorrt_version"] == "10.3.0" and payload["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert payload["compute_capability"] == [9, 0] and payload["precision"] == "fp16"
    assert payload["contract"] == CONTRACT.to_metadata()
    assert read_sidecar(engine) == sidecar()
    assert [p.name for p in tmp_path.iterdir()] == [written.name]  # no temp file left


def test_matching_sidecar_is_accepted():
    check_compatible(sidecar(), tensorrt_version="10.3.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0))


@pytest.mark.parametrize("current, message", [
    (dict(tensorrt_version="10.7.0"), r"built with TensorRT 10\.3\.0, this machine has 10\.7\.0"),
    (dict(gpu_name="NVIDIA L4"), r"built for NVIDIA H100 80GB HBM3, this machine has NVIDIA L4"),
    (dict(compute_capability=(8, 9)), r"compute capability 9\.0, this GPU has 8\.9"),
])
def test_mismatched_sidecar_is_refused(current, message):
    values = dict(tensorrt_version="10.3.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0))
    values.update(current)
    with pytest.raises(EngineError, match=message + ".*rebuild"):
        check_compatible(sidecar(), source="gen_student_fp16.engine", **values)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "other"}), "not an engine sidecar"),
    (json.dumps({"format": "stpg-drive/engine-sidecar/1", "gpu_name": "x"}), "incomplete"),
])
def test_broken_sidecar_is_refused(tmp_path, text, message):
    engine = tmp_path / "m.engine"
    sidecar_path(engine).write_text(text)
    with pytest.raises(EngineError, match=message):
        read_sidecar(engine)


# ---------------------------------------------------------------- the calibrator, against stand-ins

def test_entropy_calibrator_feeds_each_array_once_then_stops():
    device, driver, _ = pycuda_device()
    fake_trt = types.SimpleNamespace(IInt8EntropyCalibrator2=type("Base", (), {"__init__": lambda self: None}))
    arrays = [np.full((3, 2, 2), i, np.float32) for i in range(3)]
    with device.current():
        calibrator = trt_export._entropy_calibrator(fake_trt, device, arrays)
    pointer = calibrator._buffer.pointer
    assert calibrator.get_batch_size() == 1
    fed = []
    for _ in range(3):
        assert calibrator.get_batch(["input"]) == [pointer]  # TensorRT calls back from its own thread state
        fed.append(float(driver.device_bytes(pointer, 4).view(np.float32)[0]))
    assert calibrator.get_batch(["input"]) is None
    assert fed == [0.0, 1.0, 2.0]
    assert driver.copies == [("htod", 48)] * 3  # one (1, 3, 2, 2) float32 batch each
    assert calibrator.read_calibration_cache() is None


# ---------------------------------------------------------------- timing cache and the written unit

def _config(**behaviour) -> StandInBuilderConfig:
    return StandInBuilderConfig(None, **behaviour)


def test_a_saved_timing_cache_is_loaded(tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"timing:this-gpu")
    config = _config()
    assert trt_export.attach_timing_cache(config, cache) == "loaded"
    assert config.cache_attempts == [b"timing:this-gpu"]


def test_a_cache_from_another_gpu_falls_back_to_a_fresh_one(tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"timing:another-gpu")
    config = _config()
    assert trt_export.attach_timing_cache(config, cache) == "replaced"
    assert config.cache_attempts == [b"timing:another-gpu", b""]  # refused, then a fresh cache
    assert config.get_timing_cache().blob == b""
    assert trt_export.attach_timing_cache(_config(), None) == "fresh"


def test_no_timing_cache_at_all_is_an_export_error():
    with pytest.raises(ExportError, match="could not set up a timing cache"):
        trt_export.attach_timing_cache(_config(refuse_fresh_cache=True), None)


def _old_pair(tmp_path):
    engine = tmp_path / "m_fp16.engine"
    engine.write_bytes(b"old plan")
    write_sidecar(engine, sidecar(gpu_name="old GPU"))
    return engine


def test_engine_and_sidecar_are_replaced_together(tmp_path):
    engine = _old_pair(tmp_path)
    trt_export.write_engine(engine, b"new plan", sidecar())
    assert engine.read_bytes() == b"new plan" and read_sidecar(engine) == sidecar()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_fp16.engine", "m_fp16.engine.json"]


def test_a_failed_write_leaves_the_old_pair(tmp_path):
    engine = _old_pair(tmp_path)
    with pytest.raises(TypeError):
        trt_export.write_engine(engine, "not bytes", sidecar())
    assert engine.read_bytes() == b"old plan" and read_sidecar(engine).gpu_name == "old GPU"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_fp16.engine", "m_fp16.engine.json"]


def test_a_crash_between_the_renames_leaves_an_engine_that_is_refused(tmp_path, monkeypatch):
    engine = _old_pair(tmp_path)
    real_replace = os.replace

    def crash_on_the_sidecar(source, target):
        if str(target).endswith(".json"):
            raise OSError("power lost")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", crash_on_the_sidecar)
    with pytest.raises(OSError, match="power lost"):
        trt_export.write_engine(engine, b"new plan", sidecar())
    assert engine.read_bytes() == b"new plan"
    with pytest.raises(EngineError, match="has no sidecar"):  # never beside the old build's sidecar
        read_sidecar(engine)


# ---------------------------------------------------------------- a build against stand-ins

@pytest.fixture
def tensorrt_builder(monkeypatch):
    """build_engine's TensorRT and CUDA device replaced by stand-ins; returns the TensorRT stand-in."""
    device, driver, _ = pycuda_device()
    trt = StandInTensorRT(driver)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(device_module, "open_device", lambda index=0, library="auto": device)
    return trt


def _contract_onnx(path, precision):
    return tiny_onnx(path, contract=with_precision(TINY_CONTRACT, precision))


def test_fp32_build_parses_the_model_file_clears_tf32_and_writes_the_unit(tmp_path, tensorrt_builder):
    source = _contract_onnx(tmp_path / "m.onnx", "fp32")
    cache = tmp_path / "cache" / "timing.cache"
    built = trt_export.build_engine(source, tmp_path / "out" / "m_fp32.engine", precision="fp32", timing_cache=cache)
    assert ("parse_from_file", str(source)) in tensorrt_builder.builds  # the file, so external weights resolve
    assert built.build["tf32"] is False and built.build["timing_cache"] == "fresh"
    assert read_sidecar(tmp_path / "out" / "m_fp32.engine") == built
    assert (tmp_path / "out" / "m_fp32.engine").read_bytes() == b"plan"
    assert cache.read_bytes() == b"timing:this-gpu"


def test_reduced_precision_builds_record_tf32(tmp_path, tensorrt_builder):
    source = _contract_onnx(tmp_path / "m.onnx", "fp16")
    built = trt_export.build_engine(source, tmp_path / "m_fp16.engine", precision="fp16")
    assert built.build["tf32"] is True and built.build["mode"] == trt_export.STRONGLY_TYPED


def test_int8_engines_are_never_built_from_the_cpu_variant(tmp_path):
    from export.precision import quantize_int8

    source = _contract_onnx(tmp_path / "m.onnx", "fp32")
    calibration = [np.random.default_rng(i).standard_normal((3, 4, 6)).astype(np.float32) for i in range(4)]
    cpu = quantize_int8(source, tmp_path / "m_int8.onnx", calibration)
    with pytest.raises(ExportError, match=r"asymmetrically or unsigned.*TensorRT takes symmetric int8 only"):
        trt_export.build_engine(cpu, tmp_path / "m_int8.engine", precision="int8")  # before any GPU is needed
    gpu = quantize_int8(source, tmp_path / "m_int8_trt.onnx", calibration, target="tensorrt")
    trt_export.check_int8_source(gpu)


# ---------------------------------------------------------------- a real build

@pytest.mark.gpu
def test_engines_build_and_match_onnxruntime(tmp_path):
    pytest.importorskip("tensorrt")
    if trt_export.unavailable_reason():
        pytest.skip(trt_export.unavailable_reason())
    torch = pytest.importorskip("torch")
    from export.onnx_export import export_onnx
    from export.precision import convert_fp16
    from runtime.engines import open_engine
    from training.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 5).eval()
    contract = make_contract(INFO, input_size=(64, 128), input_layout="nchw_float", output_kind="lowres_logits")
    fp32 = export_onnx(model, contract, tmp_path / "m.onnx")
    fp16 = convert_fp16(fp32, tmp_path / "m_fp16.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 128)).astype(np.float32)
    with open_engine(fp32, providers="cpu") as engine:
        reference = engine.infer(x)
    # fp32 is built without TF32 (the sidecar says so) and must agree within 0.1 % of the logit range.
    for source, precision, tolerance in ((fp32, "fp32", 1e-3), (fp16, "fp16", 0.05)):
        engine_path = tmp_path / f"m_{precision}.engine"
        built = trt_export.build_engine(source, engine_path, precision=precision, workspace_mb=512,
                                        timing_cache=tmp_path / "timing.cache")
        assert built.contract.precision == precision and read_sidecar(engine_path) == built
        assert built.build["tf32"] is (precision != "fp32")
        with open_engine(engine_path) as engine:
            got = engine.infer(x)
        assert np.abs(got - reference).max() < tolerance * np.abs(reference).max()
    assert (tmp_path / "timing.cache").stat().st_size > 0
