"""Runtime engines: backend choice, contract reading, input checks, sidecar refusal, torch-free import."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.contract import ContractError, ModelContract
from runtime.cuda import device as device_module
from runtime.engines import EngineError, check_batch, open_engine
from runtime.engines.base import Engine
from runtime.engines.onnxruntime_engine import CPU_EP, CUDA_EP, TENSORRT_EP, choose_providers
from runtime.engines.sidecar import EngineSidecar, write_sidecar

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ModelContract(classes=("road", "car"), palette=((128, 64, 128), (0, 0, 142)),
                         mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(4, 6),
                         input_layout="nchw_float", output_kind="logits", dataset="synthetic")
WEIGHT = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]], np.float32)  # 1x1 conv: 3 channels -> 2 classes


def tiny_onnx(path: Path, contract: ModelContract | None = CONTRACT, batch=1) -> Path:
    """A 1x1 convolution as a whole 'network', with the contract in metadata_props."""
    conv = helper.make_node("Conv", ["input", "weight"], ["output"])
    graph = helper.make_graph(
        [conv], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 4, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 2, 4, 6])],
        [numpy_helper.from_array(WEIGHT.reshape(2, 3, 1, 1), "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if contract is not None:
        for key, value in contract.to_metadata().items():
            model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def expected_logits(batch: np.ndarray) -> np.ndarray:
    return np.einsum("kc,nchw->nkhw", WEIGHT, batch)


# ---------------------------------------------------------------- provider choice

def test_auto_prefers_tensorrt_then_cuda_then_cpu():
    available = [CPU_EP, CUDA_EP, TENSORRT_EP, "AzureExecutionProvider"]
    assert choose_providers("auto", available) == [TENSORRT_EP, CUDA_EP, CPU_EP]
    assert choose_providers("auto", [CPU_EP]) == [CPU_EP]


def test_named_provider_must_be_available_and_keeps_cpu_fallback():
    assert choose_providers("cuda", [CPU_EP, CUDA_EP]) == [CUDA_EP, CPU_EP]
    assert choose_providers("cpu", [CPU_EP]) == [CPU_EP]
    with pytest.raises(EngineError, match="'tensorrt' is not available"):
        choose_providers("tensorrt", [CPU_EP])


# ---------------------------------------------------------------- ONNX Runtime engine

def test_onnxruntime_engine_reads_contract_and_runs(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx")
    batch = np.random.default_rng(0).standard_normal((1, 3, 4, 6)).astype(np.float32)
    with open_engine(path, threads=1) as engine:
        assert engine.contract == CONTRACT
        np.testing.assert_allclose(engine.infer(batch), expected_logits(batch), atol=1e-6)
        info = engine.describe()
    assert info["backend"] == "onnxruntime" and info["provider"] == CPU_EP and info["device"] == "cpu"
    assert info["threads"] == 1 and info["precision"] == "fp32"


def test_onnxruntime_workers_sleep_between_inferences(tmp_path):
    with open_engine(tiny_onnx(tmp_path / "m.onnx")) as engine:
        options = engine.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_fixed_batch_graph_runs_a_larger_batch_in_steps(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx", batch=1)
    batch = np.random.default_rng(1).standard_normal((3, 3, 4, 6)).astype(np.float32)
    with open_engine(path) as engine:
        np.testing.assert_allclose(engine.infer(batch), expected_logits(batch), atol=1e-6)


def test_label_types_the_runtime_cannot_take_are_refused_when_the_artefact_opens(tmp_path):
    contract = ModelContract(**{**CONTRACT.__dict__, "output_kind": "labels"})
    argmax = helper.make_node("ArgMax", ["input"], ["output"], axis=1, keepdims=0)  # int64, as ONNX makes it
    graph = helper.make_graph([argmax], "labels",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 6])],
                              [helper.make_tensor_value_info("output", TensorProto.INT64, [1, 4, 6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in contract.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(tmp_path / "argmax.onnx"))
    with pytest.raises(EngineError, match=r"argmax\.onnx gives int64 labels, the runtime takes uint8 or int32"):
        open_engine(tmp_path / "argmax.onnx")


class _Chunked(Engine):
    """The base class's batch splitting alone, recording the slice sizes it is given."""

    name, path, contract = "chunked", Path("chunked.engine"), CONTRACT

    def infer(self, batch):
        return batch


@pytest.mark.parametrize("count, limits, sizes", [
    (7, dict(most=3), [3, 3, 1]),
    (6, dict(exact=2), [2, 2, 2]),
    (5, dict(), [5]),
])
def test_batches_are_split_into_exact_or_bounded_slices(count, limits, sizes):
    seen = []
    batch = np.arange(count, dtype=np.float32)
    joined = _Chunked().run_in_chunks(batch, lambda part: seen.append(len(part)) or part * 2, **limits)
    assert seen == sizes
    np.testing.assert_array_equal(joined, batch * 2)


def test_batches_that_do_not_split_are_refused():
    with pytest.raises(EngineError, match="takes batches of exactly 2; got 5"):
        _Chunked().run_in_chunks(np.zeros(5), lambda part: part, exact=2)
    with pytest.raises(EngineError, match="empty batch"):
        _Chunked().run_in_chunks(np.zeros(0), lambda part: part, most=8)


