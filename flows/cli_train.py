"""``scan-edge train-supernet``: train the weight-sharing supernet (§4, Alg. 1).

    scan-edge train-supernet [--profile smoke] [--resume | --overwrite] [--params params.yaml]
                             [--data data/dataset] [--out data/supernet]

Reads params.yaml's ``supernet:`` section (of the chosen profile) and the dataset folder
the ``dataset`` stage wrote (``<data>/manifest.parquet``; any ImageNet-layout or
class-folder tree works too), and writes ``<out>/supernet.pt``, ``<out>/train_log.parquet``
and, after every epoch, ``<out>/checkpoint.pt`` (see ``nas_core.train``).

On several GPUs or machines, start the same command under torchrun, e.g.

    torchrun --nproc_per_node 8 --no-python scan-edge train-supernet --profile imagenet

(``supernet.batch_size`` is the total over all processes). The training itself is the
supernet stage's (``tasks.stages.run_supernet``: config from ``supernet:``, the machine's
CPU lock held shared by each process); this command only turns its flags into params and paths.
"""
from __future__ import annotations

import sys
from pathlib import Path

from nas_core.layout import DATA

# The CLI boundary: each command imports the libraries it runs inside its function, so that
# `scan-edge --help` and the other commands do not load torch.

DEFAULT_DATA, DEFAULT_OUT = str(DATA.dataset), str(DATA.supernet_dir)


def cmd_train_supernet(args) -> int:
    from nas_core.params import load_params
    from tasks.stages import run_supernet

    params = load_params(args.params, args.profile)
    if args.threads:
        params = {**params, "supernet": {**(params.get("supernet") or {}), "threads": args.threads}}
    manifest = Path(args.data) / "manifest.parquet"
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"{args.data}: no dataset folder (run the dataset stage first, or pass --data "
                                "a folder with manifest.parquet or an ImageNet / class-folder layout)")
    if not manifest.exists():
        print(f"note: {manifest} not found; building a manifest from the folder layout", file=sys.stderr)
    try:
        path = run_supernet(params, args.data, args.out, resume=args.resume, overwrite=args.overwrite,
                            device=args.device, progress=not args.no_progress)
    except FileExistsError as err:
        raise ValueError(str(err).replace("pass resume", "pass --resume").replace("overwrite to", "--overwrite to"))
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue from the last completed epoch with `scan-edge train-supernet "
              f"--resume --out {args.out}`", file=sys.stderr)
        return 130
    print(f"wrote {path} and {Path(args.out) / 'train_log.parquet'}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-supernet", help="train the weight-sharing supernet (sandwich rule)",
        description="Train the supernet with the sandwich rule (smallest + largest + 2 random subnets per step). "
                    "Writes supernet.pt, train_log.parquet and a checkpoint after every epoch.")
    p.add_argument("--profile", help="params profile (default: params.yaml's `profile`, i.e. smoke)")
    p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"dataset folder (default {DEFAULT_DATA})")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue from <out>/checkpoint.pt (bit-identical to an uninterrupted run)")
    mode.add_argument("--overwrite", action="store_true", help="discard an existing run in <out>")
    p.add_argument("--threads", type=int, help="torch CPU threads per process (default: supernet.threads; "
                                               "1 is much faster on a busy shared machine)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_supernet)
