"""Every picture the experiment produces: the lab notebook's plots as plain functions.

Each function takes NumPy arrays (images as 0..255 grey pixels, labels as class indices,
probabilities as softmax output) and returns a fresh ``matplotlib.figure.Figure``; nothing
touches pyplot, so no GUI backend or global figure state is involved and callers can log
the result to MLflow or write it with :func:`save`. Class names always come from
:mod:`legoexp.classes`. Inputs are checked only where a wrong call would otherwise draw a
plausible-looking but wrong picture (logits instead of probabilities, 0..1-scaled pixels,
flattened images, out-of-range labels).
"""

from __future__ import annotations

import math
import os
from os import PathLike
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from legoexp.classes import CLASS_NAMES, NUM_CLASSES

RIGHT, WRONG, NEUTRAL = "tab:green", "tab:red", "tab:blue"


def _images(images: np.ndarray, single: bool = False) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == (3 if single else 4) and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != (2 if single else 3):
        # A flattened (N, 2304) network input would otherwise render as thin strips.
        want = "(H, W) or (H, W, 1)" if single else "(N, H, W) or (N, H, W, 1)"
        raise ValueError(f"expected image shape {want}, got {np.shape(images)}")
    scaled = np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0
    if scaled or arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
        # Scaled or normalised network input drawn against vmin=0, vmax=255 comes out black.
        raise ValueError("images must be the 0..255 pixel values, not scaled network input")
    return arr


def _labels(labels, name: str) -> np.ndarray:
    # MXNet hands labels back as float32, so accept whole-valued floats; negative or
    # too-large indices would silently pick the wrong name (CLASS_NAMES[-1]) or cell.
    arr = np.asarray(labels).reshape(-1)
    if arr.size and (np.any(arr != np.round(arr)) or arr.min() < 0 or arr.max() >= NUM_CLASSES):
        raise ValueError(f"{name} must be class indices in 0..{NUM_CLASSES - 1}")
    return arr.astype(int)


