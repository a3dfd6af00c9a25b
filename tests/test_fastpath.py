"""The fast path: compiled step with eager fallback and static shapes, the deferred non-finite watch,
and (with CUDA only) the whole CUDA path end to end."""

import json
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import DINO_TINY, TINY_FIXMATCH, TWO_EPOCHS_EVERY_EVENT, train_preset, train_tiny_run
from gssl import rundir
from gssl.gating import ALL_GATES
from gssl.losses import build_loss
from gssl.method import GatedSSL
from gssl.step import Compiled, FiniteWatch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _counting_backend(graphs):
    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return backend


def _step_inputs(b=8):
    torch.manual_seed(0)
    model = GatedSSL("resnet20", 10, tasks=["lorot", "flip", "channel"], gate="learned")
    x, y = torch.randn(b, 3, 16, 16), torch.randint(0, 10, (b,))
    return model, x, y, build_loss("ce"), model.sample_params(x, torch.Generator().manual_seed(1))


def test_compiled_step_matches_eager_in_one_graph_and_partial_batches_run_eagerly():
    model, x, y, loss_fn, params = _step_inputs()
    graphs = []
    step = Compiled(model.loss_from_params, enabled=True, batch=8, backend=_counting_backend(graphs))
    loss_c, stats_c = step(x, y, loss_fn, params)
    loss_e, stats_e = model.loss_from_params(x, y, loss_fn, params)
    assert len(graphs) == 1  # the whole step, no graph break
    assert torch.allclose(loss_c, loss_e, atol=1e-5)
    assert set(stats_c) == set(stats_e)
    step(x, y, loss_fn, params)
    part = {k: v[:5] for k, v in params.items()}
    loss_p, _ = step(x[:5], y[:5], loss_fn, part)  # the last, partial batch: eager, no recompilation
    assert len(graphs) == 1
    assert torch.allclose(loss_p, model.loss_from_params(x[:5], y[:5], loss_fn, part)[0], atol=1e-6)
    loss_c.backward()  # gradients flow through the compiled graph
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_a_failing_compiler_warns_once_and_training_goes_on_eagerly():
    model, x, y, loss_fn, params = _step_inputs()

    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    step = Compiled(model.loss_from_params, enabled=True, batch=8, backend=broken)
    with pytest.warns(RuntimeWarning, match="torch.compile of the step failed.*compile=false"):
        loss, _ = step(x, y, loss_fn, params)
    assert not step.active and step.fallbacks == 1
    assert torch.allclose(loss, model.loss_from_params(x, y, loss_fn, params)[0])


def test_finite_watch_keeps_the_first_bad_step_and_its_terms_on_the_device():
    w = FiniteWatch(torch.device("cpu"))
    ok, nan = torch.tensor(1.0), torch.tensor(float("nan"))
    w.update(0, ok, {"loss": ok, "correct": torch.tensor(3)})
    assert w.first_bad() is None
    w.update(1, nan, {"loss": nan, "cls_loss": torch.tensor(2.5)})
    w.update(2, nan, {"loss": nan, "cls_loss": torch.tensor(7.0)})
    step, terms = w.first_bad()
    assert step == 1 and terms["cls_loss"] == 2.5 and terms["loss"] != terms["loss"]
    w.reset()
    assert w.first_bad() is None


def test_engine_compiles_the_step_when_asked(fake_cifar10, tmp_path, monkeypatch):
    """compile=true on CPU (aot_eager backend: the same capture, no C++ build): the run trains, and
    matches the eager run closely."""
    import gssl.step

    real = torch.compile
    calls = []

    def compile_aot(fn, **kw):
        calls.append(kw)
        return real(fn, backend="aot_eager", dynamic=False)

    monkeypatch.setattr(gssl.step.torch, "compile", compile_aot)
    run_c = train_tiny_run(fake_cifar10, tmp_path / "compiled", 1, "compile=true", "ssl.gate=learned")
    monkeypatch.undo()
    run_e = train_tiny_run(fake_cifar10, tmp_path / "eager", 1, "compile=false", "ssl.gate=learned")
    assert len(calls) == 2  # the step and the evaluation
    a = rundir.read_metrics(run_c)[0]
    b = rundir.read_metrics(run_e)[0]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)


@cuda
def test_cuda_fast_path_end_to_end(fake_cifar10, tmp_path):
    run = train_tiny_run(fake_cifar10, tmp_path / "cuda", 2, "device=cuda", "optim.batch_size=32")
    s = json.loads((run / "summary.json").read_text())
    assert s["device"].startswith("cuda") and 0 <= s["test_acc"] <= 100
    rows = rundir.read_metrics(run)
    assert all(r["loss"] == r["loss"] for r in rows)  # finite under bf16 autocast


