"""LPL (docs/methods/lpl.md): the worked cases T1-T3, the split's image-level labels, the loaders'
weak pool, who teaches whom, the learning rates, exact resume and stage 2."""
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import params_copy
from tests.training.test_engine import MODEL, NORM, TINY_MODEL, tiny_values
from tests.training.tiny_data import make_tiny_dataset
from training import lpl_stage2, params, split, ssl_benchmark, ssl_prepare
from training.data import datasets, splits
from training.data.loaders import image_level_fields, make_train_loaders
from training.deployable import DeployableError, load_deployable, save_deployable
from training.engine import Trainer
from training.methods import losses
from training.methods.lpl import RunningClassIoU, classification_loss, image_weights, substitute_ground_truth
from training.models import build_model

# ---------------------------------------------------------------- T1: class-aware CE


def t1_logits():
    return torch.tensor([2.0, 3.0, 1.0]).reshape(1, 3, 1, 1)


K_T1 = torch.tensor([[1, 0, 1]])


def test_t1_restricted_softmax_and_pseudo_label():
    log_q = losses.class_aware_log_probs(t1_logits(), K_T1)
    q = log_q.exp().flatten() - 1e-5
    # the absent class 1 keeps e^3 / (e^2 + e^1 + 1e-5) = 1.98722 (the official code's value)
    torch.testing.assert_close(q, torch.tensor([0.7311, 1.9872, 0.2689]), atol=1e-4, rtol=0)
    assert int(losses.class_aware_labels(t1_logits(), K_T1)) == 0  # not the unrestricted argmax
    assert int(t1_logits().argmax(1)) == 1


def test_image_with_no_present_class_takes_the_official_values():
    # k = 0: the denominator is eps alone, so log(e^z / 1e-5 + 1e-5) = z + ln(1e5), and the label is 0
    logits = torch.tensor([0.5, -1.0]).reshape(1, 2, 1, 1)
    present = torch.tensor([[0, 0]])
    torch.testing.assert_close(losses.class_aware_log_probs(logits, present).flatten(),
                               torch.tensor([12.012925, 10.512925]), atol=1e-5, rtol=0)
    assert int(losses.class_aware_labels(logits, present)) == 0
    loss = losses.weighted_nll(losses.class_aware_log_probs(logits, present), torch.tensor([[[0]]]),
                               reduction="valid_pixels")
    assert float(loss) == pytest.approx(-12.012925, abs=1e-5)  # unbounded below, as in the code


@pytest.mark.parametrize("target, nll", [(2, 1.31323), (0, 0.31325)])
def test_t1_class_aware_nll(target, nll):
    log_q = losses.class_aware_log_probs(t1_logits(), K_T1)
    loss = losses.weighted_nll(log_q, torch.tensor([[[target]]]), reduction="valid_pixels")
    assert float(loss) == pytest.approx(nll, abs=5e-6)


def reference_cce(logits, present, eps=1e-5):
    """The official formula as written: raw exponentials, k only in the denominator, float64."""
    k = present.double().reshape(*present.shape, 1, 1)
    e = logits.double().exp()
    return torch.log(e / ((e * k).sum(1, keepdim=True) + eps) + eps)


def test_class_aware_log_probs_equal_the_reference_where_it_is_finite():
    logits = torch.tensor([[-3.0, 0.5, 4.0, 1.0], [10.0, -10.0, 0.0, 2.0]]).T.reshape(2, 4, 1, 1).contiguous()
    present = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0]])
    torch.testing.assert_close(losses.class_aware_log_probs(logits, present).double(), reference_cce(logits, present),
                               atol=1e-6, rtol=1e-6)


def test_class_aware_log_probs_stay_finite_past_float32_overflow():
    # exp(100) overflows float32, where the reference gives NaN; float64 still holds the value
    logits = torch.tensor([100.0, 99.0, 0.0]).reshape(1, 3, 1, 1)
    present = torch.tensor([[1, 1, 0]])
    ours = losses.class_aware_log_probs(logits, present)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.double(), reference_cce(logits, present), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- T2: running IoU and PCT weight


def t2_tracker():
    tracker = RunningClassIoU(3, decay=0.99)
    tracker.update(torch.tensor([0, 0, 1, 1, 255]), torch.tensor([0, 1, 1, 1, 2]))
    return tracker


