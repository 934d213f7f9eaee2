"""The training stages: supernet, accuracy pairs, predictor; and the ``torchrun`` launcher.

With ``pipeline.torchrun.nproc_per_node`` > 1 a training stage (and fine-tuning, transfer
and detection, ``tasks.stages.downstream``) runs its ``scan-edge`` command on that many
ranks (:func:`_torchrun`); each rank holds the CPU lock itself.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from nas_core import accuracy_predictor, predictor_training
from nas_core.io import read_provenance, write_text
from nas_core.layout import DATA_ROOT, Layout
from nas_core.pairs import PairsConfig, plan_identity
from nas_core.search_space import space_identity
from nas_core.train import SupernetTrainConfig, train_supernet
from tasks import stage_lock
from tasks.pairs import collect_pairs, default_shards_dir
from tasks.stages.common import Paths, _require, _say, input_digest, pipeline_section, resume_or_restart, section
from tasks.stages.space import search_space, space_sections


def stage_supernet(params: Mapping[str, Any], root: str | os.PathLike = DATA_ROOT, device: str | None = None) -> Paths:
    """Train the supernet (``supernet:``) on the dataset; resumes an interrupted run of the same inputs.

    With ``pipeline.torchrun.nproc_per_node`` > 1 the training runs under ``torchrun``
    (``scan-edge train-supernet``, one process per rank, each running :func:`run_supernet`
    and so holding the CPU lock itself); this process does not.
    """
    layout = Layout(root)
    supernet = section(params, "supernet")
    _require(layout.manifest, "the dataset (scan-edge stage dataset)")
    identity = {"supernet": SupernetTrainConfig.from_params(supernet).to_dict(),
                "inputs": input_digest([layout.dataset]), **space_identity(search_space(params).spec)}
    resume = resume_or_restart(layout, "supernet", identity)
    nproc = _torchrun_nproc(params)
    if nproc > 1:
        _torchrun(nproc, ["train-supernet", "--data", str(layout.dataset), "--out", str(layout.supernet_dir),
                          "--resume" if resume else "--overwrite", "--no-progress"],
                  {"supernet": supernet, **space_sections(params)}, layout)
    else:
        run_supernet(params, layout.dataset, layout.supernet_dir, resume=resume, overwrite=not resume, device=device,
                     progress=sys.stderr.isatty())
    return {"supernet": layout.supernet, "train_log": layout.supernet_log}


def run_supernet(params: Mapping[str, Any], data: str | os.PathLike, out: str | os.PathLike, *,
                 resume: bool = False, overwrite: bool = False, device: str | None = None,
                 progress: bool = True) -> Path:
    """Train the supernet of ``supernet:`` on the dataset folder ``data`` into ``out``, holding
    the CPU lock shared; returns ``supernet.pt``'s path (``nas_core.train.train_supernet``:
    ``resume`` continues ``out``'s checkpoint, ``overwrite`` discards it, neither refuses to
    touch it). The supernet holds the weights of the space of ``search_space:``. The work of the
    supernet stage and of ``scan-edge train-supernet``."""
    supernet = section(params, "supernet")
    with stage_lock("shared"):
        return train_supernet(SupernetTrainConfig.from_params(supernet), data, out, resume=resume, overwrite=overwrite,
                              params={"supernet": supernet, **space_sections(params)}, progress=progress,
                              device=device, space=search_space(params))


def _torchrun_nproc(params: Mapping[str, Any]) -> int:
    return int((pipeline_section(params).get("torchrun") or {}).get("nproc_per_node") or 1)


def _torchrun(nproc: int, command: Sequence[str], sections: Mapping[str, Any], layout: Layout) -> None:
    """Run ``scan-edge <command>`` under ``torchrun --standalone`` with these params sections."""
    # The sections are already resolved for the active profile: the file holds them as its
    # top level, which is the default ("smoke") profile of a params file.
    params_file = write_text(layout.resume_stamps / f"torchrun-{command[0]}.params.yaml",
                             yaml.safe_dump({"profile": "smoke", **dict(sections)}, sort_keys=False))
    argv = torchrun_command(nproc, command, params_file)
    _say("launching: " + " ".join(argv[2:]))
    subprocess.run(argv, check=True)


def _launch_ranks(params: Mapping[str, Any], nproc: int, command: Sequence[str], layout: Layout) -> None:
    """``scan-edge <command>`` on ``nproc`` ranks (:func:`_torchrun`) with every params section of
    the active profile: the ranks resolve devices, data and configs exactly as this process."""
    _torchrun(nproc, command, {k: v for k, v in params.items() if k != "profile"}, layout)


def _restart_flag(resume: bool) -> list[str]:
    """The commands resume an interrupted run by default; a run of other inputs starts over."""
    return [] if resume else ["--overwrite"]


def torchrun_command(nproc: int, command: Sequence[str], params_file: str | os.PathLike) -> list[str]:
    """The command line :func:`_torchrun` runs (shown in the README; tested)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "flows.cli", *command, "--params", str(params_file)]


def stage_pairs(params: Mapping[str, Any], root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Evaluate ``pairs.num_subnets`` subnets with inherited weights (``pairs:``, runner: ``runners:``).

    ``tasks.pairs.collect_pairs`` maps the shards over a Prefect task runner (threads, or
    Dask with a real Prefect server started on demand), and each shard task holds the CPU
    lock (shared) — not this function, whose lock would block the shard workers behind a
    waiting latency measurement. Finished shards of the same plan are kept; a plan of other
    inputs is discarded.
    """
    layout = Layout(root)
    _require(layout.supernet, "the supernet (scan-edge stage supernet)")
    shards = default_shards_dir(layout.pairs)
    plan = shards / "plan.parquet"
    space = search_space(params)
    key = plan_identity(PairsConfig.from_dict(section(params, "pairs")), layout.supernet, layout.dataset, space)["key"]
    same_plan = plan.exists() and read_provenance(plan).get("key") == key
    out = collect_pairs({"pairs": section(params, "pairs"), "runners": section(params, "runners")},
                        supernet=layout.supernet, data_root=layout.dataset, out=layout.pairs, shards_dir=shards,
                        resume=same_plan, fresh=not same_plan, log=_say, space=space)
    return {"pairs": Path(out)}


def stage_predictor(params: Mapping[str, Any], root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Fit the accuracy predictor on the pairs (``predictor:``); metrics on held-out test pairs."""
    layout = Layout(root)
    return run_predictor(params, layout.pairs, layout.predictor_dir)


def run_predictor(params: Mapping[str, Any], pairs: str | os.PathLike, out_dir: str | os.PathLike) -> Paths:
    """Fit the predictor of ``predictor:`` on the pairs table ``pairs``, holding the CPU lock
    shared; writes ``out_dir/`` (``nas_core.predictor_training.fit_and_write``) and returns
    its paths. The work of the predictor stage and of ``scan-edge fit-predictor``."""
    _require(Path(pairs), "the accuracy pairs (scan-edge stage pairs, or scan-edge collect-pairs)")
    predictor = section(params, "predictor")
    with stage_lock("shared"):
        config = accuracy_predictor.PredictorConfig.from_dict(predictor)
        paths, _ = predictor_training.fit_and_write(pairs, out_dir, config,
                                                    params={"predictor": predictor, **space_sections(params)},
                                                    log=_say, space=search_space(params))
    return {name: Path(path) for name, path in paths.items()}
