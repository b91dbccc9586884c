"""Imports inside `lmlab/` run one way, low layer to high, with no cycles; nothing patches torch.

The layers, low to high (docs/LAYERS.md says why each module sits where it does). A module may
import modules of its own layer or of lower layers; same-layer imports must form no cycle.

| layer | modules                                                                             |
|-------|-------------------------------------------------------------------------------------|
| 0     | errors, paths, config, settings, runs, kernels, devices, linear_cross_entropy,      |
|       | packaged, and the `lmlab` package itself (its public names resolve lazily)          |
| 1     | model, cache, hooks                                                                 |
| 2     | families, tokenizers, weights                                                       |
| 3     | data, eval, generate, optim                                                         |
| 4     | train, peft, interp                                                                 |
| 5     | finetune, rl, steer, toy, sparse                                                    |
| 6     | recipes                                                                             |
| 7     | commands                                                                            |
| 8     | cli, __main__                                                                       |

Every import counts: module level, inside functions, `from . import x`, `if TYPE_CHECKING:`,
and a module named by a string in a file that calls `importlib.import_module` (plugin lists)
(a type-only import is still a dependency, so it obeys the order; it runs never, so it is left
out of the cycle check). `from lmlab import load` counts as an import of the module that
`lmlab/__init__.py` resolves `load` from.

Nothing in lmlab assigns to torch's attributes (`torch.nn.init.normal_ = ...`, `setattr(nn, ...)`):
that changes torch for every caller in the process. Skip work scoped instead (a torch-function
mode, the meta device). The one exception is `torch.backends.*` flags, settings torch documents.
"""

from __future__ import annotations

import ast
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1] / "lmlab"

LAYERS: list[tuple[str, ...]] = [
    (
        "lmlab",
        "lmlab.errors",
        "lmlab.paths",
        "lmlab.config",
        "lmlab.settings",
        "lmlab.runs",
        "lmlab.checkpoints",
        "lmlab.kernels",
        "lmlab.native",
        "lmlab.devices",
        "lmlab.linear_cross_entropy",
        "lmlab.packaged",
    ),
    ("lmlab.model", "lmlab.cache", "lmlab.hooks", "lmlab.quantized"),
    ("lmlab.families", "lmlab.tokenizers", "lmlab.weights"),
    ("lmlab.data", "lmlab.eval", "lmlab.generate", "lmlab.optim"),
    ("lmlab.train", "lmlab.peft", "lmlab.interp"),
    ("lmlab.finetune", "lmlab.rl", "lmlab.steer", "lmlab.toy", "lmlab.sparse"),
    ("lmlab.recipes",),
    ("lmlab.commands",),
    ("lmlab.cli", "lmlab.__main__"),
]


@dataclass(frozen=True)
class Import:
    """One import statement's target inside lmlab, where it is, and whether it ever runs."""

    importer: str
    target: str
    where: str  # `lmlab/x.py:12`
    runs: bool  # False under `if TYPE_CHECKING:`


def module_name(path: Path, root: Path = ROOT) -> str:
    """`lmlab/interp/heads.py` -> `lmlab.interp.heads`; a package's `__init__.py` -> the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def lazy_names(root: Path = ROOT) -> dict[str, str]:
    """`lmlab/__init__.py`'s `_LAZY` table: public name -> the module it is imported from."""
    tree = ast.parse((root / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return {}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers of statements inside `if TYPE_CHECKING:` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                lines.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    return lines


def imports_of(
    name: str, path: Path, modules: dict[str, Path], lazy: dict[str, str]
) -> list[Import]:
    """The lmlab modules that module `name` (file `path`) imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = _type_checking_lines(tree)
    rel = path.relative_to(path.parents[len(name.split(".")) - (path.name != "__init__.py")])
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.AST) -> None:
        if target == "lmlab" or target.startswith("lmlab."):
            found.append(
                Import(name, target, f"{rel}:{node.lineno}", node.lineno not in typing_only)
            )

    bare_root = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "lmlab":
                    bare_root = True
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    add(sub, node)
                elif source == "lmlab" and alias.name in lazy:
                    add(lazy[alias.name], node)
                else:
                    add(source, node)
    calls_import_module = any(
        isinstance(node, ast.Call)
        and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == "import_module"
        for node in ast.walk(tree)
    )
    if calls_import_module and name != "lmlab":  # imports by name: `import_module("lmlab.optim")`
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in modules:
                add(node.value, node)
    if bare_root:  # `import lmlab` then `lmlab.load(...)`: the use names the real dependency
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "lmlab"
                and node.attr in lazy
            ):
                add(lazy[node.attr], node)
    return found


def layer_of(module: str) -> int | None:
    """The layer index of a module: the layer listing it or its nearest enclosing package."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and (best is None or len(n) > best[0]):
                best = (len(n), i)
    return None if best is None else best[1]


def unit_of(module: str) -> str:
    """The top-level part of lmlab a module belongs to: `lmlab.weights.load` -> `lmlab.weights`."""
    return ".".join(module.split(".")[:2])


def import_graph(root: Path = ROOT) -> list[Import]:
    """Every import between lmlab modules in the package at `root`."""
    modules = all_modules(root)
    lazy = lazy_names(root)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules, lazy)]


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path `a, b, ..., a`) through each strongly connected group of `edges`."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm; the graphs are small, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in edges.get(v, ()):
                groups.append(group)

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return [_cycle_in(sorted(g), edges) for g in groups]


