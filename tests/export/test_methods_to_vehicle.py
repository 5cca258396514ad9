"""Every training method to the vehicle at tiny size: the stages' own commands train it, export the
network its page names (ONNX fp32 and int8, each through the parity gate) and segment.py runs the int8
artefact on the first frames of the synthetic dashcam clip. STPG and the supervised baseline take the
same path in tests/test_dvc_pipeline.py's whole chain."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, params_copy

pytestmark = pytest.mark.slow

FRAMES = 3
TINY = dict(
    data=dict(synthetic=dict(num_train=8, num_val=2, height=64, width=128, video_frames=FRAMES)),
    split=dict(labeled_ratio=2, stratify=False),
    model=dict(backbone="resnet18", proj_dim=16),
    train=dict(device="cpu", precision="fp32", iters=2, batch_size=2, crop=[32, 32], scales=[1.0],
               checkpoint_every=2, eval_every=0, log_every=1, workers=0,
               css=dict(num_queries=4, num_negatives=4),
               lpl=dict(pseudo_scales=[1.0], pseudo_flip=False, retrain_iters=2)),
    evaluate=dict(mode="whole"),
    # two iterations leave no stable argmax for int8 to agree with, so its gate is opened as in the
    # pipeline tests; fp32 keeps the project's gate
    export=dict(input_size=[32, 64], precisions=["fp32", "int8"], calibration_images=2, verify_images=2,
                tensorrt="off", tolerance=dict(int8_label_agreement=0.0, int8_miou_delta=100.0)),
)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder with the tiny synthetic set prepared and split (image-level labels included); the
    tests run in it, since the manifest and split lists hold project-relative paths."""
    from training import prepare, split

    folder = tmp_path_factory.mktemp("vehicle")
    before = os.getcwd()
    os.chdir(folder)
    try:
        prepare.main(["--params", str(params_copy(folder / "params.yaml", **TINY))])
        split.main(["--params", "params.yaml"])
        yield folder
    finally:
        os.chdir(before)


def _train(method: str) -> str:
    """The deployable model of `method` (lpl_stage2: stage 1, then the retrain), as the stages write it."""
    from training import lpl_stage2, train

    base = "lpl" if method == "lpl_stage2" else method
    out = f"models/{base}.pt"
    run_params = str(params_copy(Path(f"params-{method}.yaml"), **{**TINY, "train": {
        **TINY["train"], "method": base, "out": out, "checkpoint_dir": f"checkpoints/{base}",
        "lpl": {**TINY["train"]["lpl"], "retrain_out": "models/lpl_retrained.pt"}}}))
    train.main(["--params", run_params, "--live-dir", f"dvclive/{base}"])
    if method != "lpl_stage2":
        return out
    lpl_stage2.main(["--params", run_params, "--live-dir", "dvclive/lpl_retrain"])
    return "models/lpl_retrained.pt"


@pytest.mark.parametrize("method", ["mean_teacher", "cpcl", "css", "lpl", "lpl_stage2"])
def test_method_trains_exports_and_segments(project, method):
    from export import run as export_run
    from training.deployable import load_deployable

    model = _train(method)
    assert load_deployable(model)[1]["method"] == ("lpl" if method == "lpl_stage2" else method)
    out_dir = f"models/export-{method}"
    export_params = params_copy(Path(f"params-export-{method}.yaml"), **{
        **TINY, "export": {**TINY["export"], "checkpoint": model, "out_dir": out_dir}})
    metrics = export_run.run(str(export_params), "data/prepared/manifest.json", f"metrics/export-{method}.json")
    assert {"onnx_fp32", "onnx_int8"} <= set(metrics["artefacts"])
    assert all(report["passed"] for report in metrics["artefacts"].values())
    assert metrics["artefacts"]["onnx_fp32"]["label_agreement"] >= 0.999

    summary = project / f"segment-{method}.json"
    result = subprocess.run(
        [sys.executable, "-m", "runtime.segment", "--model", f"{out_dir}/gen_student_int8.onnx",
         "--source", "data/prepared/synthetic/video/dashcam.mp4", "--out", f"outputs/{method}.mp4",
         "--max-frames", str(FRAMES), "--json", str(summary), "--threads", "1", "--no-progress"],
        cwd=project, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    run_summary = json.loads(summary.read_text())
    assert run_summary["frames_out"] == FRAMES and run_summary["dropped"] == 0
    assert (project / f"outputs/{method}.mp4").stat().st_size > 0
