"""`gssl table` on hand-written run records: the whole markdown and CSV text against hand-worked numbers.

Every accuracy below is chosen so that the mean, the sample standard deviation (n - 1) and the paired
differences are easy to check on paper; the expected tables are written out in full, so a change in any
statistic, label, ordering, header or separator shows up as a difference in the text.
"""

import json

import pytest

from gssl import table
from gssl.config import ConfigError, parse_set
from gssl.presets import resolve
from gssl.runconfig import to_yaml

# a shortened protocol every run in a table shares (so it is stated once, under the table)
SHORT = ["optim.epochs=6", "optim.base_epochs=6", "optim.milestones=[4,5]"]


def _run(d, preset, seed, acc=None, sets=(), short=SHORT):
    """A run directory as `gssl train` leaves it: config.yaml, metrics.jsonl and, when finished
    (acc not None), summary.json. Only the keys `gssl table` reads are written to the summary."""
    cfg = resolve(preset, None, [parse_set(s) for s in [*short, *sets, f"seed={seed}"]])
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(to_yaml(cfg))
    (d / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "lr": 0.1, "test_acc": 10.0}) + "\n")
    if acc is not None:
        (d / "summary.json").write_text(json.dumps({"test_acc": acc, "best_test_acc": acc + 1.0}))
    return d


# --- a sweep over three settings ---------------------------------------------------------------------------
# cifar10 0.01: ldam-drw 60 62 64 -> 62 +- 2 (var (4 + 0 + 4) / 2 = 4)
#               lorot    63 66 66 -> 65 +- 1.7321 (var (4 + 1 + 1) / 2 = 3)
#                        minus ldam-drw by seed: 3 4 2 -> 3 +- 1 (var (0 + 1 + 1) / 2 = 1)
#               gated-triple (learned gate): seed 0 65.5 (seeds 1, 2 unfinished) -> 65.5;
#                        minus 60 = 5.5 (one seed: no spread)
#               erm: seed 0 unfinished only -> "-", nothing to pair, seeds 1 and 2 missing
# cifar100 0.01: erm 50 53 -> 51.5 +- 2.1213 (var 4.5); no ldam-drw there, so no difference; no paper number
# tiny-imagenet (balanced: the column is the dataset's name): baseline 40 41 -> 40.5 +- 0.7071 (var 0.5)
#               lorot seed 0 42.25 (seed 1 missing)
# Paper (presets): cifar10 0.01 ldam-drw 77.03 (200 ep.), lorot 81.82 (300 ep.); Tiny-ImageNet baseline 46.68,
# lorot 48.65 (both 300 ep.).


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Written once for the module: the tests only read it."""
    root = tmp_path_factory.mktemp("table") / "sweep"
    for s, a in {0: 60.0, 1: 62.0, 2: 64.0}.items():
        _run(root / "ldam-drw" / f"seed{s}", "cifar10-lt0.01-ldam-drw", s, a)
    for s, a in {0: 63.0, 1: 66.0, 2: 66.0}.items():
        _run(root / "lorot" / f"seed{s}", "cifar10-lt0.01-lorot", s, a)
    learned = ["ssl.gate=learned"]
    _run(root / "learned" / "seed0", "cifar10-lt0.01-gated-triple", 0, 65.5, sets=learned)
    _run(root / "learned" / "seed1", "cifar10-lt0.01-gated-triple", 1, None, sets=learned)
    _run(root / "learned" / "seed2", "cifar10-lt0.01-gated-triple", 2, None, sets=learned)
    _run(root / "erm10" / "seed0", "cifar10-lt0.01-erm", 0, None)
    _run(root / "erm100" / "seed0", "cifar100-lt0.01-erm", 0, 50.0)
    _run(root / "erm100" / "seed1", "cifar100-lt0.01-erm", 1, 53.0)
    _run(root / "tiny-base" / "seed0", "tiny-imagenet-baseline", 0, 40.0)
    _run(root / "tiny-base" / "seed1", "tiny-imagenet-baseline", 1, 41.0)
    _run(root / "tiny-lorot" / "seed0", "tiny-imagenet-lorot", 0, 42.25)
    return root


SWEEP_MD = """\
final-epoch top-1 (%): mean ± std over seeds (number of seeds); Δ paired by seed.

