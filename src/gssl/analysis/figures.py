"""The report's figures: matplotlib (Agg, no display needed), one function per figure, each writing a
PNG and taking plain data (metrics rows, summary dicts, arrays), so they can be used without a model.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from ..metrics import FEW, MANY  # noqa: E402

DPI = 100
plt.rcParams.update(
    {
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "legend.fontsize": 8,
        "legend.frameon": False,
    }
)


def _save(fig, path: Path) -> Path:
    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _epochs(rows):
    return [r["epoch"] for r in rows]


def _series(rows, key):
    return [r.get(key, math.nan) for r in rows]


def _keys(rows, prefix):
    keys = []
    for r in rows:
        keys += [k for k in r if k.startswith(prefix) and k not in keys]
    return keys


def _lr_axis(ax, rows_list):
    lrs = [v for rows in rows_list for v in _series(rows, "lr") if v and v > 0]
    if lrs and max(lrs) / min(lrs) > 20:
        ax.set_yscale("log")


def learning_curves(rows: list[dict], path: Path) -> Path:
    """One run: every loss term, train and test accuracy, learning rate, per epoch."""
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.4))
    x = _epochs(rows)
    for key in ["loss", "cls_loss", *_keys(rows, "ssl_"), "aux"]:
        ys = _series(rows, key)
        if key == "aux" and not any(abs(v) > 1e-12 for v in ys if v == v):
            continue  # no learned gate: the aux term is always zero
        a.plot(x, ys, marker="o", ms=3, lw=2.2 if key == "loss" else 1.4, label=key)
    values = [v for line in a.get_lines() for v in line.get_ydata() if v == v]
    if values and min(values) > 0 and max(values) / min(values) > 20:
        a.set_yscale("log")  # LDAM's scaled cosines dwarf the pretext losses on a linear axis
    a.set(title="losses", xlabel="epoch")
    a.legend()
    b.plot(x, _series(rows, "train_acc"), marker="o", ms=3, label="train (augmented, pretext-transformed)")
    b.plot(x, _series(rows, "test_acc"), marker="o", ms=3, label="test")
    b.set(title="accuracy (%)", xlabel="epoch")
    b.legend()
    c.plot(x, _series(rows, "lr"), marker="o", ms=3, color="k")
    c.set(title="learning rate", xlabel="epoch")
    _lr_axis(c, [rows])
    return _save(fig, path)


def overlay_curves(runs: dict[str, list[dict]], path: Path) -> Path:
    """Several runs, one colour each: total and classification loss, train and test accuracy, lr."""
    panels = [
        ("loss", "total loss"),
        ("cls_loss", "classification loss"),
        ("train_acc", "train accuracy (%)"),
        ("test_acc", "test accuracy (%)"),
        ("lr", "learning rate"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.3))
    for i, (name, rows) in enumerate(runs.items()):
        for ax, (key, _) in zip(axes, panels):
            ax.plot(_epochs(rows), _series(rows, key), marker="o", ms=3, color=f"C{i % 10}", label=name)
    for ax, (_, title) in zip(axes, panels):
        ax.set(title=title, xlabel="epoch")
    _lr_axis(axes[-1], list(runs.values()))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(4, len(labels)),
        bbox_to_anchor=(0.5, -0.02 - 0.05 * (len(labels) > 4)),
    )
    fig.tight_layout(rect=(0, 0.08 + 0.05 * (len(labels) > 4), 1, 1))
    return _save(fig, path)


def gate_trajectories(runs: dict[str, list[dict]], path: Path) -> Path | None:
    """Gate weight per task over training (dashed: uniform 1/n), beside each task's pretext loss;
    one row per run. None when no run has a gate."""
    runs = {n: r for n, r in runs.items() if _keys(r, "gate_")}
    if not runs:
        return None
    fig, axes = plt.subplots(len(runs), 2, figsize=(10, 3.1 * len(runs)), squeeze=False)
    for (name, rows), (g, s) in zip(runs.items(), axes):
        tasks = [k[5:] for k in _keys(rows, "gate_")]
        x = _epochs(rows)
        for j, t in enumerate(tasks):
            g.plot(x, _series(rows, f"gate_{t}"), marker="o", ms=3, lw=1.8, color=f"C{j}", label=t)
            s.plot(x, _series(rows, f"ssl_{t}"), marker="o", ms=3, lw=1.8, color=f"C{j}", label=t)
        top = max(max(_series(rows, f"gate_{t}")) for t in tasks)
        softmax = all(abs(sum(r.get(f"gate_{t}", 0) for t in tasks) - 1) < 1e-3 for r in rows)
        if softmax:  # reference and learned gates; the uniform gate weighs every task 1
            g.axhline(1 / len(tasks), color="0.4", ls="--", lw=1, label=f"uniform 1/{len(tasks)}")
            top = max(top, 1 / len(tasks))
        g.set(
            title=f"{name}: gate weight per task" if len(runs) > 1 else "gate weight per task (epoch mean)",
            xlabel="epoch",
            ylim=(0, min(1.0, top * 1.25 + 0.02) if softmax else top * 1.15),
        )
        s.set(title="pretext loss per task (cross-entropy)", xlabel="epoch")
        g.legend(ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def gradient_norms(runs: dict[str, list[dict]], path: Path) -> Path | None:
    """Is the auxiliary task trained at all? Per run, the gradient norm each loss term puts on the shared
    backbone per epoch (gssl.diagnostics; log scale), beside how many times the class loss's exceeds the
    pretext terms'. None when no run logged it."""
    runs = {n: r for n, r in runs.items() if _keys(r, "grad_cls")}
    if not runs:
        return None
    fig, axes = plt.subplots(len(runs), 2, figsize=(10, 3.1 * len(runs)), squeeze=False)
    for (name, rows), (norms, ratios) in zip(runs.items(), axes):
        rows = [row for row in rows if "grad_cls" in row]  # the measured epochs (diagnose_every)
        x = _epochs(rows)
        terms = [k for k in _keys(rows, "grad_") if not k.startswith("grad_ratio_")]
        for j, key in enumerate(terms):
            style = {"color": "k", "lw": 2.2} if key == "grad_cls" else {"color": f"C{j}", "lw": 1.6}
            norms.plot(x, _series(rows, key), marker="o", ms=3, label=key[len("grad_") :], **style)
        for j, key in enumerate(_keys(rows, "grad_ratio_")):
            ys = [math.nan if v is None else v for v in _series(rows, key)]
            ratios.plot(x, ys, marker="o", ms=3, lw=1.6, color=f"C{j + 1}", label=key[len("grad_ratio_") :])
        ratios.axhline(1, color="0.4", ls="--", lw=1, label="equal pull")
        for ax in (norms, ratios):
            ax.set_yscale("log")
            ax.legend(ncol=2)
        prefix = f"{name}: " if len(runs) > 1 else ""
        norms.set(title=f"{prefix}gradient norm on the backbone, per term", xlabel="epoch")
        ratios.set(title=f"{prefix}class term's norm / each pretext term's", xlabel="epoch")
    fig.tight_layout()
    return _save(fig, path)


