"""`gssl sweep --pack K`: the seeds of each sweep run trained K at a time as packs (gssl.packrun).

A sweep's runs that share a name share every setting but the seed, so they are what a pack holds. Each
pack is one `gssl pack` process, which the sweep starts, logs and waits on like a run's `gssl train`
process; its members' run directories are the ones the runs would have had, so skipping finished runs,
resuming and `gssl table` work as before. Runs that cannot be packed are refused before anything starts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError
from .packrun import check_packable


@dataclass
class PackJob:
    """Some seeds of one sweep run, trained as one pack; quacks like a sweep Job for the sweep's loop."""

    members: list  # gssl.sweep.Job, one per seed, all of one name

    @property
    def name(self) -> str:
        return self.members[0].name

    @property
    def seed(self) -> str:
        return "+".join(str(job.seed) for job in self.members)

    @property
    def run_dir(self) -> str:
        return ", ".join(str(job.run_dir) for job in self.members)

    @property
    def log_path(self) -> Path:
        first = self.members[0]
        return first.out / "logs" / f"{self.name}-seed{self.seed}.log"

    def command(self, mode: str) -> list[str]:
        """The `gssl pack` command line: mode new, restart (--force) or resume (with the sweep's settings of
        where things lie and how they run, as a lone run's resume: gssl.sweep.Job.machine_sets)."""
        first, cmd = self.members[0], [sys.executable, "-m", "gssl", "pack"]
        if mode == "resume":
            dirs = [str(job.run_dir) for job in self.members]
            return (
                cmd + ["--resume", *dirs, "--quiet"] + [a for s in first.machine_sets for a in ("--set", s)]
            )
        cmd += ["--preset", first.preset] if first.preset else []
        cmd += ["--config", first.config] if first.config else []
        for s in first.sets:
            cmd += ["--set", s]
        cmd += ["--seeds", *(str(job.seed) for job in self.members)]
        cmd += ["--out", *(str(job.run_dir) for job in self.members), "--quiet"]
        return cmd + (["--force"] if mode == "restart" else [])


def pack_queue(queue: list[tuple], size: int) -> list[tuple]:
    """The sweep's (job, mode) queue with the runs of one name and one mode grouped into packs of up to
    `size` seeds (new and restart together: a restart is a new run over a folder without checkpoint).
    Judgements stay single. ConfigError, naming the runs, for runs that cannot be packed."""
    groups: dict[tuple, list] = {}
    for job, mode in queue:
        key = (job.name, "judge" if mode == "judge" else "resume" if mode == "resume" else "start")
        groups.setdefault(key, []).append((job, mode))
    out = []
    for (name, kind), entries in groups.items():
        if kind == "judge":
            out += entries
            continue
        for start in range(0, len(entries), size):
            chunk = entries[start : start + size]
            jobs = [job for job, _ in chunk]
            try:
                check_packable([job.resolved() for job in jobs], [job.run_dir for job in jobs])
            except ConfigError as e:
                raise ConfigError(f"sweep run {name!r}: {e}") from None
            mode = (
                "resume"
                if kind == "resume"
                else "restart"
                if any(m == "restart" for _, m in chunk)
                else "new"
            )
            out.append((PackJob(jobs), mode))
    return out
