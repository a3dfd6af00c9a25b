"""`gssl sweep`: a grid of runs (presets or configs x seeds x overrides) in one folder.

Each run is an ordinary `gssl train` process writing OUT/<name>/seed<k>, so a sweep is no more
than the commands it prints: a finished run (summary.json, same configuration) is skipped, an
interrupted one (last.pt) is resumed, one that died before its first checkpoint starts again.
`--parallel N` keeps N processes going, each with cores/N threads on CPU. Every run logs to
OUT/logs/<name>-seed<k>.log (its first lines, one line per epoch, the summary), named on the console when
the run starts. `--judge` follows each run with `gssl eval RUN --protocol final --test-limit
all` in the same slot (JUDGEMENT: the whole test split, for runs that monitored a subset), and judges
finished runs that lack it, so `gssl table --summary eval-last-final-testall.json` has every run.

A sweep file (YAML):

    out: runs/cifar10-lt-cpu
    seeds: [0, 1, 2]
    set: {optim.epochs: 6, data.test_limit: 2000}      # for every run
    grid: {ssl.gate: [reference, learned]}             # every run x every combination (optional)
    parallel: 4                                        # runs at a time unless --parallel says (optional)
    runs:
      - {name: ldam-drw, preset: cifar10-lt0.01-ldam-drw}
      - {name: gated-triple-learned, preset: cifar10-lt0.01-gated-triple, set: {ssl.gate: learned}}
      - {name: erm, preset: cifar10-lt0.01-erm, priority: 2}   # after every seed of priority 1 (default)

Runs are ordered by priority, then seed, then their place in the file.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from . import interrupts, rundir, runlock
from .config import LOCATION_KEYS, MACHINE_KEYS, Config, ConfigError, load_yaml, parse_set
from .presets import resolve
from .runconfig import from_dict, run_changes

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
FILE_KEYS = {"out", "seeds", "set", "runs", "grid", "parallel"}
JUDGEMENT = "eval-last-final-testall.json"  # what `gssl eval RUN --protocol final --test-limit all` writes


@dataclass
class Job:
    name: str
    seed: int
    preset: str | None
    config: str | None  # a YAML config file instead of (or on top of) a preset
    sets: list[str] = field(default_factory=list)  # "key=value", the sweep's then the run's own
    out: Path = Path(".")
    priority: int = 1  # lower first: a campaign cut short by its budget has finished the rows that matter

    @property
    def run_dir(self) -> Path:
        return self.out / self.name / f"seed{self.seed}"

    @property
    def log_path(self) -> Path:
        return self.out / "logs" / f"{self.name}-seed{self.seed}.log"

    def resolved(self) -> Config:
        return resolve(
            self.preset,
            load_yaml(self.config) if self.config else None,
            [parse_set(s) for s in self.sets + [f"seed={self.seed}"]],
        )

    def command(self, mode: str) -> list[str]:
        """The `gssl train` command line for this run: mode new, resume or restart. Not --quiet: the run's
        log gets its first lines and one per epoch (no progress bars: the log is not a terminal)."""
        cmd = [sys.executable, "-m", "gssl", "train"]
        if mode == "resume":
            return (
                cmd + ["--resume", str(self.run_dir)] + [a for s in self.machine_sets for a in ("--set", s)]
            )
        cmd += ["--preset", self.preset] if self.preset else []
        cmd += ["--config", self.config] if self.config else []
        for s in self.sets + [f"seed={self.seed}"]:
            cmd += ["--set", s]
        return cmd + ["--out", str(self.run_dir)] + (["--force"] if mode == "restart" else [])

    @property
    def location_sets(self) -> list[str]:
        """The sweep's 'key=value' for where things lie (LOCATION_KEYS): a resumed or judged run takes
        them from the sweep, not from its record, since the data may lie elsewhere than when it started."""
        return [s for s in self.sets if s.split("=", 1)[0].strip() in LOCATION_KEYS]

    @property
    def machine_sets(self) -> list[str]:
        """The sweep's 'key=value' for where things lie and how they run (a resumed run continues
        compiled, or in fp32, as the sweep asks now; gssl.runconfig.run_changes)."""
        return [s for s in self.sets if s.split("=", 1)[0].strip() in LOCATION_KEYS | MACHINE_KEYS]

    def judge_command(self) -> list[str]:
        """`gssl eval` of the finished run's last checkpoint on the whole test split (writes JUDGEMENT)."""
        cmd = [sys.executable, "-m", "gssl", "eval", str(self.run_dir), "--protocol", "final"]
        roots = [
            s.split("=", 1)[1].strip()
            for s in self.location_sets
            if s.split("=", 1)[0].strip() == "data.root"
        ]
        return cmd + ["--test-limit", "all"] + (["--data-root", roots[-1]] if roots else [])


