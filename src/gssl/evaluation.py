"""`gssl eval`: a saved run's checkpoint on the test set, clean and, if asked, under attack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import attacks, metrics, rundir
from .build import Data, ordered_loader, pick_device
from .contrastive import frozen_eval
from .methods import registry
from .methods.registry import build_data, build_model, scenario_class
from .step import resolve_precision


def evaluate_run(
    run_dir: Path,
    checkpoint: str = "last",
    attack: attacks.Attack | None = None,
    *,
    protocol: str | None = None,
    knn_k: int | None = None,
    linear_epochs: int | None = None,
    loaded: LoadedRun | None = None,
    data_root: str | Path | None = None,
    test_limit: int | None = None,
) -> dict:
    """Rebuild the model from the run's saved config and evaluate a checkpoint on the test set; with
    `attack`, also the accuracy under it (pixel-space L-inf, model in eval mode). protocol: "classifier"
    (the run's own head; the default), "linear" or "knn" (on the frozen backbone's pooled features, the
    training images un-augmented; the default for runs without a classifier). The features and the probes'
    settings are the run's scenario's (a DINO run: its teacher and `dino.*`), knn_k and linear_epochs the
    run's own unless given, so the default reproduces its summary.
    `loaded`: this run and checkpoint already rebuilt by `load_run` (the report has it), not rebuilt again.
    protocol "final": the scenario's own final evaluation, as in summary.json (for a DINO run the linear
    probe and k-NN of the image representation and of the patch tokens), with knn_k and linear_epochs
    overriding the run's.
    `data_root`: where the data lies now, if it has moved since the run (default: the run's data.root).
    `test_limit`: judge on this many test images instead of the run's data.test_limit, ALL_TEST for the
    whole test split (a run that monitored a subset, judged precisely after the fact); the file's name
    says so."""
    run_dir = Path(run_dir)
    cfg = loaded.cfg if loaded is not None else read_config(run_dir, data_root)
    protocol, knn_k, linear_epochs = _checked_protocol(cfg, run_dir, protocol, attack, knn_k, linear_epochs)
    name = f"eval-{checkpoint}" + ("" if protocol == "classifier" else f"-{protocol}")
    if test_limit is not None:
        if loaded is not None:
            raise ValueError("test_limit rebuilds the data: pass it without `loaded`")
        cfg.data.test_limit = None if test_limit == ALL_TEST else test_limit
        name += f"-test{'all' if test_limit == ALL_TEST else test_limit}"
    if protocol == "final":
        if loaded is not None:
            raise ValueError("protocol 'final' rebuilds the run's scenario: pass it without `loaded`")
        return _final_evaluation(run_dir, checkpoint, cfg, knn_k, linear_epochs, name)
    run = loaded if loaded is not None else load_run(run_dir, checkpoint, cfg)
    model, data, device = run.model, run.data, run.device
    precision = resolve_precision(cfg.precision, device)
    loader = ordered_loader(data.test, data, 512, device)
    extra = {}
    if protocol == "classifier":
        logits, labels = metrics.predict(model, loader, device.type, precision)
    else:
        fe = _frozen_probe(run, loader, precision, knn_k, linear_epochs if protocol == "linear" else 0)
        logits, labels = fe["logits"], fe["labels"]
        how = f"{knn_k}-NN" if protocol == "knn" else f"{linear_epochs} epochs"
        extra.update({"knn_acc": fe["knn_acc"], "protocol": f"{protocol} ({how} on the frozen features)"})
    if attack is not None:
        clean, robust = attacks.robust_accuracy(
            model,
            loader,
            attacks.PixelSpace(data.mean, data.std, device),
            attack,
            precision=precision,
            seed=cfg.seed,
        )
        extra.update({"clean_acc": clean, "robust_acc": robust, "attack": vars(attack).copy()})
    return write_eval(
        run_dir,
        checkpoint,
        run.epoch,
        logits,
        labels,
        data,
        extra,
        name=name,
    )


ALL_TEST = 0  # evaluate_run(test_limit=ALL_TEST): the whole test split


def _final_evaluation(run_dir: Path, checkpoint: str, cfg, knn_k: int, linear_epochs: int, name: str) -> dict:
    """The run's own final evaluation (evaluate_final of its scenario, rebuilt with its checkpoint and the
    scenario's own state, an EMA say): the summary's numbers, reproducible after the fact."""
    options = scenario_class(cfg).probe_options(cfg)
    options.knn_k, options.linear_epochs = knn_k, linear_epochs
    ctx, scenario, epoch = rebuilt_scenario(cfg, run_dir, checkpoint)
    logits, labels, extra = scenario.evaluate_final()
    extra.update(metrics.summary_accuracies(metrics.report(logits, labels, ctx.data.counts)))
    extra["protocol"] = "final (the run's own final evaluation" + (
        f": {extra['test_acc_protocol']})" if "test_acc_protocol" in extra else ")"
    )
    return write_eval(run_dir, checkpoint, epoch, logits, labels, ctx.data, extra, name=name)


def rebuilt_scenario(cfg, run_dir: Path, checkpoint: str | None = None):
    """(context, scenario, epoch): the run's scenario built from `cfg` as `gssl train` builds it before its
    first step, and with `checkpoint` that checkpoint's weights and the scenario's own state loaded (epoch 0
    without one: the network at initialisation, the floor benchmarks/init_probe.py measures)."""
    from . import distributed
    from .engine import build_context

    ctx = build_context(cfg, Path(run_dir), distributed.Dist(), cfg.device, quiet=True)
    scenario = registry.build(ctx)
    if checkpoint is None:
        return ctx, scenario, 0
    path = Path(run_dir) / rundir.CKPT_DIR / f"{checkpoint}.pt"
    saved = rundir.load_checkpoint(path, map_location=ctx.device)
    rundir.restore(ctx.model, saved, path)
    scenario.load_state_dict(saved)
    return ctx, scenario, rundir.trained_epochs(saved)


def _frozen_probe(run: LoadedRun, test_loader, precision: str, knn_k: int, linear_epochs: int) -> dict:
    """gssl.contrastive.frozen_eval of the features the run's scenario judges, with its probe settings."""
    cfg, data, device = run.cfg, run.data, run.device
    scenario = scenario_class(cfg)
    options = scenario.probe_options(cfg)
    return frozen_eval(
        scenario.features(run.model),
        ordered_loader(data.train, data, 512, device),
        test_loader,
        len(data.train.classes),
        device_type=device.type,
        precision=precision,
        knn_k=knn_k,
        knn_temperature=options.knn_temperature,
        linear_epochs=linear_epochs,
        linear_lr=options.linear_lr,
        seed=cfg.seed,
    )


def _checked_protocol(cfg, run_dir: Path, protocol, attack, knn_k, linear_epochs) -> tuple[str, int, int]:
    """The protocol and its k-NN / linear settings, the run's own where not given; ConfigError (exit 2)
    for a combination that cannot be evaluated, before anything is loaded."""
    from .config import ConfigError

    classifier = has_classifier(cfg)
    protocol = protocol or ("classifier" if classifier else "linear")
    if protocol == "classifier" and not classifier:
        raise ConfigError(
            f"{run_dir} is a contrastive pre-training run: it has no classifier. Use --protocol linear "
            "or --protocol knn"
        )
    if attack is not None and protocol != "classifier":
        raise ConfigError(
            "--attack needs the run's classifier (--protocol classifier); the linear and k-NN "
            "protocols train or look up a head after the fact"
        )
    options = scenario_class(cfg).probe_options(cfg)
    knn_k = options.knn_k if knn_k is None else knn_k
    if linear_epochs is None:  # the final evaluation keeps a run judged by k-NN alone (linear_epochs 0)
        linear_epochs = options.linear_epochs if protocol == "final" else (options.linear_epochs or 100)
    fewest = 0 if protocol == "final" else 1
    if knn_k < 1 or linear_epochs < fewest:
        raise ConfigError(f"--knn-k ({knn_k}) must be >= 1 and --linear-epochs ({linear_epochs}) >= {fewest}")
    return protocol, knn_k, linear_epochs


def read_config(run_dir: Path, data_root: str | Path | None = None):
    """A run directory's resolved configuration (RunDirError if it is not one), with the data looked for at
    `data_root` if given: the same run, its data moved (config.LOCATION_KEYS)."""
    from .config import load_yaml
    from .runconfig import from_dict

    check_run_dir(run_dir)
    return with_data_root(from_dict(load_yaml(Path(run_dir) / rundir.CONFIG)), data_root)


def check_run_dir(run_dir: Path) -> None:
    """RunDirError (exit 2) unless run_dir holds a run's config.yaml."""
    if not (Path(run_dir) / rundir.CONFIG).is_file():
        raise rundir.RunDirError(
            f"{run_dir} is not a gssl run directory (no {rundir.CONFIG}); "
            "pass the --out folder of a `gssl train` run"
        )


def with_data_root(cfg, data_root: str | Path | None):
    if data_root is not None:
        cfg.data.root = str(Path(data_root).expanduser())
    return cfg


def has_classifier(cfg) -> bool:
    """Whether the run's network ends in a classifier (a contrastive one is judged on frozen features)."""
    return scenario_class(cfg).has_classifier


@dataclass
class LoadedRun:
    cfg: object  # gssl.config.Config
    model: torch.nn.Module  # in eval mode, with the weights the run is judged by
    data: Data
    device: torch.device
    epoch: int  # the checkpoint's epoch (0-based)
    checkpoint: str


def load_run(run_dir: Path, checkpoint: str = "last", cfg=None) -> LoadedRun:
    """The run's data and model rebuilt from its config and checkpoint, with the weights its method's
    evaluation judges (Scenario.load_eval_weights: FixMatch's EMA), as its own evaluation used: `gssl
    eval`, `gssl report` and `gssl analyze` all load through here."""
    cfg = cfg or read_config(run_dir)
    device = pick_device(cfg.device)
    data = build_data(cfg)
    model = build_model(cfg, len(data.train.classes), data.train.images.shape[1]).to(device)
    path = Path(run_dir) / rundir.CKPT_DIR / f"{checkpoint}.pt"
    saved = rundir.load_checkpoint(path, map_location=device)
    rundir.restore(model, saved, path)
    scenario_class(cfg).load_eval_weights(model, saved)
    return LoadedRun(cfg, model.eval(), data, device, rundir.trained_epochs(saved), checkpoint)


def write_eval(
    run_dir: Path,
    checkpoint: str,
    epoch: int,
    logits,
    labels,
    data: Data,
    extra: dict | None = None,
    name: str | None = None,
) -> dict:
    """`gssl eval`'s report of a checkpoint, written to RUN_DIR/<name>.json (eval-<checkpoint>) and
    returned."""
    rep = metrics.report(logits, labels, data.counts)
    name = name or f"eval-{checkpoint}"
    rep.update(
        {
            "checkpoint": checkpoint,
            "epoch": epoch,
            rundir.EPOCHS_FROM: 1,
            "classes": data.train.classes,
            "class_counts": data.counts,
            "protocol": "classifier",
            "file": f"{name}.json",
            **(extra or {}),
        }
    )
    rundir.write_json(Path(run_dir) / f"{name}.json", rep)
    return rep
