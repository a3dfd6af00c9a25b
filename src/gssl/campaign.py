"""`gssl campaign`: as many finished runs of a sweep file as a wall-clock budget allows.

Made for GPU time that comes rarely and in short windows. A campaign is a sweep file run under a
deadline: its unfinished runs in priority order (then seed), `parallel` at a time on the one device,
each started only where its expected time (from measured epoch times) fits what is left of the budget.
Before the deadline every process still running is stopped; its last checkpoint, written atomically
after each epoch, is whole. `--export DIR` then copies the records of every run of the file into DIR
(config.yaml, metrics.jsonl, summary.json; an unfinished run's checkpoints/last.pt too), the folder a
GPU machine hands back; `gssl campaign FILE --collect DIR` copies them into the checkout, where the
next window resumes the unfinished runs.

Expected times: the time to a process's first epoch row (imports, data, compiling, one epoch) plus the
seconds of each later epoch, taken in this order from the runs going on now, from the device's line in
OUT/calibration.json, and from --startup-s / --epoch-s. `--calibrate` measures how many runs at once
are fastest, once per device (one with a line in OUT/calibration.json is not measured again): it runs
the queue at 1, 2, 4, then 8 at a time, each level for --window-s once all its processes have written
their first epoch, keeps the fastest level (stopping the runs above it, which resume later) and records
it in OUT/calibration.json. It fills each level with the first queued runs, whether or not they can
finish: what they train is kept in their checkpoints, for the next campaign.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import interrupts, rundir
from .config import Config, ConfigError, load_yaml
from .runconfig import from_dict, run_changes
from .sweep import (
    JUDGEMENT,
    Job,
    skip_line,
    start,
    status,
    stop_runs,
    trained_elsewhere,
)

CALIBRATION = "calibration.json"
CAMPAIGN_LOG = "campaign.jsonl"  # one line per campaign: what it started, finished and stopped
RECORDS = (rundir.CONFIG, rundir.RESOLVED, rundir.METRICS, rundir.SUMMARY, JUDGEMENT)
LAST = f"{rundir.CKPT_DIR}/last.pt"  # what an unfinished run resumes from
LEVELS = (1, 2, 4, 8)
SAFETY = 1.1  # a run starts only if 1.1 x its expected time fits: epoch times drift as others start


@dataclass
class Estimate:
    startup_s: float  # process start to its first epoch row: imports, data, compiling, that epoch
    epoch_s: float  # each later epoch, at the number of runs at once it was measured at

    def seconds(self, epochs_left: int, passes: int = 1) -> float:
        return self.startup_s + max(0, epochs_left - 1) * self.epoch_s * passes


@dataclass
class Running:
    """A run's process: its rows as they appear, to measure the epoch times the next start relies on."""

    job: Job
    process: subprocess.Popen
    started: float
    rows: int  # metrics rows now
    first_row_after: float | None = None  # seconds from start to its first new row
    epoch_seconds: list[float] = field(default_factory=list)  # the `seconds` of its later rows

    def poll_rows(self, now: float) -> int:
        """Read its metrics rows; returns how many are new since the last poll."""
        rows = rundir.read_metrics(self.job.run_dir)
        new = len(rows) - self.rows
        if new > 0:
            if self.first_row_after is None:
                self.first_row_after = now - self.started
                self.epoch_seconds += [row["seconds"] for row in rows[self.rows + 1 :]]
            else:
                self.epoch_seconds += [row["seconds"] for row in rows[self.rows :]]
            self.rows = len(rows)
        return max(new, 0)


def forward_passes(cfg: Config) -> int:
    """Training forward passes a step makes: a class loss on the clean image (issue 47) adds one, and
    its epochs took 1.9x a faithful row's on the CPU, so epoch times are compared per pass."""
    return 2 if cfg.ssl.clean_class_loss else 1


def epochs_left(job: Job, epochs: int) -> int:
    """Of a run of `epochs`: all of them unless it resumes, when its metrics rows are done."""
    return epochs - len(rundir.read_metrics(job.run_dir)) if status(job) == "resume" else epochs