def test_t2_running_iou():
    tracker = t2_tracker()
    torch.testing.assert_close(tracker.target, torch.tensor([2.99, 2.99, 0.99], dtype=torch.float64))
    torch.testing.assert_close(tracker.predicted, torch.tensor([1.0, 3.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(tracker.intersection, torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(tracker.iou(), torch.tensor([0.3344, 0.5013, 0.0], dtype=torch.float64),
                               atol=1e-4, rtol=0)


def test_t2_image_weights():
    present = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 0, 1]])
    weights = image_weights(t2_tracker().iou(), present, power=8)
    # {0,1}: 0.3344^8; {0,2}: class 2's IoU 0 counts as 1; {2}: 1
    torch.testing.assert_close(weights, torch.tensor([1.565e-4, 1.565e-4, 1.0], dtype=torch.float64),
                               rtol=1e-3, atol=0)


# ---------------------------------------------------------------- T3: GT substitution, multi-label loss


def test_t3_flagged_image_takes_its_mask_whole():
    logits = torch.zeros(2, 3, 2, 2)
    logits[:, 1] = 1.0  # class 1 wins wherever it is present
    present = torch.tensor([[1, 1, 1], [1, 0, 1]])
    pseudo = losses.class_aware_labels(logits, present)
    label = torch.tensor([[[0, 255], [2, 2]], [[0, 0], [0, 0]]])
    out = substitute_ground_truth(pseudo, label, torch.tensor([True, False]))
    assert out[0].tolist() == [[0, 255], [2, 2]]  # the mask in full, ignore pixels included
    assert out[1].tolist() == [[0, 0], [0, 0]]  # class 1 absent from k: the class-aware argmax is 0


def test_t3_multilabel_soft_margin_excludes_background():
    logits = torch.full((1, 3, 2, 2), -5.0)
    logits[0, 0, 0, 0] = 7.0  # background: any value, it is left out
    logits[0, 1, 1, 0] = 2.0
    logits[0, 2, 0, 1] = -1.0
    loss = classification_loss(logits, torch.tensor([[1, 1, 0]]), torch.tensor([1, 2]))
    assert float(loss) == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))) / 2)
    assert float(loss) == pytest.approx(0.22009, abs=5e-6)


# ---------------------------------------------------------------- image-level labels from the split


@pytest.mark.parametrize("label, background, present", [
    ([[0, 1], [255, 255]], 0, [0, 1]),
    ([[1, 255]], 0, [0, 1]),  # an ignore pixel marks background present (VOC)
    ([[1, 1]], 0, [1]),
    ([[1, 255]], None, [1]),  # no background class (Cityscapes): ignore marks nothing
])
def test_class_presence(label, background, present):
    mask = splits.class_presence(np.array(label, np.uint8), 3, background)
    assert np.flatnonzero(mask).tolist() == present


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("lpl")
    manifest = make_tiny_dataset(root / "data")
    (root / "manifest.json").write_text(json.dumps(manifest))
    params_copy(root / "params.yaml", split={"labeled_ratio": 4, "out_dir": str(root / "splits")})
    split.main(["--params", str(root / "params.yaml"), "--manifest", str(root / "manifest.json"),
                "--metrics", str(root / "split.json")])
    labeled = datasets.read_pairs_file(root / "splits/labeled.txt")
    unlabeled = datasets.read_pairs_file(root / "splits/unlabeled.txt")
    classes = splits.read_image_classes(root / "splits" / splits.IMAGE_CLASSES_FILE, 19)
    return root, manifest, labeled, unlabeled, classes


def test_split_writes_the_classes_of_every_full_mask(tiny_split):
    _, manifest, labeled, unlabeled, classes = tiny_split
    assert sorted(classes) == sorted(image for image, _ in labeled + unlabeled)
    for image, label in manifest["train"]:
        expected = np.unique(datasets.read_label(label))
        assert np.flatnonzero(classes[image]).tolist() == [c for c in expected.tolist() if c != 255]


def test_image_classes_of_another_dataset_are_refused(tiny_split):
    root = tiny_split[0]
    with pytest.raises(datasets.DatasetError, match="has 19 classes, the dataset 21"):
        splits.read_image_classes(root / "splits" / splits.IMAGE_CLASSES_FILE, 21)


# ---------------------------------------------------------------- loaders


