"""Toy Models of Superposition (Elhage et al. 2022): h = W x, x' = ReLU(W^T W x + b).

Many instances (e.g. one per feature density) train side by side: every tensor carries an
instance dimension, so one Adam step updates all of them. The analysis functions read the
learned W: feature norms, feature dimensionality, angles in 2-D and the n=2, m=1 phases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.train.config import TrainConfig
from lmlab.train.trainer import Trainer


class ToyModel(nn.Module):
    """`n_instances` independent toy models: W [I, m, n] (features -> hidden), bias b [I, n].

    importance: [I, n] or [n] weights of each feature in the loss; density: [I] or [I, n] chance
    that a feature is nonzero (1 - sparsity); nonzero values are uniform in [0, 1].
    """

    def __init__(
        self,
        n_features: int,
        n_hidden: int,
        importance: torch.Tensor,
        density: torch.Tensor,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if n_features < 1 or n_hidden < 1:
            raise ValueError(
                f"n_features={n_features} and n_hidden={n_hidden} must both be >= 1; "
                "pick e.g. n_features=5, n_hidden=2"
            )
        density = torch.as_tensor(density, dtype=torch.float32)
        if density.dim() == 0 or density.dim() > 2:
            raise ValueError(
                f"density has shape {tuple(density.shape)}; pass [n_instances] or [n_instances, n_features]"
            )
        if not bool(((density > 0) & (density <= 1)).all()):
            raise ValueError(
                f"density must lie in (0, 1] (chance a feature is nonzero), got min {density.min():.3g} "
                f"max {density.max():.3g}; density = 1 - sparsity"
            )
        n_inst = density.shape[0]
        density = density.view(n_inst, -1).expand(n_inst, n_features)
        importance = torch.as_tensor(importance, dtype=torch.float32)
        if importance.shape[-1] != n_features:
            raise ValueError(
                f"importance has shape {tuple(importance.shape)}, its last dim must be n_features={n_features}"
            )
        importance = importance.expand(n_inst, n_features)
        self.n_features, self.n_hidden, self.n_instances = n_features, n_hidden, n_inst
        self.register_buffer("importance", importance.clone())
        self.register_buffer("density", density.clone())
        g = torch.Generator().manual_seed(seed)
        bound = math.sqrt(6.0 / (n_features + n_hidden))  # Xavier uniform
        self.W = nn.Parameter(
            (torch.rand(n_inst, n_hidden, n_features, generator=g) * 2 - 1) * bound
        )
        self.b = nn.Parameter(torch.zeros(n_inst, n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [I, B, n] -> reconstruction [I, B, n]."""
        h = torch.bmm(x, self.W.transpose(1, 2))  # [I, B, m]
        return torch.relu(torch.baddbmm(self.b.unsqueeze(1), h, self.W))

    def sample(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A batch [I, B, n] of sparse features: 0 with prob 1 - density, else uniform [0, 1]."""
        shape = (self.n_instances, batch, self.n_features)
        on = torch.rand(shape, generator=generator) < self.density.unsqueeze(1)
        return torch.rand(shape, generator=generator) * on

    def loss(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Importance-weighted squared error per instance [I] (mean over batch, sum over features)."""
        return (self.importance.unsqueeze(1) * (x - out).pow(2)).sum(-1).mean(-1)


@dataclass
class TrainResult:
    """Final per-instance loss [I] on fresh samples and the loss curve [steps // log_every, I]."""

    loss: torch.Tensor
    curve: torch.Tensor


def train(
    model: ToyModel,
    *,
    steps: int = 5000,
    batch: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    log_every: int = 100,
    progress: bool = True,
    threads: int | None = 1,
) -> TrainResult:
    """Train all instances at once on the training core (Adam, cosine-decayed lr); returns the
    final losses.

    threads: torch CPU threads while training (restored after); these tiny matmuls run fastest
    on one thread, more only pay off for large n. None leaves the setting alone.
    """
    if steps < 1 or batch < 1:
        raise ValueError(f"steps={steps} and batch={batch} must be >= 1")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(model, steps, batch, lr, seed, log_every, progress)
    finally:
        torch.set_num_threads(before)


class SuperpositionTask:
    """Fresh sparse feature batches from the trainer's generator; the loss sums the instances'
    losses, so one optimizer step updates every instance; every `log_every` steps the
    per-instance losses [I] join `curve`."""

    name = "superposition"

    def __init__(self, model: ToyModel, log_every: int) -> None:
        self.model, self.log_every = model, max(1, log_every)
        self.curve: list[torch.Tensor] = []
        self.calls = 0

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return self.model.sample(batch_size, generator)

    def count(self, x: torch.Tensor) -> int:
        return 1

    def loss(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        per_inst = self.model.loss(x, net(x))
        if self.calls % self.log_every == 0:
            self.curve.append(per_inst.detach())
        self.calls += 1
        return per_inst.sum()


def _train(
    model: ToyModel, steps: int, batch: int, lr: float, seed: int, log_every: int, progress: bool
) -> TrainResult:
    cfg = TrainConfig(
        max_steps=steps, batch_size=batch, lr=lr, min_lr=0.0, warmup_steps=0, schedule="cosine",
        weight_decay=0.0, beta2=0.999, grad_clip=0.0, eval_interval=0,
        log_interval=max(1, min(log_every, steps)), out_dir="", tensorboard=False,
        progress=progress, seed=seed, device=str(model.W.device),
    )  # fmt: skip
    task = SuperpositionTask(model, log_every)
    trainer = Trainer(model, cfg, task)
    trainer.fit()
    with torch.no_grad():
        x = model.sample(max(batch, 8192), trainer.generator)
        final = model.loss(x, model(x))
    return TrainResult(final, torch.stack(task.curve))


def train_best_of(
    n_features: int,
    n_hidden: int,
    importance: torch.Tensor,
    density: torch.Tensor,
    *,
    restarts: int = 3,
    seed: int = 0,
    **train_kw,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train `restarts` copies of every instance in one model; keep the lowest-loss copy of each.

    Returns W [I, m, n], b [I, n] and the kept losses [I]; restarts avoid poor local minima.
    """
    density = torch.as_tensor(density, dtype=torch.float32)
    importance = torch.as_tensor(importance, dtype=torch.float32)
    n_inst = density.shape[0]
    imp = importance.expand(n_inst, n_features)
    model = ToyModel(
        n_features,
        n_hidden,
        imp.repeat(restarts, 1),
        density.repeat(restarts, *([1] * (density.dim() - 1))),
        seed=seed,
    )
    res = train(model, seed=seed, **train_kw)
    loss = res.loss.view(restarts, n_inst)
    best = loss.argmin(0)
    idx = best * n_inst + torch.arange(n_inst)
    return model.W.detach()[idx], model.b.detach()[idx], loss.min(0).values


# ---------------------------------------------------------------------------- analysis


def feature_norms(W: torch.Tensor) -> torch.Tensor:
    """||W_i|| for each feature: [I, m, n] -> [I, n] (about 1 when represented, 0 when dropped)."""
    return W.norm(dim=-2)


def dimensionality(W: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Feature dimensionality D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2: [I, m, n] -> [I, n].

    1 for a feature with a dedicated dimension, 1/2 for an antipodal pair, 2/5 in a pentagon,
    0 for a feature that is not represented.
    """
    norms = feature_norms(W)
    unit = W / norms.clamp_min(eps).unsqueeze(-2)
    overlap = torch.einsum("imn,imk->ink", unit, W).pow(2).sum(-1)  # sum_j (W_i_hat . W_j)^2
    return torch.where(norms > eps, norms.pow(2) / overlap.clamp_min(eps), torch.zeros_like(norms))


def dims_per_feature(W: torch.Tensor) -> torch.Tensor:
    """m / ||W||_F^2 per instance [I]: hidden dimensions per (embedded) feature."""
    return W.shape[-2] / W.pow(2).sum((-1, -2))


def angles_2d(W: torch.Tensor, min_norm: float = 0.5) -> torch.Tensor:
    """Angles (degrees) between neighbouring represented feature directions of one m=2 instance.

    W: [2, n]. Features with norm below `min_norm` are skipped; the angles sum to 360.
    """
    if W.dim() != 2 or W.shape[0] != 2:
        raise ValueError(f"angles_2d needs one instance's W of shape [2, n], got {tuple(W.shape)}")
    keep = W.norm(dim=0) >= min_norm
    theta = torch.atan2(W[1, keep], W[0, keep]).rad2deg().sort().values
    if theta.numel() == 0:
        return theta
    return torch.diff(torch.cat([theta, theta[:1] + 360.0]))


PHASES = ("not represented", "dedicated dimension", "superposition")


def phase_n2m1(W: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Phase of feature 2 in n=2, m=1 models: [I, 1, 2] -> [I] ints indexing `PHASES`.

    0: feature 2 is dropped; 1: feature 2 alone owns the hidden dimension; 2: both features
    share it (antipodal superposition).
    """
    if W.shape[-2:] != (1, 2):
        raise ValueError(f"phase_n2m1 needs W of shape [I, 1, 2] (n=2, m=1), got {tuple(W.shape)}")
    n1, n2 = W[:, 0, 0].abs(), W[:, 0, 1].abs()
    on1, on2 = n1 >= threshold, n2 >= threshold
    return torch.where(~on2, 0, torch.where(on1, 2, 1))


def phase_diagram(rel_importance: torch.Tensor, density: torch.Tensor, **train_kw) -> torch.Tensor:
    """Train n=2, m=1 models on the grid; feature 1 has importance 1. Returns phases [R, S]."""
    R, S = torch.meshgrid(rel_importance, density, indexing="ij")
    importance = torch.stack([torch.ones(R.numel()), R.flatten()], -1)
    W, _, _ = train_best_of(2, 1, importance, S.flatten(), **train_kw)
    return phase_n2m1(W).view(R.shape)


FRACTIONS = {"1": 1.0, "3/4": 0.75, "2/3": 2 / 3, "1/2": 0.5, "2/5": 0.4, "3/8": 0.375}


def dimensionality_clusters(W: torch.Tensor, tol: float = 0.02) -> dict[str, float]:
    """Share of represented features (norm > 0.5) whose dimensionality is within `tol` of each fraction."""
    D = dimensionality(W)[feature_norms(W) > 0.5]
    return {
        k: float(((D - v).abs() < tol).float().mean()) if D.numel() else 0.0
        for k, v in FRACTIONS.items()
    }