| method | cifar10 0.01 ours | cifar10 0.01 paper (200/300 ep.) | cifar10 0.01 Δ vs ldam-drw \
| cifar100 0.01 ours | cifar100 0.01 paper | cifar100 0.01 Δ vs ldam-drw \
| tiny-imagenet ours | tiny-imagenet paper (300 ep.) | tiny-imagenet Δ vs ldam-drw |
|---|---|---|---|---|---|---|---|---|---|
| ldam-drw | 62.00 ± 2.00 (3) | 77.03 |  |  |  |  |  |  |  |
| baseline |  |  |  |  |  |  | 40.50 ± 0.71 (2) | 46.68 |  |
| erm | - | - | - | 51.50 ± 2.12 (2) | - |  |  |  |  |
| lorot | 65.00 ± 1.73 (3) | 81.82 | +3.00 ± 1.00 (3) |  |  |  | 42.25 (1) | 48.65 |  |
| gated-triple (ssl.gate=learned) | 65.50 (1) | - | +5.50 (1) |  |  |  |  |  |  |

Shared by every run (not the paper's protocol): optim.base_epochs=6, optim.epochs=6, optim.milestones=[4,5]

- erm, cifar10 0.01: seeds [0] unfinished (left out)
- erm, cifar10 0.01: seeds [1, 2] missing
- lorot, tiny-imagenet: seeds [1] missing
- gated-triple (ssl.gate=learned), cifar10 0.01: seeds [1, 2] unfinished (left out)
"""

SWEEP_CSV = """\
method,setting,metric,mean,std,n,seeds,unfinished_seeds,paper,baseline,diff_mean,diff_std,diff_n,paper_epochs
ldam-drw,cifar10 0.01,test_acc,62.0000,2.0000,3,0 1 2,,77.0300,ldam-drw,,,0,200
baseline,tiny-imagenet,test_acc,40.5000,0.7071,2,0 1,,46.6800,ldam-drw,,,0,300
erm,cifar10 0.01,test_acc,,,0,,0,,ldam-drw,,,0,
erm,cifar100 0.01,test_acc,51.5000,2.1213,2,0 1,,,ldam-drw,,,0,
lorot,cifar10 0.01,test_acc,65.0000,1.7321,3,0 1 2,,81.8200,ldam-drw,3.0000,1.0000,3,300
lorot,tiny-imagenet,test_acc,42.2500,,1,0,,48.6500,ldam-drw,,,0,300
gated-triple (ssl.gate=learned),cifar10 0.01,test_acc,65.5000,,1,0,1 2,,ldam-drw,5.5000,,1,
"""


def test_sweep_markdown_is_exactly_the_hand_computed_table(sweep):
    """Mean +- sample std over finished seeds, paper number with its length in the header, the difference
    to ldam-drw paired by seed, empty cells where a row has no runs, the shared protocol and the notes."""
    assert table.markdown(table.find_runs([sweep])) == SWEEP_MD


def test_sweep_csv_is_exactly_the_hand_computed_rows(sweep):
    """The CSV carries the same numbers at four decimals, one line per (row, setting) that has runs."""
    text = table.to_csv(table.find_runs([sweep]))
    assert text == SWEEP_CSV
    assert "\r" not in text  # plain newlines, not the csv module's default \r\n


def test_best_metric_reads_best_test_acc(sweep):
    """--metric best: every finished accuracy is one more (best_test_acc = test_acc + 1), so the means are
    one more, the spreads and paired differences unchanged."""
    md = table.markdown(table.find_runs([sweep]), metric="best")
    assert md.startswith("best-epoch top-1 (%), the epoch chosen on the test set (optimistic): mean ± std")
    assert "| ldam-drw | 63.00 ± 2.00 (3) | 77.03 |" in md
    assert "| lorot | 66.00 ± 1.73 (3) | 81.82 | +3.00 ± 1.00 (3) |" in md


def test_build_defaults_to_the_final_metric_and_handles_no_runs(sweep):
    """build() without a metric reads test_acc; an empty list of runs gives an empty table, not an error."""
    rows, cols, cells, base, shared = table.build(table.find_runs([sweep]))
    assert rows == ["ldam-drw", "baseline", "erm", "lorot", "gated-triple (ssl.gate=learned)"]
    assert cols == ["cifar10 0.01", "cifar100 0.01", "tiny-imagenet"]
    assert base == "ldam-drw"
    assert cells[("ldam-drw", "cifar10 0.01")].accs == {0: 60.0, 1: 62.0, 2: 64.0}
    assert cells[("ldam-drw", "cifar10 0.01")].paper_epochs == 200
    assert shared == [("optim.base_epochs", "6"), ("optim.epochs", "6"), ("optim.milestones", "[4, 5]")]
    assert table.build([]) == ([], [], {}, None, [])


# --- which row is the baseline -----------------------------------------------------------------------------
# ldam-drw with DRW moved to epoch 4 and 2 warm-up epochs (schedule changes: the paper's number stays):
#     70 72 -> 71 +- 1.4142
# lorot with DRW switched off (a change of method: no paper number): 71 75 -> 73 +- 2.8284
# gated-triple: seed 0 73 (seed 1 missing)
# lorot minus ldam-drw: 1 3 -> 2 +- 1.4142; gated-triple minus ldam-drw: 3 (one seed)
# ldam-drw minus lorot: -1 -3 -> -2 +- 1.4142; gated-triple minus lorot: 73 - 71 = 2


@pytest.fixture
def own_settings(tmp_path):
    root = tmp_path / "sweep"
    for s, a in {0: 70.0, 1: 72.0}.items():
        _run(
            root / "ldam" / f"seed{s}",
            "cifar10-lt0.01-ldam-drw",
            s,
            a,
            sets=["loss.drw_epoch=4", "optim.warmup_epochs=2"],
        )
    for s, a in {0: 71.0, 1: 75.0}.items():
        _run(
            root / "lorot-nodrw" / f"seed{s}",
            "cifar10-lt0.01-lorot",
            s,
            a,
            sets=["loss.drw_epoch=null"],
        )
    _run(root / "gated" / "seed0", "cifar10-lt0.01-gated-triple", 0, 73.0)
    return table.find_runs([root])


LDAM4 = "ldam-drw (loss.drw_epoch=4, optim.warmup_epochs=2)"
LOROT_NODRW = "lorot (loss.drw_epoch=None)"
SHARED_LINE = (
    "Shared by every run (not the paper's protocol): "
    "optim.base_epochs=6, optim.epochs=6, optim.milestones=[4,5]"
)

OWN_MD = f"""\
final-epoch top-1 (%): mean ± std over seeds (number of seeds); Δ paired by seed.

| method | cifar10 0.01 ours | cifar10 0.01 paper (200/300 ep.) | cifar10 0.01 Δ vs {LDAM4} |
|---|---|---|---|
| {LDAM4} | 71.00 ± 1.41 (2) | 77.03 |  |
| {LOROT_NODRW} | 73.00 ± 2.83 (2) | - | +2.00 ± 1.41 (2) |
| gated-triple | 73.00 (1) | 81.67 | +3.00 (1) |

{SHARED_LINE}

- gated-triple, cifar10 0.01: seeds [1] missing
"""

OWN_CSV = f"""\
method,setting,metric,mean,std,n,seeds,unfinished_seeds,paper,baseline,diff_mean,diff_std,diff_n,paper_epochs
"{LDAM4}",cifar10 0.01,test_acc,71.0000,1.4142,2,0 1,,77.0300,"{LDAM4}",,,0,200
{LOROT_NODRW},cifar10 0.01,test_acc,73.0000,2.8284,2,0 1,,,"{LDAM4}",2.0000,1.4142,2,
gated-triple,cifar10 0.01,test_acc,73.0000,,1,0,,81.6700,"{LDAM4}",3.0000,,1,300
"""


def test_the_one_ldam_drw_row_with_own_settings_is_the_baseline(own_settings):
    """No row is exactly `ldam-drw`, but one row runs LDAM-DRW (on another schedule): it is the baseline.
    Moving DRW keeps the paper's number; switching it off (the lorot row) is another method and loses it."""
    assert table.markdown(own_settings) == OWN_MD
    assert table.to_csv(own_settings) == OWN_CSV


def test_baseline_given_by_method_name_stands_for_its_one_row(own_settings):
    """--baseline ldam-drw names the one ldam-drw row (own settings and all): the default table."""
    assert table.markdown(own_settings, baseline="ldam-drw") == OWN_MD
    assert table.to_csv(own_settings, baseline="ldam-drw") == OWN_CSV
    assert table.markdown(own_settings, baseline=LDAM4) == OWN_MD  # its full label works too


def test_another_baseline_moves_first_and_the_others_keep_their_order(own_settings):
    """--baseline lorot: the lorot row first, differences against it; ldam-drw then before gated-triple."""
    md = f"""\
final-epoch top-1 (%): mean ± std over seeds (number of seeds); Δ paired by seed.

| method | cifar10 0.01 ours | cifar10 0.01 paper (200/300 ep.) | cifar10 0.01 Δ vs {LOROT_NODRW} |
|---|---|---|---|
| {LOROT_NODRW} | 73.00 ± 2.83 (2) | - |  |
| {LDAM4} | 71.00 ± 1.41 (2) | 77.03 | -2.00 ± 1.41 (2) |
| gated-triple | 73.00 (1) | 81.67 | +2.00 (1) |

{SHARED_LINE}

- gated-triple, cifar10 0.01: seeds [1] missing
"""
    csv_text = f"""\
method,setting,metric,mean,std,n,seeds,unfinished_seeds,paper,baseline,diff_mean,diff_std,diff_n,paper_epochs
{LOROT_NODRW},cifar10 0.01,test_acc,73.0000,2.8284,2,0 1,,,{LOROT_NODRW},,,0,
"{LDAM4}",cifar10 0.01,test_acc,71.0000,1.4142,2,0 1,,77.0300,{LOROT_NODRW},-2.0000,1.4142,2,200
gated-triple,cifar10 0.01,test_acc,73.0000,,1,0,,81.6700,{LOROT_NODRW},2.0000,,1,300
"""
    assert table.markdown(own_settings, baseline="lorot") == md
    assert table.to_csv(own_settings, baseline="lorot") == csv_text


def test_rows_follow_the_paper_order_behind_another_baseline(tmp_path):
    """Behind a chosen baseline the rows keep the paper's order: ldam-drw, the Tiny-ImageNet `baseline`,
    ERM, then the pretext methods."""
    root = tmp_path / "sweep"
    _run(root / "a", "cifar10-lt0.01-gated-triple", 0, 70.0)
    _run(root / "b", "cifar10-lt0.01-erm", 0, 60.0)
    _run(root / "c", "tiny-imagenet-baseline", 0, 40.0)
    _run(root / "d", "cifar10-lt0.01-ldam-drw", 0, 65.0)
    _run(root / "e", "cifar10-lt0.01-lorot", 0, 68.0)
    rows, *_ = table.build(table.find_runs([root]), baseline="gated-triple")
    assert rows == ["gated-triple", "ldam-drw", "baseline", "erm", "lorot"]


def test_a_table_without_a_baseline_row_has_no_differences(tmp_path):
    """Only pretext methods: no baseline; the header says `Δ vs baseline`, the difference cells are empty."""
    root = tmp_path / "sweep"
    _run(root / "lorot" / "seed0", "cifar10-lt0.01-lorot", 0, 70.0)
    _run(root / "gated" / "seed0", "cifar10-lt0.01-gated-triple", 0, 73.0)
    runs = table.find_runs([root])
    assert (
        table.markdown(runs)
        == f"""\
final-epoch top-1 (%): mean ± std over seeds (number of seeds); Δ paired by seed.

| method | cifar10 0.01 ours | cifar10 0.01 paper (300 ep.) | cifar10 0.01 Δ vs baseline |
|---|---|---|---|
| lorot | 70.00 (1) | 81.82 |  |
| gated-triple | 73.00 (1) | 81.67 |  |

{SHARED_LINE}
"""
    )
    assert (
        table.to_csv(runs)
        == """\
method,setting,metric,mean,std,n,seeds,unfinished_seeds,paper,baseline,diff_mean,diff_std,diff_n,paper_epochs
lorot,cifar10 0.01,test_acc,70.0000,,1,0,,81.8200,,,,0,300
gated-triple,cifar10 0.01,test_acc,73.0000,,1,0,,81.6700,,,,0,300
"""
    )


def test_two_rows_of_baseline_methods_with_own_settings_leave_no_baseline(tmp_path):
    """Two LDAM-DRW rows, neither the plain preset: which one is the baseline is ambiguous, so none is."""
    root = tmp_path / "sweep"
    _run(root / "a", "cifar10-lt0.01-ldam-drw", 0, 70.0, sets=["loss.drw_epoch=4"])
    _run(root / "b", "cifar10-lt0.01-ldam-drw", 0, 71.0, sets=["loss.drw_epoch=5"])
    rows, _, _, base, _ = table.build(table.find_runs([root]))
    assert rows == ["ldam-drw (loss.drw_epoch=4)", "ldam-drw (loss.drw_epoch=5)"] and base is None


def test_run_without_a_preset_is_named_by_its_method_with_its_departures_from_the_defaults(tmp_path):
    """A run from a config file without a preset is labelled by its way of training plus the keys where it
    departs from gssl's defaults (not `method`, which every such run sets); it has no paper number.
    50.0 - 52.5 = -2.5 against ldam-drw (seed 0)."""
    root = tmp_path / "sweep"
    d = root / "own"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(to_yaml(resolve(None, None, [parse_set("optim.lr=0.05")])))
    (d / "summary.json").write_text(json.dumps({"test_acc": 50.0}))
    _run(root / "ldam", "cifar10-lt0.01-ldam-drw", 0, 52.5, short=())
    runs = table.find_runs([root])
    assert (
        table.markdown(runs)
        == """\
final-epoch top-1 (%): mean ± std over seeds (number of seeds); Δ paired by seed.

| method | cifar10 0.01 ours | cifar10 0.01 paper (200 ep.) | cifar10 0.01 Δ vs ldam-drw |
|---|---|---|---|
| ldam-drw | 52.50 (1) | 77.03 |  |
| supervised (optim.lr=0.05) | 50.00 (1) | - | -2.50 (1) |
"""
    )


# --- reading run records --------------------------------------------------------------------------------


def test_find_runs_reads_every_path_given_in_order(tmp_path):
    """Several paths: the runs of all of them, each with its directory, config and summary."""
    a = _run(tmp_path / "a" / "seed0", "cifar10-lt0.01-ldam-drw", 0, 60.0)
    b = _run(tmp_path / "b" / "seed1", "cifar10-lt0.01-lorot", 1, None)
    runs = table.find_runs([tmp_path / "a", b])
    assert [r.path for r in runs] == [a, b]
    assert [r.cfg.seed for r in runs] == [0, 1]
    assert runs[0].summary == {"test_acc": 60.0, "best_test_acc": 61.0} and runs[1].summary is None


def test_a_run_directory_passed_directly_is_that_one_run(tmp_path):
    """A path that is itself a run directory is taken alone, even if a sub-folder holds another run."""
    d = _run(tmp_path / "run", "cifar10-lt0.01-ldam-drw", 0, 60.0)
    _run(d / "copied" / "seed1", "cifar10-lt0.01-lorot", 1, 61.0)
    assert [r.path for r in table.find_runs([d])] == [d]
    assert [r.path for r in table.find_runs([tmp_path])] == [d, d / "copied" / "seed1"]


def test_an_unreadable_summary_is_an_error_naming_the_file_and_the_fix(tmp_path):
    d = _run(tmp_path / "run", "cifar10-lt0.01-ldam-drw", 0, None)
    (d / "summary.json").write_text("not json")
    with pytest.raises(ConfigError) as exc:
        table.find_runs([tmp_path])
    assert str(exc.value) == (
        f"{d / 'summary.json'} cannot be read (Expecting value: line 1 column 1 (char 0)); "
        f"re-run `gssl eval {d}` or remove it"
    )


def test_an_invalid_config_is_an_error_naming_the_run(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.yaml").write_text("optim:\n  no_such_key: 1\n")
    with pytest.raises(ConfigError) as exc:
        table.find_runs([tmp_path])
    assert str(exc.value).startswith(f"{d}: ") and "no_such_key" in str(exc.value)


def test_two_runs_of_one_row_and_seed_are_refused_naming_the_second(tmp_path):
    _run(tmp_path / "a" / "seed0", "cifar10-lt0.01-lorot", 0, 60.0)
    second = _run(tmp_path / "b" / "seed0", "cifar10-lt0.01-lorot", 0, 61.0)
    with pytest.raises(ConfigError) as exc:
        table.build(table.find_runs([tmp_path]))
    assert str(exc.value) == (
        f"{second}: a second run of lorot on cifar10 0.01 with seed 0; pass only one of them"
    )


def test_unknown_metric_and_baseline_are_refused_with_the_choices(sweep):
    runs = table.find_runs([sweep])
    with pytest.raises(ConfigError) as exc:
        table.build(runs, metric="top5")
    assert (
        str(exc.value)
        == "--metric 'top5': choose one of ['final', 'best', 'knn', 'patch-knn', 'patch-linear']"
    )
    with pytest.raises(ConfigError) as exc:
        table.build(runs, baseline="ssp")
    assert str(exc.value) == (
        "--baseline 'ssp' is not a row of this table; rows: "
        "['ldam-drw', 'baseline', 'erm', 'lorot', 'gated-triple (ssl.gate=learned)']"
    )


def test_a_baseline_that_names_several_rows_asks_for_one_in_full(tmp_path):
    for gate in ("learned", "uncertainty"):
        _run(tmp_path / gate / "seed0", "cifar10-lt0.01-gated-triple", 0, 60.0, short=(f"ssl.gate={gate}",))
    with pytest.raises(ConfigError) as exc:
        table.build(table.find_runs([tmp_path]), baseline="gated-triple")
    assert str(exc.value) == (
        "--baseline 'gated-triple' names 2 rows of this table: ['gated-triple (ssl.gate=learned)', "
        "'gated-triple (ssl.gate=uncertainty)']; give one of them in full, e.g. "
        "--baseline 'gated-triple (ssl.gate=learned)'"
    )


def test_no_shared_line_when_the_only_shared_keys_are_not_method_settings(tmp_path):
    """Regression: every run on seed 1 of the full protocol left a dangling "Shared by every run: " line."""
    root = tmp_path / "sweep"
    _run(root / "lorot" / "seed1", "cifar10-lt0.01-lorot", 1, 70.0, short=())
    _run(root / "gated" / "seed1", "cifar10-lt0.01-gated-triple", 1, 73.0, short=())
    text = table.markdown(table.find_runs([root]))
    assert "Shared by every run" not in text
    assert text.endswith("| gated-triple | 73.00 (1) | 81.67 |  |\n")


def test_how_a_run_was_executed_neither_splits_its_row_nor_hides_the_paper_number(tmp_path):
    """Regression: the full-length campaign sets compile, precision fp32 and diagnose_every for every run,
    which used to cost each row its paper number; and a 45-epoch grid finished on a GPU window (compiled,
    fp32) split from its CPU seeds. A run that trained in bf16 (its config's `null` on a GPU, as its
    resolved.json says) keeps a row of its own, without the paper's number."""
    root = tmp_path / "sweep"
    on_gpu = ["compile=true", "precision=fp32", "diagnose_every=10", "channels_last=false"]
    _run(root / "ldam" / "seed0", "cifar10-lt0.01-ldam-drw", 0, 70.0, sets=on_gpu, short=())
    _run(root / "ldam" / "seed1", "cifar10-lt0.01-ldam-drw", 1, 72.0, short=())
    bf16 = _run(root / "ldam-bf16" / "seed0", "cifar10-lt0.01-ldam-drw", 0, 69.0, short=())
    (bf16 / "resolved.json").write_text(json.dumps({"execution": {"device": "cuda", "precision": "bf16"}}))
    rows, _, cells, _, _ = table.build(table.find_runs([root]))
    assert rows == ["ldam-drw", "ldam-drw (precision=bf16)"]
    fp32 = cells[("ldam-drw", "cifar10 0.01")]
    assert fp32.accs == {0: 70.0, 1: 72.0} and fp32.paper == 77.03 and fp32.paper_epochs == 200
    lower = cells[("ldam-drw (precision=bf16)", "cifar10 0.01")]
    assert lower.accs == {0: 69.0} and lower.paper is None
