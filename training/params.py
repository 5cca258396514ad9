"""Typed view of params.yaml: every stage reads its section through `load()`.

The dataclasses are the schema. An unknown key or a value of the wrong type fails at load
with one line naming the key, so a typo in `dvc exp run -S ...` never trains silently.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml


class ParamsError(ValueError):
    """A params.yaml problem the user must fix; the message names the key."""


@dataclasses.dataclass
class SyntheticParams:
    num_train: int = 400
    num_val: int = 100
    height: int = 256
    width: int = 512
    seed: int = 0
    video_frames: int = 240
    video_fps: int = 15


@dataclasses.dataclass
class DataParams:
    dataset: str = "synthetic"  # synthetic | cityscapes | voc
    root: str | None = None  # the real dataset's root; the synthetic set is generated under data/prepared
    synthetic: SyntheticParams = dataclasses.field(default_factory=SyntheticParams)

    def check(self, path: str) -> None:
        _choice(path + ".dataset", self.dataset, ("synthetic", "cityscapes", "voc"))


@dataclasses.dataclass
class SplitParams:
    labeled_ratio: int = 8  # n means 1/n of the train set is labeled
    seed: int = 0
    stratify: bool = True
    # A CPS/STPG-style list file (e.g. train_aug_labeled_1-8.txt) to use as the labeled part.
    given_labeled: str | None = None
    given_unlabeled: str | None = None
    out_dir: str = "data/splits"

    def check(self, path: str) -> None:
        if self.labeled_ratio < 1:
            raise ParamsError(f"{path}.labeled_ratio must be >= 1 (n means 1/n labeled), got {self.labeled_ratio}")


# Mirrors training.models.BACKBONES (a test keeps them equal) so loading params needs no torch.
BACKBONE_NAMES = ("resnet18", "resnet50", "resnet101", "resnet50_v1c", "resnet101_v1c", "mobilenet_v3_large")


@dataclasses.dataclass
class ModelParams:
    backbone: str = "resnet18"  # resnet18|resnet50|resnet101|resnet50_v1c|resnet101_v1c|mobilenet_v3_large
    output_stride: int = 16
    pretrained: str | None = None  # local weights file; never downloaded
    proj_dim: int = 256

    def check(self, path: str) -> None:
        _choice(path + ".backbone", self.backbone, BACKBONE_NAMES)
        _choice(path + ".output_stride", self.output_stride, (8, 16))
        _at_least(path + ".proj_dim", self.proj_dim, 1)


@dataclasses.dataclass
class StpgParams:
    """Schedules in epochs (0-based, 'from epoch e on'), as specs/stpg.md §3-5."""
    memory_start_epoch: int = 6
    contrast_start_epoch: int = 11
    proximity_start_epoch: int = 11
    hungarian_end_epoch: int | None = None  # None: every iteration (Cityscapes); 19 for VOC
    memory_size: int = 256
    memory_conf_thresh: float = 0.95
    memory_source: str = "pro_teacher"  # pro_teacher (code) | gen_teacher (paper)
    train_projection: bool = False  # False: frozen random heads (code); True: paper variant
    prototype_momentum: float = 0.9  # code 0.9, paper 0.99
    contrast_weight: float = 0.1
    anchor_temperature: float = 0.5

    def check(self, path: str) -> None:
        _choice(path + ".memory_source", self.memory_source, ("pro_teacher", "gen_teacher"))
        for key in ("memory_start_epoch", "contrast_start_epoch", "proximity_start_epoch"):
            _at_least(f"{path}.{key}", getattr(self, key), 0)
        _at_least(path + ".memory_size", self.memory_size, 1)
        _fraction(path + ".memory_conf_thresh", self.memory_conf_thresh, closed_top=True)
        _fraction(path + ".prototype_momentum", self.prototype_momentum)
        _at_least(path + ".contrast_weight", self.contrast_weight, 0)
        _positive(path + ".anchor_temperature", self.anchor_temperature)


@dataclasses.dataclass
class CpclParams:
    """CPCL's own settings (docs/methods/cpcl.md); its unsupervised weight is train.unsup_weight."""
    mismatch_eps: float = 1e-6  # added to the sum of the class mismatch scores, as the code

    def check(self, path: str) -> None:
        if not self.mismatch_eps >= 0:
            raise ParamsError(f"params: {path}.mismatch_eps must be >= 0 (the code uses 1.0e-6), "
                              f"got {self.mismatch_eps}")


