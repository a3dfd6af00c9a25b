"""`gssl table` on fabricated run directories, and `gssl sweep` on real toy runs."""

import csv
import io
import json
import re
import statistics
from pathlib import Path

import pytest
import yaml

from gssl import sweep, table
from gssl.cli import main
from gssl.config import parse_set
from gssl.presets import resolve
from gssl.runconfig import to_yaml

SHORT = ["optim.epochs=6", "optim.base_epochs=6"]


def _fake_run(d, preset, seed, acc=None, best=None, sets=()):
    """A run directory as `gssl train` leaves it; acc None: unfinished (no summary.json)."""
    cfg = resolve(preset, None, [parse_set(s) for s in [*SHORT, *sets, f"seed={seed}"]])
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(to_yaml(cfg))
    if acc is not None:
        (d / "summary.json").write_text(json.dumps({"test_acc": acc, "best_test_acc": best or acc}))
    return d


BASE = {0: 60.0, 1: 62.0, 2: 61.0}
LOROT = {0: 63.0, 1: 62.5}  # seed 2 missing
LEARNED = {0: 64.0, 1: 65.0, 2: 66.0}


@pytest.fixture
def table_runs(tmp_path):
    root = tmp_path / "runs"
    for s, a in BASE.items():
        _fake_run(root / "ldam" / f"seed{s}", "cifar10-lt0.01-ldam-drw", s, a, best=a + 1)
    for s, a in LOROT.items():
        _fake_run(root / "lorot" / f"seed{s}", "cifar10-lt0.01-lorot", s, a)
    for s, a in LEARNED.items():
        _fake_run(
            root / "learned" / f"seed{s}", "cifar10-lt0.01-gated-triple", s, a, sets=["ssl.gate=learned"]
        )
    _fake_run(root / "learned" / "seed3", "cifar10-lt0.01-gated-triple", 3, None, sets=["ssl.gate=learned"])
    _fake_run(root / "c100" / "seed0", "cifar100-lt0.01-ldam-drw", 0, 40.0)
    return root


def _rows(md: str) -> dict:
    out = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells[1:]
    return out


def test_table_groups_seeds_gives_mean_std_paper_and_paired_difference(table_runs, capsys):
    assert main(["table", str(table_runs)]) == 0
    md = capsys.readouterr().out
    rows = _rows(md)
    assert list(rows) == ["ldam-drw", "lorot", "gated-triple (ssl.gate=learned)"]
    # columns: cifar10 0.01 (ours, paper, diff), cifar100 0.01 (ours, paper, diff)
    base = rows["ldam-drw"]
    assert base[0] == f"{statistics.fmean(BASE.values()):.2f} ± {statistics.stdev(BASE.values()):.2f} (3)"
    assert base[1] == "77.03" and base[3] == "40.00 (1)" and base[4] == "42.04"
    lorot = rows["lorot"]
    assert lorot[0] == f"{statistics.fmean(LOROT.values()):.2f} ± {statistics.stdev(LOROT.values()):.2f} (2)"
    assert lorot[1] == "81.82"
    diffs = [LOROT[s] - BASE[s] for s in (0, 1)]  # paired over the seeds both have
    assert lorot[2] == f"{statistics.fmean(diffs):+.2f} ± {statistics.stdev(diffs):.2f} (2)"
    learned = rows["gated-triple (ssl.gate=learned)"]
    assert learned[1] == "-"  # the paper has no learned gate: no published number beside it
    assert learned[0].endswith("(3)")  # the unfinished seed 3 is left out ...
    assert "seeds [3] unfinished" in md and "lorot, cifar10 0.01: seeds [2] missing" in md  # ... and said
    assert "optim.epochs=6" in md.split("Shared by every run")[1]  # the shortened protocol is stated once


