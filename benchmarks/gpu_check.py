"""Run this first whenever a GPU is lent: the failure probes, then the numbers, in under 8 minutes.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --data data/cifar-10-jpg.tar.gz
    python benchmarks/gpu_check.py --smoke --device cpu   # the script itself, at toy size on CPU (~1.5 min)

Parts, in this order, each with a share of --budget-s (time a part leaves unused passes on to the
next; what would not fit is skipped, and named in the output and the JSON):
  probes  at once: the CUDA tests (tests/test_fastpath.py, tests/test_compile.py, up to 5 failures)
          and three compiled 2-epoch training runs with full-size batches on the real data (LDAM-DRW
          with no pretext task, and the gated triple; cosine heads; DRW switched on for epoch 2;
          compiled evaluation on all 10,000 test images between the epochs; and DINO + SelfPatch +
          LoRot-E, gated, on ViT-Tiny, 10,000 training images), all with TORCH_LOGS=recompiles; every
          line of their output that shows one of SYMPTOMS is printed and kept under "symptoms"
  step    training images/s, ResNet-32 at batch 128: plain, + LoRot-E, + gated triple; eager against
          compiled (channels_last, as the engine runs on CUDA); bf16 against fp32 (run.py's step section)
  run     the long-tailed CIFAR-10 (0.01) gated-triple run, compiled, default precision, stopped after
          --run-s seconds (or its second epoch); seconds per epoch from its metrics.jsonl, 200 epochs
          extrapolated from them
  sweep   total throughput of `gssl sweep --parallel 1, 2, 4` (run.py's sweep section), eager runs
The JSON (default docs/benchmarks/<device>.json; --json elsewhere) is rewritten after every part, so a
check cut short still leaves what it measured; --logs DIR keeps every child's whole output.
--smoke: fake data, ResNet-8, tiny batches, one thread, on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARCHIVE = "cifar-10-jpg.tar.gz"
SYMPTOMS = (
    "does not require grad",
    "overwritten by a subsequent run",
    "skipping cudagraphs",
    "Recompiling",
    "torch.compile of the",
)
# of --budget-s; the 6% left over is for start-up, stopping children and the summary, so that the whole
# check ends within the budget. The probes' tests run to the end since 2026-12-04 (28 of them: about 180 s
# alone on an H200 and its host), so they have the largest share
SHARES = {"probes": 0.46, "step": 0.24, "run": 0.16, "sweep": 0.08}
# 2 epochs, DRW switched on for the second (base_epochs=2: the DRW epoch is not scaled down to 0)
PROBE_SETS = [
    "optim.epochs=2",
    "optim.base_epochs=2",
    "loss.drw_epoch=1",
    "compile=true",
    "model.head=cosine",
]
# DINO + SelfPatch + LoRot-E under the learned gate on ViT-Tiny: 2 compiled epochs of 10,000 images (the
# teacher temperature, the frozen last layer and the weight decay change between them); its per-epoch
# evaluation is k-NN on frozen features, which is not the compiled classifier evaluation
DINO_PROBE_SETS = [
    "optim.epochs=2",
    "optim.base_epochs=2",
    "optim.warmup_epochs=1",
    "data.max_per_class=1000",
    "compile=true",
    "dino.linear_epochs=5",
]
DINO_TOY_SETS = [  # --smoke: a one-block ViT and small heads, so that compiling fits a CPU core
    "vit.width=32",
    "vit.depth=1",
    "vit.heads=2",
    "dino.out_dim=64",
    "dino.hidden_dim=64",
    "dino.bottleneck_dim=16",
    "selfpatch.out_dim=32",
    "dino.local_crops=2",
    "optim.batch_size=16",
]
TOY_SETS = ["model.backbone=resnet8", "optim.batch_size=16", "data.imbalance=0.5"]
PROBES = {  # name: (preset, its settings, its --smoke sizes, whether its per-epoch evaluation is compiled)
    "train-ldam-drw": ("cifar10-lt0.01-ldam-drw", PROBE_SETS, TOY_SETS, True),
    "train-gated-triple": ("cifar10-lt0.01-gated-triple", PROBE_SETS, TOY_SETS, True),
    "train-dino-selfpatch": ("cifar10-dino-selfpatch-gated-vit", DINO_PROBE_SETS, DINO_TOY_SETS, False),
}
SUMMARY_KEYS = (
    "precision",
    "compiled",
    "compiled_steps",
    "compiled_eval_batches",
    "compile_fallbacks",
    "test_acc",
    "epochs",
    "wall_seconds",
)
TEST_FILES = ("tests/test_fastpath.py", "tests/test_compile.py")


def scan_symptoms(text: str, limit: int = 20) -> dict[str, list[str]]:
    """Each symptom in the text, with up to `limit` distinct lines showing it; {} when clean. A
    recompilation's line gets dynamo's reasons (the guard failures on the lines after it) appended."""
    found: dict[str, list[str]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        for symptom in SYMPTOMS:
            if symptom in line:
                shown = found.setdefault(symptom, [])
                reasons = _recompile_reasons(lines[i + 1 : i + 6]) if symptom == "Recompiling" else []
                entry = " | ".join([line.strip(), *reasons])
                if entry not in shown and len(shown) < limit:
                    shown.append(entry)
    return found


def _recompile_reasons(following: list[str]) -> list[str]:
    """The guard failures dynamo logs under a "Recompiling function ..." line ("- 0/0: ...")."""
    reasons = []
    for line in following:
        if "[__recompiles]" not in line or "Recompiling" in line:
            break
        if line.split("[__recompiles]", 1)[1].strip().startswith("- "):
            reasons.append(line.split("[__recompiles]", 1)[1].strip())
    return reasons


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class Proc:
    """A child process in its own session, its output in a log file; `stop` ends it and its children."""

    def __init__(self, name: str, cmd: list[str], env: dict, log: Path):
        self.name, self.cmd, self.log, self.t0 = name, cmd, log, time.monotonic()
        with open(log, "wb") as fh:
            self.p = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.timed_out, self.seconds = False, None

    def done(self) -> bool:
        if self.p.poll() is not None and self.seconds is None:
            self.seconds = time.monotonic() - self.t0
        return self.p.poll() is not None

    def stop(self) -> None:
        """SIGTERM to the child's process group (the compile workers too), SIGKILL if it lingers."""
        self.timed_out = not self.done()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.done():
                return
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.p.wait(timeout=10)
        self.done()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def result(self) -> dict:
        text = self.text().splitlines()
        return {
            "cmd": " ".join(self.cmd[1:]),
            "rc": self.p.returncode,
            "timed_out": self.timed_out,
            "seconds": round(self.seconds or time.monotonic() - self.t0, 1),
            "tail": text[-30:],
        }


