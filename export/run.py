"""DVC stage `export`: deployable checkpoint -> ONNX fp32/fp16/int8, TorchScript, TensorRT engines.

Everything is written into a staging folder first and verified there against the PyTorch model;
only when every artefact passes its gate do they move into `export.out_dir` and the metrics
into metrics/export.json, so a failed run leaves nothing that DVC could take for a result.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from export.onnx_export import ExportError, check_opset, export_onnx, export_torchscript, make_contract
from export.precision import convert_fp16, quantize_int8
from export.verify import ParityGateError, Sample, gate, network_input, torch_reference, verify_artefact
from runtime import files
from runtime.contract import ContractError, ModelContract
from runtime.engines.base import EngineError
from runtime.engines.sidecar import EngineSidecar, sidecar_path
from training import cli, params
from training.data import datasets
from training.deployable import DeployableError, load_deployable
from training.models import ModelConfigError

STEM = "gen_student"


def onnx_name(precision: str) -> str:
    return f"{STEM}.onnx" if precision == "fp32" else f"{STEM}_{precision}.onnx"


def engine_name(precision: str) -> str:
    return f"{STEM}.engine" if precision == "fp32" else f"{STEM}_{precision}.engine"


def evenly_spaced(items: list, count: int) -> list:
    """`count` items spread over the list (all of them when it is shorter), order kept."""
    if count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def _resolve(path: str, root: Path) -> Path:
    """Split lists and the manifest hold project-relative paths; older lists may be root-relative."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() or candidate.exists() else root / path


def _read_frame(path: Path) -> np.ndarray:
    return np.ascontiguousarray(datasets.read_image(path)[:, :, ::-1])  # runtime frames are BGR


def validation_samples(manifest: dict, count: int) -> list[Sample]:
    pairs = evenly_spaced([tuple(pair) for pair in manifest["val"]], count)
    if not pairs:
        raise ExportError("the dataset manifest lists no val images; re-run `dvc repro prepare`")
    root = Path(manifest["root"])
    return [Sample(_read_frame(_resolve(image, root)), datasets.read_label(_resolve(label, root)))
            for image, label in pairs]


def calibration_inputs(split_dir: Path, root: Path, contract: ModelContract, count: int) -> list[np.ndarray]:
    """Network inputs from training images (labeled + unlabeled lists), preprocessed as the runtime does."""
    pairs = []
    for name in ("labeled.txt", "unlabeled.txt"):
        pairs += datasets.read_pairs_file(split_dir / name, root, allow_empty=name == "unlabeled.txt")
    return [network_input(_read_frame(_resolve(image, root)), contract) for image, _ in evenly_spaced(pairs, count)]


def tensorrt_plan(mode: str) -> dict:
    """{'status': 'off' | 'skipped' | 'build', 'reason'?}; raises when required but impossible."""
    if mode == "off":
        return {"status": "off"}
    from export.tensorrt import TensorRTUnavailable, unavailable_reason

    reason = unavailable_reason()
    if reason is None:
        return {"status": "build"}
    if mode == "required":
        raise TensorRTUnavailable(
            f"export.tensorrt is 'required' but TensorRT cannot run here: {reason}; "
            "set export.tensorrt: auto to skip the engines on this machine")
    return {"status": "skipped", "reason": reason}


def build_engines(cfg, staging: Path, calibration: list[np.ndarray]) -> dict[str, EngineSidecar]:
    """Engines per precision into `staging`; returns {precision: sidecar written}."""
    from export.tensorrt import build_engine

    built = {}
    with tempfile.TemporaryDirectory(prefix="stpg-trt-") as work:
        for precision in cfg.precisions:
            if cfg.tensorrt_source == "builder_flags":
                source = staging / onnx_name("fp32")
            elif precision == "int8":
                # TensorRT takes only symmetric signed int8; the shipped int8 ONNX is tuned for CPUs.
                source = quantize_int8(staging / onnx_name("fp32"), Path(work) / "int8_tensorrt.onnx",
                                       calibration, target="tensorrt", keep_fp32=cfg.int8_keep_fp32)
            else:
                source = staging / onnx_name(precision)
            built[precision] = build_engine(
                source, staging / engine_name(precision), precision=precision, calibration=calibration,
                workspace_mb=cfg.tensorrt_workspace_mb, timing_cache=cfg.tensorrt_timing_cache)
    return built


