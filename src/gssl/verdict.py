"""`gssl table --verdicts`: the table's judgement in words, computed from the run records alone.

A mean and its spread do not say whether a row beat its baseline, reproduced the paper or trained its
pretext heads; readers answered that by eye, and docs/ by hand. Here each question has one written rule,
so the verdict paragraphs in docs/results.md are regenerated with the numbers they stand on:

- against the baseline row: better (or worse) in every paired seed, with at least `SEEDS` of them;
  anything else is mixed, or undecided while fewer seeds have finished;
- against the paper: reproduced when the mean over at least `SEEDS` seeds lies within
  `PAPER_TOLERANCE` points of the published number, and judged only on the paper's own length;
- over the transform alone: a row with pretext tasks against the run of the same tasks with the
  pretext loss weighted 0 (`ssl.ratio: 0`) and its class loss on the same input (transformed, or clean
  with `ssl.clean_class_loss`), paired by seed: what the self-supervision adds beyond computing the class
  loss on transformed images;
- the pretext heads: a head learns when its last-epoch training accuracy, the mean over at least `SEEDS`
  seeds, is `HEAD_LEARNS` of the way from chance to 100%;
- the gate: it tells the tasks apart when every one of at least `SEEDS` seeds ranks the same task first
  and the seeds' mean weights spread over at least `GATE_SPREAD` of the uniform weight; seeds that rank
  them differently settle it the other way at any count.
"""

from __future__ import annotations

import statistics

from . import rundir
from .gating import pretext_on, uniform_weight
from .pretext import TASKS
from .table import METRICS, Cell, Run, build, label_runs, paired, setting_of

SEEDS = 3
PAPER_TOLERANCE = 1.0
HEAD_LEARNS = 0.05
GATE_SPREAD = 0.10


def verdicts(runs: list[Run], metric: str = "final", baseline: str | None = None) -> str:
    """One paragraph per row and setting, then the rows that beat the baseline in every seed."""
    labelled, shared = label_runs(runs)
    rows, cols, cells, base, _ = build(runs, metric, baseline, (labelled, shared))
    finished: dict[tuple[str, str], list[Run]] = {}
    for run, label, _ in labelled:
        if run.summary is not None:
            finished.setdefault((label, setting_of(run.cfg)), []).append(run)
    transform_only = {
        (setting, *_transform(group[0])): label
        for (label, setting), group in finished.items()
        if _tasks(group[0]) and group[0].cfg.ssl.ratio == 0
    }
    lines = [f"Verdicts on {METRICS[metric][1]} (rules: `gssl.verdict`)", ""]
    winners = []
    for col in cols:
        for row in rows:
            cell = cells.get((row, col))
            if cell is None:
                continue
            group = sorted(finished.get((row, col), []), key=lambda run: run.cfg.seed)
            parts = [f"{_mean(cell)}"]
            if base is not None and row != base and (base, col) in cells:
                against, all_better = _against_baseline(cell, cells[(base, col)], base)
                parts.append(against)
                winners += [f"{row} ({col})"] if all_better else []
            parts.append(_against_paper(cell, group))
            same_tasks = transform_only.get((col, *_transform(group[0]))) if group else None
            if same_tasks is not None and same_tasks != row and group[0].cfg.ssl.ratio > 0:
                transform, base_cell = cells[(same_tasks, col)], cells.get((base, col))
                parts.append(_over_transform(cell, transform, same_tasks, base, base_cell))
            runs = [epochs for epochs in (rundir.read_metrics(run.path) for run in group) if epochs]
            parts += [_heads(group, runs), _gate(group, runs), _gradient(runs)]
            lines.append(f"- **{row}**, {col}: " + "; ".join(p for p in parts if p) + ".")
    if base is not None:
        lines += [
            "",
            f"Better than {base} in every one of at least {SEEDS} seeds: "
            + (", ".join(winners) or "none")
            + ".",
        ]
    return "\n".join(lines) + "\n"