def wait_all(procs: list[Proc], deadline: float) -> None:
    while not all(p.done() for p in procs):
        if time.monotonic() > deadline:
            for p in procs:
                p.stop()
            return
        time.sleep(0.5)


def gssl_train(preset: str, out: Path, sets: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gssl",
        "train",
        "--preset",
        preset,
        "--out",
        str(out),
        "--quiet",
        "--force",
    ] + [a for s in sets for a in ("--set", s)]


class Check:
    """The state the parts share: options, device, data, child environment, deadlines and the JSON."""

    def __init__(self, args, tmp: Path):
        self.args, self.tmp, self.device = args, tmp, torch.device(args.device)
        self.t0 = time.monotonic()
        self.data_sets, self.data = self._data()
        self.env = self._child_env()
        cuda = self.device.type == "cuda"
        name = torch.cuda.get_device_name(self.device) if cuda else f"cpu {platform.machine()}"
        default = (
            Path(tempfile.gettempdir()) / f"gpu-check-smoke-{slug(name)}.json"
            if args.smoke
            else ROOT / "docs" / "benchmarks" / f"{slug(name)}.json"
        )
        self.json = args.json or default
        self.out = {"env": self._env(name), "symptoms": {}, "problems": [], "skipped": []}

    def deadline(self, part: str) -> float:
        """The end of this part: its share and every earlier chosen part's, from the start. The shares of
        the parts not chosen (--parts) go to the chosen ones, in proportion."""
        chosen = [p for p in SHARES if p in self.args.parts]
        upto = chosen[: chosen.index(part) + 1]
        scale = sum(SHARES.values()) / sum(SHARES[p] for p in chosen)
        return self.t0 + self.args.budget_s * scale * sum(SHARES[p] for p in upto)

    def sets(self, toy: list[str] = TOY_SETS) -> list[str]:
        return self.data_sets + (toy if self.args.smoke else []) + [f"device={self.device.type}"]

    def scan(self, probe: str, text: str) -> None:
        """Keep and print the symptom lines of one child's output."""
        found = scan_symptoms(text)
        if found:
            self.out["symptoms"][probe] = found
        for symptom, lines in found.items():
            for line in lines:
                print(f"SYMPTOM [{probe}] {symptom!r}: {line}")

    def skip(self, what: str) -> None:
        print(f"skipped (time budget): {what}")
        self.out["skipped"].append(what)

    def write(self) -> None:
        self.json.parent.mkdir(parents=True, exist_ok=True)
        self.json.write_text(json.dumps(self.out, indent=2, default=str))

    def _data(self) -> tuple[list[str], str]:
        """The real CIFAR-10 archive (--data, $GSSL_SHARED_DATA, ./data), or fake data: full-size if none."""
        if self.args.smoke:
            return self._fake(20, 60), "fake CIFAR-10 (20 per class, 600 test images)"
        candidates = [self.args.data] if self.args.data else []
        if os.environ.get("GSSL_SHARED_DATA"):
            candidates.append(Path(os.environ["GSSL_SHARED_DATA"]) / ARCHIVE)
        candidates += [
            Path("data") / ARCHIVE,
            ROOT / "data" / ARCHIVE,
            ROOT.parent / "shared" / "data" / ARCHIVE,
        ]
        for c in candidates:
            if Path(c).exists():
                return [f"data.root={Path(c).resolve()}"], f"CIFAR-10 (real) from {c}"
        if self.args.data:
            sys.exit(f"gpu_check: --data {self.args.data} does not exist")
        print(f"no {ARCHIVE} found (--data, $GSSL_SHARED_DATA, ./data): using fake data of the same size")
        return self._fake(5000, 1000), "fake CIFAR-10 (5,000 per class, as the real one)"

    def _fake(self, per_class: int, test_per_class: int) -> list[str]:
        from gssl.data.fakes import write_cifar

        write_cifar(
            self.tmp / "fake", "cifar10", n_train=10 * per_class, n_test=10 * test_per_class, seed=0, tint=0.8
        )
        return [f"data.root={self.tmp / 'fake'}"]

    def _child_env(self) -> dict:
        env = dict(os.environ, TORCH_LOGS="recompiles")  # dynamo names every recompilation
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
        if self.args.smoke:  # one thread: other processes on a small shared CPU cannot stall it
            env.setdefault("GSSL_CACHE", str(self.tmp / "gssl-cache"))
            env["OMP_NUM_THREADS"] = "1"
        return env

    def _env(self, name: str) -> dict:
        try:  # a copied checkout may have no .git, a machine no git
            git = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
            )
            commit = git.stdout.strip() or None
        except OSError:
            commit = None
        return {
            "device": name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "commit": commit,
            "data": self.data,
            "smoke": self.args.smoke,
            "budget_s": self.args.budget_s,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }


def part_probes(c: Check) -> dict:
    """The CUDA tests and three short compiled runs, at once; their output scanned for SYMPTOMS."""
    # not -x: the first H200 check (2026-12-04) stopped at its first failure and hid two more; the failures'
    # captured logs (TORCH_LOGS' DEBUG trace lines) had filled the reported tail, so stdout only
    pytest = [sys.executable, "-m", "pytest", "-q", "--maxfail=5", "--show-capture=stdout"]
    pytest += ["-p", "no:cacheprovider"]
    # a CPU test (the model stays on the host): compiling C++ for it took 62 s of the H200 check's budget
    pytest += ["--deselect", "tests/test_compile.py::test_the_no_task_step_keeps_its_gradient_under_inductor"]
    pytest += ["-k", "cuda"] if c.args.smoke else []
    # one process per file, side by side: in one process the second H200 check's tests needed 198 s alone
    # and had not finished in the probes' 207 s beside the three compiling probes
    files = [Path(t) for t in TEST_FILES if (ROOT / t).exists()]
    if c.args.smoke:  # -k cuda: a file without such a test would exit 5 (nothing collected)
        files = [f for f in files if "def test_cuda" in (ROOT / f).read_text()]
    names = [f"pytest-{f.stem.removeprefix('test_')}" for f in files]
    procs = [Proc(name, pytest + [str(f)], c.env, c.tmp / f"{name}.log") for name, f in zip(names, files)]
    for name, (preset, probe_sets, toy, _) in PROBES.items():
        cmd = gssl_train(preset, c.tmp / name, c.sets(toy) + probe_sets)
        procs.append(Proc(name, cmd, c.env, c.tmp / f"{name}.log"))
    wait_all(procs, c.deadline("probes"))
    out = {}
    for p in procs:
        out[p.name] = p.result()
        c.scan(p.name, p.text())
        summary = c.tmp / p.name / "summary.json"
        if summary.exists():
            s = json.loads(summary.read_text())
            out[p.name]["summary"] = {k: s.get(k) for k in SUMMARY_KEYS}
        if p.name in PROBES:  # the first epoch's seconds include compiling from a cold cache
            out[p.name]["epoch_seconds"] = [r["seconds"] for r in _metrics(c.tmp / p.name)]
        _judge(c, p.name, out[p.name])
    _print_probes(out)
    return out


