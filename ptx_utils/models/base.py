"""The :class:`Backbone` base: a feature extractor whose parameters are grouped into named layers.

A *layer* is the unit a fine-tuning scheme hands a learning rate to (Partial Transfer searches
one learning rate per layer; freezing the first ``n`` layers is the special case of rate 0).
Each backbone lists its layers input side first, and every parameter and buffer belongs to
exactly one of them; construction fails with a :class:`RuntimeError` when that does not hold.

Layers are recorded by the qualified names of their sub-modules, so they survive ``deepcopy``,
pickling, ``.to(device)`` and :func:`torch.func.functional_call`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ptx_utils.models.stages import ForwardStages, single_stage


class Backbone(nn.Module):
    """A feature extractor: float (B, in_channels, S, S) -> (B, out_dim).

    Subclasses build their modules, set ``out_dim``, implement :meth:`_forward` and call
    :meth:`_set_layers` last in ``__init__``.

    Attributes:
        name: registry name (``create_backbone(name, ...)`` rebuilds it).
        in_channels: channels of the input images (1 for Omniglot, 3 for RGB).
        image_size: side length S the backbone was built for.
        out_dim: feature size for that input.
        size_dependent: True when ``out_dim`` depends on S (flattened feature maps); then
            :meth:`forward` accepts only S x S inputs.
        min_image_size: the smallest S the architecture supports.
    """

    name: str
    size_dependent: bool = False
    min_image_size: int = 1

    def __init__(self, name: str, in_channels: int = 3, image_size: int = 84) -> None:
        super().__init__()
        self.name = name
        if not _is_int(in_channels) or in_channels < 1:
            raise ValueError(
                f"{name}: in_channels must be a positive int (1 for grey, 3 for RGB), got "
                f"{in_channels!r}"
            )
        if not _is_int(image_size) or image_size < self.min_image_size:
            raise ValueError(
                f"{name}: image_size must be an int >= {self.min_image_size} (the feature maps "
                f"shrink below 1x1 otherwise), got {image_size!r}; use larger images"
            )
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.out_dim = 0
        self._layer_spec: dict[str, list[str]] = {}

    # -- forward -------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a batch of images.

        Args:
            x: float (B, in_channels, S, S); S must equal ``image_size`` when ``size_dependent``.

        Returns:
            float (B, out_dim).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.name} expects images (B, {self.in_channels}, S, S), got shape "
                f"{tuple(x.shape)}; add a batch dimension or build the backbone with "
                f"in_channels={x.shape[1] if x.ndim == 4 else '...'}"
            )
        if self.size_dependent and tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"{self.name} was built for {self.image_size}x{self.image_size} inputs (its "
                f"flattened output size depends on it), got {x.shape[2]}x{x.shape[3]}; resize "
                f"the images or build it with image_size={x.shape[2]}"
            )
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, S, S) -> (B, out_dim), without input checks."""
        raise NotImplementedError

    def forward_stages(self) -> ForwardStages:
        """The forward split into stages at layer boundaries (one stage unless overridden).

        Example:
            >>> from ptx_utils.models import create_backbone
            >>> [s.layers for s in create_backbone("conv4", image_size=28).forward_stages().stages]
            [('block1',), ('block2',), ('block3',), ('block4',)]
        """
        return single_stage(self)

    def _infer_out_dim(self) -> int:
        """Feature size for an ``image_size`` input, by a dummy forward (eval mode, no grad).

        Running statistics are left untouched and the training flag is restored.
        """
        was_training = self.training
        ref = next(self.parameters())
        x = torch.zeros(1, self.in_channels, self.image_size, self.image_size)
        try:
            self.eval()
            with torch.no_grad():
                out = self._forward(x.to(device=ref.device, dtype=ref.dtype))
        finally:
            self.train(was_training)
        return int(out.shape[1])

    # -- layers --------------------------------------------------------------------------------

    def _set_layers(self, spec: dict[str, list[str]]) -> None:
        """Record the layers: layer name -> qualified names of its sub-modules, forward order.

        Raises:
            RuntimeError: a module name does not exist, or a parameter or buffer is in no layer
                or in more than one.
        """
        self._layer_spec = {layer: list(modules) for layer, modules in spec.items()}
        self.param_layer_map()
        self.buffer_layer_map()

    def layer_names(self) -> list[str]:
        """The layers, input side first."""
        return list(self._layer_spec)

    def layer_modules(self) -> dict[str, list[nn.Module]]:
        """The sub-modules of each layer, in forward order."""
        return {
            layer: [self.get_submodule(m) for m in modules]
            for layer, modules in self._layer_spec.items()
        }

    def param_layer_map(self) -> dict[str, str]:
        """Every name of ``named_parameters()`` -> the layer it belongs to."""
        return self._assign("parameter", dict(self.named_parameters()), _params_of)

    def buffer_layer_map(self) -> dict[str, str]:
        """Every name of ``named_buffers()`` (BN running stats) -> the layer it belongs to."""
        return self._assign("buffer", dict(self.named_buffers()), _buffers_of)

    def layer_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The parameters of each layer (e.g. for one optimizer parameter group per layer)."""
        params = dict(self.named_parameters())
        out: dict[str, list[nn.Parameter]] = {layer: [] for layer in self._layer_spec}
        for pname, layer in self.param_layer_map().items():
            out[layer].append(params[pname])
        return out

    def _assign(self, kind: str, expected: dict[str, Any], items: Any) -> dict[str, str]:
        if not self._layer_spec:
            raise RuntimeError(
                f"{type(self).__name__} defines no layers; call self._set_layers(...) at the "
                "end of __init__"
            )
        mapping: dict[str, str] = {}
        seen: Counter[str] = Counter()
        for layer, modules in self._layer_spec.items():
            for mname in modules:
                try:
                    module = self.get_submodule(mname)
                except AttributeError:
                    raise RuntimeError(
                        f"{self.name}: layer {layer!r} names a module {mname!r} that does not exist"
                    ) from None
                for full in items(module, mname):
                    seen[full] += 1
                    mapping[full] = layer
        missing = sorted(set(expected) - set(mapping))
        twice = sorted(n for n, c in seen.items() if c > 1)
        foreign = sorted(set(mapping) - set(expected))
        if missing or twice or foreign:
            raise RuntimeError(
                f"{self.name}: every {kind} must belong to exactly one layer; in no layer: "
                f"{missing or 'none'}; in several: {twice or 'none'}; unknown: "
                f"{foreign or 'none'}. Fix the layer table passed to _set_layers"
            )
        return {n: mapping[n] for n in expected}

    def config(self) -> dict[str, Any]:
        """JSON-serialisable kwargs that rebuild this backbone: ``create_backbone(**config)``."""
        return {"name": self.name, "in_channels": self.in_channels, "image_size": self.image_size}

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, in_channels={self.in_channels}, image_size={self.image_size}, "
            f"out_dim={self.out_dim}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _params_of(module: nn.Module, prefix: str) -> Iterator[str]:
    return (n for n, _ in module.named_parameters(prefix=prefix))


def _buffers_of(module: nn.Module, prefix: str) -> Iterator[str]:
    return (n for n, _ in module.named_buffers(prefix=prefix))
