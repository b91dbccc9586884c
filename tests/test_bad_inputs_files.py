"""Files a user owns are never overwritten or deleted (export, convert, adapters, steering vectors),
and a training run turns into a loadable model with `lmlab convert`.

The table: each hostile input fails with one `error:` line and leaves every file byte-identical.
The positive tests: `--overwrite` replaces only the writer's own files, a killed export's leftovers
are cleaned by the next one, an adapter's two files change together, and a real training run
converts to a folder whose logits equal the trained model's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_inputs import REPO, BadInput, check_bad_input, folder_hashes

import lmlab
from lmlab import checkpoints as train_ckpt
from lmlab.cli import main as cli_main
from lmlab.families import preset
from lmlab.model import Transformer
from lmlab.peft import apply_lora, load_lora, save_lora
from lmlab.runs import OLD_PREFIX, TMP_PREFIX
from lmlab.steer import SteeringVector
from lmlab.train import TrainConfig
from lmlab.weights.checkpoint import save_checkpoint
from lmlab.weights.export import export_hf

pytestmark = pytest.mark.usefixtures("one_thread")

TRAINING_HINT = (
    r"this is a training checkpoint; turn it into a model with `lmlab convert .*run.* OUT` "
    "and then load OUT"
)


def _model(name: str = "llama-tiny", seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(preset(name, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _hf_model_folder(d: Path) -> Path:
    """A downloaded-looking HF model: config.json + model.safetensors + README + eval results."""
    folder = export_hf(_model(seed=1), d / "hf")
    (folder / "README.md").write_text("# my model\nfine-tuned for a week\n")
    (folder / "eval_results.json").write_text('{"hellaswag": 0.31}\n')
    return folder


def _training_state(step: int = 2) -> dict:
    model = Transformer(TrainConfig(model_overrides=dict(d_model=32, n_layers=1)).model_config(64))
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": {},
        "model_config": model.cfg.to_dict(),
        "train_config": {"data": "task:induction"},
        "history": [],
    }


def _run(d: Path) -> Path:
    """A training run folder as `lmlab train` leaves it (manifest + step-numbered checkpoint)."""
    train_ckpt.save_step(d / "run", _training_state(), 2)
    (d / "run" / "metrics.jsonl").write_text('{"step": 2}\n')
    return d / "run"


def _legacy_run(d: Path, data: bytes | None = None) -> Path:
    """A run folder from before manifests: one `ckpt.pt` (optionally replaced by `data`)."""
    path = train_ckpt.save(d / "run" / "ckpt.pt", _training_state())
    if data is not None:
        path.write_bytes(data)
    return path


def _truncated_legacy_run(d: Path) -> None:
    path = _legacy_run(d)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _truncated_step_run(d: Path) -> None:
    path = train_ckpt.save_step(d / "run", _training_state(), 2)
    path.write_bytes(path.read_bytes()[:1000])


def _lora_model() -> Transformer:
    model = _model()
    apply_lora(model, r=2, target_modules=["attn.q", "attn.v"])
    return model


def _adapter(d: Path) -> None:
    save_lora(_lora_model(), d / "ad")
    (d / "ad" / "README.md").write_text("adapter notes\n")


def _vector() -> SteeringVector:
    return SteeringVector({"blocks.0.hook_resid_pre": torch.ones(16)})


def _truncated_safetensors(d: Path) -> None:
    w = export_hf(_model(), d / "m") / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])


CASES: list[BadInput] = [
    BadInput(
        "export-cli-into-hf-model-folder",
        r"hf is not empty \(4 entries: README.md, config.json, eval_results.json, "
        r"model.safetensors\).*--overwrite",
        argv=["export", "llama-tiny", "{d}/hf"],
        setup=_hf_model_folder,
    ),
    BadInput(
        "export-api-into-hf-model-folder",
        r"hf is not empty.*overwrite=True",
        call=lambda d: export_hf(_model(), d / "hf"),
        setup=_hf_model_folder,
    ),
    BadInput(
        "export-lmlab-format-into-nonempty-folder",
        r"out is not empty \(1 entry: notes.txt\).*--overwrite",
        argv=["export", "gpt2-tiny", "{d}/out", "--format", "lmlab"],
        setup=lambda d: (d / "out").mkdir() or (d / "out" / "notes.txt").write_text("mine"),
    ),
    BadInput(
        "export-into-a-file",
        r"out is a file; a model is written as a folder",
        argv=["export", "gpt2-tiny", "{d}/out"],
        setup=lambda d: (d / "out").write_text("not a folder"),
    ),
    BadInput(
        "export-missing-source",
        r"nope\.safetensors: no such file or folder",
        argv=["export", "{d}/nope.safetensors", "{d}/out"],
    ),
    BadInput(
        "export-hf-inexpressible-knob-names-format-flag",
        r"cannot express residual_scale=0.5 .*; write an lmlab checkpoint instead: --format lmlab",
        argv=["export", "{d}/ck", "{d}/out"],
        setup=lambda d: save_checkpoint(_model(residual_scale=0.5), d / "ck"),
    ),
    BadInput(
        "save-checkpoint-api-into-hf-model-folder",
        r"hf is not empty.*overwrite=True",
        call=lambda d: save_checkpoint(_model(), d / "hf"),
        setup=_hf_model_folder,
    ),
    BadInput(
        "save-lora-over-existing-adapter",
        r"ad already holds an adapter; refusing to overwrite it.*overwrite=True",
        call=lambda d: save_lora(_lora_model(), d / "ad"),
        setup=_adapter,
    ),
    BadInput(
        "steering-vector-save-over-existing-file",
        r"v\.safetensors exists; refusing to overwrite it.*overwrite=True",
        call=lambda d: _vector().save(d / "v.safetensors"),
        setup=lambda d: _vector().save(d / "v.safetensors"),
    ),
    BadInput(
        "generate-with-training-out-dir",
        TRAINING_HINT,
        argv=["generate", "--model", "{d}/run", "--prompt", "hi"],
        setup=_run,
    ),
    BadInput(
        "generate-with-training-ckpt-file",
        TRAINING_HINT,
        argv=["generate", "--model", "{d}/run/ckpt_000002.pt", "--prompt", "hi"],
        setup=_run,
    ),
    BadInput(
        "load-api-legacy-ckpt-pt",
        TRAINING_HINT,
        call=lambda d: lmlab.load(d / "run" / "ckpt.pt"),
        setup=_legacy_run,
    ),
    BadInput(
        "load-api-empty-ckpt-pt",
        r"ckpt\.pt: not a readable torch checkpoint \(empty, truncated or corrupt\)",
        call=lambda d: lmlab.load(d / "run" / "ckpt.pt"),
        setup=lambda d: _legacy_run(d, b""),
    ),
    BadInput(
        "convert-missing-path",
        r"nope: no such file or folder; pass the out_dir of an `lmlab train` run",
        argv=["convert", "{d}/nope", "{d}/out"],
    ),
    BadInput(
        "convert-truncated-ckpt-file",
        r"ckpt\.pt: not a readable training checkpoint \(.*\); the file is truncated or corrupt",
        argv=["convert", "{d}/run/ckpt.pt", "{d}/out"],
        setup=_truncated_legacy_run,
    ),
    BadInput(
        "convert-run-with-empty-ckpt",
        r"run: no usable training checkpoint \(ckpt\.pt is empty\)",
        argv=["convert", "{d}/run", "{d}/out"],
        setup=lambda d: _legacy_run(d, b""),
    ),
    BadInput(
        "convert-run-with-truncated-step-file",
        r"run: no usable training checkpoint \(ckpt_000002\.pt is truncated",
        argv=["convert", "{d}/run", "{d}/out", "--format", "lmlab"],
        setup=_truncated_step_run,
    ),
    BadInput(
        "convert-not-a-training-checkpoint",
        r"w\.pt: not an lmlab training checkpoint \(found \['w'\]",
        argv=["convert", "{d}/w.pt", "{d}/out"],
        setup=lambda d: torch.save({"w": torch.zeros(2)}, d / "w.pt"),
    ),
    BadInput(
        "convert-a-model-folder",
        r"hf: holds a model \(config.json\), not a training checkpoint",
        argv=["convert", "{d}/hf", "{d}/out"],
        setup=_hf_model_folder,
    ),
    BadInput(
        "convert-into-nonempty-folder",
        r"hf is not empty.*--overwrite",
        argv=["convert", "{d}/run", "{d}/hf"],
        setup=lambda d: (_run(d), _hf_model_folder(d)),
    ),
    BadInput(
        "load-truncated-model-safetensors",
        r"model\.safetensors: not a readable safetensors file .*truncated or corrupt",
        call=lambda d: lmlab.load(d / "m"),
        setup=_truncated_safetensors,
    ),
    BadInput(
        "load-lora-missing-adapter",
        r"adapter_config\.json not found",
        call=lambda d: load_lora(_model(), d / "nothing"),
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_input(case: BadInput, tmp_path) -> None:
    check_bad_input(case, tmp_path)


# ------------------------------------------------------------------------------ positive


def _logits(model: Transformer) -> torch.Tensor:
    tokens = torch.arange(12)[None] % model.cfg.vocab_size
    with torch.no_grad():
        return model(tokens)


def test_overwrite_replaces_only_export_files(tmp_path) -> None:
    folder = _hf_model_folder(tmp_path)
    # a stale sharded copy: left behind, its index would redirect loading to old weights
    (folder / "model-00001-of-00001.safetensors").write_bytes(
        (folder / "model.safetensors").read_bytes()
    )
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}})
    )
    keep = {
        k: v for k, v in folder_hashes(folder).items() if k in ("README.md", "eval_results.json")
    }
    new = _model(seed=7)
    src = save_checkpoint(new, tmp_path / "src")
    assert cli_main(["export", str(src), str(folder), "--overwrite"]) == 0
    after = folder_hashes(folder)
    assert {k: after[k] for k in keep} == keep  # byte-identical
    assert sorted(after) == ["README.md", "config.json", "eval_results.json", "model.safetensors"]
    loaded, _ = lmlab.load(folder)
    assert torch.equal(_logits(loaded), _logits(new))
    # the API and the lmlab format behave the same
    again = _model(seed=8)
    save_checkpoint(again, folder, overwrite=True)
    assert {k: folder_hashes(folder)[k] for k in keep} == keep
    assert torch.equal(_logits(lmlab.load(folder)[0]), _logits(again))


def test_killed_export_is_cleaned_by_the_next(tmp_path) -> None:
    out = tmp_path / "out"
    script = (
        "import os, sys\n"
        "from lmlab.weights import export\n"
        "from lmlab.families import preset\n"
        "from lmlab.model import Transformer\n"
        "real = export.save_file\n"
        "def killed(*a, **k):\n"
        "    real(*a, **k)\n"
        "    os._exit(9)  # like kill -9 after the weights, before anything is renamed\n"
        "export.save_file = killed\n"
        "export.export_hf(Transformer(preset('llama-tiny')), sys.argv[1])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True)
    assert r.returncode == 9, r.stderr.decode()[-2000:]
    leftovers = [p.name for p in out.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(TMP_PREFIX), leftovers
    assert not (out / "config.json").exists()  # nothing that looks like a model
    # an older lmlab staged beside the folder; its leftover goes too
    (tmp_path / ".out.tmp4242").mkdir()
    (tmp_path / ".out.tmp4242" / "model.safetensors").write_bytes(b"x" * 1000)
    model = _model()
    export_hf(model, out)  # no --overwrite needed: only lmlab temporaries were there
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert torch.equal(_logits(lmlab.load(out)[0]), _logits(model))


def test_save_lora_writes_the_pair_as_one(tmp_path, monkeypatch) -> None:
    old_model, new_model = _lora_model(), _lora_model()
    with torch.no_grad():
        for p in new_model.parameters():
            p.add_(1.0)
    save_lora(old_model, tmp_path / "ad")
    (tmp_path / "ad" / "README.md").write_text("notes\n")
    before = folder_hashes(tmp_path / "ad")
    real = Path.write_text

    def fail_second(self: Path, *args, **kwargs):
        if self.name == "adapter_config.json":  # written after adapter_model.safetensors
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", fail_second)
    with pytest.raises(OSError, match="disk full"):
        save_lora(new_model, tmp_path / "ad", overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        save_lora(new_model, tmp_path / "fresh")
    monkeypatch.undo()
    assert folder_hashes(tmp_path / "ad") == before  # the old adapter, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad"]  # no half adapter, no temporaries
    save_lora(new_model, tmp_path / "ad", overwrite=True)
    after = folder_hashes(tmp_path / "ad")
    assert after["README.md"] == before["README.md"]
    assert after["adapter_model.safetensors"] != before["adapter_model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad"]


def test_swap_cut_short_restores_the_old_adapter(tmp_path) -> None:
    save_lora(_lora_model(), tmp_path / "ad")
    before = folder_hashes(tmp_path / "ad")
    # killed between "rename the old away" and "rename the new in"
    (tmp_path / "ad").rename(tmp_path / f"{OLD_PREFIX}123-ad")
    (tmp_path / f"{TMP_PREFIX}123-ad").mkdir()
    with pytest.raises(FileExistsError, match="already holds an adapter"):
        save_lora(_lora_model(), tmp_path / "ad")
    assert folder_hashes(tmp_path / "ad") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad"]


def test_steering_vector_save_is_atomic_and_asks_before_overwriting(tmp_path) -> None:
    path = tmp_path / "v.safetensors"
    _vector().save(path)
    (2 * _vector()).save(path, overwrite=True)
    assert torch.equal(
        SteeringVector.load(path).vectors["blocks.0.hook_resid_pre"], 2 * torch.ones(16)
    )
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]


def _train_tiny_run(tmp_path: Path):
    """Two training steps of a tiny GPT-2 on char-tokenized text prepared into a data folder."""
    from lmlab.data.text import prepare_text
    from lmlab.tokenizers import CharTokenizer
    from lmlab.train.run import train

    text = "the cat sat on the mat. " * 100
    tok = CharTokenizer.from_text(text)
    prepare_text(text, tok, tmp_path / "data", tokenizer_name="char", chars=tok.chars)
    cfg = TrainConfig(
        model="gpt2-tiny",
        model_overrides=dict(d_model=32, n_layers=1, n_heads=2),
        data=str(tmp_path / "data"),
        block_size=16,
        batch_size=4,
        max_steps=2,
        warmup_steps=0,
        eval_interval=2,
        eval_iters=1,
        log_interval=1,
        out_dir=str(tmp_path / "run"),
        tensorboard=False,
        progress=False,
        threads=1,
        seed=0,
    )
    return train(cfg).model.eval(), tok


def test_convert_a_training_run(tmp_path, capsys) -> None:
    trained, tok = _train_tiny_run(tmp_path)
    run = tmp_path / "run"
    want = _logits(trained)
    assert cli_main(["convert", str(run), str(tmp_path / "hf")]) == 0
    assert "wrote" in capsys.readouterr().out
    ckpt_file = train_ckpt.latest(run)
    assert cli_main(["convert", str(ckpt_file), str(tmp_path / "ck"), "--format", "lmlab"]) == 0
    for out in ("hf", "ck"):
        model, tok2 = lmlab.load(tmp_path / out)
        assert torch.equal(_logits(model), want), out
        assert tok2 is not None and tok2.encode("the mat") == tok.encode("the mat")
    r = subprocess.run(
        [sys.executable, "-m", "lmlab", "generate", "--model", str(tmp_path / "hf"),
         "--prompt", "the c", "--max-new-tokens", "5"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("the c"), r.stderr[-2000:]


def test_convert_falls_back_to_the_previous_intact_checkpoint(tmp_path, capsys) -> None:
    older, newer = _training_state(2), _training_state(4)
    newer["model"] = {k: v + 1 for k, v in newer["model"].items()}
    train_ckpt.save_step(tmp_path / "run", older, 2)
    last = train_ckpt.save_step(tmp_path / "run", newer, 4)
    last.write_bytes(last.read_bytes()[:-10])  # the newest is damaged
    assert cli_main(["convert", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "warning: ckpt_000004.pt is truncated" in err and "ckpt_000002.pt" in err
    model, tok = lmlab.load(tmp_path / "out")
    assert tok is None  # task data: no tokenizer to carry
    assert all(torch.equal(model.state_dict()[k], v) for k, v in older["model"].items())
