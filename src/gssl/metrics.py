"""Test-set evaluation: top-1/top-5, per-class accuracy, many/medium/few-shot groups, confusion matrix.

Shot groups follow the long-tail literature (LDAM, OLTR): classes with more than 100 training
images are many-shot, 20 to 100 medium-shot, fewer than 20 few-shot.
"""

from __future__ import annotations

import contextlib

import torch

from .step import autocast

MANY, FEW = 100, 20


_shown = None  # within shown(wrap): the loaders predict() goes through, wrapped (a progress bar)


@contextlib.contextmanager
def shown(wrap):
    """predict() iterates its loaders through wrap(loader) within: the training loop shows the progress of
    any scenario's evaluation without the scenarios knowing."""
    global _shown
    before, _shown = _shown, wrap
    try:
        yield
    finally:
        _shown = before


@torch.inference_mode()
def predict(
    model: torch.nn.Module, loader, device_type: str = "cpu", precision: str = "fp32", fn=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits (float32) and labels for a whole loader, on the loader's device, model in eval mode;
    `fn(x)` instead of `model(x)` gives other logits (SLA's aggregated inference). Each batch's output is
    copied: a compiled `fn` under CUDA graphs returns the same static buffer on every call."""
    fn = fn or model
    was_training = model.training
    model.eval()
    outs, ys = [], []
    with autocast(device_type, precision):
        for x, y in loader if _shown is None else _shown(loader):
            outs.append(fn(x).to(torch.float32, copy=True))
            ys.append(y)
    model.train(was_training)
    return torch.cat(outs), torch.cat(ys)


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows are true classes, columns predictions."""
    idx = labels.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """A count over the number of images, in Python floats: a float32 mean of 0/1 rounds (7 of 10 images
    gave 69.9999988), and the exact robust top-1 beside it then looked higher than the clean one."""
    return 100.0 * (logits.argmax(1) == labels).sum().item() / labels.numel()


def summary_accuracies(report_: dict) -> dict:
    """summary.json's names for report()'s top-1 and top-5: what `gssl table` reads from a summary and from
    a later `gssl eval --protocol final` report alike."""
    return {"test_acc": report_["top1"], "top5_acc": report_["top5"]}


def report(logits: torch.Tensor, labels: torch.Tensor, train_counts: list[int]) -> dict:
    """Everything `gssl eval` and summary.json show; accuracies in percent."""
    num_classes = logits.shape[1]
    pred = logits.argmax(1)
    cm = confusion_matrix(pred, labels, num_classes)
    per_class_n = cm.sum(1)
    per_class = [100.0 * cm[c, c].item() / n if n else None for c, n in enumerate(per_class_n.tolist())]
    k = min(5, num_classes)
    top5 = 100.0 * (logits.topk(k, 1).indices == labels[:, None]).any(1).sum().item() / labels.numel()

    def group(pred_fn):
        accs = [a for a, n in zip(per_class, train_counts) if a is not None and pred_fn(n)]
        return sum(accs) / len(accs) if accs else None

    return {
        "top1": top1(logits, labels),
        "top5": top5,
        "per_class_acc": per_class,
        "many_shot_acc": group(lambda n: n > MANY),
        "medium_shot_acc": group(lambda n: FEW <= n <= MANY),
        "few_shot_acc": group(lambda n: n < FEW),
        "confusion_matrix": cm.tolist(),
        "num_test": int(labels.numel()),
    }
