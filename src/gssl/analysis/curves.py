"""The figures of a sweep (`gssl table SWEEP --figures OUT`), drawn from the committed run records alone.

Only config.yaml, metrics.jsonl and summary.json are read, never a checkpoint or the data set, so the
results page can be redrawn from any checkout. A row is the folder above seed<k> (erm, lorot, ...); every
curve is the mean over the row's finished seeds, shaded from the lowest to the highest seed. Each plotting
function returns the matplotlib Figure, so tests can read back what was drawn; `write_figures` saves them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt  # the backend is chosen (Agg) by .figures, before any figure exists
import numpy as np
from matplotlib.ticker import FuncFormatter

from .. import rundir
from ..config import ConfigError
from ..gating import uniform_weight
from ..presets import PRESETS
from ..pretext import TASKS
from ..table import Run, _row_order
from .figures import _save  # also selects the Agg backend and the report's style

# a uniform gate weighs every task 1: nothing to plot
GATED = ("reference", "learned", "uncertainty", "gradnorm", "gcs", "dwa")
MARKERS = "osD^vP*Xh<>"


@dataclass
class Record:
    """One finished run: its configuration, one metrics row per epoch, and its summary."""

    seed: int
    tasks: list[str]
    gate: str
    metrics: list[dict]
    summary: dict
    ratio: float  # ssl.ratio, the pretext term's weight: 0 leaves it out of the loss


def row_name(run_dir: Path) -> str:
    """The sweep's name for a run: the folder above seed<k>, or the run folder itself."""
    return run_dir.parent.name if re.fullmatch(r"seed\d+", run_dir.name) else run_dir.name


def load_rows(runs: list[Run], log: Callable[[str], None] = print) -> dict[str, list[Record]]:
    """Finished runs grouped by row, in the table's order; unfinished ones are named and left out."""
    rows: dict[str, list[Record]] = {}
    order: dict[str, tuple] = {}
    for run in runs:
        if run.summary is None:
            log(f"{run.path}: unfinished (no {rundir.SUMMARY}): left out of the figures")
            continue
        name = row_name(run.path)
        if any(r.seed == run.cfg.seed for r in rows.get(name, [])):
            raise ConfigError(
                f"{run.path}: a second run of row {name!r} with seed {run.cfg.seed}; pass one of them"
            )
        rows.setdefault(name, []).append(
            Record(
                run.cfg.seed,
                list(run.cfg.ssl.tasks),
                run.cfg.ssl.gate,
                rundir.read_metrics(run.path),
                run.summary,
                run.cfg.ssl.ratio,
            )
        )
        method = PRESETS[run.cfg.preset].method if run.cfg.preset in PRESETS else name
        order[name] = (_row_order(method), name)
    if not rows:
        raise ConfigError(
            f"no finished run (with {rundir.SUMMARY}) among these run directories: no figure to draw"
        )
    return {name: rows[name] for name in sorted(rows, key=order.get)}


