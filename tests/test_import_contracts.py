"""The architecture contracts in pyproject.toml ([tool.importlinter]) hold, and each one would catch
the violation it exists for.

The contracts: layers point downwards (flows -> tasks -> nas_core); nas_core imports no prefect,
dvc, tasks or flows; the device runner copied into bundles imports no torch; no import cycles
inside nas_core. ``lint-imports`` reads every import, including those inside functions.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACTS = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # --no-cache: nothing is written into the project; the whole graph takes about a second.
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_project_keeps_every_contract():
    done = _lint_imports(PROJECT_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Contracts: {len(CONTRACTS['contracts'])} kept, 0 broken." in done.stdout, done.stdout


def test_the_contracts_are_the_ones_the_design_asks_for():
    by_type = {}
    for contract in CONTRACTS["contracts"]:
        by_type.setdefault(contract["type"], []).append(contract)
    assert [c["layers"] for c in by_type["layers"]] == [["flows", "tasks", "nas_core"]]
    forbidden = {tuple(c["source_modules"]): set(c["forbidden_modules"]) for c in by_type["forbidden"]}
    assert {"prefect", "dvc", "tasks", "flows"} <= forbidden[("nas_core",)]
    assert "torch" in forbidden[("nas_core.latency.runner",)]
    assert [c["ancestors"] for c in by_type["acyclic_siblings"]] == [["nas_core"]]


# A project shaped like this one, each module breaking one contract.
_VIOLATIONS = {
    "flows/__init__.py": "",
    "flows/cli.py": "import tasks.stage\nimport dvc, pandas, timm, torchvision  # external modules the contracts name\n",
    "tasks/__init__.py": "",
    "tasks/stage.py": "import nas_core.pairs\n",
    "tasks/helper.py": "def f():\n    import flows.cli  # upwards, and inside a function\n",
    "nas_core/__init__.py": "",
    "nas_core/pairs.py": "from nas_core import accuracy_predictor\n",
    "nas_core/accuracy_predictor.py": "def f():\n    from nas_core.pairs import load_pairs\n",
    "nas_core/stage_cache.py": "import prefect\n",
    "nas_core/latency/__init__.py": "",
    "nas_core/latency/runner/__init__.py": "",
    "nas_core/latency/runner/cli.py": "from nas_core.latency import export\n",
    "nas_core/latency/export.py": "import torch\n",
}


@pytest.fixture(scope="module")
def broken_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("broken")
    for name, text in _VIOLATIONS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    # The project's own contracts, verbatim: the [tool.importlinter] tables of pyproject.toml.
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(pyproject[pyproject.index("[tool.importlinter]"):])
    return root


def test_each_contract_catches_its_violation(broken_project):
    done = _lint_imports(broken_project)
    assert done.returncode != 0
    names = [c["name"] for c in CONTRACTS["contracts"]]
    assert f"Contracts: 0 kept, {len(names)} broken." in done.stdout, done.stdout
    report = done.stdout
    assert "tasks.helper -> flows.cli" in report  # a function-local import counts
    assert "nas_core.stage_cache -> prefect" in report
    assert "nas_core.latency.runner.cli -> nas_core.latency.export" in report and "-> torch" in report
    assert ".pairs -> .accuracy_predictor" in report or ".accuracy_predictor -> .pairs" in report
