"""Typed view of params.yaml: every stage reads its section through `load()`.

The dataclasses are the schema: types, ranges (`check`) and what each key means. The values
live in params.yaml alone, so DVC sees every change of one. A missing key, an unknown key or a
value of the wrong type fails at load with one line naming the key, so a typo in
`dvc exp run -S ...` never trains silently. The only defaults are `None` for the paths to
optional inputs (data.root, model.pretrained, split.given_*), where None means "not given".
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import yaml


PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


class ParamsError(ValueError):
    """A params.yaml problem the user must fix; the message names the key."""


@dataclasses.dataclass
class SyntheticParams:
    num_train: int
    num_val: int
    height: int
    width: int
    seed: int
    video_frames: int
    video_fps: int


@dataclasses.dataclass(kw_only=True)
class DataParams:
    dataset: str  # synthetic | cityscapes | voc
    root: str | None = None  # the real dataset's root; the synthetic set is generated under data/prepared
    synthetic: SyntheticParams
    # Cityscapes / VOC have no video: `segment_demo` and `benchmark` run on this many val images
    # as an image-folder source instead (the synthetic set's dashcam video otherwise).
    demo_frames: int
    # Input normalisation (x/255 - mean)/std, RGB: used in training, recorded in the deployable
    # model and its runtime contract, and read back from there by evaluation and export.
    mean: list[float]
    std: list[float]

    def check(self, path: str) -> None:
        _choice(path + ".dataset", self.dataset, ("synthetic", "cityscapes", "voc"))
        for key in ("mean", "std"):
            if len(getattr(self, key)) != 3:
                raise ParamsError(f"params: {path}.{key} must be three numbers [r, g, b], got {getattr(self, key)}")
        for i, value in enumerate(self.std):
            _positive(f"{path}.std[{i}]", value)
        _at_least(path + ".demo_frames", self.demo_frames, 1)


@dataclasses.dataclass(kw_only=True)
class SplitParams:
    labeled_ratio: int  # n means 1/n of the train set is labeled
    seed: int
    stratify: bool
    # A CPS/STPG-style list file (e.g. train_aug_labeled_1-8.txt) to use as the labeled part.
    given_labeled: str | None = None
    given_unlabeled: str | None = None
    out_dir: str

    def check(self, path: str) -> None:
        if self.labeled_ratio < 1:
            raise ParamsError(f"{path}.labeled_ratio must be >= 1 (n means 1/n labeled), got {self.labeled_ratio}")


# Mirrors training.methods.CLASSES (a test keeps them equal) so loading params needs no torch.
METHOD_NAMES = ("supervised", "mean_teacher", "stpg", "cpcl", "lpl", "css")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 where the hardware has it; the rest name an arm's suffix
# Mirrors training.models.BACKBONES (a test keeps them equal) so loading params needs no torch.
BACKBONE_NAMES = ("resnet18", "resnet50", "resnet101", "resnet50_v1c", "resnet101_v1c", "mobilenet_v3_large")


@dataclasses.dataclass(kw_only=True)
class ModelParams:
    backbone: str  # resnet18|resnet50|resnet101|resnet50_v1c|resnet101_v1c|mobilenet_v3_large
    output_stride: int
    pretrained: str | None = None  # local weights file; never downloaded
    proj_dim: int

    def check(self, path: str) -> None:
        _choice(path + ".backbone", self.backbone, BACKBONE_NAMES)
        _choice(path + ".output_stride", self.output_stride, (8, 16))
        _at_least(path + ".proj_dim", self.proj_dim, 1)


@dataclasses.dataclass
class StpgParams:
    """Schedules in epochs (0-based, 'from epoch e on'), as docs/methods/stpg.md §7."""
    memory_start_epoch: int
    contrast_start_epoch: int
    proximity_start_epoch: int
    hungarian_end_epoch: int | None  # None: every iteration (Cityscapes); 19 for VOC
    memory_size: int  # features kept per class
    memory_conf_thresh: float  # a labeled pixel enters the memory when the teacher is right and surer than this
    memory_source: str  # pro_teacher (code) | gen_teacher (paper)
    train_projection: bool  # False: frozen random heads (code); True: paper variant
    prototype_momentum: float  # code 0.9, paper 0.99
    contrast_weight: float  # of each of the two contrast terms (labeled, unlabeled)
    anchor_temperature: float

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
    mismatch_eps: float  # added to the sum of the class mismatch scores, as the code

    def check(self, path: str) -> None:
        if not self.mismatch_eps >= 0:
            raise ParamsError(f"params: {path}.mismatch_eps must be >= 0 (the code uses 1.0e-6), "
                              f"got {self.mismatch_eps}")


@dataclasses.dataclass
class LplParams:
    """LPL's own settings (docs/methods/lpl.md); params.yaml holds the reference code's values."""
    cce_eps: float  # epsilon of the class-aware softmax and of its log
    iou_decay: float  # the running class IoU's counts decay by this every iteration
    pct_power: float  # cross-training image weight: (min IoU of the image's classes)^power
    classifier_lr_scale: float  # lr multiplier of the final classifier conv
    pseudo_net_poly: bool  # False: PseudoNet keeps the base lr (code); True: poly like HybridNet
    # stage 2 (python -m training.lpl_stage2): pseudo masks from HybridNet, then one supervised retrain
    pseudo_scales: list[float]
    pseudo_flip: bool
    pseudo_dir: str
    retrain_iters: int
    retrain_lr: float
    retrain_out: str
    retrain_checkpoint_dir: str

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
    """CSS's own settings (docs/methods/css.md); params.yaml holds the official scripts' values.
    Epochs are passes over the labelled images, as the code counts them."""
    label: str  # ori | mix | cross: which pseudo-label script
    warmup_epochs: int  # cross: logit-space targets for this many epochs first (code 0, README 20)
    rep_temperature: float  # T of softmax(cos(r, P) / T)
    contrast_temperature: float  # tau of the InfoNCE and of the negative-class law
    unsup_threshold: float  # gamma_u: confident pixels counted by the image weight
    weak_threshold: float  # gamma_w: unlabelled pixels that enter the contrast
    strong_threshold: float  # gamma_s: hard anchors (0.8 for mix/cross, 0.97 in ori's YAML)
    num_queries: int  # anchors per class
    num_negatives: int  # keys per anchor
    prototype_momentum: float
    rampdown_epochs: int | None  # mix/cross contrast weight exp(-5 (e/E)^2), 0 from E on; null: 1
    strong_scales: list[float]  # VOC: [0.5, 1.5]
    quantize_confidence: bool  # true: floor(255 c)/255, the code's 8-bit image; false: exact

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
    method: str  # supervised | mean_teacher | stpg | cpcl | lpl | css
    device: str  # auto | cpu | cuda
    precision: str  # auto (bf16 where supported) | fp32 | bf16 | fp16
    iters: int
    batch_size: int
    crop: list[int]
    scales: list[float]
    lr: float
    momentum: float
    weight_decay: float  # not on BN parameters and biases
    poly_power: float  # lr = lr0 (1 - t/T)^power
    sup_loss: str  # ce | ohem
    ohem_thresh: float  # keep pixels whose true-class probability is <= max(thresh, the min_kept-th smallest)
    ohem_min_kept: int  # per image in the batch
    ema_decay: float
    unsup_weight: float
    # Sigmoid ramp-up of the unsupervised weight over this fraction of the run (0 = full weight from the start)
    unsup_rampup: float
    checkpoint_every: int
    eval_every: int
    log_every: int
    seed: int
    workers: int
    out: str
    checkpoint_dir: str
    stpg: StpgParams
    cpcl: CpclParams
    lpl: LplParams
    css: CssParams

    def check(self, path: str) -> None:
        _choice(path + ".method", self.method, METHOD_NAMES)
        _choice(path + ".device", self.device, ("auto", "cpu", "cuda"))
        _choice(path + ".precision", self.precision, PRECISIONS)
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
    mode: str  # sliding | whole
    crop: list[int]

    def check(self, path: str) -> None:
        _choice(path + ".mode", self.mode, ("sliding", "whole"))
        if len(self.crop) != 2 or min(self.crop) < 1:
            raise ParamsError(f"params: {path}.crop must be [height, width] of positive sizes, got {self.crop}")


@dataclasses.dataclass
class ExportTolerance:
    fp32_miou_delta: float  # mIoU points
    fp16_miou_delta: float
    int8_miou_delta: float
    fp32_label_agreement: float
    fp16_label_agreement: float
    int8_label_agreement: float


@dataclasses.dataclass
class ExportParams:
    checkpoint: str
    out_dir: str
    opset: int
    input_size: list[int]
    input: str  # nchw_float | nhwc_uint8
    output: str  # logits | lowres_logits | labels
    dynamic_batch: bool
    precisions: list[str]
    calibration_images: int
    # Nodes the int8 graph keeps in fp32: node names, or first_conv / last_conv (the classifier).
    int8_keep_fp32: list[str]
    verify_images: int
    tensorrt: str  # auto (skip when absent) | required | off
    # precision_onnx: strongly typed builds from the fp16 / int8 ONNX (TensorRT 10 and 11);
    # builder_flags: FP16/INT8 flags + entropy calibrator over the fp32 ONNX (TensorRT 10 only).
    tensorrt_source: str
    tensorrt_workspace_mb: int
    tensorrt_timing_cache: str
    tolerance: ExportTolerance

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
    backend: str
    alpha: float

    def check(self, path: str) -> None:
        _fraction(path + ".alpha", self.alpha, closed_top=True)


@dataclasses.dataclass
class BenchmarkParams:
    warmup: int
    iters: int
    frames: int
    threads: int
    drive_frames: int
    soak_frames: int
    soak_window: int

    def check(self, path: str) -> None:
        _at_least(path + ".warmup", self.warmup, 0)
        for key in ("iters", "frames", "threads", "drive_frames", "soak_frames", "soak_window"):
            _at_least(f"{path}.{key}", getattr(self, key), 1)
        if self.soak_frames < self.soak_window:
            raise ParamsError(f"params: {path}.soak_frames ({self.soak_frames}) must be at least one "
                              f"{path}.soak_window ({self.soak_window})")


@dataclasses.dataclass
class SslBenchmarkParams:
    """The semi-supervised benchmark (training/ssl_benchmark.py, docs/ssl_benchmark.md): its own
    low-resolution data and split, and one set of overrides of the train section for every arm alike."""
    out_dir: str
    data: SyntheticParams
    labeled_ratio: int
    split_seed: int
    arms: list[str]
    seeds: list[int]
    warmup_iters: int  # supervised warm-up on the labeled images whose backbone starts every arm; 0: none
    eval_mode: str
    train: dict  # overrides of the train section

    @property
    def data_dirs(self) -> tuple[Path, Path]:
        """Where the benchmark's prepared data and split live."""
        return Path(self.out_dir) / "prepared", Path(self.out_dir) / "splits"

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
    if tp is float and isinstance(value, str) and _reads_as_float(value):
        # YAML 1.1 (PyYAML) leaves 1e-05 as text where YAML 1.2 (DVC) reads a number, and
        # `dvc exp run -S` writes every float below 1e-4 that way: read it as the number DVC sees
        return float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ParamsError(f"params: {key} must be {tp.__name__}, got {value!r} ({type(value).__name__})")
        return value
    raise TypeError(f"unsupported params type {tp} for {key}")


