"""PyTorch network -> ONNX (and TorchScript) artefacts that carry the model contract.

The network is wrapped so the graph takes exactly the input the contract names (normalised
float NCHW, or raw RGB bytes NHWC normalised in-graph) and returns exactly the output it names
(full-resolution logits, stride-4 logits, or uint8 labels). The runtime then needs nothing but
the artefact.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import json
import warnings
from pathlib import Path

import onnx
import onnxslim
import torch
import torch.onnx._constants

from runtime.contract import ModelContract
from runtime import files
from runtime.engines.torch_engine import CONTRACT_FILE as TORCHSCRIPT_CONTRACT_FILE

MIN_OPSET = 17
# The TorchScript exporter's ceiling (20 in torch 2.14), read from torch so an upgrade lifts it.
MAX_OPSET = getattr(torch.onnx._constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
INPUT_NAME = "input"
OUTPUT_NAME = "output"


class ExportError(ValueError):
    """An export problem the user can fix; the message names it and the fix."""


def project_version() -> str:
    try:
        return importlib.metadata.version("stpg-drive")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def make_contract(info: dict, *, input_size, input_layout: str, output_kind: str,
                  precision: str = "fp32") -> ModelContract:
    """The contract of an artefact made from a deployable model (`training.deployable` info)."""
    return ModelContract(
        classes=tuple(info["classes"]),
        palette=tuple(tuple(int(c) for c in rgb) for rgb in info["palette"]),
        mean=tuple(float(v) for v in info["mean"]),
        std=tuple(float(v) for v in info["std"]),
        input_size=(int(input_size[0]), int(input_size[1])),
        input_layout=input_layout,
        output_kind=output_kind,
        precision=precision,
        dataset=str(info.get("dataset", "")),
        checkpoint_sha256=str(info.get("sha256", "")),
        project_version=project_version(),
    )


class DeployWrapper(torch.nn.Module):
    """The network with the contract's input adapter in front and output adapter behind.

    For raw bytes, (x/255 - mean)/std is folded into one multiply-add per channel.
    Labels are uint8: every dataset here has far fewer than 256 classes, and a quarter of the
    bytes of int32 matters for a full-resolution label map copied off the device each frame.
    """

    def __init__(self, model: torch.nn.Module, input_layout: str, output_kind: str, mean, std):
        super().__init__()
        self.model = model
        self.input_layout = input_layout
        self.output_kind = output_kind
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -mean_t / std_t)

    @classmethod
    def for_contract(cls, model: torch.nn.Module, contract: ModelContract) -> "DeployWrapper":
        return cls(model, contract.input_layout, contract.output_kind, contract.mean, contract.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_layout == "nhwc_uint8":
            x = x.permute(0, 3, 1, 2).to(torch.float32) * self.scale + self.shift
        if self.output_kind == "lowres_logits":
            return self.model.forward_lowres(x)
        logits = self.model(x)
        if self.output_kind == "labels":
            return logits.argmax(dim=1).to(torch.uint8)
        return logits


def example_input(contract: ModelContract, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A random input of the contract's layout, for tracing and smoke runs."""
    height, width = contract.input_size
    generator = torch.Generator().manual_seed(seed)
    if contract.input_layout == "nhwc_uint8":
        return torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator)
    return torch.randn(batch, 3, height, width, generator=generator)


def set_contract(model: onnx.ModelProto, contract: ModelContract) -> None:
    """Replace the stpg.* metadata of an ONNX model with `contract`; other entries stay."""
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith("stpg.")]
    del model.metadata_props[:]
    for key, value in kept + sorted(contract.to_metadata().items()):
        model.metadata_props.add(key=key, value=value)


def read_contract(path: str | Path) -> ModelContract:
    model = onnx.load(str(path), load_external_data=False)
    return ModelContract.from_metadata({p.key: p.value for p in model.metadata_props}, source=str(path))


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Check the graph, then write it atomically."""
    onnx.checker.check_model(model)
    with files.atomic_output(path) as tmp:
        onnx.save(model, str(tmp))
    return Path(path)


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            f"ONNX opset {opset} is not supported: the exporter takes opsets {MIN_OPSET}..{MAX_OPSET} "
            f"(set export.opset within that range)")


def export_onnx(model: torch.nn.Module, contract: ModelContract, path: str | Path, *,
                opset: int = MIN_OPSET, dynamic_batch: bool = False) -> Path:
    """Trace `model` with the contract's adapters, simplify, check and write it with the contract."""
    check_opset(opset)
    wrapper = DeployWrapper.for_contract(model, contract).eval()
    buffer = io.BytesIO()
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript; it is still the one that turns this network into a plain graph here.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        torch.onnx.export(
            wrapper, (example_input(contract),), buffer, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
            do_constant_folding=True)
    graph = onnxslim.slim(onnx.load_from_string(buffer.getvalue()))
    set_contract(graph, contract)
    graph.producer_name = "stpg-drive"
    graph.producer_version = contract.project_version
    return save_onnx(graph, path)


def export_torchscript(model: torch.nn.Module, contract: ModelContract, path: str | Path) -> Path:
    """A traced fp32 module for the PyTorch reference engine, the contract in its extra files."""
    wrapper = DeployWrapper.for_contract(model, contract).eval()
    extra = {TORCHSCRIPT_CONTRACT_FILE: json.dumps(contract.to_metadata(), sort_keys=True)}
    with torch.no_grad(), warnings.catch_warnings():
        # torch.jit is deprecated for torch.export, whose programs the vehicle's plain
        # libtorch / torch.jit.load cannot read; tracing is still the portable format.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        traced = torch.jit.trace(wrapper, (example_input(contract),), check_trace=False)
    # serialised in memory, then written by Python: torch's own file writer reports a full disk as a
    # RuntimeError that names neither the file nor the fault
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files=extra)
    files.write_bytes(path, buffer.getvalue())
    return Path(path)


def with_precision(contract: ModelContract, precision: str) -> ModelContract:
    return dataclasses.replace(contract, precision=precision)
