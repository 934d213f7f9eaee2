"""DVC, the second door: dvc.yaml agrees with the stage registry, and `dvc repro` re-runs only
what depends on a change.

The repro test runs the real dvc.yaml and params.yaml in a copy of the project, with a fake
``scan-edge`` on the PATH: it checks that the command DVC runs names the step DVC thinks it
runs, then writes the stage's outputs from the content of its dependencies (so changes
propagate as they would), in well under a second per stage.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nas_core.params import load_params
from tasks import stages
from tasks.code_identity import relative_name
from tasks.dvc_code_deps import rewrite_dvc_yaml, stage_code_deps

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FILE_SUFFIXES = {".json", ".parquet", ".pt", ".onnx", ".png"}
CODE_ROOTS = ("nas_core", "flows", "tasks")


def _dvc_env() -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1"}


def dvc_stages(repo_root: Path) -> dict[str, dict]:
    """Each stage of dvc.yaml as ``{"cmd", "deps", "params", "outs"}`` (through DVC's own parser)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        found = {}
        for stage in repo.index.stages:
            deps = [d.def_path for d in stage.deps if not isinstance(d, ParamsDependency)]
            params = [p for d in stage.deps if isinstance(d, ParamsDependency) for p in d.params]
            found[stage.addressing] = {"cmd": stage.cmd, "deps": deps, "params": params,
                                       "outs": [o.def_path for o in stage.outs],
                                       "always_changed": stage.always_changed}
        return found


@pytest.fixture(scope="module")
def declared() -> dict[str, dict]:
    return dvc_stages(PROJECT_ROOT)


def _code_files(paths) -> set[str]:
    """Code deps as files: a folder stands for every .py file under it."""
    files = set()
    for path in (p for p in paths if p.startswith(CODE_ROOTS)):
        full = PROJECT_ROOT / path
        found = full.rglob("*.py") if full.is_dir() else [full]
        files.update(str(f.relative_to(PROJECT_ROOT)) for f in found if "__pycache__" not in f.parts)
    return files


def _dvc_param(step: stages.Step, section: str) -> str:
    """The params.yaml key DVC tracks for a stage section: per-device stages track their device's entry."""
    devices = stages._step_devices(step.kwargs())
    return f"devices.{devices[0]}" if section == "devices" and devices else section


def test_dvc_stages_are_the_planned_steps_with_the_same_code_params_and_outputs(declared):
    params = load_params(PROJECT_ROOT / "params.yaml")
    steps = stages.pipeline_steps(params, "data")
    assert sorted(declared) == sorted(s.id for s in steps)
    for step in steps:
        dvc = declared[step.id]
        expected_code = {relative_name(p) for p in stages.STAGES[step.stage].code_files()}
        missing = expected_code - _code_files(dvc["deps"])
        assert not missing, (f"{step.id}: dvc.yaml misses modules its entry point imports: {sorted(missing)}; "
                             "run `python -m tasks.dvc_code_deps --write`")
        assert _code_files(dvc["deps"]) == expected_code, step.id
        for name in stages.STAGES[step.stage].sections:
            assert _dvc_param(step, name) in dvc["params"], (step.id, name)
            assert f"profiles.imagenet.{name.split('.')[0]}" in dvc["params"], (step.id, name)
        assert "profile" in dvc["params"]
        for output in step.outputs:  # what the flow checks exists is what DVC tracks (or inside it)
            assert any(str(output) == o or str(output).startswith(o.rstrip("/") + "/") for o in dvc["outs"]), \
                (step.id, output)
        for path in step.inputs:  # what the flow hashes for its key is a DVC dependency too
            assert any(str(path) == d or str(path).startswith(d + "/") for d in dvc["deps"]), (step.id, path)
    assert declared["runtime@ort_cpu_fp32"]["always_changed"]
    # The file defining the stages is code they run: editing it must make them stale.
    assert all("tasks/stages/common.py" in s["deps"] for s in declared.values())


def test_lut_stages_depend_only_on_the_code_that_builds_and_times_blocks(declared):
    code = _code_files(declared["lut@ort_cpu_fp32"]["deps"])
    assert "nas_core/latency/lut.py" in code and "nas_core/blocks.py" in code
    for unrelated in ("nas_core/train.py", "nas_core/supernet.py", "nas_core/search_algorithm.py",
                      "nas_core/latency/calibration.py", "nas_core/report.py"):
        assert unrelated not in code


def test_dvc_yaml_code_deps_are_the_computed_ones():
    """`python -m tasks.dvc_code_deps --write` would not change dvc.yaml (and keeps artifact deps)."""
    text = (PROJECT_ROOT / "dvc.yaml").read_text()
    assert rewrite_dvc_yaml(text, stage_code_deps()) == text


def test_rewriting_puts_computed_code_deps_after_the_artifact_deps():
    text = textwrap.dedent("""\
        stages:
          lut:
            foreach: [a]
            do:
              cmd: scan-edge stage lut --device ${item}
              deps:
                - data/runtime/${item}.json
                - nas_core/old_module.py
              params:
                - lut
          search-params:
            cmd: x
            deps:
              - nas_core/gone.py
    """)
    rewritten = rewrite_dvc_yaml(text, {"lut": ["nas_core/a.py", "tasks/stages.py"], "search": ["nas_core/s.py"]})
    assert rewritten == text.replace("        - nas_core/old_module.py\n",
                                     "        - nas_core/a.py\n        - tasks/stages.py\n") \
                            .replace("      - nas_core/gone.py\n", "      - nas_core/s.py\n")


def test_dvc_config_keeps_everything_in_the_project():
    config = (PROJECT_ROOT / ".dvc" / "config").read_text()
    assert "analytics = false" in config and "site_cache_dir = .dvc/tmp/site_cache" in config
    ignored = (PROJECT_ROOT / ".dvcignore").read_text()
    for work in ("data/lut/_work/", "data/pairs/shards/", "data/.resume/"):
        assert work in ignored


# --------------------------------------------------------------------------- a real `dvc repro` with a fake scan-edge
FAKE_SCAN_EDGE = textwrap.dedent('''\
    #!{python}
    """Fake `scan-edge`: checks DVC runs the planned step, writes its outputs from its inputs."""
    import hashlib, json, os, sys
    from pathlib import Path
    sys.path.insert(0, {project!r})
    from flows.cli import build_parser
    from flows.cli_pipeline import stage_options
    from nas_core.params import load_params
    from tasks.stages import find_step

    args = build_parser().parse_args(sys.argv[1:])
    stage = os.environ["DVC_STAGE"]
    step = find_step(args.stage, stage_options(args), load_params("params.yaml"), "data")
    assert step.id == stage, f"DVC runs {{stage}} but the command names {{step.id}}"
    spec = json.loads(Path({spec!r}).read_text())[stage]
    raw = __import__("yaml").safe_load(Path("params.yaml").read_text())
    values = {{}}
    for key in spec["params"]:
        node = raw
        for part in key.split("."):
            node = node[part]
        values[key] = node
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode())
    for dep in spec["deps"]:
        path = Path(dep)
        for file in sorted([path] if path.is_file() else path.rglob("*")):
            if file.is_file():
                digest.update(str(file).encode() + file.read_bytes())
    for out in spec["outs"]:  # a folder gets the files other stages read from it, or one file
        out = Path(out)
        targets = [out] if out.suffix in {suffixes!r} else [Path(p) for p in spec["read_inside"].get(str(out), [])]
        for target in targets or [out / "out.json"]:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps({{"stage": stage, "digest": digest.hexdigest()}}))
    with open({log!r}, "a") as fh:
        fh.write(stage + "\\n")
''')


def _copy_project(dest: Path) -> None:
    for name in CODE_ROOTS:
        shutil.copytree(PROJECT_ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy2(PROJECT_ROOT / name, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    (dest / ".dvc").mkdir()
    shutil.copy2(PROJECT_ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    (dest / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")


def _repro(project: Path, bin_dir: Path, log: Path) -> list[str]:
    log.write_text("")
    env = {**_dvc_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", "--quiet"], cwd=project, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return log.read_text().split()


def test_dvc_repro_reruns_only_what_depends_on_a_changed_param(tmp_path, declared):
    project, bin_dir, log = tmp_path / "project", tmp_path / "bin", tmp_path / "ran.log"
    _copy_project(project)
    all_deps = {d for s in declared.values() for d in s["deps"]}
    spec = {name: {"deps": s["deps"], "outs": s["outs"], "params": s["params"],
                   "read_inside": {o: sorted(d for d in all_deps if d.startswith(o + "/")) for o in s["outs"]}}
            for name, s in declared.items()}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    bin_dir.mkdir()
    fake = bin_dir / "scan-edge"
    fake.write_text(FAKE_SCAN_EDGE.format(python=sys.executable, project=str(PROJECT_ROOT),
                                          spec=str(tmp_path / "spec.json"), log=str(log),
                                          suffixes=FILE_SUFFIXES))
    fake.chmod(0o755)

    assert sorted(_repro(project, bin_dir, log)) == sorted(declared)
    always = {name for name, s in declared.items() if s["always_changed"]}
    assert set(_repro(project, bin_dir, log)) == always, "nothing but the runtime check re-runs"

    text = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(text.replace("    generations: 30\n", "    generations: 31\n", 1))
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project, env=_dvc_env(),
                            capture_output=True, text=True, check=True)
    from flows.cli_pipeline import explain_dvc_status

    stale = {r["stage"]: r["why"] for r in explain_dvc_status(json.loads(status.stdout), sorted(declared))
             if r["state"] == "stale"}
    # The second calibration round runs the search's own evolution: it is stale too.
    recalibrations = {"recalibration@ort_cpu_fp32", "recalibration@openvino_cpu_fp32"}
    assert set(stale) == {"search@ort_cpu_fp32-1.0", "search@openvino_cpu_fp32-1.0",
                          "search-params@ort_cpu_fp32-1.0-2.5", *recalibrations}
    assert "search.evolution modified" in stale["search@ort_cpu_fp32-1.0"]
    assert "search.evolution modified" in stale["recalibration@ort_cpu_fp32"]

    ran = set(_repro(project, bin_dir, log)) - always
    assert ran == {*recalibrations, "search@ort_cpu_fp32-1.0", "search@openvino_cpu_fp32-1.0",
                   "search-params@ort_cpu_fp32-1.0-2.5",
                   "finetune@ort_cpu_fp32-1.0", "finetune@openvino_cpu_fp32-1.0",
                   "finetune-params@ort_cpu_fp32-1.0-2.5", "controls", "transfer", "detection", "report"}

    # The Prefect door records what it made in dvc.lock (`dvc commit`), so `scan-edge status` agrees.
    from flows.reproduce import dvc_commit

    (project / "params.yaml").write_text(text.replace("    generations: 30\n", "    generations: 32\n", 1))
    assert dvc_commit(project)
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project, env=_dvc_env(),
                            capture_output=True, text=True, check=True)
    assert set(json.loads(status.stdout)) <= always