def _sets(values, where: str) -> list[str]:
    """A mapping {key: value} or a list of 'key=value' strings -> 'key=value' strings."""
    if values is None:
        return []
    if isinstance(values, dict):
        import yaml

        return [
            f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in values.items()
        ]
    if isinstance(values, list) and all(isinstance(v, str) and "=" in v for v in values):
        return list(values)
    raise ConfigError(f"{where}: expected a mapping of key: value or a list of 'key=value', got {values!r}")


def _grid(grid, where: str) -> list[tuple[str, list[str]]]:
    """{key: [values]} -> [(name suffix, ['key=value', ...])] over every combination ([('', [])] if none)."""
    if not grid:
        return [("", [])]
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(
            f"{where}: grid must map keys to non-empty lists of values, "
            "e.g. {ssl.gate: [reference, learned]}"
        )
    out = []
    for combo in itertools.product(*grid.values()):
        pairs = dict(zip(grid, combo))
        suffix = "+".join(
            f"{k.split('.')[-1]}-{re.sub(r'[^A-Za-z0-9._-]', '', str(v))}" for k, v in pairs.items()
        )
        out.append(("+" + suffix, _sets(pairs, where)))
    return out


def parse_grid(items: list[str]) -> dict:
    """--grid 'ssl.gate=[reference,learned]' (repeatable) -> {'ssl.gate': ['reference', 'learned']}."""
    import yaml

    grid = {}
    for item in items:
        key, _, text = item.partition("=")
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError:
            values = None
        if not key or not isinstance(values, list) or not values:
            raise ConfigError(
                f"--grid {item!r}: expected KEY=[V1,V2,...], e.g. --grid 'ssl.gate=[reference,learned]'"
            )
        grid[key] = values
    return grid