def test_table_best_metric_is_labelled_and_csv_matches(table_runs, tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert main(["table", str(table_runs), "--metric", "best", "--csv", str(out)]) == 0
    md = capsys.readouterr().out
    assert md.startswith("best-epoch top-1 (%), the epoch chosen on the test set")
    rows = {(r["method"], r["setting"]): r for r in csv.DictReader(io.StringIO(out.read_text()))}
    b = rows[("ldam-drw", "cifar10 0.01")]
    assert float(b["mean"]) == pytest.approx(statistics.fmean(BASE.values()) + 1) and b["n"] == "3"
    assert b["metric"] == "best_test_acc" and b["seeds"] == "0 1 2"
    learned = rows[("gated-triple (ssl.gate=learned)", "cifar10 0.01")]
    assert learned["unfinished_seeds"] == "3" and learned["paper"] == "" and learned["diff_n"] == "3"
    assert float(learned["diff_mean"]) == pytest.approx(
        statistics.fmean(LEARNED[s] - BASE[s] - 1 for s in BASE)
    )


def test_table_of_contrastive_runs_knn_metric_and_baseline_by_method_name(tmp_path, capsys):
    root = tmp_path / "runs"
    accs = {"cifar10-simclr": (40.0, 41.0, 38.0, 39.0), "cifar10-simclr-pretext": (42.0, 40.0, 40.0, 41.0)}
    for preset, (a0, a1, k0, k1) in accs.items():
        for seed, (acc, knn) in enumerate(((a0, k0), (a1, k1))):
            d = _fake_run(root / preset / f"seed{seed}", preset, seed, acc)
            (d / "summary.json").write_text(
                json.dumps({"test_acc": acc, "best_test_acc": acc, "knn_test_acc": knn})
            )
    assert main(["table", str(root), "--metric", "knn"]) == 0
    md = capsys.readouterr().out
    rows = _rows(md)
    assert md.startswith("k-NN top-1 (%) on the frozen backbone")
    assert list(rows) == ["simclr", "simclr-pretext"]  # SimCLR is the default baseline, first
    assert rows["simclr"][0] == "38.50 ± 0.71 (2)" and rows["simclr-pretext"][2] == "+2.00 ± 0.00 (2)"
    assert main(["table", str(root), "--baseline", "simclr-pretext"]) == 0  # by method name, moved first
    rows = _rows(capsys.readouterr().out)
    assert list(rows) == ["simclr-pretext", "simclr"] and rows["simclr"][2] == "-0.50 ± 2.12 (2)"


def test_table_of_dino_runs_reads_the_patch_token_probes_against_plain_dino(tmp_path, capsys):
    """DINO runs' summaries hold the probes of the class token and of the averaged patch tokens; DINO is
    the default baseline, so + SelfPatch is paired against it."""
    root = tmp_path / "runs"
    probes = {  # preset: per seed (linear, k-NN, patch k-NN, patch linear)
        "cifar10-dino-vit": ((30.0, 28.0, 26.0, 27.0), (31.0, 29.0, 25.0, 28.0)),
        "cifar10-dino-selfpatch-vit": ((29.0, 28.5, 27.5, 29.0), (32.0, 28.0, 27.0, 31.0)),
    }
    for preset, seeds in probes.items():
        for seed, (linear, knn, patch_knn, patch_linear) in enumerate(seeds):
            d = _fake_run(root / preset / f"seed{seed}", preset, seed, linear)
            summary = {"test_acc": linear, "best_test_acc": linear, "knn_test_acc": knn}
            summary |= {"patch_knn_test_acc": patch_knn, "patch_linear_test_acc": patch_linear}
            (d / "summary.json").write_text(json.dumps(summary))
    expected = {  # metric: (plain DINO's cell, the paired difference of + SelfPatch)
        "final": ("30.50 ± 0.71 (2)", "+0.00 ± 1.41 (2)"),
        "knn": ("28.50 ± 0.71 (2)", "-0.25 ± 1.06 (2)"),
        "patch-knn": ("25.50 ± 0.71 (2)", "+1.75 ± 0.35 (2)"),
        "patch-linear": ("27.50 ± 0.71 (2)", "+2.50 ± 0.71 (2)"),
    }
    for metric, (dino_cell, selfpatch_diff) in expected.items():
        assert main(["table", str(root), "--metric", metric]) == 0
        md = capsys.readouterr().out
        rows = _rows(md)
        assert list(rows) == ["dino", "dino-selfpatch"], md
        assert rows["dino"][0] == dino_cell and rows["dino-selfpatch"][2] == selfpatch_diff, (metric, md)
    assert md.startswith("linear-probe top-1 (%) on the frozen ViT's averaged patch tokens")
    assert main(["table", str(root), "--metric", "knn", "--per-run"]) == 0  # every probe of each run
    lines = [line for line in capsys.readouterr().out.split("Per run:")[1].splitlines() if line[:2] == "| "]
    assert lines[0].startswith(
        "| row | setting | seed | knn_test_acc | Δ vs dino | patch_knn_test_acc | patch_linear_test_acc |"
    )
    assert lines[-1].startswith("| dino-selfpatch | cifar10 | 1 | 28.00 | -1.00 | 27.00 | 31.00 | 32.00 |")


def test_the_cli_offers_every_metric_of_the_table_and_refuses_others(capsys):
    from gssl.cli import _parser

    for metric in table.METRICS:  # the CLI lists them by hand: importing gssl.table imports torch
        assert _parser().parse_args(["table", "runs", "--metric", metric]).metric == metric
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["table", "runs", "--metric", "top5"])
    assert exc.value.code == 2 and "invalid choice: 'top5'" in capsys.readouterr().err


