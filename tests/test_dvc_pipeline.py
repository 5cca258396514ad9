"""End-to-end: the DVC stages run in a temporary copy of the project with tiny parameters."""
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TINY_DATA = dict(synthetic=dict(num_train=24, num_val=4, height=64, width=128, video_frames=6))


def test_prepare_and_split(project_copy):
    project_copy.set_params("data", **TINY_DATA)
    project_copy.set_params("split", labeled_ratio=4)
    project_copy("dvc", "repro", "split")
    root = project_copy.root
    manifest = json.loads((root / "data/prepared/manifest.json").read_text())
    assert len(manifest["train"]) == 24 and len(manifest["val"]) == 4
    labeled = (root / "data/splits/labeled.txt").read_text().splitlines()
    unlabeled = (root / "data/splits/unlabeled.txt").read_text().splitlines()
    assert len(labeled) == 6 and len(unlabeled) == 18
    assert {line.split()[0] for line in labeled + unlabeled} == {pair[0] for pair in manifest["train"]}
    metrics = json.loads((root / "metrics/split.json").read_text())
    assert metrics["num_labeled"] == 6 and abs(sum(v["all"] for v in metrics["pixel_frequency"].values()) - 1) < 1e-4
    assert (root / "data/prepared/synthetic/video/dashcam.mp4").exists()
    # nothing changed, so DVC considers both stages up to date
    assert "up to date" in project_copy("dvc", "status", "split").stdout