def only_runs(jobs: list[Job], names: list[str] | None, where: str) -> list[Job]:
    """The jobs of the named runs (rows), in the sweep's own order; None: all of them. A name the sweep
    does not have is refused with the names it has."""
    if names is None:
        return jobs
    known = list(dict.fromkeys(job.name for job in jobs))
    unknown = [name for name in names if name not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ConfigError(
            f"--runs: {where} has no run named {unknown[0]!r}{hint} Its runs: {', '.join(known)}"
        )
    return [job for job in jobs if job.name in names]


def jobs_from_file(
    path: str | Path,
    out: str | None = None,
    seeds: list[int] | None = None,
    sets: list[str] = (),
    grid: dict | None = None,
) -> list[Job]:
    spec = load_yaml(
        path, "sweep file", "name an existing sweep file (those of this checkout: configs/sweeps/)"
    )
    unknown = set(spec) - FILE_KEYS
    if unknown:
        raise ConfigError(
            f"sweep file {path}: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(FILE_KEYS))}"
        )
    runs = spec.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ConfigError(
            f"sweep file {path}: 'runs' must be a non-empty list of {{name, preset|config, set}}"
        )
    out_dir = out or spec.get("out")
    if not out_dir:
        raise ConfigError(f"sweep file {path}: no 'out' folder; add `out: runs/NAME` or pass --out")
    seeds = seeds if seeds is not None else spec.get("seeds", [0])
    common = _sets(spec.get("set"), f"sweep file {path}: set") + list(sets)
    protos = []
    for i, r in enumerate(runs):
        where = f"sweep file {path}: runs[{i}]"
        if not isinstance(r, dict) or not (r.get("preset") or r.get("config")):
            raise ConfigError(
                f"{where}: each run needs a preset or a config, e.g. {{name: a, preset: quickstart}}"
            )
        bad = set(r) - {"name", "preset", "config", "set", "priority"}
        if bad:
            raise ConfigError(
                f"{where}: unknown keys {sorted(bad)}; allowed: name, preset, config, set, priority"
            )
        priority = r.get("priority", 1)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ConfigError(f"{where}: priority must be an integer (1 runs first), got {priority!r}")
        name = str(r.get("name") or r.get("preset") or Path(r["config"]).stem)
        for suffix, cell in _grid({**(spec.get("grid") or {}), **(grid or {})}, f"sweep file {path}: grid"):
            sets_here = common + _sets(r.get("set"), where) + cell
            protos.append((priority, name + suffix, r.get("preset"), r.get("config"), sets_here))
    # seed-major within a priority: every run's first seed before any second one, so a sweep cut short
    # still compares
    jobs = [
        Job(name, seed, preset, config, list(sets_here), Path(out_dir), priority)
        for seed in _seeds(seeds, f"sweep file {path}")
        for priority, name, preset, config, sets_here in protos
    ]
    return check_jobs(sorted(jobs, key=lambda job: job.priority))  # sorted() is stable


def file_parallel(path: str | Path) -> int | None:
    """The sweep file's `parallel` (runs at a time), or None where it names none."""
    parallel = load_yaml(path).get("parallel")
    if parallel is not None and (not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1):
        raise ConfigError(f"sweep file {path}: parallel must be an integer >= 1, got {parallel!r}")
    return parallel


def jobs_from_presets(
    presets: list[str], out: str, seeds: list[int], sets: list[str] = (), grid: dict | None = None
) -> list[Job]:
    cells = _grid(grid, "--grid")
    return check_jobs(
        [
            Job(p + suffix, s, p, None, list(sets) + cell, Path(out))
            for s in _seeds(seeds, "--seeds")
            for p in presets
            for suffix, cell in cells
        ]
    )


def _seeds(seeds, where: str) -> list[int]:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"{where}: seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    return seeds


def check_jobs(jobs: list[Job]) -> list[Job]:
    """Every job's configuration resolves (bad keys fail now, not an hour in) and names are unique."""
    seen = set()
    for j in jobs:
        if not _NAME.match(j.name):
            raise ConfigError(f"sweep run name {j.name!r}: use letters, digits, '.', '_', '+' and '-' only")
        if (j.name, j.seed) in seen:
            raise ConfigError(
                f"sweep: run {j.name!r} seed {j.seed} appears twice; give the runs distinct names"
            )
        seen.add((j.name, j.seed))
        try:
            j.resolved()
        except ConfigError as e:
            raise ConfigError(f"sweep run {j.name!r} seed {j.seed}: {e}") from None
    return jobs


def status(job: Job) -> str:
    """'done' (skip), 'resume', 'restart' (started, no checkpoint) or 'new'; ConfigError if the folder
    holds a run of another configuration (a sweep never overwrites a different run)."""
    run_dir = job.run_dir
    if not run_dir.exists() or rundir.holds_nothing(run_dir):
        return "new"
    cfg_path = run_dir / rundir.CONFIG
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir} exists but is not a gssl run; move it away or choose another --out")
    # where the data lies is the machine's business: a record made from /work/shared/data is the same run
    # when a fresh checkout elsewhere points data.root at its own copy
    changed = run_changes(from_dict(load_yaml(cfg_path)), job.resolved(), run_dir)
    if changed:
        raise ConfigError(
            f"{run_dir} holds a run with another configuration (differs in {', '.join(changed)}); "
            "move it away, or use another --out"
        )
    if (run_dir / rundir.SUMMARY).is_file():
        return "done"
    return "resume" if (run_dir / rundir.CKPT_DIR / "last.pt").is_file() else "restart"


