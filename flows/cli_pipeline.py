"""``scan-edge reproduce | status | stage | dataset | report | reprofile | schedule``: the pipeline.

    scan-edge reproduce [--profile smoke] [--only STAGE ...]   the whole DAG, Prefect flow with cache
    scan-edge reproduce --dvc                                  the same stages through `dvc repro`
    scan-edge status [--json]                                  which stages are up to date, stale, and why
    scan-edge stage NAME [--device D] [--target 1.0x] [--name N] [--prefect]
                                                               one stage (what dvc.yaml runs)
    scan-edge dataset | report                                 the dataset / report stages
    scan-edge reprofile [--device D] [--force] [--searches-only] re-profile devices whose runtime changed
    scan-edge schedule reprofile --cron "0 3 * * 1"            serve reprofile on a cron schedule

Every command calls the stage functions of ``tasks/stages/`` (directly, or through their
cached Prefect tasks); params come from ``--params`` (default params.yaml) and ``--profile``
(default: the file's ``profile`` key).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from nas_core.layout import DATA, DATA_ROOT
from tasks.stages.planner import STAGE_NAMES  # light: the stage modules load only when a stage runs

# The CLI boundary: each command imports what it runs inside its function, so that parsing the
# command line loads no torch, Prefect or Dask.


def _profile_params(args) -> dict:
    """The params file under the chosen ``--profile`` (its ``profile:`` key by default)."""
    from nas_core.params import load_params

    return load_params(args.params, args.profile)


def _add_params(p) -> None:
    p.add_argument("--profile", help="params profile (default: params.yaml's `profile`)")
    p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    p.add_argument("--root", default=str(DATA_ROOT),
                   help=f"artifact folder (default {DATA_ROOT}; DVC and status use {DATA_ROOT})")


# --------------------------------------------------------------------------- reproduce
def cmd_reproduce(args) -> int:
    if args.dvc:
        if args.profile or args.only:
            raise ValueError("--dvc runs dvc.yaml as it is: choose the profile with params.yaml's `profile:` "
                             "(or `dvc exp run -S profile=NAME`) and stages with `dvc repro STAGE`")
        return _dvc_repro()
    started = time.monotonic()
    params = _profile_params(args)
    if not (args.dry_run or args.only) and _nothing_to_do(params, args.root, args.no_dvc_commit, started):
        return 0
    from flows.reproduce import reproduce

    # The temporary Prefect server inherits this: without internet its telemetry only logs errors.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if args.dry_run:
        from tasks.dry_run import dry_run_params

        if not args.data:
            raise ValueError("--dry-run needs --data DIR: a small ImageNet-layout folder (train/<class>/, val/<class>/)")
        params, notes = dry_run_params(params, args.data)
        for note in notes:
            print(f"dry run: {note}", flush=True)
    elif args.data:
        raise ValueError("--data goes with --dry-run; a full run reads params dataset.path")
    print(f"reproduce: profile {params['profile']}, artifacts in {args.root}/", flush=True)
    outcome = reproduce(params, root=args.root, only=args.only, record_in_dvc=not args.no_dvc_commit)
    ran = [step for step, o in outcome.items() if o["status"] == "ran" and not step.startswith("runtime@")]
    cached = sum(o["status"] == "cached" for o in outcome.values())
    print(f"reproduce: {len(outcome)} steps, {len(ran)} ran, {cached} cached (the runtime checks always run), "
          f"{time.monotonic() - started:.0f} s; report: {Path(args.root) / 'report' / 'README.md'}")
    return 0


def _nothing_to_do(params: dict, root: str, no_dvc_commit: bool, started: float) -> bool:
    """Every step done with the run key it has now (``tasks.step_stamps``): say so and stop,
    without starting Prefect. Not when dvc.lock is still to be written for ``data/``."""
    from tasks.stages import pipeline_steps
    from tasks.step_stamps import first_stale_step

    if not no_dvc_commit and Path(root).resolve() == DATA_ROOT.resolve() and Path("dvc.yaml").exists() \
            and not Path("dvc.lock").exists():
        return False
    steps = pipeline_steps(params, root)
    if first_stale_step(params, root, steps) is not None:
        return False
    print(f"reproduce: profile {params['profile']}, artifacts in {root}/: {len(steps)} steps, 0 ran, "
          f"{len(steps)} up to date (nothing changed since each completed), {time.monotonic() - started:.1f} s; "
          f"report: {Path(root) / 'report' / 'README.md'}")
    return True


def _dvc_env() -> dict[str, str]:
    """DVC's environment: analytics off; ``scan-edge`` on the PATH of its stages."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def _dvc(argv: list[str], capture: bool = False) -> int | subprocess.CompletedProcess:
    """``dvc ARGV`` in this project (:func:`_dvc_env`)."""
    command = [sys.executable, "-m", "dvc", *argv]
    if capture:
        return subprocess.run(command, env=_dvc_env(), capture_output=True, text=True)
    return subprocess.run(command, env=_dvc_env()).returncode