def _reads_as_float(text: str) -> bool:
    """A number in exponent notation that YAML 1.1 left as text, such as 1e-3."""
    return re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", text.strip()) is not None


def build(cls, raw: dict, path: str):
    """Build dataclass `cls` from `raw`, refusing unknown and missing keys and wrong types."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ParamsError(
            f"params: unknown key {path}.{unknown[0]} (known: {', '.join(sorted(hints))})")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ParamsError(f"params: missing key {path}.{missing[0]}; add it to params.yaml")
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
    return checked(raw)


def checked(raw: dict) -> dict:
    """`raw` (a whole params mapping) after validating every section: a typo anywhere fails here."""
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ParamsError(f"params: unknown section {unknown[0]!r} (known: {', '.join(sorted(_SECTIONS))})")
    sections = {name: build(cls, raw.get(name) or {}, name) for name, cls in _SECTIONS.items()}
    ssl = sections["ssl_benchmark"]
    for arm in ssl.arms:
        ssl_train_params(raw, arm, ssl.seeds[0])
    return raw


def load(section: str, path: str | Path = "params.yaml"):
    """The typed params of one section; every key must be in the file."""
    if section not in _SECTIONS:
        raise KeyError(section)
    raw = load_raw(path)
    return build(_SECTIONS[section], raw.get(section) or {}, section)


def section(name: str, path: str | Path = PROJECT_PARAMS, **overrides):
    """Section `name` of the project's params.yaml with `overrides` laid over it (nested ones as
    dicts, e.g. stpg=dict(memory_start_epoch=0)), validated as the file is: how tests and tools
    get params, so that they follow params.yaml rather than values of their own."""
    if name not in _SECTIONS:
        raise KeyError(name)
    return build(_SECTIONS[name], merged(load_raw(path).get(name) or {}, overrides), name)


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` laid over it, nested mappings merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


FULL_ARM = "full"  # the benchmark's upper bound: supervised training with every train image labeled
BASELINE_ARM = "supervised"  # labeled images only
LPL_STAGE2_ARM = "lpl_stage2"  # LPL's stage 2: supervised training on the labels plus the lpl row's pseudo masks
SSL_ROWS_DIR = Path("metrics/ssl")  # one <arm>-<seed>.json per benchmark row


def split_arm(arm: str) -> tuple[str, str | None]:
    """(the arm, its precision suffix or None): `stpg_fp32` -> ("stpg", "fp32"), `mean_teacher` -> ("mean_teacher", None)."""
    base, _, suffix = arm.rpartition("_")
    return (base, suffix) if base and suffix in PRECISIONS[1:] else (arm, None)


def ssl_train_params(raw: dict, arm: str, seed: int) -> TrainParams:
    """The train section of one benchmark row: train, then ssl_benchmark.train, then the arm's method and seed.

    The arm `full` is supervised training with every train image labeled (the upper bound), and
    `lpl_stage2` supervised training on the labels plus LPL's pseudo masks (training.ssl_benchmark
    makes them). An arm
    with a precision suffix (`stpg_fp32`) is that arm trained in that precision: the same protocol
    with one thing changed, so its rows measure what the precision costs.
    """
    base, precision = split_arm(arm)
    overrides = (raw.get("ssl_benchmark") or {}).get("train") or {}
    row = merged(merged(raw.get("train") or {}, overrides),
                 {"method": BASELINE_ARM if base in (FULL_ARM, LPL_STAGE2_ARM) else base, "seed": seed,
                  **({"precision": precision} if precision else {})})
    return build(TrainParams, row, f"ssl_benchmark.train (arm {arm})")
