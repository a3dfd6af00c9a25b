"""The training loop: read it top to bottom.

Determinism: the model is initialised from the seed, and every epoch's randomness (sample order,
crop, flip, pretext parameters) is drawn from generators seeded by (seed, epoch) alone. A run
resumed from the checkpoint after epoch k therefore replays epochs k+1.. exactly as an
uninterrupted run would, bit for bit on CPU.
"""
from __future__ import annotations

import contextlib
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__, metrics, rundir
from .config import Config, ConfigError, scaled_schedule, to_yaml
from .build import (Data, build_cls_loss, build_data, build_model, check_method, check_shapes,  # noqa: F401 (API)
                    ordered_loader, pick_device)
from .data import DeviceLoader
from .evaluation import evaluate_run, write_eval  # noqa: F401 (API)
from .contrastive import frozen_eval
from .data.views import ViewAugment
from .losses import drw_weights
from .sla import SLASD
from .ssp import pretrain_rotation
from . import attacks, distributed, semisup
from .step import Compiled, FiniteWatch, autocast, resolve_precision


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss, say); the last good checkpoint is kept."""


def lr_at(cfg: Config, epoch: int) -> float:
    """Linear warm-up per epoch, then step decays (gamma**i after the i-th milestone) or cosine."""
    o = cfg.optim
    warm, miles, _ = scaled_schedule(o, cfg.loss.drw_epoch)
    if epoch < warm:
        return o.lr * (epoch + 1) / warm
    if o.schedule == "cosine":
        t = (epoch - warm) / max(1, o.epochs - warm)
        return o.lr * 0.5 * (1 + math.cos(math.pi * t))
    return o.lr * o.gamma ** sum(epoch >= m for m in miles)


def pretext_seed(seed: int, epoch: int) -> int:
    """The pretext parameters' stream for one epoch; unlike gssl.data.epoch_seed (the loader's), so the
    quadrant and rotation draws are not the crop and flip draws over again."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


# On CPU, compile=null compiles when the run sees at least this many training images: compiling the step
# and the evaluation takes about 35 s on 2 idle cores, and the compiled ResNet-32 step is 1.11-1.14x the
# channels_last eager one (docs/performance.md), so it repays itself after roughly 220,000 images; this
# leaves a margin, and keeps the quickstart eager.
CPU_COMPILE_MIN_IMAGES = 300_000


def use_compile(cfg: Config, device: torch.device, train_images: int) -> bool:
    """`compile`, or when null: always on CUDA; on CPU when the run is long enough to repay compiling."""
    if cfg.compile is not None:
        return cfg.compile
    if device.type == "cuda":
        return True
    per_epoch = cfg.semi.steps_per_epoch * cfg.optim.batch_size if cfg.semi.labels_per_class else train_images
    return cfg.optim.epochs * per_epoch >= CPU_COMPILE_MIN_IMAGES


def compile_mode(cfg: Config, d: distributed.Dist) -> str:
    """Under DDP, no CUDA graphs: DDP's bucketed all-reduce splits the compiled graph, and batch-norm
    buffer updates ("mutated inputs") make inductor skip CUDA graphs anyway (docs/performance.md)."""
    if d.enabled and cfg.compile_mode == "reduce-overhead":
        return "default"
    if d.enabled and cfg.compile_mode == "max-autotune":
        return "max-autotune-no-cudagraphs"
    return cfg.compile_mode


