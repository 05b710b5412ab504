"""Features of a frozen backbone, and nearest-centroid accuracy on episodes (the cheap probe).

Nearest centroid (ProtoNet's classifier without training) scores a backbone on an episode by
averaging the support features of each class and assigning each query to the closest average. It
is the validation score of pre-training and a baseline every strategy should beat.
"""

from __future__ import annotations

import numpy as np
import torch

from ptx_utils.core.device import autocast, to_layout
from ptx_utils.data.augment import normalize
from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import Episodes
from ptx_utils.models.heads import prototype_logits


@torch.no_grad()
def extract_features(
    backbone: torch.nn.Module,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    precision: str = "fp32",
) -> torch.Tensor:
    """Features of uint8 images (N, C, H, W) in eval mode: float32 (N, D) on ``device``.

    ``precision`` (resolved: ``"fp32"`` or ``"bf16"``) sets autocast and memory layout.
    """
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = normalize(images[start : start + batch_size].to(device, non_blocking=True))
            with autocast(torch.device(device), precision):
                out.append(backbone(to_layout(x, precision)).float())
    finally:
        backbone.train(was_training)
    return torch.cat(out) if out else torch.empty(0, device=device)


def centroid_logits(
    support: torch.Tensor, query: torch.Tensor, metric: str = "euclidean"
) -> torch.Tensor:
    """Logits of queries against class centroids, batched over episodes.

    Args:
        support: (E, n_way, k_shot, D) support features.
        query: (E, Q, D) query features.
        metric: ``"euclidean"`` (negative squared distance) or ``"cosine"``.

    Returns:
        (E, Q, n_way) logits.
    """
    return prototype_logits(query, support.mean(dim=2), metric)


def nearest_centroid_accuracy(
    backbone: torch.nn.Module,
    dataset: FewShotDataset,
    episodes: Episodes,
    device: torch.device,
    metric: str = "euclidean",
    batch_size: int = 256,
    precision: str = "fp32",
) -> np.ndarray:
    """Per-episode query accuracy of nearest-centroid classification: float64 (E,).

    Each image the episodes use is embedded once, whatever the number of episodes using it.
    """
    used = np.unique(np.concatenate([episodes.support.ravel(), episodes.query.ravel()]))
    images = dataset.images[torch.from_numpy(used)]
    feats = extract_features(backbone, images, device, batch_size, precision)

    def pos(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.searchsorted(used, idx)).to(device)

    e, n, k, q = len(episodes), episodes.n_way, episodes.k_shot, episodes.n_query
    support = feats[pos(episodes.support)].reshape(e, n, k, -1)
    query = feats[pos(episodes.query)].reshape(e, n * q, -1)
    pred = centroid_logits(support, query, metric).argmax(dim=-1)
    truth = torch.arange(n, device=device).repeat_interleave(q)
    return (pred == truth).double().mean(dim=1).cpu().numpy()
