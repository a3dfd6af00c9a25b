"""Training a pack: K runs of one configuration that differ only in seed, in one process, as one stacked
model (gssl.packed), each member writing its own run directory exactly as its single run would.

Each member is a whole single run but for the step: its own Context (its network, built from its seed;
the data and the class loss are shared, being the same), its own Scenario (loader order, crops and flips
from its seed, pretext draws from its per-epoch generator, DRW, evaluation), its own progress and run
directory. The engine's functions write the files (config.yaml, metrics.jsonl, checkpoints, summary.json),
so `gssl table`, `gssl eval`, `gssl report` and `gssl train --resume` read a member as any run.

A member whose loss turns non-finite is reported by name with the single run's message and drops out:
its files stay at its last good checkpoint, and since no operation of the step mixes members, the others
go on unchanged. Checkpoints of one epoch are written member after member; a kill in between would leave
members at different epochs, so each member's previous last.pt is kept (PREVIOUS) until every member has
saved, and a resume rolls the members that got ahead back to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import engine, rundir, runlock
from .build import build_cls_loss, pick_device
from .config import Config, ConfigError
from .distributed import Dist
from .engine import Loop, Progress, epoch_line, epoch_row, final_summary, pretext_seed, save_epoch
from .gating import ALL_GATES, pretext_on
from .methods import registry
from .methods.base import check_step
from .methods.registry import Context, Scenario, build_data, build_model, check_shapes
from .methods.supervised.scenario import Supervised
from .optimizer import build_optimizer, set_epoch_hyperparameters
from .packed import Pack, PackedEvaluation, split_optimizer_state, stack_args, stack_optimizer_states
from .runconfig import run_changes, setting_changes
from .schedule import lr_at, weight_decay_at
from .step import Compiled, FiniteWatch, TrainingError, autocast, resolve_precision

PREVIOUS = "pack-previous.pt"  # a member's last.pt of the epoch before, while the pack saves an epoch


@dataclass
class Member:
    """One run of the pack: everything of its single run but the step."""

    ctx: Context
    scenario: Scenario
    optimizer: torch.optim.Optimizer  # over the member's own network; holds its slice of state to save
    progress: Progress
    evaluate: Callable  # its logits of a test batch, out of the pack's one forward (PackedEvaluation)
    failure: str | None = None
    resolved: dict | None = None  # resolved.json: engine.resolved_settings and the pack's size

    @property
    def name(self) -> str:
        return str(self.ctx.run_dir)


def check_packable(cfgs: list[Config], run_dirs: list[Path]) -> None:
    """Refuse, naming the fix, the runs that cannot share one pack."""
    if len(set(map(str, run_dirs))) != len(run_dirs):
        raise ConfigError("a pack's members need distinct run directories")
    first = cfgs[0]
    for cfg, run_dir in zip(cfgs[1:], run_dirs[1:]):
        changed = differences(first, cfg)
        if changed:
            raise ConfigError(
                f"{run_dirs[0]} and {run_dir} differ in {', '.join(changed)}: the runs of a pack share "
                "every setting but the seed; train them in separate packs (or --pack 1)"
            )
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ConfigError("a pack trains in one process; run it without torchrun (or --pack 1)")
    refused = unpackable(first)
    if refused:
        raise ConfigError(f"cannot pack these runs: {'; '.join(refused)}; train them one by one (--pack 1)")


def unpackable(cfg: Config) -> list[str]:
    """What in this configuration a pack cannot train (yet), each with why."""
    reasons = []
    if registry.scenario_class(cfg) is not Supervised:
        reasons.append(f"method {registry.method_of(cfg)} (packs train supervised runs only)")
    if registry.wrappers_of(cfg):
        reasons.append("adversarial training or SSP pre-training")
    if pretext_on(cfg.ssl.tasks, cfg.ssl.gate) and not ALL_GATES[cfg.ssl.gate].packable:
        reasons.append(f"ssl.gate={cfg.ssl.gate} (a gate with state across steps, or gradients in the step)")
    if cfg.precision == "fp16":
        reasons.append("precision=fp16 (one loss scale would skip every member's step when one overflows)")
    if cfg.optim.clip_grad is not None:
        reasons.append("optim.clip_grad (it would clip each stacked tensor, not each member's)")
    if cfg.tensorboard:
        reasons.append("tensorboard=true")
    return reasons


def differences(a: Config, b: Config) -> list[str]:
    """The settings in which two runs differ, the seed aside."""
    return setting_changes(a, dataclasses.replace(b, seed=a.seed))


def build_members(cfgs: list[Config], run_dirs: list[Path], quiet: bool, log=print) -> list[Context]:
    """Each member's Context as engine.build_context builds a single run's (its network from its seed),
    with one copy of the data and one class loss (the same for every member) shared by all."""
    first = cfgs[0]
    device = pick_device(first.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("highest")
    torch.manual_seed(first.seed)
    data = build_data(first)
    check_shapes(first, *data.train.images.shape[1:])
    cls_loss = build_cls_loss(first, data.counts).to(device)
    contexts = []
    for cfg, run_dir in zip(cfgs, run_dirs):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, len(data.train.classes), data.train.images.shape[1]).to(device)
        if engine.channels_last(cfg):
            model = model.to(memory_format=torch.channels_last)
        precision = resolve_precision(cfg.precision, device)
        contexts.append(
            Context(cfg, data, model, device, Dist(), precision, False, cls_loss, Path(run_dir), quiet, log)
        )
    return contexts


def train_pack(
    cfgs: list[Config],
    run_dirs: list[Path],
    *,
    resume: bool = False,
    force: bool = False,
    quiet=False,
    log=print,
) -> list[dict | None]:
    """Train (or resume) the pack; each member's summary, None for a member that failed (reported)."""
    run_dirs = [Path(d) for d in run_dirs]
    check_packable(cfgs, run_dirs)
    with contextlib.ExitStack() as claims:
        for run_dir in run_dirs:
            claims.enter_context(runlock.claim(run_dir))
            if not resume:
                rundir.check_out(run_dir, force=force)
        for cfg in cfgs:
            registry.check(cfg)
        contexts = build_members(cfgs, run_dirs, quiet, log)
        return fit_pack(contexts, resume=resume, force=force, log=log)


