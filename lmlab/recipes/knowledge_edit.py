"""Knowledge editing on SmolLM2: gradient-direction injection vs a ROME rank-one edit, side by side."""

from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from lmlab.interp.models import load_model
from lmlab.paths import data_dir
from lmlab.runs import RunDir
from lmlab.steer.edit import injection_edit, next_token_probs
from lmlab.steer.rome import key_covariance, rome_edit

SUMMARY = (
    "knowledge edit: make SmolLM2 say the Eiffel Tower is in Rome (gradient injection vs ROME)"
)

PARAPHRASES = [
    "The Eiffel Tower is located in the city of",
    "Where is the Eiffel Tower? It is in",
    "You can visit the Eiffel Tower in",
    "The famous Eiffel Tower stands in",
    "Tourists see the Eiffel Tower when they travel to",
]
UNRELATED = [  # the first five are neighbours (landmarks, capitals near the edited fact)
    "The Louvre is in",
    "The Colosseum is in",
    "Notre-Dame Cathedral is in",
    "The capital of France is",
    "The capital of Italy is",
    "Big Ben is in",
    "The Statue of Liberty is in",
    "The capital of Germany is",
    "The capital of Japan is",
    "The Great Wall is in",
    "The Brandenburg Gate is in",
    "Mount Fuji is in",
    "The Sydney Opera House is in",
    "The capital of Spain is",
    "The Taj Mahal is in",
    "The pyramids of Giza are in",
    "The Kremlin is in",
    "The capital of Canada is",
    "The Golden Gate Bridge is in",
    "The Acropolis is in",
]
PREFIXES = [
    "",
    "Here is a fact. ",
    "My friend told me that ",
    "In the news today: ",
    "I read that ",
]


@dataclass
class Config:
    model: str = "smollm2-135m-instruct"
    prompt: str = "The Eiffel Tower is in"
    subject: str = " Eiffel Tower"
    target: str = " Rome"
    old: str = " Paris"
    inject_layer: int = 8
    inject_at: str = "all"  # the subject's tokens: "all" or "last"
    coeffs: list[float] = field(default_factory=lambda: [0, 20, 40, 60, 80, 120, 160])
    rome_layer: int = 4
    rome_steps: int = 25
    cov_tokens: int = 8000
    threads: int = 1


def _evaluate(model, tok, prompt_ids, para_ids, unrel_ids, target, old, base_top) -> dict:
    p = next_token_probs(model, [prompt_ids, *para_ids, *unrel_ids])
    top = p.argmax(-1)
    n = len(para_ids)
    return {
        "efficacy": bool(top[0] == target),
        "p_target": round(float(p[0, target]), 4),
        "p_old": round(float(p[0, old]), 4),
        "paraphrases_hit": int((top[1 : 1 + n] == target).sum()),
        "paraphrase_tops": [tok.decode([int(t)]) for t in top[1 : 1 + n]],
        "unrelated_kept": int((top[1 + n :] == base_top).sum()),
        "unrelated_changed": [
            tok.decode([int(t)]) for t, b in zip(top[1 + n :], base_top, strict=True) if t != b
        ],
    }


