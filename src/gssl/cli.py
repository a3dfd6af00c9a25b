"""The `gssl` command line: train, eval, presets, data, report, analyze.

Exit codes: 0 success; 2 bad input (configuration, dataset, run directory), with a message that says
what was expected and how to fix it, and nothing on disk changed; 1 a run that failed while training (a
non-finite loss, a checkpoint write that failed), which keeps its last complete checkpoint for --resume.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

EXAMPLES_TRAIN = """examples:
  gssl train --preset quickstart
  gssl train --preset cifar10-lt0.01-gated-triple --set data.root=~/data --out runs/c10-triple
  gssl train --preset cifar10-lt0.01-gated-triple --set ssl.gate=learned --set optim.epochs=30
  gssl train --config my.yaml --set ssl.tasks=[lorot,flip] --set data.imbalance=0.02
  gssl train --resume runs/c10-triple          # continue an interrupted run
  gssl train --preset cifar10-lt0.01-ldam-drw --set optim.epochs=20 --print-config   # the YAML it runs
  gssl train --preset cifar10-lt0.01-ldam-drw --set data.root=~/data --dry-run       # + data, device
"""
EXAMPLES_PACK = """examples:
  gssl pack --preset cifar10-lt0.01-gated-triple --seeds 0 1 2 --out runs/t/seed0 runs/t/seed1 runs/t/seed2
  gssl pack --resume runs/t/seed0 runs/t/seed1 runs/t/seed2
"""
EXAMPLES_EVAL = """examples:
  gssl eval runs/c10-triple
  gssl eval runs/c10-triple --checkpoint best
  gssl eval runs/c10-adv --attack pgd --eps 8/255 --steps 20 --step-size 2/255
  gssl eval runs/c10-triple --attack fgsm --eps 4/255
  gssl eval runs/dino --protocol final --test-limit all   # the summary's numbers, on every test image
"""
EXAMPLES_PRESETS = """examples:
  gssl presets                          # one line per preset
  gssl presets --show cifar10-lt0.01-gated-triple > my.yaml
  gssl presets --keys                   # every configuration key: type, default, meaning
"""
EXAMPLES_DATA = """examples:
  gssl data describe cifar10 --root ~/data/cifar-10-jpg.tar.gz
  gssl data prepare tiny-imagenet --root ~/data    # decode once into the cache
  gssl data download cifar10 --dest ~/data         # needs internet
"""
EXAMPLES_REPORT = """examples:
  gssl report runs/c10-triple                      # runs/c10-triple/report.html (+ report/*.png)
  gssl report runs/c10-triple --checkpoint best --max-images 1000
  gssl report runs/c10-* --out reports/c10 --no-tsne   # several runs: overlaid curves, summary table
"""
EXAMPLES_ANALYZE = """examples:
  gssl analyze runs/c10-triple                     # Grad-CAM and t-SNE figures in runs/c10-triple/analysis/
  gssl analyze runs/c10-triple --gradcam --layer layer2
  gssl analyze runs/c10-triple --tsne --checkpoint best
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gssl",
        description="Gated self-supervised learning for image classification: "
        "supervised training plus LoRot-E, flip and channel-shuffle pretext tasks weighted "
        "by a gating network.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `gssl COMMAND --help` for each command's options and examples.",
    )
    p.add_argument("--version", action=_Version, help="print gssl's version and code revision, then exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = _command(sub, "train")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--preset", help="a named preset (see `gssl presets`)")
    src.add_argument(
        "--config", metavar="FILE.yaml", help="a YAML config; may name a `preset:` to start from"
    )
    t.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. optim.lr=0.05 or ssl.tasks=[lorot,flip] (repeatable)",
    )
    t.add_argument("--out", metavar="DIR", help="run directory (default: runs/<preset>-<time>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    t.add_argument(
        "--force",
        action="store_true",
        help="replace an existing run in --out; with --resume, accept a changed configuration",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    look = t.add_mutually_exclusive_group()
    look.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration as YAML (usable as --config) and the schedule; run nothing",
    )
    look.add_argument(
        "--dry-run",
        action="store_true",
        help="load the data, build the model, print the schedule and the execution (device, precision, "
        "compilation) the run would have; train and write nothing",
    )

    _eval_parser(sub)

    pr = _command(sub, "presets")
    pr.add_argument("--show", metavar="NAME", help="print the preset's full configuration as YAML")
    pr.add_argument(
        "--keys", action="store_true", help="list every configuration key with its type, default and meaning"
    )

    data_parser = _command(sub, "data")
    data_parser.add_argument("action", choices=["describe", "prepare", "download"])
    data_parser.add_argument("name", help="dataset name")
    data_parser.add_argument(
        "--root", help="dataset location (folder or archive); default $GSSL_DATA or the dataset's default"
    )
    data_parser.add_argument("--dest", default="data", help="download destination folder (default ./data)")
    _analysis_parsers(sub)
    _sweep_parsers(sub)
    _campaign_parser(sub)
    _pack_parser(sub)
    return p


