"""Scores for steered text: BLEU (Papineni et al. 2002), a sentiment lexicon, MiniLM sentiment."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU in [0, 100]: clipped n-gram precisions (n <= 4), geometric mean, brevity penalty."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    match, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for h, r in zip(hypotheses, references, strict=True):
        hw, rw = _words(h), _words(r)
        hyp_len, ref_len = hyp_len + len(hw), ref_len + len(rw)
        for n in range(1, max_n + 1):
            hn, rn = _ngrams(hw, n), _ngrams(rw, n)
            match[n - 1] += sum(min(c, rn[g]) for g, c in hn.items())
            total[n - 1] += max(len(hw) - n + 1, 0)
    if hyp_len == 0 or min(match) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(match, total, strict=True)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_p)


def sentence_bleu(hypothesis: str, reference: str, max_n: int = 4) -> float:
    """Sentence BLEU in [0, 100] with add-one smoothing of the n>1 precisions (Lin & Och 2004)."""
    hw, rw = _words(hypothesis), _words(reference)
    if not hw:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        hn, rn = _ngrams(hw, n), _ngrams(rw, n)
        m, t = sum(min(c, rn[g]) for g, c in hn.items()), max(len(hw) - n + 1, 0)
        if n == 1 and m == 0:
            return 0.0
        m, t = (m, t) if n == 1 else (m + 1, t + 1)
        log_p += math.log(m / t) / max_n
    bp = 1.0 if len(hw) > len(rw) else math.exp(1 - len(rw) / len(hw))
    return 100 * bp * math.exp(log_p)


# A small hand-written lexicon (stated as such in reports): common English sentiment words.
POSITIVE = set(
    [
        "love",
        "loved",
        "loves",
        "lovely",
        "loving",
        "happy",
        "happiness",
        "joy",
        "joyful",
        "glad",
        "great",
        "good",
        "wonderful",
        "amazing",
        "awesome",
        "beautiful",
        "best",
        "better",
        "brilliant",
        "delight",
        "delighted",
        "delightful",
        "enjoy",
        "enjoyed",
        "excellent",
        "excited",
        "exciting",
        "fantastic",
        "fun",
        "grateful",
        "kind",
        "like",
        "liked",
        "nice",
        "perfect",
        "pleasant",
        "proud",
        "smile",
        "smiled",
        "smiles",
        "sweet",
        "thank",
        "thanks",
        "thankful",
        "warm",
        "welcome",
        "win",
        "favorite",
        "friendly",
        "hope",
        "hopeful",
        "laugh",
        "laughed",
        "peace",
        "peaceful",
        "positive",
        "fine",
        "fond",
        "cheerful",
        "celebrate",
        "success",
    ]
)
NEGATIVE = set(
    [
        "hate",
        "hated",
        "hates",
        "hateful",
        "sad",
        "sadness",
        "angry",
        "anger",
        "awful",
        "bad",
        "worse",
        "worst",
        "terrible",
        "horrible",
        "disgusting",
        "disgusted",
        "annoyed",
        "annoying",
        "ugly",
        "pain",
        "painful",
        "hurt",
        "cry",
        "cried",
        "crying",
        "upset",
        "miserable",
        "boring",
        "bored",
        "afraid",
        "fear",
        "scared",
        "lonely",
        "sick",
        "tired",
        "hopeless",
        "fail",
        "failed",
        "failure",
        "kill",
        "killed",
        "die",
        "died",
        "death",
        "dead",
        "stupid",
        "wrong",
        "negative",
        "evil",
        "cruel",
        "nasty",
        "poor",
        "unhappy",
        "disappointed",
        "disappointing",
        "depressed",
        "depressing",
        "fight",
        "war",
        "violent",
        "dislike",
        "furious",
    ]
)


def lexicon_score(text: str) -> int:
    """(# positive words) - (# negative words) in the lexicon above."""
    words = _words(text)
    return sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)


def lexicon_positive(texts: Sequence[str]) -> list[bool]:
    """Per text: strictly more positive than negative lexicon words."""
    return [lexicon_score(t) > 0 for t in texts]


ANCHORS = {
    "positive": [
        "I love this, it makes me so happy.",
        "What a wonderful, joyful day.",
        "This is great, I feel grateful and delighted.",
        "Everything went well and everyone was smiling.",
    ],
    "negative": [
        "I hate this, it makes me so angry.",
        "What an awful, miserable day.",
        "This is terrible, I feel sad and disappointed.",
        "Everything went wrong and everyone was crying.",
    ],
}


class MiniLMJudge:
    """Zero-shot sentiment from MiniLM sentence embeddings: nearer the positive or negative anchors."""

    def __init__(self, model: Any = None, tokenizer: Any = None) -> None:
        if model is None:
            import lmlab

            model, tokenizer = lmlab.load("minilm-l6")
        self.model, self.tok = model.float().eval(), tokenizer
        self.pos = self.embed(ANCHORS["positive"]).mean(0)
        self.neg = self.embed(ANCHORS["negative"]).mean(0)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], max_len: int = 128) -> torch.Tensor:
        """Mean-pooled, L2-normalized sentence embeddings [N, d]."""
        ids = [self.tok.encode(t, add_special=True)[:max_len] for t in texts]
        T = max(map(len, ids))
        tokens = torch.zeros(len(ids), T, dtype=torch.long)
        mask = torch.zeros(len(ids), T, dtype=torch.long)
        for b, r in enumerate(ids):
            tokens[b, : len(r)], mask[b, : len(r)] = torch.tensor(r), 1
        hidden = self.model(tokens, attention_mask=mask, return_hidden=True).float()
        w = mask[..., None].float()
        emb = (hidden * w).sum(1) / w.sum(1)
        return torch.nn.functional.normalize(emb, dim=-1)

    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        """cos(positive anchors) - cos(negative anchors) per text."""
        e = self.embed(texts)
        return e @ self.pos - e @ self.neg

    def positive(self, texts: Sequence[str]) -> list[bool]:
        """Per text: nearer the positive anchors; text without a word (e.g. only newlines) is not."""
        has_words = [bool(re.search(r"\w", t)) for t in texts]
        return [bool(s > 0) and w for s, w in zip(self.scores(texts), has_words, strict=True)]