def _judge(c: Check, name: str, r: dict) -> None:
    """A probe's failure, timeout, fallback or uncompiled run, as a problem."""
    if r["timed_out"]:
        c.out["problems"].append(f"{name}: stopped at the time budget after {r['seconds']} s")
    elif r["rc"] != 0:
        c.out["problems"].append(f"{name}: exit status {r['rc']}")
    s = r.get("summary")
    eval_compiled = name in PROBES and PROBES[name][3]
    if s and (
        s["compile_fallbacks"]
        or not s["compiled_steps"]
        or (eval_compiled and s["compiled_eval_batches"] == 0)
    ):
        c.out["problems"].append(
            f"{name}: {s['compiled_steps']} compiled steps, "
            f"{s['compiled_eval_batches']} compiled evaluation batches, "
            f"{s['compile_fallbacks']} fallbacks"
        )


def _pct(v) -> str:
    return f"{v:.1f}%" if isinstance(v, (int, float)) else str(v)


def _print_probes(out: dict) -> None:
    print("\n[probes]")
    for name, r in out.items():
        status = "TIMED OUT" if r["timed_out"] else f"exit {r['rc']}"
        print(f"{name:20} {status:10} {r['seconds']:7.1f} s  {_probe_line(r)}")


def _probe_line(r: dict) -> str:
    """A training probe's summary, or the last line a probe printed (pytest's totals)."""
    s = r.get("summary")
    if not s:
        return next((ln for ln in reversed(r["tail"]) if ln.strip()), "")
    return (
        f"{s['precision']}, compiled {s['compiled']}: {s['compiled_steps']} steps and "
        f"{s['compiled_eval_batches']} evaluation batches compiled, {s['compile_fallbacks']} fallbacks, "
        f"{s['epochs']} epochs {r.get('epoch_seconds')} s, test {_pct(s['test_acc'])}"
    )


