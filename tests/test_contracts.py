"""The layout's contracts (docs/ARCHITECTURE.md, "Import rules"), checked on the source text with `ast`, plus a
subprocess import check for the torch-free modules.

- `workers/` never imports `orchestrator` or `db`; `db/` never imports `orchestrator` or `workers`;
- only `cli.py` imports `click`;
- the orchestrator reaches workers only through `workers.trainable` and `workers.catalog`;
- `orchestrator.plan` (every module of it) and `workers.trainable` import no torch at module load;
- no private name (`_name`) crosses modules: no `from rtgrid_module import _name`, no
  `rtgrid_module._name` (or `getattr(rtgrid_module, "_name")`) in another module.

Every import counts, module-level or inside a function. A failure names each offending file:line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "workers", "db", "migrations")
RTGRID_TOPS = frozenset({*PACKAGES, "cli"})
# The source tree: the packages, cli.py and the benchmark scripts (tests are not part of it).
SOURCE_DIRS = (*PACKAGES, "bench")
ORCHESTRATOR_DOORS = frozenset({"workers.trainable", "workers.catalog"})


def _source_files() -> list[Path]:
    files = [ROOT / "cli.py"]
    for folder in SOURCE_DIRS:
        files.extend(sorted((ROOT / folder).rglob("*.py")))
    return files


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _site(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str  # absolute dotted module imported (for `from M import n`: M)
    names: tuple[str, ...]  # for `from M import a, b`: ("a", "b"); () for `import M`

    @property
    def site(self) -> str:
        return _site(self.path, self.line)

    def targets(self) -> Iterator[str]:
        """What the statement may reach: M, and M.n for each `from M import n` (n may be a submodule)."""
        yield self.module
        for name in self.names:
            yield f"{self.module}.{name}"


def _resolve(path: Path, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    package = _module_name(path).split(".")
    if not _is_package(path):
        package = package[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, module] if module else base)


PROBES: dict[Path, str] = {}  # pretend source files of the tests that check the checks


@cache
def _tree(path: Path) -> ast.Module:
    source = PROBES[path] if path in PROBES else path.read_text(encoding="utf-8")
    return ast.parse(source, filename=str(path))


def _probe(source: str) -> Path:
    """A pretend orchestrator/ module holding `source` (never written to disk)."""
    path = ROOT / "orchestrator" / f"_contract_probe_{len(PROBES)}.py"
    PROBES[path] = source
    return path


@cache
def _imports(path: Path) -> tuple[Import, ...]:
    found: list[Import] = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found.extend(Import(path, node.lineno, alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(path, node.module, node.level)
            found.append(Import(path, node.lineno, module, tuple(alias.name for alias in node.names)))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            found.append(Import(path, node.lineno, node.args[0].value, ()))
    return tuple(found)


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _under(path: Path, folder: str) -> bool:
    return path.relative_to(ROOT).parts[0] == folder


def _violations(folder: str, forbidden: set[str]) -> list[str]:
    return [f"{imp.site} imports {imp.module}" for path in _source_files() if _under(path, folder)
            for imp in _imports(path) if _top(imp.module) in forbidden]


def test_the_source_tree_is_found() -> None:
    files = {_module_name(p) for p in _source_files()}
    assert {"cli", "workers.trainable", "db.session", "orchestrator.plan"} <= files
    assert any(imp.module == "db.session" for imp in _imports(ROOT / "orchestrator" / "console" / "store.py"))


def test_workers_never_import_orchestrator_or_db() -> None:
    bad = _violations("workers", {"orchestrator", "db"})
    assert not bad, "workers/ must not import orchestrator or db:\n" + "\n".join(bad)


def test_db_never_imports_orchestrator_or_workers() -> None:
    bad = _violations("db", {"orchestrator", "workers"})
    assert not bad, "db/ must not import orchestrator or workers:\n" + "\n".join(bad)


def test_cli_reaches_only_the_orchestrator() -> None:
    """cli -> orchestrator -> db: the CLI parses and prints; what it needs of db or workers comes through the API."""
    cli = ROOT / "cli.py"
    bad = [f"{imp.site} imports {imp.module}" for imp in _imports(cli) if _top(imp.module) in {"db", "workers"}]
    assert any(_top(imp.module) == "orchestrator" for imp in _imports(cli)), "the check no longer sees cli.py's imports"
    assert not bad, "cli.py must reach db and workers through orchestrator:\n" + "\n".join(bad)


def test_only_cli_imports_click() -> None:
    bad = [f"{imp.site} imports {imp.module}" for path in _source_files() if path != ROOT / "cli.py"
           for imp in _imports(path) if _top(imp.module) == "click"]
    assert not bad, "only cli.py may import click:\n" + "\n".join(bad)


def _workers_door_violations(path: Path) -> Iterator[str]:
    for imp in _imports(path):
        if _top(imp.module) != "workers":
            continue
        if imp.module == "workers" and imp.names:  # from workers import trainable, models
            reached = [f"workers.{name}" for name in imp.names]
        else:  # import workers.x.y / from workers.x import y
            reached = [".".join(imp.module.split(".")[:2])]
        for module in reached:
            if module not in ORCHESTRATOR_DOORS:
                yield f"{imp.site} imports {module}"


def test_orchestrator_reaches_workers_only_through_its_doors() -> None:
    bad = [line for path in _source_files() if _under(path, "orchestrator") for line in _workers_door_violations(path)]
    assert not bad, f"orchestrator/ may import only {sorted(ORCHESTRATOR_DOORS)} of workers:\n" + "\n".join(bad)


def test_the_door_check_names_the_offending_line() -> None:
    """The check itself: imports of workers.models / workers.data are caught, each with its file:line."""
    probe = _probe("from workers.trainable import execute\nimport workers.catalog\n\n"
                   "def f():\n    from workers import models, catalog\n    import workers.data.loaders\n")
    name = probe.relative_to(ROOT)
    assert list(_workers_door_violations(probe)) == [f"{name}:5 imports workers.models",
                                                      f"{name}:6 imports workers.data"]


# --- torch-free modules ----------------------------------------------------------------------------


def _modules_loaded_by(code: str) -> list[str]:
    probe = code + "\nimport sys\nprint(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().splitlines()[-1])  # a printed list of str


def test_the_torch_probe_sees_torch() -> None:
    assert "torch" in _modules_loaded_by("import workers.models")


def test_orchestrator_plan_imports_no_torch() -> None:
    code = ("import importlib, pkgutil, orchestrator.plan as plan\n"
            "names = [m.name for m in pkgutil.walk_packages(plan.__path__, 'orchestrator.plan.')]\n"
            "assert names, 'no modules found under orchestrator.plan'\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n")
    assert _modules_loaded_by(code) == []


def test_workers_trainable_imports_no_torch() -> None:
    assert _modules_loaded_by("import workers.trainable") == []


# --- private names ---------------------------------------------------------------------------------


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_file(module: str) -> Path | None:
    """The source file of an rtgrid module, None when `module` is not one (a class, a function, …)."""
    if _top(module) not in RTGRID_TOPS:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_aliases(path: Path) -> dict[str, str]:
    """Local name -> rtgrid module it is bound to by an import in this file (`import a.b` binds `a`)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(path, node.module, node.level)
            for alias in node.names:
                if _module_file(f"{module}.{alias.name}") is not None:
                    aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
    return {name: module for name, module in aliases.items() if _module_file(module) is not None}


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _private_crossings(path: Path) -> list[str]:
    """`file:line imports|uses module._name` for each private name of another rtgrid module used here."""
    here = _module_name(path)
    sites: set[str] = set()
    for imp in _imports(path):
        if imp.module == here or _module_file(imp.module) is None:
            continue
        for name in imp.names:
            if _is_private(name):
                sites.add(f"{imp.site} imports {imp.module}.{name}")
        if not imp.names and any(_is_private(part) for part in imp.module.split(".")):
            sites.add(f"{imp.site} imports {imp.module}")
    aliases = _module_aliases(path)
    for node in ast.walk(_tree(path)):
        chain: list[str] | None = None
        if isinstance(node, ast.Attribute):  # inner links of a chain are seen too: the set keeps one site
            chain = _dotted(node)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            base = _dotted(node.args[0])
            chain = None if base is None else [*base, node.args[1].value]
        if not chain or chain[0] not in aliases:
            continue
        module = aliases[chain[0]]
        for attr in chain[1:]:  # walk down the modules; the first non-module name is the accessed one
            if _module_file(f"{module}.{attr}") is not None and not _is_private(attr):
                module = f"{module}.{attr}"
                continue
            if _is_private(attr) and module != here:
                sites.add(f"{_site(path, node.lineno)} uses {module}.{attr}")
            break
    return sorted(sites)