def trained_elsewhere(job) -> str | None:
    """Who trains the run (or a member of the pack) now, if another process does: it is left to them."""
    holders = (runlock.holder(member.run_dir) for member in _members(job))
    return next((who for who in holders if who is not None), None)


def skip_line(job, who: str) -> str:
    return f"skipped {job.name} seed {job.seed}: being trained by another process ({who})"


def _progress(job: Job, mode: str) -> str:
    """A resumed run's label says how far it got, and a run that another process trains says so: a dry
    run then shows where a long grid stands."""
    who = trained_elsewhere(job) if mode != "judge" else None
    if who is not None:
        return f"being trained by another process: {who}"
    if mode != "resume" or not isinstance(job, Job):
        return mode
    return rundir.progress(job.run_dir, job.resolved().optim.epochs)


class Slot(NamedTuple):
    """A process the sweep is waiting on: a run's training or its judgement (mode 'judge')."""

    job: Job
    process: subprocess.Popen
    started: float
    gpu: str | None
    mode: str


def run(
    jobs: list[Job],
    parallel: int = 1,
    dry_run: bool = False,
    log=print,
    gpus: list[str] | None = None,
    judge: bool = False,
    pack: int = 1,
) -> int:
    """Run what is left of the sweep; returns the number of runs that failed. With `gpus`, each run
    gets one of them to itself (CUDA_VISIBLE_DEVICES), as many at a time as there are GPUs unless
    `parallel` says more (several small runs per GPU). With `judge`, each run is judged on the whole
    test split once it finishes, and so is every finished run without JUDGEMENT. With `pack` > 1, the
    seeds of each run train up to `pack` at a time as one packed model (gssl.packsweep)."""
    if gpus:
        parallel = max(parallel, len(gpus))
    plan = [(job, _judged(job, status(job), judge)) for job in jobs]
    queue = [(job, mode) for job, mode in plan if mode != "done"]
    if pack > 1:
        from .packsweep import pack_queue

        queue = pack_queue(queue, pack)
    log(
        f"sweep: {len(jobs)} runs, {len(jobs) - len(queue)} finished already, {len(queue)} to run "
        f"({parallel} at a time)"
    )
    if dry_run:
        for job, mode in queue:
            log(f"[{_progress(job, mode)}] gssl " + shlex.join(_command(job, mode)[3:]))
            for member in _members(job) if judge and mode != "judge" else []:
                log("[judge] gssl " + shlex.join(member.judge_command()[3:]))
        return 0
    env = dict(os.environ)
    if parallel > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    running: list[Slot] = []
    try:
        with interrupts.interrupted_by_signals():
            failures, skipped = _run_queue(queue, running, parallel, env, gpus, judge, log)
    except KeyboardInterrupt:
        stop_runs([slot.process for slot in running])
        raise
    if skipped:
        log(f"sweep: {skipped} run(s) left to the processes training them; run the sweep again to see them")
    return failures


def _run_queue(queue: list, running: list[Slot], parallel: int, env: dict, gpus, judge: bool, log):
    """Start the queue's runs `parallel` at a time until all have ended; `running` is the caller's, so that
    an interrupt can stop what runs. Returns (failures, runs left to other processes)."""
    failures = skipped = 0
    while queue or running:
        while queue and len(running) < parallel:
            job, planned = queue.pop(0)
            mode, why_not = _mode_now(job, planned, judge)
            if why_not is None:
                with interrupts.deferred():  # a stop now still finds the run in `running`
                    running.append(start(job, mode, env, gpus, [slot.gpu for slot in running], log))
                continue
            log(why_not)
            skipped += mode == "elsewhere"
            failures += mode == "failed"
        time.sleep(0.2)
        for slot in [slot for slot in running if slot.process.poll() is not None]:
            running.remove(slot)
            failures += _report(slot, log)
            if judge and slot.mode != "judge" and slot.process.returncode == 0:
                queue[0:0] = [(member, "judge") for member in _members(slot.job)]
    return failures, skipped