def part_step(c: Check) -> dict:
    """Images/s of the training step, through run.py's step section within this part's time."""
    import run

    cuda = c.device.type == "cuda"
    skipped: list[str] = []
    layouts = ["channels_last", "compiled + channels_last"] if cuda else ["eager", "compiled"]
    rows = run.bench_step(
        c.device,
        2 if c.args.smoke else 10,
        c.args.smoke,
        # --smoke: run.py --quick's shape, so that each compiled step is built once when both run (inductor's
        # on-disk cache), as the test suite runs them
        shapes=[("resnet8", 16, 32)] if c.args.smoke else [("resnet32", 128, 32)],
        layouts=layouts,
        precisions=["bf16", "fp32"] if cuda else ["fp32"],
        deadline=c.deadline("step"),
        skipped=skipped,
    )
    c.out["skipped"] += skipped
    for r in rows:
        if r["compile_fallbacks"]:
            c.out["problems"].append(f"step {r['precision']} {r['layout']} {r['variant']}: compile fell back")
    return {"rows": rows, "skipped": skipped}


def part_run(c: Check) -> dict:
    """The gated-triple run for --run-s seconds, longer if it has not yet recorded the two epochs an
    extrapolation needs (a slow host compiles for longer), never past this part's end; 200 epochs
    extrapolated."""
    out_dir, epochs = c.tmp / "run", 200
    wanted_end, part_end = time.monotonic() + c.args.run_s, c.deadline("run")
    sets = c.sets() + [f"optim.epochs={epochs}", f"optim.base_epochs={epochs}", "compile=true"]
    p = Proc("run", gssl_train("cifar10-lt0.01-gated-triple", out_dir, sets), c.env, c.tmp / "run.log")
    first_row_at = None
    while not p.done() and time.monotonic() < part_end:
        rows_so_far = len(_metrics(out_dir))
        if first_row_at is None and rows_so_far:
            first_row_at = time.monotonic() - p.t0
        if time.monotonic() >= wanted_end and rows_so_far >= 2:
            break
        time.sleep(0.5)
    p.stop()
    c.scan("run", p.text())
    rows = _metrics(out_dir)
    res = {
        "process": p.result(),
        "epochs_done": len(rows),
        "epoch_seconds": [r["seconds"] for r in rows],
        "images_per_s": [r.get("images_per_second") for r in rows],
        "first_row_after_s": first_row_at,
    }
    res.update(_extrapolate(rows, first_row_at, epochs))
    _print_run(res)
    if not rows:
        c.out["problems"].append("run: no epoch finished within the time given")
    return res


def _metrics(run_dir: Path) -> list[dict]:
    from gssl import rundir

    try:
        return [r for r in rundir.read_metrics(run_dir) if isinstance(r.get("epoch"), int)]
    except (OSError, ValueError):
        return []


def _extrapolate(rows: list[dict], first_row_at: float | None, epochs: int) -> dict:
    """Start-up (process, data, model: time to the first metrics row less that epoch), the first epoch
    (with compiling), the median later epoch, and from them the whole run; not the final evaluation."""
    if len(rows) < 2 or first_row_at is None:
        return {"extrapolated": None}
    first, steady = rows[0]["seconds"], statistics.median(r["seconds"] for r in rows[1:])
    startup = max(0.0, first_row_at - first)
    return {
        "startup_s": round(startup, 2),
        "first_epoch_s": first,
        "steady_epoch_s": steady,
        "extrapolated": {
            "epochs": epochs,
            "seconds": round(startup + first + (epochs - 1) * steady, 1),
            "from_epochs": len(rows),
            "label": "extrapolated",
        },
    }