def _all_private_crossings() -> list[str]:
    return [site for path in _source_files() for site in _private_crossings(path)]


def test_the_private_name_check_sees_every_form() -> None:
    probe = _probe("import db.session\nfrom db.session import _parse, safe_url\nfrom orchestrator.results import "
                   "reports\nimport orchestrator.results.query as q\n\ndef f():\n"
                   "    return db.session._x.y, reports._labels(1), getattr(db.session, '_y'), q._one_line, q.format\n")
    name = probe.relative_to(ROOT)
    assert _private_crossings(probe) == [
        f"{name}:2 imports db.session._parse",
        f"{name}:7 uses db.session._x",
        f"{name}:7 uses db.session._y",
        f"{name}:7 uses orchestrator.results.query._one_line",
        f"{name}:7 uses orchestrator.results.reports._labels",
    ]


def test_no_private_name_crosses_modules() -> None:
    sites = _all_private_crossings()
    assert not sites, "private names used outside their module:\n" + "\n".join(sites)


def test_schema_enums_agree_with_the_workers() -> None:
    """db cannot import workers (the import rules), so the CHECKed value lists are compared here."""
    from db import models
    from workers import catalog, metrics

    assert models.KINDS == catalog.KINDS
    assert models.TRANSFORMS == metrics.TRANSFORMS
