"""``dvc.yaml``'s code deps, computed: each stage depends on the files its entry point imports.

    python -m tasks.dvc_code_deps            each stage's code files (tasks.code_identity)
    python -m tasks.dvc_code_deps --write    rewrite the code deps of dvc.yaml to match

``dvc.yaml`` is written by hand (comments, params, outs), but the code deps of a stage —
its items under ``nas_core/``, ``tasks/``, ``flows/`` — are the import graph's
(:func:`tasks.code_identity.code_files`): ``--write`` replaces them and leaves the rest
alone. ``tests/test_dvc.py`` fails when they drift (a stage missing a module its entry
point imports would not be re-run by ``dvc repro`` nor shown stale by ``scan-edge
status`` after that module changed). Stages of one registry stage share their deps
(``search-params`` runs ``search``, ``finetune-baseline`` runs ``finetune``).
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from tasks.code_identity import PROJECT_PACKAGES, PROJECT_ROOT, code_files, relative_name
from tasks.stages import STAGES

DVC_STAGE_OF = {"search-params": "search", "finetune-params": "finetune", "finetune-baseline": "finetune",
                "finetune-equal-budget": "finetune"}
_STAGE_LINE = re.compile(r"^  ([A-Za-z0-9_-]+):\s*$")
_DEPS_LINE = re.compile(r"^(\s+)deps:\s*(&\S+)?\s*$")  # a YAML anchor (`deps: &search_deps`) too
_ITEM_LINE = re.compile(r"^(\s+)- (\S+)\s*$")


def registry_stage(dvc_stage: str) -> str:
    """The registry stage a ``dvc.yaml`` stage runs (``search-params`` -> ``search``)."""
    return DVC_STAGE_OF.get(dvc_stage, dvc_stage)


def rewrite_dvc_yaml(text: str, code_deps: Mapping[str, list[str]]) -> str:
    """``dvc.yaml`` with every stage's code deps (items under ``nas_core/``, ``tasks/``,
    ``flows/``) replaced by ``code_deps[registry stage]``, placed after its artifact deps;
    the rest (comments, params, outs) untouched."""
    out: list[str] = []
    lines = text.splitlines()
    stage, i = None, 0
    while i < len(lines):
        line = lines[i]
        if (match := _STAGE_LINE.match(line)) is not None:
            stage = registry_stage(match.group(1))
        deps = _DEPS_LINE.match(line)
        out.append(line)
        i += 1
        if deps is None or stage is None:
            continue
        indent, items = None, []
        while i < len(lines) and (item := _ITEM_LINE.match(lines[i])) is not None:
            indent = item.group(1)
            items.append(item.group(2))
            i += 1
        indent = indent or deps.group(1) + "  "
        kept = [p for p in items if not p.startswith(tuple(f"{pkg}/" for pkg in PROJECT_PACKAGES))]
        out += [f"{indent}- {p}" for p in [*kept, *code_deps[stage]]]
    return "\n".join(out) + "\n"


def stage_code_deps(root: Path = PROJECT_ROOT) -> dict[str, list[str]]:
    """Each registry stage's code files, project-relative (what ``dvc.yaml`` must declare)."""
    return {name: [relative_name(f, root) for f in code_files(info.function, info.code, root)]
            for name, info in STAGES.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.dvc_code_deps",
                                     description="Show each stage's code files (from the import graph), "
                                                 "or rewrite dvc.yaml's code deps to match them.")
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps in place")
    parser.add_argument("stages", nargs="*", help="stages to show (default: all)")
    args = parser.parse_args(argv)
    deps = stage_code_deps()
    if args.write:
        path = PROJECT_ROOT / "dvc.yaml"
        path.write_text(rewrite_dvc_yaml(path.read_text(), deps))
        print(f"rewrote the code deps of {path}")
        return 0
    for stage in args.stages or list(deps):
        print(f"{stage}:")
        for name in deps[stage]:
            print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