def per_class_accuracy(acc: list, counts: list[int], classes: list[str], groups: dict, path: Path) -> Path:
    """Test accuracy of each class against its number of training images (log scale), shot groups shaded."""
    fig, ax = plt.subplots(figsize=(8, 4))
    counts = np.asarray(counts, dtype=float)
    acc = np.array([math.nan if a is None else a for a in acc], dtype=float)
    lo, hi = max(0.8, counts.min() / 1.5), counts.max() * 1.5
    shades = [
        ("few-shot", lo, FEW, "#fde0dd"),
        ("medium-shot", FEW, MANY, "#fff7bc"),
        ("many-shot", MANY, hi, "#e5f5e0"),
    ]
    for label, a, b, colour in shades:
        if b > lo and a < hi:
            ax.axvspan(max(a, lo), min(b, hi), color=colour, zorder=0)
            g = groups.get(label.split("-")[0] + "_shot_acc")
            if g is not None:
                ax.hlines(g, max(a, lo), min(b, hi), colors="0.3", linestyles="--", lw=1.2)
                ax.text(
                    math.sqrt(max(a, lo) * min(b, hi)), g + 1.5, f"{label} {g:.1f}%", ha="center", fontsize=8
                )
    ax.scatter(counts, acc, s=28, color="C0", zorder=3)
    if len(classes) <= 20:
        for x, y, name in zip(counts, acc, classes):
            ax.annotate(name, (x, y), xytext=(4, -3), textcoords="offset points", fontsize=7.5)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
    ax.set(
        xlim=(lo, hi),
        ylim=(-3, 105),
        xlabel="training images of the class (log scale)",
        ylabel="test accuracy (%)",
        title="per-class test accuracy against class size",
    )
    return _save(fig, path)


