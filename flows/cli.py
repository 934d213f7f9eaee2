"""The ``scan-edge`` command: one subcommand per stage, plus ``reproduce``.

A door, not a room: every subcommand parses its arguments and calls ``nas_core`` (for
pure inspection commands such as ``arch``) or a flow. Heavy imports (torch, prefect) happen
inside the handlers, so ``scan-edge --help`` is instant.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# The CLI boundary: each command imports the libraries it runs inside its function, so that
# `scan-edge --help` and every other command start without loading torch.

EPILOG = """Architectures are named presets (see `scan-edge arch list`) or JSON files written
by `scan-edge arch sample --out FILE` / the search stage."""


# --------------------------------------------------------------------------- arch
def arch_argument(name_or_file: str):
    """The architecture a command-line argument names: a preset name or a path to an
    architecture JSON file (Table 2's, or the extended space's when it uses ESHA); exits with a
    message when it names neither. (The library's ``nas_core.finetune.resolve_arch`` also
    accepts fine-tune outputs and returns their record.)"""
    from nas_core.search_space import SearchSpace

    path = Path(name_or_file)
    if path.suffix == ".json" or path.exists():
        if not path.exists():
            raise SystemExit(f"error: {path}: no such architecture file")
        data = json.loads(path.read_text())
        data = data.get("arch", data)  # search results wrap the arch
        return space_holding(data).from_dict(data)
    try:
        return SearchSpace().preset(name_or_file)
    except KeyError as err:
        raise SystemExit(f"error: {err.args[0]} (or give a path to an architecture .json)") from None


def space_holding(arch):
    """Table 2's space, or the extended one (``search_space.attention: [mhsa, esha]``) for an
    architecture (an ``ArchConfig`` or its dict) with an ESHA block: the space a command must
    encode it in."""
    from nas_core.search_space import ATTENTION_TYPES, SearchSpace, SpaceSpec

    data = arch if isinstance(arch, dict) else arch.to_dict()
    esha = any(((b.get("mhsa") or {}).get("type") == "esha") for s in data.get("stages", []) for b in s.get("blocks", []))
    return SearchSpace(SpaceSpec(attention_types=ATTENTION_TYPES)) if esha else SearchSpace()


def cmd_arch_list(args) -> int:
    from nas_core.block_catalog import BlockCatalog
    from nas_core.microvit import MICROVIT_CONFIGS
    from nas_core.search_space import SearchSpace

    space = SearchSpace()
    catalog = BlockCatalog(space, args.resolution)
    print(f"{'preset':<22} {'id':<13} {'params (M)':>10} {'MACs (M)':>9}  depths")
    for name in space.preset_names():
        arch = space.preset(name)
        g = space.encode(arch)[None]
        print(f"{name:<22} {arch.arch_id:<13} {catalog.count_params(g)[0] / 1e6:>10.2f} "
              f"{catalog.count_macs(g)[0] / 1e6:>9.1f}  {arch.depths}")
    print(f"outside the search space (scan-edge arch show NAME for params/MACs): {', '.join(MICROVIT_CONFIGS)}")
    return 0


def cmd_arch_show(args) -> int:
    from nas_core.block_catalog import BlockCatalog
    from nas_core.microvit import is_microvit

    if is_microvit(args.arch):
        return _show_microvit(args)
    arch = arch_argument(args.arch)
    space = space_holding(arch)
    g = space.encode(arch)[None]
    catalog = BlockCatalog(space, args.resolution)
    params = int(catalog.count_params(g, args.num_classes)[0])
    macs = int(catalog.count_macs(g, args.num_classes)[0])
    if args.json:
        print(json.dumps({"arch_id": arch.arch_id, "params": params, "macs": macs, "resolution": args.resolution,
                          "arch": arch.to_dict()}, indent=2))
        return 0
    print(arch.table())
    print()
    print(f"id       {arch.arch_id}")
    print(f"compact  {arch.compact()}")
    print(f"params   {params:,} ({params / 1e6:.2f} M, {args.num_classes}-class head)")
    print(f"MACs     {macs:,} ({macs / 1e6:.1f} M at {args.resolution}x{args.resolution})")
    return 0


def _show_microvit(args) -> int:
    """A MicroViT (outside the search space): its configuration, exact params/MACs, and the
    paper's figures beside them."""
    import dataclasses

    from nas_core.complexity import module_complexity
    from nas_core.microvit import MICROVIT_CONFIGS, create_microvit

    cfg = MICROVIT_CONFIGS[args.arch]
    counts = module_complexity(create_microvit(args.arch, num_classes=args.num_classes), args.resolution)
    published = cfg.published
    if args.json:
        print(json.dumps({"model": args.arch, **counts, "resolution": args.resolution,
                          "config": dataclasses.asdict(cfg)}, indent=2))
        return 0
    print(f"{args.arch}  (MicroViT; not a member of the search space)")
    for i, (width, depth) in enumerate(zip(cfg.widths, cfg.depths), start=1):
        mixer = (f"ESHA qk={cfg.qk_dim} v={int(width * cfg.value_ratio)} groups={cfg.groups} sr={cfg.attn_sr}"
                 if i == len(cfg.widths) else "DWConv 3x3")
        print(f"stage {i}  1/{16 * 2 ** (i - 1):<3} width {width:<4} blocks {depth}  {mixer} + FFN x{cfg.ffn_expansion}")
    print(f"params   {counts['params']:,} ({counts['params'] / 1e6:.2f} M, {args.num_classes}-class head)")
    print(f"MACs     {counts['macs']:,} ({counts['macs'] / 1e6:.1f} M at {args.resolution}x{args.resolution})")
    if published is not None:
        print(f"paper    {published.params / 1e6:.1f} M params ({counts['params'] / published.params - 1:+.1%}), "
              f"{published.macs / 1e9:.3f} G MACs at 224 ({counts['macs'] / published.macs - 1:+.1%}), "
              f"top-1 {published.top1} (MicroViT Table II)")
    return 0


