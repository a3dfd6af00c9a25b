"""`gssl table SWEEP --figures OUT`: the sweep's figures drawn from run records alone, checked on what is
plotted (the data of the matplotlib lines); and the paper column of `gssl table` on a shortened schedule."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ANALYSIS_MISSING

pytest.importorskip("matplotlib", reason=ANALYSIS_MISSING.format("matplotlib"))

from gssl import rundir, table  # noqa: E402
from gssl.analysis import curves  # noqa: E402
from gssl.cli import main  # noqa: E402
from gssl.config import parse_set  # noqa: E402
from gssl.presets import resolve  # noqa: E402
from gssl.runconfig import to_yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCHEDULE = ["optim.epochs=3", "optim.base_epochs=3", "optim.warmup_epochs=1", "optim.milestones=[2]"]
COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
TASKS = ["lorot", "flip", "channel"]
# row -> (preset, its own overrides, {seed: per-epoch test accuracy})
ROWS = {
    "ldam-drw": (
        "cifar10-lt0.01-ldam-drw",
        ["loss.drw_epoch=2"],
        {0: [20.0, 40.0, 60.0], 1: [24.0, 38.0, 66.0]},
    ),
    "gated-triple": (
        "cifar10-lt0.01-gated-triple",
        ["loss.drw_epoch=2"],
        {0: [18.0, 35.0, 55.0], 1: [22.0, 37.0, 59.0]},
    ),
}


def _pretext_acc(seed, epoch, task):
    return 10.0 + 5 * epoch + seed + TASKS.index(task)


def _gate(seed, epoch, task):
    raw = np.array([3.0 + epoch + seed, 2.0, 1.0 + seed])
    return float((raw / raw.sum())[TASKS.index(task)])


def _per_class(seed, row):
    return [90.0 - 8 * i + seed + (5 if row == "gated-triple" else 0) for i in range(len(COUNTS))]


def write_record(
    run_dir: Path,
    row: str,
    preset: str,
    sets: list[str],
    seed: int,
    test_acc: list[float],
    pretext_acc: bool = True,
    finished: bool = True,
) -> Path:
    """A run directory as `gssl train` leaves it: the preset's real config, metrics.jsonl, summary.json."""
    cfg = resolve(preset, None, [parse_set(s) for s in [*SCHEDULE, *sets, f"seed={seed}"]])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    lines = []
    for epoch, acc in enumerate(test_acc):
        m = {"epoch": epoch, "lr": 0.1, "train_acc": acc + 10, "test_acc": acc, "cls_loss": 2.0, "loss": 2.1}
        for task in cfg.ssl.tasks:
            m.update({f"ssl_{task}": 1.0, f"gate_{task}": _gate(seed, epoch, task)})
            if pretext_acc:
                m[f"pretext_acc_{task}"] = _pretext_acc(seed, epoch, task)
        lines.append(json.dumps(m) + "\n")
    (run_dir / "metrics.jsonl").write_text("".join(lines))
    if finished:
        summary = {
            "test_acc": test_acc[-1],
            "best_test_acc": max(test_acc),
            "per_class_acc": _per_class(seed, row),
            "class_counts": COUNTS,
            "classes": [f"c{i}" for i in range(10)],
            "seed": seed,
            "preset": preset,
            "gate_weights": {t: _gate(seed, len(test_acc) - 1, t) for t in cfg.ssl.tasks},
        }
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for row, (preset, sets, accs) in ROWS.items():
        for seed, acc in accs.items():
            write_record(root / row / f"seed{seed}", row, preset, sets, seed, acc)
    return root


def _rows(root, log=print):
    return curves.load_rows(table.find_runs([root]), log)


def _line(ax, label):
    found = [line for line in ax.get_lines() if line.get_label() == label]
    assert len(found) == 1, [line.get_label() for line in ax.get_lines()]
    return found[0]


def test_test_accuracy_is_the_mean_over_seeds_with_a_min_max_band(sweep):
    fig = curves.accuracy_curves(_rows(sweep))
    ax = fig.axes[0]
    for row, (_, _, accs) in ROWS.items():
        line = _line(ax, f"{row} (2 seeds)")
        np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
        np.testing.assert_allclose(line.get_ydata(), np.mean(list(accs.values()), axis=0))
    assert [line.get_label() for line in ax.get_lines()] == ["ldam-drw (2 seeds)", "gated-triple (2 seeds)"]
    band = ax.collections[0].get_paths()[0].vertices  # ldam-drw's band: from the lower seed to the higher
    seeds = np.array(list(ROWS["ldam-drw"][2].values()))
    assert band[:, 1].min() == seeds.min() and band[:, 1].max() == seeds.max()