class _Version(argparse.Action):
    """--version, asking git for the revision only when asked (not on every command)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__, code_revision

        revision = code_revision()
        print(f"gssl {__version__}" + (f" (revision {revision})" if revision else " (no git checkout)"))
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # before the heavy imports: `--help` stays instant
    from .config import ConfigError
    from .data import DataError
    from .engine import TrainingError
    from .interrupts import interrupted_by_signals
    from .rundir import RunDirError

    try:
        with interrupted_by_signals():
            return {
                "train": _train,
                "eval": _eval,
                "presets": _presets,
                "data": _data,
                "report": _report,
                "analyze": _analyze,
                "sweep": _sweep,
                "campaign": _campaign,
                "table": _table,
                "pack": _pack,
            }[args.command](args)
    except BrokenPipeError:  # `gssl presets | head`
        sys.stderr.close()
        return 0
    except (ConfigError, DataError, RunDirError) as e:
        print(f"gssl: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"gssl: training stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:  # Ctrl-C, `kill` or a closed terminal (gssl.interrupts)
        by = f" by {interrupt}" if str(interrupt) else ""
        print(f"gssl: interrupted{by}{_going_on(args)}", file=sys.stderr)
        return 130


def _going_on(args) -> str:
    """How to continue what an interrupt stopped."""
    if args.command in ("sweep", "campaign"):
        return (
            f"; the same `gssl {args.command}` command resumes each unfinished run from its last checkpoint"
        )
    if args.command == "train" and not (args.dry_run or args.print_config):
        return "; `gssl train --resume RUN_DIR` continues from the last checkpoint"
    if args.command == "pack":
        return "; `gssl pack --resume RUN_DIR ...` continues from the last checkpoint"
    return ""


def _resumes_at(args, cfg) -> str:
    """How far a run to be resumed got, as `gssl sweep --dry-run` says it."""
    if not args.resume:
        return ""
    from .rundir import progress

    return f"; {progress(Path(args.resume), cfg.optim.epochs)}"


def _train(args) -> int:
    from . import engine
    from .config import parse_set

    sets = [parse_set(s) for s in args.sets]
    if args.resume:
        run_dir = Path(args.resume)
        cfg = _resume_config(args, run_dir, sets)
    else:
        cfg, run_dir = _new_run_config(args, sets)
    if args.print_config:
        return _print_config(cfg)
    if args.resume and _finished(run_dir, cfg):
        return 0
    if args.dry_run:
        engine.plan(cfg, run_dir, resume=bool(args.resume), force=args.force)
        print(f"dry run: nothing trained or written (the run's folder: {run_dir}{_resumes_at(args, cfg)})")
        return 0
    summary = engine.train(cfg, run_dir, resume=bool(args.resume), force=args.force, quiet=args.quiet)
    if summary:  # (under torchrun only rank 0 has one)
        _print_summary(summary, run_dir)
    return 0


def _pack_parser(sub) -> None:
    k = _command(sub, "pack")
    src = k.add_mutually_exclusive_group()
    src.add_argument("--preset", help="a named preset (see `gssl presets`)")
    src.add_argument("--config", metavar="FILE.yaml", help="a YAML config")
    k.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="as gssl train"
    )
    k.add_argument("--seeds", type=int, nargs="+", default=[], help="one seed per member")
    k.add_argument("--out", nargs="+", default=[], metavar="DIR", help="one run directory per seed, in order")
    k.add_argument("--resume", nargs="+", metavar="RUN_DIR", help="continue an interrupted pack's members")
    k.add_argument("--force", action="store_true", help="replace existing runs in --out")
    k.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def _pack(args) -> int:
    from . import packrun
    from .config import ConfigError

    if args.resume:
        run_dirs = [Path(d) for d in args.resume]
        cfgs = packrun.saved_configs(run_dirs, args.sets)
    else:
        if len(args.out) != len(args.seeds):
            raise ConfigError(
                f"--seeds names {len(args.seeds)} runs and --out {len(args.out)}; give one --out per seed"
            )
        run_dirs = [Path(d) for d in args.out]
        cfgs = packrun.pack_configs(args.preset, args.config, args.sets, args.seeds)
    summaries = packrun.train_pack(
        cfgs, run_dirs, resume=bool(args.resume), force=args.force, quiet=args.quiet
    )
    for summary, run_dir in zip(summaries, run_dirs):
        if summary:
            print(f"{run_dir}: final test accuracy {summary['test_acc']:.2f}%")
    failed = [str(run_dir) for summary, run_dir in zip(summaries, run_dirs) if summary is None]
    if failed:
        print(
            f"gssl: training stopped for {', '.join(failed)} (see above); the others finished",
            file=sys.stderr,
        )
        return 1
    return 0


def _print_config(cfg) -> int:
    """The configuration as config.yaml would hold it (usable as --config), the schedule as comments;
    nothing is read but the configuration files."""
    from .runconfig import to_yaml
    from .schedule import describe, resolved_schedule, scaling_notice

    print(to_yaml(cfg), end="")
    for line in filter(
        None, [scaling_notice(cfg), f"schedule as applied: {describe(resolved_schedule(cfg))}"]
    ):
        print(f"# {line}")
    return 0


def _resume_config(args, run_dir: Path, sets: list[dict]):
    """The saved configuration of the run in run_dir, or with --force the one asked for; ConfigError if
    they differ without --force. A run another process trains is refused first: whatever else its folder
    says (no checkpoint yet, another configuration) is that process's to change."""
    from . import rundir, runlock
    from .config import ConfigError, load_yaml
    from .presets import resolve
    from .runconfig import from_dict, run_changes

    runlock.refuse_if_held(run_dir)
    saved_path = run_dir / rundir.CONFIG
    if not saved_path.is_file():
        raise rundir.RunDirError(
            f"cannot resume {run_dir}: no {rundir.CONFIG} there; pass the folder of an earlier run"
        )
    saved = from_dict(load_yaml(saved_path))
    cfg = saved
    if args.preset or args.config or sets:
        asked = resolve(args.preset, load_yaml(args.config) if args.config else saved.to_dict(), sets)
        changed = run_changes(saved, asked, run_dir)  # the data may move, the device change: the same run
        if changed and not args.force:
            raise ConfigError(
                f"the configuration differs from the run's saved one in: {', '.join(changed)}; "
                "resume without changes, or pass --force to continue with the new values"
            )
        cfg = asked  # the engine saves it once the checkpoint has loaded into it
    if not (run_dir / rundir.CKPT_DIR / "last.pt").is_file() and not (run_dir / rundir.SUMMARY).is_file():
        raise rundir.RunDirError(
            f"cannot resume {run_dir}: no checkpoint yet (it stopped during the first epoch); "
            f"start it again with --out {run_dir} --force"
        )
    return cfg


