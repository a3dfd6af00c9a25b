"""Seeing what a run learned: Grad-CAM, t-SNE, gate trajectories, and the HTML report.

    from gssl.analysis import render_report, grad_cam
    render_report(["runs/quickstart"])            # runs/quickstart/report.html (+ report/*.png)
    cams, logits = grad_cam(model, x, labels)     # [B, H, W] heatmaps on the last stage

Needs matplotlib and scikit-learn (`pip install gssl[analysis]`); grad_cam itself needs only torch.
"""

from .gradcam import default_layer, grad_cam, peak_quadrant, quadrant_mass, stage_names


def render_report(*args, **kwargs):
    from .report import render_report as _render

    return _render(*args, **kwargs)


__all__ = ["default_layer", "grad_cam", "peak_quadrant", "quadrant_mass", "render_report", "stage_names"]