class Campaign:
    """The deadline, the queue, the processes and what they measure; `run` drives it."""

    def __init__(
        self,
        jobs: list[Job],
        budget_s: float,
        parallel: int | None,
        prior: Estimate,
        *,
        device: str,
        calibrate: bool,
        window_s: float,
        reserve_s: float,
        log,
        file_parallel: int | None = None,
        calibration_from: Path | None = None,
        started: float | None = None,
    ):
        self.out = jobs[0].out
        # the budget counts from the command's start; the reserve is kept to stop the runs and export
        self.ends = (time.monotonic() if started is None else started) + budget_s
        self.deadline = self.ends - reserve_s
        self.queue = [job for job in jobs if status(job) != "done"]
        configs = {job.run_dir: job.resolved() for job in self.queue}
        self.epochs = {run_dir: cfg.optim.epochs for run_dir, cfg in configs.items()}
        self.passes = {run_dir: forward_passes(cfg) for run_dir, cfg in configs.items()}
        self.prior, self.device, self.log = prior, device, log
        self.calibration = read_calibration(self.out).get(device, {})
        if not self.calibration and calibration_from is not None:  # another campaign's, same device
            self.calibration = read_calibration(calibration_from).get(device, {})
            log(_borrowed(self.calibration, calibration_from, device))
        calibrate = calibrate and not self.calibration  # once per device: delete its entry to measure again
        self.levels = [n for n in LEVELS if n <= len(self.queue)] if calibrate else []
        # an explicit --parallel, else what was measured fastest here, else the file's guess
        at_once = parallel or self.calibration.get("parallel") or file_parallel or LEVELS[1]
        self.capacity = self.levels[0] if self.levels else at_once
        self.window_s = window_s
        self.window: tuple[float, int] | None = None  # a calibration window: (its start, rows seen then)
        self.rates: dict[int, float] = {}  # runs at once -> epoch rows per second, all runs together
        self.rows_seen = 0
        self.running: list[Running] = []
        self.history: list[Running] = []  # every process this campaign started
        self.finished: list[Job] = []
        self.failed: list[Job] = []
        self.stopped: list[Job] = []
        self.elsewhere: set[Path] = set()  # run folders another process was training when we looked

    def estimate(self) -> Estimate:
        """From this campaign's runs once they have measured something, else the device's calibration,
        else the guesses; an epoch of one forward pass a step. Start-up is the slowest seen: compiling is
        most of it, and varies."""
        measured = [r for r in self.history if r.first_row_after is not None]
        level = self.calibration.get("levels", {}).get(str(self.capacity), {})
        startup = max(
            [r.first_row_after for r in measured], default=level.get("startup_s", self.prior.startup_s)
        )
        recent = [seconds / self.passes[r.job.run_dir] for r in measured for seconds in r.epoch_seconds[-10:]]
        epoch = statistics.median(recent) if recent else level.get("epoch_s", self.prior.epoch_s)
        return Estimate(startup, epoch)

    def seconds(self, job: Job) -> float:
        return self.estimate().seconds(epochs_left(job, self.epochs[job.run_dir]), self.passes[job.run_dir])

    def fits(self, job: Job, now: float) -> bool:
        return now + SAFETY * self.seconds(job) <= self.deadline

    def start_what_fits(self, env: dict, now: float) -> None:
        """Fill the free places with the first queued runs expected to finish in time; while calibrating,
        with the first queued runs (a level is measured full; a run that cannot finish leaves its last
        checkpoint for the next campaign)."""
        for job in list(self.queue):
            if len(self.running) >= self.capacity:
                return
            who = trained_elsewhere(job)
            if who is not None:  # left queued: "not started" in the end, unless the other process stops
                if job.run_dir not in self.elsewhere:
                    self.elsewhere.add(job.run_dir)
                    self.log(skip_line(job, who))
            elif self.levels or self.fits(job, now):
                self.queue.remove(job)
                mode = status(job)
                rows = len(rundir.read_metrics(job.run_dir)) if mode == "resume" else 0
                with interrupts.deferred():  # a stop now still finds the run in `running`
                    process = start(job, mode, env, None, [], self.log).process
                    self.running.append(Running(job, process, now, rows))
                    self.history.append(self.running[-1])

    def poll(self, now: float) -> None:
        """Count new epoch rows; take in the processes that ended."""
        for running in list(self.running):
            self.rows_seen += running.poll_rows(now)
            if running.process.poll() is None:
                continue
            self.rows_seen += running.poll_rows(now)  # its last row may have come as it ended
            self.running.remove(running)
            job, seconds = running.job, now - running.started
            if running.process.returncode == 0:
                self.finished.append(job)
                self.log(f"finished {job.name} seed {job.seed} in {seconds:.0f} s")
            else:
                self.failed.append(job)
                self.log(
                    f"FAILED {job.name} seed {job.seed} (exit {running.process.returncode}); "
                    f"see {job.log_path}"
                )

    def calibrate_step(self, now: float) -> None:
        """Measure the level once all its runs have written a first epoch; then go up a level while that
        gains at least 10%, else settle on the fastest."""
        if not self.levels:
            return
        if self.window is None:
            full = len(self.running) == self.capacity or not self.queue
            if full and self.running and all(r.first_row_after is not None for r in self.running):
                self.window = (now, self.rows_seen)
            return
        if now - self.window[0] < self.window_s:
            return
        rate = (self.rows_seen - self.window[1]) / (now - self.window[0])
        self.rates[self.capacity] = rate
        self.log(f"calibration: {self.capacity} at once, {rate:.2f} epochs/s in all")
        lower = max((r for n, r in self.rates.items() if n < self.capacity), default=0.0)
        higher = [n for n in self.levels if n > self.capacity]
        if higher and self.queue and rate >= 1.1 * lower:
            self.capacity, self.window = higher[0], None
        else:
            self.settle(max(self.rates, key=self.rates.get))

    def settle(self, best: int) -> None:
        """Run `best` at once from now on: the newest runs above it stop and go back to the queue."""
        self.levels, self.capacity = [], best
        stop_runs([running.process for running in self.running[best:]])
        for running in self.running[best:]:
            self.running.remove(running)
            self.queue.insert(0, running.job)
            self.log(f"calibration: {running.job.name} seed {running.job.seed} waits for a place")
        self.log(f"calibration: {best} at once is the fastest; recorded in {self.out / CALIBRATION}")
        startup = max((r.first_row_after for r in self.history if r.first_row_after is not None), default=0)
        write_calibration(self.out, self.device, best, self.rates, startup)
        self.calibration = read_calibration(self.out)[self.device]

    def stop_all(self, why: str = "at the deadline") -> None:
        """Stop every run at once; those not gone within half of what is left of the budget (at most
        15 s, at least 1 s) are killed, which leaves the other half for the export."""
        grace_s = min(15.0, max(1.0, (self.ends - time.monotonic()) / 2))
        stop_runs([running.process for running in self.running], grace_s)
        for running in self.running:
            self.stopped.append(running.job)
            self.log(f"stopped {running.job.name} seed {running.job.seed} {why}, {running.rows} epochs done")
        self.running = []


