"""Parity metrics, the tolerance gate, and the export stage end to end on a tiny dataset."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export import run as export_run
from export.onnx_export import export_onnx, make_contract
from export.verify import (ArtefactReport, ParityGateError, Sample, gate, labels_of,
                           torch_reference, verify_artefact)
from training.deployable import save_deployable
from training import params
from training.models import build_model
from tests.conftest import params_copy
from tests.export.fixtures import SIZE, model_info


INFO = model_info("ef")
# params.yaml's tolerances, with the int8 ones the cases below are computed for
TOLERANCE = params.section("export", tolerance=dict(int8_miou_delta=1.5, int8_label_agreement=0.95)).tolerance




def smooth_frame(rng, height=96, width=160) -> np.ndarray:
    coarse = rng.uniform(0, 255, (6, 10, 3)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def samples(count: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        frame = smooth_frame(rng)
        label = (frame[:, :, 0] // 52).astype(np.uint8)
        label[:5] = 255
        result.append(Sample(frame, label))
    return result


# ---------------------------------------------------------------- the gate

def _report(**changes) -> ArtefactReport:
    values = dict(path="models/export/m_int8.onnx", backend="onnxruntime", precision="int8", size_bytes=1,
                  max_abs_logit_delta=0.1, label_agreement=0.97, miou=0.60, miou_torch=0.61, miou_delta_points=-1.0)
    values.update(changes)
    return ArtefactReport(**values)


def test_gate_passes_within_tolerance():
    assert gate(_report(), TOLERANCE).passed is True


def test_gate_fails_on_low_agreement_naming_artefact_value_and_tolerance():
    report = _report(label_agreement=0.94)
    with pytest.raises(ParityGateError, match=r"m_int8\.onnx.*0\.9400.*int8_label_agreement = 0\.95"):
        gate(report, TOLERANCE)
    assert report.passed is False


@pytest.mark.parametrize("delta", [-1.6, 1.6])
def test_gate_fails_on_miou_drift_either_way(delta):
    with pytest.raises(ParityGateError, match=r"m_int8\.onnx.*int8_miou_delta = 1\.5"):
        gate(_report(miou=0.61 + delta / 100, miou_delta_points=delta), TOLERANCE)


# ---------------------------------------------------------------- a real artefact

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet18", 5).eval()


def test_faithful_artefact_passes_and_corrupted_one_fails(model, tmp_path):
    # Raw-byte input here; the stage test below covers the float layout.
    contract = make_contract(INFO, input_size=SIZE, input_layout="nhwc_uint8", output_kind="lowres_logits")
    path = export_onnx(model, contract, tmp_path / "m.onnx")
    reference = torch_reference(model, contract, samples(3))

    report = gate(verify_artefact(path, reference), TOLERANCE)
    assert report.max_abs_logit_delta < 1e-4
    assert report.label_agreement > 0.999 and abs(report.miou_delta_points) < 0.1

    graph = onnx.load(str(path))
    classifier = [node for node in graph.graph.node if node.op_type == "Conv"][-1]
    bias = next(init for init in graph.graph.initializer if init.name == classifier.input[2])
    values = numpy_helper.to_array(bias).copy()
    rare_class = int(np.argmin(np.bincount(reference.predictions.ravel(), minlength=5)))
    values[rare_class] += 1000.0  # that class now wins every pixel
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(graph, str(broken))

    report = verify_artefact(broken, reference)
    assert report.label_agreement < 0.5
    with pytest.raises(ParityGateError, match=r"broken\.onnx agrees with PyTorch on 0\.\d+ of pixels"):
        gate(report, TOLERANCE)


# ---------------------------------------------------------------- the DVC stage

@pytest.fixture
def project(tmp_path, model, monkeypatch):
    """A tiny project: 6 train / 3 val images in the Cityscapes layout, manifest, split lists, checkpoint."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    pairs = {"train": [], "val": []}
    for split, count in (("train", 6), ("val", 3)):
        for folder in ("leftImg8bit", "gtFine"):
            (tmp_path / "data/ds" / folder / split / "town").mkdir(parents=True)
        for i in range(count):
            frame = smooth_frame(rng)
            image = f"data/ds/leftImg8bit/{split}/town/t_{i}_leftImg8bit.png"
            label = f"data/ds/gtFine/{split}/town/t_{i}_gtFine_labelTrainIds.png"
            cv2.imwrite(image, frame)
            cv2.imwrite(label, (frame[:, :, 0] // 52).astype(np.uint8))
            pairs[split].append([image, label])
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "data/prepared/manifest.json").write_text(json.dumps({"dataset": "synthetic", "root": "data/ds", **pairs}))
    (tmp_path / "data/splits").mkdir()
    (tmp_path / "data/splits/labeled.txt").write_text("".join(f"{i} {l}\n" for i, l in pairs["train"][:2]))
    (tmp_path / "data/splits/unlabeled.txt").write_text("".join(f"{i} {l}\n" for i, l in pairs["train"][2:]))
    save_deployable("models/gen_student.pt", model, classes=INFO["classes"], palette=INFO["palette"],
                    mean=INFO["mean"], std=INFO["std"], dataset="synthetic", method="stpg", iteration=1)
    return tmp_path


def _write_params(export: dict) -> None:
    base = {"input_size": list(SIZE), "calibration_images": 4, "verify_images": 3, "tensorrt": "auto"}
    params_copy(Path("params.yaml"), export={**base, **export})


def test_stage_writes_verified_artefacts_and_metrics(project):
    _write_params({"precisions": ["fp32", "int8"], "tolerance": {"int8_label_agreement": 0.8}})
    export_run.entry([])
    out = project / "models/export"
    assert sorted(p.name for p in out.iterdir()) == ["gen_student.onnx", "gen_student.ts", "gen_student_int8.onnx"]
    assert not list((project / "models").glob(".export-staging-*"))
    metrics = json.loads((project / "metrics/export.json").read_text())
    assert set(metrics["artefacts"]) == {"onnx_fp32", "onnx_int8", "torchscript_fp32"}
    int8 = metrics["artefacts"]["onnx_int8"]
    assert int8["path"] == "models/export/gen_student_int8.onnx" and int8["precision"] == "int8"
    assert int8["size_bytes"] == (out / "gen_student_int8.onnx").stat().st_size
    assert int8["passed"] is True and int8["miou_delta_points"] == pytest.approx(100 * (int8["miou"] - int8["miou_torch"]))
    assert metrics["artefacts"]["onnx_fp32"]["max_abs_logit_delta"] < 1e-4
    assert metrics["calibration_images"] == 4 and metrics["verify_images"] == 3
    assert metrics["tensorrt"]["status"] in ("skipped", "built")


def test_stage_gate_failure_exits_2_and_writes_nothing(project, capsys):
    _write_params({"precisions": ["fp32"], "tolerance": {"fp32_label_agreement": 1.5}})
    with pytest.raises(SystemExit) as exit_info:
        export_run.entry([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "models/export/gen_student.onnx" in err[0] and "fp32_label_agreement = 1.5" in err[0]
    assert not (project / "models/export").exists()
    assert not list((project / "models").glob(".export-staging-*"))
    assert not (project / "metrics/export.json").exists()
