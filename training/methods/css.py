"""CSS: one student and its EMA teacher, with pseudo-labels from the logit space and the
representation space supervising each other (docs/methods/css.md; the official code's behaviour).

`train.css.label` picks the script: ori (logit space only), mix (the two spaces must agree) or
cross (the representation space labels the classifier, the logit space the contrast). The
teacher is the evaluated network. Host-side randomness (the strong view) comes from Python's
`random` and torch's CPU generator, device-side randomness (anchor and negative draws) from the
device generator: the engine checkpoints all of them, so a resumed run repeats every draw.
"""
from __future__ import annotations

import math
import random
import warnings

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from training.methods import contrast, ema, losses
from training.methods.base import Method
from training.params import ParamsError

IGN = losses.IGNORE_INDEX
RAMPDOWN_MULT = 5.0  # contrast weight exp(-5 (e / E)^2), the code's ramp_mult
BLUR_KERNEL = 9  # covers 3 sigma of the largest blur (sigma 1.15)


def representation_labels(features: torch.Tensor, prototypes: torch.Tensor, temperature: float, size):
    """(confidence, label) of softmax(cos(r, P) / T), the cosines bilinearly upsampled to `size` first."""
    cosines = F.interpolate(contrast.prototype_cosines(features, prototypes), size=size, mode="bilinear",
                            align_corners=True)
    return torch.softmax(cosines / temperature, dim=1).max(dim=1)


def representation_probability_range(num_classes: int, temperature: float) -> tuple[float, float]:
    """(lowest, highest) probability softmax(cos / T) can give one class: cosine -1 (or 1) to it
    and the opposite to all the others."""
    return (1.0 / (1.0 + (num_classes - 1) * math.exp(2.0 / temperature)),
            1.0 / (1.0 + (num_classes - 1) * math.exp(-2.0 / temperature)))


def quantized(confidence, enabled: bool = True):
    """floor(255 c) / 255: the code passes confidences through an 8-bit image."""
    return torch.floor(confidence * 255.0) / 255.0 if enabled else confidence


def pseudo_targets(mode: str, warm: bool, label_cls, label_rep, conf_cls, conf_rep):
    """(classifier target, its confidence for the image weight, contrast label) of one script.

    ori: the logit space throughout. mix: the logit label where both spaces agree, ignore
    elsewhere, also for the contrast. cross: after warm-up the representation label and its
    confidence train the classifier while the logit label feeds the contrast.
    """
    if mode == "mix":
        agreed = torch.where(label_cls == label_rep, label_cls, torch.full_like(label_cls, IGN))
        return agreed, conf_cls, agreed
    if mode == "cross" and not warm:
        return label_rep, conf_rep, label_cls
    return label_cls, conf_cls, label_cls