def test_table_refuses_duplicates_and_missing_paths(table_runs, tmp_path, capsys):
    _fake_run(table_runs / "again" / "seed0", "cifar10-lt0.01-lorot", 0, 50.0)
    assert main(["table", str(table_runs)]) == 2
    assert "a second run of lorot" in capsys.readouterr().err
    assert main(["table", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["table", str(tmp_path / "empty")]) == 2
    assert "holds no gssl runs" in capsys.readouterr().err


# --- sweep ------------------------------------------------------------------------------------


def _sweep_file(tmp_path, data_root, out):
    f = tmp_path / "sweep.yaml"
    f.write_text(f"""
out: {out}
seeds: [0, 1]
set:
  data.root: {data_root}
  data.imbalance: 0.5
  model.backbone: resnet8
  optim.batch_size: 32
  optim.epochs: 1
  optim.base_epochs: 1
  optim.milestones: []
  optim.warmup_epochs: 0
runs:
  - {{name: base, preset: cifar10-lt0.01-ldam-drw}}
  - {{name: learned, preset: cifar10-lt0.01-gated-triple, set: {{ssl.gate: learned}}}}
""")
    return f


def test_a_gpu_window_counts_cpu_records_done_and_resumes_them_as_it_is_told_to_run(
    fake_cifar10, tmp_path, capsys
):
    """How a run executes (device, compilation, memory layout, how often the gradient diagnostic runs) and
    a precision that names what a run trained in anyway (fp32 for a CPU run whose config said `null`) do
    not make another run: a GPU window given `--set compile=true --set precision=fp32` finishes a CPU grid
    instead of refusing its records (it used to). bf16 would change the numbers: refused, named."""
    out = tmp_path / "sweep"
    spec = _sweep_file(tmp_path, fake_cifar10, out)
    spec.write_text(spec.read_text().replace("seeds: [0, 1]", "seeds: [0]"))
    assert main(["sweep", str(spec)]) == 0
    machine = ["compile=false", "precision=fp32", "diagnose_every=2", "channels_last=false"]
    told = [arg for s in machine for arg in ("--set", s)]
    capsys.readouterr()
    assert main(["sweep", str(spec), *told, "--dry-run"]) == 0
    assert "2 finished already, 0 to run" in capsys.readouterr().out
    (out / "base/seed0/summary.json").unlink()  # stopped after its last checkpoint
    assert main(["sweep", str(spec), *told, "--dry-run"]) == 0
    assert " ".join(told) in capsys.readouterr().out  # the resume runs as the window says
    assert main(["sweep", str(spec), *told]) == 0
    assert (out / "base/seed0/summary.json").is_file()
    saved = yaml.safe_load((out / "base/seed0/config.yaml").read_text())
    assert (saved["compile"], saved["precision"], saved["diagnose_every"]) == (False, "fp32", 2)
    assert main(["sweep", str(spec), "--dry-run"]) == 0  # and the CPU, told nothing, goes on with them
    assert "2 finished already, 0 to run" in capsys.readouterr().out
    assert main(["sweep", str(spec), "--set", "precision=bf16", "--dry-run"]) == 2
    assert "with another configuration (differs in precision)" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_runs_the_grid_skips_finished_and_resumes_interrupted(fake_cifar10, tmp_path, capsys):
    out = tmp_path / "sweep"
    spec = _sweep_file(tmp_path, fake_cifar10, out)
    assert main(["sweep", str(spec), "--parallel", "2"]) == 0
    runs = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("summary.json"))
    assert runs == ["base/seed0", "base/seed1", "learned/seed0", "learned/seed1"]
    assert "gate: learned" in (out / "learned/seed1/config.yaml").read_text()
    assert "seed: 1" in (out / "learned/seed1/config.yaml").read_text()
    # the console names each run's log; the log has the run's first lines and its epochs, no bars
    assert f"-> {out / 'base/seed0'}, log {out / 'logs/base-seed0.log'}" in capsys.readouterr().out
    log = (out / "logs/base-seed0.log").read_text()
    assert log.startswith("schedule: 1 epochs") and "\nepoch 1/1 lr 0.1 loss " in log and "\r" not in log

    # again: nothing to do
    assert main(["sweep", str(spec)]) == 0
    assert "4 finished already, 0 to run" in capsys.readouterr().out

    # an interrupted run (checkpoint, no summary) is resumed, the others left alone
    (out / "base/seed1/summary.json").unlink()
    before = (out / "learned/seed0/summary.json").read_bytes()
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    assert "[resume: 1 of 1 epochs done] gssl train --resume" in capsys.readouterr().out
    assert main(["sweep", str(spec)]) == 0
    assert (out / "base/seed1/summary.json").is_file()
    assert (out / "learned/seed0/summary.json").read_bytes() == before
    assert "resuming" in (out / "logs/base-seed1.log").read_text()

    # and the table reads the sweep
    capsys.readouterr()
    assert main(["table", str(out)]) == 0
    table = capsys.readouterr().out
    assert "gated-triple (ssl.gate=learned)" in table

    # a fresh checkout holds only the committed records (results/: config, metrics, summary; no
    # checkpoints, no logs): the sweep counts them finished and the table reads the same numbers
    import shutil

    records = tmp_path / "checkout" / "sweep"
    for summary in out.rglob("summary.json"):
        dest = records / summary.parent.relative_to(out)
        dest.mkdir(parents=True)
        for name in ("config.yaml", "metrics.jsonl", "summary.json"):
            shutil.copy(summary.parent / name, dest / name)
    spec.write_text(spec.read_text().replace(str(out), str(records)))
    moved = tmp_path / "elsewhere"  # the fresh checkout's data lie somewhere else: still the same runs
    shutil.copytree(fake_cifar10, moved)
    assert main(["sweep", str(spec), "--set", f"data.root={moved}"]) == 0
    assert "4 finished already, 0 to run" in capsys.readouterr().out
    assert main(["table", str(records)]) == 0
    assert capsys.readouterr().out.replace(str(records), str(out)) == table