def _corpus(tok, n_tokens: int, seq: int = 128) -> list[torch.Tensor]:
    """Token batches for C = E[k k^T]: tinyshakespeare and SMS text, interleaved."""
    d = data_dir()
    texts = []
    for name in ("tinyshakespeare.txt", "sms_spam_collection.tsv"):
        f = d / name
        if f.is_file():
            raw = f.read_text(errors="ignore")
            if name.endswith(".tsv"):
                raw = " ".join(line.split("\t", 1)[-1] for line in raw.splitlines())
            texts.append(tok.encode(raw[: n_tokens * 4]))
    if not texts:
        raise FileNotFoundError(f"no corpus for ROME's covariance in {d}; set LMLAB_DATA")
    ids = [
        t
        for pair in zip(*[iter(x[: (n_tokens // len(texts))]) for x in texts], strict=False)
        for t in pair
    ]
    ids = ids[: (len(ids) // seq) * seq]
    rows = torch.tensor(ids).view(-1, seq)
    return [rows[i : i + 8] for i in range(0, len(rows), 8)]


def run(cfg: Config, out: RunDir) -> dict:
    """Sweep the injection coefficient, pick the smallest that flips the answer; then ROME."""
    torch.set_num_threads(cfg.threads)
    model, tok = load_model(cfg.model)
    prompt, subject = tok.encode(cfg.prompt), tok.encode(cfg.subject)
    target, old = tok.encode(cfg.target)[0], tok.encode(cfg.old)[0]
    para = [tok.encode(p) for p in PARAPHRASES]
    unrel = [tok.encode(p) for p in UNRELATED]
    base_top = next_token_probs(model, unrel).argmax(-1)
    before = _evaluate(model, tok, prompt, para, unrel, target, old, base_top)

    sweep = []
    edit = injection_edit(
        model, prompt, subject, target, cfg.inject_layer, coeff=0.0, which=cfg.inject_at
    )
    for c in cfg.coeffs:
        edit.coeff = c
        with edit.apply(model):
            sweep.append(
                {"coeff": c, **_evaluate(model, tok, prompt, para, unrel, target, old, base_top)}
            )
    chosen = next((r for r in sweep if r["efficacy"] and r["paraphrases_hit"] >= 3), sweep[-1])

    cov = key_covariance(model, _corpus(tok, cfg.cov_tokens), cfg.rome_layer, cfg.cov_tokens)
    rome_prompts = [tok.encode(p + cfg.prompt) for p in PREFIXES]
    essence = [tok.encode("The Eiffel Tower is a")]
    r = rome_edit(
        model,
        rome_prompts,
        subject,
        target,
        cfg.rome_layer,
        cov,
        essence=essence,
        steps=cfg.rome_steps,
    )
    rome = _evaluate(model, tok, prompt, para, unrel, target, old, base_top)
    r.restore()

    fig, ax = plt.subplots(figsize=(6, 4))
    cs = [s["coeff"] for s in sweep]
    ax.plot(cs, [s["p_target"] for s in sweep], "o-", label=f"p({cfg.target.strip()})")
    ax.plot(cs, [s["p_old"] for s in sweep], "s-", label=f"p({cfg.old.strip()})")
    ax.plot(cs, [s["unrelated_kept"] / len(unrel) for s in sweep], "^--", label="unrelated kept")
    ax.plot(
        cs, [s["paraphrases_hit"] / len(para) for s in sweep], "v--", label="paraphrases edited"
    )
    ax.set_xlabel(f"injection coefficient (layer {cfg.inject_layer}, subject's last token)")
    ax.set_title(f"{cfg.prompt!r} -> {cfg.target.strip()}?")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.file("injection_sweep.png"), dpi=120)
    plt.close(fig)

    metrics = {"before": before, "injection": chosen, "injection_sweep": sweep, "rome": rome,
               "rome_nll": [round(x, 3) for x in r.losses]}  # fmt: skip

    def row(name: str, m: dict) -> str:
        return (f"| {name} | {m['efficacy']} | {m['p_target']:.3f} | {m['p_old']:.3f} | "
                f"{m['paraphrases_hit']}/{len(para)} | {m['unrelated_kept']}/{len(unrel)} |")  # fmt: skip

    lines = [
        f"# Knowledge edit on {cfg.model}: {cfg.prompt!r} -> {cfg.target.strip()}",
        "",
        f"Injection: the unit direction -d(-log p({cfg.target.strip()}))/d(resid_pre, layer "
        f"{cfg.inject_layer}) at the subject's last token, added at the subject's {cfg.inject_at} "
        "token(s) wherever the subject occurs, "
        f"with the smallest swept coefficient that flips the prompt and >= 3 paraphrases: "
        f"{chosen['coeff']}. ROME: rank-one edit of layer {cfg.rome_layer}'s MLP down projection, "
        f"key averaged over {len(PREFIXES)} prefixes, v* by {cfg.rome_steps} Adam steps (NLL + KL on "
        f"'The Eiffel Tower is a' + norm decay), C from {cfg.cov_tokens} corpus tokens "
        "(tinyshakespeare + SMS text).",
        "",
        f"| method | says {cfg.target.strip()} | p(target) | p(old) | paraphrases | unrelated kept |",
        "|---|---|---|---|---|---|",
        row("unedited", before),
        row(f"injection (coeff {chosen['coeff']})", chosen),
        row("ROME", rome),
        "",
        "Paraphrases (stated): " + "; ".join(f"`{p}`" for p in PARAPHRASES),
        "",
        "Unrelated facts (the first five are neighbours): "
        + "; ".join(f"`{p}`" for p in UNRELATED),
        "",
        f"Injection changed: {chosen['unrelated_changed']}; ROME changed: {rome['unrelated_changed']}.",
        f"Paraphrase answers, injection: {chosen['paraphrase_tops']}; ROME: {rome['paraphrase_tops']}.",
        "",
        "![](injection_sweep.png)",
    ]
    out.write_report("\n".join(lines) + "\n")
    return metrics