def _tasks(run: Run) -> tuple:
    """The run's pretext tasks, or () where it has no gated pretext term."""
    ssl = run.cfg.ssl
    return tuple(ssl.tasks) if pretext_on(ssl.tasks, ssl.gate) else ()


def _transform(run: Run) -> tuple:
    """What the class loss sees of the pretext transforms: their tasks, and whether it is computed on the
    clean image instead (`ssl.clean_class_loss`, one extra forward pass). Only rows alike in both are
    paired with a transform-only row: with the class loss on clean images, the transformed-input
    row weighted 0 is not what that row's pretext term is added to."""
    return _tasks(run), run.cfg.ssl.clean_class_loss


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def _seed_list(seeds) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, sorted(seeds)))


def _mean(cell: Cell) -> str:
    mean, std = cell.mean_std()
    if mean is None:
        return "no finished seed"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "") + f" over {_seeds(cell.n)}"


def _undecided(n: int, seen: str = "") -> str:
    """The words of every rule while fewer than SEEDS seeds have finished: what they show, no verdict."""
    return f"undecided ({n} of {SEEDS} seeds" + (f": {seen})" if seen else ")")


def _every_seed(n: int) -> str:
    return "its one seed" if n == 1 else f"all {n} seeds"


def _sign_count(differences: list[float]) -> str:
    better, worse, n = sum(d > 0 for d in differences), sum(d < 0 for d in differences), len(differences)
    if better == n or worse == n:
        return f"{'better' if better == n else 'worse'} in {_every_seed(n)}"
    return f"better in {better}, worse in {worse} of {n} seeds"


def _paired_words(cell: Cell, other: Cell, name: str) -> tuple[str, list[float]]:
    seeds = sorted(set(cell.accs) & set(other.accs))
    differences = [cell.accs[s] - other.accs[s] for s in seeds]
    if not differences:
        return f"no seed paired with {name}", []
    mean, std, n = paired(cell, other)
    spread = f" ± {std:.2f}" if std is not None else ""
    verdict = _sign_count(differences)
    if n < SEEDS:
        verdict = _undecided(n, verdict)
    elif not verdict.startswith(("better in all", "worse in all")):
        verdict = f"mixed ({verdict})"
    return f"{mean:+.2f}{spread} against {name}, {verdict}", differences


def _against_baseline(cell: Cell, base: Cell, name: str) -> tuple[str, bool]:
    words, differences = _paired_words(cell, base, name)
    return words, len(differences) >= SEEDS and all(d > 0 for d in differences)


def _against_paper(cell: Cell, group: list[Run]) -> str:
    if cell.paper is None:
        return ""
    mean, std = cell.mean_std()
    lengths = sorted({run.cfg.optim.epochs for run in group})
    if lengths and lengths != [cell.paper_epochs]:
        shown = "/".join(map(str, lengths))
        return f"paper {cell.paper:.2f} at {cell.paper_epochs} epochs: not judged ({shown} epochs here)"
    if mean is None or cell.n < SEEDS:
        return f"paper {cell.paper:.2f}: {_undecided(cell.n)}"
    gap = mean - cell.paper
    spread = f", spread {std:.2f}" if std is not None else ""
    within = abs(gap) <= PAPER_TOLERANCE
    return f"paper {cell.paper:.2f}: {'reproduced' if within else 'not reproduced'} (gap {gap:+.2f}{spread})"


def _over_transform(cell: Cell, transform: Cell, name: str, base: str | None, base_cell: Cell | None) -> str:
    """What the pretext gradient adds over the same transforms weighted 0, and the transform's own share
    of the row's difference from the baseline `base` (its cell: base_cell), over the seeds all three have."""
    words, _ = _paired_words(cell, transform, f"the transform alone ({name})")
    seeds = set(cell.accs) & set(transform.accs) & set(base_cell.accs if base_cell else ())
    if not seeds:
        return words
    row_gap = statistics.fmean(cell.accs[s] - base_cell.accs[s] for s in seeds)
    transform_gap = statistics.fmean(transform.accs[s] - base_cell.accs[s] for s in seeds)
    if row_gap == 0 or (row_gap > 0) != (transform_gap > 0):
        return words
    if transform_gap / row_gap > 1:  # the pretext term gives back part of what the transform costs
        return words + (
            f"; the transform alone costs {transform_gap:+.2f} against {base}, more than its "
            f"{row_gap:+.2f} ({_seed_list(seeds)})"
        )
    return words + (
        f"; the transform alone accounts for {transform_gap / row_gap:.0%} of its {row_gap:+.2f} "
        f"against {base} ({_seed_list(seeds)})"
    )


