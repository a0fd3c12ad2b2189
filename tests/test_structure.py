"""The shape of the code, read from the source with ast (nothing is imported): no import loops,
nothing of evaluation or reporting depends on training, backends stay free of the CLI's
libraries, and no module grows past the size one reads in a sitting."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sgtool"
MAX_LINES = 400


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """'sgtool.evaluate.mask_eval' -> its file, for every module of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The sgtool modules `name` imports, at module level or inside functions alike: `from . import
    x` names the submodule x where there is one, else the package."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "sgtool"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "sgtool":
                continue
            subs = {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known}
            out |= subs if subs and len(subs) == len(node.names) else subs | {mod}
    return {m for m in out if m in known and m != name}


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_cycle_check_sees_a_cycle(tmp_path):
    pkg = tmp_path / "sgtool"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")  # inside a function: still a loop
    assert cycles(graph(pkg)) == [["sgtool.a", "sgtool.sub.b"]]


def _reaches(g, start: str, target: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m == target:
            return True
        if m not in seen:
            seen.add(m)
            todo += g[m]
    return False


def test_evaluation_and_reports_do_not_depend_on_training():
    g = graph()
    for name in g:
        if name.startswith(("sgtool.evaluate", "sgtool.report")):
            assert "sgtool.train" not in g[name], f"{name} imports sgtool.train"
            assert not _reaches(g, name, "sgtool.train"), f"{name} reaches sgtool.train"


@pytest.mark.parametrize("library", ["typer", "rich"])
def test_backends_never_import_the_cli_libraries(library):
    for name, path in modules().items():
        if name.startswith("sgtool.cli"):
            continue
        tree = ast.parse(path.read_text())
        found = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                 and any((getattr(n, "module", None) or a.name).split(".")[0] == library for a in n.names)]
        assert not found, f"{name} imports {library}"


def test_no_module_is_longer_than_one_reads_in_a_sitting():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
