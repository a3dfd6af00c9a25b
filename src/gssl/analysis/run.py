"""A finished (or running) run directory, read for analysis: its files, and its model rebuilt.

Reading config.yaml, metrics.jsonl and summary.json is cheap and needs no torch work; the model and
the test data are only rebuilt (`Run.loaded()`) for figures that need them: Grad-CAM, t-SNE, and
the confusion matrix when no up-to-date eval-<checkpoint>.json is there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from .. import rundir
from ..config import Config
from ..data import first_per_class
from ..evaluation import (
    LoadedRun,
    check_run_dir,
    evaluate_run,
    has_classifier,
    load_run,
    read_config,
    scenario_class,
)
from ..gating import pretext_on


@dataclass
class Run:
    path: Path
    checkpoint: str = "last"
    name: str = ""
    data_root: str | None = None  # where the data lies now, if it has moved since the run
    _loaded: LoadedRun | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        check_run_dir(self.path)
        self.name = self.name or self.path.resolve().name

    @cached_property
    def cfg(self) -> Config:
        return read_config(self.path, self.data_root)

    @cached_property
    def rows(self) -> list[dict]:
        return rundir.read_metrics(self.path)

    @cached_property
    def summary(self) -> dict:
        p = self.path / rundir.SUMMARY
        return rundir.epochs_from_one(rundir.read_json(p)) if p.is_file() else {}

    @property
    def checkpoint_path(self) -> Path:
        return self.path / rundir.CKPT_DIR / f"{self.checkpoint}.pt"

    @property
    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def classes(self) -> list[str]:
        return self.summary.get("classes") or list(self.loaded().data.test.classes)

    def check_layer(self, layer: str | None) -> None:
        """A Grad-CAM stage this run's backbone has (ConfigError, exit 2, otherwise)."""
        if layer is None:
            return
        from ..config import ConfigError
        from ..models import build_backbone
        from .gradcam import stage_names

        names = stage_names(build_backbone(self.cfg.model.backbone))
        if layer not in names:
            raise ConfigError(
                f"--layer {layer!r}: {self.cfg.model.backbone} ({self.name}) has stages {', '.join(names)}"
            )

    def tasks(self) -> list[str]:
        return list(self.cfg.ssl.tasks) if pretext_on(self.cfg.ssl.tasks, self.cfg.ssl.gate) else []

    def test_split(self):
        """The test images: the rebuilt run's, or read alone where no model is needed (no checkpoint)."""
        if self._loaded is None and not self.has_checkpoint:
            from ..methods.registry import build_data

            return build_data(self.cfg).test
        return self.loaded().data.test

    def loaded(self) -> LoadedRun:
        """Data and model, rebuilt from the saved config and the checkpoint (once per Run)."""
        if self._loaded is None:
            self._loaded = load_run(self.path, self.checkpoint, self.cfg)
        return self._loaded

    def checkpoint_epoch(self) -> int:
        if self._loaded is not None:
            return self._loaded.epoch
        return rundir.trained_epochs(rundir.load_checkpoint(self.checkpoint_path, map_location="cpu"))

    def evaluation(self) -> dict:
        """gssl eval's report for the checkpoint: eval-<checkpoint>.json when it is for this checkpoint's
        epoch, else computed here (and written, as `gssl eval` would)."""
        classifier = has_classifier(self.cfg)  # else a linear probe on the frozen backbone
        p = self.path / f"eval-{self.checkpoint}{'' if classifier else '-linear'}.json"
        if p.is_file():
            rep = rundir.epochs_from_one(rundir.read_json(p))
            if rep.get("epoch") == self.checkpoint_epoch() and "confusion_matrix" in rep:
                return rep
        protocol = "classifier" if classifier else "linear"
        return evaluate_run(self.path, self.checkpoint, protocol=protocol, loaded=self.loaded())


def normalised(ld: LoadedRun, images_uint8: torch.Tensor) -> torch.Tensor:
    from ..data import normalize

    return normalize(images_uint8.to(ld.device), ld.data.mean, ld.data.std)


@torch.inference_mode()
def predict_features(ld: LoadedRun, images: torch.Tensor, labels: torch.Tensor, batch: int = 500):
    """(the run's image representation [N, D], logits [N, classes], labels [N]), float32 on the CPU: the
    pooled backbone features, or a DINO run's teacher's. A run without a classifier has None for logits."""
    feats, logits = [], []
    contrastive = not has_classifier(ld.cfg)
    features = scenario_class(ld.cfg).features(ld.model)
    for i in range(0, len(images), batch):
        f = features(normalised(ld, images[i : i + batch])).float()
        feats.append(f)
        if not contrastive:
            logits.append(ld.model.classifier(f).float())
    return torch.cat(feats).cpu(), None if contrastive else torch.cat(logits).cpu(), labels.clone()


def balanced_indices(labels: torch.Tensor, n: int) -> np.ndarray:
    """At most n indices, about the same number from every class, in dataset order (deterministic)."""
    labels = labels.numpy()
    if n >= len(labels):
        return np.arange(len(labels))
    return first_per_class(labels, max(1, n // len(np.unique(labels))))[:n]


def one_per_class(labels: torch.Tensor, n: int) -> np.ndarray:
    """n test indices for an image grid: the first image of each class in turn, then the second..."""
    labels = labels.numpy()
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    out, rank = [], 0
    while len(out) < n and any(rank < len(b) for b in by_class):
        out += [int(b[rank]) for b in by_class if rank < len(b)]
        rank += 1
    return np.array(out[:n], dtype=np.int64)
