"""The artifact tree is spelled in one place, ``nas_core/layout.py``, and everything agrees with it."""
from __future__ import annotations

import inspect
import io
import re
import tokenize
from pathlib import Path

import pytest

from nas_core.layout import DATA, DATA_ROOT, Layout, LutPaths

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("nas_core", "tasks", "flows")
LAYOUT_MODULE = Path("nas_core/layout.py")

# Re-spellings in modules that concurrent work is rewriting (the trainers merge, the Protocol
# renames): allowed only while their value is the layout's. Remove an entry once its module
# takes the path from nas_core.layout.
PENDING: dict = {}  # (module, literal) -> the layout path it must equal, while a module is being moved


def top_level_names(layout_class=Layout) -> set[str]:
    """The folders and files directly under the data root, as the layout names them: every
    property and one-argument method of a ``Layout``, evaluated on a sample root."""
    root = Path("ROOT")
    layout = layout_class(root)
    names = set()
    for name, member in inspect.getmembers(layout_class):
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            value = getattr(layout, name)
        elif inspect.isfunction(member) and len(inspect.signature(member).parameters) == 2:
            value = getattr(layout, name)("x")
        elif inspect.isfunction(member) and len(inspect.signature(member).parameters) == 3:
            value = getattr(layout, name)("x", "y")
        else:
            continue
        if isinstance(value, LutPaths):
            value = value.root
        if isinstance(value, Path) and value != root:
            names.add(value.relative_to(root).parts[0])
    return names


TOP_LEVEL = top_level_names()


def _string_value(token: tokenize.TokenInfo) -> str | None:
    """The text of a string literal (an f-string's text up to its first field), else None."""
    match = re.match(r"(?i)([rbuf]*)('''|\"\"\"|'|\")", token.string)
    if not match:
        return None
    body = token.string[match.end():len(token.string) - len(match.group(2))]
    return body.split("{", 1)[0] if "f" in match.group(1).lower() else body


def respelled_paths(source: str) -> list[tuple[int, str]]:
    """Where ``source`` spells an artifact path itself: a literal ``"data/..."``, ``"data"``
    given as a value (``Path("data")``, ``root="data"``), or a layout folder joined onto a
    path (``root / "lut"``, ``.joinpath("search")``)."""
    found = []
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
              if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT)]
    for i, token in enumerate(tokens):
        if token.type != tokenize.STRING:
            continue
        value = _string_value(token)
        if value is None:
            continue
        before = [t.string for t in tokens[max(0, i - 2):i]]
        head = value.split("/", 1)[0]
        if value.startswith(f"{DATA_ROOT}/"):
            found.append((token.start[0], value))
        elif value == str(DATA_ROOT) and (before[-1:] == ["="] or before == ["Path", "("]):
            found.append((token.start[0], value))
        elif head in TOP_LEVEL and (before[-1:] == ["/"] or before == ["joinpath", "("]):
            found.append((token.start[0], value))
    return found


def test_the_top_level_names_come_from_the_layout():
    assert {"dataset", "supernet", "pairs", "predictor", "runtime", "lut", "baselines", "search", "finetune",
            "transfer", "detection", "report", "bundles", "reprofile", ".resume", "controls"} == TOP_LEVEL


@pytest.mark.parametrize("snippet", [
    'x = root / "lut" / f"{device}.parquet"\n',
    'DEFAULT = Path("data/detection_dataset")\n',
    'def f(root="data"):\n    pass\n',
    'p = Path("data")\n',
    'out = layout.root / "baselines" / "_work"\n',
    'out = base.joinpath("search")\n',
    'p.add_argument("--out", default="data/finetune")\n',
])
def test_the_scan_flags_respelled_paths(snippet):
    assert respelled_paths(snippet), snippet


@pytest.mark.parametrize("snippet", [
    'x = out_dir / "metrics.json"\n',
    'identity = {"data": 1}\n',
    'value = params.get("data")\n',
    '"""Writes data/lut/<device>.parquet (documentation)."""\n',
    'path = folder / "model.onnx"\n',
    'text = f"{root}/lut"\n',
])
def test_the_scan_leaves_other_strings_alone(snippet):
    assert respelled_paths(snippet) == [], snippet


def test_no_source_outside_the_layout_respells_an_artifact_path():
    offenders, pending_seen = [], {}
    for package in SOURCES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            relative = path.relative_to(PROJECT_ROOT)
            if relative == LAYOUT_MODULE:
                continue
            for line, value in respelled_paths(path.read_text()):
                key = (relative.as_posix(), value)
                if key in PENDING:
                    pending_seen[key] = PENDING[key]
                else:
                    offenders.append(f"{relative}:{line}: {value!r}")
    assert not offenders, ("artifact paths spelled outside nas_core/layout.py (use Layout / DATA):\n"
                           + "\n".join(offenders))
    for (module, value), expected in pending_seen.items():
        assert Path(value) == expected, f"{module}: {value!r} disagrees with the layout ({expected})"


def test_the_layout_is_the_documented_tree():
    layout = Layout(Path("d"))
    assert layout.baselines("dev") == Path("d/baselines/dev.parquet")
    assert layout.detection_dataset == Path("d/detection/dataset")
    assert layout.lut_paths("dev").fit == Path("d/lut/dev.fit.json")
    assert layout.lut_paths("dev").exports == Path("d/lut/_work/onnx")
    assert layout.search_summary("dev@1.0x") == Path("d/search/dev@1.0x.json")
    assert layout.finetune_metrics("ours_dev@1.0x") == Path("d/finetune/ours_dev@1.0x/metrics.json")
    assert layout.resume_stamp("finetune@a/b") == Path("d/.resume/finetune@a_b.json")
    assert LutPaths.for_device("dev").root == DATA.lut_dir == DATA_ROOT / "lut"


def test_command_defaults_are_where_the_stages_keep_the_same_things():
    from flows import cli_finetune, cli_latency, cli_predictor, cli_search, cli_train
    from nas_core import transfer
    from nas_core.latency import lut

    assert cli_finetune.DEFAULT_DETECTION_DATA == DATA.detection_dataset  # was data/detection_dataset
    assert Path(cli_latency.DEFAULT_ROOT) == lut.DEFAULT_ROOT == DATA.lut_dir
    assert Path(cli_latency.DEFAULT_EXPORTS) == DATA.lut_paths("x").exports
    assert Path(cli_predictor.DEFAULT_PAIRS) == DATA.pairs and Path(cli_predictor.DEFAULT_SUPERNET) == DATA.supernet
    assert cli_search.DEFAULT_PREDICTOR == DATA.predictor and cli_search.DEFAULT_OUT_DIR == DATA.search_root
    assert Path(cli_train.DEFAULT_OUT) == DATA.supernet_dir and Path(cli_train.DEFAULT_DATA) == DATA.dataset
    assert transfer.DEFAULT_OUT == DATA.transfer_runs


def test_the_readme_pipeline_table_names_layout_paths():
    """Every path in the README's "writes" column starts with a folder of the layout."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    table = readme.split("## The pipeline", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[3] for line in table.splitlines()[2:]]
    paths = [p for row in rows for p in re.findall(r"`([^`]+)`", row) if "/" in p]
    assert len(paths) >= 12
    for path in paths:
        assert path.split("/", 1)[0] in TOP_LEVEL, path
    assert "baselines/<device>.parquet" in paths