def run(
    jobs: list[Job],
    budget_s: float,
    *,
    parallel: int | None = None,
    file_parallel: int | None = None,
    calibration_from: Path | None = None,
    prior: Estimate,
    calibrate: bool = False,
    window_s: float = 20.0,
    reserve_s: float = 20.0,
    export: Path | None = None,
    started: float | None = None,
    log=print,
) -> int:
    """Run the campaign until its queue is empty, nothing more fits, or the deadline; returns the number
    of runs that failed. The budget counts from `started` (`time.monotonic()`; default: now)."""
    if not jobs:
        raise ConfigError("the campaign has no runs")
    device = device_name()
    campaign = Campaign(
        jobs,
        budget_s,
        parallel,
        prior,
        device=device,
        calibrate=calibrate,
        window_s=window_s,
        reserve_s=reserve_s,
        log=log,
        file_parallel=file_parallel,
        calibration_from=calibration_from,
        started=started,
    )
    log(
        f"campaign: {len(jobs)} runs, {len(jobs) - len(campaign.queue)} finished already, "
        f"{len(campaign.queue)} to run; {budget_s:.0f} s on {device}, "
        + (f"calibrating {campaign.levels} at once" if campaign.levels else f"{campaign.capacity} at once")
    )
    env = dict(os.environ)
    env.setdefault(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(LEVELS[-1], campaign.capacity)))
    )
    interrupted = None
    try:
        with interrupts.interrupted_by_signals():
            _drive(campaign, env)
    except KeyboardInterrupt as interrupt:  # SIGTERM (a window's `timeout`), SIGHUP or Ctrl-C
        interrupted = interrupt
        campaign.stop_all(f"on {str(interrupt) or 'an interrupt'}")
    finally:
        campaign.stop_all()
    if campaign.levels and campaign.rates:  # the queue ran out while calibrating: keep what was measured
        campaign.settle(max(campaign.rates, key=campaign.rates.get))
    left = [job for job in campaign.queue if status(job) != "done"]
    for job in left:
        log(f"not started: {job.name} seed {job.seed}, expected to take {campaign.seconds(job):.0f} s")
    write_log(campaign, budget_s, left, campaign.estimate())
    if export is not None:
        copy_records(jobs, campaign.out, Path(export), log)
        log(f"records of every run written to {export}")
    if interrupted is not None:
        raise interrupted
    return len(campaign.failed)


