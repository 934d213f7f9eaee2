"""Run a profiling bundle's script as on an edge device: torch, pandas, timm and nas_core unimportable."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_BLOCKED_RUN = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'pandas', 'nas_core', 'timm'):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, Block())
sys.argv = [RUNNER, *sys.argv[1:]]
runpy.run_path(RUNNER, run_name='__main__')
"""


def run_without_torch(runner: Path, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python runner *args`` in a fresh interpreter where the project's heavy imports fail."""
    code = _BLOCKED_RUN.replace("RUNNER", repr(str(runner)))
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
