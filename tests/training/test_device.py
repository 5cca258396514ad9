import cv2
import numpy as np
import pytest
import torch

from training.data.loaders import image_tensor
from training.device import precision_name


@pytest.mark.parametrize("dtype, name", [(None, "float32"), (torch.bfloat16, "bfloat16"), (torch.float16, "float16")])
def test_precision_name_is_the_dtype_a_network_trained_in(dtype, name):
    assert precision_name(dtype) == name


def test_image_tensor_is_normalised_rgb_channels_first(tmp_path):
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 2] = 255  # red, as OpenCV stores it
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    out = image_tensor(tmp_path / "red.png", mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    # R: (1 - 0.5) / 0.5 = 1; G: (0 - 0.5) / 0.25 = -2; B: (0 - 0.5) / 0.5 = -1
    assert out.shape == (3, 2, 3) and out.dtype == torch.float32
    assert torch.equal(out[:, 0, 0], torch.tensor([1.0, -2.0, -1.0]))
