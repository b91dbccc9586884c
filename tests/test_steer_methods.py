"""Optimized vectors, knowledge edits, ITI and metrics on tiny presets; one slow SmolLM2 edit check."""

from __future__ import annotations

import pytest
import torch

from lmlab.families import preset
from lmlab.interp import run_with_cache
from lmlab.model import Transformer
from lmlab.steer import iti
from lmlab.steer.edit import injection_edit, next_token_probs
from lmlab.steer.metrics import corpus_bleu, lexicon_positive, sentence_bleu
from lmlab.steer.optimize import greedy_recover, optimize_vectors
from lmlab.steer.rome import key_covariance, rome_edit

torch.set_num_threads(1)  # on a shared 2-core machine, two threads contend and run ~15x slower


def tiny(name: str) -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset(name)).eval()


@pytest.mark.parametrize("name", ["gpt2-tiny", "gpt-oss-tiny"])
def test_optimized_vectors_recover_targets_exactly(name: str) -> None:
    m = tiny(name)
    # A random tiny model's final norm bounds its logits, so one z cannot spell arbitrary text;
    # repeated tokens it would never emit unsteered are within reach.
    targets = [[17, 17, 17, 17], [250, 250, 250]]
    assert (
        greedy_recover(m, optimize_vectors(m, targets, layer=1, prefix=[1], steps=0), [4, 3])
        != targets
    )
    r = optimize_vectors(m, targets, layer=1, prefix=[1], steps=100, lr=0.3)
    assert all(s is not None for s in r.steps_to_recover), r.steps_to_recover
    assert greedy_recover(m, r, [len(t) for t in targets]) == targets  # cached decoding, z live
    assert all(p.requires_grad for p in m.parameters())  # flags restored


def test_optimize_bad_input() -> None:
    m = tiny("gpt2-tiny")
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        optimize_vectors(m, [[1]], layer=4, prefix=[0])
    with pytest.raises(ValueError, match="non-empty"):
        optimize_vectors(m, [], layer=0, prefix=[0])
    with pytest.raises(ValueError, match="prefix is empty"):
        optimize_vectors(m, [[1]], layer=0, prefix=[])


@pytest.mark.parametrize("name", ["gpt2-tiny", "gpt-oss-tiny"])
def test_injection_edit_moves_only_prompts_with_the_subject(name: str) -> None:
    m = tiny(name)
    prompt, subject, target = [5, 40, 41, 12, 13], [40, 41], 300
    other = [5, 60, 61, 12, 13]
    edit = injection_edit(m, prompt, subject, target, layer=1, coeff=30.0)
    before = next_token_probs(m, [prompt, [9, 40, 41, 7], other])
    with edit.apply(m):
        after = next_token_probs(m, [prompt, [9, 40, 41, 7], other])
    assert after[0, target] > 1.3 * before[0, target]  # random tiny models have flat logits
    assert after[1, target] > before[1, target]  # a "paraphrase" with the subject moves too
    assert torch.allclose(after[2], before[2], atol=1e-6)  # no subject: untouched


def test_rome_edit_writes_the_fact_and_restores() -> None:
    m = tiny("gpt2-tiny")
    # The subject ends the prompt: in a random 2-layer model little moves between positions.
    prompt, subject, target = [5, 12, 13, 40, 41], [40, 41], 300
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 512, (4, 32), generator=g) for _ in range(4)]
    cov = key_covariance(m, batches, layer=1)
    assert cov.shape == (m.cfg.d_ff, m.cfg.d_ff)
    other = [7, 8, 9]
    before = next_token_probs(m, [prompt, other])
    edit = rome_edit(m, [prompt, [3, 4, *prompt]], subject, target, 1, cov, steps=60, decay=0.0)
    after = next_token_probs(m, [prompt, [3, 4, *prompt], other])
    assert int(after[0].argmax()) == target and int(after[1].argmax()) == target
    assert (after[2] - before[1]).abs().max() < 0.01  # an unrelated prompt barely moves
    edit.restore()
    assert torch.allclose(next_token_probs(m, [prompt]), before[:1], atol=1e-6)


def test_rome_refuses_moe_with_a_clear_error() -> None:
    m = tiny("gpt-oss-tiny")
    with pytest.raises(ValueError, match=r"mixture-of-experts.*injection_edit"):
        key_covariance(m, [torch.zeros(1, 4, dtype=torch.long)], layer=0)