@cuda
def test_cuda_step_in_bf16_channels_last_is_close_to_fp32():
    model, x, y, loss_fn, params = _step_inputs(32)
    model = model.cuda()
    x, y = x.cuda(), y.cuda()
    params = {k: v.cuda() for k, v in params.items()}
    ref, _ = model.loss_from_params(x, y, loss_fn.cuda(), params)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fast, _ = model.to(memory_format=torch.channels_last).loss_from_params(
            x.contiguous(memory_format=torch.channels_last), y, loss_fn, params
        )
    assert torch.isfinite(fast) and abs(fast.item() - ref.item()) < 0.05 * abs(ref.item()) + 0.05


@cuda
def test_cuda_pretext_draws_need_no_host_copy():
    model, x, y, _, _ = _step_inputs(16)
    gen = torch.Generator(device="cuda").manual_seed(0)
    params = model.cuda().sample_params(x.cuda(), gen)
    assert all(v.is_cuda for v in params.values())


def test_channels_last_on_cpu_is_an_option_with_the_same_training(fake_cifar10, tmp_path):
    model, x, y, loss_fn, params = _step_inputs()
    ref, _ = model.loss_from_params(x, y, loss_fn, params)
    nhwc, _ = model.to(memory_format=torch.channels_last).loss_from_params(
        x.contiguous(memory_format=torch.channels_last), y, loss_fn, params
    )
    assert torch.allclose(ref, nhwc, rtol=1e-5)  # the same step, another memory layout
    a = train_tiny_run(fake_cifar10, tmp_path / "nhwc", 1, "channels_last=true", "optim.lr=0.001")
    b = train_tiny_run(fake_cifar10, tmp_path / "nchw", 1, "channels_last=false", "optim.lr=0.001")
    ra, rb = (rundir.read_metrics(r)[0] for r in (a, b))
    # another summation order rounds differently; at lr 0.1 an epoch of batch-16 LDAM steps amplifies that
    # into a 10% different loss on one thread (chaotic, not a layout bug), so a small step keeps it near
    assert ra["loss"] == pytest.approx(rb["loss"], rel=0.005)


def test_compile_default_repays_itself_on_cpu_and_is_on_for_cuda():
    """compile=null: CUDA always; CPU only when the run sees enough images to repay compiling (a 200-epoch
    long-tailed CIFAR-10 run does, the quickstart does not); an explicit setting always wins."""
    from gssl.distributed import Dist
    from gssl.engine import CPU_COMPILE_MIN_IMAGES, compile_mode, use_compile
    from gssl.presets import resolve as preset_config

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    lt = preset_config("cifar10-lt0.01-gated-triple")
    assert use_compile(lt, cpu, 12_406) and use_compile(lt, gpu, 12_406)
    quick = preset_config("quickstart")
    assert not use_compile(quick, cpu, 6_000) and use_compile(quick, gpu, 6_000)
    lt.compile = False
    assert not use_compile(lt, gpu, 12_406)
    lt.compile, lt.optim.epochs = None, 30
    assert use_compile(lt, cpu, 12_406) == (30 * 12_406 >= CPU_COMPILE_MIN_IMAGES)
    assert compile_mode(lt, Dist()) == "reduce-overhead"
    assert compile_mode(lt, Dist(rank=0, world=2)) == "default"  # no CUDA graphs under DDP


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_precision_is_a_setting_recorded_in_the_summary(fake_cifar10, tmp_path, precision):
    run = train_tiny_run(
        fake_cifar10, tmp_path / precision, 1, f"precision={precision}", "model.backbone=resnet8"
    )
    s = json.loads((run / "summary.json").read_text())
    assert s["precision"] == precision and s["test_acc"] == s["test_acc"]
    rows = rundir.read_metrics(run)
    assert all(r["loss"] == r["loss"] for r in rows)  # finite


def test_precision_default_is_fp32_on_cpu(tiny_run):
    assert json.loads((tiny_run / "summary.json").read_text())["precision"] == "fp32"