def seed_matrix(records: list[Record], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs (from 1) where any seed logged `key`, and a seeds x epochs matrix of its values (NaN: none)."""
    epochs = sorted(
        {
            m.get("epoch", i + 1)
            for r in records
            for i, m in enumerate(r.metrics)
            if isinstance(m.get(key), (int, float))
        }
    )
    column = {e: j for j, e in enumerate(epochs)}
    values = np.full((len(records), len(epochs)), np.nan)
    for i, record in enumerate(records):
        for j, m in enumerate(record.metrics):
            if isinstance(m.get(key), (int, float)):
                values[i, column[m.get("epoch", j + 1)]] = m[key]
    return np.asarray(epochs), values


def _seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def _mean_band(ax, x, values, colour, label, **line):
    """The mean over seeds as a line, the min-max over seeds as a band (only with two seeds or more)."""
    ax.plot(x, np.nanmean(values, axis=0), color=colour, label=label, **line)
    if len(values) > 1:
        low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
        ax.fill_between(x, low, high, color=colour, alpha=0.2, lw=0)


def _with_key(name: str, records: list[Record], key: str, log) -> list[Record]:
    """The seeds that logged `key`; the others are named, so a missing curve is never silent."""
    have = [r for r in records if any(isinstance(m.get(key), (int, float)) for m in r.metrics)]
    if len(have) < len(records):
        missing = sorted(r.seed for r in records if r not in have)
        log(
            f"{name}: seeds {missing} have no {key} in {rundir.METRICS} (older or empty record): "
            + ("left out of that curve" if have else "no curve")
        )
    return have


def _line_style(row: int) -> str:
    """Solid for the first ten rows, dashed for the next ten: the ten colours repeat, the pairs stay apart."""
    return ("-", "--", ":", "-.")[row // 10 % 4]


def _legend_on_top(ax, ncol: int) -> None:
    """Legend in a band added above the data, so it never hides a curve that runs along the top or
    the middle of a panel (the lines of these panels span the whole width)."""
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top + 0.4 * (top - bottom))
    ax.legend(loc="upper center", ncol=ncol, columnspacing=1.0, handlelength=1.6)


def _panels(n: int, per_line: int = 3):
    """n panels, at most per_line side by side (a wide sweep wraps instead of shrinking); unused ones
    hidden."""
    lines = -(-n // per_line)
    fig, axes = plt.subplots(
        lines, min(n, per_line), figsize=(4.6 * min(n, per_line), 3.6 * lines), squeeze=False
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def accuracy_curves(rows: dict[str, list[Record]], log: Callable[[str], None] = print):
    """Test accuracy per epoch, one line per row: where the rows part, and how far the seeds spread."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, records) in enumerate(rows.items()):
        have = _with_key(name, records, "test_acc", log)
        if have:
            x, values = seed_matrix(have, "test_acc")
            _mean_band(ax, x, values, f"C{i % 10}", f"{name} ({_seeds(len(have))})", ls=_line_style(i))
    if not ax.lines:
        plt.close(fig)
        return None
    ax.set(
        title="test accuracy per epoch (mean over seeds, band: min-max)",
        xlabel="epoch",
        ylabel="test top-1 (%)",
    )
    ax.legend()
    return fig


def pretext_curves(rows: dict[str, list[Record]], log: Callable[[str], None] = print):
    """Each pretext head's training accuracy against its chance level: did the head learn its task at all?
    One panel per row with pretext tasks; None when no row logged pretext_acc_*."""
    panels = {}
    for name, records in rows.items():
        tasks = records[0].tasks
        if tasks:
            have = {t: _with_key(name, records, f"pretext_acc_{t}", log) for t in tasks}
            if any(have.values()):
                panels[name] = have
    if not panels:
        return None
    fig, axes = _panels(len(panels))
    for ax, (name, have) in zip(axes, panels.items()):
        for j, (task, records) in enumerate(have.items()):
            chance = 100 / TASKS[task].num_classes
            ax.axhline(chance, color=f"C{j}", ls="--", lw=1, label=f"{task} chance {chance:.3g}%")
            if records:
                x, values = seed_matrix(records, f"pretext_acc_{task}")
                _mean_band(ax, x, values, f"C{j}", f"{task} ({_seeds(len(records))})", marker="o", ms=2.5)
        ax.set(
            title=f"{name}: pretext head train accuracy",
            xlabel="epoch",
            ylabel="accuracy (%)",
            ylim=(0, None),
        )
        _legend_on_top(ax, ncol=2)
    fig.tight_layout()
    return fig


def gate_curves(rows: dict[str, list[Record]], log: Callable[[str], None] = print):
    """Each gated row's gate weight per task over training (dashed: uniform, 1/n for a softmax gate, 1 for
    the loss weightings): did the gate choose? None when no row has a gate that can."""
    gated = {n: r for n, r in rows.items() if r[0].gate in GATED and r[0].tasks}
    if not gated:
        return None
    fig, axes = _panels(len(gated))
    for ax, (name, records) in zip(axes, gated.items()):
        tasks = records[0].tasks
        uniform = uniform_weight(records[0].gate, len(tasks))
        label = f"uniform 1/{len(tasks)}" if uniform != 1 else "uniform 1"
        ax.axhline(uniform, color="0.4", ls="--", lw=1, label=label)
        for j, task in enumerate(tasks):
            have = _with_key(name, records, f"gate_{task}", log)
            if have:
                x, values = seed_matrix(have, f"gate_{task}")
                _mean_band(ax, x, values, f"C{j}", f"{task} ({_seeds(len(have))})", marker="o", ms=2.5)
        ax.set(title=f"{name}: gate weight ({records[0].gate})", xlabel="epoch")
        ax.set_ylim(0, max(ax.get_ylim()[1], 1.15 * uniform))  # weights that stay at uniform stay in view
        _legend_on_top(ax, ncol=2)
    fig.tight_layout()
    return fig


def gradient_curves(rows: dict[str, list[Record]], log: Callable[[str], None] = print):
    """How many times harder the class loss pulls on the backbone than the weighted pretext term, per epoch
    (issue 47's diagnostic, log scale; 1: both pull alike): is the auxiliary task trained at all? None when
    no row logged grad_ratio_pretext (rows without tasks, ratio 0 and records older than it)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, records) in enumerate(rows.items()):
        if not records[0].tasks:
            continue
        if records[0].ratio == 0:
            log(f"{name}: its pretext term is weighted 0 (ssl.ratio 0): no gradient ratio to draw")
            continue
        have = _with_key(name, records, "grad_ratio_pretext", log)
        if have:
            x, values = seed_matrix(have, "grad_ratio_pretext")
            label = f"{name} ({_seeds(len(have))})"
            _mean_band(ax, x, values, f"C{i % 10}", label, ls=_line_style(i), marker="o", ms=2.5)
    if not ax.lines:
        plt.close(fig)
        return None
    ax.axhline(1, color="0.4", ls="--", lw=1, label="1: both pull alike")
    ax.set_yscale("log")
    ax.set(
        title="backbone gradient, class loss / weighted pretext term (mean over seeds, band: min-max)",
        xlabel="epoch",
        ylabel="ratio of gradient norms",
    )
    # beside the panel, not on it: the rows' ratios span 1 to 5,000, so no corner stays free of curves
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def per_class_points(rows: dict[str, list[Record]], log: Callable[[str], None] = print):
    """Final test accuracy of each class against its number of training images (log x), one marker per row:
    where on the tail a method gains or loses. None when no row has per-class accuracies."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, records) in enumerate(rows.items()):
        have = [r for r in records if r.summary.get("per_class_acc") and r.summary.get("class_counts")]
        counts = {tuple(r.summary["class_counts"]) for r in have}
        if not have or len(counts) > 1:
            log(
                f"{name}: "
                + (
                    "no per_class_acc/class_counts in summary.json"
                    if not have
                    else "seeds trained on different class sizes"
                )
                + ": no per-class points"
            )
            continue
        acc = np.array(
            [[np.nan if a is None else a for a in r.summary["per_class_acc"]] for r in have], dtype=float
        )
        ax.plot(
            have[0].summary["class_counts"],
            np.nanmean(acc, axis=0),
            ls="none",
            marker=MARKERS[i % 11],
            ms=6,
            alpha=0.8,
            color=f"C{i % 10}",
            label=f"{name} ({_seeds(len(have))})",
        )
    if not ax.lines:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set(
        title="final test accuracy per class against class size (mean over seeds)",
        xlabel="training images of the class (log scale)",
        ylabel="test top-1 (%)",
        ylim=(-3, 103),
    )
    ax.legend()
    return fig


FIGURES = {
    "test_acc.png": (accuracy_curves, "no row logged test_acc"),
    "pretext_acc.png": (pretext_curves, "no row with pretext tasks logged pretext_acc_<task>"),
    "gate_weights.png": (gate_curves, "no row has a gate that weighs its tasks unevenly"),
    "per_class_acc.png": (per_class_points, "no summary.json holds per_class_acc and class_counts"),
    "gradient_ratio.png": (gradient_curves, "no row logged grad_ratio_pretext (the gradient diagnostic)"),
}


def write_figures(runs: list[Run], out_dir: str | Path, log: Callable[[str], None] = print) -> list[Path]:
    """Every figure that the records allow, as PNGs in out_dir; each path is printed, each skip explained."""
    rows = load_rows(runs, log)
    written = []
    for filename, (draw, why_empty) in FIGURES.items():
        fig = draw(rows, log)
        if fig is None:
            log(f"{filename}: not written, {why_empty}")
            continue
        written.append(_save(fig, Path(out_dir) / filename))
        log(f"wrote {written[-1]}")
    return written
