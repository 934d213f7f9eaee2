"""A scratch virtualenv that runs this project with other versions of a few packages.

    python = make_runtime_venv(Path("/tmp/venv-ort"), {"onnxruntime": "1.32.0"})
    subprocess.run([python, "-m", "flows.cli", "reprofile"], cwd=project)

The venv's own site-packages hold only the named packages (installed with ``uv pip install
--no-deps``: their dependencies come from the project); a ``.pth`` file then adds the
project's virtualenv as a site directory *after* it (``site.addsitedir``, so the project's
own ``.pth`` files, its editable install included, are honoured). ``import onnxruntime``
therefore finds the venv's version and everything else is the project's: a real runtime
upgrade (or downgrade) of the project, in seconds from uv's cache, without touching the
project's virtualenv. Used by ``benchmarks/reprofile_noise.py`` and the reprofile tests.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Mapping

PTH_NAME = "zz_scan_edge_project.pth"  # sorts last: processed after the venv's own .pth files


def project_site_packages() -> Path:
    """The site-packages of the interpreter running this (the project's virtualenv)."""
    return Path(sysconfig.get_paths()["purelib"])


def uv_executable() -> Path:
    """``uv`` next to this interpreter (scripts/setup.sh installs it into .venv)."""
    found = Path(sys.executable).parent / "uv"
    if not found.exists():
        raise FileNotFoundError(f"{found}: uv is not installed in this virtualenv (scripts/setup.sh installs it)")
    return found


def venv_python(venv: Path) -> Path:
    return Path(venv) / "bin" / "python"


def installed_version(python: Path, package: str) -> str | None:
    """The version of ``package`` that ``python`` imports (None when it cannot)."""
    done = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def make_runtime_venv(venv: Path, pins: Mapping[str, str]) -> Path:
    """Create (or reuse) ``venv`` with ``pins`` ({package: version}) over the project's
    packages; returns its python. Raises ``RuntimeError`` with uv's message when a
    package cannot be installed (e.g. no network and an empty uv cache)."""
    venv = Path(venv)
    python = venv_python(venv)
    uv = uv_executable()
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    if not python.exists():
        _run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)], env, f"uv venv {venv}")
    missing = {name: version for name, version in pins.items() if installed_version(python, name) != version}
    if missing:
        specs = [f"{name}=={version}" for name, version in missing.items()]
        _run([str(uv), "pip", "install", "--quiet", "--no-deps", "--python", str(python), *specs], env,
             f"uv pip install {' '.join(specs)}")
    site_packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        capture_output=True, text=True, check=True).stdout.strip())
    (site_packages / PTH_NAME).write_text(f"import site; site.addsitedir({str(project_site_packages())!r})\n")
    for name, version in pins.items():
        if installed_version(python, name) != version:
            raise RuntimeError(f"{venv}: {name} {version} was installed but {python} imports "
                               f"{installed_version(python, name)}")
    return python


def _run(command: list[str], env: Mapping[str, str], what: str) -> None:
    done = subprocess.run(command, env=dict(env), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {(done.stderr or done.stdout).strip()[-800:]}")