@dataclasses.dataclass
class LplParams:
    """LPL's own settings (docs/methods/lpl.md); the reference code's values by default."""
    cce_eps: float = 1e-5  # epsilon of the class-aware softmax and of its log
    iou_decay: float = 0.99  # the running class IoU's counts decay by this every iteration
    pct_power: float = 8.0  # cross-training image weight: (min IoU of the image's classes)^power
    classifier_lr_scale: float = 10.0  # lr multiplier of the final classifier conv
    pseudo_net_poly: bool = False  # False: PseudoNet keeps the base lr (code); True: poly like HybridNet
    # stage 2 (python -m training.lpl_stage2): pseudo masks from HybridNet, then one supervised retrain
    pseudo_scales: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5])
    pseudo_flip: bool = True
    pseudo_dir: str = "data/lpl_pseudo"
    retrain_iters: int = 1000
    retrain_lr: float = 0.007
    retrain_out: str = "models/lpl_retrained.pt"
    retrain_checkpoint_dir: str = "checkpoints/lpl_retrain"

    def check(self, path: str) -> None:
        rules = (("cce_eps", self.cce_eps > 0, "> 0"), ("iou_decay", 0 <= self.iou_decay <= 1, "in [0, 1]"),
                 ("pct_power", self.pct_power >= 0, ">= 0"),
                 ("classifier_lr_scale", self.classifier_lr_scale > 0, "> 0"),
                 ("pseudo_scales", bool(self.pseudo_scales) and min(self.pseudo_scales) > 0, "a list of scales > 0"),
                 ("retrain_iters", self.retrain_iters >= 1, ">= 1"), ("retrain_lr", self.retrain_lr > 0, "> 0"))
        for key, valid, rule in rules:
            if not valid:
                raise ParamsError(f"params: {path}.{key} must be {rule}, got {getattr(self, key)!r}")


@dataclasses.dataclass
class CssParams:
    """CSS's own settings (docs/methods/css.md); the official scripts' values by default. Epochs
    are passes over the labelled images, as the code counts them."""
    label: str = "mix"  # ori | mix | cross: which pseudo-label script
    warmup_epochs: int = 0  # cross: logit-space targets for this many epochs first (code 0, README 20)
    rep_temperature: float = 0.5  # T of softmax(cos(r, P) / T)
    contrast_temperature: float = 0.5  # tau of the InfoNCE and of the negative-class law
    unsup_threshold: float = 0.97  # gamma_u: confident pixels counted by the image weight
    weak_threshold: float = 0.7  # gamma_w: unlabelled pixels that enter the contrast
    strong_threshold: float = 0.8  # gamma_s: hard anchors (0.8 for mix/cross, 0.97 in ori's YAML)
    num_queries: int = 256  # anchors per class
    num_negatives: int = 512  # keys per anchor
    prototype_momentum: float = 0.99
    rampdown_epochs: int | None = 200  # mix/cross contrast weight exp(-5 (e/E)^2), 0 from E on; null: 1
    strong_scales: list[float] = dataclasses.field(default_factory=lambda: [0.5, 2.0])  # VOC: [0.5, 1.5]
    quantize_confidence: bool = True  # true: floor(255 c)/255, the code's 8-bit image; false: exact

    def check(self, path: str) -> None:
        _choice(path + ".label", self.label, ("ori", "mix", "cross"))
        _at_least(path + ".warmup_epochs", self.warmup_epochs, 0)
        for key in ("rep_temperature", "contrast_temperature"):
            _positive(f"{path}.{key}", getattr(self, key))
        for key in ("unsup_threshold", "weak_threshold", "strong_threshold"):
            _fraction(f"{path}.{key}", getattr(self, key), closed_top=True)
        for key in ("num_queries", "num_negatives"):
            _at_least(f"{path}.{key}", getattr(self, key), 1)
        _fraction(path + ".prototype_momentum", self.prototype_momentum)
        if self.rampdown_epochs is not None:
            _at_least(path + ".rampdown_epochs", self.rampdown_epochs, 1)
        if len(self.strong_scales) != 2 or not 0 < self.strong_scales[0] <= self.strong_scales[1]:
            raise ParamsError(f"params: {path}.strong_scales must be [low, high] with 0 < low <= high, "
                              f"got {self.strong_scales}")


