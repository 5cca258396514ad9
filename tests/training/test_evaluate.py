import numpy as np
import torch

from training.evaluate import iou_from_confusion, sliding_window_logits, window_starts


def test_window_starts_t12():
    assert window_starts(1024, 800, 534) == [0, 224]
    assert window_starts(2048, 800, 534) == [0, 534, 1068, 1248]
    assert window_starts(800, 800, 534) == [0]
    assert window_starts(500, 800, 534) == [0]


class CountingModel(torch.nn.Module):
    """Logits = 1 everywhere in class 0, so summed windows count how many windows cover a pixel."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape[-2:]))
        out = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        out[:, 0] = 1
        return out


def test_sliding_window_sums_overlaps():
    model = CountingModel()
    logits = sliding_window_logits(model, torch.zeros(1, 3, 10, 20), (10, 12), 2)
    # width 20, crop 12, stride ceil(24/3)=8: starts [0, 8] -> columns 8..11 covered twice
    assert model.calls == [(10, 12), (10, 12)]
    np.testing.assert_array_equal(logits[0, 0, 0].numpy(), [1] * 8 + [2] * 4 + [1] * 8)


def test_small_image_is_centre_padded_and_cropped_back():
    model = CountingModel()
    logits = sliding_window_logits(model, torch.zeros(1, 3, 5, 7), (8, 8), 2)
    assert model.calls == [(8, 8)] and logits.shape == (1, 2, 5, 7)


def test_iou_by_hand():
    # rows = ground truth, cols = prediction
    confusion = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    iou, miou, acc = iou_from_confusion(confusion)
    np.testing.assert_allclose(iou[:2], [3 / 4, 2 / 3])
    assert np.isnan(iou[2])  # absent from ground truth and prediction
    assert miou == np.mean([3 / 4, 2 / 3]) and acc == 5 / 6


def tiny_model_and_manifest(tmp_path, mean, std):
    """A tiny deployable model recording `mean` / `std`, and a one-image manifest, under tmp_path."""
    import json

    from tests.training.tiny_data import make_tiny_dataset
    from training.data import datasets
    from training.deployable import save_deployable
    from training.models import build_model

    manifest = make_tiny_dataset(tmp_path / "data", n_train=1, n_val=1)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    info = datasets.dataset_info("cityscapes")
    save_deployable(tmp_path / "model.pt", build_model("resnet18", 19, proj_dim=8), classes=info.classes,
                    palette=info.palette, mean=mean, std=std, dataset="cityscapes", method="supervised", iteration=1)


def test_evaluation_normalises_as_the_model_records(tmp_path, params_file, monkeypatch):
    """The model's own mean/std, not data.mean/data.std: the runtime feeds it so too."""
    from training import evaluate

    tiny_model_and_manifest(tmp_path, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    seen = []
    original = evaluate.EvalDataset

    def spy(pairs, mean, std):
        seen.append((list(mean), list(std)))
        return original(pairs, mean, std)

    monkeypatch.setattr(evaluate, "EvalDataset", spy)
    evaluate.main(["--params", str(params_file(evaluate={"mode": "whole"})), "--checkpoint", str(tmp_path / "model.pt"),
                   "--manifest", str(tmp_path / "manifest.json"), "--metrics", str(tmp_path / "eval.json"),
                   "--plot", str(tmp_path / "iou.csv"), "--device", "cpu"])
    assert seen == [([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])]


def test_evaluating_another_checkpoint_writes_nothing_unless_asked(tmp_path, params_file, monkeypatch, capsys):
    """`python -m training.evaluate --checkpoint other.pt` must not overwrite the tracked metrics/eval.json."""
    from training import evaluate

    tiny_model_and_manifest(tmp_path, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    params = params_file(evaluate={"mode": "whole"})
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    evaluate.main(["--params", str(params), "--checkpoint", "model.pt", "--manifest", "manifest.json", "--device", "cpu"])
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert "supervised (model.pt): mIoU " in capsys.readouterr().out