def _finished(run_dir: Path, cfg) -> bool:
    """A run whose summary.json covers cfg.optim.epochs is done: --resume says so and changes nothing."""
    from . import rundir

    path = run_dir / rundir.SUMMARY
    if not path.is_file():
        return False
    done = rundir.read_json(path).get("epochs")
    if not isinstance(done, int) or done < cfg.optim.epochs:
        return False  # to be trained longer (--set optim.epochs=N --force)
    print(
        f"{run_dir} is finished ({done} epochs, {rundir.SUMMARY} written): nothing to resume, nothing "
        f"changed. To train it longer: gssl train --resume {run_dir} --set optim.epochs=N --force"
    )
    return True


def _new_run_config(args, sets: list[dict]):
    """(configuration, run directory) of a new run."""
    from .config import ConfigError, load_yaml
    from .presets import resolve

    if not args.preset and not args.config:
        raise ConfigError("name a --preset (see `gssl presets`) or a --config FILE.yaml")
    cfg = resolve(args.preset, load_yaml(args.config) if args.config else None, sets)
    name = args.preset or Path(args.config).stem
    if not args.out and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ConfigError(
            "under torchrun, name the run directory with --out DIR (every rank must agree on it)"
        )
    run_dir = Path(args.out) if args.out else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg, run_dir


def _print_summary(s: dict, run_dir: Path) -> None:
    print(
        f"final test accuracy: {s['test_acc']:.2f}% (top-5 {s['top5_acc']:.2f}%); "
        f"best {s['best_test_acc']:.2f}% at epoch {s['best_epoch']} (chosen on the test set)"
    )
    groups = [
        f"{g} {s[g + '_shot_acc']:.2f}%" for g in ("many", "medium", "few") if s[g + "_shot_acc"] is not None
    ]
    if groups:
        print("shot groups: " + ", ".join(groups))
    if s["gate_weights"]:
        print("gate weights: " + ", ".join(f"{k} {v:.3f}" for k, v in s["gate_weights"].items()))
    print(f"{s['images_per_second']} images/s on {s['device']}, {s['wall_seconds']} s")
    print(f"run directory: {run_dir}")