def versions() -> dict:
    return {"gssl": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def train(cfg: Config, run_dir: Path, *, resume: bool = False, force: bool = False, quiet: bool = False,
          log=print) -> dict:
    """Train (resume=False: a fresh run in run_dir, replacing an earlier one only if force) or continue
    run_dir from its last checkpoint. Errors before the first epoch are ConfigError, DataError or
    RunDirError and change nothing on disk; errors once training runs are TrainingError. Under
    torchrun every rank calls this; rank 0 alone writes."""
    d, device_name = distributed.setup(cfg.device, cfg.distributed.timeout_s)
    try:
        return _train(cfg, Path(run_dir), d, device_name, resume, force, quiet or not d.main, log)
    finally:
        distributed.teardown(d)


def _train(cfg: Config, run_dir: Path, d: distributed.Dist, device_name: str, resume: bool, force: bool,
           quiet: bool, log) -> dict:
    if not resume:
        rundir.check_out(run_dir, force=force)
    distributed.barrier(d)  # every rank has looked before rank 0 changes anything
    check_method(cfg)
    device = pick_device(device_name)
    cuda = device.type == "cuda"
    precision = resolve_precision(cfg.precision, device)
    if cuda:  # static shapes: let cuDNN pick its fastest kernels once; float32 matmuls stay IEEE (as the reference)
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("highest")
    torch.manual_seed(cfg.seed)

    data = build_data(cfg)
    n_cls, C = len(data.train.classes), data.train.images.shape[1]
    check_shapes(cfg, *data.train.images.shape[1:])
    distributed.check_same(d, "the class counts (LDAM margins, DRW weights)", data.counts, device)
    model = build_model(cfg, n_cls, C).to(device)
    # NHWC activations: 1.34x the eager CPU step, about 1.02x once compiled (inductor picks NHWC for
    # convolutions itself); the usual choice on CUDA (docs/performance.md)
    channels_last = True if cfg.channels_last is None else cfg.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_module, model = distributed.wrap(d, model, cfg.distributed.sync_bn, device)  # DDP under torchrun
    cls_loss = build_cls_loss(cfg, data.counts).to(device)
    o = cfg.optim
    groups = [{"params": [p for p in model.parameters() if p.dim() > 1 or o.decay_norm_and_bias]},
              {"params": [p for p in model.parameters() if p.dim() <= 1 and not o.decay_norm_and_bias], "weight_decay": 0.0}]
    opt = torch.optim.SGD([g for g in groups if g["params"]], lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                          weight_decay=o.weight_decay, **({"fused": True} if cuda else {"foreach": True}))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None  # fp16 needs loss scaling
    _, _, drw_epoch = scaled_schedule(o, cfg.loss.drw_epoch)
    drw_w = drw_weights(data.counts, cfg.loss.drw_beta).to(device)

    semi = data.unlabeled is not None  # FixMatch: unlabelled batches of mu x B, weak and strong views, EMA
    c = cfg.contrastive
    contrast = c.views >= 2  # SimCLR: V augmented views of every image; k-NN test accuracy per epoch
    # under torchrun SimCLR gathers every rank's views, which needs equal shares: no uneven last batch
    loader = DeviceLoader(data.train.images, data.train.labels, o.batch_size, mean=data.mean, std=data.std,
                          crop_padding=cfg.data.crop_padding, hflip=cfg.data.hflip, shuffle=True, seed=cfg.seed,
                          device=device, rank=d.rank, world=d.world, drop_last=contrast and d.enabled)
    test_loader = ordered_loader(data.test, data, max(512, o.batch_size), device)
    views = ViewAugment(data.mean, data.std, device, crop_scale=(c.crop_min_scale, 1.0)) if contrast else None
    bank_loader = ordered_loader(data.train, data, max(512, o.batch_size), device) if contrast else None
    u_loader = DeviceLoader(data.unlabeled.images, data.unlabeled.labels, o.batch_size * cfg.semi.mu, mean=data.mean,
                            std=data.std, crop_padding=cfg.data.crop_padding, hflip=cfg.data.hflip, shuffle=True,
                            seed=cfg.seed + 1, device=device, rank=d.rank, world=d.world) if semi else None
    strong = semisup.StrongAugment(data.mean, data.std, device) if semi else None
    ema = semisup.EMA(model, cfg.semi.ema) if semi and cfg.semi.ema > 0 else None
    eval_net = ema.module if ema is not None else model
    steps = cfg.semi.steps_per_epoch if semi else len(loader)
    # the fast path: compiled step and evaluation on full batches (static shapes), eager otherwise
    compiled = use_compile(cfg, device, len(data.train.labels))
    if compiled:  # a run compiles its own graphs: none of an earlier run in this process count against it
        torch.compiler.reset()
    mode = compile_mode(cfg, d)
    step_fn = Compiled(step_module, enabled=compiled, batch=o.batch_size * (c.views if contrast else 1), mode=mode)
    eval_fn = Compiled(eval_net, enabled=compiled, batch=test_loader.batch_size, mode=mode, what="evaluation")
    watch = FiniteWatch(device)
    space = attacks.PixelSpace(data.mean, data.std, device)
    adv = _attack(cfg, cfg.adv.steps) if cfg.adv.attack != "none" else None

    start, best, best_epoch, history = 0, -1.0, -1, []
    if resume:
        last_pt = run_dir / rundir.CKPT_DIR / "last.pt"
        ck = rundir.load_checkpoint(last_pt, map_location=device)
        rundir.restore(model, ck, last_pt, opt)
        if ema is not None:
            ema.load_state_dict(ck["ema"])
        start, best, best_epoch = int(ck["epoch"]) + 1, float(ck["best_acc"]), int(ck["best_epoch"])
        history = [r for r in rundir.read_metrics(run_dir) if isinstance(r.get("epoch"), int) and r["epoch"] < start]
        distributed.barrier(d)  # every rank has read before rank 0 rewrites
        if d.main:
            rundir.remove_temp_files(run_dir)  # halves of writes a kill interrupted
            rundir.write_metrics(run_dir, history)  # drop epochs the checkpoint does not cover
            rundir.write_atomic(run_dir / rundir.CONFIG, to_yaml(cfg).encode())  # a --force'd change, now it fits
            log(f"resuming {run_dir} at epoch {start + 1}")
    else:
        if d.main:
            rundir.prepare(run_dir, force=force)  # only now: a refused run leaves the old one intact
            rundir.write_atomic(run_dir / rundir.CONFIG, to_yaml(cfg).encode())
            rundir.write_metrics(run_dir, [])
        if cfg.pretrain.epochs:  # SSP: rotation pre-training on the training images (every rank alike)
            pre_loader = DeviceLoader(data.train.images, data.train.labels, o.batch_size, mean=data.mean,
                                      std=data.std, crop_padding=cfg.data.crop_padding, hflip=cfg.data.hflip,
                                      shuffle=True, seed=cfg.seed + 1, device=device)
            pre = pretrain_rotation(model.backbone, pre_loader, epochs=cfg.pretrain.epochs, lr=cfg.pretrain.lr,
                                    weight_decay=o.weight_decay, seed=cfg.seed, log=(lambda m: None) if quiet else log,
                                    compile=compiled, precision=precision)
            if compiled:  # the pre-training step's graphs are done with; the supervised step compiles afresh
                torch.compiler.reset()
            if not all(math.isfinite(r["loss"]) for r in pre):
                raise TrainingError("SSP pre-training diverged (non-finite rotation loss); lower pretrain.lr")
            if d.main:
                with _write_failure_stops(run_dir, 0):
                    rundir.save_checkpoint(run_dir / rundir.CKPT_DIR / "pretrain.pt",
                                           {"backbone": model.backbone.state_dict(), "history": pre})
            if d.enabled:  # the supervised run starts from rank 0's pre-trained weights on every rank
                for t in model.state_dict().values():
                    torch.distributed.broadcast(t, 0)
    tb = _tensorboard(run_dir) if cfg.tensorboard and d.main else None

    t_run = time.perf_counter()
    for epoch in range(start, o.epochs):
        lr = lr_at(cfg, epoch) * (d.world if cfg.distributed.scale_lr else 1)
        for g in opt.param_groups:
            g["lr"] = lr
        cls_loss.set_weight(drw_w if drw_epoch is not None and epoch >= drw_epoch else None)  # in place
        loader.set_epoch(epoch)
        # drawn where used; under torchrun FixMatch's and SimCLR's augmentations are drawn per rank
        gen = torch.Generator(device=device).manual_seed(pretext_seed(cfg.seed, epoch) + (d.rank if semi or contrast else 0))

        model.train()
        sums: dict[str, torch.Tensor] = {}
        seen, t0 = 0, time.perf_counter()
        watch.reset()
        batches = semisup.cycle(loader, steps, epoch) if semi else loader
        unlabeled = semisup.cycle(u_loader, steps, epoch) if semi else None
        bar = _progress(batches, epoch, o.epochs, quiet, steps)
        for step, (x, y) in enumerate(bar):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if semi:  # FixMatch: labelled, weak and strong views in one forward pass
                xu, yu = next(unlabeled)
                xs = strong(xu, gen)
                params = model.sample_params(torch.cat([x, xu, xs]), gen)
                with autocast(device.type, precision):
                    loss, stats = step_fn(x, y, xu, xs, yu, cls_loss, params, cfg.semi.threshold,
                                          cfg.semi.lambda_u, fn=semisup.fixmatch_loss)
            elif contrast:  # SimCLR: the V views stacked view-major, the pretext tasks on every view
                if model.fusion is not None:  # batch fusion grows with training progress
                    model.fusion.set_progress((epoch * steps + step) / max(1, o.epochs * steps - 1))
                xv = views.views(x, gen, c.views).flatten(0, 1)
                params = model.sample_params(xv, gen)
                with autocast(device.type, precision):
                    loss, stats = step_fn(xv, y, cls_loss, params)
            else:
                params = distributed.global_params(d, model, x, gen, *loader.shard(step))
                if adv is not None:  # adversarial training: the step sees the attacked batch
                    objective = (attacks.training_objective(model, cls_loss, params) if cfg.adv.objective == "pretext"
                                 else attacks.classification_objective(model, cls_loss))
                    with attacks.attack_mode(model, cfg.adv.bn_train), autocast(device.type, precision):
                        x = attacks.perturb(objective, x, y, space, adv, gen)
                with autocast(device.type, precision):
                    loss, stats = step_fn(x, y, cls_loss, params)
            watch.update(step, loss, stats)
            if not cuda:  # reading it is free on CPU; on CUDA once per epoch, below
                _stop_if_non_finite(watch, epoch, o.epochs, steps, run_dir)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            if ema is not None:
                ema.update(model)
            b = y.shape[0]
            for k, v in stats.items():  # device-side sums; read once per epoch
                v = v.detach().float()
                sums[k] = sums.get(k, 0) + (v if k.endswith("correct") else v * b)
            seen += b
            if bar is not batches and step % (100 if cuda else 10) == 0:  # reading sums synchronises
                bar.set_postfix(_postfix(sums, seen), refresh=False)
        _stop_if_non_finite(watch, epoch, o.epochs, steps, run_dir)
        if cuda:
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t0
        sums, seen = distributed.all_sum(d, sums, seen)  # metrics and gate weights over every rank

        if contrast:  # no classifier: k-NN on the frozen features
            test_acc = frozen_eval(model.backbone, bank_loader, test_loader, n_cls, device_type=device.type,
                                   precision=precision, knn_k=c.knn_k, knn_temperature=c.knn_temperature)["knn_acc"]
        else:
            logits, labels = metrics.predict(eval_net, test_loader, device.type, precision=precision, fn=eval_fn)
            test_acc = metrics.top1(logits, labels)
            shots = metrics.report(logits, labels, data.counts)  # many/medium/few-shot, every epoch
        row = {"epoch": epoch, "lr": lr, "seconds": round(time.perf_counter() - t0, 3),
               "images_per_second": round(seen / train_seconds, 1),
               "train_acc": 100.0 * sums["correct"].item() / seen, "test_acc": test_acc}
        if not contrast:
            row.update({f"test_{g}_shot_acc": shots[f"{g}_shot_acc"] for g in ("many", "medium", "few")})
        row.update({k: v.item() / seen for k, v in sums.items() if not k.endswith("correct")})
        row.update({f"{k[:-len('_correct')]}_train_acc": 100.0 * v.item() / seen
                    for k, v in sums.items() if k.endswith("_correct")})
        history.append(row)
        if test_acc > best:
            best, best_epoch = test_acc, epoch
        if not d.main:
            continue
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                 "best_acc": best, "best_epoch": best_epoch, "config": cfg.to_dict(),
                 **({"ema": ema.state_dict()} if ema is not None else {})}
        with _write_failure_stops(run_dir, epoch):
            rundir.write_metrics(run_dir, history)
            if best_epoch == epoch:
                rundir.save_checkpoint(run_dir / rundir.CKPT_DIR / "best.pt", state)
            rundir.save_checkpoint(run_dir / rundir.CKPT_DIR / "last.pt", state)
        if tb is not None:
            for k, v in row.items():
                if k != "epoch" and v is not None:  # a shot group with no class has no accuracy
                    tb.add_scalar(k, v, epoch)
            tb.flush()
        if not quiet:
            gates = " ".join(f"{k[5:]}={row[k]:.3f}" for k in row if k.startswith("gate_"))
            log(f"epoch {epoch + 1}/{o.epochs} lr {lr:.4g} loss {row['loss']:.4f} train {row['train_acc']:.2f}% "
                f"test {test_acc:.2f}% {gates} ({row['images_per_second']:.0f} img/s)")

    if start >= o.epochs:  # resumed a finished run: evaluate what is there
        history = rundir.read_metrics(run_dir)
    distributed.barrier(d)
    if not d.main:
        return {}
    extra = {}
    if contrast:  # judged by a linear probe on the frozen backbone (and k-NN), as contrastive methods are
        fe = frozen_eval(model.backbone, bank_loader, test_loader, n_cls, device_type=device.type, precision=precision,
                         knn_k=c.knn_k, knn_temperature=c.knn_temperature, linear_epochs=c.linear_epochs,
                         linear_lr=c.linear_lr, seed=cfg.seed)
        logits, labels = fe["logits"], fe["labels"]
        final = f"linear probe ({c.linear_epochs} epochs) on the frozen backbone" if c.linear_epochs else f"{c.knn_k}-NN"
        extra.update({"knn_test_acc": fe["knn_acc"], "test_acc_protocol": f"{final}; per-epoch test_acc is {c.knn_k}-NN"})
    else:
        logits, labels = metrics.predict(eval_net, test_loader, device.type, precision=precision)
    rep = metrics.report(logits, labels, data.counts)
    last = history[-1] if history else {}
    if isinstance(model, SLASD):  # SLA's aggregated inference (M forward passes), beside the single head
        agg, _ = metrics.predict(model, test_loader, device.type, precision=precision, fn=model.aggregated_logits)
        extra["aggregated_test_acc"] = metrics.top1(agg, labels)
    if adv is not None and cfg.adv.eval_steps:  # robust accuracy, PGD with eval_steps steps, eval mode
        clean, robust = attacks.robust_accuracy(model, test_loader, space, _attack(cfg, cfg.adv.eval_steps, "pgd"),
                                                precision=precision, seed=cfg.seed)
        extra.update({"robust_test_acc": robust, "robust_attack": f"pgd-{cfg.adv.eval_steps} eps {cfg.adv.eps:.5g} "
                                                                  f"step {cfg.adv.eval_step_size:.5g}"})
    if cfg.pretrain.epochs and (run_dir / rundir.CKPT_DIR / "pretrain.pt").is_file():
        pre = rundir.load_checkpoint(run_dir / rundir.CKPT_DIR / "pretrain.pt")["history"]
        extra["pretrain_rotation_acc"] = pre[-1]["acc"] if pre else None
    summary = {
        "test_acc": rep["top1"], "top5_acc": rep["top5"],
        "best_test_acc": best, "best_epoch": best_epoch,
        "best_selected_on": "test set, as the reference code does (no validation split): optimistic",
        "per_class_acc": rep["per_class_acc"], "many_shot_acc": rep["many_shot_acc"],
        "medium_shot_acc": rep["medium_shot_acc"], "few_shot_acc": rep["few_shot_acc"],
        "class_counts": data.counts, "classes": data.train.classes,
        "gate_weights": {k[5:]: v for k, v in last.items() if k.startswith("gate_")},
        "epochs": o.epochs, "images_per_second": _mean([r["images_per_second"] for r in history]),
        "wall_seconds": round(sum(r["seconds"] for r in history), 2),
        "wall_seconds_this_process": round(time.perf_counter() - t_run, 2),
        "device": _device_name(device), "precision": precision, "compiled": compiled,
        "compiled_steps": step_fn.compiled_calls, "compiled_eval_batches": eval_fn.compiled_calls, "compile_fallbacks": step_fn.fallbacks + eval_fn.fallbacks,
        "seed": cfg.seed, "versions": versions(),
        "preset": cfg.preset, "command": " ".join(sys.argv), **extra,
    }
    with _write_failure_stops(run_dir, o.epochs):
        rundir.write_json(run_dir / rundir.SUMMARY, summary)
    if tb is not None:
        tb.close()
    return summary


