"""The shape of the code (docs/ARCHITECTURE.md): no import cycle among the modules of gcnet/ and python_layers/
(function-local imports included), no module of them over 400 lines, one helper puts the repository on sys.path
for the tools, the picture names every module.  No Caffe."""
import ast
import re
from pathlib import Path
from typing import Dict, List, Set

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def module_files(root: Path, packages=("gcnet", "python_layers")) -> Dict[str, Path]:
    """{dotted module name: file} of the packages (python_layers/ is on PYTHONPATH: its modules are top level)."""
    out = {}
    for pkg in packages:
        for p in sorted((root / pkg).rglob("*.py")):
            parts = list(p.relative_to(root).with_suffix("").parts)
            if pkg == "python_layers":
                parts = parts[1:]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def import_graph(mods: Dict[str, Path]) -> Dict[str, Set[str]]:
    """{module: the modules of `mods` it imports}, every import statement of the file counted (those inside
    functions too).  `from pkg import name` is an edge to pkg.name when that is a module, else to pkg."""
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base + "." + a.name if base + "." + a.name in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:          # gcnet.config.X -> gcnet.config
                    t = t.rpartition(".")[0]
                if t and t != m:
                    graph[m].add(t)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_function_local_imports(tmp_path):
    """The check itself: a cycle closed by an import inside a function is found, a one-way import is not."""
    pkg = tmp_path / "gcnet"
    (pkg / "sub").mkdir(parents=True)
    (tmp_path / "python_layers").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "top.py").write_text("from gcnet.sub import low\n")
    (pkg / "sub" / "low.py").write_text("def f():\n    from gcnet import top\n")
    (pkg / "sub" / "leaf.py").write_text("from . import low\n")
    (tmp_path / "python_layers" / "layer.py").write_text("import gcnet.sub.leaf\n")
    assert cycles(import_graph(module_files(tmp_path))) == [["gcnet.sub.low", "gcnet.top"]]
    (pkg / "sub" / "low.py").write_text("def f():\n    import json\n")
    assert cycles(import_graph(module_files(tmp_path))) == []


def test_no_import_cycle():
    mods = module_files(REPO)
    assert "gcnet.experiment.cli" in mods and "gcnet_layers" in mods
    graph = import_graph(mods)
    assert "gcnet.experiment.pipeline" in graph["gcnet.experiment.cli"]      # main's function-local import
    assert cycles(graph) == []
    # the settings are the bottom of the runner: they import none of its other modules but procs
    assert {m for m in graph["gcnet.experiment.settings"] if m.startswith("gcnet.experiment")} == {
        "gcnet.experiment.procs"}


def test_no_module_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in module_files(REPO).values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_one_helper_puts_the_repository_on_sys_path():
    """Only tools/_repo.py edits sys.path; every Python tool that imports gcnet imports it first."""
    edit = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\s*(\[.*\])?\s*[+]?=")
    tools = sorted((REPO / "tools").glob("*.py"))
    assert [p.name for p in tools if edit.search(p.read_text()) and p.name != "_repo.py"] == []
    for p in tools:
        lines = p.read_text().splitlines()
        first = next((i for i, s in enumerate(lines) if re.match(r"\s*(from|import) gcnet\b", s)), None)
        if first is not None:
            assert any(re.match(r"(from _repo import|import _repo)", s) for s in lines[:first]), p.name


def test_the_picture_matches_the_code():
    """docs/ARCHITECTURE.md: its picture names every module of gcnet/ and python_layers/ and only files that exist;
    each arrow of the runner's import order is an import of the code."""
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    picture = doc.split("```")[1]
    mods = module_files(REPO)
    assert [m for m, p in mods.items() if (p.parent.name if p.stem == "__init__" else p.stem) not in picture] == []
    named = set(re.findall(r"([\w/]+)\.(?:py|c)\b", picture))
    assert [n for n in named if not list(REPO.glob("**/%s.*" % n.split("/")[-1]))] == []
    order = re.search(r"tests/test_architecture.py\):\n(.*?)\(", doc, re.S).group(1)
    graph, arrows = import_graph(mods), 0
    for part in order.replace("\n", " ").split(";"):
        steps = [[m.strip() for m in s.split(",")] for s in part.split("->")]
        for sources, targets in zip(steps, steps[1:]):
            for a in sources:
                for b in targets:
                    assert "gcnet.experiment." + b in graph["gcnet.experiment." + a], (a, b)
                    arrows += 1
    assert arrows >= 10