class HostValues(TorchDispatchMode):
    """The operators that, on CUDA, copy a Python value to the device or read the device into Python,
    each a host synchronisation, recorded with the line that called them: lift_fresh (`t[i] = 5.0`,
    `torch.tensor(...)`), _local_scalar_dense (`.item()`, `bool(t)`), nonzero (a shape from the data).
    On CPU they are harmless, but the dispatcher sees them all the same: the CPU half of the CUDA sync
    test below, which found three of them in RandAugment on the first H200 (2026-12-04)."""

    WATCHED = ("aten.lift_fresh.default", "aten._local_scalar_dense.default", "aten.nonzero.default")

    def __init__(self, within: str | None = None, unless: tuple[str, ...] = ()):
        """Only what is called from inside function `within` (if given) and from none of `unless`."""
        super().__init__()
        self.found, self.within, self.unless = [], within, unless

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in self.WATCHED:
            caller = [f for f in traceback.extract_stack() if "/gssl/" in f.filename]
            names = {f.name for f in caller}
            if (self.within is None or self.within in names) and not names & set(self.unless):
                self.found.append(
                    (str(func), f"{caller[-1].filename}:{caller[-1].lineno}" if caller else "?")
                )
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("gate", list(ALL_GATES))
def test_the_training_step_of_every_gate_makes_no_host_values(gate):
    """Forward, backward and the gate's after-step hook (dwa's sums, gradnorm's renormalisation); dwa's
    once-an-epoch update may read its step count."""
    torch.manual_seed(0)
    model = GatedSSL("resnet8", 10, tasks=["lorot", "flip", "channel"], gate=gate)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    params = model.sample_params(x, torch.Generator().manual_seed(1))
    with HostValues() as host:
        loss, _ = model.loss_from_params(x, y, torch.nn.CrossEntropyLoss(), params)
        loss.backward()
        model.pretext.after_step()
    assert host.found == [], sorted(set(host.found))


SCENARIOS = {  # one tiny eager run per family of scenario steps
    "gcs": ("cifar10-lt0.01-gated-triple", "ssl.gate=gcs"),
    "adversarial": ("cifar10-lt0.01-gated-triple", "adv.attack=pgd", "adv.steps=2", "adv.eval_steps=1"),
    "sla-sd": ("cifar10-lt0.01-sla-sd-channel",),
    "lorot-i": ("cifar10-lt0.01-lorot-i",),
    "fixmatch": ("cifar10-4000-fixmatch-gated-triple", *TINY_FIXMATCH, "optim.batch_size=8"),
    "simclr-fusion": (
        "cifar10-simclr-gated-pretext",
        "fusion.enabled=true",
        "contrastive.linear_epochs=1",
        "loss.drw_epoch=null",
        "optim.schedule=step",
    ),
}


@pytest.mark.parametrize("name", [*SCENARIOS, "dino-selfpatch"])
def test_no_scenario_reads_the_device_in_its_training_steps(name, fake_cifar10, tmp_path):
    """Everything the engine's epoch loop calls (the scenario's preparation, the step, backward, the
    after-step hooks, the metric sums), through a real `gssl train`. Allowed: the non-finite check,
    which reads the loss every step on CPU only (once an epoch on CUDA), and the optimiser's own kernel
    (fused on CUDA: its step counts stay on the device)."""
    if name == "dino-selfpatch":
        preset, sets = "cifar10-dino-selfpatch-gated-vit", [*DINO_TINY, "dino.linear_epochs=0"]
    else:
        (preset, *extra), sets = SCENARIOS[name], [*TWO_EPOCHS_EVERY_EVENT]
        sets += extra
    from gssl import engine

    within, unless = "train_epoch", ("_stop_if_non_finite", "optimizer_step")
    assert all(callable(getattr(engine, f, None)) for f in (within, *unless))  # renamed: nothing would match
    with HostValues(within=within, unless=unless) as host:
        train_preset(preset, fake_cifar10, tmp_path / name, *sets, "compile=false", "device=cpu")
    assert host.found == [], sorted(set(host.found))


@cuda
def test_cuda_fixmatch_preparation_and_ema_never_synchronise():
    """RandAugment's constants are made on the device and the EMA is one foreach lerp: with CUDA's sync
    debug mode set to error, a FixMatch batch's strong view and an EMA update run without a host sync."""
    from gssl.ema import EMA
    from gssl.methods.fixmatch.semisup import StrongAugment

    model = GatedSSL("resnet8", 10, tasks=["lorot", "flip", "channel"], gate="learned").cuda()
    ema = EMA(model, 0.999)
    strong = StrongAugment((0.5,) * 3, (0.25,) * 3, torch.device("cuda"))
    x = torch.randn(64, 3, 32, 32, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        xs = strong(x, gen)
        model.sample_params(torch.cat([x, xs]), gen)
        ema.update(model)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert xs.shape == x.shape


@cuda
def test_cuda_frozen_features_stay_on_the_device():
    """SimCLR's per-epoch k-NN searches the feature bank where the features are, not on host cores."""
    from gssl import metrics

    net = torch.nn.Linear(4, 3).cuda()
    batches = [(torch.randn(5, 4, device="cuda"), torch.randint(0, 3, (5,), device="cuda")) for _ in range(2)]
    feats, labels = metrics.predict(net, batches, "cuda")
    assert feats.is_cuda and labels.is_cuda
