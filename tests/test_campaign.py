"""`gssl campaign`: a sweep file's runs under a wall-clock budget, records handed back and resumed.

Real `gssl train` processes on the fake CIFAR-10 (ResNet-8, tiny batches, CPU); the budget stops a run
mid-way, the export and collect carry it to another folder (a GPU machine's checkout and back), and the
next campaign resumes it there."""

import json
import time
from pathlib import Path

import pytest
import yaml

from conftest import TINY_SETTINGS
from gssl import campaign, rundir, sweep
from gssl.cli import main
from gssl.config import ConfigError

TINY = {**TINY_SETTINGS, "data.max_per_class": 8, "device": "cpu"}


def _campaign_file(tmp_path: Path, data_root: Path, out: Path, runs: list[dict], name="c.yaml") -> Path:
    spec = {"out": str(out), "seeds": [0], "set": {"data.root": str(data_root), **TINY}, "runs": runs}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(name: str, epochs: int, priority: int = 1, preset: str = "cifar10-lt0.01-gated-triple") -> dict:
    return {
        "name": name,
        "preset": preset,
        "priority": priority,
        "set": {"optim.epochs": epochs, "optim.base_epochs": epochs},
    }


def _rows(run_dir: Path) -> list[int]:
    return [row["epoch"] for row in rundir.read_metrics(run_dir)]


@pytest.mark.slow
def test_a_budget_stops_the_runs_the_export_carries_them_and_the_next_campaign_resumes(
    fake_cifar10, tmp_path, capsys
):
    out, export = tmp_path / "gpu" / "out", tmp_path / "export"
    runs = [
        _run("long", 300),
        _run("short", 2, priority=2, preset="cifar10-lt0.01-ldam-drw"),
        _run("late", 300, 3),
    ]
    spec = _campaign_file(tmp_path, fake_cifar10, out, runs)
    started = time.monotonic()
    argv = [
        "campaign",
        str(spec),
        "--budget-s",
        "26",
        "--reserve-s",
        "3",
        "--startup-s",
        "1",
        "--epoch-s",
        "0.001",
    ]
    assert main(argv + ["--export", str(export)]) == 0
    assert time.monotonic() - started < 26  # it ends within its budget, export included
    said = capsys.readouterr().out
    # the optimistic guesses start the first two; once they have measured real epoch times, the third no
    # longer fits and is not started
    assert "started long seed 0" in said and "started short seed 0" in said
    assert "finished short seed 0" in said and "stopped long seed 0 at the deadline" in said
    assert "not started: late seed 0" in said and "started late" not in said
    done = len(_rows(out / "long/seed0"))
    assert 1 <= done < 300
    # the export: the finished run's records; the stopped run's records and the checkpoint it resumes from
    assert sorted(p.name for p in (export / "short/seed0").iterdir()) == [
        "config.yaml",
        "metrics.jsonl",
        "resolved.json",
        "summary.json",
    ]
    assert (export / "long/seed0/checkpoints/last.pt").is_file() and not (
        export / "long/seed0/summary.json"
    ).exists()
    assert _rows(export / "long/seed0") == list(range(1, done + 1))
    log = [json.loads(line) for line in (export / campaign.CAMPAIGN_LOG).read_text().splitlines()]
    assert log[-1]["finished"] == ["short/seed0"] and log[-1]["stopped"] == ["long/seed0"]
    assert log[-1]["not_started"] == ["late/seed0"] and log[-1]["epoch_s"] > 0.001  # measured, not guessed

    # back in the checkout: collect, then a campaign resumes the stopped run where it stopped
    checkout = tmp_path / "checkout" / "out"
    local = _campaign_file(tmp_path, fake_cifar10, checkout, runs, name="local.yaml")
    assert main(["campaign", str(local), "--collect", str(export)]) == 0
    assert (checkout / "long/seed0/checkpoints/last.pt").is_file()
    # 26 s: a loaded two-core machine took over 14 s to start the run and load its checkpoint
    argv = [
        "campaign",
        str(local),
        "--budget-s",
        "26",
        "--reserve-s",
        "3",
        "--startup-s",
        "1",
        "--epoch-s",
        "0.001",
    ]
    capsys.readouterr()
    assert main(argv) == 0
    assert "1 finished already" in capsys.readouterr().out
    assert (
        f"resuming {checkout / 'long/seed0'} at epoch {done + 1}"
        in (checkout / "logs/long-seed0.log").read_text()
    )
    more = _rows(checkout / "long/seed0")
    assert len(more) > done and more == list(range(1, len(more) + 1))  # every epoch once, in order
    assert len((checkout / campaign.CAMPAIGN_LOG).read_text().splitlines()) == 2  # the GPU's line, then ours


