"""gssl report and gssl analyze on real (tiny) runs: every section, valid PNGs, several runs, the t-SNE
cache."""

import base64
import io
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("matplotlib", reason="the report needs matplotlib (pip install 'gssl[analysis]')")
pytest.importorskip("sklearn", reason="the report's t-SNE needs scikit-learn (pip install 'gssl[analysis]')")

from conftest import train_tiny_run  # noqa: E402
from gssl import rundir  # noqa: E402
from gssl.analysis import figures  # noqa: E402
from gssl.analysis import tsne as tsne_mod  # noqa: E402
from gssl.analysis.examples import pretext_rows  # noqa: E402
from gssl.cli import main  # noqa: E402

SECTIONS = [
    "Learning curves",
    "Gate weights",
    "Gradient on the shared backbone",
    "Per-class accuracy",
    "Confusion matrix",
    "t-SNE of pooled features",
    "Grad-CAM",
    "Pretext tasks",
]


class Page(HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.images, self.headings, self.tags, self.notes, self._in = [], [], set(), [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        if tag in ("h2", "h3") or (tag == "p" and a.get("class") == "note"):
            self._in = tag

    def handle_data(self, data):
        if self._in in ("h2", "h3"):
            self.headings.append(data.strip())
        elif self._in == "p":
            self.notes.append(data.strip())

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None


def _png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.verify()
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.width > 50 and img.height > 50
    return img


def _check_page(html_path):
    text = html_path.read_text()
    page = Page(text)
    assert "script" not in page.tags, "plain HTML + CSS: no scripts"
    assert "http://" not in text and "https://" not in text, "no network resources"
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,"), "figures are embedded"
        data = base64.b64decode(img["src"].split(",", 1)[1])
        _png(data)
        assert (html_path.parent / img["data-file"]).read_bytes() == data, "the same PNG is written beside it"
        assert img.get("alt")
    return page


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    dst = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, dst)  # copy2 keeps modification times: the t-SNE cache key holds
    return dst


def test_report_of_one_run_has_every_section(run_copy, capsys, monkeypatch):
    drawn = {}
    save = figures._save
    monkeypatch.setattr(
        figures, "_save", lambda fig, path: save(drawn.setdefault(Path(path).name, fig), path)
    )
    assert main(["report", str(run_copy), "--gradcam-images", "6"]) == 0
    out, err = capsys.readouterr()
    assert "report written to" in out and out.rstrip().endswith("; every section drawn") and err == ""
    page = _check_page(run_copy / "report.html")
    for s in SECTIONS:
        assert s in page.headings, s
    assert not page.notes, page.notes  # nothing left out
    names = sorted(p.name for p in (run_copy / "report").glob("*.png"))
    assert names == [
        "confusion.png",
        "curves.png",
        "gates.png",
        "gradcam.png",
        "gradients.png",
        "per-class.png",
        "pretext.png",
        "tsne.png",
    ]
    assert len(page.images) == len(names)
    text = (run_copy / "report.html").read_text()
    assert "learned" in text and "lorot" in text and run_copy.name in text
    assert "cpu (" in text and ", fp32<" in text  # where and in which precision it trained
    assert _png((run_copy / "report" / "gradcam.png").read_bytes()).width > 6 * 100  # 6 columns of images
    assert (run_copy / "eval-last.json").is_file()  # the confusion matrix, computed once like `gssl eval`
    _check_figure_content(run_copy, drawn)


def _check_figure_content(run, drawn):
    """What the figures show is the run's own numbers: confusion counts, gate weights, per-class points."""
    evaluation = json.loads((run / "eval-last.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    rows = rundir.read_metrics(run)
    counts = np.array(evaluation["confusion_matrix"])
    per_class = 100 * counts.diagonal() / counts.sum(1)
    assert per_class == pytest.approx(summary["per_class_acc"])  # the matrix agrees with the training's
    assert 100 * counts.trace() / counts.sum() == pytest.approx(summary["test_acc"])

    confusion_axes = drawn["confusion.png"].axes[0]
    assert np.asarray(confusion_axes.images[0].get_array()) == pytest.approx(
        counts / counts.sum(1, keepdims=True)
    )
    written = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in confusion_axes.texts
    }
    assert written == {(i, j): str(counts[i, j]) for i, j in zip(*counts.nonzero())}

    weights_axes, losses_axes = drawn["gates.png"].axes[:2]
    for task_index, task in enumerate(("lorot", "flip", "channel")):
        assert list(weights_axes.lines[task_index].get_ydata()) == [row[f"gate_{task}"] for row in rows]
        assert list(losses_axes.lines[task_index].get_ydata()) == [row[f"ssl_{task}"] for row in rows]

    norms_axes, ratios_axes = drawn["gradients.png"].axes[:2]  # the gradient diagnostic's rows, drawn
    assert list(norms_axes.lines[0].get_ydata()) == [row["grad_cls"] for row in rows]
    assert list(ratios_axes.lines[3].get_ydata()) == [row["grad_ratio_pretext"] for row in rows]

    points = drawn["per-class.png"].axes[0].collections[-1].get_offsets()
    assert np.asarray(points) == pytest.approx(
        np.column_stack([summary["class_counts"], summary["per_class_acc"]])
    )


def test_tsne_cache_is_reused_and_invalidated_by_a_new_checkpoint(run_copy, monkeypatch):
    calls = []
    real = tsne_mod.embed

    def counting(features, *a, **k):
        calls.append(len(features))
        return real(features, *a, **k)

    monkeypatch.setattr(tsne_mod, "embed", counting)
    assert main(["report", str(run_copy), "--no-gradcam"]) == 0
    assert calls == [100] and list((run_copy / "analysis").glob("tsne-last-e2.npz"))

    def fail(*a, **k):
        raise AssertionError("t-SNE recomputed although the cache is valid")

    monkeypatch.setattr(tsne_mod, "embed", fail)
    assert main(["report", str(run_copy), "--no-gradcam"]) == 0
    assert "(from the cache)" in (run_copy / "report.html").read_text()

    ck = run_copy / "checkpoints" / "last.pt"
    os.utime(ck, ns=(ck.stat().st_atime_ns, ck.stat().st_mtime_ns + 10**9))  # as if training went on
    monkeypatch.setattr(tsne_mod, "embed", counting)
    assert main(["analyze", str(run_copy), "--tsne", "--max-images", "50"]) == 0
    assert calls == [100, 50]
    assert (run_copy / "analysis" / "tsne-last.png").is_file()


def test_report_of_several_runs_overlays_curves_and_tabulates(tiny_run, fake_cifar10, tmp_path, capsys):
    other = train_tiny_run(fake_cifar10, tmp_path / "uniform", 1, "ssl.gate=uniform")
    out = tmp_path / "compare"
    assert main(["report", str(tiny_run), str(other), "--no-tsne", "--no-gradcam"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["report", str(tiny_run), str(other), "--out", str(out), "--no-tsne", "--no-gradcam"]) == 0
    page = _check_page(out / "report.html")
    assert {"Summary", "Learning curves, overlaid", tiny_run.name, "uniform"} <= set(page.headings)
    files = {p.name for p in (out / "report").glob("*.png")}
    assert {"compare-curves.png", "compare-gates.png", "run-curves.png", "uniform-curves.png"} <= files
    assert {"compare-gradients.png", "run-gradients.png", "uniform-gradients.png"} <= files
    assert not any("tsne" in f or "gradcam" in f for f in files)
    text = (out / "report.html").read_text()
    assert text.count("<tr>") >= 3 and "Uniform gate" in text  # header + one row per run; the gate sentence


def test_analyze_gradcam_on_a_chosen_layer(run_copy, capsys):
    assert main(["analyze", str(run_copy), "--gradcam", "--layer", "layer2", "--gradcam-images", "4"]) == 0
    path = run_copy / "analysis" / "gradcam-last-layer2.png"
    assert str(path) in capsys.readouterr().out and _png(path.read_bytes())
    assert not (run_copy / "analysis" / "tsne-last.png").exists()


def test_missing_checkpoint_and_summary_become_notes_and_lines_on_stderr(run_copy, capsys):
    shutil.rmtree(run_copy / "checkpoints")
    (run_copy / "summary.json").unlink()  # as while the run is still training
    assert main(["report", str(run_copy)]) == 0
    out, err = capsys.readouterr()
    page = _check_page(run_copy / "report.html")
    assert "Learning curves" in page.headings and "Gate weights" in page.headings
    assert any("no checkpoint" in n for n in page.notes) and any("summary.json" in n for n in page.notes)
    assert "; 4 section(s) left out, listed on stderr" in out
    name, missing = run_copy.name, run_copy / "checkpoints" / "last.pt"
    assert err.splitlines() == [
        f"gssl: report: left out Per-class accuracy of {name}: summary.json is not written yet (the run has "
        "not finished)",
        f"gssl: report: left out Confusion matrix of {name}: no checkpoint at {missing}",
        f"gssl: report: left out t-SNE of {name}: no checkpoint at {missing}",
        f"gssl: report: left out Grad-CAM of {name}: no checkpoint at {missing}",
    ]
    # the pretext tasks need the test images only
    assert "Pretext tasks" in page.headings and (run_copy / "report" / "pretext.png").is_file()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["report", "/nonexistent/run"], "not a gssl run directory"),
        (["analyze", "/nonexistent/run"], "not a gssl run directory"),
        (["analyze", "RUN", "--layer", "layer4"], "has stages layer1, layer2, layer3"),
        (["report", "RUN", "--max-images", "1"], "--max-images"),
    ],
)
def test_bad_input_exits_2(argv, fragment, tiny_run, capsys):
    assert main([str(tiny_run) if a == "RUN" else a for a in argv]) == 2
    assert fragment in capsys.readouterr().err