def test_bad_params_fail_with_one_line(project_copy):
    project_copy.set_params("split", labeled_ratoi=4)
    result = project_copy("python", "-m", "training.split", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: params: unknown key split.labeled_ratoi (known: given_labeled, given_unlabeled, labeled_ratio, out_dir, seed, stratify)"]


def test_given_labeled_list_outside_the_prepared_set_is_refused(project_copy):
    project_copy.set_params("data", **TINY_DATA)
    project_copy("dvc", "repro", "prepare")
    manifest = json.loads((project_copy.root / "data/prepared/manifest.json").read_text())
    val_pair = [str(Path(path).relative_to(manifest["root"])) for path in manifest["val"][0]]
    (project_copy.root / "given.txt").write_text(" ".join(val_pair) + "\n")  # exists, but is no train image
    project_copy.set_params("split", given_labeled="given.txt")
    result = project_copy("python", "-m", "training.split", check=False)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "split.given_labeled" in line and "not in the prepared train set" in line
    assert not (project_copy.root / "data/splits/labeled.txt").exists()


def test_whole_chain_reproduces_with_tiny_params(project_copy):
    """`dvc repro` from data to benchmark: every stage's outputs exist and hold sane values."""
    project_copy.set_params("data", **TINY_DATA)
    project_copy.set_params("split", labeled_ratio=4)
    project_copy.set_params("train", iters=4, batch_size=2, crop=[32, 32], scales=[1.0], checkpoint_every=2,
                            eval_every=2, log_every=1, workers=0,
                            stpg=dict(memory_start_epoch=0, contrast_start_epoch=0, proximity_start_epoch=0))
    project_copy.set_params("evaluate", crop=[64, 64])
    # a 4-iteration model has no stable argmax, so only the fp32 gate is meaningful here
    project_copy.set_params("export", input_size=[64, 128], precisions=["fp32", "int8"], calibration_images=2,
                            verify_images=2, tolerance=dict(int8_label_agreement=0.0, int8_miou_delta=100.0))
    project_copy.set_params("benchmark", warmup=1, iters=2, frames=4, threads=1, drive_frames=3, soak_frames=4,
                            soak_window=2)
    project_copy.set_params("ssl_benchmark", data=dict(TINY_DATA["synthetic"], seed=0, video_fps=15), labeled_ratio=4,
                            arms=["full", "supervised", "stpg"], seeds=[1], warmup_iters=2,
                            train=dict(iters=4, batch_size=2, crop=[32, 64], checkpoint_every=2, workers=0))
    project_copy("dvc", "repro")
    root = project_copy.root
    read = lambda rel: json.loads((root / rel).read_text())  # noqa: E731

    for rel in ("metrics/eval.json", "metrics/eval_baseline.json"):
        metrics = read(rel)
        assert set(metrics) == {"miou", "pixel_acc"} and 0.0 <= metrics["miou"] <= 1.0
    per_class = (root / "plots/eval_per_class_iou.csv").read_text().splitlines()
    assert per_class[0] == "class,iou" and len(per_class) == 1 + 19
    assert sorted(p.name for p in (root / "checkpoints/train").iterdir()) == ["last.pt"]

    export = read("metrics/export.json")
    assert export["tensorrt"]["status"] == "skipped"
    assert (root / "models/export/gen_student.onnx").exists() and (root / "models/export/gen_student_int8.onnx").exists()

    demo = read("metrics/segment_demo.json")
    assert demo["frames_out"] == TINY_DATA["synthetic"]["video_frames"] and demo["dropped"] == 0
    assert 0.0 <= demo["miou"] <= 1.0
    assert (root / "outputs/demo_overlay.mp4").stat().st_size > 0
    headline = read("metrics/demo.json")
    assert headline["fp32"]["miou"] == demo["miou"] and headline["int8"]["fps"] > 0

    bench = read("metrics/benchmark.json")
    assert {"model", "ops", "e2e"} <= set(bench)
    assert set(bench["model"]) == {"gen_student", "gen_student_int8"}  # every exported precision
    assert (root / "outputs/benchmark.png").stat().st_size > 0
    ssl = read("metrics/ssl_benchmark.json")
    assert [(row["arm"], row["seed"]) for row in ssl["rows"]] == [("full", 1), ("supervised", 1), ("stpg", 1)]
    assert ssl["missing"] == [] and set(ssl["gate"]) == {"full_miou", "sup_miou", "headroom", "seed_spread", "passed"}
    assert read("metrics/ssl_headline.json")["stpg"]["miou"] == ssl["arms"]["stpg"]["mean"]
    stpg = read("metrics/ssl/stpg-1.json")
    assert stpg["num_labeled"] == 6 and stpg["params"]["train"]["iters"] == 4 and 0.0 <= stpg["miou"] <= 1.0
    assert "up to date" in project_copy("dvc", "status").stdout
    shown = project_copy("dvc", "metrics", "show").stdout.splitlines()
    assert max(map(len, shown)) <= 200, "\n".join(shown)  # a terminal shows it
    assert sorted(line.split()[0] for line in shown[1:]) == [
        "metrics/demo.json", "metrics/eval.json", "metrics/eval_baseline.json", "metrics/ssl_headline.json"]


DEMO_TARGETS = ("evaluate", "evaluate_baseline", "export", "segment_demo", "benchmark")


def tiny_demo_params(project_copy):
    project_copy.set_params("data", demo_frames=3)
    project_copy.set_params("split", labeled_ratio=2, stratify=False)
    project_copy.set_params("train", iters=2, batch_size=2, crop=[32, 32], scales=[1.0], checkpoint_every=2,
                            eval_every=0, log_every=1, workers=0,
                            stpg=dict(memory_start_epoch=0, contrast_start_epoch=0, proximity_start_epoch=0))
    project_copy.set_params("evaluate", mode="whole")
    project_copy.set_params("export", input_size=[32, 64], precisions=["fp32", "int8"], calibration_images=2,
                            verify_images=2, tolerance=dict(int8_label_agreement=0.0, int8_miou_delta=100.0))
    project_copy.set_params("benchmark", warmup=0, iters=1, frames=3, threads=1, drive_frames=3, soak_frames=2,
                            soak_window=2)


@pytest.mark.parametrize("dataset", ["cityscapes", "voc"])
def test_a_real_dataset_layout_runs_the_demo_chain(project_copy, tmp_path, dataset):
    """What the README tells a user with Cityscapes or VOC: `dvc exp run -S data.dataset=... -S data.root=...`
    naming the demo targets, on a tiny tree in that layout. The clip is the val images (no video)."""
    from tests.training.tiny_data import make_tiny_dataset, make_tiny_voc

    tree = tmp_path / dataset
    (make_tiny_voc if dataset == "voc" else make_tiny_dataset)(tree, n_train=4, n_val=3)
    tiny_demo_params(project_copy)
    project_copy("git", "commit", "-qam", "tiny params")
    # the benchmark reads the val frames folder alike for both layouts: once is enough
    targets = DEMO_TARGETS if dataset == "cityscapes" else [t for t in DEMO_TARGETS if t != "benchmark"]
    project_copy("dvc", "exp", "run", "-S", f"data.dataset={dataset}", "-S", f"data.root={tree}", *targets)
    root = project_copy.root
    read = lambda rel: json.loads((root / rel).read_text())  # noqa: E731
    demo = read("data/prepared/demo.json")
    assert demo == {"source": "data/prepared/val_frames", "gt_labels": "data/prepared/val_frames_labels",
                    "kind": "val_frames", "frames": 3}
    summary = read("metrics/segment_demo_int8.json")
    assert summary["frames_out"] == summary["frames_scored"] == 3 and summary["source"] == demo["source"]
    assert len(summary["per_class_iou"]) == (21 if dataset == "voc" else 19)
    if "benchmark" in targets:
        assert read("metrics/benchmark.json")["config"]["video"] == demo["source"]
    # the benchmark matrix did not run: a bare `dvc exp run` is what would start it
    assert not (root / "metrics/ssl_benchmark.json").exists() or \
        project_copy("git", "status", "--porcelain", "metrics/ssl_benchmark.json").stdout == ""