def test_only_what_is_expected_to_finish_starts(fake_cifar10, tmp_path, capsys):
    """With a guess of 10 s an epoch, a 40-epoch run does not fit in 100 s: nothing starts, and it says so."""
    out = tmp_path / "out"
    spec = _campaign_file(tmp_path, fake_cifar10, out, [_run("long", 40), _run("short", 2)])
    argv = [
        "campaign",
        str(spec),
        "--budget-s",
        "100",
        "--startup-s",
        "5",
        "--epoch-s",
        "10",
        "--parallel",
        "1",
    ]
    assert main(argv + ["--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "[not started] long seed 0: about 395 s, does not fit" in plan
    assert "[new] short seed 0: at 0 s, about 15 s" in plan  # a later run that fits goes first
    assert not out.exists()
    capsys.readouterr()
    assert main(argv + ["--dry-run", "--budget-s", "1000"]) == 0
    assert "[new] long seed 0: at 0 s" in capsys.readouterr().out


def test_a_clean_class_loss_run_is_planned_at_two_forward_passes(fake_cifar10, tmp_path, capsys):
    """ssl.clean_class_loss makes a second forward pass a step (issue 47; 1.9x a faithful epoch on the CPU):
    its epochs are planned at twice the guess, and an epoch it measured counts per pass for the others."""
    clean = _run("clean", 2)
    clean["set"]["ssl.clean_class_loss"] = True
    spec = _campaign_file(tmp_path, fake_cifar10, tmp_path / "out", [_run("plain", 2), clean])
    argv = ["campaign", str(spec), "--budget-s", "100", "--startup-s", "5", "--epoch-s", "10"]
    assert main(argv + ["--parallel", "1", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "[new] plain seed 0: at 0 s, about 15 s" in plan
    assert "[new] clean seed 0: at 15 s, about 25 s" in plan
    plain_job, clean_job = sweep.jobs_from_file(spec)
    planner = campaign.Campaign(
        [plain_job, clean_job],
        100,
        1,
        campaign.Estimate(5, 10),
        device="cpu",
        calibrate=False,
        window_s=0,
        reserve_s=0,
        log=print,
    )
    planner.history.append(
        campaign.Running(clean_job, None, 0.0, 0, first_row_after=3.0, epoch_seconds=[4.0])
    )
    assert planner.estimate().epoch_s == 2.0  # the clean run's 4 s epoch is 2 s a pass
    assert (planner.seconds(plain_job), planner.seconds(clean_job)) == (5.0, 7.0)


def test_runs_are_ordered_by_priority_then_seed(fake_cifar10, tmp_path):
    runs = [
        _run("b", 2, priority=2),
        _run("a", 2, priority=1),
        {"name": "c", "preset": "cifar10-lt0.01-lorot"},
    ]
    spec = _campaign_file(tmp_path, fake_cifar10, tmp_path / "out", runs)
    text = spec.read_text().replace("seeds:\n- 0", "seeds: [0, 1]")
    spec.write_text(text + "parallel: 3\n")
    jobs = sweep.jobs_from_file(spec)
    assert [(job.name, job.seed) for job in jobs] == [
        ("a", 0),
        ("c", 0),
        ("a", 1),
        ("c", 1),
        ("b", 0),
        ("b", 1),
    ]
    assert sweep.file_parallel(spec) == 3
    spec.write_text(text + "parallel: 0\n")
    with pytest.raises(ConfigError, match="parallel must be an integer >= 1"):
        sweep.file_parallel(spec)
    spec.write_text(text.replace("priority: 2", "priority: high"))
    with pytest.raises(ConfigError, match=r"runs\[0\]: priority must be an integer"):
        sweep.jobs_from_file(spec)


def test_campaign_refuses_a_missing_budget_and_a_missing_export(fake_cifar10, tmp_path, capsys):
    spec = _campaign_file(tmp_path, fake_cifar10, tmp_path / "out", [_run("a", 2)])
    assert main(["campaign", str(spec)]) == 2
    assert "give --budget-s SECONDS" in capsys.readouterr().err
    assert main(["campaign", str(spec), "--budget-s", "10", "--reserve-s", "20"]) == 2
    assert main(["campaign", str(spec), "--collect", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def _record(run_dir: Path, job: sweep.Job, epochs: int, finished: bool) -> None:
    """A run's folder as training leaves it: its config, `epochs` metrics rows, a checkpoint or a summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    from gssl.runconfig import to_yaml

    (run_dir / rundir.CONFIG).write_text(to_yaml(job.resolved()))
    rundir.write_metrics(run_dir, [{"epoch": e, "seconds": 1.0} for e in range(epochs)])
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / campaign.LAST).write_bytes(b"checkpoint after %d" % epochs)
    if finished:
        (run_dir / rundir.SUMMARY).write_text("{}")


def test_collect_takes_what_is_further_along_and_removes_a_finished_runs_checkpoint(fake_cifar10, tmp_path):
    spec = _campaign_file(
        tmp_path, fake_cifar10, tmp_path / "out", [_run("a", 5), _run("b", 5), _run("c", 5)]
    )
    jobs = {job.name: job for job in sweep.jobs_from_file(spec)}
    source, dest = tmp_path / "export", tmp_path / "out"
    _record(source / "a/seed0", jobs["a"], 5, finished=True)  # finished since: its old checkpoint goes
    _record(dest / "a/seed0", jobs["a"], 2, finished=False)
    _record(source / "b/seed0", jobs["b"], 1, finished=False)  # behind what is here: left alone
    _record(dest / "b/seed0", jobs["b"], 3, finished=False)
    _record(source / "c/seed0", jobs["c"], 4, finished=False)  # new here
    said = []
    campaign.copy_records(list(jobs.values()), source, dest, said.append)
    assert (dest / "a/seed0/summary.json").is_file() and not (dest / "a/seed0" / campaign.LAST).exists()
    assert said == [f"removed {dest / 'a/seed0' / campaign.LAST}: the run has finished"]
    assert len(_rows(dest / "b/seed0")) == 3 and (dest / "b/seed0" / campaign.LAST).read_bytes().endswith(
        b"3"
    )
    assert (dest / "c/seed0" / campaign.LAST).read_bytes().endswith(b"4") and len(
        _rows(dest / "c/seed0")
    ) == 4

    # a run of another configuration in the destination: refused before anything is copied
    other = _campaign_file(tmp_path, fake_cifar10, tmp_path / "out", [_run("a", 7)], name="other.yaml")
    _record(source / "a/seed0", sweep.jobs_from_file(other)[0], 7, finished=True)
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="another configuration"):
        campaign.copy_records(list(jobs.values()), source, dest, said.append)
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before


def test_the_full_length_campaign_file_resolves_to_the_papers_presets_unscaled():
    """configs/sweeps/cifar10-lt-full.yaml: P1's twelve runs first, each preset's own schedule, fp32,
    compiled, the whole test set; the transform-only row is the gated triple with the pretext loss
    weighted 0."""
    path = Path(__file__).resolve().parents[1] / "configs/sweeps/cifar10-lt-full.yaml"
    jobs = sweep.jobs_from_file(path)
    p1 = [(job.name, job.seed) for job in jobs[:12]]
    assert p1 == [(n, s) for s in (0, 1, 2) for n in ("ldam-drw", "lorot", "gated-triple", "transform-only")]
    assert len(jobs) == 3 * (4 + 6 + 12)
    p2_first = [(job.name, job.seed) for job in jobs[12:15]]
    assert p2_first == [("clean-cls", 0), ("gated-triple-learned", 0), ("ungated-triple", 0)]
    for job in jobs:
        cfg = job.resolved()
        assert (cfg.precision, cfg.compile, cfg.data.test_limit, cfg.data.name) == (
            "fp32",
            True,
            None,
            "cifar10",
        )
        assert cfg.optim.epochs == cfg.optim.base_epochs == (300 if cfg.ssl.tasks else 200)
        assert cfg.optim.milestones == [160, 180] and cfg.optim.warmup_epochs == 5
        assert cfg.diagnose_every == 10  # the gradient diagnostic, at a tenth of its per-epoch cost
    by_name = {job.name: job.resolved() for job in jobs if job.seed == 0}
    only = by_name["transform-only"]
    assert only.ssl.ratio == 0 and only.ssl.tasks == by_name["gated-triple"].ssl.tasks == [
        "lorot",
        "flip",
        "channel",
    ]
    assert only.data.root is None  # the campaign command gives it, as a location setting
    clean = by_name["clean-cls"]  # issue 47's deviation at full length: only the clean class loss differs
    assert clean.ssl.clean_class_loss and not by_name["gated-triple"].ssl.clean_class_loss
    assert clean.ssl.tasks == by_name["gated-triple"].ssl.tasks and clean.ssl.ratio == 0.1


@pytest.mark.slow
def test_calibration_measures_one_then_two_at_once_and_the_next_campaign_uses_the_faster(
    fake_cifar10, tmp_path, capsys
):
    out = tmp_path / "out"
    # Short runs in a long budget: the command ends when both runs have finished (about 30 s on 2 idle
    # cores, calibration in the first 20), so the budget is only a ceiling, twice what the calibration
    # needs there: on a loaded host its two start-ups (a process and torch each) still fit.
    spec = _campaign_file(tmp_path, fake_cifar10, out, [_run("a", 20)])
    spec.write_text(spec.read_text().replace("seeds:\n- 0", "seeds: [0, 1]"))
    argv = ["campaign", str(spec), "--budget-s", "60", "--reserve-s", "3", "--calibrate", "--window-s", "2"]
    assert main(argv + ["--startup-s", "1", "--epoch-s", "0.001"]) == 0
    said = capsys.readouterr().out
    assert "calibrating [1, 2] at once" in said
    assert "calibration: 1 at once" in said and "calibration: 2 at once" in said
    record = campaign.read_calibration(out)["cpu"]
    rates = {int(n): level["epochs_per_s"] for n, level in record["levels"].items()}
    assert sorted(rates) == [1, 2] and all(rate > 0 for rate in rates.values())
    assert record["parallel"] == max(rates, key=rates.get)
    assert record["levels"]["2"]["epoch_s"] == pytest.approx(2 / rates[2], rel=0.01)
    # the next campaign on this device runs as many at once as were fastest, unless told otherwise, and does
    # not measure again
    before = (out / campaign.CALIBRATION).read_bytes()
    assert main(["campaign", str(spec), "--budget-s", "5", "--reserve-s", "3", "--calibrate"]) == 0
    assert "calibrating" not in capsys.readouterr().out  # (and in 2 s nothing fits)
    assert (out / campaign.CALIBRATION).read_bytes() == before
    assert main(["campaign", str(spec), "--budget-s", "30", "--dry-run"]) == 0
    assert f"{record['parallel']} at once on cpu" in capsys.readouterr().out
    assert main(["campaign", str(spec), "--budget-s", "30", "--dry-run", "--parallel", "3"]) == 0
    assert "3 at once on cpu" in capsys.readouterr().out


def test_runs_at_once_come_from_the_flag_then_this_device_s_calibration_then_the_file(
    fake_cifar10, tmp_path, capsys
):
    """The file's `parallel` is a guess for a device not yet measured: once a campaign has calibrated the
    device, later ones run as many at once as were fastest (before, the file's number always won). A
    second campaign of runs alike can borrow another's calibration instead of spending a window on it."""
    out, other = tmp_path / "out", tmp_path / "other"
    spec = _campaign_file(tmp_path, fake_cifar10, out, [_run("a", 20)])
    spec.write_text(spec.read_text() + "parallel: 3\n")
    plan = ["campaign", str(spec), "--budget-s", "30", "--dry-run"]

    def at_once(*flags: str) -> str:
        assert main([*plan, *flags]) == 0
        return capsys.readouterr().out

    assert "3 at once on cpu" in at_once()  # nothing measured: the file's guess
    campaign.write_calibration(other, "cpu", 2, {1: 1.0, 2: 1.6}, 4.0)
    borrowed = at_once("--calibration-from", str(other))
    assert f"calibration: cpu's from {other / campaign.CALIBRATION} (2 at once fastest there)" in borrowed
    assert "2 at once on cpu" in borrowed and "start-up 4 s" in borrowed  # its start-up too, as a prior
    assert "3 at once on cpu" in at_once()  # borrowed for that command only, nothing written here
    campaign.write_calibration(out, "cpu", 1, {1: 1.0, 2: 0.9}, 4.0)
    assert "1 at once on cpu" in at_once()  # measured here: over the file's guess
    assert "1 at once on cpu" in at_once("--calibration-from", str(other))  # and over another's
    assert "4 at once on cpu" in at_once("--parallel", "4")  # the flag over everything
    assert main([*plan, "--calibration-from", str(tmp_path / "nowhere")]) == 2
    said = capsys.readouterr().err
    assert f"--calibration-from {tmp_path / 'nowhere'}: no such folder" in said


def test_the_gpu_window_script_plans_the_full_length_campaign_then_the_45_epoch_grid(tmp_path):
    """benchmarks/gpu_window.sh, the one command a GPU window runs, as it runs there (here with --dry-run):
    the full-length campaign first, then issue 47's grid in the window's last GSSL_GRID_S seconds, its
    committed CPU records counted done although the window runs it compiled and in fp32."""
    import os
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}

    def window(*argv: str, **more_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(root / "benchmarks/gpu_window.sh"), *argv],
            env={**env, **more_env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = window("540", "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "4 at once" in lines[0]  # the file's `parallel` until a device is calibrated
    assert [line.split(":")[0].split("] ")[1] for line in lines[1:5]] == [
        f"{name} seed 0" for name in ("ldam-drw", "lorot", "gated-triple", "transform-only")
    ]  # P1 first (what starts depends on the device's speed, guessed here)
    plans = [line for line in lines if line.startswith("campaign plan: ")]
    assert len(plans) == 2 and " of 66 runs unfinished" in plans[0]
    records = len(list((root / "results/cifar10-lt-45ep-pretext").glob("*/seed*/summary.json")))
    assert re.match(rf"campaign plan: {33 - records} of 33 runs unfinished", plans[1])
    assert len(window("540", "--dry-run", GSSL_GRID_S="0").stdout.splitlines()) == lines.index(plans[1])
    refused = window("540", "--dry-run", GSSL_GRID_S="540")
    assert refused.returncode == 2 and "GSSL_GRID_S=540: expected whole seconds" in refused.stderr
    done = subprocess.run(
        ["bash", str(root / "benchmarks/gpu_window.sh")],
        env={**env, "OUT": ""},
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0 and "set OUT" in done.stderr
