"""HellaSwag during training (`TrainConfig.eval_hellaswag_every`), as the nanoGPT/llm.c runs do.

`HellaSwagEval.from_config` reads the items and the tokenizer once, before the first step, so a
missing file, an offline download or an unknown tokenizer stops the run at once; calling it scores
the model being trained (`lmlab.eval.score_choices`) and returns `hellaswag_acc`,
`hellaswag_acc_norm` (per character, lm-evaluation-harness) and `hellaswag_acc_norm_tokens` (per
token, nanoGPT/llm.c). Every rank scores every item (FSDP needs all ranks in each forward); the
trainer logs the main rank's numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmlab.config import ConfigError
from lmlab.errors import DataError, MissingFileError
from lmlab.eval.choice import ChoiceItem, choice_tokens, read_hellaswag, score_choices

if TYPE_CHECKING:
    from lmlab.train.config import TrainConfig
    from lmlab.train.trainer import Trainer

BATCH_SIZE = 16  # endings per forward pass


class _TextEncoder:
    """A tokenizer whose `encode` takes only text (prepare's "bytes") in the form `score_choices`
    calls: `add_special` prepends the end-of-document id that starts each prepared document."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        ids = self.tok.encode(text)
        eos = getattr(self.tok, "eos_id", None)
        return [eos, *ids] if add_special and eos is not None else ids


def data_tokenizer(cfg: TrainConfig, data: Any) -> Any:
    """`cfg.hellaswag_tokenizer`, else the tokenizer the token folder was prepared with."""
    spec = cfg.hellaswag_tokenizer or getattr(data, "meta", {}).get("tokenizer")
    if not spec:
        raise ConfigError(
            f"eval_hellaswag_every={cfg.eval_hellaswag_every} needs the text tokenizer, and "
            f"data={cfg.data!r} names none; set hellaswag_tokenizer (e.g. gpt2) to the one the "
            "data was prepared with"
        )
    from lmlab.data.prepare import resolve_tokenizer

    tok = resolve_tokenizer(spec)
    try:
        tok.encode("x", add_special=True)
    except TypeError:
        tok = _TextEncoder(tok)
    return tok


class HellaSwagEval:
    """Scores HellaSwag `items` with `tokenizer` on the trainer's model."""

    def __init__(self, items: list[ChoiceItem], tokenizer: Any) -> None:
        self.items, self.tokenizer = items, tokenizer

    @classmethod
    def from_config(
        cls, cfg: TrainConfig, data: Any, model: Any, main: bool = True
    ) -> HellaSwagEval:
        """Items from `cfg.hellaswag_data` (or the data dir / hub), those that fit the model's
        context, with the data's tokenizer; one-line errors for what is missing."""
        from lmlab.eval.hellaswag import hellaswag_path

        tok = data_tokenizer(cfg, data)
        try:
            path = cfg.hellaswag_data or hellaswag_path()
            items = read_hellaswag(path, limit=cfg.hellaswag_limit or None)
        except FileNotFoundError as e:
            raise MissingFileError(f"hellaswag_data: {e}") from None
        except ValueError as e:
            raise DataError(f"hellaswag_data: {e}") from None
        vocab = model.cfg.vocab_size
        max_len = model.cfg.max_seq_len
        fit = []
        for item in items:
            pairs = choice_tokens(tok, item)
            if max(max(ids) for ids, _ in pairs) >= vocab:
                raise ConfigError(
                    f"hellaswag tokenizer {cfg.hellaswag_tokenizer or 'of the data'} gives ids >= "
                    f"the model's vocab_size {vocab}; set hellaswag_tokenizer to the data's one"
                )
            if all(len(ids) - n_ctx < max_len for ids, n_ctx in pairs):
                fit.append(item)
        if not fit:
            raise ConfigError(
                f"no HellaSwag item of {path} has all endings under block_size={max_len} tokens; "
                "raise block_size or use a subword tokenizer"
            )
        if main and len(fit) < len(items):
            print(f"hellaswag: {len(items) - len(fit)} of {len(items)} items skipped (an ending "
                  f"longer than block_size={max_len} tokens)")  # fmt: skip
        return cls(fit, tok)

    def __call__(self, trainer: Trainer) -> dict[str, float]:
        """`hellaswag_acc`, `hellaswag_acc_norm`, `hellaswag_acc_norm_tokens` of the model now."""
        model = trainer.model
        try:
            with trainer.autocast:
                r = score_choices(model, self.tokenizer, self.items, batch_size=BATCH_SIZE,
                                  device=trainer.dist.device, progress=False)  # fmt: skip
        finally:
            model.train()  # score_choices switched it to eval mode
        return {
            "hellaswag_acc": r.acc,
            "hellaswag_acc_norm": r.acc_norm,
            "hellaswag_acc_norm_tokens": r.acc_norm_tokens,
        }
