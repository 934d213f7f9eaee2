"""Throughput of the sandwich step, against static networks doing the same work.

    python benchmarks/sandwich_throughput.py --out sandwich.json [--resolution 64 --batch-size 32
                                             --steps 4 --repeats 3 --threads 1]

For each of ``--steps`` sandwich steps (the subnets ``nas_core.train.sandwich_archs`` draws
for steps 0, 1, ...), times, interleaved, ``--repeats`` times each:

* ``sandwich``: the trainer's real step on the dynamic supernet: largest + smallest + 2
  random subnets forward/backward with accumulated gradients, then one AdamW step;
* ``static``: the same four subnets *extracted* as plain ``SubnetModel``s, each doing its own
  forward/backward and AdamW step (what the sandwich step would cost with no weight-sharing
  machinery at all);
* ``largest``: one training step of the extracted largest subnet alone (plain training of
  the biggest network at the same batch size).

Every measured model gets one untimed warm-up step first (oneDNN creates its kernels per
shape on first use). Reported figures are medians: per step over repeats, then over steps.
``dynamic_overhead`` = sandwich time / static time (the dynamic supernet's cost over the
four equivalent static steps; aim <= 1.3). Timings on a shared machine are indicative:
compare the ratios, which are measured side by side.

JSON: ``{"config": {...}, "machine": {...}, "device": str, "steps": [{"step", "archs":
{role: arch_id}, "sandwich_s", "static_s": {role: s}, "static_total_s", "largest_s",
"dynamic_overhead"}], "summary": {"sandwich_s", "static_total_s", "largest_s",
"sandwich_images_per_s", "largest_images_per_s", "sandwich_over_largest", "dynamic_overhead",
"dynamic_overhead_range"}, "created", "code_version"}``.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas_core.io import code_version, machine_fingerprint, utc_now, write_json  # noqa: E402
from nas_core.train import SupernetTrainConfig, SupernetTrainer, sandwich_archs  # noqa: E402


class StaticStep:
    """One extracted subnet with its own optimizer: a plain training step."""

    def __init__(self, model: torch.nn.Module, config: SupernetTrainConfig, criterion):
        from timm.optim import create_optimizer_v2

        self.model, self.criterion = model.train(), criterion
        self.optimizer = create_optimizer_v2(model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.criterion(self.model(x), y).backward()
        self.optimizer.step()


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_step(trainer: SupernetTrainer, step: int, x, y, repeats: int) -> dict:
    device = trainer.ctx.device
    archs = sandwich_archs(trainer.space, trainer.config.seed, step, trainer.config.num_random_subnets)
    statics = {role: StaticStep(trainer.supernet.extract(arch).to(device), trainer.config, trainer.criterion)
               for role, arch in archs}

    def sandwich():
        trainer.sandwich_backward(x, y, step)
        trainer.optimizer_step()

    sandwich()  # warm-ups
    for static in statics.values():
        static(x, y)
    sandwich_s, static_s, largest_s = [], {role: [] for role in statics}, []
    for _ in range(repeats):
        trainer.supernet.train()
        sandwich_s.append(timed(sandwich, device))
        for role, static in statics.items():
            static_s[role].append(timed(lambda: static(x, y), device))
        largest_s.append(timed(lambda: statics["largest"](x, y), device))
    per_role = {role: statistics.median(v) for role, v in static_s.items()}
    totals = [sum(static_s[role][i] for role in statics) for i in range(repeats)]
    row = {"step": step, "archs": {role: arch.arch_id for role, arch in archs},
           "sandwich_s": statistics.median(sandwich_s), "static_s": per_role,
           "static_total_s": statistics.median(totals), "largest_s": statistics.median(largest_s)}
    row["dynamic_overhead"] = statistics.median(s / t for s, t in zip(sandwich_s, totals))
    return row


def summarize(rows: list[dict], batch: int) -> dict:
    med = {key: statistics.median(r[key] for r in rows) for key in ("sandwich_s", "static_total_s", "largest_s")}
    overheads = [r["dynamic_overhead"] for r in rows]
    return {**med, "sandwich_images_per_s": batch / med["sandwich_s"],
            "largest_images_per_s": batch / med["largest_s"],
            "sandwich_over_largest": med["sandwich_s"] / med["largest_s"],
            "dynamic_overhead": statistics.median(overheads),
            "dynamic_overhead_range": [min(overheads), max(overheads)]}


@contextlib.contextmanager
def exclusive_cpu(enabled: bool):
    """Timings are measurements: hold the machine's CPU lock exclusively, as latency does."""
    if not enabled:
        yield
        return
    from tasks import cpu_lock

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(cpu_lock("exclusive", timeout=0.5))
        except TimeoutError:
            print("waiting for the CPU lock (other pipeline work is running) ...", file=sys.stderr, flush=True)
            stack.enter_context(cpu_lock("exclusive"))
        yield


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="sandwich steps (subnet draws) to measure")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per step and model")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-lock", action="store_true", help="do not take the machine's CPU lock")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from torch.utils.data import TensorDataset

    from nas_core.train import DistContext

    config = SupernetTrainConfig(resolution=args.resolution, batch_size=args.batch_size, epochs=1, amp=False)
    x = torch.randn(args.batch_size, 3, args.resolution, args.resolution, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    data = TensorDataset(x.cpu(), y.cpu())
    with exclusive_cpu(not args.no_lock and device.type == "cpu"):
        trainer = SupernetTrainer(config, data, args.num_classes, "unused", ctx=DistContext(device=device),
                                  progress=False)
        rows = []
        for step in range(args.steps):
            rows.append(measure_step(trainer, step, x, y, args.repeats))
            r = rows[-1]
            print(f"step {step}: sandwich {r['sandwich_s']:.2f} s, 4 static {r['static_total_s']:.2f} s "
                  f"(x{r['dynamic_overhead']:.2f}), largest alone {r['largest_s']:.2f} s", flush=True)
    summary = summarize(rows, args.batch_size)
    result = {"config": vars(args), "machine": machine_fingerprint(), "device": str(device),
              "threads": torch.get_num_threads(), "steps": rows, "summary": summary,
              "created": utc_now(), "code_version": code_version()}
    write_json(args.out, result)
    print(f"sandwich step: {summary['sandwich_images_per_s']:.1f} images/s ({summary['sandwich_s']:.2f} s per "
          f"batch of {args.batch_size}); largest subnet alone: {summary['largest_images_per_s']:.1f} images/s "
          f"-> the sandwich step costs {summary['sandwich_over_largest']:.2f}x a step of the largest")
    print(f"dynamic supernet over the 4 equivalent static steps: x{summary['dynamic_overhead']:.2f} "
          f"(range {summary['dynamic_overhead_range'][0]:.2f}-{summary['dynamic_overhead_range'][1]:.2f}); "
          f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