@pytest.mark.slow
def test_sweep_judge_evaluates_each_run_on_the_whole_test_split(fake_cifar10, tmp_path, capsys):
    """--judge: each run that monitored 40 test images is judged on all 100 once it finishes, a finished
    run without the judgement is judged (and only it), and one without a checkpoint to judge is refused
    before anything runs."""
    out = tmp_path / "sweep"
    spec = _sweep_file(tmp_path, fake_cifar10, out)
    spec.write_text(spec.read_text().replace("set:\n", "set:\n  data.test_limit: 40\n"))
    assert main(["sweep", str(spec), "--seeds", "0", "--judge"]) == 0
    log = capsys.readouterr().out
    assert "judged base seed 0" in log and "judged learned seed 0" in log
    for name in ("base", "learned"):
        run = out / name / "seed0"
        judged = json.loads((run / sweep.JUDGEMENT).read_text())
        assert "test_limit: 40" in (run / "config.yaml").read_text()
        assert judged["num_test"] == 100 and 0 <= judged["test_acc"] <= 100
    assert main(["table", str(out), "--summary", sweep.JUDGEMENT]) == 0
    assert "(left out)" not in capsys.readouterr().out  # both rows judged

    (out / "base/seed0" / sweep.JUDGEMENT).unlink()
    kept = (out / "learned/seed0" / sweep.JUDGEMENT).read_bytes()
    assert main(["sweep", str(spec), "--seeds", "0", "--judge", "--dry-run"]) == 0
    assert "[judge] gssl eval " in capsys.readouterr().out
    assert main(["sweep", str(spec), "--seeds", "0", "--judge"]) == 0
    log = capsys.readouterr().out
    assert "1 finished already, 1 to run" in log and "judged base seed 0" in log
    assert (out / "base/seed0" / sweep.JUDGEMENT).is_file()
    assert (out / "learned/seed0" / sweep.JUDGEMENT).read_bytes() == kept

    # a record from another checkout: finished, no checkpoint, no judgement
    (out / "base/seed0" / sweep.JUDGEMENT).unlink()
    for checkpoint in (out / "base/seed0/checkpoints").iterdir():
        checkpoint.unlink()
    assert main(["sweep", str(spec), "--seeds", "0", "--judge"]) == 2
    err = capsys.readouterr().err
    assert "without checkpoints/last.pt to judge" in err and "drop --judge" in err
    assert not (out / "base/seed0" / sweep.JUDGEMENT).exists()


