"""The redesign's promises: the loop names no scenario, a new scenario is one module plus a registry line
(the Mixup of docs/design.md, executed from the document itself), and no function is over 100 lines."""

import ast
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import TWO_EPOCHS_EVERY_EVENT, train_preset
from gssl.cli import main
from gssl.scenarios import SCENARIOS, WRAPPERS

SRC = Path(__file__).resolve().parents[1] / "src" / "gssl"
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def test_the_loop_file_names_no_scenario():
    engine = (SRC / "engine.py").read_text().lower()
    words = {
        *SCENARIOS,
        *WRAPPERS,
        "fixmatch",
        "simclr",
        "sla",
        "semi",
        "contrastive",
        "views",
        "ema",
        "adv",
        "attack",
        "pretrain",
        "unlabeled",
        "unlabelled",
        "fusion",
        "drw",
        "mixup",
    }
    found = sorted(w for w in words if re.search(rf"\b{re.escape(w)}\b", engine))
    assert not found, f"engine.py names {found}"


def test_no_function_in_the_package_is_longer_than_100_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 100:
                    long.append(f"{path.relative_to(SRC)}:{node.name} ({lines})")
    assert not long


def _design_toy_scenario() -> str:
    text = DESIGN.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    toy = [b for b in blocks if 'SCENARIOS["mixup"] = Mixup' in b]
    assert len(toy) == 1, "docs/design.md should hold the Mixup scenario once"
    return toy[0]


def test_the_documented_toy_scenario_trains_through_fit(fake_cifar10, tmp_path, monkeypatch):
    monkeypatch.setitem(SCENARIOS, "mixup", None)  # the block below registers it; removed after the test
    namespace: dict = {}
    exec(compile(_design_toy_scenario(), str(DESIGN), "exec"), namespace)
    assert SCENARIOS["mixup"] is namespace["Mixup"]
    out = tmp_path / "mixup"
    train_preset(
        "cifar10-lt0.01-erm", fake_cifar10, out, "method=mixup", "compile=false", *TWO_EPOCHS_EVERY_EVENT
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "mixup" and len(rows) == 2
    # the scenario's own statistic reached the log: a mean of lambda ~ U(0, 1) over the epoch's batches
    assert all(0.0 < row["mix_lambda"] < 1.0 for row in rows)
    assert len({row["mix_lambda"] for row in rows}) == 2  # drawn afresh every epoch
    assert (out / "checkpoints" / "last.pt").is_file() and 0 <= summary["test_acc"] <= 100
    # its config.yaml names it, and a resumed run finds it again
    assert "method: mixup" in (out / "config.yaml").read_text()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0


def test_an_unknown_method_is_refused_with_the_list(fake_cifar10, tmp_path, capsys):
    argv = ["train", "--preset", "quickstart", "--set", "method=mixup", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert re.search(
        r"method: 'mixup' is not a gssl method; choose one of \['supervised', 'sla-sd'",
        capsys.readouterr().err,
    )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("method", sorted(SCENARIOS))
def test_every_scenario_declares_what_fit_needs(method):
    scenario = SCENARIOS[method]
    for hook in ("prepare", "loss", "batches", "evaluate_epoch", "evaluate_final", "build_model"):
        assert callable(getattr(scenario, hook)), hook


def _broken(plain_tuple=False, stats=None):
    """Supervised with its hand-off (a plain tuple) or its statistics (`stats(original, batch)`) broken."""
    from gssl.scenarios.supervised import Supervised

    class Broken(Supervised):
        if plain_tuple:

            def prepare(self, x, y, generator, epoch, step):
                return tuple(Supervised.prepare(self, x, y, generator, epoch, step))

        if stats is not None:

            @staticmethod
            def loss(model, *batch):
                loss, original = Supervised.loss(model, *batch)
                return loss, stats(original, batch)  # batch: the fields, unnamed

    return Broken


@pytest.mark.parametrize(
    "broken, message",
    [
        (_broken(plain_tuple=True), r"Broken.prepare must return a NamedTuple of loss's arguments"),
        (
            _broken(stats=lambda s, _: {k: v for k, v in s.items() if k != "correct"}),
            r"Broken.loss's stats lack \['correct'\]; every scenario reports \['loss', 'correct'\]",
        ),
        (
            _broken(stats=lambda s, args: {**s, "per_image": args[1].float()}),
            r"Broken.loss's stats\['per_image'\] must be a tensor of shape \(\) .* got \(16,\)",
        ),
        (_broken(stats=lambda s, _: {**s, "ratio": 0.5}), r"stats\['ratio'\] must be a tensor .* got float"),
    ],
)
def test_a_step_that_breaks_the_hand_off_or_stats_contract_fails_at_once_naming_it(
    broken, message, fake_cifar10, tmp_path
):
    from gssl import engine
    from gssl.config import parse_set
    from gssl.distributed import Dist
    from gssl.presets import resolve

    sets = [f"data.root={fake_cifar10}", "compile=false", *TWO_EPOCHS_EVERY_EVENT]
    cfg = resolve("cifar10-lt0.01-erm", sets=[parse_set(s) for s in sets])
    ctx = engine.build_context(cfg, tmp_path / "run", Dist(), "cpu", quiet=True)
    with pytest.raises(TypeError, match=message):
        engine.fit(ctx, broken(ctx), log=lambda *_: None)
    assert (
        not (tmp_path / "run" / "metrics.jsonl").exists()
        or not (tmp_path / "run" / "metrics.jsonl").read_text()
    )  # it failed on the first step, before any epoch's row


def test_the_unbroken_supervised_step_keeps_both_contracts(fake_cifar10, tmp_path):
    """The check itself passes the real scenario's step (so the refusals above are about the breakage)."""
    from gssl import engine, scenarios
    from gssl.config import parse_set
    from gssl.distributed import Dist
    from gssl.presets import resolve
    from gssl.scenarios.base import Batch, check_step

    sets = [f"data.root={fake_cifar10}", "compile=false", *TWO_EPOCHS_EVERY_EVENT]
    cfg = resolve("cifar10-lt0.01-gated-triple", sets=[parse_set(s) for s in sets])
    ctx = engine.build_context(cfg, tmp_path / "run", Dist(), "cpu", quiet=True)
    scenario = scenarios.build(ctx)
    x, y = next(iter(scenario.batches(0)[0]))
    batch = scenario.prepare(x, y, torch.Generator().manual_seed(0), 0, 0)
    assert isinstance(batch, Batch) and batch.params  # named, with the pretext draws
    _, stats = scenario.loss(ctx.model, *batch)
    check_step(scenario, batch, stats)
    assert {"loss", "correct", "cls_loss"} <= stats.keys()
