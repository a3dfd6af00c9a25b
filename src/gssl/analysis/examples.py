"""What the figures show, computed from a run: Grad-CAM on a grid of test images, and the pretext tasks
applied to a few test images with their labels."""

from __future__ import annotations

import torch

from ..evaluation import has_classifier
from ..pretext import PERMUTATIONS, TASKS, TILE_ORDERS, build_pretext
from .gradcam import default_layer, grad_cam
from .run import Run, normalised, one_per_class


def gradcam_examples(run: Run, n: int = 8, layer: str | None = None) -> dict:
    """Grad-CAM for the true and for the predicted class of n test images (one per class in turn)."""
    if not has_classifier(run.cfg):
        from ..config import ConfigError

        raise ConfigError(
            f"{run.name} is a contrastive pre-training run: it has no classifier whose evidence Grad-CAM "
            "could show"
        )
    ld = run.loaded()
    layer = layer or default_layer(ld.model)
    idx = torch.as_tensor(one_per_class(ld.data.test.labels, n))
    images, labels = ld.data.test.images[idx], ld.data.test.labels[idx]
    x = normalised(ld, images)
    cam_true, logits = grad_cam(ld.model, x, labels.to(ld.device), layer=layer)
    preds = logits.argmax(1)
    cam_pred, _ = grad_cam(ld.model, x, preds.to(ld.device), layer=layer)
    return {
        "images": images.numpy(),
        "labels": labels.numpy(),
        "preds": preds.numpy(),
        "cam_true": cam_true.numpy(),
        "cam_pred": cam_pred.numpy(),
        "layer": layer,
        "classes": list(ld.data.test.classes),
    }


def _describe(task: str, p: dict, i: int) -> str:
    label = int(TASKS[task].label({k: v[i : i + 1] for k, v in p.items()}))
    if task == "lorot":
        return (
            f"LoRot-E: quadrant {int(p['quadrant'][i])},\nrot {90 * int(p['rotation'][i])}° -> label {label}"
        )
    if task == "flip":
        return f"flip: {'flipped' if int(p['flip'][i]) else 'not flipped'}\n-> label {label}"
    if task == "channel":
        perm = PERMUTATIONS[int(p["perm"][i])]
        return f"channels: {'RGB'[perm[0]]}{'RGB'[perm[1]]}{'RGB'[perm[2]]}\n-> label {label}"
    if task in ("lorot_i", "rotation"):
        return f"{task}: rot {90 * int(p['rotation'][i])}°\n-> label {label}"
    if task == "jigsaw":
        return f"jigsaw: tiles {''.join(map(str, TILE_ORDERS[int(p['tiles'][i])]))}\n-> label {label}"
    return f"{task}\n-> label {label}"


def _params(pretext, x: torch.Tensor) -> dict:
    """Varied, readable parameters: quadrants 0..3 in turn and no identity transforms where possible."""
    n = len(x)
    p = pretext.sample(x, torch.Generator().manual_seed(0))
    i = torch.arange(n)
    if "quadrant" in p:
        p["quadrant"] = i % 4
    if "rotation" in p:
        p["rotation"] = 1 + i % 3
    if "flip" in p:
        p["flip"] = (i + 1) % 2
    if "perm" in p:
        p["perm"] = 1 + i % 5
    if "tiles" in p:
        p["tiles"] = 1 + (7 * i) % 23
    return p


def _box(pretext, p: dict, i: int, H: int, W: int):
    if pretext.region == "quadrant":
        q = int(p["quadrant"][i])
        return (q // 2) * (H // 2), (q % 2) * (W // 2), H // 2, W // 2
    if pretext.region == "square":
        s = int(p["side"][0])
        return int(p["top"][0]), int(p["left"][0]), s, s
    return None


def pretext_rows(images_uint8: torch.Tensor, tasks: list[str], flip_axis: str = "H") -> list[list[tuple]]:
    """Per image: the original, each task's transform alone (with its label), and all tasks together
    as training applies them. Un-normalised pixels: the transforms only move pixels."""
    x = images_uint8.float()
    pretext = build_pretext(tasks, flip_axis)
    p = _params(pretext, x)
    region_keys = {"quadrant", "side", "top", "left"}
    singles = {}
    for t in tasks:
        only = {k: v for k, v in p.items() if k in region_keys or k in TASKS[t].draws}
        singles[t] = build_pretext([t], flip_axis).apply(x, only)[0].round().to(torch.uint8)
    together = pretext.apply(x, p)[0].round().to(torch.uint8)
    H, W = x.shape[-2:]
    rows = []
    for i in range(len(x)):
        box = _box(pretext, p, i, H, W)
        row = [("original", images_uint8[i].numpy(), None)]
        row += [(_describe(t, p, i), singles[t][i].numpy(), box) for t in tasks]
        if len(tasks) > 1:
            labels = ", ".join(
                f"{t} {int(TASKS[t].label({k: v[i : i + 1] for k, v in p.items()}))}" for t in tasks
            )
            row.append((f"all, as trained:\n{labels}", together[i].numpy(), box))
        rows.append(row)
    return rows


def is_greyscale(images_uint8: torch.Tensor) -> bool:
    """True for 1-channel images and for greyscale replicated to RGB (channel permutation is invisible)."""
    x = images_uint8
    return x.shape[1] == 1 or bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all())


def sample_test_images(run: Run, n: int = 4) -> torch.Tensor:
    test = run.test_split()
    return test.images[torch.as_tensor(one_per_class(test.labels, n))]


@torch.inference_mode()
def class_attention_examples(run: Run, n: int = 6) -> dict:
    """Test images (one per class) and the last block's class-token attention over their patches, in the
    ViT the run is judged by (DINO's teacher, else the model's backbone): what DINO's users look at first.
    maps: [n, heads, rows, cols], each image's maps summing to at most 1 per head (the rest is the class
    token attending to itself)."""
    from ..models.vit import ViT

    loaded = run.loaded()
    vits = {name: module for name, module in loaded.model.named_modules() if isinstance(module, ViT)}
    if not vits:
        raise ValueError(
            f"model.backbone={loaded.cfg.model.backbone} has no class-token attention (not a ViT)"
        )
    name = next((name for name in vits if name.startswith("teacher")), next(iter(vits)))
    images = sample_test_images(run, n)
    maps = vits[name].class_attention(normalised(loaded, images)).float().cpu()
    return {"images": images, "maps": maps, "module": name}