def _eval(args) -> int:
    from .evaluation import evaluate_run

    attack = None
    if args.attack:
        from .attacks import Attack
        from .config import ConfigError, parse_number

        eps, step = parse_number("--eps", args.eps), parse_number("--step-size", args.step_size)
        try:
            attack = Attack(args.attack, eps, step, args.steps, not args.no_random_start)
        except ValueError as e:
            raise ConfigError(f"--attack: {e}") from None
    rep = evaluate_run(
        Path(args.run_dir),
        args.checkpoint,
        attack,
        protocol=args.protocol,
        knn_k=args.knn_k,
        linear_epochs=args.linear_epochs,
        data_root=args.data_root,
        test_limit=args.test_limit,
    )
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    print(
        f"checkpoint {rep['checkpoint']} (epoch {rep['epoch']}) on {rep['num_test']} test images, "
        f"{rep['protocol']}"
    )
    print(f"top-1 {rep['top1']:.2f}%  top-5 {rep['top5']:.2f}%")
    probes = [
        k for k in ("knn_acc", "knn_test_acc", "patch_knn_test_acc", "patch_linear_test_acc") if k in rep
    ]
    if probes:
        print("  ".join(f"{k} {rep[k]:.2f}%" for k in probes))
    if "robust_acc" in rep:
        a = rep["attack"]
        what = f"{a['kind']}" + (f"-{a['steps']} (step {a['step_size']:.4g})" if a["kind"] == "pgd" else "")
        print(
            f"under {what} at eps {a['eps']:.4g}: robust {rep['robust_acc']:.2f}% "
            f"(clean {rep['clean_acc']:.2f}%)"
        )
    for g in ("many", "medium", "few"):
        if rep[g + "_shot_acc"] is not None:
            print(f"{g}-shot {rep[g + '_shot_acc']:.2f}%")
    print("per-class accuracy (training images):")
    for name, acc, n in zip(rep["classes"], rep["per_class_acc"], rep["class_counts"]):
        print(f"  {name:<20} {'-' if acc is None else f'{acc:6.2f}%'}  ({n})")
    cm = rep["confusion_matrix"]
    if len(cm) <= 20:
        print("confusion matrix (rows: true class, columns: predicted):")
        for row in cm:
            print("  " + " ".join(f"{v:5d}" for v in row))
    print(f"written to {Path(args.run_dir) / rep['file']}")
    return 0


def _presets(args) -> int:
    from .config import describe_keys
    from .presets import PRESETS, preset_dict
    from .runconfig import from_dict, to_yaml

    if args.keys:
        print("\n".join(describe_keys()))
        return 0
    if args.show:
        print(to_yaml(from_dict(preset_dict(args.show))), end="")
        return 0
    width = max(map(len, PRESETS))
    for p in PRESETS.values():
        paper = f"  [paper {p.paper_acc:.2f}%]" if p.paper_acc is not None else ""
        print(f"{p.name:<{width}}  {p.summary}{paper}")
    return 0


def _data(args) -> int:
    from . import data

    if args.action == "download":
        path = data.download(args.name, Path(args.dest))
        print(f"downloaded {args.name} to {path}; train with --set data.root={path}")
        return 0
    if args.action == "prepare":
        for split in ("train", "test"):
            s = data.load_dataset(args.name, args.root, split)
            print(
                f"{args.name} {split}: {len(s.labels)} images {tuple(s.images.shape[1:])}, "
                f"{len(s.classes)} classes (cached)"
            )
        return 0
    print(json.dumps(data.describe(args.name, args.root), indent=2))
    return 0


# --- report and analyze (gssl.analysis; needs matplotlib and scikit-learn: the `analysis` extra) ---


def _analysis_parsers(sub) -> None:
    r = _command(sub, "report")
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--out", metavar="DIR", help="where to write report.html (required for several runs)")
    r.add_argument("--no-tsne", dest="tsne", action="store_false", help="leave out the t-SNE figure")
    r.add_argument("--no-gradcam", dest="gradcam", action="store_false", help="leave out the Grad-CAM figure")
    a = _command(sub, "analyze")
    a.add_argument("run_dir", metavar="RUN_DIR")
    a.add_argument(
        "--gradcam", action="store_true", help="Grad-CAM heatmaps for the true and predicted class"
    )
    a.add_argument(
        "--tsne", action="store_true", help="t-SNE of pooled test features (cached in RUN_DIR/analysis/)"
    )
    a.add_argument(
        "--layer",
        metavar="NAME",
        help="Grad-CAM stage: layer1..layer3 (layer4 for resnet18); default: the last",
    )
    for p in (r, a):
        p.add_argument(
            "--checkpoint",
            choices=["last", "best"],
            default="last",
            help="'last' (final epoch, default) or 'best' (chosen on the test set)",
        )
        p.add_argument(
            "--max-images",
            type=int,
            default=2000,
            metavar="N",
            help="test images in the t-SNE, balanced over classes (default 2000)",
        )
        p.add_argument(
            "--gradcam-images",
            type=int,
            default=8,
            metavar="N",
            help="test images in the Grad-CAM grid, one per class in turn (default 8)",
        )
    r.add_argument("--layer", metavar="NAME", help="Grad-CAM stage (default: the backbone's last)")
    for p in (r, a):
        _data_root_option(p)


def _data_root_option(p) -> None:
    p.add_argument(
        "--data-root",
        metavar="DIR",
        help="where the run's data set lies now, if it has moved since the run (default: its data.root)",
    )


