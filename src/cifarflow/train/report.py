"""``report.html``: one self-contained page (figures embedded as PNG) a user can open from any bucket browser.

Training curves, the confusion matrix (every class named up to 100 classes; beyond, ticks only), the pairs of
classes most often confused, per-class precision/recall, a grid of test images at their own size (scaled for
display) with their true and predicted class names from the manifest, and the dataset's statistics.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from cifarflow.train.source import DataSource


def render(
    metrics: dict[str, Any],
    *,
    source: DataSource,
    sample: np.ndarray,
    sample_labels: np.ndarray,
    sample_pred: np.ndarray,
) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display in pods or CI
    names = metrics["class_names"]
    test = metrics["test"]
    history = metrics.get("history", [])
    sections = [
        _summary(metrics),
        _section(
            "Training curves", _img(_curves(history, test["accuracy"])) if history else "<p>No history.</p>"
        ),
        _section("Confusion matrix (test)", _img(_confusion(np.array(test["confusion_matrix"]), names))),
        _section("Most confused classes (test)", _confused_pairs(np.array(test["confusion_matrix"]), names)),
        _section("Per-class precision and recall (test)", _per_class_table(test["per_class"])),
        _section(
            f"Test images ({sample.shape[1]}x{sample.shape[2]} px): true / predicted (red: wrong)",
            _img(_grid(sample, sample_labels, sample_pred, names)),
        ),
        _section("Dataset", _dataset(source)),
    ]
    architecture = metrics.get("training", {}).get("architecture", {})
    title = f"cifarflow report: {html.escape(str(architecture.get('model', 'model')))}"
    return _PAGE.format(title=title, body="\n".join(sections))


def _summary(metrics: dict[str, Any]) -> str:
    test = metrics["test"]
    training = metrics.get("training", {})
    job = training.get("job", {})
    config = training.get("config", {})
    history = metrics.get("history", [])
    seconds = sum(h.get("seconds", 0.0) for h in history)
    rows = [
        ("Test accuracy", f"<b>{test['accuracy']:.2%}</b> on {test['images']:,} images"),
        ("Macro precision / recall", f"{test['macro_precision']:.2%} / {test['macro_recall']:.2%}"),
        ("Model", html.escape(str(training.get("architecture", "")))),
        ("Model URL", html.escape(metrics["model"])),
        ("Dataset", f"{html.escape(metrics['dataset']['id'])} ({html.escape(metrics['dataset']['url'])})"),
        ("Epochs / global batch", f"{len(history)} / {config.get('batch_size', '?')}"),
        (
            "Job",
            f"{job.get('workers', 1)} worker(s), {job.get('replicas', 1)} replica(s), mixed precision "
            f"{'on' if job.get('mixed_precision') else 'off'}, XLA {'on' if job.get('xla') else 'off'}",
        ),
        ("Training time (steps only)", f"{seconds:.0f} s"),
    ]
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table class='kv'>{body}</table>"


def _section(title: str, body: str) -> str:
    return f"<h2>{html.escape(title)}</h2>\n{body}"


def _img(png: bytes) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'/>"


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _curves(history: list[dict[str, float]], test_accuracy: float) -> bytes:
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.plot(epochs, [h["loss"] for h in history], "o-", label="train (smoothed labels)")
    if all("val_loss" in h for h in history):
        ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax2.plot(epochs, [h["accuracy"] for h in history], "o-", label="train (augmented)")
    if all("val_accuracy" in h for h in history):
        ax2.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    ax2.axhline(test_accuracy, color="k", ls="--", lw=1, label=f"test {test_accuracy:.2%}")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(fig)


# Up to this many classes every row and column of the confusion matrix is named; counts are written inside
# the cells up to CELL_TEXT_MAX. The figure grows with the classes up to CONFUSION_MAX_INCHES a side.
NAMED_MAX = 100
CELL_TEXT_MAX = 20
CONFUSION_MAX_INCHES = 18
NAME_CHARS = 18  # class names longer than this are cut (with an ellipsis) in figures
CONFUSED_PAIRS = 10


def _confusion(cm: np.ndarray, names: list[str]) -> bytes:
    import matplotlib.pyplot as plt

    k = len(names)
    size = min(max(4.5, 0.5 * k if k <= CELL_TEXT_MAX else 0.17 * k), CONFUSION_MAX_INCHES)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    if k <= NAMED_MAX:
        # Font shrinks with the classes so that 100 names still fit one per row (about 6 pt at 100).
        font = 8 if k <= CELL_TEXT_MAX else max(4.5, min(8.0, 600 / k))
        short = [_short(n) for n in names]
        ax.set_xticks(range(k), short, rotation=45 if k <= CELL_TEXT_MAX else 90, ha="right", fontsize=font)
        ax.set_yticks(range(k), short, fontsize=font)
    if k <= CELL_TEXT_MAX:
        for i in range(k):
            for j in range(k):
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8, color=color)
    ax.set(xlabel="predicted", ylabel="true")
    return _png(fig)


def _confused_pairs(cm: np.ndarray, names: list[str]) -> str:
    """The off-diagonal cells with the most images: readable however many classes there are."""
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:CONFUSED_PAIRS]
    pairs = [(int(i), int(j)) for i, j in zip(*np.unravel_index(order, off.shape), strict=True) if off[i, j]]
    if not pairs:
        return "<p>No test image was confused with another class.</p>"
    support = cm.sum(axis=1)
    head = "<tr><th>true</th><th>predicted</th><th>images</th><th>share of the true class</th></tr>"
    rows = "".join(
        f"<tr><td>{html.escape(names[i])}</td><td>{html.escape(names[j])}</td><td>{off[i, j]}</td>"
        f"<td>{off[i, j] / max(int(support[i]), 1):.1%}</td></tr>"
        for i, j in pairs
    )
    return f"<table>{head}{rows}</table>"


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "\u2026"


# Grid cells are this many inches a side for CIFAR's 32 px, growing with the square root of the side (a 224 px
# image gets about 2.6x the room of a 32 px one): large images show their detail without a giant page.
CELL_INCHES = 1.6
CELL_MAX_INCHES = 4.5
GRID_INCHES = 17  # the widest grid (the page scales it down to its width); 8 columns of CIFAR images


def _grid(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, names: list[str]) -> bytes:
    import matplotlib.pyplot as plt

    side = max(images.shape[1:3]) if images.ndim == 4 else 32
    cell = min(CELL_INCHES * (side / 32) ** 0.5, CELL_MAX_INCHES)
    cols = max(3, min(8, int(GRID_INCHES // cell)))
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * (cell + 0.3)))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i >= len(images):
            continue
        # Pixel-exact for small images (no blur); large ones are downscaled for display, so smooth them.
        ax.imshow(images[i], interpolation="nearest" if side <= 64 else "antialiased")
        right = labels[i] == predicted[i]
        ax.set_title(
            f"{_short(names[labels[i]])}\n{_short(names[predicted[i]])}",
            fontsize=7,
            color="black" if right else "red",
        )
    return _png(fig)


def _per_class_table(per_class: list[dict[str, Any]]) -> str:
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    rows = "".join(
        f"<tr><td>{html.escape(c['class'])}</td><td>{c['precision']:.3f}</td><td>{c['recall']:.3f}</td>"
        f"<td>{c['f1']:.3f}</td><td>{c['support']}</td></tr>"
        for c in per_class
    )
    return f"<table>{head}{rows}</table>"


def _dataset(source: DataSource) -> str:
    stats, manifest = source.stats, source.manifest
    splits = [s for s in ("train", "val", "test") if s in stats.counts]
    head = "<tr><th>class</th>" + "".join(f"<th>{s}</th>" for s in splits) + "</tr>"
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{stats.counts[s][i] if i < len(stats.counts[s]) else 0}</td>" for s in splits)
        + "</tr>"
        for i, name in enumerate(source.class_names)
    )
    totals = "<tr><th>total</th>" + "".join(f"<th>{sum(stats.counts[s])}</th>" for s in splits) + "</tr>"
    mean = ", ".join(f"{m:.4f}" for m in stats.mean)
    std = ", ".join(f"{s:.4f}" for s in stats.std)
    dups = ", ".join(f"{k}: {v}" for k, v in stats.duplicates.items()) or "none recorded"
    facts = (
        f"<p>Dataset <code>{html.escape(manifest.dataset_id)}</code>, {manifest.num_classes} classes, "
        f"{manifest.image.height}x{manifest.image.width}x{manifest.image.channels} images. Per-channel mean "
        f"(R, G, B) {mean}; std {std} (train split, pixels on [0, 1]). Duplicates: {html.escape(dups)}.</p>"
    )
    return facts + f"<table>{head}{rows}{totals}</table>"


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; }}
table.kv th, table.kv td {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""
