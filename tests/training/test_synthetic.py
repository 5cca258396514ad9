"""The synthetic street-scene generator: determinism, class statistics, layout, atomic writes, video."""
from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np
import pytest

from training.data import datasets, synthetic
from training.data.synthetic import camera, writer
from training.data.cityscapes import CLASSES, label_ids_to_train_ids
from training.params import ParamsError, SyntheticParams

TINY = SyntheticParams(num_train=5, num_val=2, height=64, width=128, seed=3, video_frames=6, video_fps=10)


def _ids(*names):
    return [CLASSES.index(name) for name in names]


@pytest.fixture(scope="module")
def sample():
    """60 scenes at 128x256: enough for every class to appear and for pixel shares to settle."""
    return [synthetic.generate_scene(np.random.default_rng([1234, i]), 128, 256) for i in range(60)]


# ---------------------------------------------------------------- geometry rules

def test_projection_follows_the_pinhole_model_and_the_camera_moving_forward():
    cam = camera._Camera(focal=100.0, cx=50.0, horizon=40.0, height=1.5, x=0.0)
    painter = camera._Painter(cam, 80, 100, {"-x": 1.0, "+x": 1.0, "-z": 1.0, "+y": 1.0})
    points = np.array([(2.0, 0.0, 10.0), (2.0, 0.0, 20.0)])
    # u = 50 + 100 * 2 / z, v = 40 + 100 * 1.5 / z, in 1/16 pixel fixed point
    assert painter.project(points).tolist() == [[70 * 16, 55 * 16], [60 * 16, 47.5 * 16]]
    cam.z = 10.0  # after driving 10 m the far point is where the near one was
    assert painter.project(points[1:]).tolist() == [[70 * 16, 55 * 16]]


def test_polygons_are_clipped_at_the_near_plane():
    square = np.array([(0, 0, -1), (1, 0, -1), (1, 0, 1), (0, 0, 1)], float)
    clipped = camera._clip_near(square, 0.5)
    assert clipped.tolist() == [[1, 0, 0.5], [1, 0, 1], [0, 0, 1], [0, 0, 0.5]]
    assert len(camera._clip_near(square, 2.0)) == 0
    assert camera._clip_near(square, -1.0) is square


def test_sample_names_follow_the_cityscapes_pattern_and_cycle_through_the_cities():
    assert synthetic.sample_stem("train", 0) == ("synthville", "synthville_000000_000019")
    assert synthetic.sample_stem("train", 4) == ("pixelburg", "pixelburg_000001_000019")
    assert synthetic.sample_stem("val", 3) == ("polygonia", "polygonia_000001_000019")
    assert set(synthetic.CITIES) == {"train", "val"}
    assert not set(synthetic.CITIES["train"]) & set(synthetic.CITIES["val"])


# ---------------------------------------------------------------- scenes

def test_same_seed_gives_identical_bytes_and_another_seed_differs():
    first = synthetic.generate_scene(np.random.default_rng([5, 0, 3]), 64, 128)
    again = synthetic.generate_scene(np.random.default_rng([5, 0, 3]), 64, 128)
    other = synthetic.generate_scene(np.random.default_rng([5, 0, 4]), 64, 128)
    assert first[0].tobytes() == again[0].tobytes() and first[1].tobytes() == again[1].tobytes()
    assert first[0].tobytes() != other[0].tobytes() and first[1].tobytes() != other[1].tobytes()
    assert first[0].shape == (64, 128, 3) and first[0].dtype == np.uint8
    assert first[1].shape == (64, 128) and first[1].dtype == np.uint8


def test_every_pixel_has_a_valid_class(sample):
    for _, train_ids in sample:
        assert train_ids.max() < len(CLASSES)


def test_every_class_appears_in_the_sample(sample):
    present = set()
    for _, train_ids in sample:
        present |= set(np.unique(train_ids).tolist())
    missing = [CLASSES[k] for k in range(len(CLASSES)) if k not in present]
    assert not missing


def test_pixel_shares_have_the_cityscapes_long_tail(sample):
    counts = sum(np.bincount(train_ids.ravel(), minlength=len(CLASSES)) for _, train_ids in sample)
    share = counts / counts.sum()
    assert share[_ids("road", "building", "sky", "vegetation", "car")].sum() > 0.6
    rare = _ids("pole", "traffic light", "traffic sign", "person", "rider", "bicycle", "motorcycle")
    assert (share[rare] < 0.03).all(), dict(zip((CLASSES[k] for k in rare), share[rare]))


def _grey_histogram(sample, cls):
    hist = np.zeros(256)
    for rgb, train_ids in sample:
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        hist += np.bincount(grey[train_ids == cls], minlength=256)
    return hist / hist.sum()


@pytest.mark.parametrize("pair", [("road", "sidewalk"), ("building", "wall")])
def test_brightness_alone_does_not_separate_look_alike_classes(sample, pair):
    a, b = (_grey_histogram(sample, cls) for cls in _ids(*pair))
    assert np.minimum(a, b).sum() > 0.5  # more than half of the two distributions overlap


# ---------------------------------------------------------------- writing the dataset