def _analysis_module():
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as e:
        from .config import ConfigError

        raise ConfigError(
            f"report and analyze need matplotlib and scikit-learn ({e}); `pip install 'gssl[analysis]'`"
        ) from None
    from .analysis import report

    return report


def _positive(args) -> None:
    from .config import ConfigError

    if args.max_images < 3 or args.gradcam_images < 1:
        raise ConfigError("--max-images must be at least 3 and --gradcam-images at least 1")


def _report(args) -> int:
    _positive(args)
    report = _analysis_module()
    left_out: list[str] = []
    path = report.render_report(
        args.run_dirs,
        Path(args.out) if args.out else None,
        checkpoint=args.checkpoint,
        tsne=args.tsne,
        gradcam=args.gradcam,
        max_images=args.max_images,
        gradcam_images=args.gradcam_images,
        layer=args.layer,
        data_root=args.data_root,
        warn=left_out.append,
    )
    done = f"{len(left_out)} section(s) left out, listed on stderr" if left_out else "every section drawn"
    print(f"report written to {path} (figures in {path.parent / 'report'}); {done}")
    for line in left_out:
        print(f"gssl: report: left out {line}", file=sys.stderr)
    return 0


def _analyze(args) -> int:
    _positive(args)
    report = _analysis_module()
    both = not (args.gradcam or args.tsne)
    for p in report.analyze_run(
        args.run_dir,
        gradcam=args.gradcam or both,
        tsne=args.tsne or both,
        checkpoint=args.checkpoint,
        layer=args.layer,
        max_images=args.max_images,
        gradcam_images=args.gradcam_images,
        data_root=args.data_root,
    ):
        print(p)
    return 0


# --- sweep and table ---------------------------------------------------------------------------

EXAMPLES_SWEEP = """examples:
  gssl sweep configs/sweeps/cifar10-lt-cpu.yaml --set data.root=~/data/cifar-10-jpg.tar.gz
  gssl sweep --preset cifar10-lt0.01-ldam-drw --preset cifar10-lt0.01-gated-triple --seeds 0 1 2 \\
             --set optim.epochs=20 --out runs/c10 --parallel 2
  gssl sweep --preset cifar10-lt0.01-gated-triple --grid 'ssl.gate=[reference,learned,uniform]' \\
             --grid 'ssl.ratio=[0.1,0.5]' --seeds 0 1 --out runs/gates   # 6 settings x 2 seeds
  gssl sweep my-sweep.yaml --dry-run              # the commands it would run
  gssl sweep configs/sweeps/cifar10-dino-cpu.yaml --judge   # + each run judged on all test images
"""
EXAMPLES_CAMPAIGN = """examples:
  gssl campaign configs/sweeps/cifar10-lt-full.yaml --budget-s 540 --calibrate --export OUT \\
                --set data.root=.device-data/cifar-10-jpg.tar.gz   # a GPU window (docs/results.md)
  gssl campaign configs/sweeps/cifar10-lt-full.yaml --collect OUT   # its records into results/
  gssl campaign configs/sweeps/cifar10-lt-full.yaml --budget-s 540 --dry-run   # what would start
"""
EXAMPLES_TABLE = """examples:
  gssl table runs/cifar10-lt-cpu                  # every run below the folder
  gssl table runs/c10/*/seed* --metric best --csv results.csv
  gssl table results/cifar10-lt-45ep --figures docs/figures/cifar10-lt-45ep   # + the sweep's figures (PNG)
  gssl table results/cifar10-lt-45ep --per-run    # + a line per run: seeds, gates, pretext heads
  gssl table results/cifar10-dino-cpu --summary eval-last-final-testall.json   # judged on all test images
"""


