"""training.precision_probe: the share of labels bf16 autocast changes, on hand-made networks."""
import cv2
import numpy as np
import pytest
import torch

from training.precision_probe import label_changes

NORM = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def constant_logits(first: float, second: float) -> torch.nn.Module:
    """A 1x1 convolution that gives every pixel the logits (first, second), whatever the image."""
    network = torch.nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        network.weight.zero_()
        network.bias.copy_(torch.tensor([first, second]))
    return network


@pytest.fixture
def images(tmp_path):
    paths = []
    for i in range(2):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), np.full((4, 6, 3), 60 * i, np.uint8))
        paths.append(str(path))
    return paths


def test_a_logit_gap_below_bfloat16_resolution_flips_every_label(images):
    # bf16 keeps 8 significant bits: 1.001 rounds to 1.0, the two logits tie and argmax takes class 0,
    # where fp32 says class 1 with confidence softmax = 1 / (1 + e^-0.001) = 0.50025
    network = constant_logits(1.0, 1.001)
    result = label_changes(network, images, torch.device("cpu"), torch.bfloat16, 0.5, **NORM)
    assert result == {"pixels": 48, "differ": 1.0, "confident": 1.0, "differ_confident": 1.0}
    strict = label_changes(network, images, torch.device("cpu"), torch.bfloat16, 0.9, **NORM)
    assert strict["confident"] == 0.0 and strict["differ_confident"] is None  # no pixel reaches 0.9


def test_a_wide_gap_changes_nothing_and_the_network_mode_is_restored(images):
    network = constant_logits(0.0, 3.0).train()
    result = label_changes(network, images, torch.device("cpu"), torch.bfloat16, 0.9, **NORM)
    # softmax(3 - 0) = 1 / (1 + e^-3) = 0.9526 >= 0.9 on all 2 x 4 x 6 pixels
    assert result == {"pixels": 48, "differ": 0.0, "confident": 1.0, "differ_confident": 0.0}
    assert network.training
