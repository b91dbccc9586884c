"""Classification metrics: accuracy, per-class precision/recall/F1, confusion matrix (and its PNG)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class ClassificationReport:
    """Scores of predictions against labels; `confusion[i][j]` counts true i predicted j."""

    accuracy: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    confusion: list[list[int]]
    names: list[str]

    def as_dict(self) -> dict:
        per = {
            n: {"precision": p, "recall": r, "f1": f}
            for n, p, r, f in zip(self.names, self.precision, self.recall, self.f1, strict=True)
        }
        return {"accuracy": self.accuracy, "per_class": per, "confusion": self.confusion}

    def markdown(self) -> str:
        lines = ["| class | precision | recall | F1 |", "|---|---|---|---|"]
        for n, p, r, f in zip(self.names, self.precision, self.recall, self.f1, strict=True):
            lines.append(f"| {n} | {p:.4f} | {r:.4f} | {f:.4f} |")
        return "\n".join(lines)


def classification_report(
    pred: list[int] | torch.Tensor, true: list[int] | torch.Tensor, names: list[str]
) -> ClassificationReport:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix."""
    pred, true = torch.as_tensor(pred).long(), torch.as_tensor(true).long()
    if pred.shape != true.shape or pred.numel() == 0:
        raise ValueError(
            f"need equally many predictions and labels, got {pred.shape} and {true.shape}"
        )
    C = len(names)
    conf = torch.zeros(C, C, dtype=torch.long)
    conf.index_put_((true, pred), torch.ones_like(true), accumulate=True)
    tp = conf.diag().double()
    prec = (tp / conf.sum(0).clamp(min=1)).tolist()
    rec = (tp / conf.sum(1).clamp(min=1)).tolist()
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(prec, rec, strict=True)]
    acc = float(tp.sum() / conf.sum())
    return ClassificationReport(acc, prec, rec, f1, conf.tolist(), list(names))


def plot_confusion(report: ClassificationReport, path: str | Path, title: str = "") -> Path:
    """Save the confusion matrix as a PNG with counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = torch.tensor(report.confusion)
    fig, ax = plt.subplots(figsize=(3 + 0.6 * len(report.names), 2.6 + 0.6 * len(report.names)))
    ax.imshow(conf, cmap="Blues")
    ticks = range(len(report.names))
    ax.set_xticks(ticks, report.names)
    ax.set_yticks(ticks, report.names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = conf.max().item()
    for i in ticks:
        for j in ticks:
            color = "white" if conf[i, j] > top / 2 else "black"
            ax.text(j, i, str(conf[i, j].item()), ha="center", va="center", color=color)
    ax.set_title(title or f"accuracy {report.accuracy:.2%}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