def _attack(cfg: Config, steps: int, kind: str | None = None) -> attacks.Attack:
    """The training attack, or (kind="pgd") the final robust evaluation with its own step size."""
    a = cfg.adv
    step = a.eval_step_size if kind == "pgd" else a.step_size
    return attacks.Attack(kind or a.attack, a.eps, step, steps, a.random_start)


def _stop_if_non_finite(watch: FiniteWatch, epoch: int, epochs: int, steps: int, run_dir: Path) -> None:
    bad = watch.first_bad()
    if bad is None:
        return
    step, terms = bad
    kept = (f"the last good checkpoint (after epoch {epoch}) is kept in {run_dir / rundir.CKPT_DIR}"
            if epoch > 0 else "no checkpoint was written (the first epoch did not finish)")
    raise TrainingError(f"non-finite loss at epoch {epoch + 1}/{epochs}, step {step + 1}/{steps} "
                        f"(metrics.jsonl epoch {epoch}); loss terms: "
                        f"{', '.join(f'{k}={v:.4g}' for k, v in terms.items())}. {kept}. Lower optim.lr or check the data")


@contextlib.contextmanager
def _write_failure_stops(run_dir: Path, epoch: int):
    """A write that fails once training runs (disk full, say) stops the run as a TrainingError (exit 1):
    the input was fine, and the run can be resumed once the disk is fixed. The atomic writes leave
    the previous checkpoint whole and no half-written file where a resume would read it."""
    try:
        yield
    except rundir.RunDirError as e:
        raise TrainingError(f"{e}. Training stopped at epoch {epoch + 1}; the last complete checkpoint in "
                            f"{run_dir / rundir.CKPT_DIR} is kept, and `gssl train --resume {run_dir}` continues "
                            "from it once the problem is fixed") from None


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


def _progress(batches, epoch: int, epochs: int, quiet: bool, total: int):
    if quiet:
        return batches
    from tqdm import tqdm
    return tqdm(batches, total=total, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True,
                file=sys.stderr)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard: true needs the tensorboard package; `pip install tensorboard` "
                          "or set tensorboard=false") from None
    return SummaryWriter(str(run_dir / "tensorboard"))
