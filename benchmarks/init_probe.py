"""A run's frozen-feature probes at initialisation: the floor its self-supervised training has to clear.

DINO and SimCLR runs are judged by k-NN and a linear probe of frozen features, and random features are
not at chance on either. This rebuilds the run's network from its config.yaml and seed as `gssl train`
does before its first step (the same data, build and probes) and prints the numbers its summary.json
would hold at that point, beside the run's own:

    python benchmarks/init_probe.py results/cifar10-dino-cpu/*/seed* [--set data.root=PATH] [--json F]

Runs judged again on the whole test set (`gssl eval --protocol final --test-limit all`) are compared on it
with `--set data.test_limit=null --summary eval-last-final-testall.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from gssl import evaluation, metrics, rundir
from gssl.config import load_yaml, parse_set
from gssl.presets import resolve


def probe_at_init(run_dir: Path, sets: list[str] = ()) -> dict:
    """{summary key: value} of the final evaluation, taken on the network as built from the run's seed."""
    cfg = resolve(config=load_yaml(Path(run_dir) / rundir.CONFIG), sets=[parse_set(item) for item in sets])
    with tempfile.TemporaryDirectory() as scratch:  # a run directory for the context; the run is not touched
        _, scenario, _ = evaluation.rebuilt_scenario(cfg, Path(scratch))
        logits, labels, extra = scenario.evaluate_final()
    return {
        "test_acc": metrics.top1(logits, labels),
        **{k: v for k, v in extra.items() if k.endswith("_acc")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="`gssl train` run directories")
    ap.add_argument("--set", action="append", default=[], help="override a setting, e.g. data.root=PATH")
    ap.add_argument("--json", type=Path, help="also write the numbers here, by run directory")
    ap.add_argument(
        "--summary",
        default=rundir.SUMMARY,
        metavar="FILE",
        help="the trained run's numbers: its summary.json (default) or a `gssl eval --protocol final` report",
    )
    args = ap.parse_args(argv)
    not_runs = [str(d) for d in args.run_dirs if not (d / rundir.CONFIG).is_file()]
    if not_runs:  # checked before any probe runs: a typo should not cost the probes before it
        print(
            f"init_probe: {', '.join(not_runs)} has no {rundir.CONFIG}; pass gssl run directories",
            file=sys.stderr,
        )
        return 2
    print("| run | probe | at initialisation | trained | gain |\n|---|---|---|---|---|")
    written = {}
    for run_dir in args.run_dirs:
        at_init = probe_at_init(run_dir, args.set)
        summary_path = run_dir / args.summary
        trained = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        for key, value in at_init.items():
            after = trained.get(key)
            cells = ("-", "-") if after is None else (f"{after:.2f}", f"{after - value:+.2f}")
            print(f"| {run_dir} | {key} | {value:.2f} | {cells[0]} | {cells[1]} |", flush=True)
        written[str(run_dir)] = {"at_init": at_init, "trained": trained}
    if args.json:
        rundir.write_atomic(args.json, json.dumps(written, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