def confusion(cm, classes: list[str], path: Path) -> Path:
    """Rows: true class, columns: predicted; colour: share of the row, numbers: counts."""
    cm = np.asarray(cm)
    n = len(cm)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = min(11, 2.5 + 0.4 * n)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8 if n <= 12 else 6.5,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=7.5)
        ax.set_yticks(range(n), classes, fontsize=7.5)
    ax.set(
        xlabel="predicted class",
        ylabel="true class",
        title="confusion matrix (colour: share of the true class)",
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def tsne_scatter(emb, labels, preds, classes: list[str], path: Path, title: str = "") -> Path:
    """Embedding coloured by true class; misclassified images drawn as crosses."""
    emb, labels, preds = np.asarray(emb), np.asarray(labels), np.asarray(preds)
    n_cls = len(classes)
    cmap = plt.get_cmap("tab10" if n_cls <= 10 else "tab20" if n_cls <= 20 else "gist_ncar")
    fig, ax = plt.subplots(figsize=(7.5, 6))
    size = 14 if len(emb) <= 1000 else 6
    colours = cmap(labels / max(1, (n_cls - 1)) if n_cls > 20 else labels % 20)
    ok = labels == preds
    ax.scatter(emb[ok, 0], emb[ok, 1], c=colours[ok], s=size, lw=0)
    ax.scatter(emb[~ok, 0], emb[~ok, 1], c=colours[~ok], s=size * 1.6, marker="x", lw=0.8)
    if n_cls <= 20:
        for c, name in enumerate(classes):
            ax.scatter([], [], color=cmap(c % 20), s=25, label=name)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    ax.set(
        xticks=[],
        yticks=[],
        title=title or f"t-SNE of pooled test features ({len(emb)} images; x: misclassified)",
    )
    ax.grid(False)
    return _save(fig, path)


def _show(ax, img):
    """uint8 or float [C, H, W] (C = 1 or 3) as an image, no axes."""
    img = np.asarray(img, dtype=float)
    img = img / 255.0 if img.max() > 1.5 else img
    ax.imshow(
        img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0),
        cmap="gray",
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def gradcam_grid(
    images, cam_true, cam_pred, labels, preds, classes: list[str], layer: str, path: Path
) -> Path:
    """Columns: test images. Rows: the image, Grad-CAM for the true class, for the predicted class."""
    n = len(images)
    fig, axes = plt.subplots(3, n, figsize=(1.55 * n + 0.8, 5.2), squeeze=False)
    for j in range(n):
        _show(axes[0, j], images[j])
        ok = labels[j] == preds[j]
        axes[0, j].set_title(
            f"{classes[labels[j]][:12]}\n-> {classes[preds[j]][:12]}",
            fontsize=8,
            color="darkgreen" if ok else "firebrick",
        )
        for row, cams in ((1, cam_true), (2, cam_pred)):
            _show(axes[row, j], np.asarray(images[j]).mean(0, keepdims=True))
            axes[row, j].imshow(
                np.asarray(cams[j]), cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear"
            )
    axes[0, 0].set_ylabel("image\n(true -> pred)", fontsize=8)
    axes[1, 0].set_ylabel("Grad-CAM\ntrue class", fontsize=8)
    axes[2, 0].set_ylabel("Grad-CAM\npredicted", fontsize=8)
    fig.suptitle(f"Grad-CAM on {layer} (red: evidence for the class)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def attention_grid(images, maps, module: str, path: Path) -> Path:
    """Columns: test images. Rows: the image, the class token's attention averaged over heads, then each
    head's, drawn over the greyscale image (nearest patches: the map is per patch)."""
    images, maps = np.asarray(images), np.asarray(maps)
    n, heads = len(images), maps.shape[1]
    rows = [("image", None), ("mean of heads", maps.mean(1))] + [
        (f"head {h + 1}", maps[:, h]) for h in range(heads)
    ]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.55 * n + 0.8, 1.6 * len(rows)), squeeze=False)
    for j in range(n):
        _show(axes[0, j], images[j])
        for row, (_, attention) in enumerate(rows[1:], start=1):
            _show(axes[row, j], images[j].mean(0, keepdims=True))
            side = images.shape[-1]
            axes[row, j].imshow(
                attention[j], cmap="inferno", alpha=0.6, extent=(-0.5, side - 0.5, side - 0.5, -0.5)
            )
    for row, (label, _) in enumerate(rows):
        axes[row, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(f"class-token attention of the last block ({module})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def pretext_grid(rows: list[list[tuple]], path: Path, note: str = "") -> Path:
    """rows: per sample image, a list of (title, image [C, H, W], box or None) panels; box = (top,
    left, height, width) of the transformed region, outlined."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.9 * n_cols, 2.05 * n_rows), squeeze=False)
    for i, panels in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            if j >= len(panels):
                ax.axis("off")
                continue
            title, img, box = panels[j]
            _show(ax, img)
            ax.set_title(title, fontsize=7.5)
            if box is not None:
                top, left, h, w = box
                ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), w, h, fill=False, ec="yellow", lw=1.5))
    if note:
        fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