def _cycle_in(group: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the first node of a strongly connected group (breadth first)."""
    members, start = set(group), group[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges.get(v, ())):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start, start]


def order_violations(graph: list[Import]) -> list[str]:
    """Messages for imports of a higher layer, and for modules no layer lists."""
    problems = []
    for imp in graph:
        low, high = layer_of(imp.importer), layer_of(imp.target)
        if low is None or high is None:
            unknown = imp.importer if low is None else imp.target
            problems.append(
                f"{unknown} is in no layer: add it (or its package) to LAYERS in tests/test_layering.py "
                "and to docs/LAYERS.md"
            )
        elif high > low:
            problems.append(
                f"{imp.where}: {imp.importer} (layer {low}: {', '.join(LAYERS[low])}) imports "
                f"{imp.target} (layer {high}), which sits above it. Move the code it needs down to "
                f"layer {low} or below, or pass it in as an argument/callback from the caller"
            )
    return sorted(set(problems))


def cycle_violations(graph: list[Import]) -> list[str]:
    """Messages for import cycles between modules, and between top-level parts of lmlab."""
    runtime = [i for i in graph if i.runs]
    problems = []
    modules: dict[str, set[str]] = {}
    for imp in runtime:
        modules.setdefault(imp.importer, set()).add(imp.target)
    for cycle in find_cycles(modules):
        problems.append(
            f"import cycle between modules: {' -> '.join(cycle)}. Move what both need into a module "
            "that imports neither, or make one side stop importing the other"
        )
    units: dict[str, set[str]] = {}
    via: dict[tuple[str, str], Import] = {}
    for imp in runtime:
        a, b = unit_of(imp.importer), unit_of(imp.target)
        if a != b:
            units.setdefault(a, set()).add(b)
            via.setdefault((a, b), imp)
    for cycle in find_cycles(units):
        steps = [via[(a, b)] for a, b in itertools.pairwise(cycle)]
        detail = "; ".join(f"{s.where} {s.importer} imports {s.target}" for s in steps)
        problems.append(
            f"{' and '.join(sorted(set(cycle)))} import each other ({' -> '.join(cycle)}: {detail}). "
            "One of them must be the lower one: move the shared piece down so imports run one way"
        )
    return problems


def _torch_names(tree: ast.AST) -> set[str]:
    """Local names bound to torch or one of its submodules/attributes (`torch`, `nn`, `F`, `init`)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "torch" or a.name.startswith("torch."):
                    names.add(a.asname or a.name.split(".")[0])
        elif (
            isinstance(node, ast.ImportFrom)
            and not node.level
            and (node.module == "torch" or (node.module or "").startswith("torch."))
        ):
            names.update(a.asname or a.name for a in node.names)
    return names


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_backend_flag(target: ast.AST) -> bool:
    """`torch.backends.<x>.<flag> = value`: a setting torch documents for users to set, not a patch."""
    return ast.unparse(target).startswith("torch.backends.")


def torch_patches(path: Path, root: Path = ROOT) -> list[str]:
    """Assignments to torch's attributes (`torch.nn.init.normal_ = f`, `setattr(torch..., ...)`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(root.parent)
    torchy = _torch_names(tree)
    found = []
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("setattr", "delattr")
            and node.args
        ):
            if _root_name(node.args[0]) in torchy:
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
            continue
        while targets:
            t = targets.pop()
            if isinstance(t, ast.Tuple | ast.List | ast.Starred):
                targets.extend(t.elts if not isinstance(t, ast.Starred) else [t.value])
            elif (
                isinstance(t, ast.Attribute | ast.Subscript)
                and _root_name(t) in torchy
                and not _is_backend_flag(t)
            ):
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return found


# ------------------------------------------------------------------------------ the rules


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    """The import graph of lmlab/ as it is now."""
    return import_graph()


def test_every_module_is_in_a_layer(graph):
    missing = sorted(m for m in all_modules() if layer_of(m) is None)
    assert not missing, (
        f"modules in no layer: {missing}; add each (or its package) to LAYERS in "
        "tests/test_layering.py and docs/LAYERS.md"
    )


def test_imports_run_low_to_high(graph):
    problems = order_violations(graph)
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_no_import_cycles(graph):
    problems = cycle_violations(graph)
    assert not problems, "\n".join(problems)


def test_nothing_patches_torch():
    found = [hit for path in sorted(ROOT.rglob("*.py")) for hit in torch_patches(path)]
    assert not found, (
        "lmlab assigns to torch's attributes, which changes torch for the whole process:\n"
        + "\n".join(found)
        + "\nUse a scoped torch-function mode (see lmlab/weights/load.py `_SkipRandomInit`) or the "
        "meta device instead"
    )


def test_layers_doc_lists_every_layer():
    doc = (ROOT.parent / "docs" / "LAYERS.md").read_text()
    for names in LAYERS:
        for n in names:
            short = n.removeprefix("lmlab.") if n != "lmlab" else "lmlab"
            assert re.search(rf"\b{re.escape(short)}\b", doc), (
                f"docs/LAYERS.md does not mention {n}"
            )


# ------------------------------------------------------------------------------ the checker itself


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "lmlab"
    for rel, text in {"__init__.py": "_LAZY = {'load': 'lmlab.weights.load'}\n", **files}.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_checker_catches_planted_violations(tmp_path):
    root = _package(
        tmp_path,
        {
            "config.py": "",
            "model.py": "from lmlab.config import X\ndef f():\n    from lmlab.interp import lens\n",
            "weights/__init__.py": "",
            "weights/load.py": "from lmlab.tokenizers import load\n",
            "tokenizers/__init__.py": "from . import load\n",
            "tokenizers/load.py": "def g():\n    from lmlab.weights import load\n",
            "interp/__init__.py": "",
            "interp/lens.py": "import lmlab\nlmlab.load('x')\n",
            "interp/plug.py": "import importlib\nPLUGINS = ('lmlab.interp.lens', 'not lmlab')\n"
            "def p():\n    for m in PLUGINS:\n        importlib.import_module(m)\n",
            "interp/a.py": "from .b import y\n",
            "interp/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lmlab.interp.a import z\n"
            "def h():\n    from lmlab.interp import a\n",
        },
    )
    graph = import_graph(root)
    edges = {(i.importer, i.target) for i in graph}
    assert ("lmlab.interp.lens", "lmlab.weights.load") in edges  # lmlab.load resolved
    assert ("lmlab.interp.a", "lmlab.interp.b") in edges  # relative import resolved
    assert ("lmlab.tokenizers", "lmlab.tokenizers.load") in edges  # `from . import load`
    assert ("lmlab.interp.plug", "lmlab.interp.lens") in edges  # a plugin named by string
    order = order_violations(graph)
    assert len(order) == 1 and "lmlab/model.py:3" in order[0] and "lmlab.interp.lens" in order[0]
    cycles = cycle_violations(graph)
    assert any("lmlab.interp.a -> lmlab.interp.b -> lmlab.interp.a" in c for c in cycles), cycles
    assert any("lmlab.tokenizers and lmlab.weights import each other" in c for c in cycles), cycles


def test_checker_catches_torch_patching(tmp_path):
    root = _package(
        tmp_path,
        {
            "a.py": "import torch\ntorch.nn.init.normal_ = lambda t, *a: t\n",
            "b.py": "from torch.nn import init\nsetattr(init, 'zeros_', None)\n",
            "c.py": "import torch.nn.functional as F\nF.gelu.x = 1\n",
            "d.py": "import torch\nx = torch.nn.init.normal_\ny = {}\ny[torch.ones(1)] = 1\n"
            "torch.backends.cudnn.allow_tf32 = True\n",
            "e.py": "import torch as t\na, t.cat = 1, None\n",
            "f.py": "from torch import nn\nnn.Module.__call__ = None\n",
        },
    )
    hits = {p.name: torch_patches(p, root) for p in sorted(root.glob("*.py"))}
    assert hits["a.py"] and hits["b.py"] and hits["c.py"] and hits["e.py"] and hits["f.py"]
    assert not hits["d.py"]  # reading torch and assigning elsewhere is fine


def test_skeleton_skips_init_without_touching_torch():
    from lmlab.families import preset
    from lmlab.weights.load import _skeleton, _SkipRandomInit

    before = {n: getattr(torch.nn.init, n) for n in dir(torch.nn.init)}
    x = torch.zeros(4)
    with _SkipRandomInit():
        torch.nn.init.normal_(x)
        torch.nn.init.kaiming_uniform_(x.view(2, 2))
        x.uniform_()
    assert torch.equal(x, torch.zeros(4))  # random fills skipped inside the block
    torch.nn.init.normal_(x)
    assert not torch.equal(x, torch.zeros(4))  # and run again after it
    model = _skeleton(preset("llama-tiny"))
    assert {n: getattr(torch.nn.init, n) for n in dir(torch.nn.init)} == before
    inv = next(b for k, b in model.named_buffers() if k.startswith("rope_inv_freq_"))
    assert inv[0].item() == 1.0 and inv.dtype == torch.float32  # computed, not skipped