def test_rows_past_the_tenth_colour_are_dashed(tmp_path):
    """Eleven rows share ten colours: the eleventh is drawn dashed, so it is not read as the first."""
    preset, sets, accs = ROWS["ldam-drw"]
    for row in range(11):
        write_record(tmp_path / "sweep" / f"row{row:02d}" / "seed0", "ldam-drw", preset, sets, 0, accs[0])
    ax = curves.accuracy_curves(_rows(tmp_path / "sweep")).axes[0]
    first, eleventh = _line(ax, "row00 (1 seed)"), _line(ax, "row10 (1 seed)")
    assert first.get_color() == eleventh.get_color()
    assert (first.get_linestyle(), eleventh.get_linestyle()) == ("-", "--")


def test_pretext_accuracy_per_task_with_dashed_chance_level(sweep):
    fig = curves.pretext_curves(_rows(sweep))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 1 and visible[0].get_title().startswith("gated-triple")  # ldam-drw: no task
    ax = visible[0]
    for task, chance in (("lorot", 6.25), ("flip", 50.0), ("channel", 100 / 6)):
        chance_line = _line(ax, f"{task} chance {chance:.3g}%")
        assert chance_line.get_linestyle() == "--"
        np.testing.assert_allclose(chance_line.get_ydata(), [chance, chance])
        mean = [np.mean([_pretext_acc(s, e, task) for s in (0, 1)]) for e in range(3)]
        np.testing.assert_allclose(_line(ax, f"{task} (2 seeds)").get_ydata(), mean)


def test_gate_weights_of_gated_rows_only(sweep):
    fig = curves.gate_curves(_rows(sweep))
    assert len(fig.axes) == 1 and "reference" in fig.axes[0].get_title()
    ax = fig.axes[0]
    np.testing.assert_allclose(_line(ax, "uniform 1/3").get_ydata(), [1 / 3, 1 / 3])
    for task in TASKS:
        mean = [np.mean([_gate(s, e, task) for s in (0, 1)]) for e in range(3)]
        np.testing.assert_allclose(_line(ax, f"{task} (2 seeds)").get_ydata(), mean)


def test_gate_weights_that_stay_uniform_stay_in_view(tmp_path):
    """A gate that never leaves 1/3 (the learned gate with every head at chance) is drawn below the top of
    its panel, not on the frame where the line cannot be seen."""
    run = write_record(
        tmp_path / "sweep" / "learned" / "seed0", "gated-triple", *ROWS["gated-triple"][:2], 0, [1.0] * 3
    )
    rows = rundir.read_metrics(run)
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({**m, **{f"gate_{t}": 1 / 3 for t in TASKS}}) + "\n" for m in rows)
    )
    ax = curves.gate_curves(_rows(tmp_path / "sweep")).axes[0]
    np.testing.assert_allclose(_line(ax, "lorot (1 seed)").get_ydata(), [1 / 3] * 3)
    bottom, top = ax.get_ylim()
    assert bottom == 0 and top >= 1.15 / 3


def _with_gradients(run_dir: Path, ratio: float) -> None:
    """The gradient diagnostic's keys added to a record's metrics: class norm 2, pretext norm 2 / ratio."""
    rows = rundir.read_metrics(run_dir)
    grads = {"grad_cls": 2.0, "grad_pretext": 2.0 / ratio if ratio else 0.0}
    grads["grad_ratio_pretext"] = ratio or None
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({**m, **grads}) + "\n" for m in rows))


def test_gradient_ratio_per_epoch_on_a_log_axis_and_rows_weighted_0_said(sweep, tmp_path):
    said = []
    assert curves.gradient_curves(_rows(sweep), said.append) is None  # records from before the diagnostic
    for seed, ratio in ((0, 100.0), (1, 400.0)):
        _with_gradients(sweep / "gated-triple" / f"seed{seed}", ratio)
    preset, sets, _ = ROWS["gated-triple"]
    zero = write_record(
        sweep / "transform-only" / "seed0", "gated-triple", preset, [*sets, "ssl.ratio=0"], 0, [1.0] * 3
    )
    _with_gradients(zero, 0)
    said.clear()
    ax = curves.gradient_curves(_rows(sweep), said.append).axes[0]
    assert ax.get_yscale() == "log"
    np.testing.assert_allclose(_line(ax, "gated-triple (2 seeds)").get_ydata(), [250.0] * 3)
    assert _line(ax, "1: both pull alike").get_linestyle() == "--"
    assert [line.get_label() for line in ax.get_lines()] == ["gated-triple (2 seeds)", "1: both pull alike"]
    assert said == ["transform-only: its pretext term is weighted 0 (ssl.ratio 0): no gradient ratio to draw"]