def _mode_now(job, planned: str, judge: bool) -> tuple[str, str | None]:
    """(mode, None) to start the run as its folder says now, not as it said when the sweep began (another
    sweep of the same file may have started, interrupted or finished it since; a pack keeps its plan),
    or (why, a line saying so) not to: 'elsewhere' (another process trains it), 'done' or 'failed'."""
    if planned == "judge":
        return planned, None
    who = trained_elsewhere(job)
    if who is not None:  # two sweeps over one file share its runs out instead of colliding
        return "elsewhere", skip_line(job, who)
    if not isinstance(job, Job):
        return planned, None
    try:
        mode = _judged(job, status(job), judge)
    except ConfigError as e:
        return "failed", f"FAILED {job.name} seed {job.seed}: {e}"
    if mode == "done":
        return mode, f"skipped {job.name} seed {job.seed}: another process finished it meanwhile"
    return mode, None


def start(job: Job, mode: str, env: dict, gpus: list[str] | None, busy: list[str | None], log) -> Slot:
    """Start a run (or its judgement), logging to its log file; with `gpus`, on the least busy one. In a
    session of its own, so that stopping it (gssl.campaign) reaches its compile workers too."""
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    gpu, where = None, ""
    if gpus:
        gpu = min(gpus, key=lambda name: (busy.count(name), gpus.index(name)))
        env, where = {**env, "CUDA_VISIBLE_DEVICES": gpu}, f" on GPU {gpu}"
    with open(job.log_path, "ab") as log_file:
        process = subprocess.Popen(
            _command(job, mode), stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    log(f"started {job.name} seed {job.seed} ({mode}){where} -> {job.run_dir}, log {job.log_path}")
    return Slot(job, process, time.perf_counter(), gpu, mode)


def stop_runs(processes: list[subprocess.Popen], grace_s: float = 15.0) -> None:
    """SIGTERM to every run's process group (its compile workers too) at once, SIGKILL to those still
    there `grace_s` later: one shared wait, so stopping eight runs takes no longer than stopping one. A
    run writes its checkpoint and metrics atomically, so a stop at any moment leaves the last epoch's."""
    alive = [process for process in processes if process.poll() is None]
    for process in alive:
        _signal_group(process, signal.SIGTERM)
    until = time.monotonic() + grace_s
    for process in alive:
        try:
            process.wait(timeout=max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:  # it ended on its own meanwhile
        pass


def _report(slot: Slot, log) -> int:
    """Log how a finished process ended; 1 if it failed, else 0."""
    job, seconds, judging = slot.job, time.perf_counter() - slot.started, slot.mode == "judge"
    if slot.process.returncode == 0:
        log(f"{'judged' if judging else 'finished'} {job.name} seed {job.seed} in {seconds:.0f} s")
        return 0
    log(
        f"FAILED {'judging ' if judging else ''}{job.name} seed {job.seed} (exit {slot.process.returncode}); "
        f"see {job.log_path}"
    )
    return 1


def _judged(job: Job, mode: str, judge: bool) -> str:
    """A finished run's mode under --judge: 'judge' while it lacks JUDGEMENT. ConfigError if its last
    checkpoint is gone (checkpoints are not committed, so a record from another checkout has none)."""
    if not judge or mode != "done" or (job.run_dir / JUDGEMENT).is_file():
        return mode
    if not (job.run_dir / rundir.CKPT_DIR / "last.pt").is_file():
        raise ConfigError(
            f"--judge: {job.run_dir} finished, but without {JUDGEMENT} and without "
            f"{rundir.CKPT_DIR}/last.pt to judge; run it again in another --out, or drop --judge"
        )
    return "judge"


def _members(job) -> list[Job]:
    """The runs a queue entry trains: itself, or a pack's members (gssl.packsweep.PackJob)."""
    return getattr(job, "members", [job])


def _command(job: Job, mode: str) -> list[str]:
    return job.judge_command() if mode == "judge" else job.command(mode)