def _show(ax, image: np.ndarray) -> None:
    # Fixed 0..255 range so a dim image looks dim instead of being stretched to full contrast.
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(count: int, cols: int, cell=(2.0, 2.3)) -> tuple[Figure, list]:
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(cell[0] * cols, cell[1] * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[count:]:
        ax.set_axis_off()
    return fig, list(axes[:count])


def learning_curves(history: dict[str, list[float]]) -> Figure:
    """Loss and accuracy per epoch, train and (if present) validation, side by side."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    drawn = 0
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for split, label in (("train", "train"), ("val", "validation")):
            values = history.get(f"{split}_{metric}")
            if values is not None and len(values):
                ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
                drawn += 1
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    if not drawn:
        raise ValueError(f"no train_/val_ loss or accuracy series in history keys {sorted(history)}")
    return fig


def sample_grid(images: np.ndarray, labels: np.ndarray, n: int = 16) -> Figure:
    """The first ``n`` images in a 4-column grid, each titled with its class name."""
    images, labels = _images(images), _labels(labels, "labels")
    count = min(n, len(images))
    if count < 1 or len(labels) < count:
        raise ValueError(f"need n >= 1 and a label per image (n={n}, "
                         f"{len(images)} images, {len(labels)} labels)")
    fig, axes = _grid(count, min(4, count), cell=(2.0, 2.2))
    for ax, image, label in zip(axes, images, labels):
        _show(ax, image)
        ax.set_title(CLASS_NAMES[label], fontsize=10)
    return fig


def single_prediction(image: np.ndarray, probabilities: np.ndarray,
                      actual: int | None = None, index: int | None = None) -> Figure:
    """One image beside its softmax probabilities, the predicted class highlighted."""
    image = _images(image, single=True)
    probs = np.asarray(probabilities, dtype=float).reshape(-1)
    if probs.shape != (NUM_CLASSES,):
        raise ValueError(f"expected {NUM_CLASSES} probabilities, got {probs.size}")
    if probs.min() < 0 or probs.max() > 1 or not np.isclose(probs.sum(), 1, atol=1e-3):
        raise ValueError("probabilities must be a softmax output (0..1, summing to 1), not logits")
    predicted = int(np.argmax(probs))
    if actual is not None:
        actual = int(_labels([actual], "actual")[0])

    fig = Figure(figsize=(9, 4), layout="constrained")
    img_ax, bar_ax = fig.subplots(1, 2, width_ratios=[1, 1.6])
    _show(img_ax, image)

    hit = NEUTRAL if actual is None else (RIGHT if actual == predicted else WRONG)
    colors = ["lightgrey"] * NUM_CLASSES
    colors[predicted] = hit
    bars = bar_ax.barh(range(NUM_CLASSES), probs, color=colors)
    if actual is not None and actual != predicted:
        # Outline the true class so the eye can find how much mass it got.
        bars[actual].set_edgecolor(RIGHT)
        bars[actual].set_linewidth(2)
    bar_ax.set_yticks(range(NUM_CLASSES), CLASS_NAMES)
    bar_ax.invert_yaxis()  # label 0 on top, reading order matches CLASSES
    bar_ax.set_xlim(0, 1)
    bar_ax.set_xlabel("probability")
    bar_ax.bar_label(bars, labels=[f"{p:.2f}" if i == predicted else "" for i, p in enumerate(probs)],
                     padding=3, fontsize=9)

    title = f"predicted: {CLASS_NAMES[predicted]} ({probs[predicted]:.0%})"
    if index is not None:
        title = f"image {index} \N{EM DASH} {title}"
    if actual is not None:
        verdict = "right" if actual == predicted else "wrong"
        title += f"\nactual: {CLASS_NAMES[actual]} \N{EM DASH} {verdict}"
    fig.suptitle(title, color="black" if actual is None else hit)
    return fig


def batch_prediction(images: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> Figure:
    """A grid of images titled with predicted and true class; wrong ones framed in red."""
    images = _images(images)
    predicted, actual = _labels(predicted, "predicted"), _labels(actual, "actual")
    if not len(images) == len(predicted) == len(actual) or not len(images):
        raise ValueError(f"need matching non-empty lengths, got {len(images)} images, "
                         f"{len(predicted)} predicted, {len(actual)} actual")
    count = len(images)
    # 16 images -> 4x4 as in the lab; larger batches stay roughly square.
    cols = min(count, max(4, math.ceil(math.sqrt(count))))
    fig, axes = _grid(count, cols, cell=(2.1, 2.5))
    for ax, image, p, a in zip(axes, images, predicted, actual):
        _show(ax, image)
        color = RIGHT if p == a else WRONG
        ax.set_title(f"pred: {CLASS_NAMES[p]}\ntrue: {CLASS_NAMES[a]}", color=color, fontsize=9)
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(3 if p != a else 1.5)
    right = int(np.sum(predicted == actual))
    fig.suptitle(f"{right}/{count} correct")
    return fig


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray) -> Figure:
    """Counts of (actual, predicted) pairs, actual on rows, with accuracy in the title."""
    actual, predicted = _labels(actual, "actual"), _labels(predicted, "predicted")
    if len(actual) != len(predicted) or not len(actual):
        raise ValueError(f"need matching non-empty lengths, got {len(actual)} and {len(predicted)}")
    counts = np.bincount(actual * NUM_CLASSES + predicted,
                         minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)

    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(counts, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8, label="count")
    ticks = range(NUM_CLASSES)
    ax.set_xticks(ticks, CLASS_NAMES, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    dark = counts.max() / 2
    for (row, col), value in np.ndenumerate(counts):
        # Zeros in grey keep the off-diagonal quiet so the mistakes stand out.
        color = "white" if value > dark else ("silver" if value == 0 else "black")
        ax.text(col, row, str(value), ha="center", va="center", color=color, fontsize=9)
    right = int(np.trace(counts))
    ax.set_title(f"accuracy {right / len(actual):.1%} ({right}/{len(actual)})")
    return fig


def save(fig: Figure, path: str | PathLike) -> Path:
    """Write ``fig`` as a PNG (creating parent folders) and return the path. The PNG is written
    beside it under a hidden temporary name and renamed into place: a process killed or a disk
    filled mid-write never leaves a half-written PNG under the name someone would open."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def seed_comparison(a, b, name_a: str = "baseline", name_b: str = "best", result=None, optimism=None) -> Figure:
    """Paired per-seed test accuracies of two configurations: a grey line per seed joining
    them, their means with confidence-interval bars, and (given a ``stats.PairedResult``)
    the mean difference, its interval and the p-value in the title. Given ``optimism``
    (``selection.optimism.Optimism``), b's search CV and re-scored CV (with its CI) beside its
    column, and the optimism (search CV - test) with its CI in the title."""
    from legoexp.comparison.stats import format_p, mean_ci  # scipy only for the plots that need it

    a, b = np.asarray(a, dtype=float).reshape(-1), np.asarray(b, dtype=float).reshape(-1)
    if len(a) != len(b) or not len(a):
        raise ValueError(f"need one score per seed for both, got {len(a)} and {len(b)}")
    confidence = 0.95 if result is None else result.confidence
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.subplots()
    for pair in zip(a, b):
        ax.plot([0, 1], pair, color="grey", alpha=0.6, marker="o", markersize=5, zorder=1)
    # Means sit just outside the seed dots so their bars do not hide them.
    for x, values in ((-0.12, a), (1.12, b)):
        mean, low, high = mean_ci(values, confidence)
        ax.errorbar(x, mean, yerr=[[mean - low], [high - mean]], color=NEUTRAL, marker="D",
                    markersize=7, capsize=6, linewidth=2, zorder=2)
    ax.errorbar([], [], color=NEUTRAL, marker="D", capsize=6, label=f"mean, {confidence:.0%} CI")
    ax.plot([], [], color="grey", marker="o", label=f"one seed ({len(a)} in all)")
    if optimism is not None:
        ax.plot(1.3, optimism.search_cv, marker="*", markersize=12, color="black", linestyle="",
                label=f"{name_b}: search CV", zorder=3)
        mean, low, high = optimism.rescored_cv
        ax.errorbar(1.3, mean, yerr=[[mean - low], [high - mean]], color="black", marker="s", markersize=6,
                    capsize=5, linestyle="", label=f"{name_b}: re-scored CV, {confidence:.0%} CI", zorder=2)
    ax.set_xticks([0, 1], [name_a, name_b])
    ax.set_xlim(-0.5, 1.6 if optimism is not None else 1.5)
    ax.set_ylabel("test accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    if result is not None:
        lo, hi = result.ci_diff
        ax.set_title(f"{name_b} \N{MINUS SIGN} {name_a} = {result.mean_diff:+.4f} "
                     f"({confidence:.0%} CI {lo:+.4f}..{hi:+.4f})\n"
                     f"{result.test} {format_p(result.p_value)}, {result.n} seeds"
                     + (f"\noptimism (search CV \N{MINUS SIGN} test) {optimism.optimism[0]:+.4f} "
                        f"({confidence:.0%} CI {optimism.optimism[1]:+.4f}..{optimism.optimism[2]:+.4f})"
                        if optimism is not None else ""), fontsize=10)
    else:
        ax.set_title(f"{name_a} vs {name_b} over {len(a)} seeds", fontsize=10)
    return fig


def expected_max_curve(values) -> Figure:
    """Expected best val_accuracy of a sweep of n trials (n = 1..N, Dodge et al. 2019), with a
    band of one standard deviation, over the individual trial results in trial order."""
    from legoexp.comparison.stats import expected_max, expected_max_std

    values = np.asarray(values, dtype=float).reshape(-1)
    curve, std = expected_max(values), expected_max_std(values)
    n = np.arange(1, len(curve) + 1)
    finite = values[np.isfinite(values)]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(np.arange(1, len(values) + 1), values, s=14, color="grey", alpha=0.4,
               label="trial (in trial order)", zorder=1)
    # The best of n draws can never leave the observed range, so neither does the band.
    ax.fill_between(n, np.maximum(curve - std, finite.min()), np.minimum(curve + std, finite.max()),
                    color=NEUTRAL, alpha=0.2, linewidth=0, label="\N{PLUS-MINUS SIGN}1 std")
    ax.plot(n, curve, color=NEUTRAL, linewidth=2, label="expected best")
    ax.axhline(finite.max(), color="black", linestyle=":", linewidth=1, label="best trial")
    ax.set_xlabel("number of trials")
    ax.set_ylabel("expected best val_accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    ax.set_title(f"expected best of n trials, from {len(finite)} completed trials", fontsize=10)
    return fig


def pareto_front(points: list[dict], front: set[int], multi: bool) -> Figure:
    """CV accuracy against parameter count (log scale), a dot per complete trial with its folds'
    standard deviation as error bars; the Pareto front (no trial both more accurate and smaller)
    drawn as a step line. ``points``: dicts of ``number``, ``params``, ``accuracy``, ``std``."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for member, style in ((False, {"color": "grey", "alpha": 0.5, "label": "trial"}),
                          (True, {"color": NEUTRAL, "label": "Pareto front"})):
        chosen = [p for p in points if (p["number"] in front) == member]
        if chosen:
            ax.errorbar([p["params"] for p in chosen], [p["accuracy"] for p in chosen],
                        yerr=[p["std"] for p in chosen], fmt="o", markersize=5, capsize=3, **style)
    edge = sorted((p for p in points if p["number"] in front), key=lambda p: p["params"])
    if edge:
        ax.step([p["params"] for p in edge], [p["accuracy"] for p in edge], where="post", color=NEUTRAL, alpha=0.6)
        for p in edge:
            ax.annotate(str(p["number"]), (p["params"], p["accuracy"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("val_accuracy (CV mean, \N{PLUS-MINUS SIGN}1 std of folds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    kind = "multi-objective study" if multi else "single-objective study (front drawn, not searched)"
    ax.set_title(f"accuracy against size: {len(points)} complete trials, {len(front)} on the front\n{kind}",
                 fontsize=10)
    return fig