def test_per_class_accuracy_at_the_class_sizes_on_a_log_axis(sweep):
    ax = curves.per_class_points(_rows(sweep)).axes[0]
    assert ax.get_xscale() == "log"
    for row in ROWS:
        points = _line(ax, f"{row} (2 seeds)")
        assert points.get_linestyle() == "None"
        np.testing.assert_array_equal(points.get_xdata(), COUNTS)
        np.testing.assert_allclose(points.get_ydata(), np.mean([_per_class(s, row) for s in (0, 1)], axis=0))


def test_cli_writes_the_figures_and_the_paper_column(sweep, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["table", str(sweep), "--figures", str(out)]) == 0
    printed = capsys.readouterr().out
    names = ["test_acc.png", "pretext_acc.png", "gate_weights.png", "per_class_acc.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {out / name}" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    # the rows differ from their presets only in the schedule: the paper's number stands beside them,
    # in a column that says the paper ran 200 (LDAM-DRW) and 300 epochs (the pretext rows)
    assert "| cifar10 0.01 paper (200/300 ep.) |" in printed
    assert "| ldam-drw | 63.00 ± 4.24 (2) | 77.03 |" in printed
    assert "| gated-triple | 57.00 ± 2.83 (2) | 81.67 | -6.00 ± 1.41 (2) |" in printed


def test_record_without_pretext_accuracy_still_gets_the_other_figures(tmp_path, capsys):
    root = tmp_path / "sweep"
    for row, (preset, sets, accs) in ROWS.items():
        for seed, acc in accs.items():
            write_record(root / row / f"seed{seed}", row, preset, sets, seed, acc, pretext_acc=False)
    out = tmp_path / "figures"
    assert main(["table", str(root), "--figures", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["gate_weights.png", "per_class_acc.png", "test_acc.png"]
    assert "gated-triple: seeds [0, 1] have no pretext_acc_lorot in metrics.jsonl" in printed
    assert "pretext_acc.png: not written" in printed


def test_one_seed_without_pretext_accuracy_is_left_out_of_that_curve_and_said(tmp_path):
    root = tmp_path / "sweep"
    preset, sets, accs = ROWS["gated-triple"]
    for seed, acc in accs.items():
        write_record(
            root / "gated-triple" / f"seed{seed}",
            "gated-triple",
            preset,
            sets,
            seed,
            acc,
            pretext_acc=seed == 0,
        )
    said = []
    ax = curves.pretext_curves(_rows(root), said.append).axes[0]
    np.testing.assert_allclose(
        _line(ax, "lorot (1 seed)").get_ydata(), [_pretext_acc(0, e, "lorot") for e in range(3)]
    )
    assert any("seeds [1] have no pretext_acc_lorot" in s and "left out of that curve" in s for s in said)


def test_bad_input_is_a_clear_error_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["table", str(tmp_path / "empty"), "--figures", str(tmp_path / "out")]) == 2
    assert "holds no gssl runs" in capsys.readouterr().err
    preset, sets, accs = ROWS["ldam-drw"]
    write_record(
        tmp_path / "unfinished" / "ldam-drw" / "seed0", "ldam-drw", preset, sets, 0, accs[0], finished=False
    )
    assert main(["table", str(tmp_path / "unfinished"), "--figures", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no finished run (with summary.json)" in err and not (tmp_path / "out").exists()


# --- the paper column ------------------------------------------------------------------------------


def _paper_cell(md, row):
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == row:
            return cells[2]
    raise AssertionError(f"no row {row!r} in\n{md}")


def test_paper_number_only_where_the_row_changes_the_schedule_alone(tmp_path, capsys):
    root = tmp_path / "sweep"
    write_record(root / "erm" / "seed0", "erm", "cifar10-lt0.01-erm", [], 0, [10.0, 20.0, 30.0])
    write_record(
        root / "ldam-drw" / "seed0",
        "ldam-drw",
        "cifar10-lt0.01-ldam-drw",
        ["loss.drw_epoch=2"],
        0,
        [10.0, 20.0, 40.0],
    )
    write_record(
        root / "learned" / "seed0",
        "learned",
        "cifar10-lt0.01-gated-triple",
        ["ssl.gate=learned", "loss.drw_epoch=2"],
        0,
        [10.0, 20.0, 45.0],
    )
    assert main(["table", str(root)]) == 0
    md = capsys.readouterr().out
    assert _paper_cell(md, "ldam-drw (loss.drw_epoch=2)") == "77.03"  # DRW moved with the schedule
    assert _paper_cell(md, "gated-triple (loss.drw_epoch=2, ssl.gate=learned)") == "-"
    assert _paper_cell(md, "erm") == "-"
    # the baseline row carries its own setting in its label and is still found for the differences
    assert "Δ vs ldam-drw (loss.drw_epoch=2)" in md
    write_record(
        root / "no-drw" / "seed0",
        "no-drw",
        "cifar10-lt0.01-ldam-drw",
        ["loss.drw_epoch=null"],
        0,
        [10.0, 20.0, 35.0],
    )
    assert main(["table", str(root)]) == 0
    md = capsys.readouterr().out
    assert _paper_cell(md, "ldam-drw (loss.drw_epoch=None)") == "-"  # DRW switched off: another method
    assert _paper_cell(md, "ldam-drw (loss.drw_epoch=2)") == "77.03"
    assert "Δ vs baseline" in md  # two LDAM-DRW rows: which is the baseline is left to --baseline


def test_a_method_change_every_row_shares_still_hides_the_paper_number(tmp_path, capsys):
    preset, sets, accs = ROWS["gated-triple"]
    for seed, acc in accs.items():
        write_record(
            tmp_path / "learned" / f"seed{seed}", "learned", preset, [*sets, "ssl.gate=learned"], seed, acc
        )
    assert main(["table", str(tmp_path)]) == 0
    md = capsys.readouterr().out
    assert _paper_cell(md, "gated-triple") == "-" and "ssl.gate=learned" in md.split("Shared by every run")[1]


# --- the committed records ------------------------------------------------------------------------


def test_figures_of_the_committed_45_epoch_sweep(tmp_path, capsys):
    sweep_dir = REPO / "results" / "cifar10-lt-45ep"
    if not any(sweep_dir.glob("*/seed*/summary.json")):
        pytest.skip(f"{sweep_dir} holds no finished record (config.yaml + metrics.jsonl + summary.json)")
    out = tmp_path / "figures"
    assert main(["table", str(sweep_dir), "--figures", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / "test_acc.png").is_file() and (out / "per_class_acc.png").is_file()
    assert "paper (200/300 ep.)" in printed or "paper (200 ep.)" in printed


def _points_under_legend(ax) -> list[str]:
    """Labels of the lines with a plotted point inside the panel's legend box (display coordinates)."""
    ax.figure.canvas.draw()
    box = ax.get_legend().get_window_extent()
    hidden = []
    for line in ax.get_lines():
        xy = line.get_transform().transform(np.column_stack([line.get_xdata(), line.get_ydata()]))
        if any(box.contains(x, y) for x, y in xy):
            hidden.append(line.get_label())
    return hidden


def test_the_gradient_legend_of_the_committed_pretext_sweep_hides_no_curve():
    sweep_dir = REPO / "results" / "cifar10-lt-45ep-pretext"
    if not any(sweep_dir.glob("*/seed*/summary.json")):
        pytest.skip(f"{sweep_dir} holds no finished record (config.yaml + metrics.jsonl + summary.json)")
    ax = curves.gradient_curves(_rows(sweep_dir)).axes[0]
    assert _points_under_legend(ax) == []


def test_legends_of_the_committed_sweep_hide_no_curve():
    """The gate and pretext panels of the 45-epoch sweep: lines that run along the middle (the uncertainty
    gate's flip weight at 1.44) or the top (flip accuracy at 50%) of a panel stay visible."""
    sweep_dir = REPO / "results" / "cifar10-lt-45ep"
    if not any(sweep_dir.glob("*/seed*/summary.json")):
        pytest.skip(f"{sweep_dir} holds no finished record (config.yaml + metrics.jsonl + summary.json)")
    rows = _rows(sweep_dir)
    for fig in (curves.gate_curves(rows), curves.pretext_curves(rows)):
        for ax in fig.axes:
            if ax.get_visible() and ax.get_legend() is not None:
                assert _points_under_legend(ax) == [], ax.get_title()
