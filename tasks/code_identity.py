"""What code a stage's result depends on, read from the import graph (no hand-kept lists).

A stage's code is the project source its entry point can reach:

1. in the module that defines the entry point, the entry function and what it reaches
   there (the module's functions, classes and constants it names, the module-level
   imports it uses, the imports inside those functions). The whole file is hashed,
   but only these imports are followed, so a file holding many stages (``tasks/stages.py``
   before its split) does not make a LUT depend on the training code;
2. every project module reached from there, whole: all its ``import`` statements,
   wherever they are in the file (``nas_core`` defers many imports into functions),
   relative imports and ``from package import module`` included, followed transitively;
3. the ``__init__.py`` of every package on the way (Python runs them), as files: their
   own imports are followed only when a name is imported from them.

``from package import name`` follows ``name`` to the module that defines it when the
package merely re-exports it (``from .lut import LutPaths`` in an ``__init__.py``), so
importing one name from a package does not pull in every module the package re-exports.

Only modules of the project's packages (``nas_core``, ``tasks``, ``flows``) count:
library code is pinned by the lock file, and benchmarks, scripts and tests are not
reached by any stage. It is static analysis with :mod:`ast`, nothing is imported, so it
is cheap (the parsed graph is memoised per file version) and sees deferred imports.
What it cannot see — a module run by name (``python -m``), ``importlib`` — a stage names
in ``StageInfo.code``.

The same file list is the code part of the stage's run identity (``tasks.run_identity``:
Prefect cache key, resume stamps, step stamps) and the code deps of the stage in
``dvc.yaml`` (``python -m tasks.dvc_code_deps --write`` rewrites them;
``tests/test_dvc.py`` fails when they drift), so what ``scan-edge status`` (``dvc
status``) compares.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tasks.run_identity import digest_of, file_sha256

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("nas_core", "tasks", "flows")


# --------------------------------------------------------------------------- modules and files
@functools.lru_cache(maxsize=None)
def module_file(name: str, root: Path = PROJECT_ROOT) -> Path | None:
    """The source file of project module ``name`` (``a/b.py`` or ``a/b/__init__.py``), or None
    (memoised: a run does not add or remove modules)."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name_of(path: Path, root: Path = PROJECT_ROOT) -> str:
    """``nas_core/latency/lut.py`` -> ``nas_core.latency.lut`` (``__init__.py`` -> the package)."""
    parts = list(Path(path).resolve().relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@functools.lru_cache(maxsize=None)
def _parse(path: Path, size: int, mtime_ns: int) -> ast.Module:
    """A file's syntax tree, memoised per version of the file (size + mtime)."""
    return ast.parse(path.read_bytes(), filename=str(path))


def parse(path: Path) -> ast.Module:
    stat = path.stat()
    return _parse(path, stat.st_size, stat.st_mtime_ns)


# --------------------------------------------------------------------------- resolving import statements
def _base_of(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` reads from (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _targets(node: ast.Import | ast.ImportFrom, module: str, root: Path) -> list[tuple[str, str | None]]:
    """What an import statement reads: ``(module, name)`` pairs, ``name`` None for a whole module."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names]
    base = _base_of(node, module, module_file(module, root) is not None
                    and module_file(module, root).name == "__init__.py")
    found = []
    for alias in node.names:
        if alias.name != "*" and module_file(f"{base}.{alias.name}", root) is not None:
            found.append((f"{base}.{alias.name}", None))  # `from package import module`
        else:
            found.append((base, None if alias.name == "*" else alias.name))
    return found


def _defining_module(module: str, name: str, root: Path, seen: frozenset = frozenset()) -> str:
    """The module that defines ``name`` when ``module`` only re-exports it (``from .x import name``)."""
    path = module_file(module, root)
    if path is None or (module, name) in seen:
        return module
    for node in parse(path).body:
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            original = next(a.name for a in node.names if (a.asname or a.name) == name)
            for target, attribute in _targets(ast.ImportFrom(module=node.module, names=[ast.alias(original)],
                                                             level=node.level), module, root):
                if module_file(target, root) is None:
                    return module  # re-exported from a library: the package's own file is what counts
                if attribute is None:
                    return target
                return _defining_module(target, attribute, root, seen | {(module, name)})
    return module


def resolve(node: ast.Import | ast.ImportFrom, module: str, root: Path = PROJECT_ROOT,
            only: str | None = None) -> set[str]:
    """The project modules one import statement in ``module`` makes this code depend on
    (``only``: just the alias that binds this name)."""
    if only is not None:
        node = _narrowed(node, only)
    found = set()
    for target, name in _targets(node, module, root):
        if module_file(target, root) is None:
            continue
        found.add(_defining_module(target, name, root) if name else target)
    return found


def _narrowed(node: ast.Import | ast.ImportFrom, bound: str) -> ast.Import | ast.ImportFrom:
    """The statement with only the alias that binds ``bound`` (``from x import a, b``: just ``a``)."""
    names = [a for a in node.names if (a.asname or a.name.split(".")[0]) == bound]
    if isinstance(node, ast.Import):
        return ast.Import(names=names)
    return ast.ImportFrom(module=node.module, names=names, level=node.level)


def _imports_in(tree: ast.AST, module: str, root: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= resolve(node, module, root)
    return found


def module_imports(module: str, root: Path = PROJECT_ROOT) -> set[str]:
    """Every project module ``module`` imports, anywhere in its file. Only the statements are
    memoised: what ``from package import name`` resolves to depends on the package's file too."""
    found: set[str] = set()
    for node in _import_statements(module_file(module, root)):
        found |= resolve(node, module, root)
    return found


def _import_statements(path: Path) -> list[ast.Import | ast.ImportFrom]:
    stat = path.stat()
    return _statements(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _statements(path: Path, size: int, mtime_ns: int) -> list[ast.Import | ast.ImportFrom]:
    return [node for node in ast.walk(parse(path)) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_closure(modules: Iterable[str], root: Path = PROJECT_ROOT) -> set[str]:
    """``modules`` and every project module they import, transitively."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen or module_file(module, root) is None:
            continue
        seen.add(module)
        todo.extend(module_imports(module, root))
    return seen


# --------------------------------------------------------------------------- what an entry point reaches in its module
def _top_level(tree: ast.Module) -> tuple[dict[str, ast.AST], dict[str, list[ast.AST]]]:
    """The module's definitions by name, and its module-level imports by the names they bind."""
    defs: dict[str, ast.AST] = {}
    imports: dict[str, list[ast.AST]] = {}
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        defs[name.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                imports.setdefault(bound, []).append(node)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):  # `if TYPE_CHECKING:`, `try: import x`
            todo.extend(ast.iter_child_nodes(node))
    return defs, imports


@dataclasses.dataclass(frozen=True)
class EntryPoint:
    """Where a stage's function is defined: its file, module, name and first line (None: the
    first ``def`` of that name). :func:`entry_point` makes one from a function."""

    file: Path
    module: str
    name: str
    line: int | None = None


def entry_point(function: Callable | EntryPoint) -> EntryPoint:
    if isinstance(function, EntryPoint):
        return function
    if isinstance(getattr(function, "entry_point", None), EntryPoint):  # named, not imported (stages.registry)
        return function.entry_point
    return EntryPoint(Path(inspect.getsourcefile(function)).resolve(), function.__module__, function.__name__,
                      function.__code__.co_firstlineno)


def _entry_node(tree: ast.Module, entry: EntryPoint) -> ast.AST | None:
    """The ``def`` of the entry point in its module's tree (by line: nested functions too)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry.name \
                and (entry.line is None or entry.line in (node.lineno, *(d.lineno for d in node.decorator_list))):
            return node
    return None


def _walk(node: ast.AST, methods: list[ast.AST]) -> Iterable[ast.AST]:
    """``ast.walk`` that leaves the methods of classes out, putting them in ``methods``: a
    class is reached whole but a method only when something names it (``Layout.lut_paths``
    pulls the LUT code into the stages that ask for LUT paths, not into every stage)."""
    todo = [node]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.ClassDef) and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                methods.append(child)
            else:
                todo.append(child)


def _named(method: ast.AST, attributes: set[str]) -> bool:
    name = method.name
    return (name.startswith("__") and name.endswith("__")) or name in attributes


def entry_imports(function: Callable | EntryPoint, root: Path = PROJECT_ROOT) -> tuple[Path, set[str]]:
    """The file defining ``function`` and the project modules the function reaches from it:
    its own imports and those of the definitions of that file it names (functions,
    classes, constants; a method when its name is used as an attribute), transitively."""
    where = entry_point(function)
    path, module = where.file, where.module
    tree = parse(path)
    entry = _entry_node(tree, where)
    if entry is None:  # not found (generated code): the whole file counts
        return path, _imports_in(tree, module, root)
    defs, imports = _top_level(tree)
    found: set[str] = set()
    attributes: set[str] = set()
    methods: list[ast.AST] = []
    reached, todo = {id(entry)}, [entry]
    while todo:
        for node in _walk(todo.pop(), methods):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found |= resolve(node, module, root)
            elif isinstance(node, ast.Attribute):
                attributes.add(node.attr)
            elif isinstance(node, ast.Name):
                for statement in imports.get(node.id, ()):
                    found |= resolve(statement, module, root, only=node.id)
                target = defs.get(node.id)
                if target is not None and id(target) not in reached:
                    reached.add(id(target))
                    todo.append(target)
        if not todo:  # methods named by now (a method may name further ones: loop again)
            unlocked = [m for m in methods if id(m) not in reached and _named(m, attributes)]
            reached.update(id(m) for m in unlocked)
            todo.extend(unlocked)
    return path, found


# --------------------------------------------------------------------------- a stage's code
def code_files(function: Callable | EntryPoint, extra_modules: Iterable[str] = (), root: Path = PROJECT_ROOT) -> list[Path]:
    """Every project file ``function``'s result depends on: its own file, the closure of
    the modules it reaches, the ``extra_modules`` (and theirs), and their packages' ``__init__.py``."""
    entry_file, reached = entry_imports(function, root)
    modules = import_closure([*reached, *extra_modules], root)
    modules |= {parent for module in modules for parent in _parents(module)}
    if entry_file.is_relative_to(root):
        modules |= set(_parents(module_name_of(entry_file, root)))
    files = {module_file(m, root) for m in modules} | {entry_file}
    return sorted(f for f in files if f is not None)


def relative_name(file: Path, root: Path = PROJECT_ROOT) -> str:
    """A path relative to the project (how ``dvc.yaml`` names it), in posix form."""
    file = Path(file).resolve()
    return file.relative_to(root).as_posix() if file.is_relative_to(root) else str(file)


def files_digest(files: Iterable[Path], root: Path = PROJECT_ROOT) -> str:
    """Digest of (project-relative path, content sha256) of each file: the same on every checkout."""
    named = {relative_name(f, root): f for f in files}
    return digest_of([(name, file_sha256(named[name])) for name in sorted(named)])


def code_digest(function: Callable | EntryPoint, extra_modules: Iterable[str] = (), sections: Iterable[str] = (),
                root: Path = PROJECT_ROOT) -> str:
    """A stage's code identity: the content of its code files and the params sections it reads."""
    return digest_of({"files": files_digest(code_files(function, extra_modules, root), root),
                      "sections": list(sections)})


# The stage registry (``tasks.stages.STAGES``: name -> StageInfo), registered by it. A stage
# asks for its own code digest (for its resume stamp) through here: naming the registry
# itself would make every stage's code reach every other stage.
_registry: Mapping[str, Any] = {}


def register_stages(stages: Mapping[str, Any]) -> None:
    """Make ``stages`` (the registry dict itself, so later replacements count) the one
    :func:`stage_code_digest` reads."""
    global _registry
    _registry = stages


def stage_code_digest(stage: str) -> str:
    """The code digest of registered stage ``stage`` (``""`` for a name the registry lacks)."""
    info = _registry.get(stage)
    return info.code_digest() if info is not None else ""