@dataclasses.dataclass
class TrainParams:
    method: str = "stpg"  # supervised | mean_teacher | stpg | cpcl | lpl | css
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 where supported) | fp32 | bf16 | fp16
    iters: int = 1000
    batch_size: int = 4
    crop: list[int] = dataclasses.field(default_factory=lambda: [256, 256])
    scales: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.75, 1.0, 1.5, 1.75, 2.0])
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    sup_loss: str = "ce"  # ce | ohem
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 50000  # per image in the batch
    ema_decay: float = 0.99
    unsup_weight: float = 1.0
    # Sigmoid ramp-up of the unsupervised weight over this fraction of the run (0 = full weight from the start)
    unsup_rampup: float = 0.0
    checkpoint_every: int = 100
    eval_every: int = 250
    log_every: int = 10
    seed: int = 12345
    workers: int = 2
    out: str = "models/gen_student.pt"
    checkpoint_dir: str = "checkpoints/train"
    stpg: StpgParams = dataclasses.field(default_factory=StpgParams)
    cpcl: CpclParams = dataclasses.field(default_factory=CpclParams)
    lpl: LplParams = dataclasses.field(default_factory=LplParams)
    css: CssParams = dataclasses.field(default_factory=CssParams)

    def check(self, path: str) -> None:
        _choice(path + ".method", self.method, ("supervised", "mean_teacher", "stpg", "cpcl", "lpl", "css"))
        _choice(path + ".device", self.device, ("auto", "cpu", "cuda"))
        _choice(path + ".precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _choice(path + ".sup_loss", self.sup_loss, ("ce", "ohem"))
        if len(self.crop) != 2:
            raise ParamsError(f"params: {path}.crop must be [height, width], got {self.crop}")
        for key in ("iters", "batch_size", "checkpoint_every", "log_every"):
            _at_least(f"{path}.{key}", getattr(self, key), 1)
        _at_least(f"{path}.eval_every", self.eval_every, 0)
        _at_least(f"{path}.workers", self.workers, 0)
        for i, size in enumerate(self.crop):
            _at_least(f"{path}.crop[{i}]", size, 1)
        if not self.scales or min(self.scales) <= 0:
            raise ParamsError(f"params: {path}.scales must be a non-empty list of positive factors, got {self.scales}")
        for key in ("lr", "poly_power"):
            _positive(f"{path}.{key}", getattr(self, key))
        for key in ("momentum", "ema_decay", "unsup_rampup"):
            _fraction(f"{path}.{key}", getattr(self, key), closed_top=key == "unsup_rampup")
        for key in ("weight_decay", "unsup_weight"):
            _at_least(f"{path}.{key}", getattr(self, key), 0)


@dataclasses.dataclass
class EvaluateParams:
    mode: str = "sliding"  # sliding | whole
    crop: list[int] = dataclasses.field(default_factory=lambda: [256, 512])
    batch_size: int = 1

    def check(self, path: str) -> None:
        _choice(path + ".mode", self.mode, ("sliding", "whole"))
        if len(self.crop) != 2 or min(self.crop) < 1:
            raise ParamsError(f"params: {path}.crop must be [height, width] of positive sizes, got {self.crop}")


@dataclasses.dataclass
class ExportTolerance:
    fp32_miou_delta: float = 0.1  # mIoU points
    fp16_miou_delta: float = 0.5
    int8_miou_delta: float = 1.5
    fp32_label_agreement: float = 0.999
    fp16_label_agreement: float = 0.99
    int8_label_agreement: float = 0.95


@dataclasses.dataclass
class ExportParams:
    checkpoint: str = "models/gen_student.pt"
    out_dir: str = "models/export"
    opset: int = 17
    input_size: list[int] = dataclasses.field(default_factory=lambda: [256, 512])
    input: str = "nchw_float"  # nchw_float | nhwc_uint8
    output: str = "lowres_logits"  # logits | lowres_logits | labels
    dynamic_batch: bool = False
    precisions: list[str] = dataclasses.field(default_factory=lambda: ["fp32", "fp16", "int8"])
    calibration_images: int = 32
    # Nodes the int8 graph keeps in fp32: node names, or first_conv / last_conv (the classifier).
    int8_keep_fp32: list[str] = dataclasses.field(default_factory=list)
    verify_images: int = 16
    tensorrt: str = "auto"  # auto (skip when absent) | required | off
    # precision_onnx: strongly typed builds from the fp16 / int8 ONNX (TensorRT 10 and 11);
    # builder_flags: FP16/INT8 flags + entropy calibrator over the fp32 ONNX (TensorRT 10 only).
    tensorrt_source: str = "precision_onnx"
    tensorrt_workspace_mb: int = 2048
    tensorrt_timing_cache: str = "models/tensorrt_timing.cache"
    tolerance: ExportTolerance = dataclasses.field(default_factory=ExportTolerance)

    def check(self, path: str) -> None:
        _choice(path + ".input", self.input, ("nchw_float", "nhwc_uint8"))
        _choice(path + ".output", self.output, ("logits", "lowres_logits", "labels"))
        _choice(path + ".tensorrt", self.tensorrt, ("auto", "required", "off"))
        _choice(path + ".tensorrt_source", self.tensorrt_source, ("precision_onnx", "builder_flags"))
        if len(self.input_size) != 2:
            raise ParamsError(f"params: {path}.input_size must be [height, width], got {self.input_size}")
        if self.calibration_images < 1 or self.verify_images < 1:
            raise ParamsError(f"params: {path}.calibration_images and {path}.verify_images must be >= 1")
        for p in self.precisions:
            _choice(path + ".precisions[]", p, ("fp32", "fp16", "int8"))
        if self.opset < 17:
            raise ParamsError(f"params: {path}.opset must be >= 17, got {self.opset}")


@dataclasses.dataclass
class SegmentDemoParams:
    backend: str = "onnxruntime"
    alpha: float = 0.5

    def check(self, path: str) -> None:
        _fraction(path + ".alpha", self.alpha, closed_top=True)


@dataclasses.dataclass
class BenchmarkParams:
    warmup: int = 5
    iters: int = 30
    frames: int = 120
    threads: int = 2

    def check(self, path: str) -> None:
        _at_least(path + ".warmup", self.warmup, 0)
        for key in ("iters", "frames", "threads"):
            _at_least(f"{path}.{key}", getattr(self, key), 1)


@dataclasses.dataclass
class SslBenchmarkParams:
    """The semi-supervised benchmark (training/ssl_benchmark.py, docs/ssl_benchmark.md): its own
    low-resolution data and split, and one set of overrides of the train section for every arm alike."""
    out_dir: str = "data/ssl"
    data: SyntheticParams = dataclasses.field(default_factory=lambda: SyntheticParams(height=128, width=256))
    labeled_ratio: int = 16
    split_seed: int = 0
    arms: list[str] = dataclasses.field(default_factory=lambda: ["full", "supervised", "mean_teacher", "stpg"])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    warmup_iters: int = 500  # supervised warm-up on the labeled images whose backbone starts every arm; 0: none
    eval_mode: str = "whole"
    train: dict = dataclasses.field(default_factory=dict)  # overrides of the train section

    def check(self, path: str) -> None:
        _at_least(path + ".labeled_ratio", self.labeled_ratio, 2)
        _at_least(path + ".warmup_iters", self.warmup_iters, 0)
        _choice(path + ".eval_mode", self.eval_mode, ("sliding", "whole"))
        if not self.arms or not self.seeds:
            raise ParamsError(f"params: {path}.arms and {path}.seeds must each name at least one entry")


_SECTIONS: dict[str, type] = {
    "data": DataParams,
    "split": SplitParams,
    "model": ModelParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "export": ExportParams,
    "segment_demo": SegmentDemoParams,
    "benchmark": BenchmarkParams,
    "ssl_benchmark": SslBenchmarkParams,
}


def _at_least(key: str, value, minimum) -> None:
    if value < minimum:
        raise ParamsError(f"params: {key} must be >= {minimum}, got {value!r}")


def _positive(key: str, value) -> None:
    if value <= 0:
        raise ParamsError(f"params: {key} must be > 0, got {value!r}")


def _fraction(key: str, value, closed_top: bool = False) -> None:
    """0 <= value < 1 (or <= 1 with closed_top)."""
    if not (0 <= value <= 1 if closed_top else 0 <= value < 1):
        raise ParamsError(f"params: {key} must be in [0, 1{']' if closed_top else ')'}, got {value!r}")


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ParamsError(f"params: {key} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _convert(tp, value, key: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, key)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(errors[0] if errors else f"params: {key} must not be null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"params: {key} must be a mapping, got {type(value).__name__}")
        return build(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"params: {key} must be a list, got {value!r}")
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is dict:  # free-form overrides, validated where they are merged
        if not isinstance(value, dict):
            raise ParamsError(f"params: {key} must be a mapping, got {value!r}")
        return value
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ParamsError(f"params: {key} must be {tp.__name__}, got {value!r} ({type(value).__name__})")
        return value
    raise TypeError(f"unsupported params type {tp} for {key}")


def build(cls, raw: dict, path: str):
    """Build dataclass `cls` from `raw`, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ParamsError(
            f"params: unknown key {path}.{unknown[0]} (known: {', '.join(sorted(hints))})")
    values = {k: _convert(hints[k], v, f"{path}.{k}") for k, v in raw.items()}
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(path)
    return obj


def load_raw(path: str | Path = "params.yaml") -> dict:
    """params.yaml as a plain mapping, every section validated."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params: {path} not found; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"params: {path} is not valid YAML ({exc.__class__.__name__}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"params: {path} must be a mapping of sections; fix the file")
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ParamsError(f"params: unknown section {unknown[0]!r} (known: {', '.join(sorted(_SECTIONS))})")
    # Validate every section, so a typo anywhere fails the first stage that runs.
    sections = {name: build(cls, raw.get(name) or {}, name) for name, cls in _SECTIONS.items()}
    ssl = sections["ssl_benchmark"]
    for arm in ssl.arms:
        ssl_train_params(raw, arm, ssl.seeds[0])
    return raw


def load(section: str, path: str | Path = "params.yaml"):
    """The typed params of one section; missing keys take the schema defaults."""
    if section not in _SECTIONS:
        raise KeyError(section)
    raw = load_raw(path)
    return build(_SECTIONS[section], raw.get(section) or {}, section)


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` laid over it, nested mappings merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def ssl_train_params(raw: dict, arm: str, seed: int) -> TrainParams:
    """The train section of one benchmark row: train, then ssl_benchmark.train, then the arm's method and seed.

    The arm `full` is supervised training with every train image labeled (the upper bound).
    """
    overrides = (raw.get("ssl_benchmark") or {}).get("train") or {}
    row = merged(merged(raw.get("train") or {}, overrides),
                 {"method": "supervised" if arm == "full" else arm, "seed": seed})
    return build(TrainParams, row, f"ssl_benchmark.train (arm {arm})")