def test_artefact_without_contract_is_refused_in_one_line(tmp_path):
    path = tiny_onnx(tmp_path / "bare.onnx", contract=None)
    with pytest.raises(ContractError, match=r"bare\.onnx carries no model contract.*export\.run") as info:
        open_engine(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("batch, message", [
    (np.zeros((1, 3, 4, 6), np.uint8), "is uint8, the model takes float32"),
    (np.zeros((1, 4, 6, 3), np.float32), r"shape \(1, 4, 6, 3\), the model takes \(N, 3, 4, 6\)"),
    (np.zeros((3, 4, 6), np.float32), r"shape \(3, 4, 6\)"),
])
def test_wrong_input_is_refused(batch, message):
    with pytest.raises(EngineError, match=message):
        check_batch(CONTRACT, batch)


def test_raw_byte_contract_takes_nhwc_uint8():
    contract = ModelContract(**{**CONTRACT.__dict__, "input_layout": "nhwc_uint8"})
    batch = np.zeros((2, 4, 6, 3), np.uint8)
    assert check_batch(contract, batch) is batch


# ---------------------------------------------------------------- backend dispatch

def test_open_engine_needs_a_known_suffix_or_backend(tmp_path):
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"")
    with pytest.raises(EngineError, match=r"model\.bin.*\.onnx, \.engine, \.ts"):
        open_engine(odd)
    with pytest.raises(EngineError, match="unknown backend 'tflite'"):
        open_engine(odd, backend="tflite")


def test_open_engine_names_a_missing_artefact(tmp_path):
    with pytest.raises(EngineError, match=r"missing\.onnx not found"):
        open_engine(tmp_path / "missing.onnx")


# ---------------------------------------------------------------- TensorRT engine without TensorRT

def _sidecar(**changes) -> EngineSidecar:
    values = dict(tensorrt_version="10.3.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
                  precision="fp16", contract=CONTRACT, build={"mode": "strongly_typed"})
    values.update(changes)
    return EngineSidecar(**values)


def _fake_backend(monkeypatch, version: str, gpu: str, capability=(9, 0)):
    """TensorRT and CUDA stand-ins (tests/runtime/cuda_standins.py) reporting this version and GPU."""
    from tests.runtime.cuda_standins import StandInDriver, StandInTensorRT, pycuda_device

    device, driver, _ = pycuda_device(StandInDriver(gpu_name=gpu, capability=capability))
    monkeypatch.setitem(sys.modules, "tensorrt", StandInTensorRT(driver, version=version))
    monkeypatch.setattr(device_module, "open_device", lambda index=0, library="auto": device)


def test_tensorrt_engine_refuses_an_engine_from_another_tensorrt(tmp_path, monkeypatch):
    engine_path = tmp_path / "m_fp16.engine"
    engine_path.write_bytes(b"plan")
    write_sidecar(engine_path, _sidecar())
    _fake_backend(monkeypatch, version="10.7.0", gpu="NVIDIA H100 80GB HBM3")
    with pytest.raises(EngineError, match=r"built with TensorRT 10\.3\.0, this machine has 10\.7\.0.*rebuild"):
        open_engine(engine_path)


def test_tensorrt_engine_refuses_an_engine_for_another_gpu(tmp_path, monkeypatch):
    engine_path = tmp_path / "m_fp16.engine"
    engine_path.write_bytes(b"plan")
    write_sidecar(engine_path, _sidecar())
    _fake_backend(monkeypatch, version="10.3.0", gpu="NVIDIA A100-SXM4-40GB", capability=(8, 0))
    with pytest.raises(EngineError, match=r"built for NVIDIA H100 80GB HBM3, this machine has NVIDIA A100"):
        open_engine(engine_path)


def test_tensorrt_engine_without_sidecar_is_refused(tmp_path):
    engine_path = tmp_path / "m.engine"
    engine_path.write_bytes(b"plan")
    with pytest.raises(EngineError, match=r"m\.engine has no sidecar m\.engine\.json"):
        open_engine(engine_path)


def test_tensorrt_engine_names_the_missing_package(tmp_path, monkeypatch):
    engine_path = tmp_path / "m.engine"
    engine_path.write_bytes(b"plan")
    write_sidecar(engine_path, _sidecar())
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    with pytest.raises(EngineError, match=r"needs the `tensorrt` Python package"):
        open_engine(engine_path)


# ---------------------------------------------------------------- torch backend

@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torch_engine_runs_a_traced_module_with_contract(tmp_path):
    torch = pytest.importorskip("torch")
    conv = torch.nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(WEIGHT.reshape(2, 3, 1, 1)))
    traced = torch.jit.trace(conv, torch.zeros(1, 3, 4, 6))
    path = tmp_path / "m.ts"
    torch.jit.save(traced, str(path), _extra_files={"contract.json": json.dumps(CONTRACT.to_metadata())})
    batch = np.random.default_rng(2).standard_normal((2, 3, 4, 6)).astype(np.float32)
    with open_engine(path, device="cpu") as engine:
        assert engine.contract == CONTRACT
        np.testing.assert_allclose(engine.infer(batch), expected_logits(batch), atol=1e-5)
        assert engine.describe()["backend"] == "torch"

    bare = tmp_path / "bare.ts"
    torch.jit.save(traced, str(bare))
    with pytest.raises(EngineError, match=r"bare\.ts carries no model contract"):
        open_engine(bare)


# ---------------------------------------------------------------- the vehicle has no torch

def test_runtime_engines_import_and_run_without_torch_or_training(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx")
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "training", "export"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
import numpy as np
from runtime.engines import open_engine
import runtime.engines.onnxruntime_engine, runtime.engines.tensorrt_engine, runtime.engines.torch_engine
import runtime.engines.sidecar
with open_engine({str(path)!r}) as engine:
    print(engine.infer(np.ones((1, 3, 4, 6), np.float32)).shape)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 2, 4, 6)"