def confident_fraction(target: torch.Tensor, confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B,1,1) w_b = #{pixels with c >= threshold} / #{pixels whose target is not ignored}.

    The numerator counts ignored pixels too, as the code does, so w_b can exceed 1.
    """
    confident = (confidence >= threshold).flatten(1).sum(dim=1)
    valid = (target != IGN).flatten(1).sum(dim=1).clamp(min=1)
    return (confident / valid)[:, None, None]


def zero_loss_warnings(p, num_classes: int) -> list[str]:
    """One line per loss that the settings `p` make identically zero for `num_classes` classes."""
    messages = []
    lowest, highest = representation_probability_range(num_classes, p.rep_temperature)
    reachable = float(quantized(torch.tensor(highest, dtype=torch.float64), p.quantize_confidence))
    if p.label == "cross" and reachable < p.unsup_threshold:
        after = f" after {p.warmup_epochs} warm-up epochs" if p.warmup_epochs else ""
        messages.append(
            f"train.css: with label cross, {num_classes} classes and rep_temperature {p.rep_temperature}, the "
            f"representation confidence never exceeds {reachable:.4f} < unsup_threshold {p.unsup_threshold}, so the "
            f"unsupervised loss is identically 0{after} (as in the official code); lower unsup_threshold or "
            "rep_temperature to train on it")
    if p.strong_threshold <= (0.0 if p.label == "ori" else lowest):
        messages.append(
            f"train.css: no class probability can fall below strong_threshold {p.strong_threshold}, so there is "
            "no hard anchor and the contrastive loss is identically 0; raise train.css.strong_threshold")
    return messages


def _rescale_crop(image, maps, scale: float, pad_values):
    """One image (3,H,W) and its maps (M,H,W) rescaled by `scale`, padded right/bottom and cropped back."""
    height, width = image.shape[-2:]
    size = (int(height * scale), int(width * scale))
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    maps = F.interpolate(maps[None], size=size, mode="nearest-exact")[0]
    pad = (0, max(width - size[1], 0), 0, max(height - size[0], 0))
    image = F.pad(image, pad)  # 0 = the mean colour after normalisation
    maps = torch.stack([F.pad(m, pad, value=v) for m, v in zip(maps, pad_values)])
    top = random.randint(0, image.shape[-2] - height)
    left = random.randint(0, image.shape[-1] - width)
    return image[:, top:top + height, left:left + width], maps[:, top:top + height, left:left + width]


def half_area_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of CSS's CutMix box: w ~ U{W//2+1..W-1}, h = round(HW/2 / w), placed uniformly."""
    if width < 3:
        raise ValueError(f"the half-area CutMix box needs an image at least 3 pixels wide, got {width}")
    box_w = random.randint(width // 2 + 1, width - 1)
    box_h = round(height * width / 2 / box_w)
    return random.randint(0, height - box_h), random.randint(0, width - box_w), box_h, box_w


class StrongView:
    """The unlabelled images with their labels and confidences, transformed jointly: rescale and
    crop, CutMix with the next image of the batch inside a half-area box, then colour jitter
    (p 0.8), Gaussian blur (p 0.5) and horizontal flip (p 0.5)."""

    def __init__(self, scale_range, mean, std):
        self.scale_range = tuple(scale_range)
        self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
        self.jitter = v2.ColorJitter(brightness=(0.75, 1.25), contrast=(0.75, 1.25), saturation=(0.75, 1.25),
                                     hue=(-0.25, 0.25))

    @torch.no_grad()
    def __call__(self, images, labels, confidences):
        """images (B,3,H,W) normalised, labels (B,L,H,W) int64, confidences (B,M,H,W) -> the same, transformed."""
        with torch.autocast(images.device.type, enabled=False):
            return self._transform(images.float(), labels, confidences.float())

    def _transform(self, images, labels, confidences):
        num_labels, (height, width) = labels.shape[1], images.shape[-2:]
        maps = torch.cat([labels.float(), confidences], dim=1)
        pad_values = [float(IGN)] * num_labels + [0.0] * confidences.shape[1]
        views = [_rescale_crop(image, m, random.uniform(*self.scale_range), pad_values) for image, m in zip(images, maps)]
        images, maps = torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])

        box = torch.zeros(len(images), 1, height, width, dtype=torch.bool, device=images.device)
        for i in range(len(images)):
            top, left, box_h, box_w = half_area_box(height, width)
            box[i, :, top:top + box_h, left:left + box_w] = True
        images = torch.where(box, images.roll(-1, dims=0), images)  # the partner of image i is (i+1) mod B
        maps = torch.where(box, maps.roll(-1, dims=0), maps)

        mean, std = self.mean.to(images.device), self.std.to(images.device)
        out_images, out_maps = [], []
        for image, m in zip(images, maps):
            image = (image * std + mean).clamp(0.0, 1.0)
            if random.random() < 0.8:
                image = self.jitter(image)
            if random.random() < 0.5:
                sigma = random.uniform(0.15, 1.15)
                image = v2.functional.gaussian_blur(image, [BLUR_KERNEL, BLUR_KERNEL], [sigma, sigma])
            if random.random() < 0.5:
                image, m = image.flip(-1), m.flip(-1)
            out_images.append((image - mean) / std)
            out_maps.append(m)
        maps = torch.stack(out_maps)
        return torch.stack(out_images), maps[:, :num_labels].long(), maps[:, num_labels:]


