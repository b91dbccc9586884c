"""TransformerLens's `TransformerBridge` on the same weights as an lmlab model, booted offline
(a test-only reference for parity tests and bench/interp_speed.py; needs transformer-lens)."""

from __future__ import annotations

import os
from typing import Any

from lmlab.packaged import packaged_path
from lmlab.weights.gguf import gguf_to_hf

HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def _stub_tokenizer() -> Any:
    """The bridge wants a tokenizer; callers feed token ids, so a one-word stand-in avoids a hub call."""
    import tokenizers
    import transformers

    model = tokenizers.models.WordLevel({"<unk>": 0}, unk_token="<unk>")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(model), unk_token="<unk>"
    )


def boot_bridge(
    name: str = "smollm2-135m-instruct", *, compatibility: bool = True, tokenizer: Any = None
) -> Any:
    """TransformerBridge (compatibility mode) on transformers' Llama holding our dequantized weights
    (`tokenizer`: a transformers tokenizer for the text methods; default a stand-in for ids only)."""
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    if name not in HUB_IDS:
        raise ValueError(f"no reference bridge for {name!r}; known: {sorted(HUB_IDS)}")
    path = packaged_path(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed; see lmlab.packaged")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_cfg, sd, _ = gguf_to_hf(path)
    cfg = transformers.LlamaConfig(
        **{k: v for k, v in hf_cfg.items() if k not in ("architectures", "model_type")}
    )
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.load_state_dict(sd)
    bridge = TransformerBridge.boot_transformers(
        HUB_IDS[name], hf_model=hf, tokenizer=tokenizer or _stub_tokenizer(), device="cpu"
    )
    if compatibility:
        bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge
