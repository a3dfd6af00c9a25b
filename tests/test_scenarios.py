"""The redesign's promises: the loop names no scenario, a new way of training is one folder plus its
registry lines (the Mean Teacher of docs/design.md, written from the document itself into a copy of the
package), and no function is over 100 lines."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TWO_EPOCHS_EVERY_EVENT
from gssl import rundir
from gssl.cli import main
from gssl.methods.registry import SCENARIOS, WRAPPERS

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


def _design_walk_through() -> tuple[dict[str, str], str]:
    """The Mean Teacher of docs/design.md: {path: its file}, from the python blocks that start with their
    path, and the registries' diff."""
    text = DESIGN.read_text()
    files = {}
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        first = block.splitlines()[0]
        if first.startswith("# src/gssl/methods/mean_teacher/"):
            files[first[2:]] = block
    diffs = [b for b in re.findall(r"```diff\n(.*?)```", text, flags=re.S) if "mean_teacher" in b]
    assert sorted(files) == [f"src/gssl/methods/mean_teacher/{n}.py" for n in ("scenario", "settings")]
    assert len(diffs) == 1, "docs/design.md should hold the registries' diff once"
    return files, diffs[0]


# In the copy: train (2 epochs), resume, and load the run as `gssl eval` does; print what the test checks.
WALK_THROUGH_RUN = """
import json, sys, torch
from gssl.cli import main
from gssl.evaluation import load_run
from gssl.rundir import load_checkpoint
out, sets = sys.argv[1], sys.argv[2:]
argv = ["train", "--preset", "cifar10-lt0.01-erm", "--out", out, "--quiet"]
assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
assert main(["train", "--resume", out, "--quiet"]) == 0
saved = load_checkpoint(out + "/checkpoints/last.pt")
run = load_run(out)
weights = run.model.state_dict()
same = lambda state: all(torch.equal(weights[k], state["module." + k].cpu()) for k in weights)
print(json.dumps({"judged_teacher": same(saved["teacher"]), "judged_student": same(
    {"module." + k: v for k, v in saved["model"].items()}), "labelled": len(run.data.train.labels),
    "unlabelled": len(run.data.extra["unlabeled"].labels)}))
"""


def test_the_documented_method_is_its_folder_and_registry_lines(fake_cifar10, tmp_path):
    """docs/design.md's Mean Teacher, written into a copy of the package exactly as documented (its
    folder, the registries' diff), trains through fit, resumes, and is judged by its teacher."""
    files, registry_diff = _design_walk_through()
    shutil.copytree(SRC, tmp_path / "src" / "gssl", ignore=shutil.ignore_patterns("__pycache__"))
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text(text)
    (tmp_path / "src/gssl/methods/mean_teacher/__init__.py").write_text("")
    (tmp_path / "registries.diff").write_text(registry_diff)
    subprocess.run(["git", "apply", "registries.diff"], cwd=tmp_path, check=True)
    out = tmp_path / "mean-teacher"
    sets = [f"data.root={fake_cifar10}", "method=mean-teacher", "mean_teacher.labels_per_class=4"]
    sets += ["mean_teacher.ema=0.5", "compile=false", *TWO_EPOCHS_EVERY_EVENT]
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    run = subprocess.run(
        [sys.executable, "-c", WALK_THROUGH_RUN, str(out), *sets], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.splitlines()[-1])
    assert loaded["judged_teacher"] and not loaded["judged_student"]  # its evaluation weights
    # its own data: 4 labelled images of each of the 10 classes, the rest of the long tail unlabelled
    assert loaded["labelled"] == 40 and loaded["unlabelled"] >= 10 * (10 - 4)
    rows = rundir.read_metrics(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "mean-teacher" and [row["epoch"] for row in rows] == [1, 2]
    assert all(row["consistency"] > 0 for row in rows)  # its own statistic reached the log
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"] == "mean-teacher" and saved["mean_teacher"]["labels_per_class"] == 4
    assert "semi" not in saved and (out / "checkpoints" / "last.pt").is_file()


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
    from gssl.methods.supervised.scenario import Supervised

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
    from gssl import engine
    from gssl.config import parse_set
    from gssl.distributed import Dist
    from gssl.methods import registry
    from gssl.methods.base import Batch, check_step
    from gssl.presets import resolve

    sets = [f"data.root={fake_cifar10}", "compile=false", *TWO_EPOCHS_EVERY_EVENT]
    cfg = resolve("cifar10-lt0.01-gated-triple", sets=[parse_set(s) for s in sets])
    ctx = engine.build_context(cfg, tmp_path / "run", Dist(), "cpu", quiet=True)
    scenario = registry.build(ctx)
    x, y = next(iter(scenario.batches(0)[0]))
    batch = scenario.prepare(x, y, torch.Generator().manual_seed(0), 0, 0)
    assert isinstance(batch, Batch) and batch.params  # named, with the pretext draws
    _, stats = scenario.loss(ctx.model, *batch)
    check_step(scenario, batch, stats)
    assert {"loss", "correct", "cls_loss"} <= stats.keys()