def _files(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_dataset_is_written_in_the_cityscapes_layout_with_label_ids(tmp_path, disk_log):
    root = tmp_path / "synthetic"
    counts = synthetic.write_dataset(root, TINY)
    assert disk_log.durable(root)  # every image, label and the video in it
    assert counts == {"train": 5, "val": 2, "video_frames": 6}
    expected = []
    for split, n in (("train", 5), ("val", 2)):
        for index in range(n):
            city, stem = synthetic.sample_stem(split, index)
            expected += [f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
                         f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png"]
    expected += ["video/dashcam.mp4"] + [f"video/labels/{i:06d}.png" for i in range(6)]
    assert _files(root) == sorted(expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]  # no staging folder left

    city, stem = synthetic.sample_stem("val", 1)
    rgb, train_ids = synthetic.generate_scene(np.random.default_rng([TINY.seed, 1, 1]), 64, 128)
    label_ids = cv2.imread(str(root / f"gtFine/val/{city}/{stem}_gtFine_labelIds.png"), cv2.IMREAD_UNCHANGED)
    assert label_ids.dtype == np.uint8 and np.array_equal(label_ids_to_train_ids(label_ids), train_ids)
    image = cv2.imread(str(root / f"leftImg8bit/val/{city}/{stem}_leftImg8bit.png"))
    assert np.array_equal(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), rgb)

    pairs = datasets.list_pairs(root, "train", "synthetic")  # the real Cityscapes reader takes it unchanged
    assert len(pairs) == 5
    assert datasets.read_label(pairs[0][1]).max() < len(CLASSES)


def test_images_do_not_depend_on_how_many_are_generated(tmp_path):
    synthetic.write_dataset(tmp_path / "small", TINY)
    synthetic.write_dataset(tmp_path / "large", dataclasses.replace(TINY, num_train=8))
    city, stem = synthetic.sample_stem("train", 4)
    name = f"leftImg8bit/train/{city}/{stem}_leftImg8bit.png"
    assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "large" / name).read_bytes()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the process pool needs two cores")
def test_process_pool_writes_the_same_bytes_as_one_process(tmp_path, monkeypatch):
    synthetic.write_dataset(tmp_path / "serial", TINY)
    monkeypatch.setattr(writer, "_POOL_MIN", 1)
    synthetic.write_dataset(tmp_path / "pooled", TINY)
    for name in _files(tmp_path / "serial"):
        if name.startswith(("leftImg8bit", "gtFine")):
            assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "pooled" / name).read_bytes(), name


def test_rewriting_replaces_the_old_dataset(tmp_path):
    root = tmp_path / "synthetic"
    synthetic.write_dataset(root, dataclasses.replace(TINY, num_train=8))
    synthetic.write_dataset(root, TINY)
    assert len(list((root / "leftImg8bit" / "train").rglob("*.png"))) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_an_interrupted_run_leaves_the_previous_dataset_and_no_partial_one(tmp_path, monkeypatch):
    root = tmp_path / "synthetic"
    synthetic.write_dataset(root, TINY)
    before = _files(root)

    def fail(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "write_video", fail)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_dataset(root, dataclasses.replace(TINY, num_train=8))
    assert _files(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_dataset(tmp_path / "fresh", TINY)
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("change, key", [
    ({"height": 63}, "data.synthetic.height"),
    ({"width": 16}, "data.synthetic.width"),
    ({"num_val": 0}, "data.synthetic.num_val"),
    ({"video_frames": 0}, "data.synthetic.video_frames"),
    ({"video_fps": 0}, "data.synthetic.video_fps"),
    ({"seed": -1}, "data.synthetic.seed"),
])
def test_bad_parameters_fail_before_writing_and_name_the_key(tmp_path, change, key):
    with pytest.raises(synthetic.SyntheticDataError, match=key.replace(".", r"\.")) as info:
        synthetic.write_dataset(tmp_path / "synthetic", dataclasses.replace(TINY, **change))
    assert isinstance(info.value, ParamsError)  # so the stage CLIs report it as a user error
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- video

def test_video_file_has_the_frames_and_labels_of_the_rendered_drive(tmp_path):
    path = synthetic.write_video(tmp_path, TINY)
    assert path == tmp_path / "video" / "dashcam.mp4"
    rendered = list(synthetic.render_video_frames(TINY.seed, 64, 128, 6, fps=10))
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened()
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    decoded = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    assert len(decoded) == 6 and decoded[0].shape == (64, 128, 3)
    for frame, (rgb, train_ids) in zip(decoded, rendered):
        # lossy mp4v keeps the picture close to what was rendered for that frame
        assert np.abs(frame.astype(int) - rgb.astype(int)).mean() < 12
    labels = sorted((tmp_path / "video" / "labels").iterdir())
    assert [p.name for p in labels] == [f"{i:06d}.png" for i in range(6)]
    for label_path, (_, train_ids) in zip(labels, rendered):
        assert np.array_equal(cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED), train_ids)
    assert sorted(p.name for p in (tmp_path / "video").iterdir()) == ["dashcam.mp4", "labels"]


def test_video_ground_truth_is_temporally_coherent():
    drive = np.stack([train_ids for _, train_ids in synthetic.render_video_frames(11, 64, 128, 30)])
    other_street = np.stack([train_ids for _, train_ids in synthetic.render_video_frames(12, 64, 128, 30)])
    consecutive = (drive[1:] != drive[:-1]).mean()
    later = (drive[20:] != drive[:-20]).mean()
    unrelated = (drive != other_street).mean()
    assert 0 < consecutive < 0.6 * later  # the camera moves, and the scene changes gradually as it does
    assert consecutive < unrelated / 4


def test_video_is_deterministic_per_seed():
    first = [rgb.tobytes() for rgb, _ in synthetic.render_video_frames(2, 64, 128, 3)]
    again = [rgb.tobytes() for rgb, _ in synthetic.render_video_frames(2, 64, 128, 3)]
    other = [rgb.tobytes() for rgb, _ in synthetic.render_video_frames(3, 64, 128, 3)]
    assert first == again and first != other