def fit_pack(
    contexts: list[Context], *, resume: bool = False, force: bool = False, log=print
) -> list[dict | None]:
    """engine.fit for K members at once: one stacked step, each member's own epoch rows and files."""
    cfg, device = contexts[0].cfg, contexts[0].device
    members_scenarios = [registry.build(ctx) for ctx in contexts]
    # compile=null: on CUDA only. On CPU inductor's code for the vmapped step ran 0.58x the eager step
    # (ResNet-32, K=2, benchmarks/bench_pack.py --compile 2, docs/performance.md)
    compiled = cfg.compile if cfg.compile is not None else device.type == "cuda"
    if compiled:
        torch.compiler.reset()
    pack = Pack([ctx.model for ctx in contexts], members_scenarios[0].loss)
    mode = engine.compile_mode(cfg, Dist())
    loop = Loop(
        step=Compiled(
            pack.loss, enabled=compiled, batch=members_scenarios[0].step_batch, mode=mode, members=pack.size
        ),
        evaluate=Compiled(
            pack.logits,
            enabled=compiled,
            batch=members_scenarios[0].test_loader.batch_size,
            mode=mode,
            what="evaluation",
        ),
        optimizer=build_optimizer(cfg, contexts[0].model, device, stacked=list(pack.params.values())),
        scaler=None,
        watch=FiniteWatch(device, members=pack.size),
    )
    evaluation = PackedEvaluation(loop.evaluate, pack.size)
    members = []
    for index, (ctx, scenario) in enumerate(zip(contexts, members_scenarios)):
        ctx.compiled = compiled
        own_optimizer = build_optimizer(ctx.cfg, ctx.model, device)
        members.append(Member(ctx, scenario, own_optimizer, Progress(), evaluation.member(index)))
    if resume:
        resume_members(members, pack, loop, log)
    else:
        for member in members:
            member.progress = engine.start_fresh(member.ctx, member.scenario, force)
    for member in members:
        member.resolved = engine.resolved_settings(member.ctx, mode)
        member.resolved["execution"]["pack_members"] = pack.size
        rundir.write_json(member.ctx.run_dir / rundir.RESOLVED, member.resolved)
    started = time.perf_counter()
    for epoch in range(members[0].progress.start, cfg.optim.epochs):
        run_epoch(members, pack, loop, evaluation, epoch)
    if members[0].progress.start >= cfg.optim.epochs:
        for member in members:
            member.progress.history = rundir.read_metrics(member.ctx.run_dir)
    return [finish(member, loop, pack, time.perf_counter() - started) for member in members]