def test_weak_loader_draws_every_image_and_flags_the_labeled(tiny_split):
    _, _, labeled, unlabeled, classes = tiny_split
    n = len(labeled) + len(unlabeled)
    iterators, iters_per_epoch = make_train_loaders(labeled, unlabeled, (32, 32), n, [1.0], 0, 3,
                                                    image_classes=classes, **NORM)
    assert iters_per_epoch == 1  # one epoch: every image once, labeled ones included
    batch = image_level_fields(next(iterators["labeled"]), next(iterators["unlabeled"]))
    flags = batch["unlabeled_has_label"]
    assert int(flags.sum()) == len(labeled)
    assert (batch["unlabeled_label"][~flags] == 255).all()  # no mask: nothing known
    assert (batch["unlabeled_label"][flags] != 255).any()
    assert batch["image_classes"].shape == (n, 19) and batch["unlabeled_classes"].shape == (n, 19)


def test_other_methods_batches_are_unchanged(tiny_split):
    _, _, labeled, unlabeled, _ = tiny_split
    iterators, _ = make_train_loaders(labeled, unlabeled, (32, 32), 2, [1.0], 0, 3, **NORM)
    assert image_level_fields(next(iterators["labeled"]), next(iterators["unlabeled"])) == {}


def test_image_without_image_level_labels_is_refused(tiny_split):
    _, _, labeled, unlabeled, classes = tiny_split
    partial = {image: k for image, k in classes.items() if image != unlabeled[0][0]}
    with pytest.raises(datasets.DatasetError, match="re-run `dvc repro split`"):
        make_train_loaders(labeled, unlabeled, (32, 32), 2, [1.0], 0, 3, image_classes=partial, **NORM)


# ---------------------------------------------------------------- training

def lpl_trainer(path, tiny_split, **overrides):
    _, manifest, labeled, unlabeled, classes = tiny_split
    cfg = params.section("train", **tiny_values(path, "lpl", **{"iters": 2, **overrides}))
    return Trainer(cfg, MODEL, manifest, labeled, unlabeled, live_dir=None, progress=False, image_classes=classes,
                   **NORM)


def test_lpl_needs_image_level_labels(tmp_path, tiny_split):
    _, manifest, labeled, unlabeled, _ = tiny_split
    cfg = params.section("train", method="lpl", device="cpu", checkpoint_dir=str(tmp_path))
    with pytest.raises(datasets.DatasetError, match="image-level labels"):
        Trainer(cfg, MODEL, manifest, labeled, unlabeled, live_dir=None, progress=False, **NORM)


def nonzero_grads(loss, network):
    grads = torch.autograd.grad(loss, list(network.parameters()), retain_graph=True, allow_unused=True)
    return any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_two_iterations_then_h_teaches_p_and_p_teaches_h(tmp_path, tiny_split):
    _, _, labeled, unlabeled, classes = tiny_split
    t = lpl_trainer(tmp_path, tiny_split)
    history = t.fit()
    assert {"train/seg_hybrid", "train/seg_pseudo", "train/cls", "train/pct", "train/pct_weight"} <= set(history)
    assert all(math.isfinite(v) for v in history.values())

    iterators, _ = make_train_loaders(labeled, unlabeled, (32, 32), 2, [1.0], 0, 5, image_classes=classes, **NORM)
    labeled_batch, weak_batch = next(iterators["labeled"]), next(iterators["unlabeled"])
    batch = {"image": labeled_batch["image"], "label": labeled_batch["label"], "unlabeled": weak_batch["image"],
             **image_level_fields(labeled_batch, weak_batch)}
    m = t.method
    out = m(batch, 2, 0)
    hybrid, pseudo = m.hybrid, m.pseudo
    # which network each loss trains
    for name, trains_hybrid, trains_pseudo in (("seg_hybrid", True, False), ("seg_pseudo", False, True),
                                               ("cls", True, False), ("pct", True, False)):
        assert nonzero_grads(out[name], hybrid) == trains_hybrid, name
        assert nonzero_grads(out[name], pseudo) == trains_pseudo, name

    # and whose labels it learns: recompute both networks on the same batch (BN uses batch statistics)
    with torch.no_grad():
        images = torch.cat([batch["image"], batch["unlabeled"]])
        h_logits, p_logits = hybrid(images), pseudo(images)
    present, weak_classes = torch.cat([batch["image_classes"], batch["unlabeled_classes"]]), batch["unlabeled_classes"]

    def labels_of(logits):
        return substitute_ground_truth(losses.class_aware_labels(logits[2:], weak_classes),
                                       batch["unlabeled_label"], batch["unlabeled_has_label"])

    seg_pseudo = losses.weighted_nll(losses.class_aware_log_probs(p_logits, present)[2:], labels_of(h_logits),
                                     reduction="valid_pixels")
    torch.testing.assert_close(out["seg_pseudo"].detach(), seg_pseudo, rtol=1e-4, atol=1e-6)
    weights = image_weights(m.class_iou.iou(), weak_classes, 8).float().reshape(-1, 1, 1)
    pct = losses.weighted_nll(losses.class_aware_log_probs(h_logits, present)[2:], labels_of(p_logits), weights)
    torch.testing.assert_close(out["pct"].detach(), pct, rtol=1e-4, atol=1e-30)


