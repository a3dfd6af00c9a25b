"""End to end on the real CIFAR-10 copy (skipped when it is absent): gated training through the CLI."""

import json

import pytest
import torch
import yaml

from conftest import shared_data_dir
from gssl import rundir
from gssl.cli import main
from gssl.data import long_tail_counts

ARCHIVE = shared_data_dir() / "cifar-10-jpg.tar.gz"


@pytest.mark.skipif(
    not ARCHIVE.exists(), reason=f"real CIFAR-10 copy not found at {ARCHIVE} (set GSSL_SHARED_DATA)"
)
def test_gated_training_on_real_long_tailed_cifar10(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--preset",
            "cifar10-lt0.01-gated-triple",
            "--out",
            str(out),
            "--quiet",
            "--set",
            f"data.root={ARCHIVE}",
            "--set",
            "data.max_per_class=600",
            "--set",
            "data.imbalance=0.2",
            "--set",
            "data.test_limit=2000",
            "--set",
            "model.backbone=resnet8",
            "--set",
            "optim.epochs=5",
            "--set",
            "optim.base_epochs=5",
            "--set",
            "optim.warmup_epochs=1",
            "--set",
            "optim.milestones=[4]",
            "--set",
            "loss.drw_epoch=4",
            "--set",
            "diagnose_every=0",  # the gradient diagnostic has tests of its own (tests/test_diagnostics.py)
        ]
    )
    assert code == 0
    assert "final test accuracy" in capsys.readouterr().out

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["ssl"]["tasks"] == ["lorot", "flip", "channel"] and cfg["ssl"]["gate"] == "reference"
    rows = rundir.read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(abs(sum(r[f"gate_{t}"] for t in ("lorot", "flip", "channel")) - 1) < 1e-4 for r in rows)
    s = json.loads((out / "summary.json").read_text())
    assert s["class_counts"] == long_tail_counts(600, 10, 0.2)
    assert s["test_acc"] > 20, s["test_acc"]  # chance is 10%; this run measured 26.1% (ResNet-8, 2026-12-07)
    assert len(s["per_class_acc"]) == 10 and s["many_shot_acc"] is not None
    for name in ("last", "best"):
        ck = torch.load(out / "checkpoints" / f"{name}.pt", weights_only=True)
        assert ck["epoch"] in range(5)
