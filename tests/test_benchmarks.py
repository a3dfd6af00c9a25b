"""The benchmark suite runs end to end (a smoke check, not a timing test): `benchmarks/run.py --quick`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.exhaustive
def test_benchmark_suite_runs_every_section_and_writes_its_json(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--quick",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {"env", "step", "transform", "loader", "epoch", "sweep"} <= set(res)
    assert res["env"]["torch"] and res["env"]["quick"] is True
    steps = {(row["layout"], row["variant"]): row for row in res["step"]}
    layouts = ["eager", "channels_last", "compiled"]  # --quick: one compiled layout (run.py's docstring)
    assert set(steps) == {(lay, v) for lay in layouts for v in ("plain", "+ LoRot-E", "+ gated triple")}
    assert len(res["step"]) == len(steps)
    assert {r["precision"] for r in steps.values()} == {"fp32"}  # bf16 against fp32 on CUDA only
    assert all(r["images_per_s"] > 0 and r["first_call_s"] > 0 for r in steps.values())
    assert all(r["vs_plain_median"] == 1.0 for (_, v), r in steps.items() if v == "plain")
    assert all(r["speedup_paired"] == 1.0 for (lay, _), r in steps.items() if lay == "eager")
    for (lay, _), row in steps.items():  # compiled rows ran compiled, their compile time apart
        compiled = lay.startswith("compiled")
        assert row["compiled"] is compiled and row["channels_last"] is lay.endswith("channels_last")
        assert (row["compile_s"] is not None, row["compiled_calls"] > 0) == (compiled, compiled)
        assert row["compile_fallbacks"] == 0
    assert res["transform"]["per-sample loop (reference)"]["median_s"] > 0
    assert res["loader"]["results"][0]["images_per_s"] > 0
    assert [row["variant"] for row in res["epoch"]] == ["plain", "+ LoRot-E", "+ gated triple"]
    assert [row["parallel"] for row in res["sweep"]] == [1, 2] and res["sweep"][0]["vs_one"] == 1.0
    for section in ("[step]", "[transform]", "[loader]", "[epoch]", "[sweep]"):
        assert section in r.stdout  # each prints its table


def _probe(data_root, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`benchmarks/pretext_probe.py --data DATA_ROOT ARGS...`, its output captured."""
    script = str(ROOT / "benchmarks" / "pretext_probe.py")
    return subprocess.run(
        [sys.executable, script, "--data", str(data_root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_pretext_probe_prints_each_named_heads_accuracy(fake_cifar10):
    """`benchmarks/pretext_probe.py` (docs/results.md, results/pretext-probe/) trains what it names: a line
    every --every steps with one accuracy per task, and the objective it was asked for in its header."""
    r = _probe(
        fake_cifar10,
        *("--tasks", "lorot", "flip", "channel", "--flip-axis", "W", "--no-hflip", "--joint", "--clean-cls"),
        *("--steps", "4", "--every", "2", "--set", "data.imbalance=0.5"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0] == (
        "# head cosine, scale 1.0, joint, ratio 0.1, class loss on the clean batch; "
        "tasks lorot flip channel, flip axis W; crop"
    )
    steps = [line for line in lines if line.startswith("step")]
    assert [line.split()[1] for line in steps] == ["2", "4"]
    for line in steps:
        accuracies = [float(word.rstrip("%")) for word in line.split() if word.endswith("%")]
        assert len(accuracies) == 4 and all(0 <= accuracy <= 100 for accuracy in accuracies)
        assert "lorot" in line and "flip" in line and "channel" in line and "class" in line


def test_the_pretext_probe_refuses_a_clean_class_loss_without_the_class_loss(fake_cifar10):
    """--clean-cls moves the class loss, which the probe trains only with --joint: asked alone it would
    measure nothing different, so the probe says so and exits 2."""
    r = _probe(fake_cifar10, "--clean-cls", timeout=120)
    assert r.returncode == 2 and "add --joint" in r.stderr and r.stdout == ""
