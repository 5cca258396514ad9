"""How much bf16 autocast changes what a trained benchmark row predicts, compared with fp32:

    python -m training.precision_probe --arm stpg --seed 1   # -> metrics/ssl_precision/stpg-1.json

It loads a finished row (`ssl_run@<arm>-<seed>`) from its checkpoint and measures, on the same
images in both precisions, the evaluated network's val mIoU and, for each teacher, the share of
unlabeled pixels whose label (argmax) differs, overall and where the fp32 confidence reaches
`--confident`. That says whether bf16 inference flips a trained model's pseudo-labels; whether
training in bf16 costs accuracy is answered by rows trained with `train.precision: fp32`
(docs/ssl_benchmark.md, Precision).
"""
from __future__ import annotations

import torch

from runtime import files
from training import cli, params
from training.data.loaders import image_tensor
from training.device import precision_name
from training.engine import CheckpointError
from training.evaluate import evaluate_model
from training.ssl_benchmark import build_row, row_parser

OUT_DIR = params.SSL_ROWS_DIR.parent / "ssl_precision"


@torch.no_grad()
def label_changes(network, images, device, dtype, confident: float, *, mean, std) -> dict:
    """Share of pixels whose argmax under `dtype` autocast differs from fp32, overall and among the
    pixels whose fp32 softmax confidence is at least `confident` (and that share of pixels)."""
    was_training = network.training
    network.eval()
    counts = torch.zeros(4, dtype=torch.int64)  # pixels, differing, confident, confident and differing
    for path in images:
        image = image_tensor(path, mean, std)[None].to(device)
        exact = torch.softmax(network(image).float(), dim=1)
        with torch.autocast(device.type, dtype=dtype):
            low = network(image).float().argmax(dim=1)
        confidence, label = exact.max(dim=1)
        differ, sure = label != low, confidence >= confident
        counts += torch.stack([torch.tensor(label.numel()), differ.sum(), sure.sum(), (differ & sure).sum()]).cpu()
    network.train(was_training)
    pixels, differing, sure, sure_differing = counts.tolist()
    return {"pixels": pixels, "differ": differing / pixels, "confident": sure / pixels,
            "differ_confident": sure_differing / sure if sure else None}


def probe(arm: str, seed: int, params_path: str, images: int, confident: float) -> dict:
    row = build_row(arm, seed, params_path)
    trainer, ssl = row.trainer, row.ssl
    done = trainer.load_checkpoint()
    if done != trainer.cfg.iters:
        raise CheckpointError(f"row {arm}-{seed} has trained {done} of {trainer.cfg.iters} iterations; "
                              f"finish it first with `dvc repro ssl_run@{arm}-{seed}`")
    dtype = torch.bfloat16
    norm = dict(mean=trainer.mean, std=trainer.std)
    size = (ssl.data.height, ssl.data.width)
    evaluated = trainer.method.evaluated_network()
    miou = {name: round(evaluate_model(evaluated, row.manifest["val"], trainer.info.num_classes, ssl.eval_mode, size,
                                       trainer.device, autocast, **norm)["miou"], 6)
            for name, autocast in (("fp32", None), ("bf16", dtype))}
    unlabeled = [image for image, _ in trainer.unlabeled[:images]]
    teachers = [{"teacher": index, **label_changes(teacher, unlabeled, trainer.device, dtype, confident, **norm)}
                for index, teacher in enumerate(trainer.method.teachers())]
    result = {"arm": arm, "seed": seed, "iteration": done, "trained_in": precision_name(trainer.autocast_dtype),
              "val_miou": miou, "unlabeled_images": len(unlabeled), "confident_threshold": confident,
              "teachers": teachers}
    files.write_json(OUT_DIR / f"{arm}-{seed}.json", result)
    print("; ".join([f"{arm}-{seed}: val mIoU fp32 {100 * miou['fp32']:.3f}, bf16 {100 * miou['bf16']:.3f}"]
                    + [f"teacher {t['teacher']}: {100 * t['differ']:.2f} % of labels differ" for t in teachers]))
    return result


def main(argv=None) -> None:
    parser = row_parser(__doc__)
    parser.add_argument("--images", type=int, default=64, help="unlabeled images the teachers label")
    parser.add_argument("--confident", type=float, default=0.95, help="fp32 confidence of a 'confident' pixel")
    args = parser.parse_args(argv)
    probe(args.arm, args.seed, args.params, args.images, args.confident)


if __name__ == "__main__":
    cli.run(main, CheckpointError)
