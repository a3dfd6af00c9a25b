"""`gssl table`: runs grouped by method and setting, shaped like the paper's Table 1 / Table 2.

A row is a method: the preset's method name, plus every setting in which the runs differ from that
preset, except settings shared by all runs in the table (a shortened protocol, say) and the
dataset and imbalance, which make the columns. A cell is mean +- sample standard deviation over
seeds with the number of seeds, the paper's published number where the row is the paper's own
method (also on another schedule: the column header gives the paper's length), and the paired
difference against the baseline row (over the seeds both have).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from . import rundir
from .config import MACHINE_KEYS, Config, ConfigError, flatten, load_yaml
from .presets import PRESETS, preset_dict
from .runconfig import from_dict

METRICS = {
    "final": ("test_acc", "final-epoch top-1 (%)"),
    "best": ("best_test_acc", "best-epoch top-1 (%), the epoch chosen on the test set (optimistic)"),
    "knn": ("knn_test_acc", "k-NN top-1 (%) on the frozen backbone (contrastive and DINO runs)"),
    # DINO runs (ViT): the same probes on the averaged patch tokens, the closest thing on CIFAR to the
    # patch-level representation SelfPatch trains (docs/selfpatch.md)
    "patch-knn": (
        "patch_knn_test_acc",
        "k-NN top-1 (%) on the frozen ViT's averaged patch tokens (DINO runs)",
    ),
    "patch-linear": (
        "patch_linear_test_acc",
        "linear-probe top-1 (%) on the frozen ViT's averaged patch tokens (DINO runs)",
    ),
}
BASELINE_METHODS = ("ldam-drw", "baseline", "supervised", "simclr", "dino")
# How a run was executed, not what it computes: one method's runs share a row whether they ran on a CPU or a
# GPU, compiled or not, with the gradient diagnostic's passes (which change no training number) every epoch
# or every tenth. Precision too, as long as the run trained in fp32 (`null` means fp32 on a CPU, bf16 on a
# GPU): a run that trained in bf16 or fp16 says so in its label, and is not the paper's (_lower_precision).
_NOT_METHOD = {"seed", "preset", "data.root", "data.name", "data.imbalance"} | MACHINE_KEYS
# A row that departs from its paper preset only in these still runs the paper's method (on another schedule,
# or another machine), so the paper's number is shown beside it; the column header says at which length.
_SCHEDULE = {"optim.epochs", "optim.base_epochs", "optim.warmup_epochs", "optim.milestones", "loss.drw_epoch"}
_NOT_PAPER_METHOD = _SCHEDULE | {"seed", "preset", "data.root"} | MACHINE_KEYS


@dataclass
class Run:
    path: Path
    cfg: Config
    summary: dict | None  # None: unfinished
    summary_file: str = rundir.SUMMARY  # where summary came from: summary.json or a later final evaluation

    @property
    def why_left_out(self) -> str:
        """Why a run without numbers has none: it has not finished, or (judged by a later evaluation's
        file) it finished but was not judged that way yet."""
        if self.summary_file == rundir.SUMMARY or not (self.path / rundir.SUMMARY).is_file():
            return "unfinished"
        return f"without {self.summary_file}"


@dataclass
class Cell:
    accs: dict[int, float]  # seed -> accuracy
    paper: float | None
    paper_epochs: int | None = None  # the length of the paper's run, for the column header
    why_left_out: dict[int, str] = field(default_factory=dict)  # seed without a number -> Run.why_left_out

    @property
    def unfinished(self) -> list[int]:
        """The seeds left out of the cell, whatever the reason."""
        return list(self.why_left_out)

    @property
    def n(self) -> int:
        return len(self.accs)

    def mean_std(self) -> tuple[float | None, float | None]:
        v = list(self.accs.values())
        if not v:
            return None, None
        return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None


def find_runs(paths: list[str | Path], summary_name: str = rundir.SUMMARY) -> list[Run]:
    """The runs at the given paths: a run directory (a folder with config.yaml) is that one run; any other
    folder gives every run directory below it. `summary_name`: the file each run is judged by, its
    summary.json or a later `gssl eval --protocol final` report (eval-last-final-testall.json, say); a run
    without it counts as unfinished."""
    dirs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ConfigError(f"{p} does not exist; pass run directories or folders holding them")
        found = [p] if (p / rundir.CONFIG).is_file() else sorted(c.parent for c in p.rglob(rundir.CONFIG))
        if not found:
            raise ConfigError(f"{p} holds no gssl runs (no {rundir.CONFIG} at or below it)")
        dirs += found
    runs = []
    for d in dict.fromkeys(dirs):
        summary = None
        if (d / summary_name).is_file():
            try:
                summary = rundir.epochs_from_one(json.loads((d / summary_name).read_text()))
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(
                    f"{d / summary_name} cannot be read ({e}); re-run `gssl eval {d}` or remove it"
                ) from None
        try:
            cfg = from_dict(load_yaml(d / rundir.CONFIG))
        except ConfigError as e:
            raise ConfigError(f"{d}: {e}") from None
        runs.append(Run(d, cfg, summary, summary_name))
    return runs


def setting_of(cfg: Config) -> str:
    data_cfg = cfg.data
    return data_cfg.name if data_cfg.imbalance == 1 else f"{data_cfg.name} {data_cfg.imbalance:g}"


def _method_diffs(cfg: Config) -> dict:
    """(method name, {key: value} where the run departs from its preset)."""
    flat = flatten(cfg.to_dict())
    if cfg.preset in PRESETS:
        ref = flatten(from_dict(preset_dict(cfg.preset)).to_dict())
        return PRESETS[cfg.preset].method, {k: v for k, v in flat.items() if ref.get(k) != v}
    # no preset: the way of training names the row, and the rest departs from the defaults
    defaults = flatten(Config().to_dict())
    return cfg.method or "config", {k: v for k, v in flat.items() if k != "method" and defaults.get(k) != v}


def build(runs: list[Run], metric: str = "final", baseline: str | None = None, labelled=None):
    """Rows (method labels, baseline first), columns (settings) and cells {(row, column): Cell}.
    `labelled`: `label_runs(runs)` where the caller already has it."""
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: choose one of {list(METRICS)}")
    key, _ = METRICS[metric]
    labelled, shared = labelled or label_runs(runs)
    cells: dict[tuple[str, str], Cell] = {}
    for r, label, diffs in labelled:
        paper, paper_epochs = (None, None) if _lower_precision(r) else _paper_number(r.cfg, diffs)
        cell = cells.setdefault((label, setting_of(r.cfg)), Cell({}, paper, paper_epochs))
        if r.summary is None or not isinstance(r.summary.get(key), (int, float)):
            cell.why_left_out[r.cfg.seed] = r.why_left_out if r.summary is None else f"without {key}"
        elif r.cfg.seed in cell.accs:
            raise ConfigError(
                f"{r.path}: a second run of {label} on {setting_of(r.cfg)} with seed {r.cfg.seed}; "
                "pass only one of them"
            )
        else:
            cell.accs[r.cfg.seed] = float(r.summary[key])
    rows = sorted({k[0] for k in cells}, key=_row_order)
    cols = sorted({k[1] for k in cells})
    if baseline is None:
        baseline = next((r for r in rows if r in BASELINE_METHODS), None)
        if baseline is None:  # e.g. "ldam-drw (loss.drw_epoch=36)": the one row of a baseline method
            named = [r for r in rows if r.split(" (")[0] in BASELINE_METHODS]
            baseline = named[0] if len(named) == 1 else None
    elif baseline not in rows:  # a method name stands for its one row, whatever its own settings
        named = [r for r in rows if r.split(" (")[0] == baseline]
        if len(named) > 1:
            raise ConfigError(
                f"--baseline {baseline!r} names {len(named)} rows of this table: {named}; give one of them "
                f"in full, e.g. --baseline {named[0]!r}"
            )
        if not named:
            raise ConfigError(f"--baseline {baseline!r} is not a row of this table; rows: {rows}")
        baseline = named[0]
    if baseline is not None:
        rows = [baseline] + [r for r in rows if r != baseline]
    return rows, cols, cells, baseline, sorted(shared)


def label_runs(runs: list[Run]) -> tuple[list[tuple[Run, str, dict]], set]:
    """Each run with its row label and its departures from its preset; the departures every run shares
    (a shortened protocol), which describe the table, not a row."""
    parsed = [(r, *_method_diffs(r.cfg)) for r in runs]
    shared = (
        set.intersection(*[{(k, json.dumps(v)) for k, v in d.items()} for _, _, d in parsed])
        if parsed
        else set()
    )
    labelled = []
    for r, method, diffs in parsed:
        own = {k: v for k, v in diffs.items() if k not in _NOT_METHOD and (k, json.dumps(v)) not in shared}
        own.update(_lower_precision(r))
        label = method + (
            " (" + ", ".join(f"{k}={_short(v)}" for k, v in sorted(own.items())) + ")" if own else ""
        )
        labelled.append((r, label, diffs))
    return labelled, shared


def _trained_on(run_dir: Path) -> str:
    """Where and in what precision the run (its last process) trained, from resolved.json: a row's seeds
    may come from a CPU and a GPU (MACHINE_KEYS)."""
    path = run_dir / rundir.RESOLVED
    execution = rundir.read_json(path).get("execution", {}) if path.is_file() else {}
    said = [execution.get("device_name") or execution.get("device"), execution.get("precision")]
    return ", ".join(part for part in said if part) or "-"


def _lower_precision(run: Run) -> dict:
    """{"precision": P} where the run trained in a precision below fp32, as its resolved.json says (its
    config's `null` is decided by the device), else {}."""
    trained = run.cfg.precision or rundir.trained_precision(run.path)
    return {"precision": trained} if trained in ("bf16", "fp16") else {}


def _paper_number(cfg: Config, diffs: dict) -> tuple[float | None, int | None]:
    """The preset's published top-1 and its epochs, when the run departs from the preset only in its schedule.

    Every departure counts, also one all runs share (a table of learned-gate runs only is not the paper's).
    Turning DRW on or off is a change of method, moving it is a change of schedule."""
    preset = PRESETS.get(cfg.preset)
    if preset is None or preset.paper_acc is None:
        return None, None
    ref = from_dict(preset_dict(cfg.preset))
    for key, value in diffs.items():
        drw_switched = key == "loss.drw_epoch" and (value is None or ref.loss.drw_epoch is None)
        if key not in _NOT_PAPER_METHOD or drw_switched:
            return None, None
    return preset.paper_acc, ref.optim.epochs


def _paper_header(cells: dict, column: str) -> str:
    epochs = sorted(
        {cell.paper_epochs for (_, col), cell in cells.items() if col == column and cell.paper is not None}
    )
    return "paper" + (f" ({'/'.join(map(str, epochs))} ep.)" if epochs else "")


def _short(v) -> str:
    return "[" + ",".join(map(str, v)) + "]" if isinstance(v, list) else str(v)


def _row_order(label: str):
    from .presets import BASELINES, METHODS, VARIANTS

    order = ["ldam-drw", "baseline", "erm", *BASELINES, *METHODS, *VARIANTS]
    method = label.split(" (")[0]
    return (order.index(method) if method in order else len(order), label)


def paired(cell: Cell, base: Cell) -> tuple[float | None, float | None, int]:
    """Mean and standard deviation of (method - baseline) over the seeds both finished."""
    seeds = sorted(set(cell.accs) & set(base.accs))
    differences = [cell.accs[s] - base.accs[s] for s in seeds]
    if not differences:
        return None, None, 0
    spread = statistics.stdev(differences) if len(differences) > 1 else None
    return statistics.fmean(differences), spread, len(differences)


def _fmt(mean, std, n=None, signed: bool = False) -> str:
    """A cell's mean ± std (n); a difference (signed) carries its sign either way, so a gain reads +."""
    if mean is None:
        return "-"
    s = (f"{mean:+.2f}" if signed else f"{mean:.2f}") + (f" ± {std:.2f}" if std is not None else "")
    return s + (f" ({n})" if n is not None else "")


def markdown(runs: list[Run], metric: str = "final", baseline: str | None = None) -> str:
    rows, cols, cells, base, shared = build(runs, metric, baseline)
    head = ["method"] + [
        f"{c} {h}" for c in cols for h in ("ours", _paper_header(cells, c), f"Δ vs {base or 'baseline'}")
    ]
    lines = [
        f"{METRICS[metric][1]}: mean ± std over seeds (number of seeds); Δ paired by seed.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    source = _source(runs)
    if source:
        lines[1:1] = ["", source]
    notes = []
    finished = {
        c: sorted({s for (_, col), cell in cells.items() if col == c for s in cell.accs}) for c in cols
    }
    for r in rows:
        out = [r]
        for c in cols:
            cell = cells.get((r, c))
            if cell is None:
                out += ["", "", ""]
                continue
            out.append(_fmt(*cell.mean_std(), cell.n))
            out.append("-" if cell.paper is None else f"{cell.paper:.2f}")
            b = cells.get((base, c)) if base else None
            out.append("" if b is None or r == base else _fmt(*paired(cell, b), signed=True))
            missing = [s for s in finished[c] if s not in cell.accs and s not in cell.unfinished]
            if cell.unfinished:
                for why in sorted(set(cell.why_left_out.values())):
                    seeds = sorted(s for s, w in cell.why_left_out.items() if w == why)
                    notes.append(f"{r}, {c}: seeds {seeds} {why} (left out)")
            if missing:
                notes.append(f"{r}, {c}: seeds {missing} missing")
        lines.append("| " + " | ".join(out) + " |")
    shown = [(k, v) for k, v in shared if k not in _NOT_METHOD]
    if shown:
        lines += [
            "",
            "Shared by every run (not the paper's protocol): "
            + ", ".join(f"{k}={_short(json.loads(v))}" for k, v in shown),
        ]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _source(runs: list[Run]) -> str:
    """A line naming the file the numbers come from, where it is not summary.json (a later evaluation on
    other test images than the run's data.test_limit says)."""
    name = runs[0].summary_file if runs else rundir.SUMMARY
    if name == rundir.SUMMARY:
        return ""
    sizes = sorted({r.summary["num_test"] for r in runs if r.summary and "num_test" in r.summary})
    on = f", on {' / '.join(map(str, sizes))} test images" if sizes else ""
    return f"Numbers from each run's {name}{on} (not its summary.json)."


def per_run(runs: list[Run], metric: str = "final", baseline: str | None = None) -> str:
    """One line per run, in the table's row order: the metric and its difference from the baseline row's
    run of the same seed; the best epoch and the shot groups (summary.json); from metrics.jsonl, the
    pretext heads' training accuracy in the last epoch and the gate weights in the first and last epoch
    with the lowest and highest of any task in any epoch, and the gradient the class loss and the weighted
    pretext term put on the backbone in the last epoch (gssl.diagnostics): what a reader checks a mean
    against. The table's other frozen-feature probes (k-NN, patch tokens) get a column each where a run
    has them."""
    labelled, shared = label_runs(runs)
    rows, _, cells, base, _ = build(runs, metric, baseline, (labelled, shared))
    key = METRICS[metric][0]
    probes = [k for k, _ in METRICS.values() if k not in (key, "test_acc", "best_test_acc")]
    probes = [k for k in probes if any(k in (r.summary or {}) for r in runs)]
    head = ["row", "setting", "seed", key, f"Δ vs {base or 'baseline'}", *probes, "best (epoch)"]
    head += ["many / medium / few-shot", "pretext head train acc. % (last epoch)"]
    head += ["gate weights: first -> last epoch (lowest-highest)"]
    head += ["backbone gradient: class / pretext = ratio (last epoch)", "trained on", "epochs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, label, _ in sorted(
        labelled, key=lambda x: (rows.index(x[1]), setting_of(x[0].cfg), x[0].cfg.seed)
    ):
        seed, setting, summary = run.cfg.seed, setting_of(run.cfg), run.summary or {}
        epochs = rundir.read_metrics(run.path)
        value = summary.get(key)
        base_cell = cells.get((base, setting))
        base_value = base_cell.accs.get(seed) if base_cell is not None and label != base else None
        line = [label, setting, str(seed), _pct(value, 2)]
        line.append("" if value is None or base_value is None else f"{value - base_value:+.2f}")
        line += [_pct(summary.get(probe), 2) for probe in probes]
        best = summary.get("best_test_acc")
        best_epoch = summary.get("best_epoch")
        line.append(_pct(best, 2) + ("" if best_epoch is None else f" ({best_epoch})"))
        line.append(" / ".join(_pct(summary.get(f"{g}_shot_acc"), 1) for g in ("many", "medium", "few")))
        line += [
            _pretext(epochs[-1] if epochs else {}),
            _gates(epochs),
            _gradients(epochs[-1] if epochs else {}),
            _trained_on(run.path),
        ]
        left_out = "" if run.summary else f" of {run.cfg.optim.epochs}, {run.why_left_out}"
        line.append(f"{len(epochs)}{left_out}")
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines) + "\n"


def _pct(value, digits: int) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def _pretext(row: dict) -> str:
    accs = {k[len("pretext_acc_") :]: v for k, v in row.items() if k.startswith("pretext_acc_")}
    return ", ".join(f"{task} {acc:.1f}" for task, acc in accs.items()) or "-"


def _gates(epochs: list[dict]) -> str:
    tasks = [k for k in (epochs[-1] if epochs else {}) if k.startswith("gate_")]
    if not tasks:
        return "-"
    values = [row[t] for row in epochs for t in tasks if t in row]
    first, last = (" / ".join(f"{row[t]:.2f}" for t in tasks) for row in (epochs[0], epochs[-1]))
    names = " / ".join(t[len("gate_") :] for t in tasks)
    return f"{names}: {first} -> {last} ({min(values):.4f}-{max(values):.4f})"


def _gradients(row: dict) -> str:
    """'1.80 / 0.0013 = 1385x': the class loss's gradient norm on the backbone, the weighted pretext
    term's, and how many times larger the first is."""
    if "grad_pretext" not in row:
        return "-" if "grad_cls" not in row else f"{row['grad_cls']:.3g} / no pretext term"
    ratio = row.get("grad_ratio_pretext")
    times = "inf (pretext weighted 0)" if ratio is None else f"{ratio:.0f}x"
    return f"{row['grad_cls']:.3g} / {row['grad_pretext']:.2g} = {times}"


def to_csv(runs: list[Run], metric: str = "final", baseline: str | None = None) -> str:
    rows, cols, cells, base, _ = build(runs, metric, baseline)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "method",
            "setting",
            "metric",
            "mean",
            "std",
            "n",
            "seeds",
            "unfinished_seeds",
            "paper",
            "baseline",
            "diff_mean",
            "diff_std",
            "diff_n",
            "paper_epochs",
        ]
    )
    for r in rows:
        for c in cols:
            cell = cells.get((r, c))
            if cell is None:
                continue
            m, s = cell.mean_std()
            b = cells.get((base, c)) if base and r != base else None
            dm, ds, dn = paired(cell, b) if b else (None, None, 0)
            w.writerow(
                [
                    r,
                    c,
                    METRICS[metric][0],
                    _num(m),
                    _num(s),
                    cell.n,
                    " ".join(map(str, sorted(cell.accs))),
                    " ".join(map(str, sorted(cell.unfinished))),
                    _num(cell.paper),
                    base or "",
                    _num(dm),
                    _num(ds),
                    dn,
                    cell.paper_epochs or "",
                ]
            )
    return buf.getvalue()


def _num(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
