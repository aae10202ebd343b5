"""Pictures of training and of the embeddings: PNG files through matplotlib (the optional
`plot` extra), and a small text plot of the learning curve for the terminal."""

import math

from .errors import FflmError
from .fileio import atomic_write


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise FflmError("pictures need matplotlib: pip install 'fflm[plot]'") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    plt = _pyplot()
    fmt = str(path).rsplit(".", 1)[-1].lower() if "." in str(path) else "png"
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format=fmt, dpi=120, bbox_inches="tight")
    except ValueError as e:  # matplotlib's answer to an unknown format
        raise FflmError(f"{path}: {e}") from None
    finally:
        plt.close(fig)


def plot_curves(history, path, title=None):
    """Training and validation perplexity per epoch (log scale), the learning rate beside them."""
    if not history:
        raise FflmError("the model has no training history to plot")
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    train = [r.get("train_ppl") for r in history]
    if any(t is not None for t in train):
        ax.plot(epochs, [math.nan if t is None else t for t in train], "o-", label="train ppl")
    valid = [r.get("valid_ppl") for r in history]
    if any(v is not None and math.isfinite(v) for v in valid):
        ax.plot(epochs, valid, "s-", label="valid ppl")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    plain = FuncFormatter(lambda y, _: f"{y:g}")  # 150, not 1.5 x 10^2
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.grid(True, which="both", alpha=0.3)
    lr = ax.twinx()
    lr.step(epochs, [r["lr"] for r in history], "k:", where="mid", alpha=0.6, label="learning rate")
    lr.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()[0] + lr.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], loc="upper right")
    if title:
        ax.set_title(title)
    _save(fig, path)


def plot_embeddings(words, points, path, explained=None):
    """Label each word at its 2-D point (from embeddings.pca_2d)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.5)
    for w, (x, y) in zip(words, points):
        ax.annotate(w, (x, y), fontsize=7, alpha=0.8)
    if explained is not None:
        ax.set_xlabel(f"PC 1 ({100 * explained[0]:.1f}% of the variance)")
        ax.set_ylabel(f"PC 2 ({100 * explained[1]:.1f}%)")
    ax.set_title("word embeddings, first two principal components")
    _save(fig, path)


def text_plot(values, height=8, label="valid ppl"):
    """A few lines of text that show a curve: one column per epoch, '*' at each value.

    >>> print(text_plot([300.0, 200.0, 150.0], height=3))
    valid ppl 150 .. 300
     300 |*
         | *
     150 |  *
    """
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    rows = [[" "] * len(values) for _ in range(height)]
    for i, v in enumerate(values):
        r = 0 if hi == lo else round((hi - v) / (hi - lo) * (height - 1))
        rows[r][i] = "*"
    width = max(len(f"{hi:.0f}"), len(f"{lo:.0f}"))
    out = [f"{label} {lo:.0f} .. {hi:.0f}"]
    for r, cells in enumerate(rows):
        tick = f"{hi:.0f}" if r == 0 else f"{lo:.0f}" if r == height - 1 else ""
        out.append(f" {tick:>{width}} |" + "".join(cells).rstrip())
    return "\n".join(out)