def _dvc_repro() -> int:
    """``dvc repro`` (its output passed through), then which stages it ran: the runtime probes
    (``runtime@<device>``, ``always_changed`` in dvc.yaml) run every time, since asking each
    device its runtime is the only way DVC sees an upgrade; the others ran because something
    changed."""
    ran = []
    # stdout only: the stages' stderr (progress bars, which look for a terminal there) is left alone
    with subprocess.Popen([sys.executable, "-m", "dvc", "repro"], env=_dvc_env(), stdout=subprocess.PIPE, text=True,
                          bufsize=1) as dvc:
        for line in dvc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            ran += re.findall(r"^Running stage '([^']+)'", line)
    if dvc.returncode == 0:
        probes = [stage for stage in ran if stage.startswith("runtime@")]
        others = [stage for stage in ran if not stage.startswith("runtime@")]
        print(f"reproduce --dvc: {len(others)} stages ran" + (f" ({', '.join(others)})" if others else "") +
              (f", besides the {len(probes)} runtime probes, which always run (a runtime upgrade changes no file "
               "DVC could see; README, Re-profiling)" if probes else ""))
    return dvc.returncode


# --------------------------------------------------------------------------- status
def explain_dvc_status(status: dict, stage_ids: list[str], upstream: dict[str, set[str]] | None = None
                       ) -> list[dict]:
    """``dvc status --json`` as one row per stage: ``{"stage", "state", "why"}``.

    state: ``up to date``, ``never run`` (dvc.lock has no record of it), ``stale`` (a
    dependency, parameter or output changed: ``why`` says which) or ``always runs`` (the
    runtime check). Stages DVC lists that the plan does not know are appended.

    ``dvc status`` names only the stages whose own dependencies changed; ``dvc repro`` and
    ``scan-edge reproduce`` also run what follows them. With ``upstream`` (stage -> its
    transitive upstream stages, ``dvc dag``), a stage after a stale or never-run one is
    ``stale`` too (``why``: after which), so the rows list what ``reproduce`` will run. The
    runtime checks, which always run, make nothing stale: their record changes only with
    the runtime.
    """
    rows = []
    for stage in [*stage_ids, *[s for s in status if s not in stage_ids]]:
        entries = status.get(stage)
        if not entries:
            rows.append({"stage": stage, "state": "up to date", "why": ""})
            continue
        reasons, never_run = [], False
        for entry in entries:
            if entry == "always changed":
                reasons.append("always changed")
                continue
            for kind, changes in entry.items():
                if not isinstance(changes, dict):
                    reasons.append(f"{kind}: {changes}")
                    continue
                never_run |= changes.get("params.yaml") == "new"  # a stage without a lock entry
                reasons += [f"{kind.replace('changed ', '')} {path}: {_change_text(what)}"
                            for path, what in changes.items()]
        state = "never run" if never_run else ("always runs" if reasons == ["always changed"] else "stale")
        rows.append({"stage": stage, "state": state, "why": "" if never_run else "; ".join(reasons)})
    to_run = [row["stage"] for row in rows if row["state"] in ("stale", "never run")]
    for row in rows if upstream else ():
        after = [stage for stage in to_run if stage in upstream.get(row["stage"], ())]
        if row["state"] == "up to date" and after:
            row.update(state="stale", why="after " + ", ".join(after) + " (upstream, to be run)")
    return rows


def _change_text(what) -> str:
    if isinstance(what, dict):  # changed params: {name: {"old": ..., "new": ...}} or "modified"
        return ", ".join(f"{k} {v}" if not isinstance(v, dict) else f"{k} {v.get('old')!r} -> {v.get('new')!r}"
                         for k, v in what.items())
    return str(what)