# each subcommand: (one-line help, description, examples)
COMMANDS = {
    "train": (
        "train a model from a preset or config",
        "Train a model. Configuration: defaults <- --preset (or --config) <- --set overrides.",
        EXAMPLES_TRAIN,
    ),
    "presets": (
        "list the presets",
        "The paper's protocols (Table 1, Table 2) and a quickstart.",
        EXAMPLES_PRESETS,
    ),
    "data": (
        "describe, prepare or download datasets",
        "Datasets: cifar10, cifar100, tiny-imagenet, fashion-mnist, folder.",
        EXAMPLES_DATA,
    ),
    "report": (
        "write an HTML report of one or several runs",
        "Learning curves, gate weights per task, per-class accuracy "
        "against class size, confusion matrix, t-SNE of features, Grad-CAM and the pretext tasks, in a "
        "self-contained report.html (figures embedded; also written as PNGs to report/ beside it). "
        "One run: written into RUN_DIR. Several: overlaid curves and a summary table, into --out.",
        EXAMPLES_REPORT,
    ),
    "analyze": (
        "just the Grad-CAM and/or t-SNE figures of a run",
        "Write RUN_DIR/analysis/gradcam-<checkpoint>-<layer>.png "
        "and tsne-<checkpoint>.png. With neither --gradcam nor --tsne, both.",
        EXAMPLES_ANALYZE,
    ),
    "eval": (
        "evaluate a run's checkpoint on the test set",
        "Top-1/top-5, per-class and many/medium/few-shot accuracy "
        "and the confusion matrix, written to RUN_DIR/eval-<checkpoint>.json and printed.",
        EXAMPLES_EVAL,
    ),
    "sweep": (
        "run a grid of presets x seeds x overrides",
        "Run every (run, seed) of a sweep file or of --preset x "
        "--seeds into OUT/<name>/seed<k>: finished runs are skipped, interrupted ones resumed.",
        EXAMPLES_SWEEP,
    ),
    "pack": (
        "train runs that differ only in seed as one packed model",
        "Train K runs of one configuration, one per --seeds entry, in one process as one stacked model "
        "(gssl.packed): each writes its --out directory exactly as `gssl train` would. `gssl sweep --pack K` "
        "runs a sweep's seeds this way.",
        EXAMPLES_PACK,
    ),
    "campaign": (
        "run a sweep file's unfinished runs within a time budget (GPU windows)",
        "Run the highest-priority unfinished runs of a sweep file, several at once on one device, starting "
        "only those expected to finish within --budget-s, and stop the rest cleanly before it ends; "
        "--export copies every run's records (an unfinished run's last checkpoint too) to a folder, "
        "--collect copies such a folder back into the sweep's out folder.",
        EXAMPLES_CAMPAIGN,
    ),
    "table": (
        "results of runs as a Markdown (and CSV) table",
        "Group runs by method and setting: mean +- std over "
        "seeds, the paper's number, the paired difference against the baseline row.",
        EXAMPLES_TABLE,
    ),
}


def _command(sub, name: str) -> argparse.ArgumentParser:
    """A subcommand's parser, with its one-line help, description and examples from COMMANDS."""
    help_text, description, examples = COMMANDS[name]
    return sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _eval_parser(sub) -> None:
    e = _command(sub, "eval")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument(
        "--checkpoint",
        choices=["last", "best"],
        default="last",
        help="'last' (final epoch, default) or 'best' (chosen on the test set)",
    )
    e.add_argument("--json", action="store_true", help="print the full JSON report")
    e.add_argument(
        "--attack",
        choices=["pgd", "fgsm"],
        help="also report accuracy under this L-inf attack (pixel space [0, 1], model in eval mode)",
    )
    e.add_argument("--eps", default="8/255", help="attack radius, a number or fraction (default 8/255)")
    e.add_argument("--steps", type=int, default=20, help="PGD steps (default 20)")
    e.add_argument("--step-size", default="2/255", help="PGD step size (default 2/255)")
    e.add_argument("--no-random-start", action="store_true", help="PGD from the clean image")
    e.add_argument(
        "--protocol",
        choices=["classifier", "linear", "knn", "final"],
        help="the run's classifier (default), or a "
        "linear probe / k-NN on the frozen features (default for contrastive and DINO runs: linear), or "
        "'final': the run's own final evaluation, every number of its summary.json (a DINO run's probes "
        "of the patch tokens too)",
    )
    e.add_argument(
        "--test-limit",
        type=_test_limit,
        metavar="N|all",
        help="judge on N test images (balanced over the classes) or all of them instead of the run's "
        "data.test_limit; the report's file name ends in -testN / -testall",
    )
    e.add_argument(
        "--knn-k",
        type=int,
        help="neighbours for --protocol knn (default: the run's contrastive.knn_k, "
        "or dino.knn_k for a DINO run)",
    )
    e.add_argument(
        "--linear-epochs",
        type=int,
        help="epochs of the linear probe (default: the run's contrastive.linear_epochs or "
        "dino.linear_epochs, or 100)",
    )
    _data_root_option(e)


def _test_limit(text: str) -> int:
    from .evaluation import ALL_TEST

    if text == "all":
        return ALL_TEST
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of test images >= 1 or 'all'")
    return int(text)


