"""Knowledge editing on SmolLM2: gradient-direction injection vs a ROME rank-one edit, side by side."""

from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from lmlab.eval.bootstrap import bootstrap_ci
from lmlab.interp.models import load_model
from lmlab.paths import data_dir
from lmlab.runs import RunDir
from lmlab.steer.edit import injection_edit, next_token_probs
from lmlab.steer.rome import key_covariance, rome_edit
from lmlab.train.logging import log_run

SUMMARY = (
    "knowledge edit: make SmolLM2 say the Eiffel Tower is in Rome (gradient injection vs ROME)"
)

# Paraphrases of the edited prompt: the validation ones choose the injection coefficient, the
# test ones are reported (and looked at only for the chosen coefficient and for ROME).
VAL_PARAPHRASES = [
    "The Eiffel Tower is located in the city of",
    "You can visit the Eiffel Tower in",
    "Tourists see the Eiffel Tower when they travel to",
    "The Eiffel Tower, a famous landmark, is found in",
    "Every year millions of people visit the Eiffel Tower in",
    "The Eiffel Tower was built in the city of",
]
TEST_PARAPHRASES = [
    "Where is the Eiffel Tower? It is in",
    "The famous Eiffel Tower stands in",
    "The Eiffel Tower can be found in",
    "The city where the Eiffel Tower stands is",
    "If you want to see the Eiffel Tower, go to",
    "The Eiffel Tower is a landmark in",
]
# Unrelated facts whose top answer should not change; the first three of each are neighbours
# (landmarks and capitals near the edited fact).
VAL_UNRELATED = [
    "The Louvre is in",
    "The capital of France is",
    "The Colosseum is in",
    "Big Ben is in",
    "The capital of Germany is",
    "The Great Wall is in",
    "Mount Fuji is in",
    "The capital of Spain is",
    "The pyramids of Giza are in",
    "The capital of Canada is",
]
TEST_UNRELATED = [
    "Notre-Dame Cathedral is in",
    "The capital of Italy is",
    "The Sagrada Familia is in",
    "The Statue of Liberty is in",
    "The capital of Japan is",
    "The Brandenburg Gate is in",
    "The Sydney Opera House is in",
    "The Taj Mahal is in",
    "The Kremlin is in",
    "The Golden Gate Bridge is in",
    "The Acropolis is in",
    "The capital of Egypt is",
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
    """Top-1 answers of the edited prompt, one split's paraphrases and its unrelated facts."""
    p = next_token_probs(model, [prompt_ids, *para_ids, *unrel_ids])
    top = p.argmax(-1)
    n = len(para_ids)
    para_hit = (top[1 : 1 + n] == target).tolist()
    kept = (top[1 + n :] == base_top).tolist()
    return {
        "efficacy": bool(top[0] == target),
        "p_target": round(float(p[0, target]), 4),
        "p_old": round(float(p[0, old]), 4),
        "paraphrases_hit": int(sum(para_hit)),
        "paraphrase_hits": [int(x) for x in para_hit],
        "paraphrase_tops": [tok.decode([int(t)]) for t in top[1 : 1 + n]],
        "unrelated_kept": int(sum(kept)),
        "unrelated_kept_each": [int(x) for x in kept],
        "unrelated_changed": [
            tok.decode([int(t)]) for t, b in zip(top[1 + n :], base_top, strict=True) if t != b
        ],
    }


def choose_coeff(val_sweep: list[dict], n_para: int) -> dict:
    """Smallest coefficient that flips the prompt and at least half the validation paraphrases.

    If none does: the one with the most validation paraphrases edited (ties: the smaller one).
    """
    ok = [r for r in val_sweep if r["efficacy"] and 2 * r["paraphrases_hit"] >= n_para]
    if ok:
        return min(ok, key=lambda r: r["coeff"])
    return max(val_sweep, key=lambda r: (r["paraphrases_hit"], -r["coeff"]))


def _share_ci(hits: list[int], seed: int = 0) -> list[float]:
    """Bootstrap 95% interval of a share of 0/1 outcomes."""
    return [round(x, 3) for x in bootstrap_ci(hits, seed=seed)]


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
    """Choose the injection coefficient on validation paraphrases, report both edits on test ones."""
    torch.set_num_threads(cfg.threads)
    model, tok = load_model(cfg.model)
    prompt, subject = tok.encode(cfg.prompt), tok.encode(cfg.subject)
    target, old = tok.encode(cfg.target)[0], tok.encode(cfg.old)[0]
    splits = {
        "val": ([tok.encode(p) for p in VAL_PARAPHRASES], [tok.encode(p) for p in VAL_UNRELATED]),
        "test": (
            [tok.encode(p) for p in TEST_PARAPHRASES],
            [tok.encode(p) for p in TEST_UNRELATED],
        ),
    }
    base_top = {k: next_token_probs(model, u).argmax(-1) for k, (_, u) in splits.items()}

    def evaluate(split: str) -> dict:
        para, unrel = splits[split]
        return _evaluate(model, tok, prompt, para, unrel, target, old, base_top[split])

    before = evaluate("test")
    sweep = []  # validation only
    edit = injection_edit(
        model, prompt, subject, target, cfg.inject_layer, coeff=0.0, which=cfg.inject_at
    )
    for c in cfg.coeffs:
        edit.coeff = c
        with edit.apply(model):
            sweep.append({"coeff": c, **evaluate("val")})
    chosen_val = choose_coeff(sweep, len(VAL_PARAPHRASES))
    edit.coeff = chosen_val["coeff"]
    with edit.apply(model):
        chosen = {"coeff": chosen_val["coeff"], **evaluate("test")}

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
    rome = evaluate("test")
    r.restore()
    for m in (before, chosen, rome):
        m["paraphrases_ci95"] = _share_ci(m["paraphrase_hits"])
        m["unrelated_kept_ci95"] = _share_ci(m["unrelated_kept_each"])
    n_para, n_unrel = len(TEST_PARAPHRASES), len(TEST_UNRELATED)

    fig, ax = plt.subplots(figsize=(6, 4))
    cs = [s["coeff"] for s in sweep]
    ax.plot(cs, [s["p_target"] for s in sweep], "o-", label=f"p({cfg.target.strip()})")
    ax.plot(cs, [s["p_old"] for s in sweep], "s-", label=f"p({cfg.old.strip()})")
    ax.plot(
        cs,
        [s["unrelated_kept"] / len(VAL_UNRELATED) for s in sweep],
        "^--",
        label="unrelated kept (val)",
    )
    ax.plot(
        cs,
        [s["paraphrases_hit"] / len(VAL_PARAPHRASES) for s in sweep],
        "v--",
        label="paraphrases edited (val)",
    )
    ax.axvline(chosen["coeff"], color="gray", ls=":")
    ax.set_xlabel(f"injection coefficient (layer {cfg.inject_layer}, subject's last token)")
    ax.set_title(f"{cfg.prompt!r} -> {cfg.target.strip()}?")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.file("injection_sweep.png"), dpi=120)
    plt.close(fig)

    metrics = {"splits": {"val": {"paraphrases": len(VAL_PARAPHRASES), "unrelated": len(VAL_UNRELATED)},
                          "test": {"paraphrases": n_para, "unrelated": n_unrel}},
               "before": before, "injection": chosen, "injection_coeff": chosen["coeff"],
               "injection_val_sweep": sweep, "rome": rome,
               "rome_nll": [round(x, 3) for x in r.losses]}  # fmt: skip

    def share(m: dict, key: str, n: int) -> str:
        lo, hi = m[f"{key}_ci95"]
        count = m["paraphrases_hit" if key == "paraphrases" else "unrelated_kept"]
        return f"{count}/{n} [{lo:.2f}, {hi:.2f}]"

    def row(name: str, m: dict) -> str:
        return (f"| {name} | {m['efficacy']} | {m['p_target']:.3f} | {m['p_old']:.3f} | "
                f"{share(m, 'paraphrases', n_para)} | {share(m, 'unrelated_kept', n_unrel)} |")  # fmt: skip

    lines = [
        f"# Knowledge edit on {cfg.model}: {cfg.prompt!r} -> {cfg.target.strip()}",
        "",
        f"Splits: **validation** {len(VAL_PARAPHRASES)} paraphrases + {len(VAL_UNRELATED)} unrelated "
        f"facts (choose the injection coefficient); **test** {n_para} paraphrases + {n_unrel} "
        "unrelated facts (reported; disjoint from validation and from the edit prompt). Shares on "
        "the test split carry bootstrap 95% intervals over its items (small sets: read them as "
        "rough).",
        "",
        f"Injection: the unit direction -d(-log p({cfg.target.strip()}))/d(resid_pre, layer "
        f"{cfg.inject_layer}) at the subject's last token, added at the subject's {cfg.inject_at} "
        "token(s) wherever the subject occurs, with the smallest swept coefficient "
        f"({cfg.coeffs}) that flips the prompt and at least half the validation paraphrases: "
        f"{chosen['coeff']}. ROME (nothing chosen on evaluation data): rank-one edit of layer "
        f"{cfg.rome_layer}'s MLP down projection, key averaged over {len(PREFIXES)} prefixes, v* "
        f"by {cfg.rome_steps} Adam steps (NLL + KL on 'The Eiffel Tower is a' + norm decay), C from "
        f"{cfg.cov_tokens} corpus tokens (tinyshakespeare + SMS text).",
        "",
        "## Test split",
        "",
        f"| method | says {cfg.target.strip()} | p(target) | p(old) | paraphrases edited | "
        "unrelated kept |",
        "|---|---|---|---|---|---|",
        row("unedited", before),
        row(f"injection (coeff {chosen['coeff']})", chosen),
        row("ROME", rome),
        "",
        "Test paraphrases: " + "; ".join(f"`{p}`" for p in TEST_PARAPHRASES),
        "",
        "Test unrelated facts (the first three are neighbours): "
        + "; ".join(f"`{p}`" for p in TEST_UNRELATED),
        "",
        f"Injection changed: {chosen['unrelated_changed']}; ROME changed: {rome['unrelated_changed']}.",
        f"Paraphrase answers, injection: {chosen['paraphrase_tops']}; ROME: {rome['paraphrase_tops']}.",
        "",
        f"## Validation sweep (injection; {len(VAL_PARAPHRASES)} paraphrases, "
        f"{len(VAL_UNRELATED)} unrelated)",
        "",
        "| coeff | says target | p(target) | paraphrases edited | unrelated kept |",
        "|---|---|---|---|---|",
        *[
            f"| {s['coeff']} | {s['efficacy']} | {s['p_target']:.3f} | "
            f"{s['paraphrases_hit']}/{len(VAL_PARAPHRASES)} | "
            f"{s['unrelated_kept']}/{len(VAL_UNRELATED)} |"
            for s in sweep
        ],
        "",
        "![](injection_sweep.png)",
    ]
    out.write_report("\n".join(lines) + "\n")
    log_run(out.path, metrics)
    return metrics
