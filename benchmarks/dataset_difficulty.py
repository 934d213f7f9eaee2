"""How hard is the generated classification dataset? Three models, the same budget each.

    python benchmarks/dataset_difficulty.py --out difficulty.json [--epochs 3] [--data DIR]

Renders the default synthetic dataset (``nas_core.data.synthetic``, 10 classes, 500 train
/ 100 val images per class, 64x64; into a temporary folder unless ``--data`` names one,
which is reused when it already holds the same dataset), decodes train and val once
through the project's timm eval loader, then trains from scratch, for the same number of
epochs each (AdamW, warm-up + cosine, flip + shift augmentation),

* ``linear``: a linear classifier on raw pixels,
* ``tiny_cnn``: two strided 3x3 conv layers (8, 16 channels) + global pooling,
* ``resnet10t``: timm's ``resnet10t`` at 64x64 (no pretrained weights offline),

and reports val accuracy. The dataset is doing its job when linear << resnet10t,
tiny_cnn < resnet10t and the CNNs clearly beat chance (1 / num_classes).

Output JSON: ``{"dataset": generator params, "chance": float, "epochs_per_model": float,
"threads": int, "generation_seconds": float, "created": str, "models": {name: {"val_acc",
"train_acc" (on every 4th training image), "params", "epochs", "steps", "train_seconds"}}}``.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas_core.data.folders import build_loader, class_names  # noqa: E402
from nas_core.data.synthetic import DEFAULT_CLASSES, classification_params, generate_classification  # noqa: E402
from nas_core.io import utc_now, write_json  # noqa: E402


def load_split(manifest, root: Path, split: str, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole split as tensors (eval transform), so the budget is spent on training only."""
    loader = build_loader(manifest, root, split, resolution, batch_size=256, train=False)
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def linear_model(num_classes: int, resolution: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * resolution * resolution, num_classes))


def tiny_cnn(num_classes: int) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 8), *block(8, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, num_classes))


def big_cnn(num_classes: int) -> nn.Module:
    import timm

    return timm.create_model("resnet10t", pretrained=False, num_classes=num_classes)


def augment(x: torch.Tensor) -> torch.Tensor:
    """Cheap tensor-space augmentation (flip + 4 px shift) so the loop is not input bound."""
    flip = torch.rand(x.shape[0]) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    dx, dy = (int(v) for v in torch.randint(-4, 5, (2,)))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def train_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: float, lr: float,
              batch_size: int = 128, seed: int = 0) -> dict:
    """AdamW, linear warm-up then cosine decay, for ``epochs`` passes over ``(x, y)``.

    The budget is counted in epochs, not seconds: the machine is shared, and a
    wall-clock budget would make the figures depend on whatever else is running.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = len(x) // batch_size
    total = max(1, round(epochs * steps_per_epoch))
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / total)))
    start, step = time.perf_counter(), 0
    model.train()
    while step < total:
        order = torch.randperm(len(x), generator=generator)
        for i in range(steps_per_epoch):
            if step == total:
                break
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(augment(x[idx])), y[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
    return {"epochs": round(total / steps_per_epoch, 2), "steps": total,
            "train_seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--data", help="dataset folder (generated there if absent; default: a temp folder)")
    parser.add_argument("--epochs", type=float, default=3.0, help="training budget per model (passes over train)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=DEFAULT_CLASSES)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--models", default="linear,tiny_cnn,resnet10t")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    gen_kwargs = dict(seed=args.seed, num_classes=args.num_classes, train_per_class=args.train_per_class,
                      val_per_class=args.val_per_class, test_per_class=0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else Path(tmp) / "synthetic"
        t0 = time.perf_counter()
        manifest = generate_classification(root, **gen_kwargs)
        gen_seconds = time.perf_counter() - t0
        resolution = 64
        x_train, y_train = load_split(manifest, root, "train", resolution)
        x_val, y_val = load_split(manifest, root, "val", resolution)
    num_classes = len(class_names(manifest))
    print(f"dataset: {len(x_train)} train / {len(x_val)} val images, {num_classes} classes "
          f"(generated or loaded in {gen_seconds:.1f} s); {args.epochs:g} epochs per model")

    builders = {
        "linear": (lambda: linear_model(num_classes, resolution), 1e-3),
        "tiny_cnn": (lambda: tiny_cnn(num_classes), 1e-2),
        "resnet10t": (lambda: big_cnn(num_classes), 3e-3),
    }
    results = {}
    for name in args.models.split(","):
        build, lr = builders[name]
        torch.manual_seed(args.seed)
        model = build()
        stats = train_for(model, x_train, y_train, args.epochs, lr, seed=args.seed)
        stats.update(val_acc=round(accuracy(model, x_val, y_val), 4),
                     train_acc=round(accuracy(model, x_train[::4], y_train[::4]), 4),
                     params=sum(p.numel() for p in model.parameters()))
        results[name] = stats
        print(f"{name:>10}: val acc {stats['val_acc']:.3f}  (train {stats['train_acc']:.3f}, "
              f"{stats['epochs']} epochs in {stats['train_seconds']} s, {stats['params']:,} params)")

    report = {"dataset": classification_params(**gen_kwargs), "chance": 1 / num_classes,
              "epochs_per_model": args.epochs, "threads": torch.get_num_threads(),
              "generation_seconds": round(gen_seconds, 1), "models": results, "created": utc_now()}
    write_json(args.out, report)
    print(f"chance {1 / num_classes:.3f}; wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
