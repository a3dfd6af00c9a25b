"""benchmarks/init_probe.py: a run's frozen-feature probes at initialisation, the floor its self-supervised
training has to clear (docs/selfpatch.md reads the DINO runs against it)."""

import json
import sys
from pathlib import Path

from conftest import DINO_TINY, train_preset
from gssl.data.fakes import write_cifar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import init_probe  # noqa: E402


def test_the_probe_at_init_is_what_a_run_that_never_moves_reports(tmp_path, capsys):
    """A DINO run whose learning rate is too small to change a float32 weight ends where it started, so its
    summary holds the probes of its network at initialisation: the init probe, rebuilding that network
    from the run's config and seed, must report the same numbers. Faintly tinted classes keep them off
    100%, where a wrong build could not show."""
    data = tmp_path / "data"
    write_cifar(data, "cifar10", n_train=200, n_test=100, seed=0, tint=0.15)
    frozen = train_preset("cifar10-dino-vit", data, tmp_path / "frozen", *DINO_TINY, "optim.lr=1e-30")
    summary = json.loads((frozen / "summary.json").read_text())
    at_init = init_probe.probe_at_init(frozen)
    assert set(at_init) == {"test_acc", "knn_test_acc", "patch_knn_test_acc", "patch_linear_test_acc"}
    assert at_init == {key: summary[key] for key in at_init}
    assert 10 < min(at_init.values()) and max(at_init.values()) < 100, at_init
    other_seed = init_probe.probe_at_init(frozen, ["seed=1"])  # another network: other numbers
    assert other_seed != at_init

    assert init_probe.main([str(frozen), "--json", str(tmp_path / "probe.json")]) == 0
    table = capsys.readouterr().out
    knn = at_init["knn_test_acc"]
    assert f"| {frozen} | knn_test_acc | {knn:.2f} | {summary['knn_test_acc']:.2f} | +0.00 |" in table
    written = json.loads((tmp_path / "probe.json").read_text())[str(frozen)]
    assert written["at_init"] == at_init and written["trained"]["test_acc"] == summary["test_acc"]
    # against a later judgement on other test images: the same 40 on both sides, so the frozen run gains 0
    from gssl.cli import main

    assert main(["eval", str(frozen), "--protocol", "final", "--test-limit", "40"]) == 0
    capsys.readouterr()
    argv = [str(frozen), "--summary", "eval-last-final-test40.json", "--set", "data.test_limit=40"]
    assert init_probe.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if str(frozen) in line]
    assert len(rows) == 4 and all(row.endswith("| +0.00 |") for row in rows), rows
    assert not any(f"| {knn:.2f} |" in row for row in rows if "| knn_test_acc |" in row)  # another subset


def test_a_folder_that_is_not_a_run_is_refused_with_exit_code_2_before_any_probe(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("this: is not read, since the other folder is refused first\n")
    assert init_probe.main([str(run), str(tmp_path / "typo")]) == 2
    out = capsys.readouterr()
    assert "typo has no config.yaml; pass gssl run directories" in out.err and out.out == ""