@pytest.mark.parametrize("pseudo_net_poly", [False, True])
def test_learning_rates(tmp_path, tiny_split, pseudo_net_poly):
    t = lpl_trainer(tmp_path, tiny_split, lr=0.01, lpl=dict(pseudo_net_poly=pseudo_net_poly))
    t.fit()
    poly = 0.01 * 0.5 ** 0.9  # the rate of the last iteration (t = 1 of 2)
    hybrid = {id(q) for q in t.method.hybrid.parameters()}
    classifier = {id(q) for net in (t.method.hybrid, t.method.pseudo) for q in net.head.classifier.parameters()}
    for group in t.optimizer.param_groups:
        first = id(group["params"][0])
        base = poly if first in hybrid or pseudo_net_poly else 0.01  # PseudoNet: constant, as the code
        assert group["lr"] == pytest.approx(base * (10 if first in classifier else 1))


def test_resume_is_exact(tmp_path, tiny_split):
    straight = lpl_trainer(tmp_path / "a", tiny_split, iters=4)
    straight.fit()
    first = lpl_trainer(tmp_path / "b", tiny_split, iters=4)
    first.fit(stop_after=2)  # "killed" after the checkpoint at iteration 2
    resumed = lpl_trainer(tmp_path / "b", tiny_split, iters=4)
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert float(b["class_iou.predicted"].sum()) > 0  # the running IoU was carried over too


# ---------------------------------------------------------------- stage 2


class Doubling(torch.nn.Module):
    """A flip-equivariant 1x1 'network': logits = 2 * the first three channels."""
    num_classes = 3

    def forward(self, x):
        return 2 * x[:, :3]


def test_multi_scale_logits_sum_the_views():
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    torch.testing.assert_close(lpl_stage2.multi_scale_logits(Doubling(), image, [1.0], flip=False), 2 * image)
    torch.testing.assert_close(lpl_stage2.multi_scale_logits(Doubling(), image, [1.0], flip=True), 4 * image)


def write_params(root, tmp_path):
    lpl = dict(pseudo_scales=[0.5, 1.0], pseudo_dir=str(tmp_path / "pseudo"), retrain_iters=1,
               retrain_out=str(tmp_path / "retrained.pt"), retrain_checkpoint_dir=str(tmp_path / "ckpt2"))
    train = dict(device="cpu", precision="fp32", batch_size=2, crop=[32, 32], scales=[1.0], workers=0,
                 checkpoint_every=100, eval_every=1000, out=str(tmp_path / "stage1.pt"), lpl=lpl)
    params_copy(tmp_path / "params.yaml", train=train, model=TINY_MODEL)
    return ["--params", str(tmp_path / "params.yaml"), "--splits", str(root / "splits"),
            "--manifest", str(root / "manifest.json"), "--live-dir", str(tmp_path / "live")]


def save_stage1(tmp_path, method):
    info = datasets.dataset_info("cityscapes")
    save_deployable(tmp_path / "stage1.pt", build_model("resnet18", 19, proj_dim=16), classes=info.classes,
                    palette=info.palette, mean=(0, 0, 0), std=(1, 1, 1), dataset="cityscapes", method=method,
                    iteration=1)


def test_stage2_pseudo_masks_then_retrain(tmp_path, tiny_split):
    root, _, labeled, unlabeled, classes = tiny_split
    save_stage1(tmp_path, "lpl")
    lpl_stage2.main(write_params(root, tmp_path))
    listed = datasets.read_pairs_file(tmp_path / "pseudo" / lpl_stage2.PSEUDO_LIST)
    assert [image for image, _ in listed] == [image for image, _ in unlabeled]  # labeled images keep their masks
    for image, mask_path in listed:
        mask = cv2.imread(mask_path, cv2.IMREAD_UNCHANGED)
        assert mask.shape == datasets.read_image(image).shape[:2]
        assert set(np.unique(mask).tolist()) <= set(np.flatnonzero(classes[image]).tolist())
    model, info = load_deployable(tmp_path / "retrained.pt")
    assert info["method"] == "lpl" and info["iteration"] == 1
    assert [info["mean"], info["std"]] == [NORM["mean"], NORM["std"]]  # data.mean / data.std, recorded