def _print_run(r: dict) -> None:
    print(
        f"\n[run] long-tailed CIFAR-10 (0.01) gated triple, compiled: {r['epochs_done']} epochs in "
        f"{r['process']['seconds']} s, stopped by the time budget: {r['process']['timed_out']}"
    )
    if r["extrapolated"]:
        e = r["extrapolated"]
        print(
            f"start-up {r['startup_s']:.1f} s, first epoch {r['first_epoch_s']:.2f} s (compiling), then "
            f"{r['steady_epoch_s']:.2f} s per epoch: {e['epochs']} epochs ~ {e['seconds']:.0f} s "
            "(extrapolated)"
        )


def part_sweep(c: Check) -> dict:
    """`gssl sweep --parallel N` through run.py's sweep section, eager runs (compiling would dominate)."""
    import run

    skipped: list[str] = []
    rows = run.bench_sweep(
        c.device,
        c.args.smoke,
        c.tmp,
        sets=c.sets() + ["compile=false"],
        what=f"{c.data}, long-tailed, eager",
        ns=(1, 2) if c.args.smoke else (1, 2, 4),
        env=c.env,
        deadline=c.deadline("sweep"),
        skipped=skipped,
    )
    c.out["skipped"] += skipped
    for log in sorted(c.tmp.glob("sweep*/logs/*.log")):
        c.scan(f"sweep {log.parent.parent.name} {log.stem}", log.read_text(errors="replace"))
    return {"rows": rows, "skipped": skipped}


PARTS = {"probes": part_probes, "step": part_step, "run": part_run, "sweep": part_sweep}


def run_part(c: Check, name: str) -> None:
    """One part, timed; an exception is recorded and the next part runs."""
    if time.monotonic() >= c.deadline(name):
        c.skip(f"part {name} (no time left)")
        c.out[name] = {"skipped": True}
        return
    t0 = time.monotonic()
    try:
        c.out[name] = PARTS[name](c)
    except Exception as e:  # noqa: BLE001 - a failing part must not cost the others
        traceback.print_exc()
        c.out[name] = {"error": f"{type(e).__name__}: {e}"}
        c.out["problems"].append(f"{name}: {type(e).__name__}: {e}")
    c.out[name]["seconds"] = round(time.monotonic() - t0, 1)
    c.write()


def print_summary(o: dict, seconds: float, budget_s: float, json_line: str) -> None:
    print(f"\n== gpu_check on {o['env']['device']}: {seconds:.0f} s of {budget_s:.0f} ==")
    print(f"{'part':8} {'seconds':>8}  result")
    for name in PARTS:
        r = o.get(name, {})
        print(f"{name:8} {r.get('seconds', 0):>8.1f}  {_result(name, r)}")
    n = sum(len(v) for f in o["symptoms"].values() for v in f.values())
    print(f"symptoms: {n} lines, in {', '.join(sorted(o['symptoms']))}" if n else "symptoms: none found")
    for probe, found in o["symptoms"].items():  # again here, at the end of the output, shortened
        for symptom, lines in found.items():
            for line in lines[:3]:
                print(f"  [{probe}] {symptom!r}: {line[-300:]}")
    for p in o["problems"]:
        print(f"PROBLEM: {p}")
    for s in o["skipped"]:
        print(f"skipped: {s}")
    print(json_line)


def _result(name: str, r: dict) -> str:
    if not r:
        return "not run"
    if "error" in r or r.get("skipped") is True:
        return r.get("error", "skipped")
    if name == "probes":
        return ", ".join(
            f"{k} {'timed out' if v['timed_out'] else 'exit ' + str(v['rc'])}"
            for k, v in r.items()
            if isinstance(v, dict)
        )
    if name == "step":
        best = max(r["rows"], key=lambda x: x["images_per_s"], default=None)
        return (
            (
                f"{len(r['rows'])} rows; fastest {best['images_per_s']:,.0f} images/s ({best['precision']} "
                f"{best['layout']} {best['variant']})"
            )
            if best
            else "no rows"
        )
    if name == "run":
        e = r.get("extrapolated")
        return f"{r['epochs_done']} epochs; " + (
            f"{e['epochs']} epochs ~ {e['seconds']:.0f} s (extrapolated)"
            if e
            else "too few epochs to extrapolate"
        )
    return "; ".join(
        f"N={x['parallel']} {x['total_images_per_s']:,.0f} images/s ({x['vs_one']:.2f}x)" for x in r["rows"]
    )


