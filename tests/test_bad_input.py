"""Bad input: each is a clear error with exit code 2, and nothing is lost.

"Nothing lost" is checked the hard way: every command names an earlier run as --out *with --force*,
so a refusal that came after the old run was cleared would show. Already covered elsewhere:
unknown preset and unknown key with the closest valid one, existing --out without --force
(tests/test_cli.py); refusals at the configuration level (tests/test_config.py); random values
for every key (tests/test_config_fuzz.py).
"""

import hashlib
import re
import tarfile

import pytest

from conftest import ONE_EPOCH_SETS, train_argv
from gssl.cli import main
from gssl.data import fakes


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def old_run(tmp_path):
    """An earlier run's files in --out, which a refused command must leave exactly as they are."""
    run = tmp_path / "old-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "metrics.jsonl").write_text('{"epoch": 0, "test_acc": 50.0}\n')
    (run / "summary.json").write_text('{"test_acc": 50.0}\n')
    (run / "checkpoints" / "last.pt").write_bytes(b"weights")
    return run


def _train(root, out, *sets, preset="cifar10-lt0.01-gated-triple"):
    return [*train_argv(root, out, *ONE_EPOCH_SETS, *sets, preset=preset), "--force"]


def _refused(argv, old_run, capsys, *fragments):
    before = _snapshot(old_run)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gssl: error: ") and "Traceback" not in err
    for f in fragments:
        assert re.search(f, err), (f, err)
    assert _snapshot(old_run) == before
    return err


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("data.imbalance=0", [r"data\.imbalance: 0(\.0)? is not allowed; expected a ratio in \(0, 1\]"]),
        ("data.imbalance=1.5", [r"data\.imbalance: 1\.5 is not allowed"]),
        ("data.imbalance=-0.1", [r"data\.imbalance: -0\.1 is not allowed"]),
        ("data.imbalance=.nan", [r"data\.imbalance: expected a finite number"]),
        ("ssl.ratio=-0.1", [r"ssl\.ratio: -0\.1 is not allowed; expected a finite number >= 0"]),
        ("ssl.ratio=abc", [r"ssl\.ratio: expected a number, got 'abc'"]),
        ("ssl.ratio=[0.1]", [r"ssl\.ratio: expected a finite number"]),
        ("ssl.ratio=.inf", [r"ssl\.ratio: expected a finite number"]),
        (
            "ssl.tasks=[lorot,puzzle]",
            [r"ssl\.tasks.*distinct tasks from \[lorot, flip, channel, lorot_i, rotation, jigsaw\]"],
        ),
        ("ssl.tasks=[lorot,jigsaw]", [r"ssl\.tasks.*all acting on one region: quadrant tasks"]),
        ("ssl.tasks=[flip,flip]", [r"ssl\.tasks.*distinct"]),
        (
            "ssl.gate=moe",
            [
                r"ssl\.gate: 'moe' is not allowed; choose one of \['reference', 'learned', 'uniform', "
                r"'uncertainty', 'gradnorm', 'gcs', 'dwa', 'none'\]"
            ],
        ),
        ("optim.batch_size=0", [r"optim\.batch_size: 0 is not allowed; expected an integer >= 1"]),
        ("optim.batch_size=-8", [r"optim\.batch_size: -8 is not allowed"]),
        ("optim.epochs=0", [r"optim\.epochs: 0 is not allowed; expected an integer >= 1"]),
        ("optim.epochs=1.5", [r"optim\.epochs: expected an integer, got 1\.5"]),
        ("optim.lrr=0.1", [r"did you mean 'optim\.lr'"]),
    ],
)
def test_bad_values_exit_2_and_name_the_key(fake_cifar10, old_run, capsys, override, fragments):
    _refused(_train(fake_cifar10, old_run, override), old_run, capsys, *fragments)