class CSS(Method):
    nesterov = True  # the official recipe's SGD
    min_lr = 1e-4  # its poly schedule never goes below this
    def __init__(self, train_cfg, context, build_network):
        super().__init__(train_cfg, context, build_network)
        self.p = p = train_cfg.css
        if train_cfg.crop[1] < 3:
            raise ParamsError(f"params: train.crop width must be >= 3 for css's half-area CutMix, got {train_cfg.crop[1]}")
        self.class_weights = None  # the code's OHEM has no class weights
        self.student = build_network()
        for module in self.student.projector.modules():  # CSS's representation head has no dropout
            if isinstance(module, torch.nn.Dropout2d):
                module.p = 0.0
        self.teacher = self.make_teacher(self.student)
        self.prototypes = contrast.PrototypeBank(context.num_classes, self.student.projector[-1].out_channels,
                                                 momentum=p.prototype_momentum)
        self.strong_view = StrongView(p.strong_scales, context.mean, context.std)
        # The code's epochs are passes over the labelled images.
        self.labeled_epoch_iters = max(1, context.num_labeled // context.batch_size)
        for message in zero_loss_warnings(p, context.num_classes):
            warnings.warn(message, stacklevel=2)

    def teachers(self):
        return [self.teacher]

    def contrast_weight(self, labeled_epoch: int) -> float:
        """1 for ori; exp(-5 (e/E)^2) before epoch E, then 0, for mix and cross (1 with E unset)."""
        end = self.p.rampdown_epochs
        if self.p.label == "ori" or end is None:
            return 1.0
        return math.exp(-RAMPDOWN_MULT * (labeled_epoch / end) ** 2) if labeled_epoch < end else 0.0

    def forward(self, batch, iteration, epoch):
        p, k = self.p, self.context.num_classes
        x, y, u = batch["image"], batch["label"], batch["unlabeled"]
        labeled_epoch = iteration // self.labeled_epoch_iters

        # 1. teacher on the clean unlabelled images: labels in logit and representation space
        with torch.no_grad():
            teacher_logits, teacher_features = self.teacher(u, return_features=True)
            conf_cls, label_cls = torch.softmax(teacher_logits.float(), dim=1).max(dim=1)
            conf_rep, label_rep = representation_labels(teacher_features, self.prototypes.vectors,
                                                        p.rep_temperature, u.shape[-2:])

        # 2. strong view of images, labels and (8-bit) confidences together
        strong, labels, confidences = self.strong_view(
            u, torch.stack([label_cls, label_rep], dim=1),
            quantized(torch.stack([conf_cls, conf_rep], dim=1), p.quantize_confidence))
        label_cls, label_rep, conf_cls, conf_rep = labels[:, 0], labels[:, 1], confidences[:, 0], confidences[:, 1]
        warm = labeled_epoch < p.warmup_epochs
        target, target_conf, contrast_label = pseudo_targets(p.label, warm, label_cls, label_rep, conf_cls, conf_rep)

        # 3. student on the labelled images and the strong view
        logits_l, features_l = self.student(x, return_features=True)
        logits_u, features_u = self.student(strong, return_features=True)
        sup = self.supervised_loss(logits_l, y)

        # 4. unsupervised: CE over the pixels with CE > 0, weighted per image by its confident fraction
        weight = confident_fraction(target, target_conf, p.unsup_threshold)
        unsup = losses.weighted_ce(logits_u.float(), target, weight, reduction="positive_only")

        # 5. contrast set at the representation grid: labelled GT, confident unlabelled labels
        grid = features_l.shape[-2:]
        features = torch.cat([features_l, features_u])
        unlabeled_valid = torch.where(conf_cls >= p.weak_threshold, contrast_label, torch.full_like(contrast_label, IGN))
        grid_labels = contrast.nearest_downsample(torch.cat([y, unlabeled_valid]), grid)

        # 6. hard anchors: own-class probability below strong_threshold, with the prototypes before this step
        with torch.no_grad():
            if p.label == "ori":
                probability = torch.softmax(contrast.nearest_downsample(torch.cat([logits_l, logits_u]).float(), grid), 1)
            else:
                cosines = contrast.prototype_cosines(features.detach(), self.prototypes.vectors)
                probability = torch.softmax(cosines / p.rep_temperature, dim=1)
            own = probability.gather(1, grid_labels.clamp(min=0, max=k - 1)[:, None])[:, 0]
            hard = own < p.strong_threshold

        # 7. prototypes move to this batch's class means, then serve as the positives
        self.prototypes.update(features, grid_labels)
        con = contrast.prototype_infonce_loss(features, grid_labels, hard, self.prototypes.vectors,
                                              p.num_queries, p.num_negatives, p.contrast_temperature)

        total = sup + self.unsup_weight(iteration) * unsup + self.contrast_weight(labeled_epoch) * con
        return {"loss": total, "sup": sup, "unsup": unsup, "contrast": con,
                "image_weight": weight.mean(), "agreement": (label_cls == label_rep).float().mean()}

    def param_groups(self, weight_decay):
        return self.student.param_groups(weight_decay, projector=True)

    def update_teachers(self, iteration):
        ema.ema_update(self.teacher, self.student, ema.warm_start_decay(iteration, self.cfg.ema_decay))

    def evaluated_network(self):
        return self.teacher
