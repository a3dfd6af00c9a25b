"""`gssl eval`: a saved run's checkpoint on the test set, clean and, if asked, under attack."""
from __future__ import annotations

from pathlib import Path

from . import attacks, metrics, rundir
from .build import Data, build_data, build_model, ordered_loader, pick_device
from .contrastive import frozen_eval
from .step import resolve_precision


def evaluate_run(run_dir: Path, checkpoint: str = "last", attack: attacks.Attack | None = None, *,
                 protocol: str | None = None, knn_k: int | None = None, linear_epochs: int | None = None) -> dict:
    """Rebuild the model from the run's saved config and evaluate a checkpoint on the test set; with
    `attack`, also the accuracy under it (pixel-space L-inf, model in eval mode). protocol: "classifier"
    (the run's own head; the default), "linear" or "knn" (on the frozen backbone's pooled features, the
    training images un-augmented; the default for contrastive runs, which have no classifier). knn_k and
    linear_epochs default to the run's own contrastive settings, so the default reproduces its summary."""
    from .config import ConfigError, from_dict, load_yaml
    run_dir = Path(run_dir)
    cfg_path = run_dir / rundir.CONFIG
    if not cfg_path.is_file():
        raise rundir.RunDirError(f"{run_dir} is not a gssl run directory (no {rundir.CONFIG}); "
                                 "pass the --out folder of a `gssl train` run")
    cfg = from_dict(load_yaml(cfg_path))
    protocol = protocol or ("linear" if cfg.contrastive.views else "classifier")
    if protocol == "classifier" and cfg.contrastive.views:
        raise ConfigError(f"{run_dir} is a contrastive pre-training run: it has no classifier. Use --protocol linear "
                          "or --protocol knn")
    if attack is not None and protocol != "classifier":
        raise ConfigError("--attack needs the run's classifier (--protocol classifier); the linear and k-NN "
                          "protocols train or look up a head after the fact")
    knn_k = cfg.contrastive.knn_k if knn_k is None else knn_k
    linear_epochs = (cfg.contrastive.linear_epochs or 100) if linear_epochs is None else linear_epochs
    if knn_k < 1 or linear_epochs < 1:
        raise ConfigError(f"--knn-k ({knn_k}) and --linear-epochs ({linear_epochs}) must be >= 1")
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    data = build_data(cfg)
    model, ck = load_model(run_dir, cfg, checkpoint, data, device)
    loader = ordered_loader(data.test, data, 512, device)
    extra = {}
    if protocol == "classifier":
        logits, labels = metrics.predict(model, loader, device.type, precision)
    else:
        fe = frozen_eval(model.backbone, ordered_loader(data.train, data, 512, device), loader, len(data.train.classes), device_type=device.type,
                         precision=precision, knn_k=knn_k, knn_temperature=cfg.contrastive.knn_temperature,
                         linear_epochs=linear_epochs if protocol == "linear" else 0, linear_lr=cfg.contrastive.linear_lr,
                         seed=cfg.seed)
        logits, labels = fe["logits"], fe["labels"]
        extra.update({"knn_acc": fe["knn_acc"], "protocol": f"{protocol} ({f'{knn_k}-NN' if protocol == 'knn' else f'{linear_epochs} epochs'}"
                      " on the frozen backbone)"})
    if attack is not None:
        clean, robust = attacks.robust_accuracy(model, loader, attacks.PixelSpace(data.mean, data.std, device), attack,
                                                precision=precision, seed=cfg.seed)
        extra.update({"clean_acc": clean, "robust_acc": robust, "attack": vars(attack).copy()})
    return write_eval(run_dir, checkpoint, int(ck["epoch"]), logits, labels, data, extra,
                      name=f"eval-{checkpoint}" + ("" if protocol == "classifier" else f"-{protocol}"))


def load_model(run_dir: Path, cfg, checkpoint: str, data: Data, device) -> tuple:
    """(model with the weights a run is judged by, the checkpoint): the EMA weights where the run kept an
    EMA (FixMatch), as its per-epoch and final evaluation used; `gssl eval`, `gssl report` and
    `gssl analyze` all load through here."""
    model = build_model(cfg, len(data.train.classes), data.train.images.shape[1]).to(device)
    ck_path = Path(run_dir) / rundir.CKPT_DIR / f"{checkpoint}.pt"
    ck = rundir.load_checkpoint(ck_path, map_location=device)
    rundir.restore(model, ck, ck_path)
    if "ema" in ck:
        model.load_state_dict({k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")})
    return model, ck


def write_eval(run_dir: Path, checkpoint: str, epoch: int, logits, labels, data: Data, extra: dict | None = None,
               name: str | None = None) -> dict:
    """`gssl eval`'s report of a checkpoint, written to RUN_DIR/<name>.json (eval-<checkpoint>) and returned."""
    rep = metrics.report(logits, labels, data.counts)
    name = name or f"eval-{checkpoint}"
    rep.update({"checkpoint": checkpoint, "epoch": epoch, "classes": data.train.classes, "class_counts": data.counts,
                "protocol": "classifier", "file": f"{name}.json", **(extra or {})})
    rundir.write_json(Path(run_dir) / f"{name}.json", rep)
    return rep