def _campaign_parser(sub) -> None:
    c = _command(sub, "campaign")
    c.add_argument("file", metavar="SWEEP.yaml", help="a sweep file; its runs' `priority` orders them")
    c.add_argument(
        "--budget-s", type=float, metavar="S", help="wall-clock seconds the whole command may take"
    )
    c.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="runs at once (default: the calibrated number for this device, else the file's `parallel`, "
        "else 2)",
    )
    c.add_argument(
        "--calibrate",
        action="store_true",
        help="first find the fastest number of runs at once (1, 2, 4, 8) on the campaign's own runs, "
        "and record it in OUT/calibration.json; once per device (delete its entry there to measure again)",
    )
    c.add_argument(
        "--calibration-from",
        metavar="DIR",
        help="where OUT has no calibration for this device, take DIR/calibration.json's (another campaign "
        "of runs alike on the same device) instead of measuring again",
    )
    for flag, default, meaning in (
        ("--window-s", 20.0, "calibration: seconds measured per level"),
        ("--startup-s", 60.0, "guess of a run's time to its first epoch (compiling included) until measured"),
        ("--epoch-s", 1.0, "guess of each later epoch's seconds until measured"),
        ("--reserve-s", 20.0, "seconds kept at the end of the budget to stop the runs and export"),
    ):
        c.add_argument(
            flag, type=float, default=default, metavar="S", help=f"{meaning} (default {default:g})"
        )
    c.add_argument("--export", metavar="DIR", help="afterwards, copy every run's records into DIR")
    c.add_argument(
        "--collect",
        metavar="DIR",
        help="copy the records in DIR (an --export) into the out folder; run nothing",
    )
    c.add_argument("--out", metavar="DIR", help="the campaign's folder (default: the file's `out`)")
    c.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the file's)")
    _runs_option(c)
    c.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override in every run"
    )
    c.add_argument("--dry-run", action="store_true", help="print what would start, run nothing")


def _runs_option(parser) -> None:
    parser.add_argument(
        "--runs",
        nargs="+",
        metavar="NAME",
        help="only these runs (rows) of the sweep file, in the file's order, e.g. --runs ldam-drw lorot "
        "(default: all)",
    )


def _sweep_parsers(sub) -> None:
    s = _command(sub, "sweep")
    s.add_argument("file", nargs="?", metavar="SWEEP.yaml", help="a sweep file (out, seeds, set, runs)")
    s.add_argument(
        "--preset", dest="presets", action="append", default=[], help="a preset to run (repeatable)"
    )
    s.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the file's, or 0)")
    _runs_option(s)
    s.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key in every run (repeatable)",
    )
    s.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=[V1,V2]",
        help="run every preset/run with each value, e.g. --grid 'ssl.gate=[reference,learned]' (repeatable: "
        "every combination)",
    )
    s.add_argument("--out", metavar="DIR", help="sweep folder (default: the file's `out`)")
    s.add_argument(
        "--parallel", type=int, metavar="N", help="runs at a time (default: the file's `parallel`, else 1)"
    )
    s.add_argument(
        "--gpus",
        metavar="IDS",
        help="spread the runs over these GPUs, e.g. 0,1,2,3 (one run per GPU "
        "at a time, more with --parallel)",
    )
    s.add_argument(
        "--judge",
        action="store_true",
        help="after each run, judge its last checkpoint on the whole test split (`gssl eval RUN --protocol "
        "final --test-limit all`, writing eval-last-final-testall.json for `gssl table --summary`); "
        "finished runs without that file are judged too",
    )
    s.add_argument(
        "--pack",
        type=int,
        default=1,
        metavar="K",
        help="train each run's seeds K at a time as one packed model (`gssl pack`; default 1: one run "
        "per process)",
    )
    s.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")

    t = _command(sub, "table")
    t.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories or folders holding them")
    t.add_argument(
        "--metric",
        choices=["final", "best", "knn", "patch-knn", "patch-linear"],  # gssl.table.METRICS (imports torch)
        default="final",
        help="final-epoch accuracy (default; the linear probe for contrastive and DINO runs), best epoch "
        "(chosen on the test set), k-NN on the frozen backbone (contrastive and DINO runs), or k-NN / "
        "linear probe on a ViT's averaged patch tokens (DINO runs)",
    )
    t.add_argument(
        "--summary",
        metavar="FILE",
        default="summary.json",
        help="the file in each run directory to read the numbers from: summary.json (default) or a report "
        "of `gssl eval --protocol final` (eval-last-final-testall.json: the same numbers on the whole "
        "test set); runs without it count as unfinished",
    )
    t.add_argument(
        "--baseline",
        metavar="ROW",
        help="the row (or method) differences are taken against "
        "(default: LDAM-DRW, baseline, supervised, SimCLR or DINO, whichever is there)",
    )
    t.add_argument(
        "--per-run",
        action="store_true",
        help="also a line per run: the metric and its difference from the baseline's run of the same "
        "seed, best epoch, shot groups, the pretext heads' accuracy and the gate weights (first -> last)",
    )
    t.add_argument(
        "--verdicts",
        action="store_true",
        help="also a verdict per row, by written rules (gssl.verdict): better or worse than the baseline "
        "in every seed, the paper reproduced within 1 point over 3 seeds, what the pretext loss adds over "
        "the transform alone, whether the pretext heads leave chance and the gate tells the tasks apart",
    )
    t.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    t.add_argument(
        "--figures",
        metavar="OUT_DIR",
        help="also draw the sweep's figures from the run "
        "records alone (test accuracy and pretext-head accuracy per epoch, gate weights, per-class "
        "accuracy against class size, the class / pretext gradient ratio) as PNGs into OUT_DIR; a row is "
        "the folder above seed<k>",
    )


