"""Pieces for contrastive pre-training and its evaluation (the neighbouring systems' issue, first part).

`nt_xent`: SimCLR's normalised temperature-scaled cross-entropy over V views of each image (V = 2 is
SimCLR). `knn_predict` and `linear_probe`: the two standard ways to judge a frozen representation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(views: Tensor, temperature: float = 0.5) -> Tensor:
    """views: [V, N, D] projections of N images under V augmentations. Every embedding's positives
    are the other V - 1 views of its image, its negatives every view of the other images; the loss
    is the mean over anchors and positives of -log softmax over all other embeddings."""
    v, n, _ = views.shape
    if v < 2:
        raise ValueError(f"NT-Xent needs at least 2 views, got {v}")
    z = F.normalize(views.reshape(v * n, -1).float(), dim=1)
    sim = z @ z.T / temperature
    eye = torch.eye(v * n, dtype=torch.bool, device=z.device)
    logp = sim.masked_fill(eye, float("-inf")).log_softmax(dim=1)
    image = torch.arange(v * n, device=z.device) % n
    positive = (image[:, None] == image[None, :]) & ~eye
    return -(logp[positive]).mean()


@torch.no_grad()
def knn_predict(train_feat: Tensor, train_labels: Tensor, feat: Tensor, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 1024) -> Tensor:
    """Class scores [M, C] by weighted k-nearest-neighbour voting on cosine similarity
    (weights exp(sim / temperature), as in Wu et al. 2018)."""
    bank = F.normalize(train_feat.float(), dim=1)
    out = []
    for q in F.normalize(feat.float(), dim=1).split(chunk):
        sim, idx = (q @ bank.T).topk(min(k, len(bank)), dim=1)
        w = (sim / temperature).exp()
        scores = torch.zeros(len(q), num_classes, device=q.device)
        out.append(scores.scatter_add_(1, train_labels[idx], w))
    return torch.cat(out)


def linear_probe(train_feat: Tensor, train_labels: Tensor, num_classes: int, *, epochs: int = 100,
                 lr: float = 0.1, weight_decay: float = 0.0, batch_size: int = 1024, seed: int = 0) -> torch.nn.Linear:
    """A linear classifier on frozen (standardised by the caller, if wanted) features: SGD with
    momentum and a cosine schedule, full passes over shuffled features."""
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(train_feat.shape[1], num_classes).to(train_feat.device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    x, y = train_feat.detach().float(), train_labels
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).to(x.device).split(batch_size):
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return head