@pytest.mark.parametrize("name", ["gpt2-tiny", "gpt-oss-tiny"])
def test_iti_probes_heads_and_steers_only_selected_heads(name: str) -> None:
    m = tiny(name)
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, 512, (6,), generator=g).tolist() for _ in range(40)]
    acts = iti.head_activations(m, ids)
    L, H, D = m.cfg.n_layers, m.cfg.n_heads, m.cfg.head_dim
    assert acts.shape == (40, L, H, D)
    labels = torch.tensor([i % 2 for i in range(40)])
    acts[labels == 1, 1, 2] += 3.0  # plant a "truth" signal in head (1, 2)
    accs = iti.probe_accuracies(acts, labels)
    assert accs.shape == (L, H) and accs[1, 2] == 1.0
    heads = iti.top_heads(accs, 1)
    assert heads == [(1, 2)]
    dirs = iti.truth_directions(acts, labels, heads)
    sv = dirs.vector(m, alpha=5.0)
    x = torch.tensor(ids[:2])
    with sv.apply(m):
        _, c = run_with_cache(m, x, names_filter=lambda n: n.endswith("hook_z"))
    _, c0 = run_with_cache(m, x, names_filter=lambda n: n.endswith("hook_z"))
    shift = c["z", 1] - c0["z", 1]
    want = 5.0 * dirs.sigmas[0] * dirs.thetas[0]
    assert torch.allclose(shift[:, :, 2], want.expand_as(shift[:, :, 2]), atol=1e-4)
    assert shift[:, :, [0, 1, 3]].abs().max() < 1e-6 and torch.equal(c["z", 0], c0["z", 0])


def test_statements_files_and_errors(tmp_path) -> None:
    (tmp_path / "s.jsonl").write_text(
        '{"text": "Paris is in France.", "label": 1}\n{"text": "x", "label": "false"}\n'
    )
    (tmp_path / "s.csv").write_text("text,label\nRome is in Italy.,true\nRome is in Peru.,0\n")
    assert iti.load_statements(tmp_path / "s.jsonl") == [("Paris is in France.", 1), ("x", 0)]
    assert iti.load_statements(tmp_path / "s.csv") == [
        ("Rome is in Italy.", 1),
        ("Rome is in Peru.", 0),
    ]
    (tmp_path / "bad.csv").write_text("text,label\nhello,maybe\n")
    with pytest.raises(ValueError, match="label 'maybe'"):
        iti.load_statements(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match=r"\.jsonl or \.csv"):
        iti.load_statements(tmp_path / "s.txt")
    with pytest.raises(ValueError, match="single class"):
        iti.probe_accuracies(torch.zeros(4, 1, 1, 2), torch.ones(4))


def test_metrics() -> None:
    assert corpus_bleu(["The weather is blue."], ["The weather is blue."]) == pytest.approx(100.0)
    assert corpus_bleu(["a b c d"], ["w x y z"]) == 0.0
    # 4 of 6 unigrams, 3/5 bigrams (+1 smoothing: 4/6), ... brevity: hypothesis shorter
    assert 0 < sentence_bleu("the cat sat on", "the cat sat on the mat") < 100
    assert lexicon_positive(["I love this wonderful day", "I hate this awful day", "A table."]) == [
        True,
        False,
        False,
    ]


@pytest.mark.slow
def test_injection_edit_on_smollm2() -> None:
    from lmlab.interp.models import load_model

    try:
        m, tok = load_model("smollm2-135m-instruct")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    prompt, subject = tok.encode("The Eiffel Tower is in"), tok.encode(" Eiffel Tower")
    rome, paris = tok.encode(" Rome")[0], tok.encode(" Paris")[0]
    other = tok.encode("The Colosseum is in")
    assert int(next_token_probs(m, [prompt])[0].argmax()) == paris
    edit = injection_edit(m, prompt, subject, rome, layer=8, coeff=60.0)  # at all subject tokens
    base_other = next_token_probs(m, [other])[0].argmax()
    with edit.apply(m):
        p = next_token_probs(m, [prompt, tok.encode("Where is the Eiffel Tower? It is in"), other])
    assert int(p[0].argmax()) == rome
    assert p[1, rome] > 0.05
    assert p[2].argmax() == base_other
