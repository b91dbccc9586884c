"""Export to the Hugging Face layout: transformers' `AutoModelForCausalLM.from_pretrained` loads
the folder and its float32 logits equal ours to 1e-5 (GPT-2 and Llama families here; every family
in tests/test_families_hf.py)."""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.cli import main as cli_main
from lmlab.config import Config
from lmlab.families import preset
from lmlab.model import Transformer
from lmlab.weights.errors import WeightsError
from lmlab.weights.export import export_hf

transformers = pytest.importorskip("transformers")
TOL = 1e-5


def _random(name: str, **overrides) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(preset(name, **overrides))
    with torch.no_grad():  # norms and biases too, so a mis-mapped one shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("gpt2-tiny", {}),
        ("llama-tiny", {}),
        ("llama-tiny", {"tie_embeddings": True, "rope_theta": 500000.0}),
        (
            "llama-tiny",
            {"rope_scaling": "llama3", "rope_factor": 8.0, "rope_original_max_seq_len": 32},
        ),
        ("mistral-tiny", {}),
    ],
    ids=["gpt2", "llama", "llama-tied", "llama3-rope", "mistral"],
)
def test_transformers_loads_export_with_equal_logits(tmp_path, name: str, overrides: dict) -> None:
    model = _random(name, **overrides)
    export_hf(model, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    hf.eval()
    tokens = torch.randint(0, model.cfg.vocab_size, (2, 40))
    with torch.no_grad():
        diff = (model(tokens) - hf(tokens).logits).abs().max().item()
    assert diff <= TOL, f"{name}: max |logit diff| = {diff:.2e}"
    # and back: the exported folder loads into lmlab as the same network
    again, _ = lmlab.load(tmp_path / "hf")
    with torch.no_grad():
        assert torch.equal(again(tokens), model(tokens))


def test_inexpressible_knobs_are_an_error(tmp_path) -> None:
    with pytest.raises(WeightsError, match=r"cannot express residual_scale=0.5"):
        export_hf(_random("llama-tiny", residual_scale=0.5), tmp_path / "a")
    odd = Transformer(Config(norm="rmsnorm", positions="learned", causal=False))  # no family
    with pytest.raises(WeightsError, match=r"no family fits its knobs.*--format lmlab"):
        export_hf(odd, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_export(tmp_path, capsys) -> None:
    assert cli_main(["export", "llama-tiny", str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "out" / "model.safetensors").is_file()
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert cli_main(["export", "llama-tiny", str(tmp_path / "ck"), "--format", "lmlab"]) == 0
    assert lmlab.load(tmp_path / "ck")[0].cfg.name == "llama-tiny"
    assert cli_main(["export", "lama-tiny", str(tmp_path / "x")]) == 2
    assert "Did you mean 'llama-tiny'" in capsys.readouterr().err
    # a second export into the same folder asks first, then replaces only its own files
    (tmp_path / "out" / "README.md").write_text("mine")
    assert cli_main(["export", "gpt2-tiny", str(tmp_path / "out")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["export", "gpt2-tiny", str(tmp_path / "out"), "--overwrite"]) == 0
    assert lmlab.load(tmp_path / "out")[0].cfg.family == "gpt2"
    assert (tmp_path / "out" / "README.md").read_text() == "mine"