def test_pretext_panels_change_only_the_outlined_region():
    imgs = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    rows = pretext_rows(imgs, ["lorot", "flip", "channel"])
    assert [len(r) for r in rows] == [5] * 4  # original, three tasks, all together
    for i, row in enumerate(rows):
        assert row[0][0] == "original"
        for title, img, (top, left, h, w) in (p for p in row[1:]):
            diff = torch.as_tensor(img).ne(imgs[i]).any(0)
            inside = torch.zeros_like(diff)
            inside[top : top + h, left : left + w] = True
            assert not diff[~inside].any(), title
            if "not flipped" not in title:
                assert diff[inside].any(), title  # random pixels: every non-identity transform shows
        assert "quadrant" in row[1][0] and "label" in row[1][0]


def test_pretext_panels_for_lorot_i_and_whole_image_rotation():
    imgs = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    rows = pretext_rows(imgs, ["rotation"])
    for i, row in enumerate(rows):  # rotations 90, 180, 270 degrees in turn, the whole image, no box
        title, img, box = row[1]
        assert box is None and f"label {i + 1}" in title
        torch.testing.assert_close(torch.as_tensor(img), torch.rot90(imgs[i], i + 1, (1, 2)))
    top, left, h, w = pretext_rows(imgs, ["lorot_i"])[0][1][2]
    assert h == w and 2 <= h <= 16 and top + h <= 32 and left + w <= 32  # one random square per batch


@pytest.mark.parametrize("cmd", [["report"], ["analyze"], []])
def test_help_has_examples(cmd):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "gssl", *cmd, "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    assert (
        ("examples:" in r.stdout and "--checkpoint" in r.stdout)
        if cmd
        else ("report" in r.stdout and "analyze" in r.stdout)
    )