def run_epoch(
    members: list[Member], pack: Pack, loop: Loop, evaluation: PackedEvaluation, epoch: int
) -> None:
    cfg = members[0].ctx.cfg
    lr = lr_at(cfg, epoch)
    set_epoch_hyperparameters(loop.optimizer, lr, weight_decay_at(cfg, epoch))
    for member in members:
        member.scenario.start_epoch(epoch)
    epoch_start = time.perf_counter()
    sums, seen, train_seconds = train_pack_epoch(members, pack, loop, epoch)
    pack.write_back()
    split_optimizer_state(loop.optimizer, [member.optimizer for member in members])
    alive = [(index, member) for index, member in enumerate(members) if member.failure is None]
    rows = {}
    evaluation.start()
    for index, member in alive:
        # eager, on the member's own network, every buffer put back: changes no training number
        diagnosed = member.scenario.diagnose(epoch) if engine.diagnosis_due(cfg, epoch) else {}
        evaluated = member.scenario.evaluate_epoch(member.evaluate)
        member_sums = {key: value[index] for key, value in sums.items()}
        rows[index] = {**epoch_row(epoch, lr, evaluated, member_sums, seen, train_seconds, 0.0), **diagnosed}
    seconds = time.perf_counter() - epoch_start
    with keep_previous([member for _, member in alive]):
        for index, member in alive:
            row = {**rows[index], "seconds": round(seconds, 3)}  # the pack's epoch: every member's time
            member.progress.history.append(row)
            if row["test_acc"] > member.progress.best:
                member.progress.best, member.progress.best_epoch = row["test_acc"], epoch
            save_epoch(member.ctx, member.scenario, member.optimizer, member.progress, epoch, None)
            done = epoch + 1 - member.progress.start
            clock = engine.run_clock(member.progress.history, cfg.optim.epochs, done)
            member.ctx.log(f"{member.name}: {epoch_line(row, cfg.optim.epochs, clock)}")


def train_pack_epoch(members: list[Member], pack: Pack, loop: Loop, epoch: int) -> tuple[dict, int, float]:
    """engine.train_epoch for the pack: each member's own batches and draws, one stacked step; the
    statistics' sums as [K] vectors."""
    ctx = members[0].ctx
    cuda = ctx.device.type == "cuda"
    generators = [
        torch.Generator(device=ctx.device).manual_seed(pretext_seed(m.ctx.cfg.seed, epoch)) for m in members
    ]
    pack.template.train()
    sums: dict[str, torch.Tensor] = {}
    seen, started = 0, time.perf_counter()
    loop.watch.reset()
    loaders = [member.scenario.batches(epoch) for member in members]
    steps = loaders[0][1]
    for step, batches in enumerate(zip(*(batches for batches, _ in loaders))):
        prepared = [
            member.scenario.prepare(x, y, generator, epoch, step)
            for member, (x, y), generator in zip(members, batches, generators)
        ]
        with autocast(ctx.device.type, ctx.precision):
            loss, stats = loop.step(*stack_args(prepared))
        if step == 0:
            check_step(members[0].scenario, prepared[0], stats, (pack.size,))
        loop.watch.update(step, stats["loss"], stats)
        if not cuda:
            report_non_finite(members, loop.watch, epoch, steps)
        engine.optimizer_step(loop, loss)
        for member in members:
            member.scenario.after_step()
        batch = batches[0][1].shape[0]
        for key, value in stats.items():
            value = value.detach().float()
            sums[key] = sums.get(key, 0) + (value if key.endswith("correct") else value * batch)
        seen += batch
    report_non_finite(members, loop.watch, epoch, steps)
    if cuda:
        torch.cuda.synchronize(ctx.device)
    return sums, seen, time.perf_counter() - started


def report_non_finite(members: list[Member], watch: FiniteWatch, epoch: int, steps: int) -> None:
    """Members whose loss turned non-finite this epoch: the single run's message, by name, once each."""
    for index, member in enumerate(members):
        if member.failure is not None:
            continue
        one = _OneMember(watch, index)
        try:
            engine._stop_if_non_finite(one, epoch, member.ctx.cfg.optim.epochs, steps, member.ctx.run_dir)
        except TrainingError as e:
            member.failure = str(e)
            member.ctx.log(f"{member.name}: training stopped: {e}")


class _OneMember:
    """One member's view of the pack's watch, as engine._stop_if_non_finite reads a single run's."""

    def __init__(self, watch: FiniteWatch, index: int):
        self.watch, self.index = watch, index

    def first_bad(self):
        return self.watch.first_bad(self.index)


