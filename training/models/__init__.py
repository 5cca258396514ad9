"""Segmentation networks: DeepLabV3+ over torchvision backbones, made by `build_model`."""
from .backbones import BACKBONES, LoadReport, ModelConfigError, build_backbone, load_backbone_weights
from .deeplab import DeepLabV3Plus, build_model

__all__ = [
    "BACKBONES",
    "DeepLabV3Plus",
    "LoadReport",
    "ModelConfigError",
    "build_backbone",
    "build_model",
    "load_backbone_weights",
]