def _sweep(args) -> int:
    from . import sweep
    from .config import ConfigError

    if args.parallel is not None and args.parallel < 1:
        raise ConfigError(f"--parallel {args.parallel}: expected an integer >= 1")
    if args.file and args.presets:
        raise ConfigError("give a sweep file or --preset, not both")
    if args.file:
        jobs = sweep.jobs_from_file(args.file, args.out, args.seeds, args.sets, sweep.parse_grid(args.grid))
        jobs = sweep.only_runs(jobs, args.runs, args.file)
    elif args.presets:
        if args.runs:
            raise ConfigError("--runs picks runs of a sweep file; with --preset, name the presets you want")
        if not args.out:
            raise ConfigError("--preset needs --out DIR for the sweep folder")
        jobs = sweep.jobs_from_presets(
            args.presets, args.out, args.seeds or [0], args.sets, sweep.parse_grid(args.grid)
        )
    else:
        raise ConfigError("name a sweep file or at least one --preset; see `gssl sweep --help`")
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    if args.gpus is not None and not gpus:
        raise ConfigError("--gpus: expected GPU ids such as 0,1")
    log = functools.partial(print, flush=True)
    if args.pack < 1:
        raise ConfigError(f"--pack {args.pack}: expected an integer >= 1 (1: no packing)")
    parallel = args.parallel or (sweep.file_parallel(args.file) if args.file else None) or 1
    failed = sweep.run(jobs, parallel, args.dry_run, gpus=gpus, log=log, judge=args.judge, pack=args.pack)
    if failed:
        print(
            f"gssl: {failed} run(s) failed; fix the cause and run the same sweep again to go on",
            file=sys.stderr,
        )
        return 1
    return 0


def _campaign(args) -> int:
    from . import campaign, sweep
    from .config import ConfigError

    started = time.monotonic()  # the budget includes reading the file and resolving its runs
    jobs = sweep.only_runs(
        sweep.jobs_from_file(args.file, args.out, args.seeds, args.sets), args.runs, args.file
    )
    log = functools.partial(print, flush=True)
    if args.collect:
        if not Path(args.collect).is_dir():
            raise ConfigError(f"--collect {args.collect}: no such folder; name the folder given to --export")
        campaign.copy_records(jobs, Path(args.collect), jobs[0].out, log)
        return 0
    for name in ("budget_s", "window_s", "startup_s", "epoch_s", "reserve_s"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: expected a number of seconds >= 0")
    if args.budget_s is None or args.budget_s <= args.reserve_s:
        raise ConfigError(
            "give --budget-s SECONDS, more than --reserve-s "
            f"({args.reserve_s:g} s kept to stop the runs and export), e.g. --budget-s 540"
        )
    if args.parallel is not None and args.parallel < 1:
        raise ConfigError(f"--parallel {args.parallel}: expected an integer >= 1")
    if args.calibration_from and not Path(args.calibration_from).is_dir():
        raise ConfigError(
            f"--calibration-from {args.calibration_from}: no such folder; name another campaign's out folder "
            "(the one holding its calibration.json)"
        )
    how_many = dict(
        parallel=args.parallel,
        file_parallel=sweep.file_parallel(args.file),
        calibration_from=Path(args.calibration_from) if args.calibration_from else None,
    )
    prior = campaign.Estimate(args.startup_s, args.epoch_s)
    if args.dry_run:
        campaign.plan(jobs, args.budget_s, **how_many, prior=prior, reserve_s=args.reserve_s, log=log)
        return 0
    failed = campaign.run(
        jobs,
        args.budget_s,
        **how_many,
        prior=prior,
        calibrate=args.calibrate,
        window_s=args.window_s,
        reserve_s=args.reserve_s,
        export=Path(args.export) if args.export else None,
        started=started,
        log=log,
    )
    if failed:
        print(f"gssl: {failed} run(s) failed; see their logs", file=sys.stderr)
        return 1
    return 0


def _table(args) -> int:
    from . import table
    from .rundir import write_atomic

    runs = table.find_runs(args.run_dirs, args.summary)
    print(table.markdown(runs, args.metric, args.baseline), end="")
    if args.per_run:
        print("\nPer run:\n\n" + table.per_run(runs, args.metric, args.baseline), end="")
    if args.verdicts:
        from .verdict import verdicts

        print("\n" + verdicts(runs, args.metric, args.baseline), end="")
    if args.csv:
        write_atomic(Path(args.csv), table.to_csv(runs, args.metric, args.baseline).encode())
        print(f"\nCSV written to {args.csv}")
    if args.figures:
        from .analysis import curves

        print()
        curves.write_figures(runs, args.figures)
    return 0


if __name__ == "__main__":  # last, so every parser above is defined
    raise SystemExit(main())
