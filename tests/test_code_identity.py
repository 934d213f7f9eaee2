"""A stage's code from its import graph, the run identity, stamps and the stat cache.

Editing a module a stage imports changes exactly that stage's code identity (its
dependents follow through the content of its outputs); editing a module no stage imports
(a benchmark script) changes none.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nas_core.params import load_params
from tasks import code_identity, run_identity, stages, step_stamps
from tasks.code_identity import EntryPoint, code_digest, code_files, relative_name
from tasks.run_identity import StatCache, resume_or_restart, run_identity as identity_of

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- a small project
MINI = {
    "nas_core/__init__.py": "",
    "nas_core/io.py": "def write():\n    return 1\n",
    "nas_core/train.py": "from .io import write\n\n\ndef fit():\n    return write()\n",
    "nas_core/presets.py": "PRESETS = {}\n",
    "nas_core/unused.py": "X = 1\n",
    "nas_core/latency/__init__.py": "from .lut import build_lut\n",
    "nas_core/latency/lut.py": "from nas_core import io\n\n\ndef build_lut():\n    return io.write()\n",
    "nas_core/latency/timing.py": "def clock():\n    from ..presets import PRESETS\n    return PRESETS\n",
    "tasks/__init__.py": "",
    "tasks/stages.py": textwrap.dedent("""\
        import json

        from nas_core.latency import build_lut
        from nas_core import train, unused

        LIMIT = 3


        def _helper():
            from nas_core.train import fit  # deferred: still followed
            return fit()


        class Layout:
            def timing(self):
                from nas_core.latency import timing
                return timing.clock()

            def other(self):
                return unused.X


        def stage_lut():
            return build_lut(), LIMIT


        def stage_train():
            return _helper(), json


        def stage_timed():
            return Layout().timing()


        def stage_layout_only():
            return Layout()
        """),
    "benchmarks/bench.py": "from nas_core import train\n",
}


@pytest.fixture
def mini(tmp_path) -> Path:
    for name, text in MINI.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    code_identity.module_file.cache_clear()  # a new tree under a new root
    return tmp_path


def _entry(root: Path, name: str) -> EntryPoint:
    return EntryPoint(root / "tasks" / "stages.py", "tasks.stages", name)


def _files(root: Path, name: str) -> set[str]:
    return {relative_name(f, root) for f in code_files(_entry(root, name), root=root)}


def test_a_stages_code_is_what_its_entry_point_reaches(mini):
    assert _files(mini, "stage_lut") == {
        "tasks/__init__.py", "tasks/stages.py", "nas_core/__init__.py", "nas_core/io.py",
        "nas_core/latency/__init__.py", "nas_core/latency/lut.py"}  # re-export followed to lut.py only
    assert _files(mini, "stage_train") == {"tasks/__init__.py", "tasks/stages.py", "nas_core/__init__.py",
                                           "nas_core/io.py", "nas_core/train.py"}  # deferred + relative imports
    # a method is reached when named (Layout().timing()), with its relative import of presets
    assert "nas_core/latency/timing.py" in _files(mini, "stage_timed")
    assert "nas_core/presets.py" in _files(mini, "stage_timed")
    assert "nas_core/unused.py" not in _files(mini, "stage_timed")
    assert _files(mini, "stage_layout_only") == {"tasks/__init__.py", "tasks/stages.py"}


def _digests(root: Path) -> dict[str, str]:
    names = ("stage_lut", "stage_train", "stage_timed", "stage_layout_only")
    return {name: code_digest(_entry(root, name), root=root) for name in names}


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "# edited\n")


@pytest.mark.parametrize("module, stale", [
    ("nas_core/latency/lut.py", {"stage_lut"}),
    ("nas_core/io.py", {"stage_lut", "stage_train"}),
    ("nas_core/presets.py", {"stage_timed"}),
    ("nas_core/latency/__init__.py", {"stage_lut", "stage_timed"}),
    ("tasks/stages.py", {"stage_lut", "stage_train", "stage_timed", "stage_layout_only"}),
    ("benchmarks/bench.py", set()),
    ("nas_core/unused.py", set()),
])
def test_editing_a_module_changes_exactly_the_stages_that_import_it(mini, module, stale):
    before = _digests(mini)
    _edit(mini / module)
    after = _digests(mini)
    assert {name for name in before if before[name] != after[name]} == stale


def test_the_params_sections_are_part_of_the_code_identity(mini):
    entry = _entry(mini, "stage_lut")
    assert code_digest(entry, sections=("lut",), root=mini) != code_digest(entry, sections=("lut", "x"), root=mini)


# --------------------------------------------------------------------------- the real registry
def _stage_files() -> dict[str, set[str]]:
    return {name: {relative_name(f) for f in info.code_files()} for name, info in stages.STAGES.items()}


def test_every_module_the_issue_names_is_code_of_a_stage_and_benchmarks_of_none():
    files = _stage_files()
    every = set().union(*files.values())
    for module in ("tasks/stages/common.py", "nas_core/presets.py", "nas_core/io.py"):
        assert module in every, module
    assert all("tasks/stages/common.py" in f for f in files.values())
    # One module per concern: a stage depends on its own stage module, not on the others'.
    assert "tasks/stages/latency.py" in files["lut"] and "tasks/stages/latency.py" not in files["supernet"]
    assert "tasks/stages/training.py" in files["supernet"] and "tasks/stages/training.py" not in files["lut"]
    assert not any(f.startswith(("benchmarks/", "scripts/", "tests/")) for f in every)
    assert "nas_core/train.py" in files["supernet"] and "nas_core/train.py" not in files["lut"]
    assert "nas_core/latency/lut.py" in files["lut"] and "nas_core/latency/lut.py" not in files["dataset"]


def test_the_runtime_probe_is_light(tmp_path):
    """DVC runs the runtime stage on every ``dvc repro`` (README, "Why dvc repro always runs the
    runtime probe"): its code is the runtime's identity, not the measuring stages' (torch, timm)."""
    files = _stage_files()["runtime"]
    assert "tasks/stages/runtime_record.py" in files and "tasks/stages/runtimes.py" in files
    assert not {"tasks/stages/latency.py", "nas_core/latency/baselines.py", "nas_core/supernet.py"} & files
    probe = ("import sys; from nas_core.params import load_params; from tasks.stages import STAGES; "
             f"out = STAGES['runtime'].function(load_params('params.yaml'), 'ort_cpu_fp32', {str(tmp_path)!r}); "
             "print(sorted(m for m in ('torch', 'timm') if m in sys.modules), out['runtime'].exists())")
    done = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "[] True"


def test_editing_a_real_module_changes_the_code_digest_of_exactly_its_importers(monkeypatch):
    """As if ``nas_core/train.py`` were edited (its content digest changes, the file is not touched)."""
    files = _stage_files()
    before = {name: info.code_digest() for name, info in stages.STAGES.items()}
    real = code_identity.file_sha256
    edited = PROJECT_ROOT / "nas_core" / "train.py"
    monkeypatch.setattr(code_identity, "file_sha256", lambda p: "edited" if Path(p) == edited else real(p))
    after = {name: info.code_digest() for name, info in stages.STAGES.items()}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {name for name, f in files.items() if "nas_core/train.py" in f}
    assert "supernet" in changed and "lut" not in changed and "runtime" not in changed


# --------------------------------------------------------------------------- the stat cache
def _old(path: Path) -> None:
    past = time.time() - 60
    os.utime(path, (past, past))


def test_the_stat_cache_skips_hashing_unchanged_files_across_processes(tmp_path, monkeypatch):
    data = tmp_path / "a.bin"
    data.write_bytes(b"alpha")
    _old(data)
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"just written")
    calls = []
    real = run_identity.sha256_of_file
    monkeypatch.setattr(run_identity, "sha256_of_file", lambda p: calls.append(Path(p).name) or real(p))

    first = StatCache(tmp_path / "cache.json")
    digests = (first.digest(data), first.digest(fresh))
    first.save()
    second = StatCache(tmp_path / "cache.json")  # another process: reads the saved cache
    assert (second.digest(data), second.digest(fresh)) == digests
    # The old file is hashed once; the fresh one again (racy: its mtime is too recent to trust).
    assert calls == ["a.bin", "fresh.bin", "fresh.bin"]

    data.write_bytes(b"ALPHA")  # same size, new mtime
    _old(data)
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 1))
    assert second.digest(data) != digests[0]