def show(path: Path) -> dict:
    """A recorded check's tables and summary, printed again from its JSON: the numbers that
    docs/performance.md quotes come back with one command."""
    import run

    o = json.loads(path.read_text())
    print("  ".join(f"{k}={v}" for k, v in o["env"].items()))
    parts = {name: o.get(name) or {} for name in PARTS}
    if parts["probes"] and "error" not in parts["probes"]:
        _print_probes({k: v for k, v in parts["probes"].items() if isinstance(v, dict)})
    if parts["step"].get("rows"):
        run._print_step(o["env"]["device"], parts["step"]["rows"], parts["step"].get("skipped", []))
    if parts["run"].get("process"):
        _print_run(parts["run"])
    if parts["sweep"].get("rows"):
        rows = parts["sweep"]["rows"]
        run._print_sweep(rows, rows[0].get("data"), parts["sweep"].get("skipped", []))
    elapsed = sum(p.get("seconds", 0) for p in parts.values())
    print_summary(o, elapsed, o["env"]["budget_s"], f"read from {path}")
    return o


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help=f"the CIFAR-10 archive ({ARCHIVE}) or folder")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget-s", type=float, default=480.0, help="time for all parts together (default 480)")
    ap.add_argument(
        "--run-s",
        type=float,
        default=None,
        help="seconds of the gated-triple run, at least until it records 2 epochs (default 90; smoke 8)",
    )
    ap.add_argument("--smoke", action="store_true", help="toy sizes on fake data: checks the script itself")
    ap.add_argument(
        "--json", type=Path, help="default docs/benchmarks/<device>.json (smoke: in the temp folder)"
    )
    ap.add_argument("--parts", default=",".join(PARTS), help=f"a subset of {','.join(PARTS)}")
    ap.add_argument("--logs", type=Path, help="copy every child's whole output (*.log) into this folder")
    ap.add_argument("--show", type=Path, help="print a recorded check (its JSON) again; runs nothing")
    args = ap.parse_args(argv)
    if args.show:
        return show(args.show)
    args.run_s = args.run_s or (8.0 if args.smoke else 90.0)
    parts = args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if set(parts) - set(PARTS) or not parts:
        ap.error(f"unknown parts {sorted(set(parts) - set(PARTS))}; choose from {','.join(PARTS)}")
    sys.stdout.reconfigure(line_buffering=True)  # a check cut short still shows what it printed
    sys.path.insert(0, str(HERE))  # run.py, for the step and sweep sections
    if args.smoke:
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        c = Check(args, Path(tmp))
        print("  ".join(f"{k}={v}" for k, v in c.out["env"].items()))
        for name in parts:
            print(f"\n=== {name} (until {c.deadline(name) - c.t0:.0f} s) ===", flush=True)
            run_part(c, name)
        print_summary(c.out, time.monotonic() - c.t0, args.budget_s, f"written to {c.json}")
        c.write()
        if args.logs:
            keep_logs(Path(tmp), args.logs)
    return c.out


def keep_logs(tmp: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for log in [*tmp.glob("*.log"), *tmp.glob("sweep*/logs/*.log")]:
        name = log.name if log.parent == tmp else f"{log.parent.parent.name}-{log.name}"
        shutil.copyfile(log, dest / name)
    print(f"logs copied to {dest}")


if __name__ == "__main__":
    main()
