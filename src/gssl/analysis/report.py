"""`gssl report`: one HTML page per run (or per set of runs) that shows what the model learned.

report.html is self-contained: every figure is embedded as a base64 data: URI, so the file can be
mailed, attached to an issue or moved on its own, and it needs no network (plain HTML and CSS, no
script). The same figures are also written as PNG files to report/ beside it, for slides and papers.

A section whose inputs are missing (no checkpoint yet, the dataset not on this machine) says why
instead of failing the whole report: curves and gates only need metrics.jsonl.
"""

from __future__ import annotations

import base64
import html
import re
import sys
import time
from pathlib import Path

from .. import rundir
from ..config import ConfigError
from ..data import DataError
from ..evaluation import has_classifier, scenario_class
from ..gating import uniform_weight
from . import figures
from .examples import (
    class_attention_examples,
    gradcam_examples,
    is_greyscale,
    pretext_rows,
    sample_test_images,
)
from .run import Run
from .tsne import tsne_of_run

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;\
margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:16px 28px 48px}
h1{font-size:22px;margin:18px 0 4px} h2{font-size:18px;margin:30px 0 8px;border-bottom:1px solid #d8dce3}
h3{font-size:15px;margin:20px 0 6px} .meta{color:#5a6270} nav a{margin-right:12px}
figure{margin:10px 0 18px;background:#fff;border:1px solid #e0e3e8;border-radius:6px;padding:10px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto} \
figcaption{color:#4a5260;font-size:13px;margin-top:6px}
table{border-collapse:collapse;background:#fff;margin:8px 0 14px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #e0e3e8;padding:4px 9px;text-align:left} th{background:#eef1f5}
td.num{text-align:right} .note{background:#fff8e1;border-left:3px solid #f0b400;padding:6px 10px;margin:8px 0}
code{background:#eef1f5;padding:1px 4px;border-radius:3px}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"


class Page:
    """Collects HTML and writes each figure both as a PNG in fig_dir and as a data: URI in the page."""

    def __init__(self, fig_dir: Path, warn=None):
        self.fig_dir, self.parts, self.figures = fig_dir, [], []
        self.warn = warn or (lambda line: print(f"gssl: report: left out {line}", file=sys.stderr))

    def leave_out(self, run: Run, what: str, why: str) -> None:
        """A section not drawn: a note in the page, and a line for the person who asked for it."""
        self.note(f"{_e(what)} not shown: {_e(why)}")
        self.warn(f"{what} of {run.name}: {why}")

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, path: Path | None, caption: str, alt: str) -> None:
        if path is None:
            return
        self.figures.append(path)
        data = base64.b64encode(Path(path).read_bytes()).decode()
        self.add(
            f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}" '
            f'data-file="report/{_e(path.name)}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )

    def note(self, text: str) -> None:
        self.add(f'<p class="note">{text}</p>')


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_e(c)}</td>'
            if isinstance(c, (int, float)) or (isinstance(c, str) and re.fullmatch(r"-?[\d.]+%?|-", c))
            else f"<td>{_e(c)}</td>"
            for c in r
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def summary_rows(runs: list[Run]) -> tuple[list[str], list[list]]:
    header = [
        "run",
        "preset",
        "data",
        "backbone",
        "tasks",
        "gate",
        "loss",
        "epochs",
        "final test %",
        "best test % (epoch)",
        "many %",
        "medium %",
        "few %",
        "final gate weights",
        "device, precision",
    ]
    rows = []
    for r in runs:
        c, s = r.cfg, r.summary
        last = r.rows[-1] if r.rows else {}
        gates = s.get("gate_weights") or {k[5:]: v for k, v in last.items() if k.startswith("gate_")}
        done = f"{len(r.rows)}/{c.optim.epochs}" if len(r.rows) != c.optim.epochs else str(c.optim.epochs)
        best = "-" if "best_test_acc" not in s else f"{s['best_test_acc']:.2f} ({s['best_epoch']})"
        if not has_classifier(c) and best != "-":  # final: the linear probe; per epoch: k-NN
            best += f", {scenario_class(c).probe_options(c).knn_k}-NN"
        final = s.get("test_acc", last.get("test_acc"))
        rows.append(
            [
                r.name,
                c.preset or "-",
                f"{c.data.name} (imbalance {c.data.imbalance:g})",
                c.model.backbone,
                ", ".join(r.tasks()) or "none",
                c.ssl.gate if r.tasks() else "-",
                c.loss.name,
                done,
                _pct(final),
                best,
                _pct(s.get("many_shot_acc")),
                _pct(s.get("medium_shot_acc")),
                _pct(s.get("few_shot_acc")),
                ", ".join(f"{k} {v:.3f}" for k, v in gates.items()) or "-",
                _device(s),
            ]
        )
    return header, rows


def _device(summary: dict) -> str:
    """Where and how the run computed: device, precision, and whether the step was compiled."""
    if "device" not in summary:
        return "-"
    how = [summary.get("precision") or "precision not recorded"]
    if summary.get("compiled"):
        how.append("compiled")
    return f"{summary['device']}, {', '.join(how)}"


def gate_verdict(run: Run) -> str:
    """A sentence on whether the gate learned anything, from the per-epoch mean weights."""
    tasks, rows, mode = run.tasks(), run.rows, run.cfg.ssl.gate
    if not tasks or not rows:
        return "No gate: this run has no pretext tasks." if not tasks else "No epoch finished yet."
    if mode == "uniform":
        return "Uniform gate: every pretext loss is weighed 1 throughout; there is nothing to learn."
    first, last = rows[0], rows[-1]
    n = len(tasks)
    uniform = uniform_weight(mode, n)
    dev = max(abs(r[f"gate_{t}"] - uniform) for r in rows for t in tasks)
    moved = max(abs(last[f"gate_{t}"] - first[f"gate_{t}"]) for t in tasks)
    order = sorted(tasks, key=lambda t: -last[f"gate_{t}"])
    s = (
        f"Over training the weights stayed within {dev:.3f} of uniform "
        f"({f'1/{n} = {uniform:.3f}' if uniform != 1 else '1 per task'}) "
        f"and moved at most {moved:.3f} from epoch 1 to epoch {len(rows)}. "
    )
    ranked = ", ".join(f"{t} {last['gate_' + t]:.3f}" for t in order)
    s += (
        f"Final order: {ranked}. "
        if dev >= 0.02
        else "The gate stayed close to uniform: it did not learn a clear preference. "
    )
    if mode == "reference":
        s += (
            "This is the reference gate: its weights are detached and get no gradient, "
            "so any change comes from the features."
        )
    return s


GRADIENT_CAPTION = (
    "Is the auxiliary task being trained at all? Left: the norm of the gradient each term of the training "
    "loss puts on the backbone's parameters (the class loss; each pretext task as the loss weighs it, "
    "ssl.ratio x gate weight x task loss; their sum), the mean over two batches measured after each "
    "epoch. Right: the class term's norm over each pretext term's."
)


def gradient_verdict(row: dict) -> str:
    """A sentence on the last epoch's gradient diagnostic."""
    ratio = row.get("grad_ratio_pretext")
    if "grad_pretext" not in row:
        return "No pretext term: only the class loss's gradient is measured."
    if ratio is None:
        return (
            "The pretext term put no gradient on the backbone (weighted 0): its tasks only transform images."
        )
    return (
        f"In the last epoch the class loss pulled on the backbone {ratio:.3g} times as hard as the weighted "
        f"pretext term ({row['grad_cls']:.3g} against {row['grad_pretext']:.3g})."
    )


def _guard(page: Page, run: Run, what: str, fn):
    """Run one section; a missing dataset, checkpoint or config turns into a note instead of a crash."""
    try:
        fn()
    except (DataError, rundir.RunDirError, ConfigError, ValueError, ImportError) as e:
        page.leave_out(run, what, str(e))


def run_sections(page: Page, run: Run, prefix: str, opts: dict, level: int = 2) -> None:
    """One run's sections: what its records show, then what needs its model (the checkpoint's weights,
    or for the pretext tasks only the test images)."""
    _record_sections(page, run, prefix, f"h{level}")
    _model_sections(page, run, prefix, opts, f"h{level}")


def _record_sections(page: Page, run: Run, prefix: str, h: str) -> None:
    """Learning curves, gate weights and per-class accuracy, from metrics.jsonl and summary.json."""
    fd = page.fig_dir
    rows, s = run.rows, run.summary
    page.add(f"<{h}>Learning curves</{h}>")
    if not rows:
        page.leave_out(run, "Learning curves", "metrics.jsonl has no finished epoch yet")
    else:
        page.figure(
            figures.learning_curves(rows, fd / f"{prefix}curves.png"),
            "Loss terms (total, classification, each pretext task, the learned gate's own objective), "
            "train accuracy on the augmented and pretext-transformed batches, test accuracy, learning rate.",
            "learning curves",
        )
    page.add(f"<{h}>Gate weights</{h}>")
    if rows and run.tasks():
        page.figure(
            figures.gate_trajectories({run.name: rows}, fd / f"{prefix}gates.png"),
            "Mean gate weight per task each epoch (left) beside that task's loss (right).",
            "gate weights",
        )
    page.add(f"<p>{_e(gate_verdict(run))}</p>")
    if rows and "grad_cls" in rows[-1]:
        page.add(f"<{h}>Gradient on the shared backbone</{h}>")
        page.figure(
            figures.gradient_norms({run.name: rows}, fd / f"{prefix}gradients.png"),
            GRADIENT_CAPTION,
            "gradient norms on the backbone",
        )
        page.add(f"<p>{_e(gradient_verdict(rows[-1]))}</p>")

    page.add(f"<{h}>Per-class accuracy</{h}>")

    def per_class():
        if "per_class_acc" not in s:
            raise ValueError("summary.json is not written yet (the run has not finished)")
        page.figure(
            figures.per_class_accuracy(
                s["per_class_acc"], s["class_counts"], s["classes"], s, fd / f"{prefix}per-class.png"
            ),
            "Final-epoch test accuracy per class against its training images; shaded: few-shot (&lt;20), "
            "medium-shot (20-100), many-shot (&gt;100), dashed: group means.",
            "per-class accuracy",
        )
        groups = [[g, _pct(s.get(f"{g}_shot_acc"))] for g in ("many", "medium", "few")]
        page.add(_table(["shot group", "accuracy %"], groups))

    _guard(page, run, "Per-class accuracy", per_class)


def _model_sections(page: Page, run: Run, prefix: str, opts: dict, h: str) -> None:
    """Confusion matrix, t-SNE, Grad-CAM and attention from the rebuilt model; the pretext examples from
    the test images alone."""
    sections = [  # (heading, name, wanted, needs the checkpoint, draw)
        ("Confusion matrix", "Confusion matrix", True, True, _confusion),
        ("t-SNE of pooled features", "t-SNE", opts["tsne"], True, _tsne),
        ("Grad-CAM", "Grad-CAM", opts["gradcam"], True, _gradcam),
        ("Pretext tasks", "Pretext tasks", bool(run.tasks()), False, _pretext_examples),
        ("Class-token attention", "attention maps", run.cfg.model.backbone == "vit", True, _attention),
    ]

    def figure_path(name: str) -> Path:
        return page.fig_dir / f"{prefix}{name}"

    for title, what, wanted, needs_checkpoint, section in sections:
        if not wanted:
            continue
        page.add(f"<{h}>{title}</{h}>")
        if needs_checkpoint and not run.has_checkpoint:
            page.leave_out(run, what, f"no checkpoint at {run.checkpoint_path}")
            continue
        _guard(page, run, what, lambda section=section: section(page, run, figure_path, opts))


def _confusion(page: Page, run: Run, figure_path, opts: dict) -> None:
    rep = run.evaluation()
    page.figure(
        figures.confusion(rep["confusion_matrix"], rep["classes"], figure_path("confusion.png")),
        f"Checkpoint <code>{_e(run.checkpoint)}</code> (epoch {rep['epoch']}), "
        f"{rep['num_test']} test images, top-1 {rep['top1']:.2f}%.",
        "confusion matrix",
    )


def _tsne(page: Page, run: Run, figure_path, opts: dict) -> None:
    t = tsne_of_run(run, opts["max_images"], log=opts["log"])
    page.figure(
        figures.tsne_scatter(t["embedding"], t["labels"], t["preds"], run.classes(), figure_path("tsne.png")),
        f"Backbone features of {len(t['labels'])} test images (balanced over classes), perplexity "
        f"{min(50, len(t['labels']) - 1)}, checkpoint epoch {t['epoch']}"
        f"{' (from the cache)' if t['cached'] else ''}.",
        "t-SNE",
    )


def _gradcam(page: Page, run: Run, figure_path, opts: dict) -> None:
    g = gradcam_examples(run, opts["gradcam_images"], opts["layer"])
    cams = [g[key] for key in ("images", "cam_true", "cam_pred", "labels", "preds", "classes", "layer")]
    page.figure(
        figures.gradcam_grid(*cams, figure_path("gradcam.png")),
        f"Stage <code>{_e(g['layer'])}</code>; middle row: evidence for the true class, "
        "bottom: for the predicted class (the same when the prediction is right).",
        "Grad-CAM",
    )


def _attention(page: Page, run: Run, figure_path, opts: dict) -> None:
    found = class_attention_examples(run, 6)
    page.figure(
        figures.attention_grid(found["images"], found["maps"], found["module"], figure_path("attention.png")),
        f"Last-block attention of the class token of <code>{_e(found['module'])}</code> to each patch. Under "
        "SelfPatch the image representation is the aggregation of the patch tokens, not the class token, "
        "so its map there says less.",
        "class-token attention",
    )


def _pretext_examples(page: Page, run: Run, figure_path, opts: dict) -> None:
    imgs = sample_test_images(run, 4)
    greyscale = "channel" in run.tasks() and is_greyscale(imgs)
    note = "greyscale images: the channel permutation changes nothing visible" if greyscale else ""
    page.figure(
        figures.pretext_grid(
            pretext_rows(imgs, run.tasks(), run.cfg.ssl.flip_axis), figure_path("pretext.png"), note
        ),
        "Test images with each task's transformation alone and with its label, then all tasks "
        "together as training applies them; outlined: the transformed region.",
        "pretext tasks",
    )


def _header(runs: list[Run], checkpoint: str) -> str:
    names = ", ".join(r.name for r in runs)
    return (
        f"<h1>gssl report: {_e(names)}</h1><p class=meta>{_e(time.strftime('%Y-%m-%d %H:%M'))}, checkpoint "
        f"<code>{_e(checkpoint)}</code>; {'; '.join(_e(r.path) for r in runs)}</p>"
    )


def render_report(
    run_dirs,
    out: Path | None = None,
    *,
    checkpoint: str = "last",
    tsne: bool = True,
    gradcam: bool = True,
    max_images: int = 2000,
    gradcam_images: int = 8,
    layer: str | None = None,
    data_root: str | None = None,
    log=print,
    warn=None,
) -> Path:
    """Write report.html (+ report/*.png) into the run directory, or into `out` (required for several
    runs). `data_root`: where the data lies now, if it has moved since the runs. `warn(line)` hears of
    each section left out and why (default: a line on stderr)."""
    runs = [Run(Path(p), checkpoint, data_root=data_root) for p in run_dirs]
    if not runs:
        raise rundir.RunDirError("name at least one run directory")
    for r in runs:
        r.check_layer(layer)
    if len(runs) > 1 and out is None:
        raise rundir.RunDirError("several runs: pass --out DIR for the combined report")
    seen: dict[str, int] = {}
    for r in runs:  # unique names for runs in folders of the same name
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name}-{seen[r.name]}"
    out = Path(out) if out is not None else runs[0].path
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise rundir.RunDirError(f"cannot create {out}: {e.strerror or e}; choose a writable --out") from None
    page = Page(out / "report", warn)
    opts = {
        "tsne": tsne,
        "gradcam": gradcam,
        "max_images": max_images,
        "gradcam_images": gradcam_images,
        "layer": layer,
        "log": log,
    }
    page.add(_header(runs, checkpoint))
    header, rows = summary_rows(runs)
    if len(runs) == 1:
        page.add(_table(header, rows))
        run_sections(page, runs[0], "", opts)
    else:
        page.add(
            "<nav>" + "".join(f'<a href="#run-{i}">{_e(r.name)}</a>' for i, r in enumerate(runs)) + "</nav>"
        )
        page.add("<h2>Summary</h2>" + _table(header, rows))
        curves = {r.name: r.rows for r in runs if r.rows}
        if curves:
            page.add("<h2>Learning curves, overlaid</h2>")
            page.figure(
                figures.overlay_curves(curves, page.fig_dir / "compare-curves.png"),
                "One colour per run.",
                "overlaid learning curves",
            )
            page.add("<h2>Gate weights</h2>")
            page.figure(
                figures.gate_trajectories(curves, page.fig_dir / "compare-gates.png"),
                "One row per gated run.",
                "gate weights of every run",
            )
            if any("grad_cls" in rows[-1] for rows in curves.values()):
                page.add("<h2>Gradient on the shared backbone</h2>")
                page.figure(
                    figures.gradient_norms(curves, page.fig_dir / "compare-gradients.png"),
                    GRADIENT_CAPTION + " One row per run.",
                    "gradient norms of every run",
                )
        for i, r in enumerate(runs):
            page.add(f'<h2 id="run-{i}">{_e(r.name)}</h2>')
            run_sections(page, r, f"{_slug(r.name)}-", opts, level=3)
    body = "\n".join(page.parts)
    doc = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>gssl report: '
        f'{_e(", ".join(r.name for r in runs))}</title>\n<meta name="viewport" content="width=device-width">'
        f"<style>{CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n"
    )
    path = out / "report.html"
    rundir.write_atomic(path, doc.encode())  # readable as the umask allows, like every run file
    return path


def analyze_run(
    run_dir,
    *,
    gradcam: bool = True,
    tsne: bool = True,
    checkpoint: str = "last",
    layer: str | None = None,
    max_images: int = 2000,
    gradcam_images: int = 8,
    data_root: str | None = None,
    log=print,
) -> list[Path]:
    """`gssl analyze`: just the Grad-CAM and/or t-SNE figures, into RUN_DIR/analysis/."""
    run = Run(Path(run_dir), checkpoint, data_root=data_root)
    run.check_layer(layer)
    out = run.path / "analysis"
    paths = []
    if gradcam:
        g = gradcam_examples(run, gradcam_images, layer)
        paths.append(
            figures.gradcam_grid(
                g["images"],
                g["cam_true"],
                g["cam_pred"],
                g["labels"],
                g["preds"],
                g["classes"],
                g["layer"],
                out / f"gradcam-{checkpoint}-{g['layer']}.png",
            )
        )
    if tsne:
        t = tsne_of_run(run, max_images, log=log)
        paths.append(
            figures.tsne_scatter(
                t["embedding"], t["labels"], t["preds"], run.classes(), out / f"tsne-{checkpoint}.png"
            )
        )
    return paths