def test_a_replaced_file_with_the_same_size_and_mtime_is_hashed_again(tmp_path):
    data = tmp_path / "a.bin"
    data.write_bytes(b"alpha")
    _old(data)
    cache = StatCache(tmp_path / "cache.json")
    before = cache.digest(data)
    stat = data.stat()
    replacement = tmp_path / "b.bin"
    replacement.write_bytes(b"omega")
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replacement.replace(data)  # atomic rename: a new inode
    assert cache.digest(data) != before


# --------------------------------------------------------------------------- run identity and stamps
def test_the_run_identity_follows_code_params_options_inputs_and_runtimes(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("v1")
    base = identity_of("code", {"lut": {"seed": 0}}, {"device": "d"}, [source], {"d": {"version": "1"}})
    assert identity_of("code", {"lut": {"seed": 0}}, {"device": "d"}, [source], {"d": {"version": "1"}}) == base
    others = [identity_of("code2", {"lut": {"seed": 0}}, {"device": "d"}, [source], {"d": {"version": "1"}}),
              identity_of("code", {"lut": {"seed": 1}}, {"device": "d"}, [source], {"d": {"version": "1"}}),
              identity_of("code", {"lut": {"seed": 0}}, {"device": "e"}, [source], {"d": {"version": "1"}}),
              identity_of("code", {"lut": {"seed": 0}}, {"device": "d"}, [source], {"d": {"version": "2"}})]
    source.write_text("v2")
    others.append(identity_of("code", {"lut": {"seed": 0}}, {"device": "d"}, [source], {"d": {"version": "1"}}))
    assert len({base, *others}) == 6


def test_resume_stamps_record_the_run_identity(tmp_path):
    assert resume_or_restart(tmp_path, "lut@dev", "one") is False
    assert resume_or_restart(tmp_path, "lut@dev", "one") is True
    assert resume_or_restart(tmp_path, "lut@dev", "two") is False
    assert resume_or_restart(tmp_path, "lut@dev", "two") is True


def test_a_stage_resume_stamp_changes_with_the_stages_code(tmp_path, monkeypatch):
    layout = stages.Layout(tmp_path)
    assert stages.resume_or_restart(layout, "lut@dev", {"lut": {"seed": 0}}) is False
    assert stages.resume_or_restart(layout, "lut@dev", {"lut": {"seed": 0}}) is True
    monkeypatch.setattr(code_identity, "stage_code_digest", lambda stage: "edited code")
    assert stages.resume_or_restart(layout, "lut@dev", {"lut": {"seed": 0}}) is False


def test_a_step_is_done_while_its_run_key_is_the_one_recorded(tmp_path):
    params = load_params(PROJECT_ROOT / "params.yaml")
    manifest = tmp_path / "dataset" / "manifest.parquet"
    step = stages.Step("dataset", "dataset", outputs=(manifest,))
    key = step_stamps.step_key(step, params, tmp_path)
    step_stamps.record_done(step, key, tmp_path)
    assert not step_stamps.is_done(step, params, tmp_path), "its output is missing"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("m")
    assert step_stamps.is_done(step, params, tmp_path)
    assert step_stamps.first_stale_step(params, tmp_path, [step]) is None
    changed = {**params, "dataset": {**params["dataset"], "seed": 12345}}
    assert not step_stamps.is_done(step, changed, tmp_path)
    assert step_stamps.first_stale_step(changed, tmp_path, [step]) == step
    other = {**params, "lut": {"changed": True}}  # a section the dataset stage does not read
    assert step_stamps.is_done(step, other, tmp_path)


def test_lut_commands_resume_by_their_run_records_not_by_file_times(tmp_path, capsys):
    from flows.cli_latency import _resume, _stamp
    from tasks.run_identity import finish_run

    work, out = tmp_path / "work", tmp_path / "lut.parquet"
    raw = work / "timings.parquet"
    raw.parent.mkdir(parents=True)
    raw.write_text("partial timings of a run nothing recorded")
    with pytest.raises(SystemExit, match="unfinished LUT build"):  # no record, no output: refuse to guess
        _resume(None, work, raw, out, "LUT build", "run-1")
    assert _resume(False, work, raw, out, "LUT build", "run-1") is False  # --no-resume: start over
    assert _resume(None, work, raw, out, "LUT build", "run-1") is True  # interrupted, same run: continue
    with pytest.raises(SystemExit, match="other settings"):
        _resume(None, work, raw, out, "LUT build", "run-2")
    finish_run(work, _stamp("LUT build"), "run-1")
    out.write_text("lut")
    raw.write_text("newer than the output, but the run finished")
    assert _resume(None, work, raw, out, "LUT build", "run-2") is False  # a finished run: start afresh
