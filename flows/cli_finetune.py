"""``scan-edge finetune``, ``finetune-table``, ``transfer`` and ``detect``: the stages after the search.

    scan-edge finetune data/search/ort_cpu_fp32@7.6ms.arch.json     # ours: inherit + fine-tune
    scan-edge finetune mobilenetv2_100                              # baseline, same recipe and data
    scan-edge finetune efficientformerv2_s0 --init scratch          # S0 from scratch (or inherited: default)
    scan-edge finetune-table                                        # ours vs the baselines (Table 3, measured)
    scan-edge transfer ours_ort_cpu_fp32@7.6ms --data ../shared/datasets/sign-digits
    scan-edge detect ours_ort_cpu_fp32@7.6ms                        # SSDLite on the generated shapes
    scan-edge detect mobilenetv2_100 --data ../shared/datasets/raccoon

MODEL (transfer, detect): a fine-tune output folder or its name under data/finetune, a preset
or architecture JSON (random weights, or inherited with --supernet), or ``mobilenetv2_100``.
Knobs come from params.yaml (sections ``finetune``, ``transfer``, ``detection``; ``--profile``
picks a profile). Every command resumes an interrupted run from its checkpoint.

``finetune``, ``transfer`` and ``detect`` do the work of their stages on one model
(``tasks.stages.run_finetune``, ``run_transfer``, ``run_detection``: configs from params,
the machine's CPU lock shared while training, exclusive while measuring latency); the
flags only override params and name the files.
"""
from __future__ import annotations

from pathlib import Path

from nas_core.layout import DATA

# The CLI boundary: each command imports the libraries it runs inside its function, so that
# `scan-edge --help` and the other commands do not load torch.

# Defaults are where the pipeline's stages keep the same things (nas_core.layout).
DEFAULT_DETECTION_DATA = DATA.detection_dataset


def _params_with_epochs(args, stage: str) -> dict:
    """The params file, with ``--epochs`` overriding ``<stage>.epochs``."""
    from nas_core.params import load_params

    params = load_params(args.params, args.profile)
    if args.epochs is not None:
        params = {**params, stage: {**(params.get(stage) or {}), "epochs": args.epochs}}
    return params


def cmd_finetune(args) -> int:
    from tasks.stages import run_finetune

    metrics = run_finetune(_params_with_epochs(args, "finetune"), args.arch, data=args.data, supernet=args.supernet,
                           out_root=args.out, name=args.name, init=args.init, predicted_accuracy=args.predicted,
                           overwrite=args.overwrite)
    if metrics:
        _print_finetune(metrics, Path(args.out))
    return 0


def _print_finetune(m: dict, out: Path) -> None:
    inherited = m["inherited"]["top1"] if m["inherited"] else None
    print(f"{m['name']} ({m['init']}): predicted {_pct(m['predicted_accuracy'])}, inherited {_pct(inherited)}, "
          f"fine-tuned {_pct(m['finetuned']['top1'])} on {m['finetuned']['split']}; "
          f"{m['params'] / 1e6:.2f} M params, {m['macs'] / 1e6:.0f} M MACs at {m['deploy_resolution']}")
    for device, lat in m["latency_ms"].items():
        text = f"{lat['median_ms']:.2f} ms ({lat['precision_actual']})" if "median_ms" in lat else f"skipped: {lat['skipped']}"
        print(f"  {device}: {text}")
    print(f"wrote {out / m['name']}/metrics.json, model.pt, model.onnx")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def cmd_finetune_table(args) -> int:
    from nas_core.finetune import comparison_table, load_metrics, remeasure_latency
    from tasks import stage_lock

    metrics = load_metrics(args.out)
    if not metrics:
        raise FileNotFoundError(f"{args.out}: no */metrics.json yet; run `scan-edge finetune` first")
    latency = None
    if args.remeasure:
        devices = [args.device] if args.device else sorted({d for m in metrics for d, v in m["latency_ms"].items()
                                                           if "median_ms" in v})
        with stage_lock("exclusive"):  # latency is measured with nothing else running
            latency = remeasure_latency(metrics, devices, args.rounds)
    frame = comparison_table(metrics, args.device, latency)
    print(frame.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else frame.to_string(index=False))
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def cmd_transfer(args) -> int:
    from tasks.stages import run_transfer

    record = run_transfer(_params_with_epochs(args, "transfer"), args.model, args.data, out_root=args.out, name=args.name,
                          supernet=args.supernet, overwrite=args.overwrite)
    if record:
        print(f"{record['name']}: top-1 {_pct(record['top1'])} on {record['dataset']['eval_split']} "
              f"({record['images']} images, {record['dataset']['classes']} classes) after {record['epochs']} epochs; "
              f"wrote {Path(args.out) / (record['name'] + '.json')}")
    return 0


