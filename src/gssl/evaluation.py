"""`gssl eval`: a saved run's checkpoint on the test set, clean and, if asked, under attack."""
from __future__ import annotations

from pathlib import Path

from . import attacks, metrics, rundir
from .build import Data, build_data, build_model, pick_device
from .data import DeviceLoader


def evaluate_run(run_dir: Path, checkpoint: str = "last", attack: attacks.Attack | None = None) -> dict:
    """Rebuild the model from the run's saved config and evaluate a checkpoint on the test set; with
    `attack`, also the accuracy under it (pixel-space L-inf, model in eval mode)."""
    from .config import from_dict, load_yaml
    run_dir = Path(run_dir)
    cfg_path = run_dir / rundir.CONFIG
    if not cfg_path.is_file():
        raise rundir.RunDirError(f"{run_dir} is not a gssl run directory (no {rundir.CONFIG}); "
                                 "pass the --out folder of a `gssl train` run")
    cfg = from_dict(load_yaml(cfg_path))
    device = pick_device(cfg.device)
    data = build_data(cfg)
    model = build_model(cfg, len(data.train.classes), data.train.images.shape[1]).to(device)
    ck_path = run_dir / rundir.CKPT_DIR / f"{checkpoint}.pt"
    ck = rundir.load_checkpoint(ck_path, map_location=device)
    rundir.restore(model, ck, ck_path)
    if "ema" in ck:  # FixMatch runs are judged by their EMA weights, as in training
        model.load_state_dict({k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")})
    loader = DeviceLoader(data.test.images, data.test.labels, 512, mean=data.mean, std=data.std,
                          crop_padding=0, hflip=False, shuffle=False, device=device)
    logits, labels = metrics.predict(model, loader, device.type, amp=device.type == "cuda")
    extra = {}
    if attack is not None:
        clean, robust = attacks.robust_accuracy(model, loader, attacks.PixelSpace(data.mean, data.std, device), attack,
                                                amp=device.type == "cuda", seed=cfg.seed)
        extra = {"clean_acc": clean, "robust_acc": robust, "attack": vars(attack).copy()}
    return write_eval(run_dir, checkpoint, int(ck["epoch"]), logits, labels, data, extra)


def write_eval(run_dir: Path, checkpoint: str, epoch: int, logits, labels, data: Data, extra: dict | None = None) -> dict:
    """`gssl eval`'s report of a checkpoint, written to RUN_DIR/eval-<checkpoint>.json and returned."""
    rep = metrics.report(logits, labels, data.counts)
    rep.update({"checkpoint": checkpoint, "epoch": epoch, "classes": data.train.classes, "class_counts": data.counts,
                **(extra or {})})
    rundir.write_json(Path(run_dir) / f"eval-{checkpoint}.json", rep)
    return rep