def _drive(campaign: Campaign, env: dict) -> None:
    """Poll, calibrate and start runs until the deadline or until nothing runs."""
    while True:
        now = time.monotonic()
        campaign.poll(now)
        if now >= campaign.deadline:
            campaign.stop_all()
            return
        campaign.calibrate_step(now)
        campaign.start_what_fits(env, now)
        if not campaign.running:
            return
        time.sleep(0.5)


def _borrowed(calibration: dict, source: Path, device: str) -> str:
    where = Path(source) / CALIBRATION
    if not calibration:
        return f"calibration: none for {device} in {where}; the file's or the given number at once"
    return f"calibration: {device}'s from {where} ({calibration['parallel']} at once fastest there)"


def device_name() -> str:
    """What the runs train on (calibration is per device): the first CUDA device's name, else "cpu"."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def read_calibration(out: Path) -> dict:
    path = Path(out) / CALIBRATION
    return json.loads(path.read_text()) if path.is_file() else {}


def write_calibration(out: Path, device: str, best: int, rates: dict[int, float], startup_s: float) -> None:
    record = read_calibration(out)
    record[device] = {
        "parallel": best,
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        "levels": {
            str(n): {
                "epochs_per_s": round(rate, 3),
                "epoch_s": round(n / rate, 3) if rate else None,
                "startup_s": round(startup_s, 1),
            }
            for n, rate in sorted(rates.items())
        },
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    rundir.write_atomic(Path(out) / CALIBRATION, (json.dumps(record, indent=2) + "\n").encode())


def write_log(campaign: Campaign, budget_s: float, left: list[Job], estimate: Estimate) -> None:
    """One line in OUT/campaign.jsonl: what this campaign did, and the epoch times it saw."""

    def names(jobs):
        return [f"{job.name}/seed{job.seed}" for job in jobs]

    line = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": campaign.device,
        "budget_s": budget_s,
        "at_once": campaign.capacity,
        "calibration_rates": {str(n): round(r, 3) for n, r in campaign.rates.items()},
        "startup_s": round(estimate.startup_s, 1),
        "epoch_s": round(estimate.epoch_s, 3),
        "finished": names(campaign.finished),
        "failed": names(campaign.failed),
        "stopped": names(campaign.stopped),
        "not_started": names(left),
    }
    path = campaign.out / CAMPAIGN_LOG
    campaign.out.mkdir(parents=True, exist_ok=True)
    previous = path.read_bytes() if path.is_file() else b""
    rundir.write_atomic(path, previous + (json.dumps(line) + "\n").encode())


def copy_records(jobs: list[Job], source: Path, dest: Path, log=print) -> None:
    """Each run's records from `source` (an out folder) into `dest`: a finished run's config, metrics and
    summary (and judgement); an unfinished one's config, metrics and checkpoints/last.pt, to resume from.
    A finished run's last.pt in `dest` is removed (the records supersede it); a run `dest` holds further
    along, or finished, is left as it is; a run of another configuration is refused before anything is
    copied. The campaign's log and calibration are merged."""
    pairs = [
        (Path(source) / job.name / f"seed{job.seed}", Path(dest) / job.name / f"seed{job.seed}")
        for job in jobs
    ]
    pairs = [(src, dst) for src, dst in pairs if (src / rundir.CONFIG).is_file()]
    for src, dst in pairs:
        if (dst / rundir.CONFIG).is_file():
            changed = run_changes(
                from_dict(load_yaml(dst / rundir.CONFIG)), from_dict(load_yaml(src / rundir.CONFIG)), dst
            )
            if changed:
                raise ConfigError(
                    f"{dst} holds a run of another configuration than {src} (differs in "
                    f"{', '.join(changed)}); move one of them away"
                )
    for src, dst in pairs:
        if (dst / rundir.SUMMARY).is_file() or len(rundir.read_metrics(dst)) > len(rundir.read_metrics(src)):
            continue
        finished = (src / rundir.SUMMARY).is_file()
        for name in RECORDS if finished else (rundir.CONFIG, rundir.RESOLVED, rundir.METRICS, LAST):
            if (src / name).is_file():
                (dst / name).parent.mkdir(parents=True, exist_ok=True)
                rundir.write_atomic(dst / name, (src / name).read_bytes())
        if finished and (dst / LAST).is_file():
            (dst / LAST).unlink()
            log(f"removed {dst / LAST}: the run has finished")
    _merge_campaign_files(Path(source), Path(dest))