class keep_previous:
    """While the members save one epoch, each one's last.pt of the epoch before stays as PREVIOUS (a hard
    link: no copy), so a kill between two members' saves can be rolled back (resume_members)."""

    def __init__(self, members: list[Member]):
        self.paths = [member.ctx.run_dir / rundir.CKPT_DIR for member in members]

    def __enter__(self):
        for folder in self.paths:
            (folder / PREVIOUS).unlink(missing_ok=True)
            if (folder / "last.pt").is_file():
                os.link(folder / "last.pt", folder / PREVIOUS)

    def __exit__(self, *exc):
        if exc[0] is None:
            for folder in self.paths:
                (folder / PREVIOUS).unlink(missing_ok=True)


def resume_members(members: list[Member], pack: Pack, loop: Loop, log) -> None:
    """Every member from its last checkpoint, at one epoch (those a kill left ahead rolled back), then
    the members' networks and optimiser states stacked into the pack."""
    roll_back_to_common_epoch([member.ctx.run_dir for member in members])
    for member in members:
        member.progress = engine.resume_from_checkpoint(member.ctx, member.scenario, member.optimizer, log)
    starts = {member.progress.start for member in members}
    if len(starts) > 1:
        raise rundir.RunDirError(
            f"the pack's members stopped at different epochs ({sorted(starts)}); resume them one by one "
            "with `gssl train --resume RUN_DIR`"
        )
    pack.read_in()
    stack_optimizer_states(loop.optimizer, [member.optimizer for member in members])


def roll_back_to_common_epoch(run_dirs: list[Path]) -> None:
    """Members whose last.pt is ahead of the others' because a kill interrupted the pack's saves go back
    to their PREVIOUS checkpoint; the PREVIOUS files are then removed."""
    folders = [Path(run_dir) / rundir.CKPT_DIR for run_dir in run_dirs]
    epochs = [int(rundir.load_checkpoint(folder / "last.pt")["epoch"]) for folder in folders]
    for folder, epoch in zip(folders, epochs):
        if epoch > min(epochs) and (folder / PREVIOUS).is_file():
            os.replace(folder / PREVIOUS, folder / "last.pt")
        (folder / PREVIOUS).unlink(missing_ok=True)


def finish(member: Member, loop: Loop, pack: Pack, seconds: float) -> dict | None:
    """The member's summary.json (none for a member that failed), as engine.fit ends a single run."""
    if member.failure is not None:
        return None
    summary = final_summary(member.ctx, member.scenario, loop, member.progress, seconds)
    summary["pack_members"] = pack.size  # images_per_second is this member's; the pack's is K times it
    summary["resolved"] = member.resolved
    with engine._write_failure_stops(member.ctx.run_dir, member.ctx.cfg.optim.epochs):
        rundir.write_json(member.ctx.run_dir / rundir.SUMMARY, summary)
    return summary


def pack_configs(preset: str | None, config: str | None, sets: list[str], seeds: list[int]) -> list[Config]:
    """One configuration per seed, as `gssl train --preset/--config --set ... --set seed=S` resolves it."""
    from .config import load_yaml, parse_set
    from .presets import resolve

    if not preset and not config:
        raise ConfigError("name a --preset (see `gssl presets`) or a --config FILE.yaml")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {seeds}: give each member of the pack its own seed")
    return [
        resolve(
            preset, load_yaml(config) if config else None, [parse_set(s) for s in [*sets, f"seed={seed}"]]
        )
        for seed in seeds
    ]


def saved_configs(run_dirs: list[Path], sets: list[str]) -> list[Config]:
    """The members' own config.yaml, for a resume; `sets` may move the data and change how the pack
    executes (gssl.runconfig.run_changes, as for `gssl train --resume`), nothing that makes another run."""
    from .config import load_yaml, parse_set
    from .presets import resolve
    from .runconfig import from_dict

    cfgs = []
    for run_dir in run_dirs:
        path = Path(run_dir) / rundir.CONFIG
        if not path.is_file():
            raise rundir.RunDirError(
                f"cannot resume {run_dir}: no {rundir.CONFIG} there; name the pack's run folders"
            )
        saved = from_dict(load_yaml(path))
        asked = resolve(None, saved.to_dict(), [parse_set(s) for s in sets])
        changed = run_changes(saved, asked, Path(run_dir))
        if changed:
            raise ConfigError(
                f"--set changes {', '.join(changed)} of {run_dir}; a pack resumes as it was saved "
                "(only where the data lies and how it executes may change, such as device or compile)"
            )
        cfgs.append(asked)
    return cfgs