def test_stage2_refuses_a_model_of_another_method(tmp_path, tiny_split):
    save_stage1(tmp_path, "stpg")
    with pytest.raises(DeployableError, match="train.method: lpl"):
        lpl_stage2.main(write_params(tiny_split[0], tmp_path))
    assert not (tmp_path / "pseudo").exists()


def test_params_check_names_the_key(params_file):
    with pytest.raises(params.ParamsError, match=r"train\.lpl\.iou_decay"):
        params.load("train", params_file(train={"lpl": {"iou_decay": 1.5}}))


def test_benchmark_stage2_row_retrains_on_its_stage1_pseudo_masks(tmp_path, monkeypatch):
    """The benchmark arm lpl_stage2: it finishes the lpl row of its seed, labels that row's unlabeled
    images once, and trains a supervised row on labels plus pseudo masks; a second run trains nothing."""
    monkeypatch.chdir(tmp_path)
    params_copy(tmp_path / "params.yaml", model=TINY_MODEL, train={"lpl": {"pseudo_scales": [1.0], "pseudo_flip": False}},
                ssl_benchmark=dict(data=dict(num_train=16, num_val=2, height=32, width=64, video_frames=2),
                                   labeled_ratio=4, arms=["lpl", "lpl_stage2"], seeds=[1], warmup_iters=1,
                                   train=dict(iters=2, batch_size=2, crop=[32, 32], scales=[1.0], checkpoint_every=1,
                                              workers=0, precision="fp32")))
    ssl_prepare.main(["--params", "params.yaml"])
    row = ssl_benchmark.run_row("lpl_stage2", 1, "params.yaml")

    assert (row["arm"], row["method"], row["iters"]) == ("lpl_stage2", "lpl", 2)
    assert row["pseudo_mask_seconds"] > 0  # part of the arm's cost, beside its retrain and its lpl row
    assert 0 <= row["pseudo_mask_miou"] <= 1
    assert (row["num_labeled"], row["num_unlabeled"]) == (16, 0)  # 4 masks + 12 pseudo masks, nothing unlabeled
    stage1 = torch.load("checkpoints/ssl/lpl-1/last.pt", weights_only=False)
    assert stage1["iteration"] == 2  # the lpl row, trained to its end first
    folder = tmp_path / "checkpoints/ssl/lpl_stage2-1/pseudo"
    unlabeled = datasets.read_pairs_file("data/ssl/splits/unlabeled.txt")
    listed = datasets.read_pairs_file(folder / lpl_stage2.PSEUDO_LIST)
    assert [image for image, _ in listed] == [image for image, _ in unlabeled]
    classes = splits.read_image_classes("data/ssl/splits/" + splits.IMAGE_CLASSES_FILE, 19)
    confusion = np.zeros((19, 19), np.int64)
    for (image, mask_path), (_, truth) in zip(listed, unlabeled):  # class-aware: only the classes the image-level label names
        mask = cv2.imread(mask_path, cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask).tolist()) <= set(np.flatnonzero(classes[image]).tolist())
        truth = datasets.read_label(truth)
        for t, m in zip(truth.ravel(), mask.ravel()):
            if t != 255:
                confusion[t, m] += 1
    present = confusion.sum(0) + confusion.sum(1) > 0  # mIoU over the classes in the truth or the masks
    iou = np.diag(confusion)[present] / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))[present]
    assert row["pseudo_mask_miou"] == pytest.approx(iou.mean(), abs=1e-6)

    written = {mask: Path(mask).stat().st_mtime_ns for _, mask in listed}
    again = ssl_benchmark.run_row("lpl_stage2", 1, "params.yaml")
    assert {mask: Path(mask).stat().st_mtime_ns for mask in written} == written  # not labeled again
    assert again["miou"] == row["miou"] and again["iterations_timed"] == row["iterations_timed"] == 2
    assert again["pseudo_mask_seconds"] == row["pseudo_mask_seconds"]  # the time the masks took, kept

    (folder / "stage1.sha256").write_text("another stage 1")  # masks from another stage 1 are made again
    ssl_benchmark.run_row("lpl_stage2", 1, "params.yaml")
    assert all(Path(mask).stat().st_mtime_ns > written[mask] for mask in written)
