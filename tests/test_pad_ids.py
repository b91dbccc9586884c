"""Left-padded generation works for every preset, whatever its pad id (GPT-OSS's 199999 included)."""

from __future__ import annotations

import pytest
import torch

from lmlab.config import Config
from lmlab.families import PRESETS, preset
from lmlab.generate import generate
from lmlab.model import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

ENCODERS = [n for n in PRESETS if not preset(n).causal or not preset(n).lm_head]
DECODERS = [n for n in PRESETS if n not in ENCODERS]
PROMPTS = [[5, 9, 17, 3, 11, 8, 2], [7, 4, 6]]  # the second row is left-padded with 4 pads


def small(name: str, **overrides) -> Config:
    """The preset at test size: its family's knobs and special ids, a 512-word vocabulary."""
    cfg = preset(name)
    ratio = min(cfg.n_heads // cfg.n_kv_heads, 4)
    changes = dict(vocab_size=min(cfg.vocab_size, 512), d_model=64, n_layers=2, n_heads=4,
                   n_kv_heads=4 // ratio, head_dim=16, d_ff=96, max_seq_len=64)  # fmt: skip
    if cfg.attn_scale is not None:
        changes["attn_scale"] = 16**-0.5
    if cfg.n_experts:
        changes.update(n_experts=4, top_k=2)
    if cfg.sliding_window:
        changes["sliding_window"] = 4  # shorter than the prompts: the window is exercised
    if cfg.rope_original_max_seq_len:
        changes["rope_original_max_seq_len"] = 32
    return cfg.replace(**{**changes, **overrides})


def model_for(cfg: Config) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # larger weights than init: decisive, seed-specific greedy choices
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_every_preset_has_an_in_vocabulary_pad_slot():
    for name in PRESETS:
        cfg = small(name)
        assert 0 <= cfg.pad_id < cfg.vocab_size, name
        if cfg.pad_token_id is not None and cfg.pad_token_id < cfg.vocab_size:
            assert cfg.pad_id == cfg.pad_token_id, name  # a valid pad id is kept
    big = small("gpt-oss-20b")
    assert big.pad_token_id == 199999 and big.pad_id == 0  # out of range: any masked id works
    assert preset("gpt-oss-tiny").pad_id == 0 and preset("gemma3-tiny").pad_id == 0


@pytest.mark.parametrize("name", DECODERS)
def test_left_padded_generation_equals_each_row_alone(name: str):
    """The padded row decodes exactly as it does alone: pads are in range and masked out."""
    model = model_for(small(name))
    both = generate(model, PROMPTS, max_new_tokens=4).sequences
    alone = [generate(model, [p], max_new_tokens=4).sequences[0] for p in PROMPTS]
    assert both == alone
    beams = generate(model, PROMPTS, max_new_tokens=3, num_beams=2).sequences
    assert beams == [
        generate(model, [p], max_new_tokens=3, num_beams=2).sequences[0] for p in PROMPTS
    ]


@pytest.mark.parametrize("pad", [None, 0, 511, 512, 199999, -1])
def test_pad_id_does_not_change_the_output(pad: int | None):
    """Any configured pad id, in the vocabulary or not, gives the same completions."""
    model = model_for(small("gpt-oss-20b", pad_token_id=pad))
    want = model_for(small("gpt-oss-20b", pad_token_id=None))
    assert (
        generate(model, PROMPTS, max_new_tokens=4).sequences
        == generate(want, PROMPTS, max_new_tokens=4).sequences
    )
