"""How a chunk's replicas run together: under ``vmap``, or one after another in a Python loop.

Both give the same per-replica arithmetic (the same functional step on each replica's slice);
they differ in speed. On a GPU ``vmap`` wins. On a CPU a chunk that trains convolutions on large
feature maps is faster as a loop of plain convolutions than as ``vmap``'s grouped ones, each
replica laid out channels-last (oneDNN's fastest layout; float rounding apart the same
arithmetic); on small maps (the last Conv4 block at 10x10, the 32x32 synthetic images) the
loop's overhead loses. Measured: ``docs/results.md`` (the CPU loop, precision speed).
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
    is a convolution weight (4-d: the module's own tensors, not replicas stacked on them) and the
    trained stages' input has ``pixels`` >= :data:`LOOP_MIN_PIXELS` per channel."""
    if vectorize != "auto":
        return vectorize == "loop"
    convs = any(t.ndim == 4 for t in trained)
    return device.type == "cpu" and convs and pixels >= LOOP_MIN_PIXELS


#: Whether :func:`per_replica` ``(channels_last=True)`` lays slices out channels-last (False:
#: as they come, channels-first; ``benchmarks/bench_cpu_loop.py`` compares the two).
LOOP_CHANNELS_LAST = True


def per_replica(fn: Callable[..., Any], channels_last: bool = False) -> Callable[..., Any]:
    """``fn`` on replica i's slice of every argument (a pytree of tensors with a leading replica
    dimension), the results stacked: ``vmap``'s contract as a Python loop. With
    ``channels_last`` every floating slice of 4 dimensions (images, activations, convolution
    weights) reaches ``fn`` channels-last (while :data:`LOOP_CHANNELS_LAST`).

    Example:
        >>> double = per_replica(lambda d: {"y": 2 * d["x"]})
        >>> double({"x": torch.ones(3, 2)})["y"].shape
        torch.Size([3, 2])
    """

    def lay_out(t: torch.Tensor) -> torch.Tensor:
        if channels_last and LOOP_CHANNELS_LAST and t.ndim == 4 and t.is_floating_point():
            return t.contiguous(memory_format=torch.channels_last)
        return t

    def run(*args: Any) -> Any:
        n = len(tree_leaves(args[0])[0])
        outs = [fn(*tree_map(lambda t, i=i: lay_out(t[i]), args)) for i in range(n)]
        return tree_map(lambda *xs: torch.stack(xs), *outs)

    return run