def test_sweep_checks_everything_before_running_anything(fake_cifar10, tmp_path, capsys):
    out = tmp_path / "sweep"
    spec = _sweep_file(tmp_path, fake_cifar10, out)
    assert main(["sweep", str(spec), "--set", "optim.lrr=0.1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err and not out.exists()

    # a folder holding another configuration is never touched
    other = _fake_run(out / "base" / "seed0", "cifar10-lt0.01-lorot", 0, 50.0)
    snapshot = {p: p.read_bytes() for p in other.iterdir()}
    assert main(["sweep", str(spec)]) == 2
    assert "holds a run with another configuration" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in other.iterdir()} == snapshot
    assert not (out / "learned").exists()

    bad = tmp_path / "bad.yaml"
    bad.write_text("out: x\nruns: [{name: a}]\n")
    assert main(["sweep", str(bad)]) == 2
    assert "needs a preset or a config" in capsys.readouterr().err


def test_sweep_spreads_runs_over_gpus_one_per_gpu(tmp_path, monkeypatch, capsys):
    """Which GPU each run gets (CUDA_VISIBLE_DEVICES), without GPUs: Popen is replaced by a stand-in."""
    import subprocess

    from gssl import sweep

    seen = []

    class FakeProc:
        def __init__(self, cmd, stdout, stderr, env, start_new_session):
            seen.append((cmd[cmd.index("--out") + 1], env["CUDA_VISIBLE_DEVICES"]))
            self.returncode = None
            self.polls = 0

        def poll(self):
            self.polls += 1
            if self.polls > 1:
                self.returncode = 0
            return self.returncode

    monkeypatch.setattr(subprocess, "Popen", FakeProc)
    jobs = sweep.jobs_from_presets(["quickstart"], str(tmp_path / "s"), [0, 1, 2, 3, 4])
    assert sweep.run(jobs, gpus=["2", "5"]) == 0
    gpus = [g for _, g in seen]
    assert sorted(set(gpus)) == ["2", "5"] and gpus[:2] == ["2", "5"]
    assert "on GPU 2" in capsys.readouterr().out


def test_sweep_grid_expands_every_combination_with_readable_names(tmp_path, capsys):
    out = tmp_path / "g"
    assert (
        main(
            [
                "sweep",
                "--preset",
                "quickstart",
                "--grid",
                "ssl.gate=[reference,learned]",
                "--grid",
                "ssl.ratio=[0.1,0.5]",
                "--seeds",
                "0",
                "1",
                "--out",
                str(out),
                "--dry-run",
            ]
        )
        == 0
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[new]")]
    assert len(lines) == 8  # 2 gates x 2 ratios x 2 seeds
    assert any(
        "--set ssl.gate=learned --set ssl.ratio=0.5 --set seed=1 --out "
        + str(out / "quickstart+gate-learned+ratio-0.5" / "seed1")
        in line
        for line in lines
    )
    assert main(["sweep", "--preset", "quickstart", "--grid", "ssl.gate=learned", "--out", str(out)]) == 2
    assert "expected KEY=[V1,V2,...]" in capsys.readouterr().err


def test_runs_picks_rows_of_a_sweep_file_in_its_order_and_names_the_ones_it_has(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    rows = [
        {"name": name, "preset": "quickstart", "set": {"optim.lr": lr}}
        for name, lr in (("a", 0.1), ("b", 0.2), ("c", 0.3))
    ]
    spec.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "seeds": [0, 1], "runs": rows}))
    assert main(["sweep", str(spec), "--runs", "c", "a", "--dry-run"]) == 0
    outs = [Path(out) for out in re.findall(r"--out (\S+)", capsys.readouterr().out)]
    # the file's order (a before c), seed-major, whatever the order named
    assert [(out.parent.name, out.name) for out in outs] == [
        ("a", "seed0"),
        ("c", "seed0"),
        ("a", "seed1"),
        ("c", "seed1"),
    ]
    assert main(["campaign", str(spec), "--runs", "c", "a", "--dry-run", "--budget-s", "60"]) == 0
    planned = re.findall(r"\] (\w+) seed (\d)", capsys.readouterr().out)
    assert planned == [("a", "0"), ("c", "0"), ("a", "1"), ("c", "1")]
    assert main(["sweep", str(spec), "--runs", "bb", "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert "has no run named 'bb'; did you mean 'b'? Its runs: a, b, c" in error
    assert (
        main(["sweep", "--preset", "quickstart", "--runs", "a", "--out", str(tmp_path / "p"), "--dry-run"])
        == 2
    )
    assert "--runs picks runs of a sweep file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "p").exists()


# --- the committed sweep files and their records ---------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_each_committed_sweep_file_resolves_and_its_records_continue(path):
    """Every run of every sweep file resolves to a valid configuration, and every run folder committed
    under its `out` still matches what the file asks for: a later checkout continues the grid (skips,
    resumes) instead of refusing it because a default moved under the records."""
    jobs = sweep.jobs_from_file(path)  # check_jobs: every run resolves, names and seeds unique
    assert jobs
    for job in jobs:
        job.out = REPO / job.out
        if job.run_dir.is_dir():  # raises ConfigError naming the keys if the record no longer matches
            if sweep.status(job) == "done":
                assert (job.run_dir / "metrics.jsonl").is_file(), job.run_dir


def test_table_per_run_lists_each_seed_with_its_paired_difference_gates_and_pretext_heads(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed, acc in ((0, 70.0), (1, 69.0)):
        _fake_run(root / "ldam" / f"seed{seed}", "cifar10-lt0.01-ldam-drw", seed, acc)
    triple = _fake_run(root / "triple" / "seed0", "cifar10-lt0.01-gated-triple", 0)
    summary = {"test_acc": 58.5, "best_test_acc": 59.25, "best_epoch": 4}
    summary |= {"many_shot_acc": 64.04, "medium_shot_acc": 36.36, "few_shot_acc": None}
    (triple / "summary.json").write_text(json.dumps(summary))
    epochs = [
        {"epoch": 0, "gate_lorot": 0.2, "gate_flip": 0.7, "gate_channel": 0.1, "pretext_acc_lorot": 6.0},
        {"epoch": 1, "gate_lorot": 0.05, "gate_flip": 0.9, "gate_channel": 0.05, "pretext_acc_lorot": 8.76},
    ]
    epochs[1] |= {"grad_cls": 1.8, "grad_pretext": 0.0013, "grad_ratio_pretext": 1.8 / 0.0013}
    (triple / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in epochs))
    unfinished = _fake_run(root / "triple" / "seed1", "cifar10-lt0.01-gated-triple", 1)
    (unfinished / "metrics.jsonl").write_text(json.dumps(epochs[0]) + "\n")
    # where each trained (resolved.json; records made before it have none): one row, two kinds of machine
    for run_dir, device_name in (
        (root / "ldam" / "seed0", "cpu (2 threads)"),
        (triple, "NVIDIA H100 80GB HBM3"),
    ):
        execution = {
            "device": device_name.split()[0].lower(),
            "device_name": device_name,
            "precision": "fp32",
        }
        (run_dir / "resolved.json").write_text(json.dumps({"execution": execution}))
    capsys.readouterr()
    assert main(["table", str(root), "--per-run"]) == 0
    out = capsys.readouterr().out
    per_run = out.split("Per run:")[1]
    lines = [line for line in per_run.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| row | setting | seed | test_acc | Δ vs ldam-drw |")
    assert lines[1:] == [
        "| ldam-drw | cifar10 0.01 | 0 | 70.00 |  | 70.00 | - / - / - | - | - | - "
        "| cpu (2 threads), fp32 | 0 |",
        "| ldam-drw | cifar10 0.01 | 1 | 69.00 |  | 69.00 | - / - / - | - | - | - | - | 0 |",
        "| gated-triple | cifar10 0.01 | 0 | 58.50 | -11.50 | 59.25 (5) | 64.0 / 36.4 / - | lorot 8.8 "
        "| lorot / flip / channel: 0.20 / 0.70 / 0.10 -> 0.05 / 0.90 / 0.05 (0.0500-0.9000) "
        "| 1.8 / 0.0013 = 1385x | NVIDIA H100 80GB HBM3, fp32 | 2 |",
        "| gated-triple | cifar10 0.01 | 1 | - |  | - | - / - / - | lorot 6.0 "
        "| lorot / flip / channel: 0.20 / 0.70 / 0.10 -> 0.20 / 0.70 / 0.10 (0.1000-0.7000) "
        "| - | - | 1 of 6, unfinished |",
    ]


def test_table_under_summary_tells_a_run_not_judged_again_from_an_unfinished_one(table_runs, capsys):
    """--summary FILE: a finished run without FILE is "without FILE", one without summary.json
    "unfinished", in the table's notes and in the per-run lines alike."""
    judged = "eval-last-final-testall.json"
    # seeds 0-1 of the learned row judged again; seed 2 finished but not judged again; seed 3 unfinished
    for seed in (0, 1):
        run = table_runs / "learned" / f"seed{seed}"
        (run / judged).write_text(json.dumps({"test_acc": 70.0 + seed, "num_test": 10000}))
    assert main(["table", str(table_runs / "learned"), "--summary", judged, "--per-run"]) == 0
    out = capsys.readouterr().out
    assert f"Numbers from each run's {judged}, on 10000 test images" in out
    assert _rows(out.split("Per run:")[0])["gated-triple"][0] == "70.50 ± 0.71 (2)"
    assert f"seeds [2] without {judged} (left out)" in out and "seeds [3] unfinished (left out)" in out
    ends = {
        line.split(" | ")[2]: line.rsplit(" | ", 1)[-1]
        for line in out.split("Per run:")[1].splitlines()
        if "| gated-triple" in line
    }
    assert ends == {"0": "0 |", "1": "0 |", "2": f"0 of 6, without {judged} |", "3": "0 of 6, unfinished |"}


def test_table_names_the_metric_a_finished_run_lacks(table_runs, capsys):
    """A finished run whose summary has no number for --metric (here a supervised run under --metric knn,
    next to one that has it) is left out as "without knn_test_acc" in the notes, not as unfinished; its
    per-run line shows no number but a finished run."""
    run = table_runs / "learned" / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "knn_test_acc": 41.5}))
    assert main(["table", str(table_runs / "learned"), "--metric", "knn", "--per-run"]) == 0
    out = capsys.readouterr().out
    assert _rows(out.split("Per run:")[0])["gated-triple"][0] == "41.50 (1)"
    assert "seeds [1, 2] without knn_test_acc (left out)" in out and "seeds [3] unfinished (left out)" in out
    ends = {
        line.split(" | ")[2]: line.rsplit(" | ", 1)[-1]
        for line in out.split("Per run:")[1].splitlines()
        if "| gated-triple" in line
    }
    assert ends == {"0": "0 |", "1": "0 |", "2": "0 |", "3": "0 of 6, unfinished |"}
    values = {
        line.split(" | ")[2]: line.split(" | ")[3]
        for line in out.split("Per run:")[1].splitlines()
        if "| gated-triple" in line
    }
    assert values == {"0": "41.50", "1": "-", "2": "-", "3": "-"}
