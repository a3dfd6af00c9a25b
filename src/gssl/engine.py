"""The training loop: infrastructure only. Everything particular to a way of training (its batches, the
random preparation of a batch, its loss, its evaluation) is a Scenario (gssl.methods); `fit` runs any
of them: learning rate, precision, compilation, DDP, metric sums, the non-finite watch, checkpoints,
logging.

Determinism: the model is initialised from the seed, and every epoch's randomness (sample order,
crop, flip, pretext parameters) is drawn from generators seeded by (seed, epoch) alone. A run
resumed from the checkpoint after epoch k therefore replays epochs k+1.. exactly as an
uninterrupted run would, bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__, code_revision, distributed, metrics, rundir, runlock
from .build import build_cls_loss, pick_device
from .config import Config, ConfigError
from .methods import registry
from .methods.base import check_step
from .methods.registry import Context, Scenario, build_data, build_model, check_shapes
from .optimizer import build_optimizer, clip_each_gradient, set_epoch_hyperparameters
from .runconfig import to_yaml
from .schedule import describe, lr_at, resolved_schedule, scaling_notice, weight_decay_at
from .step import Compiled, FiniteWatch, TrainingError, autocast, resolve_precision

__all__ = ["TrainingError", "fit", "lr_at", "train"]


def pretext_seed(seed: int, epoch: int) -> int:
    """The pretext parameters' stream for one epoch; unlike gssl.data.epoch_seed (the loader's), so the
    quadrant and rotation draws are not the crop and flip draws over again."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


# On CPU, compile=null compiles when the run sees at least this many training images: compiling the step
# and the evaluation takes about 35 s on 2 idle cores, and the compiled ResNet-32 step is 1.11-1.14x the
# channels_last eager one (docs/performance.md), so it repays itself after roughly 220,000 images; this
# leaves a margin, and keeps the quickstart eager.
CPU_COMPILE_MIN_IMAGES = 300_000


def use_compile(cfg: Config, device: torch.device, images_per_epoch: int) -> bool:
    """`compile`, or when null: always on CUDA; on CPU when the run is long enough to repay compiling."""
    if cfg.compile is not None:
        return cfg.compile
    if device.type == "cuda":
        return True
    return cfg.optim.epochs * images_per_epoch >= CPU_COMPILE_MIN_IMAGES


def compile_mode(cfg: Config, dist: distributed.Dist) -> str:
    """Under DDP, no CUDA graphs: DDP's bucketed all-reduce splits the compiled graph, and batch-norm
    buffer updates ("mutated inputs") make inductor skip CUDA graphs anyway (docs/performance.md)."""
    if dist.enabled and cfg.compile_mode == "reduce-overhead":
        return "default"
    if dist.enabled and cfg.compile_mode == "max-autotune":
        return "max-autotune-no-cudagraphs"
    return cfg.compile_mode