def cmd_detect(args) -> int:
    from tasks.stages import detection_dataset, run_detection

    params = _params_with_epochs(args, "detection")
    data = detection_dataset(params, args.data, DEFAULT_DETECTION_DATA)
    metrics = run_detection(params, args.model, data, out_root=args.out, name=args.name, supernet=args.supernet,
                            overwrite=args.overwrite)
    if metrics:
        coco = metrics["coco"]
        print(f"{metrics['name']}: mAP {100 * coco['mAP']:.1f}, mAP@0.5 {100 * coco['mAP50']:.1f} "
              f"({metrics['dataset']['test_images']} test images, {metrics['resolution']}x{metrics['resolution']}); "
              f"{metrics['params'] / 1e6:.2f} M params")
        for device, lat in metrics["latency_ms"].items():
            text = f"{lat['median_ms']:.2f} ms" if "median_ms" in lat else f"skipped: {lat['skipped']}"
            print(f"  {device} (network without NMS): {text}")
        print(f"wrote {Path(args.out) / metrics['name']}/metrics.json")
    return 0


def _add_common(p, out: str) -> None:
    p.add_argument("--name", help="output name (default: the model's name)")
    p.add_argument("--out", default=out, help=f"output folder (default {out})")
    p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    p.add_argument("--profile", help="params profile (default: the file's `profile`)")
    p.add_argument("--epochs", type=int, help="override the params' epochs (quick looks)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing checkpoint instead of resuming it")


def register(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a searched subnet (or train a baseline), export and time it",
                       description="Inherit a subnet's weights from the supernet, measure its accuracy (BN "
                                   "recalibrated), fine-tune it, export ONNX / OpenVINO / TensorRT and measure its "
                                   "latency on each device (paper §6.2, Suppl. S6). Baselines (mobilenetv2_100, "
                                   "presets with --init scratch) are trained with the same recipe and data.")
    p.add_argument("arch", metavar="ARCH", help="a search's .arch.json, a preset name, or mobilenetv2_100")
    p.add_argument("--supernet", default=str(DATA.supernet), help=f"supernet to inherit from (default {DATA.supernet})")
    p.add_argument("--init", choices=("supernet", "scratch"),
                   help="inherit from the supernet (default for the search space) or train from scratch")
    p.add_argument("--data", default=str(DATA.dataset), help=f"classification dataset (default {DATA.dataset})")
    p.add_argument("--predicted", type=float, help="predicted accuracy to record (default: the .arch.json's)")
    _add_common(p, str(DATA.finetune_root))
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("finetune-table", help="ours vs the baselines: accuracy, params, MACs, measured latency",
                       description=f"One row per {DATA.finetune_metrics('*')}, latency also relative to "
                                   "mobilenetv2_100 (Table 3, measured here).")
    p.add_argument("--out", default=str(DATA.finetune_root),
                   help=f"fine-tune output folder (default {DATA.finetune_root})")
    p.add_argument("--device", help="only this device's latency")
    p.add_argument("--remeasure", action="store_true",
                   help="time every model.onnx again, interleaved (comparable figures on a shared machine)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved passes with --remeasure (default 3)")
    p.set_defaults(func=cmd_finetune_table)

    p = sub.add_parser("transfer", help="transfer a trained model to another classification dataset (Table 5)",
                       description="New classifier head, all layers trained (paper §6.4).")
    p.add_argument("model", metavar="MODEL", help="fine-tune output (folder or name), preset, .json or mobilenetv2_100")
    p.add_argument("--data", required=True, help="image-folder dataset (ImageNet layout or one folder per class)")
    p.add_argument("--supernet", help="inherit a preset / .json model's weights from this supernet")
    _add_common(p, str(DATA.transfer_runs))
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("detect", help="SSDLite with MODEL as backbone: train, COCO mAP, export, latency (Table 6)",
                       description="Paper §7. Data: a COCO folder, standard (annotations/instances_train2017.json "
                                   "+ train2017/, annotations/instances_val2017.json + val2017/, evaluated on val) or "
                                   "flat (images/, instances_train.json, instances_test.json); default: the generated "
                                   "shapes dataset "
                                   f"({DEFAULT_DETECTION_DATA}, made on first use).")
    p.add_argument("model", metavar="MODEL", help="fine-tune output (folder or name), preset, .json or mobilenetv2_100")
    p.add_argument("--data", help="COCO detection folder (standard COCO2017 layout or flat)")
    p.add_argument("--supernet", help="inherit a preset / .json backbone's weights from this supernet")
    _add_common(p, str(DATA.detection_runs))
    p.set_defaults(func=cmd_detect)
