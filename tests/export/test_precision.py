"""fp16 and int8 variants of a small DeepLabV3+ (resnet18, 64x128, 5 classes), run with ONNX Runtime on CPU."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.onnx_export import ExportError, export_onnx, make_contract, read_contract
from export.precision import (ArrayCalibrationReader, CalibrationError, convert_fp16, quantize_int8,
                              resolve_nodes)
from runtime.engines import open_engine
from training.models import build_model
from tests.export.fixtures import SIZE, model_info


INFO = model_info("cd")




def smooth_inputs(count: int, seed: int) -> list[np.ndarray]:
    """Normalised float CHW network inputs of smooth random scenes."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 1, (count, 3, 4, 8)).astype(np.float32))
    images = torch.nn.functional.interpolate(coarse, size=SIZE, mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor(INFO["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(INFO["std"]).view(1, 3, 1, 1)
    return list(((images - mean) / std).numpy())


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("resnet18", 5).eval()
    out = tmp_path_factory.mktemp("precision")
    contract = make_contract(INFO, input_size=SIZE, input_layout="nchw_float", output_kind="lowres_logits")
    fp32 = export_onnx(model, contract, out / "m.onnx")
    fp16 = convert_fp16(fp32, out / "m_fp16.onnx")
    int8 = quantize_int8(fp32, out / "m_int8.onnx", smooth_inputs(8, seed=1))
    return {"fp32": fp32, "fp16": fp16, "int8": int8, "contract": contract}


def run(path, inputs) -> np.ndarray:
    with open_engine(path, threads=1) as engine:
        return engine.infer(np.stack(inputs))


def test_variants_keep_the_contract_with_their_precision(artefacts):
    for precision in ("fp16", "int8"):
        assert read_contract(artefacts[precision]) == dataclasses.replace(artefacts["contract"], precision=precision)


def test_fp16_keeps_fp32_io_and_stays_close(artefacts):
    model = onnx.load(str(artefacts["fp16"]))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(init.data_type == TensorProto.FLOAT16 for init in model.graph.initializer)
    inputs = smooth_inputs(2, seed=2)
    reference, got = run(artefacts["fp32"], inputs), run(artefacts["fp16"], inputs)
    scale = np.abs(reference).max()
    assert np.abs(got - reference).max() < 0.02 * scale
    assert np.mean(got.argmax(1) == reference.argmax(1)) > 0.98


def test_fp16_keeps_the_image_pool_mean_in_fp32(artefacts):
    model = onnx.load(str(artefacts["fp16"]))
    producers = {out: node for node in model.graph.node for out in node.output}
    means = [node for node in model.graph.node if node.op_type == "ReduceMean"]
    assert means
    for node in means:
        cast = producers[node.input[0]]
        assert cast.op_type == "Cast"
        assert helper.get_attribute_value(cast.attribute[0]) == TensorProto.FLOAT


def test_int8_is_qdq_with_uint8_activations_and_per_channel_weights(artefacts):
    model = onnx.load(str(artefacts["int8"]))
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    quantize = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    assert quantize
    assert all(initializers[node.input[2]].dtype == np.uint8 for node in quantize)
    producers = {out: node for node in model.graph.node for out in node.output}
    first_conv = next(node for node in model.graph.node if node.op_type == "Conv")
    weight_dq = producers[first_conv.input[1]]
    assert weight_dq.op_type == "DequantizeLinear"
    assert initializers[weight_dq.input[0]].dtype == np.int8
    assert initializers[weight_dq.input[1]].shape == (64,)  # one scale per output channel of conv1
    assert not np.any(initializers[weight_dq.input[2]])  # symmetric weights


def test_int8_labels_mostly_agree_with_fp32(artefacts):
    inputs = smooth_inputs(4, seed=3)
    reference, got = run(artefacts["fp32"], inputs), run(artefacts["int8"], inputs)
    assert got.dtype == np.float32 and got.shape == reference.shape
    assert np.mean(got.argmax(1) == reference.argmax(1)) > 0.8


def test_int8_for_tensorrt_is_symmetric_signed_and_keeps_named_layers_fp32(artefacts, tmp_path):
    path = quantize_int8(artefacts["fp32"], tmp_path / "trt.onnx", smooth_inputs(2, seed=4),
                         target="tensorrt", keep_fp32=["first_conv", "last_conv"])
    model = onnx.load(str(path))
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            zero_point = initializers[node.input[2]]
            assert zero_point.dtype == np.int8 and not np.any(zero_point)
    producers = {out: node for node in model.graph.node for out in node.output}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    for conv in (convs[0], convs[-1]):  # weights stay float initializers, no DequantizeLinear
        assert conv.input[1] in initializers and initializers[conv.input[1]].dtype == np.float32
        assert conv.input[1] not in producers
    assert producers[convs[1].input[1]].op_type == "DequantizeLinear"


def test_int8_without_calibration_images_is_refused(artefacts, tmp_path):
    with pytest.raises(CalibrationError, match="no images"):
        quantize_int8(artefacts["fp32"], tmp_path / "x.onnx", [])
    assert not (tmp_path / "x.onnx").exists()


def test_int8_unknown_target_is_refused(artefacts, tmp_path):
    with pytest.raises(ExportError, match="target"):
        quantize_int8(artefacts["fp32"], tmp_path / "x.onnx", smooth_inputs(1, seed=0), target="dsp")


def _conv_chain(names):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu")]
    prev = "r"
    for i, name in enumerate(names):
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], name=name))
        prev = f"c{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)])
    return helper.make_model(graph)


def test_resolve_nodes_maps_role_aliases_and_checks_names():
    model = _conv_chain(["stem", "mid", "classifier"])
    assert resolve_nodes(model, ["first_conv", "last_conv", "relu"]) == ["stem", "classifier", "relu"]
    assert resolve_nodes(model, []) == []
    with pytest.raises(ExportError, match="'decoder'.*export.int8_keep_fp32"):
        resolve_nodes(model, ["decoder"])


def test_calibration_reader_feeds_batch_one_then_stops():
    arrays = [np.full((3, 2, 2), i, np.float32) for i in range(2)]
    reader = ArrayCalibrationReader(arrays, input_name="input")
    first, second, end = reader.get_next(), reader.get_next(), reader.get_next()
    assert first["input"].shape == (1, 3, 2, 2) and first["input"][0, 0, 0, 0] == 0
    assert second["input"][0, 0, 0, 0] == 1
    assert end is None
