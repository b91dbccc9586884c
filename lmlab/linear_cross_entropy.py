"""Cross-entropy of an LM head without materializing the [tokens, vocab] logits.

The plain training loss computes `logits = h @ W.T` for every token, then a log-softmax, then in
backward a gradient of the same size: four tensors of tokens x vocab floats (206 MB each for GPT-2
at 1024 tokens) that are written once, read once and freed. Here rows go through in chunks: each
chunk's logits are turned into the loss and, right away, into their gradient softmax - onehot
(the gradient of a cross-entropy is known in the forward pass), which is multiplied into the
gradients of the hidden states and of W before the next chunk reuses the buffer. Same matmuls as the
plain path, no recomputation; backward only scales the stored gradients by the incoming one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label value the loss skips (lmlab.data.tokens re-exports it)
CHUNK_ELEMENTS = 1 << 24  # logits per chunk (64 MB of float32): few passes over grad W


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, chunk_rows, needs):
        N, V = hidden.shape[0], weight.shape[0]
        valid = targets != ignore_index
        rows = torch.arange(chunk_rows, device=hidden.device)
        need_h, need_w, need_b = needs
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        buf = hidden.new_empty(min(chunk_rows, N), V)
        for s in range(0, N, chunk_rows):
            h, t, ok = (x[s : s + chunk_rows] for x in (hidden, targets, valid))
            n = h.shape[0]
            z = torch.mm(h, weight.t(), out=buf[:n])
            if bias is not None:
                z += bias
            safe_t = torch.where(ok, t, 0)
            picked = z.gather(1, safe_t[:, None])[:, 0]
            top = z.amax(1, keepdim=True)
            z.sub_(top).exp_()
            total = z.sum(1, keepdim=True)
            lse = (top + total.log())[:, 0]
            loss += ((lse - picked) * ok).sum(dtype=torch.float32)
            if not any(needs):
                continue
            z.div_(total)  # softmax; minus one-hot at the target; ignored rows contribute nothing
            z[rows[:n], safe_t] -= 1
            z.mul_(ok[:, None].to(z.dtype))
            if need_h:
                torch.mm(z, weight, out=grad_h[s : s + n])
            if need_w:
                grad_w.addmm_(z.t(), h)
            if need_b:
                grad_b += z.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grads = [g * grad_loss.to(g.dtype) if g is not None else None for g in ctx.saved_tensors]
        return grads[0], grads[1], grads[2], None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T + bias, targets) for hidden [..., d], targets [...].

    reduction "sum" or "mean" (over targets != ignore_index), like `F.cross_entropy`. Chunked in
    float32; in lower precision (bf16 weights or autocast) the plain path runs (a bf16 [vocab, d]
    gradient cannot be accumulated chunk by chunk without extra rounding), with float32 logits.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}: use 'mean' or 'sum'")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree: targets "
            "need one class id per hidden row"
        )
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    dev = h.device.type
    low = torch.is_autocast_enabled(dev) or weight.dtype != torch.float32
    if low or h.dtype != torch.float32:
        logits = F.linear(h, weight, bias).float()
        return F.cross_entropy(logits, t, ignore_index=ignore_index, reduction=reduction)
    rows = chunk_rows or max(16, CHUNK_ELEMENTS // weight.shape[0])
    grad = torch.is_grad_enabled()  # no gradient matmuls when evaluating
    needs = tuple(grad and x is not None and x.requires_grad for x in (h, weight, bias))
    loss = _LinearCrossEntropy.apply(h, weight, bias, t, ignore_index, rows, needs)
    if reduction == "sum":
        return loss
    return loss / (t != ignore_index).sum().clamp(min=1)
