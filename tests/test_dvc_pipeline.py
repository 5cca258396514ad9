"""End-to-end: the DVC stages run in a temporary copy of the project with tiny parameters."""
import json

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
