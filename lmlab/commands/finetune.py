"""`lmlab finetune classify`: train a classification head (+ chosen blocks or LoRA) on a labeled file."""

from __future__ import annotations

import argparse
import json

from lmlab.commands._threads import add_threads_argument, setup_threads
from lmlab.config import ConfigError
from lmlab.errors import LmlabError

HELP = "finetune a model: classify (a head on the last token of a CSV/TSV/JSONL labeled file)"


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected fractions like 0.7,0.1,0.2") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="task", metavar="TASK", required=True)
    c = sub.add_parser(
        "classify", help="sequence classification (last non-padding token, or mean pool)"
    )
    c.add_argument(
        "--model", required=True, help="packaged name, HF folder, .gguf file, checkpoint or hub id"
    )
    c.add_argument(
        "--data", required=True, help=".csv/.tsv (header row unless --columns) or .jsonl file"
    )
    c.add_argument("--text-column", default="text", help="column with the text (default: text)")
    c.add_argument("--label-column", default="label", help="column with the label (default: label)")
    c.add_argument(
        "--columns",
        type=_names,
        default=None,
        help="column names of a file without header, e.g. label,text",
    )
    c.add_argument(
        "--labels",
        type=_names,
        default=None,
        help="class names in id order (default: sorted labels)",
    )
    c.add_argument(
        "--no-balance",
        action="store_true",
        help="keep the class sizes (default: undersample to balance)",
    )
    c.add_argument(
        "--split",
        type=_floats,
        default=(0.7, 0.1, 0.2),
        help="train,val,test fractions (default 0.7,0.1,0.2)",
    )
    c.add_argument(
        "--per-class", type=int, default=0, help="at most N examples per class (quick runs)"
    )
    c.add_argument(
        "--n-layers", type=int, default=0, help="use the first N blocks only (0: all; cheaper)"
    )
    c.add_argument(
        "--pool",
        default="last",
        choices=("last", "mean", "first"),
        help="token pooling (default last)",
    )
    c.add_argument(
        "--max-len", type=int, default=128, help="tokens per text, keeping the start (default 128)"
    )
    c.add_argument("--epochs", type=int, default=3)
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument(
        "--lr", type=float, default=1e-4, help="learning rate of the model's trainable parts"
    )
    c.add_argument(
        "--head-lr", type=float, default=1e-3, help="learning rate of the classification head"
    )
    c.add_argument(
        "--train-blocks", type=int, default=1, help="train the last N blocks + final norm (-1: all)"
    )
    c.add_argument(
        "--lora-r", type=int, default=0, help="> 0: LoRA of this rank instead of training blocks"
    )
    c.add_argument(
        "--lora-targets", type=_names, default=["attn.q", "attn.v"], help="LoRA target modules"
    )
    c.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    c.add_argument("--seed", type=int, default=123)
    add_threads_argument(c)
    c.add_argument("--out", default="runs", help="root folder for run folders (default: runs)")
    c.add_argument(
        "--out-dir",
        default=None,
        help="this run folder instead of a new timestamped one under --out (needed by --resume)",
    )
    c.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out-dir from its newest good checkpoint",
    )
    c.add_argument(
        "--checkpoint-interval",
        type=int,
        default=0,
        help="write a training checkpoint every N steps (0: only at the end)",
    )


def main(args: argparse.Namespace) -> int:
    import lmlab
    from lmlab.finetune.classify import ClassifyConfig
    from lmlab.finetune.pipeline import DataSpec, classify_and_report, prepare_splits
    from lmlab.finetune.truncate import keep_blocks

    try:
        spec = DataSpec(
            args.data,
            args.text_column,
            args.label_column,
            args.columns,
            args.labels,
            not args.no_balance,
            args.split,
            args.per_class,
            args.seed,
        )
        parts = prepare_splits(spec)
        out = _run_dir(args)
        setup_threads(args.threads)
        model, tok = lmlab.load(args.model, dtype=args.dtype)
        if args.n_layers:
            keep_blocks(model, args.n_layers)
        cfg = ClassifyConfig.from_settings(
            args,
            out_dir=str(out.path),
            resume=args.resume,
            checkpoint_interval=args.checkpoint_interval,
            tensorboard=False,
        )
        if args.lora_r:
            from lmlab.peft import apply_lora

            apply_lora(
                model, r=args.lora_r, alpha=2.0 * args.lora_r, target_modules=args.lora_targets
            )
            cfg.freeze = False  # LoRA froze the base; the head trains too
        out.write_config({k: v for k, v in vars(args).items() if not k.startswith("_")})
        print(f"lmlab finetune classify: writing to {out.path}")
        metrics, res = classify_and_report(
            model, tok, parts, cfg, out, f"Classification with {args.model}", pool=args.pool
        )
    except LmlabError:
        raise
    except ValueError as e:  # library checks name the bad value and the fix
        raise ConfigError(str(e)) from e
    out.write_metrics(metrics)
    print(
        json.dumps(
            {"test_accuracy": round(res.test.accuracy, 4), "seconds": round(metrics["seconds"], 1)}
        )
    )
    print(f"report: {out.file('report.md')}")
    return 0


def _run_dir(args: argparse.Namespace):
    """The run folder: --out-dir (refused if it holds a run, unless --resume) or a new one."""
    from pathlib import Path

    from lmlab import checkpoints as ckpt
    from lmlab.errors import OverwriteError
    from lmlab.runs import RunDir

    if args.out_dir is None:
        if args.resume:
            raise ConfigError("--resume needs --out-dir: the run folder to continue")
        return RunDir.create("finetune-classify", args.out)
    path = Path(args.out_dir)
    if not args.resume and ckpt.exists(path):
        raise OverwriteError(
            f"{path} holds checkpoints of an earlier run; pass --resume to continue it, or "
            "choose another --out-dir"
        )
    path.mkdir(parents=True, exist_ok=True)
    return RunDir(path)
