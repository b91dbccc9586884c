"""`HookedLM`: an lmlab model plus its tokenizer, with TransformerLens's everyday conveniences.

TransformerLens users reach for `model.to_tokens(...)`, `model.W_Q`, `model.generate(...)`. The
`Transformer` itself stays free of tokenizers and decoding (imports run one way), so this thin
wrapper holds both and adds those names on top; everything else is delegated to the model.

Weight views follow TransformerLens 4's `TransformerBridge` *without* weight processing (the
equivalent of the old `from_pretrained_no_processing`): no LayerNorm folding, no centring, no
value-bias folding. They are computed from lmlab's parameters on each access (nothing is copied
and kept), with TL's shapes:

    W_Q [n_layers, n_heads, d_model, d_head]     b_Q [n_layers, n_heads, d_head]
    W_K, W_V [n_layers, n_kv_heads, d_model, d_head]  (grouped-query: one per key/value head,
        as TransformerLens 4 returns them; `repeat_kv(W_K)` gives one per query head, the
        layout HookedTransformer <= 3 exposed as `W_K`)
    W_O [n_layers, n_heads, d_head, d_model]     b_O [n_layers, d_model]
    W_in, W_gate [n_layers, d_model, d_mlp]      b_in [n_layers, d_mlp]
    W_out [n_layers, d_mlp, d_model]             b_out [n_layers, d_model]
    W_E [d_vocab, d_model]   W_pos [n_ctx, d_model]   W_U [d_model, d_vocab]   b_U [d_vocab]

A bias the model does not have reads as zeros (so `x @ W_Q + b_Q` works on every architecture).
`W_E` is the raw table: Gemma's sqrt(d_model) embedding scale is applied in the forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import InputError
from lmlab.interp.activation_cache import ActivationCache, run_with_cache

Text = str | Sequence[str]
Input = str | Sequence[str] | torch.Tensor


class MissingWeightError(InputError, AttributeError):
    """The model has no such weight (no MLP, no learned positions, no LM head); `hasattr` is False."""


class HookedLM:
    """A model and its tokenizer with TransformerLens's `to_tokens`, weight views and `generate`."""

    def __init__(self, model: nn.Module, tokenizer: Any = None) -> None:
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        *,
        dtype: Any = None,
        device: str | torch.device | None = None,
    ) -> HookedLM:
        """`lmlab.load(name)` wrapped: a preset, packaged model, folder, `.gguf` or hub id.

        Weights are never processed, so this is also `from_pretrained_no_processing`.
        """
        from lmlab.weights.load import load

        model, tokenizer = load(name, dtype=dtype, device=device)
        return cls(model, tokenizer)

    from_pretrained_no_processing = from_pretrained

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: hand the rest (cfg, blocks, hook_dict, ...) to the model.
        if name in ("model", "tokenizer"):
            raise AttributeError(name)
        if name in _VIEWS:  # a view raised AttributeError: raise it again rather than ask the model
            return object.__getattribute__(self, name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"HookedLM({self.model.cfg.name!r}, tokenizer={self.tokenizer!r})"

    # ------------------------------------------------------------------ tokens and text
    def _tok(self, what: str) -> Any:
        if self.tokenizer is None:
            raise InputError(
                f"{what} needs a tokenizer and this model has none — use HookedLM(model, tokenizer) "
                "or HookedLM.from_pretrained(name) for a model that ships one"
            )
        return self.tokenizer

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to_tokens(
        self,
        text: Text,
        prepend_bos: bool | None = None,
        padding_side: str = "right",
        truncate: bool = True,
    ) -> torch.Tensor:
        """Text (or a list of texts) -> token ids [batch, pos] on the model's device.

        Like TransformerLens, BOS is prepended by default when the tokenizer has one
        (`prepend_bos=False` for a fragment of a prompt). Rows of a batch are padded on
        `padding_side` with the pad id (else EOS, else 0); `truncate` keeps `max_seq_len` tokens.
        """
        tok = self._tok("to_tokens")
        if padding_side not in ("left", "right"):
            raise InputError(f"padding_side={padding_side!r}: use 'left' or 'right'")
        rows = self._encode(text, prepend_bos, truncate)
        pad = next((i for i in (tok.pad_id, tok.eos_id) if i is not None), 0)
        return _pad(rows, pad, padding_side).to(self._device())

    def _encode(
        self, text: Text, prepend_bos: bool | None, truncate: bool = True
    ) -> list[list[int]]:
        """One id list per text, BOS first unless `prepend_bos=False` or the tokenizer has none."""
        tok = self._tok("to_tokens")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InputError("to_tokens takes a string or a non-empty list of strings")
        bos = [tok.bos_id] if prepend_bos is not False and tok.bos_id is not None else []
        rows = [bos + tok.encode(t, add_special=False) for t in texts]
        return [r[: self.model.cfg.max_seq_len] for r in rows] if truncate else rows

    def to_string(self, tokens: torch.Tensor | Sequence[int] | Sequence[Sequence[int]]) -> Any:
        """Token ids -> text: a string for [pos], a list of strings for [batch, pos].

        Special tokens are kept (TransformerLens does not skip them either).
        """
        tok = self._tok("to_string")
        t = torch.as_tensor(tokens)
        if t.dim() == 2:
            return [tok.decode(row.tolist()) for row in t]
        if t.dim() <= 1:
            return tok.decode(t.reshape(-1).tolist())
        raise InputError(f"to_string takes [pos] or [batch, pos] ids, got shape {list(t.shape)}")

    def to_str_tokens(
        self,
        input: Input | Sequence[int],
        prepend_bos: bool | None = None,
    ) -> list[str] | list[list[str]]:
        """Each token decoded on its own: from text (tokenized like `to_tokens`) or from ids.

        A list of strings gives one list per string; a tensor is squeezed to [pos].
        """
        tok = self._tok("to_str_tokens")
        if isinstance(input, str):
            ids = self.to_tokens(input, prepend_bos=prepend_bos)[0]
        elif isinstance(input, Sequence) and input and isinstance(input[0], str):
            return [self.to_str_tokens(s, prepend_bos) for s in input]  # type: ignore[misc]
        else:
            ids = torch.as_tensor(input).squeeze()
            if ids.dim() > 1:
                raise InputError(
                    f"to_str_tokens takes one row of ids, got shape {list(ids.shape)} — "
                    "pass the rows one at a time"
                )
        return [tok.decode([i]) for i in ids.reshape(-1).tolist()]

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (no BOS)."""
        ids = self._tok("to_single_token").encode(string, add_special=False)
        if len(ids) != 1:
            raise InputError(f"{string!r} is {len(ids)} tokens {ids}, not one")
        return ids[0]

    def _tokens(self, input: Input, prepend_bos: bool | None) -> torch.Tensor:
        if isinstance(input, torch.Tensor):
            return input.unsqueeze(0) if input.dim() == 1 else input
        return self.to_tokens(input, prepend_bos=prepend_bos)

    # ------------------------------------------------------------------ running
    def __call__(self, input: Input, **kwargs: Any) -> Any:
        return self.forward(input, **kwargs)

    def forward(
        self,
        input: Input,
        return_type: str | None = "logits",
        prepend_bos: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Text or ids [batch, pos] -> logits, the next-token loss, "both" (logits, loss), or None.

        Other keywords go to the model's forward (`attention_mask`, `stop_at_layer`, ...).
        """
        if return_type not in ("logits", "loss", "both", None):
            raise InputError(f"return_type={return_type!r}: use 'logits', 'loss', 'both' or None")
        tokens = self._tokens(input, prepend_bos)
        logits = self.model(tokens, **kwargs)
        if return_type in (None, "logits"):
            return logits if return_type else None
        loss = next_token_loss(logits, tokens)
        return loss if return_type == "loss" else (logits, loss)

    def run_with_cache(
        self, input: Input, *, prepend_bos: bool | None = None, **kwargs: Any
    ) -> tuple[torch.Tensor, ActivationCache]:
        """`lmlab.interp.run_with_cache` on text or ids (`names_filter`, `stop_at_layer`, ...)."""
        return run_with_cache(self.model, self._tokens(input, prepend_bos), **kwargs)

    def run_with_hooks(
        self,
        input: Input,
        *,
        fwd_hooks: Sequence[tuple[Any, Callable]] = (),
        bwd_hooks: Sequence[tuple[Any, Callable]] = (),
        prepend_bos: bool | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One forward on text or ids with temporary hooks (the model's `run_with_hooks`)."""
        tokens = self._tokens(input, prepend_bos)
        return self.model.run_with_hooks(tokens, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks, **kwargs)

    def generate(
        self,
        input: Input,
        max_new_tokens: int = 10,
        *,
        stop_at_eos: bool = True,
        eos_token_id: int | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        repetition_penalty: float = 1.0,
        prepend_bos: bool | None = None,
        return_type: str = "input",
        seed: int | None = None,
    ) -> Any:
        """TransformerLens-style `generate` on lmlab's decode core (`lmlab.generate`).

        Returns prompt plus completion: text for text input (special tokens skipped), ids
        [batch, pos + new] for ids, or as `return_type` ("str" / "tokens") says. Like TL it
        samples by default (`seed` makes it repeatable); `do_sample=False` is greedy. Rows that
        stop early are padded with EOS.
        """
        from lmlab.generate import generate

        if return_type not in ("input", "str", "tokens"):
            raise InputError(f"return_type={return_type!r}: use 'input', 'str' or 'tokens'")
        as_text = return_type == "str" or (return_type == "input" and not torch.is_tensor(input))
        if torch.is_tensor(input):
            rows = (input.unsqueeze(0) if input.dim() == 1 else input).tolist()
        else:
            rows = self._encode(input, prepend_bos)
        eos = eos_token_id if eos_token_id is not None else self._eos()
        stops = [eos] if stop_at_eos and eos is not None else []
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p) if do_sample else {}
        out = generate(
            self.model, rows, max_new_tokens=max_new_tokens, stop_ids=stops, seed=seed,
            repetition_penalty=repetition_penalty, **sampling,
        )  # fmt: skip
        full = [r + s for r, s in zip(rows, out.sequences, strict=True)]
        if as_text:
            texts = [self._tok("generate").decode(f, skip_special=True) for f in full]
            return texts[0] if isinstance(input, str) else texts
        # TL's layout: prompts left-padded to one width, rows that stopped early padded with EOS
        pad = eos if eos is not None else 0
        n = max(map(len, out.sequences))
        full = [r + s + [pad] * (n - len(s)) for r, s in zip(rows, out.sequences, strict=True)]
        return _pad(full, pad, "left").to(self._device())

    def _eos(self) -> int | None:
        eos = getattr(self.tokenizer, "eos_id", None)
        return eos if eos is not None else self.model.cfg.eos_token_id

    # ------------------------------------------------------------------ weight views
    def _blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def _mlps(self, what: str) -> list[nn.Module]:
        mlps = [b.mlp for b in self._blocks()]
        if any(m is None for m in mlps):
            raise MissingWeightError(
                f"{what}: {self.model.cfg.name} is attention-only and has no MLPs"
            )
        if any(not isinstance(getattr(m, "up", None), nn.Linear) for m in mlps):
            raise MissingWeightError(
                f"{what}: {self.model.cfg.name} has mixture-of-experts MLPs — read the expert "
                "tensors from model.blocks[i].mlp (up, gate, down: [n_experts, ...])"
            )
        return mlps

    def _heads(self, lin: nn.Linear, n: int) -> torch.Tensor:
        """A q/k/v projection weight [n*d_head, d_model] -> [n, d_model, d_head]."""
        w = lin.weight
        return w.view(n, -1, w.shape[-1]).transpose(1, 2)

    def _bias(self, lin: nn.Module | None, size: int) -> torch.Tensor:
        b = getattr(lin, "bias", None)
        if b is not None:
            return b
        w = self.model.embed.weight
        return torch.zeros(size, dtype=w.dtype, device=w.device)

    @property
    def W_Q(self) -> torch.Tensor:
        """Query weights [n_layers, n_heads, d_model, d_head]."""
        return torch.stack([self._heads(b.attn.q, b.attn.n_heads) for b in self._blocks()])

    @property
    def W_K(self) -> torch.Tensor:
        """Key weights [n_layers, n_kv_heads, d_model, d_head] (one per key/value head)."""
        return torch.stack([self._heads(b.attn.k, b.attn.n_kv_heads) for b in self._blocks()])

    @property
    def W_V(self) -> torch.Tensor:
        """Value weights [n_layers, n_kv_heads, d_model, d_head] (one per key/value head)."""
        return torch.stack([self._heads(b.attn.v, b.attn.n_kv_heads) for b in self._blocks()])

    @property
    def W_O(self) -> torch.Tensor:
        """Output weights [n_layers, n_heads, d_head, d_model]."""
        return torch.stack(
            [b.attn.o.weight.T.reshape(b.attn.n_heads, -1, b.attn.o.weight.shape[0])
             for b in self._blocks()]
        )  # fmt: skip

    def _head_bias(self, name: str, n: int) -> torch.Tensor:
        return torch.stack(
            [self._bias(getattr(b.attn, name), n * b.attn.head_dim).view(n, -1)
             for b in self._blocks()]
        )  # fmt: skip

    @property
    def b_Q(self) -> torch.Tensor:
        """Query biases [n_layers, n_heads, d_head] (zeros when the model has none)."""
        return self._head_bias("q", self.model.cfg.n_heads)

    @property
    def b_K(self) -> torch.Tensor:
        """Key biases [n_layers, n_kv_heads, d_head] (zeros when the model has none)."""
        return self._head_bias("k", self.model.cfg.n_kv_heads)

    @property
    def b_V(self) -> torch.Tensor:
        """Value biases [n_layers, n_kv_heads, d_head] (zeros when the model has none)."""
        return self._head_bias("v", self.model.cfg.n_kv_heads)

    @property
    def b_O(self) -> torch.Tensor:
        """Attention output biases [n_layers, d_model] (zeros when the model has none)."""
        d = self.model.cfg.d_model
        return torch.stack([self._bias(b.attn.o, d) for b in self._blocks()])

    @property
    def W_in(self) -> torch.Tensor:
        """MLP input weights [n_layers, d_model, d_mlp] (the linear branch of gated MLPs)."""
        return torch.stack([m.up.weight.T for m in self._mlps("W_in")])

    @property
    def W_gate(self) -> torch.Tensor | None:
        """Gate weights of gated MLPs [n_layers, d_model, d_mlp]; None for plain MLPs, like TL."""
        mlps = self._mlps("W_gate")
        if any(m.gate is None for m in mlps):
            return None
        return torch.stack([m.gate.weight.T for m in mlps])

    @property
    def W_out(self) -> torch.Tensor:
        """MLP output weights [n_layers, d_mlp, d_model]."""
        return torch.stack([m.down.weight.T for m in self._mlps("W_out")])

    @property
    def b_in(self) -> torch.Tensor:
        """MLP input biases [n_layers, d_mlp] (zeros when the model has none)."""
        return torch.stack([self._bias(m.up, m.up.out_features) for m in self._mlps("b_in")])

    @property
    def b_out(self) -> torch.Tensor:
        """MLP output biases [n_layers, d_model] (zeros when the model has none)."""
        return torch.stack([self._bias(m.down, m.down.out_features) for m in self._mlps("b_out")])

    @property
    def W_E(self) -> torch.Tensor:
        """Token embedding table [d_vocab, d_model] (a view of the parameter)."""
        return self.model.embed.weight

    @property
    def W_pos(self) -> torch.Tensor:
        """Learned position table [n_ctx, d_model]; models with RoPE or no positions have none."""
        if self.model.pos_embed is None:
            raise MissingWeightError(
                f"W_pos: {self.model.cfg.name} uses positions={self.model.cfg.positions!r}, "
                "not a learned table — only models with positions='learned' (GPT-2) have one"
            )
        return self.model.pos_embed.weight

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding [d_model, d_vocab] (a view of the LM head, tied or not)."""
        if self.model.unembed is None:
            raise MissingWeightError(f"W_U: {self.model.cfg.name} has no LM head (an encoder?)")
        return self.model.unembed.weight.T

    @property
    def b_U(self) -> torch.Tensor:
        """Unembedding bias [d_vocab] (zeros when the model has none)."""
        return self._bias(self.model.unembed, self.model.cfg.vocab_size)

    def repeat_kv(self, w: torch.Tensor) -> torch.Tensor:
        """Grouped K/V weights or biases [n_layers, n_kv_heads, ...] -> one per query head.

        Query head h reads key/value head h // (n_heads // n_kv_heads), so `repeat_kv(W_K)` is
        what HookedTransformer <= 3 called `W_K` (and the result of `W_K` there was `_W_K` here).
        """
        h, kv = self.model.cfg.n_heads, self.model.cfg.n_kv_heads
        if w.dim() < 2 or w.shape[1] != kv:
            raise InputError(
                f"repeat_kv takes [n_layers, n_kv_heads={kv}, ...], got shape {list(w.shape)}"
            )
        return w.repeat_interleave(h // kv, dim=1)


_VIEWS = {n for n, v in vars(HookedLM).items() if isinstance(v, property)}


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting tokens[:, 1:] from logits[:, :-1] (TL's `loss`)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())


def _pad(rows: list[list[int]], pad: int, side: str) -> torch.Tensor:
    """Id lists -> [batch, longest] long tensor, padded with `pad` on `side`."""
    width = max(map(len, rows))
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for b, ids in enumerate(rows):
        if ids:
            row = torch.tensor(ids, dtype=torch.long)
            if side == "left":
                out[b, width - len(ids) :] = row
            else:
                out[b, : len(ids)] = row
    return out