def versions() -> dict:
    return {
        "gssl": __version__,
        "revision": code_revision(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def train(
    cfg: Config, run_dir: Path, *, resume: bool = False, force: bool = False, quiet: bool = False, log=print
) -> dict:
    """Train (resume=False: a fresh run in run_dir, replacing an earlier one only if force) or continue
    run_dir from its last checkpoint. Errors before the first epoch are ConfigError, DataError or
    RunDirError and change nothing on disk; errors once training runs are TrainingError. Under
    torchrun every rank calls this; rank 0 alone writes."""
    dist, device_name = distributed.setup(cfg.device, cfg.distributed.timeout_s)
    run_dir = Path(run_dir)
    try:
        # rank 0 alone writes, so it alone holds the run's lock; torchrun stops the others if it cannot
        with runlock.claim(run_dir) if dist.main else contextlib.nullcontext():
            if not resume:
                rundir.check_out(run_dir, force=force)
            distributed.barrier(dist)  # every rank has looked before rank 0 changes anything
            registry.check(cfg)
            ctx = build_context(cfg, run_dir, dist, device_name, quiet or not dist.main, log)
            return fit(ctx, registry.build(ctx), resume=resume, force=force, log=log)
    finally:
        distributed.teardown(dist)


def plan(cfg: Config, run_dir: Path, *, resume: bool = False, force: bool = False, log=print) -> dict:
    """`gssl train --dry-run`: every check and decision of `train` up to the first step (the run directory
    would be accepted, the data loads, the model fits it, device, precision and compilation as they would
    be chosen), printed; nothing is written."""
    dist, device_name = distributed.setup(cfg.device, cfg.distributed.timeout_s)
    try:
        runlock.refuse_if_held(Path(run_dir))
        if not resume:
            rundir.check_out(Path(run_dir), force=force)
        registry.check(cfg)
        ctx = build_context(cfg, Path(run_dir), dist, device_name, not dist.main, log)
        ctx.compiled = use_compile(cfg, ctx.device, registry.build(ctx).images_per_epoch)
        return resolved_settings(ctx, compile_mode(cfg, dist))
    finally:
        distributed.teardown(dist)


def build_context(
    cfg: Config, run_dir: Path, dist: distributed.Dist, device_name: str, quiet: bool, log=print
) -> Context:
    """The data, the model (on its device, NHWC, SyncBN if asked) and the loss, from the seed."""
    device = pick_device(device_name)
    if device.type == "cuda":  # static shapes: let cuDNN pick its kernels once; float32 matmuls stay IEEE
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("highest")
    torch.manual_seed(cfg.seed)
    data = build_data(cfg)
    check_shapes(cfg, *data.train.images.shape[1:])
    distributed.check_same(
        dist, "the class counts (the losses' per-class margins and weights)", data.counts, device
    )
    model = build_model(cfg, len(data.train.classes), data.train.images.shape[1]).to(device)
    # NHWC activations: 1.34x the eager CPU step, about 1.02x once compiled (inductor picks NHWC for
    # convolutions itself); the usual choice on CUDA (docs/performance.md)
    if channels_last(cfg):
        model = model.to(memory_format=torch.channels_last)
    model = distributed.convert_sync_bn(dist, model, cfg.distributed.sync_bn, device)
    return Context(
        cfg,
        data,
        model,
        device,
        dist,
        resolve_precision(cfg.precision, device),
        compiled=False,
        cls_loss=build_cls_loss(cfg, data.counts).to(device),
        run_dir=run_dir,
        quiet=quiet,
        log=(lambda message: None) if quiet else log,
    )


def channels_last(cfg: Config) -> bool:
    return True if cfg.channels_last is None else cfg.channels_last


@dataclass
class Loop:
    """The per-step machinery fit() hands to each epoch."""

    step: Compiled
    evaluate: Compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    watch: FiniteWatch
    clip_grad: float | None = None


@dataclass
class Progress:
    start: int = 0
    best: float = -1.0
    best_epoch: int = -1
    history: list = field(default_factory=list)


def fit(ctx: Context, scenario: Scenario, *, resume: bool = False, force: bool = False, log=print) -> dict:
    """Train `scenario` for cfg.optim.epochs, checkpointing each epoch; returns the run's summary."""
    cfg, dist = ctx.cfg, ctx.dist
    ctx.compiled = use_compile(cfg, ctx.device, scenario.images_per_epoch)
    if ctx.compiled:  # a run compiles its own graphs: none of an earlier run in this process count against it
        torch.compiler.reset()
    mode = compile_mode(cfg, dist)
    loop = Loop(
        step=Compiled(
            distributed.step_module(dist, ctx.model, scenario.loss, ctx.device),
            enabled=ctx.compiled,
            batch=scenario.step_batch,
            mode=mode,
        ),
        evaluate=Compiled(
            scenario.eval_model,
            enabled=ctx.compiled,
            batch=scenario.test_loader.batch_size,
            mode=mode,
            what="evaluation",
        ),
        optimizer=build_optimizer(cfg, ctx.model, ctx.device),
        scaler=torch.amp.GradScaler(ctx.device.type)
        if ctx.precision == "fp16"
        else None,  # fp16 loss scaling
        watch=FiniteWatch(ctx.device),
        clip_grad=cfg.optim.clip_grad,
    )
    progress = (
        resume_from_checkpoint(ctx, scenario, loop.optimizer, log)
        if resume
        else start_fresh(ctx, scenario, force)
    )
    resolved = resolved_settings(ctx, mode)
    if dist.main:
        rundir.write_json(ctx.run_dir / rundir.RESOLVED, resolved)
    board = _tensorboard(ctx.run_dir) if cfg.tensorboard and dist.main else None
    started = time.perf_counter()
    epochs = cfg.optim.epochs
    for epoch in range(progress.start, epochs):
        lr = lr_at(cfg, epoch) * (dist.world if cfg.distributed.scale_lr else 1)
        set_epoch_hyperparameters(loop.optimizer, lr, weight_decay_at(cfg, epoch))
        scenario.start_epoch(epoch)
        epoch_start = time.perf_counter()
        sums, seen, train_seconds = train_epoch(ctx, scenario, loop, epoch)
        # eager, outside the steps; changes no training number
        diagnosed = scenario.diagnose(epoch) if diagnosis_due(cfg, epoch) else {}
        with _evaluation_shown(ctx, f"epoch {epoch + 1}/{epochs} test"):
            evaluated = scenario.evaluate_epoch(loop.evaluate)
        row = epoch_row(epoch, lr, evaluated, sums, seen, train_seconds, time.perf_counter() - epoch_start)
        row.update(diagnosed)
        progress.history.append(row)
        if row["test_acc"] > progress.best:
            progress.best, progress.best_epoch = row["test_acc"], epoch
        if dist.main:
            save_epoch(ctx, scenario, loop.optimizer, progress, epoch, board)
            ctx.log(epoch_line(row, epochs, run_clock(progress.history, epochs, epoch + 1 - progress.start)))
    if progress.start >= epochs:  # resumed a finished run: evaluate what is there
        progress.history = rundir.read_metrics(ctx.run_dir)
    distributed.barrier(dist)
    if not dist.main:
        return {}
    summary = final_summary(ctx, scenario, loop, progress, time.perf_counter() - started)
    summary["resolved"] = resolved
    with _write_failure_stops(ctx.run_dir, cfg.optim.epochs):
        rundir.write_json(ctx.run_dir / rundir.SUMMARY, summary)
    if board is not None:
        board.close()
    return summary


def resolved_settings(ctx: Context, compile_mode: str) -> dict:
    """What config.yaml leaves to gssl (null, auto, a schedule scaled to optim.epochs), as it was decided:
    resolved.json and the summary's `resolved`, and the run's first lines."""
    cfg = ctx.cfg
    execution = {
        "device": str(ctx.device),
        "device_name": _device_name(ctx.device),
        "precision": ctx.precision,
        "compiled": ctx.compiled,
        "compile_mode": compile_mode if ctx.compiled else None,
        "channels_last": channels_last(cfg),
        "threads": torch.get_num_threads(),
        "world_size": ctx.dist.world,
    }
    resolved = {"schedule": resolved_schedule(cfg), "execution": execution}
    notice = scaling_notice(cfg)
    if notice:
        ctx.log(notice)
    ctx.log(f"schedule: {describe(resolved['schedule'])}")
    ctx.log(
        f"execution: {execution['device_name']}, {ctx.precision}, "
        f"{'compiled (' + compile_mode + ')' if ctx.compiled else 'eager'}"
        f"{', channels_last' if execution['channels_last'] else ''}"
        f"{f', {ctx.dist.world} processes' if ctx.dist.enabled else ''}"
    )
    return resolved


def diagnosis_due(cfg: Config, epoch: int) -> bool:
    """After every `diagnose_every` epochs (counted from 1) and after the last, unless it is 0."""
    every = cfg.diagnose_every
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == cfg.optim.epochs)


def start_fresh(ctx: Context, scenario: Scenario, force: bool) -> Progress:
    if ctx.dist.main:
        rundir.prepare(ctx.run_dir, force=force)  # only now: a refused run leaves the old one intact
        rundir.write_atomic(ctx.run_dir / rundir.CONFIG, to_yaml(ctx.cfg).encode())
        rundir.write_metrics(ctx.run_dir, [])
    with _write_failure_stops(ctx.run_dir, 0):
        scenario.before_fit(ctx.run_dir)
    return Progress()


def resume_from_checkpoint(ctx: Context, scenario: Scenario, optimizer, log) -> Progress:
    last_pt = ctx.run_dir / rundir.CKPT_DIR / "last.pt"
    checkpoint = rundir.load_checkpoint(last_pt, map_location=ctx.device)
    rundir.restore(ctx.model, checkpoint, last_pt, optimizer)
    scenario.load_state_dict(checkpoint)
    start = int(checkpoint["epoch"]) + 1
    history = [
        row
        for row in rundir.read_metrics(ctx.run_dir)
        if isinstance(row.get("epoch"), int) and row["epoch"] <= start  # epochs 1..start are done
    ]
    distributed.barrier(ctx.dist)  # every rank has read before rank 0 rewrites
    if ctx.dist.main:
        rundir.remove_temp_files(ctx.run_dir)  # halves of writes a kill interrupted
        rundir.write_metrics(ctx.run_dir, history)  # drop epochs the checkpoint does not cover
        rundir.write_atomic(ctx.run_dir / rundir.CONFIG, to_yaml(ctx.cfg).encode())  # a --force'd change
        log(f"resuming {ctx.run_dir} at epoch {start + 1}")
    return Progress(start, float(checkpoint["best_acc"]), int(checkpoint["best_epoch"]), history)


def train_epoch(ctx: Context, scenario: Scenario, loop: Loop, epoch: int) -> tuple[dict, int, float]:
    """One pass of the scenario's batches: (device-side sums of the step statistics over every rank,
    images seen, training seconds)."""
    cfg, dist, cuda = ctx.cfg, ctx.dist, ctx.device.type == "cuda"
    # drawn where used; a scenario whose augmentations differ per rank draws them per rank under torchrun
    seed = pretext_seed(cfg.seed, epoch) + (dist.rank if scenario.per_rank_draws else 0)
    generator = torch.Generator(device=ctx.device).manual_seed(seed)
    ctx.model.train()
    sums: dict[str, torch.Tensor] = {}
    seen, started = 0, time.perf_counter()
    loop.watch.reset()
    batches, steps = scenario.batches(epoch)
    bar = _progress(batches, f"epoch {epoch + 1}/{cfg.optim.epochs}", ctx.quiet, steps)
    for step, (x, y) in enumerate(bar):
        if channels_last(cfg):
            x = x.contiguous(memory_format=torch.channels_last)
        batch = scenario.prepare(x, y, generator, epoch, step)
        with autocast(ctx.device.type, ctx.precision):
            loss, stats = loop.step(*batch)
        if step == 0:
            check_step(scenario, batch, stats)
        loop.watch.update(step, loss, stats)
        if not cuda:  # reading it is free on CPU; on CUDA once per epoch, below
            _stop_if_non_finite(loop.watch, epoch, cfg.optim.epochs, steps, ctx.run_dir)
        optimizer_step(loop, loss)
        scenario.after_step()
        for key, value in stats.items():  # device-side sums; read once per epoch
            value = value.detach().float()
            sums[key] = sums.get(key, 0) + (value if key.endswith("correct") else value * y.shape[0])
        seen += y.shape[0]
        if bar is not batches and step % (100 if cuda else 10) == 0:  # reading sums synchronises
            bar.set_postfix(_postfix(sums, seen), refresh=False)
    _stop_if_non_finite(loop.watch, epoch, cfg.optim.epochs, steps, ctx.run_dir)
    if cuda:
        torch.cuda.synchronize(ctx.device)
    train_seconds = time.perf_counter() - started
    sums, seen = distributed.all_sum(dist, sums, seen)  # metrics and gate weights over every rank
    return sums, seen, train_seconds


def optimizer_step(loop: Loop, loss: torch.Tensor) -> None:
    loop.optimizer.zero_grad(set_to_none=True)
    if loop.scaler is None:
        loss.backward()
        _clip(loop)
        loop.optimizer.step()
        return
    loop.scaler.scale(loss).backward()
    loop.scaler.unscale_(loop.optimizer)  # clip the true gradients; scaler.step would unscale them anyway
    _clip(loop)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()


def _clip(loop: Loop) -> None:
    if loop.clip_grad is not None:
        for group in loop.optimizer.param_groups:
            clip_each_gradient(group["params"], loop.clip_grad)


def epoch_row(
    epoch: int, lr: float, evaluated: dict, sums: dict, seen: int, train_seconds: float, seconds: float
) -> dict:
    """metrics.jsonl's line for an epoch: epoch (counted from 1), lr, timings, accuracies, then every
    statistic's mean."""
    row = {
        "epoch": epoch + 1,
        "lr": lr,
        "seconds": round(seconds, 3),
        "images_per_second": round(seen / train_seconds, 1),
        "train_acc": 100.0 * sums["correct"].item() / seen,
    }
    row.update(evaluated)
    row.update({k: v.item() / seen for k, v in sums.items() if not k.endswith("correct")})
    row.update(
        {
            f"{k[: -len('_correct')]}_train_acc": 100.0 * v.item() / seen
            for k, v in sums.items()
            if k.endswith("_correct")
        }
    )
    return row


def save_epoch(ctx: Context, scenario: Scenario, optimizer, progress: Progress, epoch: int, board) -> None:
    state = {
        "model": ctx.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "best_acc": progress.best,
        "best_epoch": progress.best_epoch,
        "config": ctx.cfg.to_dict(),
        **scenario.state_dict(),
    }
    with _write_failure_stops(ctx.run_dir, epoch):
        rundir.write_metrics(ctx.run_dir, progress.history)
        if progress.best_epoch == epoch:
            rundir.save_checkpoint(ctx.run_dir / rundir.CKPT_DIR / "best.pt", state)
        rundir.save_checkpoint(ctx.run_dir / rundir.CKPT_DIR / "last.pt", state)
    if board is not None:
        for key, value in progress.history[-1].items():
            if key != "epoch" and value is not None:  # a shot group with no class has no accuracy
                board.add_scalar(key, value, epoch + 1)
        board.flush()


def epoch_line(row: dict, epochs: int, clock: str = "") -> str:
    gates = " ".join(f"{k[5:]}={row[k]:.3f}" for k in row if k.startswith("gate_"))
    return (
        f"epoch {row['epoch']}/{epochs} lr {row['lr']:.4g} loss {row['loss']:.4f} "
        f"train {row['train_acc']:.2f}% test {row['test_acc']:.2f}% {gates} "
        f"({row['images_per_second']:.0f} img/s) {clock}"
    ).rstrip()


def final_summary(ctx: Context, scenario: Scenario, loop: Loop, progress: Progress, seconds: float) -> dict:
    """summary.json: the final evaluation of the scenario's judged weights, and how the run went."""
    ctx.log(f"final evaluation on {len(ctx.data.test.labels)} test images")
    with _evaluation_shown(ctx, "final evaluation"):
        logits, labels, extra = scenario.evaluate_final()
    report = metrics.report(logits, labels, ctx.data.counts)
    history, cfg = progress.history, ctx.cfg
    last = history[-1] if history else {}
    return {
        **metrics.summary_accuracies(report),
        "best_test_acc": progress.best,
        "best_epoch": progress.best_epoch + 1,
        rundir.EPOCHS_FROM: 1,
        "best_selected_on": "test set, as the reference code does (no validation split): optimistic",
        "per_class_acc": report["per_class_acc"],
        "many_shot_acc": report["many_shot_acc"],
        "medium_shot_acc": report["medium_shot_acc"],
        "few_shot_acc": report["few_shot_acc"],
        "class_counts": ctx.data.counts,
        "classes": ctx.data.train.classes,
        "gate_weights": {k[5:]: v for k, v in last.items() if k.startswith("gate_")},
        "epochs": cfg.optim.epochs,
        "images_per_second": _mean([r["images_per_second"] for r in history]),
        "wall_seconds": round(sum(r["seconds"] for r in history), 2),
        "wall_seconds_this_process": round(seconds, 2),
        "device": _device_name(ctx.device),
        "precision": ctx.precision,
        "compiled": ctx.compiled,
        "compiled_steps": loop.step.compiled_calls,
        "compiled_eval_batches": loop.evaluate.compiled_calls,
        "compile_fallbacks": loop.step.fallbacks + loop.evaluate.fallbacks,
        "seed": cfg.seed,
        "versions": versions(),
        "method": cfg.method or registry.method_of(cfg),
        "preset": cfg.preset,
        "command": " ".join(sys.argv),
        **extra,
    }


def _stop_if_non_finite(watch: FiniteWatch, epoch: int, epochs: int, steps: int, run_dir: Path) -> None:
    bad = watch.first_bad()
    if bad is None:
        return
    step, terms = bad
    kept = (
        f"the last good checkpoint (after epoch {epoch}) is kept in {run_dir / rundir.CKPT_DIR}"
        if epoch > 0
        else "no checkpoint was written (the first epoch did not finish)"
    )
    raise TrainingError(
        f"non-finite loss at epoch {epoch + 1}/{epochs}, step {step + 1}/{steps}; loss terms: "
        f"{', '.join(f'{k}={v:.4g}' for k, v in terms.items())}. {kept}. Lower optim.lr or check the data"
    )


@contextlib.contextmanager
def _write_failure_stops(run_dir: Path, epoch: int):
    """A write that fails once training runs (disk full, say) stops the run as a TrainingError (exit 1):
    the input was fine, and the run can be resumed once the disk is fixed. The atomic writes leave
    the previous checkpoint whole and no half-written file where a resume would read it."""
    try:
        yield
    except rundir.RunDirError as e:
        raise TrainingError(
            f"{e}. Training stopped at epoch {epoch + 1}; the last complete checkpoint in "
            f"{run_dir / rundir.CKPT_DIR} is kept, and `gssl train --resume {run_dir}` continues "
            "from it once the problem is fixed"
        ) from None


def _mean(xs):
    return round(sum(xs) / len(xs), 1) if xs else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _postfix(sums: dict, seen: int) -> dict:
    out = {"loss": f"{sums['loss'].item() / seen:.3f}", "acc": f"{100 * sums['correct'].item() / seen:.1f}"}
    out.update({k[5:]: f"{sums[k].item() / seen:.2f}" for k in sums if k.startswith("gate_")})
    return out


def run_clock(history: list[dict], epochs: int, this_process: int) -> str:
    """The run's time so far (every process's epochs) and the time left at this process's pace."""
    elapsed = sum(row.get("seconds", 0.0) for row in history)
    pace = sum(row.get("seconds", 0.0) for row in history[-this_process:]) / max(1, this_process)
    return f"[{_duration(elapsed)} elapsed, {_duration(pace * (epochs - len(history)))} left]"


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


def _evaluation_shown(ctx: Context, desc: str):
    return metrics.shown(functools.partial(_progress, desc=desc, quiet=ctx.quiet))


def _progress(batches, desc: str, quiet: bool, total: int | None = None):
    """A progress bar on stderr when it is a terminal; a log file gets the epoch lines alone, not bars."""
    if quiet or not sys.stderr.isatty():
        return batches
    from tqdm import tqdm

    return tqdm(
        batches,
        total=total if total is not None else len(batches),
        desc=desc,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "tensorboard: true needs the tensorboard package; `pip install tensorboard` "
            "or set tensorboard=false"
        ) from None
    return SummaryWriter(str(run_dir / "tensorboard"))
