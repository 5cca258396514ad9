"""Seconds per training iteration for each method and precision, on random tensors.

Measures the step alone (forwards, losses, backward, SGD, EMA) with every STPG branch active,
so numbers compare across machines and code changes:
    python -m training.bench_step --backbone resnet50_v1c --crop 128 --batch 2
"""
from __future__ import annotations

import argparse
import time

import torch

from training import params
from training.device import resolve_device, resolve_precision
from training.methods import MethodContext, method_class
from training.models import build_model


def time_method(method_name: str, backbone: str, crop: int, batch: int, precision: str, iters: int,
                warmup: int, device: torch.device, num_classes: int = 19) -> float:
    # params.yaml's train section with every STPG branch on from the first iteration
    stpg = dict(memory_start_epoch=0, contrast_start_epoch=0, proximity_start_epoch=0, memory_conf_thresh=0.0)
    cfg = params.section("train", method=method_name, batch_size=batch, stpg=stpg)
    data = params.section("data")
    context = MethodContext(num_classes, "cityscapes", batch, 186, 100, data.mean, data.std)
    method = method_class(method_name)(cfg, context, lambda: build_model(backbone, num_classes)).to(device)
    dtype = resolve_precision(precision, device)
    if dtype is not None or device.type == "cuda":
        method.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(method.param_groups(cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    method.train()

    def tensor(*shape):
        return torch.randn(*shape, device=device).contiguous(memory_format=torch.channels_last)

    batch_dict = {"image": tensor(batch, 3, crop, crop),
                  "label": torch.randint(0, num_classes, (batch, crop, crop), device=device),
                  "unlabeled": tensor(batch, 3, crop, crop), "mix": tensor(batch, 3, crop, crop),
                  "mask": (torch.rand(batch, crop, crop, device=device) > 0.5).to(torch.uint8)}
    if method.needs_image_classes:  # LPL: class-presence rows of both halves, masks on half of the second
        batch_dict.update(image_classes=torch.rand(batch, num_classes, device=device) > 0.5,
                          unlabeled_classes=torch.rand(batch, num_classes, device=device) > 0.5,
                          unlabeled_label=torch.randint(0, num_classes, (batch, crop, crop), device=device),
                          unlabeled_has_label=torch.arange(batch, device=device) < batch // 2)
    seconds = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            losses = method(batch_dict, i, 0)
        losses["loss"].backward()
        optimizer.step()
        method.update_teachers(i)
        float(losses["loss"].detach())  # one sync per iteration, as the engine's logging would
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return sorted(seconds)[len(seconds) // 2]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["supervised", "mean_teacher", "stpg", "cpcl", "css", "lpl"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--backbone", default="resnet50_v1c")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    print(f"{args.backbone}, {args.crop}x{args.crop}, batch {args.batch}, {device}, "
          f"{torch.get_num_threads()} threads (median s/iteration)")
    for method in args.methods:
        for precision in args.precisions:
            s = time_method(method, args.backbone, args.crop, args.batch, precision, args.iters, args.warmup, device)
            print(f"{method:>13} {precision:>5}: {s:.3f} s/it")


if __name__ == "__main__":
    main()