def cmd_status(args) -> int:
    from tasks.stages import pipeline_steps

    done = _dvc(["status", "--json"], capture=True)
    if done.returncode != 0:
        raise ValueError(f"dvc status failed: {done.stderr.strip()[-800:]}")
    status = json.loads(done.stdout or "{}")
    upstream = None
    if any(entries != ["always changed"] for entries in status.values()):  # something to run: and what follows it
        from flows.dvc_graph import upstream_from_dot

        dag = _dvc(["dag", "--dot"], capture=True)
        if dag.returncode != 0:
            raise ValueError(f"dvc dag failed: {dag.stderr.strip()[-800:]}")
        upstream = upstream_from_dot(dag.stdout)
    rows = explain_dvc_status(status, [step.id for step in pipeline_steps(_profile_params(args), DATA_ROOT)],
                              upstream)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["stage"]) for r in rows)
    for row in rows:
        reasons = row["why"].split("; ") if row["why"] else []
        shown = "; ".join(reasons[:3]) + (f" (+{len(reasons) - 3} more, --json lists all)" if len(reasons) > 3 else "")
        print(f"{row['stage']:<{width}}  {row['state']:<11} {shown}")
    todo = sum(r["state"] in ("stale", "never run") for r in rows)
    print(f"\n{todo} of {len(rows)} stages to run" + ("; `scan-edge reproduce` brings them up to date" if todo else ""))
    return 0


# --------------------------------------------------------------------------- stage
def stage_options(args) -> dict:
    """The stage function's options from the command line, checked per stage."""
    devices = args.device or []
    if args.stage in ("runtime", "lut", "calibration", "baselines", "recalibration"):
        if len(devices) != 1:
            raise ValueError(f"stage {args.stage} needs exactly one --device")
        return {"device": devices[0]}
    if args.stage == "search":
        if not devices or not args.target:
            raise ValueError("stage search needs --device (one or more) and --target (e.g. 1.0x or 7.6ms)")
        return {"devices": tuple(devices), "target": args.target, "params_m": args.params_m}
    if args.stage == "finetune":
        if not args.name:
            raise ValueError("stage finetune needs --name (ours_<run> or a baseline of pipeline.finetune_baselines)")
        return {"name": args.name}
    return {}


def cmd_stage(args) -> int:
    params = _profile_params(args)
    options = stage_options(args)
    if args.prefect:
        from flows.reproduce import needs_server, stage_flow
        from tasks._server import prefect_server

        with prefect_server(required=args.stage == "pairs" and needs_server(params)):
            outcome = stage_flow(args.stage, params, options, args.root, refresh=args.force)
        outputs = next(iter(outcome.values()))["outputs"]
    else:
        from tasks.stages import STAGES, find_step
        from tasks.step_stamps import record_done, step_key

        step = find_step(args.stage, options, params, args.root)
        key = step_key(step, params, args.root)
        outputs = STAGES[args.stage].function(params, **options, root=args.root)
        record_done(step, key, args.root)  # so `scan-edge reproduce` knows it is done, whichever door ran it
    for name, path in outputs.items():
        print(f"  {name}: {path}")
    return 0


def cmd_dataset(args) -> int:
    from tasks.stages import stage_dataset

    stage_dataset(_profile_params(args), root=args.root)
    return 0


def cmd_report(args) -> int:
    from tasks.stages import stage_report

    stage_report(_profile_params(args), root=args.root)
    return 0


# --------------------------------------------------------------------------- reprofile / schedule
def _rule_overrides(args) -> dict | None:
    """The change rule's command-line overrides of params ``reprofile:`` (None: none given)."""
    values = {"z": args.z, "min_change": args.min_change, "session_floor": args.session_floor}
    return {k: v for k, v in values.items() if v is not None} or None


def cmd_reprofile(args) -> int:
    from flows.reprofile import reprofile_flow

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    outcome = reprofile_flow(args.params, args.profile, args.root, args.device or None, force=args.force,
                             searches_only=args.searches_only, rule=_rule_overrides(args))
    for device, result in outcome["devices"].items():
        detail = (f"{result['blocks_flagged']} of {result['blocks_compared']} blocks moved beyond their uncertainty; "
                  f"report {result['markdown']}" if result["status"] == "reprofiled" else
                  result.get("reason") or f"runtime {result.get('runtime_version')}")
        print(f"reprofile {device}: {result['status']} ({detail})")
    ran = [step for step, status in outcome["downstream"].items() if status == "ran"]
    print(f"reprofile: {len(outcome['downstream'])} dependent steps brought up to date ({len(ran)} ran); "
          f"{len(outcome['recorded_in_dvc'])} steps recorded in dvc.lock")
    return 0


def cmd_schedule(args) -> int:
    from flows.reprofile import reprofile_deployment, serve_reprofile

    kwargs = {"params_file": args.params, "profile": args.profile, "root": args.root,
              "searches_only": args.searches_only, "rule": _rule_overrides(args)}
    deployment = reprofile_deployment(args.cron, **kwargs)
    print(f"deployment {deployment.flow_name}/{deployment.name}: cron {args.cron!r}, parameters "
          f"{json.dumps(deployment.parameters)}")
    if args.print_only:
        return 0
    print("serving it (Ctrl-C stops; a local Prefect server is started when PREFECT_API_URL is not set)", flush=True)
    try:
        serve_reprofile(args.cron, **kwargs)
    except KeyboardInterrupt:
        print("stopped")
    return 0


