"""DeepLabV3+ with the CPS-style ASPP and the projection head of STPG (docs/methods/stpg.md §1)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import LoadReport, ModelConfigError, build_backbone, load_backbone_weights

CHANNELS = 256
LOW_LEVEL_CHANNELS = 48
ASPP_RATES_OS16 = (6, 12, 18)
LEAKY_SLOPE = 0.01
PROJECTION_DROPOUT = 0.1
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def decay_groups(parts, weight_decay: float) -> list[dict]:
    """The engine's one weight-decay rule for every trained part: conv and linear weights decay,
    BN parameters and every bias do not (docs/methods/README.md)."""
    decay, no_decay = [], []
    for part in parts:
        for module in part.modules():
            for name, param in module.named_parameters(recurse=False):
                takes_decay = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
                (decay if takes_decay else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ImagePoolBatchNorm(nn.BatchNorm2d):
    """BatchNorm for the image-pool branch, whose input is (N, C, 1, 1).

    With N = 1 each channel holds one value, which has no batch variance, and BatchNorm2d raises
    in train mode. Such a batch is normalised with the running statistics, as in eval mode, and
    leaves them untouched, so batch-1 training runs. Any larger batch behaves as BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, momentum=0.0, eps=self.eps)
        return super().forward(x)


class ASPP(nn.Module):
    """Four parallel convs concatenated and reduced, plus an image-pool branch ADDED to the result."""

    def __init__(self, in_channels: int, rates: tuple[int, int, int], channels: int = CHANNELS):
        super().__init__()
        self.rates = rates
        self.map_convs = nn.ModuleList(
            [nn.Conv2d(in_channels, channels, 1, bias=False)]
            + [nn.Conv2d(in_channels, channels, 3, padding=r, dilation=r, bias=False) for r in rates])
        self.map_bn = nn.BatchNorm2d(channels * len(self.map_convs))
        self.red_conv = nn.Conv2d(channels * len(self.map_convs), channels, 1, bias=False)
        self.global_pooling_conv = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.global_pooling_bn = ImagePoolBatchNorm(channels)
        self.pool_red_conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.red_bn = nn.BatchNorm2d(channels)
        self.leaky_relu = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([conv(x) for conv in self.map_convs], dim=1)
        out = self.red_conv(self.leaky_relu(self.map_bn(out)))
        pool = x.mean(dim=(2, 3), keepdim=True)
        pool = self.pool_red_conv(self.leaky_relu(self.global_pooling_bn(self.global_pooling_conv(pool))))
        return self.leaky_relu(self.red_bn(out + pool))


class DeepLabV3PlusHead(nn.Module):
    """The "business layers" each branch re-initialises: ASPP, decoder and classifier."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, aspp_rates: tuple[int, int, int]):
        super().__init__()
        self.aspp = ASPP(high_channels, aspp_rates)
        self.reduce = nn.Sequential(
            nn.Conv2d(low_channels, LOW_LEVEL_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(LOW_LEVEL_CHANNELS), nn.ReLU(inplace=True))
        self.last_conv = nn.Sequential(
            nn.Conv2d(CHANNELS + LOW_LEVEL_CHANNELS, CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(CHANNELS), nn.ReLU(inplace=True),
            nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(CHANNELS), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(CHANNELS, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(decoder feature h, logits), both at the low-level features' stride 4."""
        context = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=True)
        h = self.last_conv(torch.cat([context, self.reduce(low)], dim=1))
        return h, self.classifier(h)


class ProjectionHead(nn.Sequential):
    """Maps the decoder feature to the contrastive embedding (the code's Conv-BN-ReLU-Dropout-Conv)."""

    def __init__(self, in_channels: int, proj_dim: int):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1),
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
            nn.Dropout2d(PROJECTION_DROPOUT),
            nn.Conv2d(in_channels, proj_dim, 1))


class DeepLabV3Plus(nn.Module):
    """One segmentation branch: backbone, head (ASPP + decoder + classifier) and projector."""

    def __init__(self, backbone_name: str, num_classes: int, output_stride: int = 16, proj_dim: int = CHANNELS):
        super().__init__()
        for key, value in (("num_classes", num_classes), ("proj_dim", proj_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelConfigError(f"model {key} must be a positive integer, got {value!r}")
        self.backbone = build_backbone(backbone_name, output_stride)
        rates = tuple(rate * 16 // output_stride for rate in ASPP_RATES_OS16)
        self.head = DeepLabV3PlusHead(self.backbone.low_channels, self.backbone.high_channels, num_classes, rates)
        self.projector = ProjectionHead(CHANNELS, proj_dim)
        self.num_classes = num_classes
        self.config = {"backbone": backbone_name, "num_classes": num_classes,
                       "output_stride": output_stride, "proj_dim": proj_dim}
        self.load_report: LoadReport | None = None

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(*self.backbone(x))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Logits at the input size; with return_features also the stride-4 projection."""
        h, logits = self._decode(x)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)
        if return_features:
            return logits, self.projector(h)
        return logits

    def forward_lowres(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier logits at stride 4, left for the runtime to upsample (export)."""
        return self._decode(x)[1]

    def param_groups(self, weight_decay: float, projector: bool = False) -> list[dict]:
        """SGD groups over backbone + head, and the projector where the method trains it
        (`decay_groups`: decay on conv/linear weights only).

        The projector is left out by default: STPG keeps it frozen, CPCL, LPL and the baselines
        never use it.
        """
        return decay_groups([self.backbone, self.head] + ([self.projector] if projector else []), weight_decay)

    @torch.no_grad()
    def reset_head_parameters(self, generator: torch.Generator | None = None) -> None:
        """docs/methods/stpg.md §1: Kaiming-normal (fan_in, ReLU) head convs, BN weight 1 / bias 0; conv biases keep
        the PyTorch default, so branches built alike differ only in these draws."""
        for module in self.head.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu", generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                module.eps, module.momentum = BN_EPS, BN_MOMENTUM
                module.reset_parameters()


def build_model(backbone: str, num_classes: int, output_stride: int = 16, pretrained: str | Path | None = None,
                proj_dim: int = CHANNELS) -> DeepLabV3Plus:
    """A branch with a freshly initialised head and, if `pretrained` names a local file, its backbone
    weights (non-strict; what did not fit is on `model.load_report`)."""
    model = DeepLabV3Plus(backbone, num_classes, output_stride=output_stride, proj_dim=proj_dim)
    model.reset_head_parameters()
    if pretrained is not None:
        model.load_report = load_backbone_weights(model.backbone, pretrained)
    return model