def test_unknown_preset(fake_cifar10, old_run, capsys):
    _refused(
        _train(fake_cifar10, old_run, preset="cifar10-lt0.01-gated-tripel"),
        old_run,
        capsys,
        r"unknown preset 'cifar10-lt0\.01-gated-tripel'; did you mean 'cifar10-lt0\.01-gated-triple'",
    )


def test_missing_dataset(tmp_path, old_run, capsys):
    _refused(
        _train(tmp_path / "nowhere", old_run),
        old_run,
        capsys,
        r"cifar10: root '.*nowhere' does not exist\. Expected cifar-10-batches-py/",
        r"To fix: point data\.root at the dataset folder.*\(`gssl train`/`sweep`: --set data\.root=DIR;",
    )


def test_dataset_one_folder_too_deep(tmp_path, old_run, capsys):
    fakes.write_cifar(tmp_path / "data" / "downloads")
    _refused(
        _train(tmp_path / "data", old_run),
        old_run,
        capsys,
        r"looked in '.*data' for cifar-10-batches-py/",
        r"It seems to be in '.*downloads'",
    )


def test_another_dataset_where_cifar10_was_expected(tmp_path, old_run, capsys):
    fakes.write_cifar(tmp_path / "data", "cifar100", n_train=100, n_test=100)
    _refused(
        _train(tmp_path / "data", old_run),
        old_run,
        capsys,
        r"holds cifar100, not cifar10: is data\.name right",
    )


def test_an_archive_that_is_not_the_expected_one(tmp_path, old_run, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not images")
    archive = tmp_path / "cifar-10-jpg.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(tmp_path / "notes", arcname="notes")
    _refused(
        _train(archive, old_run),
        old_run,
        capsys,
        r"cifar10: '.*cifar-10-jpg\.tar\.gz' is not a cifar10 dataset .*Expected cifar-10-batches-py/",
    )


def test_a_tiny_imagenet_archive_given_as_cifar10(tmp_path, old_run, capsys):
    """Its train/<wnid>/images/ folders hold no image directly: not an "empty folder" to fix."""
    tiny, _ = fakes.write_tiny_imagenet(tmp_path / "src", n_classes=2, n_train=2, n_val=1, size=8)
    archive = fakes.make_tar(tiny, tmp_path / "tiny-imagenet-200-64px.tar.gz")
    err = _refused(
        _train(archive, old_run),
        old_run,
        capsys,
        r"cifar10: '.*tiny-imagenet-200-64px\.tar\.gz' is not a cifar10 dataset \(no train split",
        r"Expected cifar-10-batches-py/",
    )
    assert "empty folder" not in err


def test_imbalance_that_empties_classes(tmp_path, old_run, capsys):
    fakes.write_cifar(tmp_path / "data", n_train=50, n_test=20)  # 5 images a class: 0.01 keeps int(0.05) = 0
    _refused(
        _train(tmp_path / "data", old_run, "data.imbalance=0.01"),
        old_run,
        capsys,
        r"data\.imbalance=0\.01: the long tail leaves \d+ of 10 classes with no training images",
    )


def test_quadrant_tasks_on_odd_sided_images(tmp_path, old_run, capsys):
    root, _ = fakes.write_folder(tmp_path / "odd", ["a", "b"], n_train=3, n_test=2, size=31)
    _refused(
        _train(root, old_run, "data.name=folder", "data.imbalance=1"),
        old_run,
        capsys,
        r"ssl\.tasks: quadrant pretext tasks need even image sides, but folder images are 31x31",
    )


def test_odd_sided_images_train_without_pretext_tasks(tmp_path, capsys):
    """The refusal above is about the tasks, not the images: ssl.tasks=[] trains on them."""
    root, _ = fakes.write_folder(tmp_path / "odd", ["a", "b"], n_train=3, n_test=2, size=31)
    out = tmp_path / "run"
    argv = _train(root, out, "data.name=folder", "data.imbalance=1", "ssl.tasks=[]", "optim.batch_size=4")
    assert main(argv) == 0
    assert (out / "summary.json").exists()