def export_all(cfg, staging: Path, model, contract: ModelContract, calibration: list[np.ndarray],
               trt: dict) -> dict[str, str]:
    """Write every artefact into `staging`; returns {metrics key: file name}. Fills in `trt` when building."""
    artefacts = {"onnx_fp32": onnx_name("fp32")}
    export_onnx(model, contract, staging / onnx_name("fp32"), opset=cfg.opset, dynamic_batch=cfg.dynamic_batch)
    if "fp16" in cfg.precisions:
        convert_fp16(staging / onnx_name("fp32"), staging / onnx_name("fp16"))
        artefacts["onnx_fp16"] = onnx_name("fp16")
    if "int8" in cfg.precisions:
        quantize_int8(staging / onnx_name("fp32"), staging / onnx_name("int8"), calibration,
                      keep_fp32=cfg.int8_keep_fp32)
        artefacts["onnx_int8"] = onnx_name("int8")
    export_torchscript(model, contract, staging / f"{STEM}.ts")
    artefacts["torchscript_fp32"] = f"{STEM}.ts"
    if trt["status"] == "build":
        for precision, built in build_engines(cfg, staging, calibration).items():
            artefacts[f"tensorrt_{precision}"] = engine_name(precision)
            trt.update(status="built", tensorrt_version=built.tensorrt_version, gpu=built.gpu_name,
                       source=cfg.tensorrt_source)
    return artefacts


def make_staging(out_dir: Path) -> Path:
    """The staging folder, beside the output folder rather than in it (DVC owns that folder as a
    whole); made first, so an unwritable place is refused before any work."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-staging-"))
    except OSError as exc:
        raise ExportError(f"export.out_dir {out_dir}: cannot write in {out_dir.parent} ({exc.strerror}); "
                          "set export.out_dir to a folder on a writable disk") from None


def publish_artefacts(staging: Path, out_dir: Path, names) -> None:
    """Move the verified artefacts into `out_dir`, each durable before the next (runtime.files.publish)."""
    out_dir.mkdir(exist_ok=True)
    for name in names:
        if name.endswith(".engine"):  # the sidecar first: an engine is never in place without it
            files.publish(sidecar_path(staging / name), sidecar_path(out_dir / name))
        files.publish(staging / name, out_dir / name)


def run(params_path: str, manifest_path: str, metrics_path: str) -> dict:
    cfg = params.load("export", params_path)
    split_cfg = params.load("split", params_path)
    check_opset(cfg.opset)
    trt = tensorrt_plan(cfg.tensorrt)
    out_dir = Path(cfg.out_dir)
    staging = make_staging(out_dir)
    try:
        model, info = load_deployable(cfg.checkpoint)
        contract = make_contract(info, input_size=cfg.input_size, input_layout=cfg.input, output_kind=cfg.output)
        manifest = datasets.read_manifest(manifest_path)
        samples = validation_samples(manifest, cfg.verify_images)
        needs_calibration = "int8" in cfg.precisions or trt["status"] == "build"
        calibration = (calibration_inputs(Path(split_cfg.out_dir), Path(manifest["root"]), contract,
                                          cfg.calibration_images) if needs_calibration else [])
        artefacts = export_all(cfg, staging, model, contract, calibration, trt)
        reference = torch_reference(model, contract, samples)
        reports, failures = {}, []
        for key, name in artefacts.items():
            report = verify_artefact(staging / name, reference)
            report.path = str(out_dir / name)
            try:
                gate(report, cfg.tolerance)
            except ParityGateError as exc:
                failures.append(exc)
            reports[key] = report.to_json()
            print(f"{key:18s} {report.size_bytes / 1e6:7.1f} MB  agreement {report.label_agreement:.4f}  "
                  f"mIoU {100 * report.miou:6.2f} (torch {100 * report.miou_torch:6.2f})  "
                  f"{'ok' if report.passed else 'FAILED'}")
        if failures:
            raise failures[0]
        publish_artefacts(staging, out_dir, artefacts.values())
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    metrics = {
        "artefacts": reports,
        "tensorrt": trt,
        "input_size": list(contract.input_size),
        "input_layout": contract.input_layout,
        "output_kind": contract.output_kind,
        "verify_images": len(samples),
        "calibration_images": len(calibration),
        "checkpoint_sha256": contract.checkpoint_sha256,
    }
    files.write_json(metrics_path, metrics)
    return metrics


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", default="data/prepared/manifest.json")
    parser.add_argument("--metrics", default="metrics/export.json")
    args = parser.parse_args(argv)
    metrics = run(args.params, args.manifest, args.metrics)
    print(f"export: {len(metrics['artefacts'])} artefacts verified -> {args.metrics}; "
          f"tensorrt {json.dumps(metrics['tensorrt'])}")


def entry(argv=None) -> None:
    """The stage's command line: a user error is one line on stderr and exit code 2."""
    cli.run(lambda: main(argv), ExportError, DeployableError, ContractError, EngineError, ModelConfigError)


if __name__ == "__main__":
    entry()
