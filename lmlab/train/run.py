"""Build the data and model a `TrainConfig` names and train them (shared by `lmlab train` and recipes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmlab.data.sources import Source, make_data
from lmlab.model import Transformer
from lmlab.train import distributed
from lmlab.train.config import TrainConfig
from lmlab.train.trainer import Callback, Trainer


@dataclass
class Result:
    model: Transformer
    history: list[dict[str, Any]]
    source: Source
    trainer: Trainer

    @property
    def final(self) -> dict[str, Any]:
        """The last evaluation record."""
        evals = [r for r in self.history if "val_loss" in r]
        return evals[-1] if evals else {}


def train(
    cfg: TrainConfig,
    callbacks: list[Callback] = (),
    init: dict[str, torch.Tensor] | None = None,
    source: Source | None = None,
) -> Result:
    """Resolve `cfg.data`, build the model (seeded; optionally loading `init` weights) and fit it."""
    src = source or make_data(cfg.data, cfg.block_size, cfg.data_options)
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.model_config(src.vocab_size, src.block_size))
    if init is not None:
        model.load_state_dict(init)
    trainer = Trainer(model, cfg, src.data, list(callbacks))
    if trainer.dist.main:
        print(
            f"training {model.cfg.name} ({sum(p.numel() for p in model.parameters()):,} parameters) on {cfg.data}, "
            f"{trainer.dist.world} process(es) on {trainer.dist.device}, out_dir {cfg.out_dir}"
        )
    done = False
    try:
        history = trainer.fit()
        done = True
    finally:
        if trainer.dist.enabled:  # DDP's reducer lets go of the process group before it goes
            trainer.wrapped = trainer.net = trainer.model
            distributed.cleanup(wait=done)
    return Result(model, history, src, trainer)
