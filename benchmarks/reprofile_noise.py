"""How many LUT blocks a re-profile flags when nothing changed, and what a real runtime upgrade moves.

    python benchmarks/reprofile_noise.py venv --root /tmp/r20 --onnxruntime 1.32.0
    python benchmarks/reprofile_noise.py measure --root /tmp/r20 --label ort-1.31.1-a
    python benchmarks/reprofile_noise.py measure --root /tmp/r20 --label ort-1.31.1-b
    /tmp/r20/venv-ort-1.32.0/bin/python benchmarks/reprofile_noise.py measure --root /tmp/r20 --label ort-1.32.0
    python benchmarks/reprofile_noise.py compare --root /tmp/r20 \\
        --noise ort-1.31.1-a ort-1.31.1-b --change ort-1.31.1-b ort-1.32.0

``venv`` makes a scratch virtualenv that runs this project with another onnxruntime: its
own site-packages hold only that onnxruntime, and a ``.pth`` file adds the project's
virtualenv after it (``benchmarks/runtime_venv.py``), so ``import onnxruntime`` finds the
other version and everything else is the project's. That is the "compiler update" of
``scan-edge reprofile``, for real.

``measure`` re-times the whole LUT of ``--device`` (default ``ort_cpu_fp32``; 568 blocks +
4 heads, the smoke profile's timing) under ``--root`` exactly as ``scan-edge reprofile``
does (its ``runtime`` and ``lut`` stage functions, resume stamps forgotten so nothing is
resumed) and keeps a copy as ``<root>/runs/<label>.parquet``. Measuring holds the
machine's CPU lock exclusively (``tasks.cpu_lock``), so it waits for, and then excludes,
other pipeline work.

``compare`` applies the change report's rule (``nas_core.latency.lut_change``) to two
pairs of runs: ``--noise`` (the same runtime twice: what ``scan-edge reprofile --force``
reports with nothing changed; target: at most 5 % of blocks flagged) and ``--change``
(two runtime versions). It prints the figures and writes them to
``benchmarks/results/reprofile_noise.json`` and the version change's block report to
``benchmarks/results/reprofile_noise_change.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from benchmarks.runtime_venv import make_runtime_venv  # noqa: E402
from nas_core.io import machine_fingerprint, read_parquet, read_provenance, utc_now, write_json, write_text  # noqa: E402
from nas_core.latency.lut_change import (ChangeRule, compare_luts, estimate_session_floor,  # noqa: E402
                                         summary_markdown)

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
DEVICE = "ort_cpu_fp32"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("venv", help="make <root>/venv-ort-<version> with another onnxruntime")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--onnxruntime", required=True, help="the version, e.g. 1.32.0")
    p = sub.add_parser("measure", help="re-time the device's whole LUT under --root; keep it as runs/<label>")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--device", default=DEVICE)
    p.add_argument("--params", default=str(PROJECT_ROOT / "params.yaml"))
    p.add_argument("--profile", default="smoke")
    p = sub.add_parser("compare", help="flag moved blocks between runs (noise baseline, version change)")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--noise", nargs=2, metavar=("OLD", "NEW"), required=True)
    p.add_argument("--change", nargs=2, metavar=("OLD", "NEW"))
    p.add_argument("--out", type=Path, default=RESULTS / "reprofile_noise.json")
    p.add_argument("--params", default=str(PROJECT_ROOT / "params.yaml"), help="its reprofile: section is the rule")
    return parser.parse_args(argv)


def measure(root: Path, label: str, device: str, params_file: str, profile: str) -> Path:
    """Re-time the LUT as ``scan-edge reprofile`` does and keep a copy under ``runs/``."""
    from flows.reprofile import forget_resume_stamps
    from nas_core.params import load_params
    from tasks import stages

    params = load_params(params_file, profile)
    layout = stages.Layout(root)
    forget_resume_stamps(layout, device)
    stages.stage_runtime(params, device, root)
    stages.stage_lut(params, device, root)
    kept = root / "runs" / f"{label}.parquet"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(layout.lut_paths(device).lut, kept)
    print(f"{label}: {kept}")
    return kept


def _load(root: Path, label: str):
    path = root / "runs" / f"{label}.parquet"
    return read_parquet(path), read_provenance(path)


def rules_to_compare(configured: ChangeRule, fitted_floor: float) -> dict[str, tuple[ChangeRule | None, bool]]:
    """label -> (rule, with drift floors): the fixed 10 % threshold of the old report (None),
    the repeats alone, + the reference block's drift floor, the configured rule and the
    session floor fitted on the noise pair."""
    plain = ChangeRule(z=configured.z, min_change=configured.min_change)
    fitted = dataclasses.replace(plain, session_floor=round(fitted_floor, 3))
    return {"fixed 10 % threshold (the old report)": (None, False),
            "repeat dispersion only": (plain, False),
            "repeats + drift floor": (plain, True),
            f"configured: + session floor {configured.session_floor:.3f}": (configured, True),
            f"+ session floor fitted on the noise pair ({fitted.session_floor:.3f})": (fitted, True)}


def fraction_flagged(old, new, rule: ChangeRule | None, with_drift: bool, old_prov, new_prov) -> dict:
    """How many blocks a rule flags between two LUTs."""
    if rule is None:
        frame = compare_luts(old, new, ChangeRule(min_change=0.0)).frame
        count = int((frame["change"].abs() > 0.10).sum())
        return {"blocks_flagged": count, "fraction_flagged": round(count / len(frame), 4)}
    provenances = (old_prov, new_prov) if with_drift else ({}, {})
    summary = compare_luts(old, new, rule, *provenances).summary()
    return {k: summary[k] for k in ("blocks_flagged", "fraction_flagged")}


def compare(root: Path, noise: list[str], change: list[str] | None, out: Path, params_file: str) -> dict:
    """The configured rule (params ``reprofile:``) and its simpler variants on the noise pair
    and on the version change; the configured rule's full summaries."""
    from flows.reprofile import change_rule
    from nas_core.params import load_params

    configured = change_rule(load_params(params_file))
    noise_runs = {label: _load(root, label) for label in noise}
    (old, old_prov), (new, new_prov) = noise_runs[noise[0]], noise_runs[noise[1]]
    fitted = estimate_session_floor(old, new, old_prov, new_prov)
    figures = {"created": utc_now(), "machine": machine_fingerprint(), "rule": configured.to_dict(),
               "session_floor_fitted_on_noise": round(fitted, 4), "pairs": {}}
    pairs = {"noise": noise, **({"change": change} if change else {})}
    for name, (old_label, new_label) in pairs.items():
        (old, old_prov), (new, new_prov) = _load(root, old_label), _load(root, new_label)
        result = compare_luts(old, new, configured, old_prov, new_prov)
        variants = {label: fraction_flagged(old, new, rule, with_drift, old_prov, new_prov)
                    for label, (rule, with_drift) in rules_to_compare(configured, fitted).items()}
        versions = [(p.get("identity") or {}).get("runtime_version") for p in (old_prov, new_prov)]
        figures["pairs"][name] = {"old": old_label, "new": new_label, "runtime_versions": versions,
                                  **result.summary(), "rules": variants,
                                  "flagged_by_kind": result.flagged["kind"].value_counts().to_dict()}
        print(f"\n## {name}: {old_label} ({versions[0]}) -> {new_label} ({versions[1]})\n")
        print(summary_markdown(result))
        for label, counts in variants.items():
            print(f"  {label:58s} {counts['blocks_flagged']:4d} blocks ({counts['fraction_flagged']:.1%})")
        if name == "change":
            text = (f"# onnxruntime {versions[0]} -> {versions[1]}: the change report's LUT blocks\n\n"
                    f"`python benchmarks/reprofile_noise.py compare --root {root} --noise {' '.join(noise)} "
                    f"--change {' '.join(change)}`\n\n{summary_markdown(result)}\n"
                    f"{result.markdown_table(40)}\n")
            write_text(out.with_name(out.stem + "_change.md"), text)
    write_json(out, figures)
    print(f"\nwritten {out}")
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "venv":
        python = make_runtime_venv(args.root / f"venv-ort-{args.onnxruntime}", {"onnxruntime": args.onnxruntime})
        print(python)
    elif args.command == "measure":
        measure(args.root, args.label, args.device, args.params, args.profile)
    else:
        compare(args.root, args.noise, args.change, args.out, args.params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
