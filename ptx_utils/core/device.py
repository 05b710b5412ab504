"""Device and precision: where a computation runs, and in which number format and memory layout.

``precision`` is one setting everywhere: ``"fp32"`` (float32, channels-first), ``"bf16"`` (bfloat16
autocast + channels-last) or ``"auto"`` (bf16 on CUDA and on CPUs with native bf16 instructions,
fp32 elsewhere). Details and measured speed-ups: ``docs/precision.md``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16")
#: CPU flags (``/proc/cpuinfo``) that give native bfloat16 arithmetic, best first.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is checked and returned."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; use 'auto'")
    return dev


@functools.cache
def cpu_bf16() -> str | None:
    """This CPU's native bfloat16 support: ``"amx_bf16"``, ``"avx512_bf16"`` or None.

    Read from ``/proc/cpuinfo`` on Linux; elsewhere oneDNN's own check (``"onednn_bf16"``).
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return next((name for name in CPU_BF16_FLAGS if name in flags), None)
    except OSError:
        pass
    try:
        return "onednn_bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return None


def resolve_precision(precision: str = "auto", device: str | torch.device = "cpu") -> str:
    """``"fp32"`` or ``"bf16"``: ``"auto"`` is bf16 on CUDA and on CPUs with native bf16.

    Example:
        >>> resolve_precision("fp32", "cpu")
        'fp32'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    dev = resolve_device(device)
    return "bf16" if dev.type == "cuda" or cpu_bf16() else "fp32"


def precision_record(precision: str, device: str | torch.device = "cpu") -> dict[str, object]:
    """What a result records about its number format: asked, used, memory format, CPU support."""
    used = resolve_precision(precision, device)
    return {
        "precision": used,
        "precision_asked": precision,
        "memory_format": "channels_last" if used == "bf16" else "contiguous",
        "cpu_bf16": cpu_bf16(),
    }


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bfloat16 autocast on ``device`` when ``precision == "bf16"`` (resolved); else a no-op."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def memory_format(precision: str) -> torch.memory_format:
    """The memory layout that goes with ``precision``: channels-last for bf16, else contiguous."""
    return torch.channels_last if precision == "bf16" else torch.contiguous_format


def to_layout(x: torch.Tensor, precision: str) -> torch.Tensor:
    """``x`` in the layout of ``precision`` (4-d image batches; other tensors as they are)."""
    return x.contiguous(memory_format=memory_format(precision)) if x.ndim == 4 else x
