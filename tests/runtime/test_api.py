"""The embedding API (runtime.Segmenter): the labels of the command line, batches, overlays, the contract."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from runtime import segment  # noqa: E402
from runtime.api import Segmenter  # noqa: E402
from tests.runtime.test_segment import files_under, scene_model  # noqa: E402

SIZE = (48, 64)  # height, width


def dashcam_frame(index: int) -> np.ndarray:
    """Sky over road with a car moving right: a few label regions that change per frame."""
    frame = np.zeros((*SIZE, 3), np.uint8)
    frame[:20] = (200, 120, 40)
    frame[20:] = (70, 70, 70)
    frame[26:40, 4 + 3 * index:20 + 3 * index] = (30, 30, 180)
    return frame


def run_main(capsys, *args):
    code = segment.main([str(arg) for arg in (*args, "--no-progress", "--threads", 1)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def saved_labels(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in files_under(folder)]


def test_segmenter_gives_the_labels_of_the_command_line(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = [dashcam_frame(index) for index in range(3)]
    for index, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{index:06d}.png"), frame)
    model = scene_model(tmp_path)
    code, _, stderr = run_main(capsys, "--model", model, "--source", folder, "--save-labels", tmp_path / "labels")
    assert code == 0, stderr
    with Segmenter(model, threads=1) as segmenter:
        assert segmenter.contract.classes == ("class0", "class1", "class2")
        assert segmenter.contract.input_size == (64, 128)
        labels = [segmenter.segment(frame) for frame in frames]
        batch = segmenter.segment_batch(frames)
        assert segmenter.overlay(frames[0], labels[0], alpha=0.0).tolist() == frames[0].tolist()
        painted = segmenter.overlay(frames[0], labels[0], alpha=1.0)
        palette = np.asarray(segmenter.contract.palette, np.uint8)[:, ::-1]  # RGB -> BGR
    assert all(label.shape == SIZE and label.dtype == np.uint8 for label in labels)
    for mine, theirs, batched in zip(labels, saved_labels(tmp_path / "labels"), batch):
        assert np.array_equal(mine, theirs) and np.array_equal(mine, batched)
    assert np.array_equal(painted, palette[labels[0]])
    assert len(np.unique(np.concatenate(labels))) > 1  # the frames are not one class