def _merge_campaign_files(source: Path, dest: Path) -> None:
    """The calibration (the source's devices replace the destination's) and the log (lines appended)."""
    dest.mkdir(parents=True, exist_ok=True)
    if (source / CALIBRATION).is_file():
        merged = {**read_calibration(dest), **read_calibration(source)}
        rundir.write_atomic(dest / CALIBRATION, (json.dumps(merged, indent=2) + "\n").encode())
    if (source / CAMPAIGN_LOG).is_file():
        have = (dest / CAMPAIGN_LOG).read_text().splitlines() if (dest / CAMPAIGN_LOG).is_file() else []
        new = [line for line in (source / CAMPAIGN_LOG).read_text().splitlines() if line not in have]
        rundir.write_atomic(dest / CAMPAIGN_LOG, "".join(line + "\n" for line in have + new).encode())


def plan(
    jobs: list[Job],
    budget_s: float,
    *,
    parallel: int | None,
    prior: Estimate,
    reserve_s: float,
    file_parallel: int | None = None,
    calibration_from: Path | None = None,
    log=print,
):
    """What `run` would do with these estimates, simulated: each unfinished run in order, started on the
    first place that frees up if it is expected to end before the deadline."""
    campaign = Campaign(
        jobs,
        budget_s,
        parallel,
        prior,
        device=device_name(),
        calibrate=False,
        window_s=0,
        reserve_s=reserve_s,
        log=log,
        file_parallel=file_parallel,
        calibration_from=calibration_from,
    )
    estimate = campaign.estimate()
    log(
        f"campaign plan: {len(campaign.queue)} of {len(jobs)} runs unfinished; {campaign.capacity} at "
        f"once on {campaign.device}; start-up {estimate.startup_s:.0f} s, "
        f"then {estimate.epoch_s:.2f} s an epoch"
    )
    free_at = [0.0] * campaign.capacity
    usable = budget_s - reserve_s
    for job in campaign.queue:
        seconds = campaign.seconds(job)
        place = min(range(len(free_at)), key=free_at.__getitem__)
        if free_at[place] + SAFETY * seconds <= usable:
            log(
                f"[{status(job)}] {job.name} seed {job.seed}: "
                f"at {free_at[place]:.0f} s, about {seconds:.0f} s"
            )
            free_at[place] += seconds
        else:
            log(f"[not started] {job.name} seed {job.seed}: about {seconds:.0f} s, does not fit")
