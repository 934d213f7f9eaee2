"""``scan-edge board``: make a board reachable through a Prefect work pool (``location: worker``).

    scan-edge board deploy --device jetson_ort     # here, once: work pool + run-bundle/<device> deployment
    prefect worker start --pool edge-boards        # on the board (Prefect, numpy, pyarrow, its runtime)
    scan-edge board check --device jetson_ort      # the board answers with its runtime version

The device's ``devices:`` entry in params.yaml names the pool and the shared folder::

    jetson_ort: {backend: onnxruntime, provider: CPUExecutionProvider, precision: fp32, threads: 4,
                 location: worker,
                 location_options: {work_pool: edge-boards, shared_dir: /mnt/boards, board_dir: /data/boards}}

``shared_dir`` is where this machine writes job bundles; ``board_dir`` is the same folder as
the board mounts it (default: the same path). Every stage then measures that device on the
board (``nas_core.latency.location``, ``tasks.board_worker``).
"""
from __future__ import annotations

from pathlib import Path

from nas_core.layout import DATA_ROOT

# The CLI boundary: each command imports what it runs inside its function, so that parsing the
# command line loads no torch or Prefect.

FLOWS_DIR = Path(__file__).resolve().parent
ENTRYPOINT = "device_profiling.py:run_bundle_flow"


def deploy_run_bundle(device: str, pool: str, source: Path = FLOWS_DIR) -> str:
    """Create the work pool (if missing) and the ``run-bundle/<device>`` deployment; returns its name.

    The deployment pulls the flow file from ``source`` on the board: the board needs that folder
    (this project's ``flows/``, or a copy) at the same path, and nothing else of the project.
    """
    import subprocess
    import sys

    from prefect import flow

    subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process"],
                   capture_output=True, text=True)  # an existing pool is fine
    # to_deployment().apply(): deploy() also lists the pool's workers, a call Prefect 3.8.8's
    # server refuses here (422 on workers/filter)
    flow.from_source(str(source), ENTRYPOINT).to_deployment(name=device, work_pool_name=pool).apply()
    return f"run-bundle/{device}"


def _profile(args):
    from nas_core.params import load_params
    from tasks.stages import device_profile

    params = load_params(args.params, args.profile)
    return params, device_profile(params, args.device)


def cmd_deploy(args) -> int:
    _, profile = _profile(args)
    if profile.location != "worker":
        raise SystemExit(f"device {profile.name!r} has location {profile.location!r}; set "
                         f"devices.{profile.name}.location: worker (and location_options.work_pool)")
    pool = args.pool or profile.location_options.get("work_pool")
    if not pool:
        raise SystemExit(f"device {profile.name!r}: give --pool or location_options.work_pool")
    name = deploy_run_bundle(profile.location_options.get("deployment") or profile.name, pool,
                             Path(args.source) if args.source else FLOWS_DIR)
    print(f"deployed {name} on work pool {pool!r}; start `prefect worker start --pool {pool}` on the board")
    return 0


def cmd_check(args) -> int:
    from tasks.stages import device_runtime_version

    params, profile = _profile(args)
    version = device_runtime_version(params, profile.name, args.root)
    print(f"{profile.name}: {profile.backend} {version} ({profile.location})")
    return 0 if version else 1


def register(sub) -> None:
    board = sub.add_parser("board", help="reach a board through a Prefect work pool (location: worker)",
                           description=__doc__.split("\n\n")[0])
    commands = board.add_subparsers(dest="board_command", required=True)
    for name, func, text in (("deploy", cmd_deploy, "create the work pool and the board's run-bundle deployment"),
                             ("check", cmd_check, "ask the board which runtime version it runs")):
        p = commands.add_parser(name, help=text, description=text)
        p.add_argument("--device", required=True, help="a device profile with location: worker")
        p.add_argument("--params", default="params.yaml")
        p.add_argument("--profile", help="params profile (default: the file's)")
        p.add_argument("--root", default=str(DATA_ROOT), help="artifact folder (bundle devices: <root>/bundles)")
        if name == "deploy":
            p.add_argument("--pool", help="work pool (default: location_options.work_pool)")
            p.add_argument("--source", help="the folder holding device_profiling.py as the board sees it")
        p.set_defaults(func=func)