def _heads(group: list[Run], runs: list[list[dict]]) -> str:
    """Each pretext head's last-epoch training accuracy, mean over seeds, against its chance. `runs`: the
    metrics rows of each run of the group."""
    lasts = [epochs[-1] for epochs in runs]
    prefix = "pretext_acc_"
    tasks = [key[len(prefix) :] for key in (lasts[0] if lasts else {}) if key.startswith(prefix)]
    if not tasks or group[0].cfg.ssl.ratio == 0:
        return ""
    heads = []  # (words, whether it learns), in the tasks' order
    for task in tasks:
        acc = statistics.fmean(last[prefix + task] for last in lasts)
        chance = 100 / TASKS[task].num_classes
        heads.append(
            (f"{task} {acc:.1f}% (chance {chance:.1f})", (acc - chance) / (100 - chance) >= HEAD_LEARNS)
        )
    if len(lasts) < SEEDS:  # one seed's 11.7% became 10.2% (at chance) with the second: wait for three
        return f"pretext heads: {_undecided(len(lasts), ', '.join(words for words, _ in heads))}"
    learn = ", ".join(words for words, learns in heads if learns)
    at_chance = ", ".join(words for words, learns in heads if not learns)
    parts = [f"heads that learn: {learn}"] if learn else []
    return "; ".join(parts + ([f"heads at chance: {at_chance}"] if at_chance else []))


def _gate(group: list[Run], runs: list[list[dict]]) -> str:
    """Whether the gate's last-epoch weights single out one task in every seed; nothing where the weights
    never moved from the uniform weight (no gate to judge) or the pretext loss is weighted 0."""
    keys = [key for key in (runs[0][-1] if runs else {}) if key.startswith("gate_")]
    if len(keys) < 2 or group[0].cfg.ssl.ratio == 0:
        return ""
    uniform = uniform_weight(group[0].cfg.ssl.gate, len(keys))
    if all(abs(row[key] - uniform) < 1e-6 for epochs in runs for row in epochs for key in keys if key in row):
        return ""
    lasts = [epochs[-1] for epochs in runs]
    means = {key[len("gate_") :]: statistics.fmean(last[key] for last in lasts) for key in keys}
    weights = " / ".join(f"{task} {weight:.3f}" for task, weight in means.items())
    firsts = {max(keys, key=last.__getitem__)[len("gate_") :] for last in lasts}
    close = (max(means.values()) - min(means.values())) / uniform < GATE_SPREAD
    if not close and len(firsts) > 1:  # final at any count: more seeds cannot make them agree
        return (
            f"the gate does not tell the tasks apart: the seeds rank them differently ({weights}, last epoch)"
        )
    seen = "its weights lie close together" if close else f"{firsts.pop()} first in {_every_seed(len(lasts))}"
    if len(lasts) < SEEDS:
        return f"the gate: {_undecided(len(lasts), f'{seen}; {weights}, last epoch')}"
    if close:
        return f"the gate does not tell the tasks apart: {seen} ({weights}, last epoch)"
    return f"the gate tells the tasks apart ({weights}, last epoch)"


def _gradient(runs: list[list[dict]]) -> str:
    ratios = [epochs[-1]["grad_ratio_pretext"] for epochs in runs if epochs[-1].get("grad_ratio_pretext")]
    if not ratios:
        return ""
    shown = f"{min(ratios):.0f}x" if len(ratios) == 1 else f"{min(ratios):.0f}-{max(ratios):.0f}x"
    return f"the class loss pulls on the backbone {shown} harder than the pretext term (last epoch)"
