"""The report's figures (matplotlib, no display): predicted against human APA scores, PER against
human accuracy, and the most frequent mispronunciations the model found or missed."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pronlm.data.records import ASPECTS
from pronlm.evaluation import metrics
from pronlm.evaluation.metrics import MddRow

PLOTS = ("apa_scatter.png", "per_vs_accuracy.png", "confusions.png")


def _jitter(values, rng) -> np.ndarray:
    """Integer scores overlap; a little noise shows how many points sit on each."""
    return np.asarray(values, float) + rng.uniform(-0.15, 0.15, len(values))


def plot_apa(pairs: dict[str, tuple[list, list]], path: Path) -> None:
    """Predicted vs human score, one panel per aspect."""
    fig = Figure(figsize=(9, 8), layout="constrained")
    rng = np.random.default_rng(0)
    for ax, aspect in zip(fig.subplots(2, 2).ravel(), ASPECTS):
        pred, human = pairs[aspect]
        ax.scatter(_jitter(human, rng), _jitter(pred, rng), s=8, alpha=0.4)
        ax.plot([0, 10], [0, 10], color="grey", lw=0.8)
        r = metrics.pcc(pred, human)[0]
        shown = f"{r:.3f}" if math.isfinite(r) else "–"
        ax.set(title=f"{aspect} (r = {shown}, n = {len(pred)})",
               xlabel="human score", ylabel="predicted score", xlim=(-0.5, 10.5), ylim=(-0.5, 10.5))
    fig.savefig(path, dpi=100)


def plot_per_vs_accuracy(rows: list[MddRow], path: Path) -> None:
    """Utterance PER against the human accuracy score, with the mean per score (paper Fig. 5)."""
    rows = [r for r in rows if r.heard]
    acc = np.array([r.human_accuracy for r in rows], float)
    per = np.array([r.errors / r.heard for r in rows], float)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(_jitter(acc, np.random.default_rng(0)), per, s=8, alpha=0.4, label="utterance")
    levels = np.unique(acc)
    ax.plot(levels, [per[acc == v].mean() for v in levels], "o-", color="C3", label="mean per score")
    ax.set(xlabel="human accuracy score", ylabel="PER", title="PER vs human accuracy")
    ax.legend()
    fig.savefig(path, dpi=100)


def plot_confusions(rows: list[MddRow], path: Path, top: int = 15) -> None:
    """The most frequent canonical->heard errors, split by what the model did (CD, DE, FA)."""
    by_pair = Counter((c, h) for r in rows for c, h, _ in r.confusions)
    outcome = Counter((c, h, lab) for r in rows for c, h, lab in r.confusions)
    pairs = [p for p, _ in by_pair.most_common(top)][::-1]
    fig = Figure(figsize=(7, 1 + 0.35 * max(len(pairs), 3)), layout="constrained")
    ax = fig.subplots()
    left = np.zeros(len(pairs))
    for label, name in (("CD", "correct diagnosis"), ("DE", "wrong diagnosis"), ("FA", "missed")):
        widths = np.array([outcome[c, h, label] for c, h in pairs], float)
        ax.barh([f"{c} → {h}" for c, h in pairs], widths, left=left, label=name)
        left += widths
    if not pairs:
        ax.text(0.5, 0.5, "no mispronounced phones", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="phones", title="most frequent mispronunciations (canonical → heard)")
    fig.legend(loc="outside lower center", ncols=3)
    fig.savefig(path, dpi=100)
