"""Model families as modules: the weight drivers name no family, and the registries round-trip."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest
import torch

from lmlab.config import Config, ConfigError
from lmlab.families import (
    FAMILIES,
    Family,
    family_for_gguf,
    family_for_hf,
    family_of,
    get_family,
    preset,
    presets,
    register_family,
)
from lmlab.model import Transformer
from lmlab.weights.export import check_exportable, exportable_families
from lmlab.weights.hf import hf_renames, hf_to_lmlab, lmlab_to_hf

ROOT = Path(__file__).resolve().parents[1] / "lmlab"

# Family names and their HF model_type / GGUF architecture spellings, as whole words
# (`rmsnorm_gemma` or `llama3` are knob values, one identifier each, and do not count).
FAMILY_WORD = re.compile(
    r"(?<![A-Za-z0-9_])(gpt2|llama|mistral|gemma[23]?|gpt[_-]oss|bert|qwen[23]|phi3|olmo2|smollm2?)"
    r"(?![A-Za-z0-9_])",
    re.IGNORECASE,
)
# the names of llama.cpp's tools are not the family
TOOL_NAMES = re.compile(r"llama[.-](cpp|quantize)", re.IGNORECASE)


def driver_files() -> list[Path]:
    """The files that must know no family: the model, the weight drivers and PEFT."""
    files = [ROOT / "model.py", *sorted((ROOT / "weights").glob("*.py"))]
    return files + sorted((ROOT / "peft").glob("*.py"))


def _docstring_starts(tree: ast.AST) -> set[tuple[int, int]]:
    """(line, col) of every module, class and function docstring."""
    starts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                starts.add((body[0].lineno, body[0].col_offset))
    return starts


def family_names_in(source: str) -> list[tuple[int, str]]:
    """(line, word) of every family name in the code of `source`: comments and docstrings excluded."""
    docstrings = _docstring_starts(ast.parse(source))
    hits = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT or (
            tok.type == tokenize.STRING and tok.start in docstrings
        ):
            continue
        if tok.type in (tokenize.NAME, tokenize.STRING) or tok.type == getattr(
            tokenize, "FSTRING_MIDDLE", -1
        ):
            text = TOOL_NAMES.sub("", tok.string)
            hits += [(tok.start[0], m.group(0)) for m in FAMILY_WORD.finditer(text)]
    return hits


def test_the_scan_finds_a_planted_family_name_in_code_only() -> None:
    clean = '"""Llama and GPT-2 weights."""\n# gemma3: later\ndef f(cfg):\n    """For bert."""\n    return cfg.norm == "rmsnorm_gemma"\n'
    assert family_names_in(clean) == []
    assert family_names_in(clean + 'if cfg.family == "llama":\n    pass\n') == [(6, "llama")]
    assert family_names_in("x = 'see llama.cpp'\ny = f'{n} Qwen3 rows'\n") == [(2, "Qwen3")]
    assert family_names_in("is_gpt_oss = arch == 'gpt-oss'\n") == [(1, "gpt-oss")]


@pytest.mark.parametrize("path", driver_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_family_name_in_the_model_weight_drivers_and_peft(path: Path) -> None:
    hits = family_names_in(path.read_text(encoding="utf-8"))
    assert not hits, (
        f"{path.relative_to(ROOT)} names model families {hits}: move that knowledge into the "
        "family's module in lmlab/families/ and call it through the Family interface"
    )


# ---------------------------------------------------------------------- registries


@pytest.mark.parametrize("name", presets())
def test_every_preset_names_a_registered_family(name: str) -> None:
    cfg = preset(name)
    assert cfg.family in FAMILIES, f"preset {name} has unregistered family {cfg.family!r}"
    assert family_of(cfg) is FAMILIES[cfg.family]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_hf_and_gguf_lookups_give_the_family_back(name: str) -> None:
    family = get_family(name)
    assert family.name == name and family.hf_model_types, f"{name} reads no HF model_type"
    for mt in family.hf_model_types:
        assert family_for_hf(mt) is family
    for arch in family.gguf_archs:
        assert family_for_gguf(arch) is family


def test_unknown_names_are_clear_errors() -> None:
    with pytest.raises(
        ConfigError, match=r"model_type 'nonesuch' is not supported; supported: .*llama"
    ):
        family_for_hf("nonesuch")
    with pytest.raises(ConfigError, match=r"GGUF architecture 'nonesuch' is not supported"):
        family_for_gguf("nonesuch")
    with pytest.raises(ConfigError, match=r"Config.family='lama' is not a registered .*'llama'"):
        family_of(Config(family="lama"))


def test_a_second_family_cannot_claim_a_model_type() -> None:
    class Impostor(Family):
        name = "impostor"
        hf_model_types = ("llama",)

        def config_from_hf(self, hf, name):
            return Config(name=name, family=self.name)

        def hf_renames(self, cfg):
            return {}

    with pytest.raises(ConfigError, match=r"claims HF model_type 'llama', already registered"):
        register_family(Impostor())
    assert "impostor" not in FAMILIES and family_for_hf("llama").name == "llama"

    class NoReader(Impostor):
        name = "no-reader"
        hf_model_types = ("no_reader",)
        gguf_archs = ("no_reader",)

    with pytest.raises(ConfigError, match=r"lists GGUF architectures \['no_reader'\] but does not"):
        register_family(NoReader())
    assert "no-reader" not in FAMILIES


def _fits_overridden(family: Family) -> bool:
    return type(family).fits is not Family.fits


@pytest.mark.parametrize("name", [n for n in presets() if _fits_overridden(family_of(preset(n)))])
def test_configs_saved_without_a_family_get_it_from_their_knobs(name: str) -> None:
    d = preset(name).to_dict()
    del d["family"]  # as a checkpoint written before configs named their family
    old = Config.from_dict(d)
    assert family_of(old).name == preset(name).family


def test_a_config_no_family_fits_asks_for_one() -> None:
    odd = Config(norm="rmsnorm", positions="learned", causal=False)
    with pytest.raises(ConfigError, match=r"no family fits its knobs; set Config.family"):
        family_of(odd)


def _tiny(family: str) -> list[str]:
    return [n for n in presets() if n.endswith("-tiny") and preset(n).family == family]


TINY = [n for f in sorted(FAMILIES) for n in _tiny(f)]


@pytest.mark.parametrize("name", TINY)
def test_hf_tensor_names_round_trip(name: str) -> None:
    torch.manual_seed(0)
    cfg = preset(name)
    sd = Transformer(cfg).state_dict()
    if cfg.tie_embeddings:
        sd.pop("unembed.weight")
    renames = hf_renames(cfg)
    assert len(set(renames.values())) == len(renames), "two HF names map to one lmlab tensor"
    back = hf_to_lmlab(lmlab_to_hf(sd, cfg), cfg)
    assert sorted(back) == sorted(sd)
    for k, v in sd.items():
        assert torch.equal(back[k], v), f"{name}: {k} changed on the way to HF and back"


@pytest.mark.parametrize("name", [n for n in TINY if preset(n).family in exportable_families()])
def test_exported_hf_config_reads_back_as_the_same_config(name: str) -> None:
    cfg = preset(name)
    hf = check_exportable(cfg)  # raises if a knob is lost on the way
    assert family_for_hf(hf["model_type"]) is family_of(cfg)


def test_the_five_original_families_are_modules() -> None:
    for name, mt in (
        ("gpt2", "gpt2"),
        ("llama", "llama"),
        ("mistral", "mistral"),
        ("gemma3", "gemma3_text"),
        ("gpt-oss", "gpt_oss"),
        ("bert", "bert"),
    ):
        assert family_for_hf(mt).name == name
        assert _tiny(name), f"{name} has no -tiny preset"
