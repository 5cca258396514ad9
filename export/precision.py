"""fp16 and int8 variants of an fp32 ONNX artefact, made at the ONNX level so every backend can use them.

int8 is static QDQ quantisation (per-channel weights) calibrated on training images that went
through the runtime's own preprocessing; fp16 is a converted graph whose inputs and outputs
stay fp32, so the runtime feeds every precision the same arrays.
"""
from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers import float16
from onnxruntime.transformers.onnx_model import OnnxModel

from export.onnx_export import ExportError, INPUT_NAME, read_contract, save_onnx, set_contract, with_precision

# Reductions over a whole feature map (ASPP's image pool) can overflow fp16 partial sums.
FP16_KEEP_FP32_OPS = ("ReduceMean", "GlobalAveragePool")

# Activation encoding per consumer of the int8 graph: ONNX Runtime's x86 kernels are fastest
# with uint8 activations against int8 weights (u8s8, VNNI: 1.5-2x faster than s8s8 on resnet18),
# while TensorRT's explicit quantisation takes signed int8 with zero point 0 only.
INT8_TARGETS = {
    "onnxruntime": (QuantType.QUInt8, False),
    "tensorrt": (QuantType.QInt8, True),
}

# Aliases for `keep_fp32` that name layers by role rather than by exporter-made node names.
FIRST_CONV = "first_conv"
LAST_CONV = "last_conv"


class CalibrationError(ExportError):
    """No usable calibration data."""


def convert_fp16(src: str | Path, dst: str | Path, *, keep_fp32_ops: Sequence[str] = FP16_KEEP_FP32_OPS) -> Path:
    """fp16 weights and activations, fp32 at the graph's inputs and outputs.

    onnxruntime's copy of the float16 converter is used rather than onnxconverter-common's:
    the latter (1.16) fails on a uint8 input Cast and on an fp32-kept op that feeds a graph output.
    """
    model = onnx.load(str(src))
    contract = read_contract(src)
    block = list(float16.DEFAULT_OP_BLOCK_LIST) + list(keep_fp32_ops)
    converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    graph = OnnxModel(converted)
    graph.topological_sort()  # the converter appends its input casts at the end of the node list
    set_contract(graph.model, with_precision(contract, "fp16"))
    return save_onnx(graph.model, dst)


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed network inputs one image at a time (batch 1 fits fixed and dynamic graphs)."""

    def __init__(self, arrays: Iterable[np.ndarray], input_name: str = INPUT_NAME):
        self._arrays = iter(arrays)
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        array = next(self._arrays, None)
        if array is None:
            return None
        return {self._input_name: np.ascontiguousarray(array)[None]}


def resolve_nodes(model: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    """Node names for `names`, where `first_conv` / `last_conv` stand for the first / last Conv node."""
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    known = {node.name for node in model.graph.node}
    resolved = []
    for name in names:
        if name == FIRST_CONV and convs:
            resolved.append(convs[0])
        elif name == LAST_CONV and convs:
            resolved.append(convs[-1])
        elif name in known:
            resolved.append(name)
        else:
            raise ExportError(
                f"int8 keep_fp32 entry {name!r} is neither {FIRST_CONV}, {LAST_CONV} nor a node of the graph; "
                "fix export.int8_keep_fp32")
    return resolved


def quantize_int8(src: str | Path, dst: str | Path, calibration: Iterable[np.ndarray], *,
                  target: str = "onnxruntime", keep_fp32: Sequence[str] = (), per_channel: bool = True,
                  method: CalibrationMethod = CalibrationMethod.MinMax) -> Path:
    """Static QDQ int8 of `src` calibrated on `calibration` (network inputs in the contract's layout).

    Weights are symmetric int8, per output channel. Activations follow `target` (INT8_TARGETS).
    """
    if target not in INT8_TARGETS:
        raise ExportError(f"int8 target {target!r} is not one of {', '.join(INT8_TARGETS)}")
    activation_type, symmetric = INT8_TARGETS[target]
    contract = read_contract(src)
    arrays = iter(calibration)
    first = next(arrays, None)
    if first is None:
        raise CalibrationError(
            "int8 calibration got no images; check export.calibration_images and the split lists")
    with tempfile.TemporaryDirectory(prefix="stpg-int8-") as work:
        prepared = os.path.join(work, "prepared.onnx")
        quantized = os.path.join(work, "quantized.onnx")
        # Shape inference and graph fusions (Conv+BN) first, so quantisation sees the final ops.
        quant_pre_process(str(src), prepared, skip_symbolic_shape=True)
        prepared_model = onnx.load(prepared)
        # Unfused BatchNorms (after ASPP's concat) have no int8 kernel: quantising them would only
        # round their statistics to 8 bits.
        batch_norms = [node.name for node in prepared_model.graph.node if node.op_type == "BatchNormalization"]
        reader = ArrayCalibrationReader(itertools.chain([first], arrays))
        quantize_static(
            prepared, quantized, reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=activation_type, weight_type=QuantType.QInt8,
            nodes_to_exclude=resolve_nodes(prepared_model, keep_fp32) + batch_norms, calibrate_method=method,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
        model = onnx.load(quantized)
    set_contract(model, with_precision(contract, "int8"))
    return save_onnx(model, dst)
