"""How long `scan-edge reproduce` takes when nothing changed (target: <= 10 s, the whole command).

    python benchmarks/noop_rerun.py                       3 no-op runs in this checkout, median
    python benchmarks/noop_rerun.py --project DIR --label before
    python benchmarks/noop_rerun.py --record-current      first: stamp the artifacts already in data/

Runs ``scan-edge reproduce`` (the project's own interpreter, ``-m flows.cli``) ``--repeat``
times in ``--project`` (default: this checkout), which must hold a finished pipeline's
``data/``, and reports each run's wall and CPU time (the command's own process and its
children) and the median. A run that executed a stage is not a no-op: the script stops
with an error (bring ``data/`` up to date first).

``--record-current`` writes the step stamps (``tasks.step_stamps``) of the artifacts already
in ``data/`` — what a completed ``reproduce`` with this checkout's code leaves — so that a
``data/`` copied from another run (e.g. a fresh clone's smoke run, made with older code)
counts as done without re-running 26 minutes of stages. Use it only on artifacts you know
are up to date.

Results are merged into ``benchmarks/results/noop_rerun.json`` under ``--label`` (default
``after``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "noop_rerun.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=PROJECT_ROOT, help="checkout to run in (default: this one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--label", default="after", help="key of this measurement in the results file")
    parser.add_argument("--record-current", action="store_true",
                        help="stamp data/'s current artifacts as done (this checkout's code), then exit")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def _python(project: Path) -> str:
    venv = project / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def record_current(project: Path) -> int:
    """Stamp every planned step whose outputs exist with its current run key."""
    sys.path.insert(0, str(project))
    os.chdir(project)
    from nas_core.params import load_params
    from tasks.stages import pipeline_steps
    from tasks.step_stamps import record_done, step_key

    params = load_params("params.yaml")
    done = 0
    for step in pipeline_steps(params, "data"):
        if all(Path(p).exists() for p in step.outputs):
            record_done(step, step_key(step, params, "data"), "data")
            done += 1
        else:
            print(f"not stamped (outputs missing): {step.id}")
    print(f"stamped {done} steps as done")
    return 0


def run_once(project: Path) -> dict:
    """One ``scan-edge reproduce``: wall and CPU seconds, and its summary line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([_python(project), "-m", "flows.cli", "reproduce"], cwd=project, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(project)})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"reproduce failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = [line for line in done.stdout.splitlines() if line.startswith("reproduce:")][-1]
    if ", 0 ran," not in summary:
        raise SystemExit(f"not a no-op (a stage ran): {summary}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "summary": summary}


def main(argv=None) -> int:
    args = parse_args(argv)
    project = args.project.resolve()
    if args.record_current:
        return record_current(project)
    if not (project / "data").is_dir():
        raise SystemExit(f"{project}/data: missing; it needs a finished pipeline's artifacts")
    runs = []
    for index in range(args.repeat):
        runs.append(run_once(project))
        print(f"run {index + 1}: {runs[-1]['wall_s']:.1f} s wall, {runs[-1]['cpu_s']:.1f} s CPU -- {runs[-1]['summary']}",
              flush=True)
    result = {"project": str(project), "repeat": args.repeat, "runs": runs,
              "median_wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
              "median_cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 2),
              "target_s": 10.0, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"no-op reproduce ({args.label}): median {result['median_wall_s']:.1f} s wall, "
          f"{result['median_cpu_s']:.1f} s CPU (target <= 10 s)")
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    existing[args.label] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
