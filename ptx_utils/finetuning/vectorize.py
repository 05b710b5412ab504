"""How a chunk's replicas run together: under ``vmap``, or one after another in a Python loop.

Both give the same per-replica arithmetic (the same functional step on each replica's slice);
they differ in speed. On a GPU ``vmap`` wins. On a CPU a chunk that trains convolutions on large
feature maps is faster as a loop of plain convolutions than as ``vmap``'s grouped ones (Conv4 at
84x84, 16 replicas x 4 images, forward + backward of a 64-channel block at 42x42: 0.19 s vmapped,
0.08 s looped in fp32, 0.05 s in bf16); on small maps the loop's overhead loses — the last
block at 10x10, and every block of the 32x32 synthetic images (4 schemes x 4 episodes, 20 passes,
training from the first block on: 4.1 s vmapped vs 6.2 s looped in bf16; from the second block
on: 1.7 s vs 3.8 s). Measured: ``docs/results.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_leaves, tree_map

VECTORIZE = ("auto", "vmap", "loop")


#: ``"auto"`` loops on a CPU when the trained stages start on maps of at least this many pixels.
LOOP_MIN_PIXELS = 40 * 40


def loop_replicas(
    vectorize: str, device: torch.device, trained: Sequence[torch.Tensor], pixels: int
) -> bool:
    """Whether to loop: ``"loop"``, ``"vmap"``, or ``"auto"`` = on a CPU when a trained tensor
    is a convolution weight (4-d) and the trained stages' input has ``pixels`` >=
    :data:`LOOP_MIN_PIXELS` per channel."""
    if vectorize != "auto":
        return vectorize == "loop"
    convs = any(t.ndim == 4 for t in trained)
    return device.type == "cpu" and convs and pixels >= LOOP_MIN_PIXELS


def per_replica(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` on replica i's slice of every argument (a pytree of tensors with a leading replica
    dimension), the results stacked: ``vmap``'s contract as a Python loop.

    Example:
        >>> double = per_replica(lambda d: {"y": 2 * d["x"]})
        >>> double({"x": torch.ones(3, 2)})["y"].shape
        torch.Size([3, 2])
    """

    def run(*args: Any) -> Any:
        n = len(tree_leaves(args[0])[0])
        outs = [fn(*tree_map(lambda t, i=i: t[i], args)) for i in range(n)]
        return tree_map(lambda *xs: torch.stack(xs), *outs)

    return run