def cmd_arch_sample(args) -> int:
    from nas_core.io import write_json
    from nas_core.search_space import SearchSpace

    arch = SearchSpace().sample(args.seed)
    if args.out:
        write_json(args.out, arch.to_dict())
        print(f"wrote {args.out} ({arch.arch_id})")
    else:
        print(arch.to_json(indent=2))
    return 0


def cmd_arch_export(args) -> int:
    import tempfile

    from nas_core.latency.export import export_onnx, export_openvino
    from nas_core.microvit import create_microvit, is_microvit
    from nas_core.subnet import SubnetModel

    if is_microvit(args.arch):
        model, label = create_microvit(args.arch, num_classes=args.num_classes), args.arch
    else:
        arch = arch_argument(args.arch)
        model, label = SubnetModel(arch, num_classes=args.num_classes, resolution=args.resolution), arch.arch_id
    if args.checkpoint:
        from nas_core.io import torch_load

        state = torch_load(args.checkpoint)
        model.load_state_dict(state.get("model", state))
    shape = (1, 3, args.resolution, args.resolution)
    out = Path(args.out)
    if args.format == "onnx":
        export_onnx(model, shape, out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = export_onnx(model, shape, Path(tmp) / "model.onnx")
            out = export_openvino(onnx_path, out if out.suffix == ".xml" else out.with_suffix(".xml"))
    print(f"exported {label} ({args.format}, {args.resolution}x{args.resolution}) to {out}")
    return 0


def _add_arch(sub) -> None:
    arch = sub.add_parser("arch", help="inspect, sample and export architectures",
                          description="Inspect, sample and export architectures of the search space.")
    arch_sub = arch.add_subparsers(dest="arch_cmd", required=True, metavar="{list,show,sample,export}")
    p = arch_sub.add_parser("list", help="the named presets with params and MACs")
    p.add_argument("--resolution", type=int, default=224)
    p.set_defaults(func=cmd_arch_list)
    p = arch_sub.add_parser("show", help="blocks, params and MACs of an architecture", epilog=EPILOG)
    p.add_argument("arch", help="preset name, architecture JSON file, or microvit_s1/s2/s3")
    p.add_argument("--resolution", type=int, default=224, help="input resolution for MACs (default 224)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier size for params (default 1000)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_arch_show)
    p = arch_sub.add_parser("sample", help="a uniformly random architecture")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", help="write the JSON here instead of printing it")
    p.set_defaults(func=cmd_arch_sample)
    p = arch_sub.add_parser("export", help="export an architecture to ONNX or OpenVINO IR", epilog=EPILOG)
    p.add_argument("arch", help="preset name or architecture JSON file")
    p.add_argument("--format", choices=("onnx", "openvino"), default="onnx")
    p.add_argument("--out", required=True, help="output path (.onnx, or .xml for OpenVINO)")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--checkpoint", help="state dict of a SubnetModel of this architecture (random weights if omitted)")
    p.set_defaults(func=cmd_arch_export)


# --------------------------------------------------------------------------- main
def _registrars() -> list:
    """``_add_arch`` plus ``register(subparsers)`` of every ``flows/cli_*.py`` module, so each
    stage keeps its subcommand beside its flow."""
    import importlib
    import pkgutil

    import flows

    found = [_add_arch]
    for info in sorted(pkgutil.iter_modules(flows.__path__), key=lambda m: m.name):
        if info.name.startswith("cli_"):
            found.append(importlib.import_module(f"flows.{info.name}").register)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scan-edge",
        description="SCAN-Edge: find MobileNet-speed hybrid networks for your edge devices "
                    "(supernet, accuracy predictor, device latency tables, evolutionary search).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for register in _registrars():
        register(sub)
    return parser


# Prefect's in-process server must come up within this many seconds; its default (20 s) is
# too short on a 2-core machine busy with other jobs ("Timed out while attempting to connect
# to ephemeral Prefect API server").
EPHEMERAL_STARTUP_TIMEOUT_S = "120"


def main(argv: list[str] | None = None) -> int:
    from nas_core.latency.location import MeasurementsPending

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MeasurementsPending as pending:  # a board reached by hand: say what to run there, no traceback
        print(f"waiting for the board: {pending}", file=sys.stderr)
        return 3
    except (ValueError, KeyError, FileNotFoundError) as err:
        # Library errors are written to be read by the user: show them without a traceback.
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
