"""Backbones by name and classifier heads; checkpoints and the zoo of pre-trained backbones.

``create_backbone("resnet12", in_channels=3, image_size=84, granularity="conv")`` builds a
:class:`Backbone` mapping float (B, C, S, S) to (B, out_dim) whose parameters are grouped into
named layers (the units Partial Transfer gives learning rates to). Registered backbones:
``conv4``, ``conv6`` (CloserLook ConvNets), ``resnet10``, ``resnet18`` (CloserLook ResNets) and
``resnet12`` (the few-shot ResNet-12). Heads: :class:`LinearHead` (Baseline),
:class:`CosineHead` (Baseline++), :class:`PrototypeHead` (ProtoNet / nearest centroid), or by
kind with :func:`create_head`.
"""

from ptx_utils.models import conv, resnet  # noqa: F401  (registers the backbones)
from ptx_utils.models.base import Backbone
from ptx_utils.models.heads import CosineHead, LinearHead, PrototypeHead, create_head
from ptx_utils.models.registry import create_backbone, list_backbones, register_backbone

__all__ = [
    "Backbone",
    "CosineHead",
    "LinearHead",
    "PrototypeHead",
    "create_backbone",
    "create_head",
    "list_backbones",
    "register_backbone",
]
