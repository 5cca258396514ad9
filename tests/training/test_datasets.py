import cv2
import numpy as np
import pytest

from training.data import datasets
from training.data.loaders import EpochSampler, TrainDataset, tiled_indices


def make_cityscapes(root, split="train", cities=("aachen", "bonn"), per_city=2):
    for city in cities:
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        for i in range(per_city):
            stem = f"{city}_000000_{i:06d}"
            cv2.imwrite(str(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"),
                        np.full((8, 16, 3), 40 * i, np.uint8))
            ids = np.full((8, 16), 7, np.uint8)  # road
            ids[:, :4] = 26  # car
            ids[0, 0] = 3  # out of roi -> ignore
            cv2.imwrite(str(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"), ids)


def make_voc(root, ids=("2007_000032", "2007_000039")):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name in ids:
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), np.zeros((8, 8, 3), np.uint8))
        label = np.zeros((8, 8), np.uint8)
        label[2:4, 2:4] = 15
        label[0] = 255
        cv2.imwrite(str(root / "SegmentationClassAug" / f"{name}.png"), label)
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(ids) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text(ids[0] + "\n")


def test_cityscapes_reader_maps_label_ids(tmp_path):
    make_cityscapes(tmp_path)
    pairs = datasets.list_pairs(tmp_path, "train")
    assert len(pairs) == 4
    label = datasets.read_label(pairs[0][1])
    assert label[0, 0] == 255 and label[0, 1] == 13 and label[5, 10] == 0
    assert datasets.read_image(pairs[0][0]).shape == (8, 16, 3)


def test_cityscapes_missing_layout_names_expected_layout(tmp_path):
    with pytest.raises(datasets.DatasetError, match="leftImg8bit"):
        datasets.list_pairs(tmp_path, "train")
    with pytest.raises(datasets.DatasetError, match="does not exist"):
        datasets.list_pairs(tmp_path / "nope", "train")


def test_cityscapes_missing_label_is_reported(tmp_path):
    make_cityscapes(tmp_path)
    next((tmp_path / "gtFine").rglob("*.png")).unlink()
    with pytest.raises(datasets.DatasetError, match="labels missing"):
        datasets.list_pairs(tmp_path, "train")


def test_voc_reader_and_lists(tmp_path):
    make_voc(tmp_path)
    train = datasets.list_pairs(tmp_path, "train", "voc")
    val = datasets.list_pairs(tmp_path, "val", "voc")
    assert len(train) == 2 and len(val) == 1
    label = datasets.read_label(train[0][1])
    assert label[2, 2] == 15 and label[0, 0] == 255


def test_voc_missing_folders(tmp_path):
    with pytest.raises(datasets.DatasetError, match="JPEGImages"):
        datasets.list_pairs(tmp_path, "train", "voc")


def test_cps_style_list_files(tmp_path):
    make_cityscapes(tmp_path)
    lst = tmp_path / "train_aug_labeled_1-8.txt"
    # both forms: relative to leftImg8bit with an explicit label, and root-relative image only
    lst.write_text("train/aachen/aachen_000000_000000_leftImg8bit.png "
                   "train/aachen/aachen_000000_000000_gtFine_labelIds.png\n"
                   "leftImg8bit/train/bonn/bonn_000000_000001_leftImg8bit.png\n\n")
    pairs = datasets.read_list_file(lst, tmp_path, "cityscapes")
    assert [p[0].name for p in pairs] == ["aachen_000000_000000_leftImg8bit.png", "bonn_000000_000001_leftImg8bit.png"]
    assert pairs[1][1].name == "bonn_000000_000001_gtFine_labelIds.png"
    lst.write_text("train/aachen/missing_leftImg8bit.png\n")
    with pytest.raises(datasets.DatasetError, match=":1: cannot find"):
        datasets.read_list_file(lst, tmp_path, "cityscapes")


def test_voc_id_list(tmp_path):
    make_voc(tmp_path)
    lst = tmp_path / "labeled.txt"
    lst.write_text("2007_000039\nJPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png\n")
    pairs = datasets.read_list_file(lst, tmp_path, "voc")
    assert pairs[0][1].name == "2007_000039.png" and pairs[1][0].name == "2007_000032.jpg"


def test_tiled_indices_repeat_and_top_up():
    idx = tiled_indices(3, 8, np.random.default_rng(0))
    assert len(idx) == 8 and np.bincount(idx).tolist() in ([3, 3, 2], [3, 2, 3], [2, 3, 3])
    np.testing.assert_array_equal(tiled_indices(5, 3, np.random.default_rng(0)), np.arange(5))


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_epoch_sampler_resume_is_exact():
    full = take(iter(EpochSampler(10, 3, seed=7)), 3 * 7)  # 3 iterations per epoch, 7 iterations
    resumed = take(iter(EpochSampler(10, 3, seed=7, start_iteration=4)), 3 * 3)
    assert resumed == full[12:21]
    # drop_last per epoch: each epoch uses 9 of 10 images, no repeats inside an epoch
    first_epoch = [i for e, i in full if e == 0]
    assert len(first_epoch) == 9 and len(set(first_epoch)) == 9


def test_train_dataset_item_depends_only_on_key(tmp_path):
    make_cityscapes(tmp_path)
    pairs = datasets.list_pairs(tmp_path, "train")
    ds = TrainDataset(pairs, (8, 8), length=6, scales=(0.5, 1.0), with_mask=True, seed=1, mean=(0.5,) * 3,
                      std=(0.25,) * 3)
    a, b = ds[(2, 3)], ds[(2, 3)]
    assert all(np.array_equal(a[k], b[k]) for k in ("image", "label", "mask"))
    assert a["image"].shape == (3, 8, 8) and a["label"].dtype.is_floating_point is False


def test_manifest_damaged_incomplete_or_naming_missing_files_is_refused(tmp_path):
    (tmp_path / "img.png").write_bytes(b"")
    path = tmp_path / "manifest.json"
    path.write_text('{"dataset": "synthetic", "root": "x", "train": [')
    with pytest.raises(datasets.DatasetError, match=r"manifest\.json is damaged \(not valid JSON\); run `dvc repro prepare`"):
        datasets.read_manifest(path)
    path.write_text('{"dataset": "synthetic", "root": "x", "train": []}')
    with pytest.raises(datasets.DatasetError, match="lacks some of dataset, root, train, val"):
        datasets.read_manifest(path)
    image, gone = str(tmp_path / "img.png"), str(tmp_path / "gone.png")
    path.write_text(f'{{"dataset": "synthetic", "root": "x", "train": [["{image}", "{gone}"]], "val": []}}')
    with pytest.raises(datasets.DatasetError, match=f"names 1 files that do not exist \\(first: {gone}\\)"):
        datasets.read_manifest(path)


def test_split_file_paths_may_be_project_or_root_relative_but_must_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "root" / "a").mkdir(parents=True)
    for name in ("root/a/x.png", "root/a/y.png", "z.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("root/a/x.png z.png\na/y.png z.png\n")
    assert datasets.read_pairs_file("list.txt", root="root") == [("root/a/x.png", "z.png"), ("a/y.png", "z.png")]
    with pytest.raises(datasets.DatasetError, match=r"list\.txt names 1 files that do not exist \(first: a/y\.png\)"):
        datasets.read_pairs_file("list.txt")


def test_empty_split_file_is_refused_unless_allowed(tmp_path):
    (tmp_path / "unlabeled.txt").write_text("\n")
    with pytest.raises(datasets.DatasetError, match="is empty"):
        datasets.read_pairs_file(tmp_path / "unlabeled.txt")
    assert datasets.read_pairs_file(tmp_path / "unlabeled.txt", allow_empty=True) == []