# --------------------------------------------------------------------------- registration
def _add_reprofile_options(p) -> None:
    p.add_argument("--searches-only", action="store_true",
                   help="stop after the searches: the fine-tunes and what follows them are left stale")
    p.add_argument("--z", type=float, help="flag a block whose move exceeds z standard errors (params reprofile.z)")
    p.add_argument("--min-change", type=float,
                   help="and is at least this relative move (params reprofile.min_change, e.g. 0.05)")
    p.add_argument("--session-floor", type=float,
                   help="relative spread a fresh session adds to a block's median (params reprofile.session_floor)")


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="run the whole pipeline (Prefect flow with cache; --dvc: dvc repro)",
                       description="Run every stage of DESIGN.md's DAG in dependency order. Stages whose inputs, "
                                   "params and code are unchanged are not executed (Prefect cache). After a full "
                                   "run the state is recorded in DVC (dvc commit), so `scan-edge status` agrees.")
    _add_params(p)
    p.add_argument("--only", nargs="+", metavar="STAGE",
                   help="only these stages or steps (e.g. lut, search@ort_cpu_fp32-1.0); inputs must exist")
    p.add_argument("--dvc", action="store_true", help="run `dvc repro` instead (the same stages, DVC's cache)")
    p.add_argument("--no-dvc-commit", action="store_true", help="do not record the run in dvc.lock")
    p.add_argument("--dry-run", action="store_true",
                   help="every stage with the profile's settings for a few steps at tiny sizes on --data, on this "
                        "machine (a broken setting fails here, not on the cluster); use with --root OUT")
    p.add_argument("--data", help="--dry-run: a small ImageNet-layout folder (DIR/train/<class>/, DIR/val/<class>/)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("status", help="which stages are up to date, which are stale and why (dvc status)")
    _add_params(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("stage", help="run one stage (the entry point dvc.yaml calls)",
                       description="Run one stage function of tasks/stages/. Per-device stages take --device; "
                                   "search takes --device (repeat for a joint search) and --target (<k>x: k times "
                                   "MobileNetV2's measured latency; or <ms>ms); finetune takes --name.")
    p.add_argument("stage", choices=list(STAGE_NAMES))
    _add_params(p)
    p.add_argument("--device", action="append", help="device profile (repeat for a joint search)")
    p.add_argument("--target", help="search target: <k>x or <ms>ms")
    p.add_argument("--params-m", type=float, help="search: parameter bound in millions (Table 4)")
    p.add_argument("--name", help="finetune: ours_<run> or a baseline name")
    p.add_argument("--prefect", action="store_true", help="run it as a Prefect flow with its cached task")
    p.add_argument("--force", action="store_true", help="with --prefect: run even on a cache hit")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("dataset", help="generate the classification dataset (params dataset:)")
    _add_params(p)
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("report", help=f"write {DATA.report}/ (Tables 3-6, Figs. 3-5) from the artifacts")
    _add_params(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reprofile", help="re-profile devices whose runtime version changed, bring the pipeline "
                                         "up to date; write a change report",
                       description="For each device whose installed runtime version differs from its LUT's: "
                                   "re-time its LUT, recalibrate, re-run its baselines and searches, measure the "
                                   "deployed models on the new runtime, write data/reprofile/<device>-<time>.md, "
                                   "then run the stages that depend on them and record everything in dvc.lock.")
    _add_params(p)
    _add_reprofile_options(p)
    p.add_argument("--device", action="append", help="only this device (repeatable; default search.devices)")
    p.add_argument("--force", action="store_true",
                   help="re-profile even when the runtime did not change (the change report's noise baseline)")
    p.set_defaults(func=cmd_reprofile)

    p = sub.add_parser("schedule", help="serve a flow on a schedule (Prefect deployment)")
    schedule_sub = p.add_subparsers(dest="flow", required=True, metavar="{reprofile}")
    p = schedule_sub.add_parser("reprofile", help="re-profile on a cron schedule",
                                description="Deploy the reprofile flow with a cron schedule and serve it "
                                            "(prefect serve). Needs a Prefect server: PREFECT_API_URL, or a "
                                            "local one started for as long as this command runs.")
    _add_params(p)
    _add_reprofile_options(p)
    p.add_argument("--cron", default="0 3 * * 1", help="cron schedule (default: Mondays 03:00)")
    p.add_argument("--print-only", action="store_true", help="show the deployment and exit without serving")
    p.set_defaults(func=cmd_schedule)
