"""What a model name means for the CLI: real weights (packaged), or an architecture-only preset."""

from __future__ import annotations

from lmlab.packaged import PACKAGED, PackagedModel


def real_counterparts(preset: str) -> list[PackagedModel]:
    """The packaged real models of the architecture `preset` names (`smollm2-135m` ->
    `smollm2-135m-instruct`, `gemma3-270m` -> `gemma3-270m`)."""
    return [m for m in PACKAGED.values() if m.name == preset or m.name.startswith(preset + "-")]


def no_tokenizer_hint(name: str) -> str:
    """Why model `name` came without a tokenizer, and the fix, for a one-line error."""
    from lmlab.families import PRESETS

    if name in PRESETS and name not in PACKAGED:
        real = real_counterparts(name)
        use = (
            f"for the real model use --model {real[0].name} (packaged: {real[0].install})"
            if real
            else "for real weights pass a hub id, HF folder or .gguf file as --model"
        )
        return (
            f"model {name!r} is an architecture-only preset (random weights, no tokenizer) — "
            f"{use}, or pass --tokenizer to try the random model"
        )
    return (
        f"model {name!r} comes without a tokenizer — pass --tokenizer (a folder with "
        "tokenizer.json, a .gguf file, or gpt2)"
    )
