"""Figures, each returned as a matplotlib ``Figure`` and saved by :func:`save_figure` (PDF + PNG).

- :mod:`~ptx_utils.plots.common` — palettes, labels; :mod:`~ptx_utils.plots.analysis` — every
  run side by side (05); :mod:`~ptx_utils.plots.search` — search curves, heat-maps (02).
- :mod:`~ptx_utils.plots.data`, :mod:`~ptx_utils.plots.pretraining` — class grids, the
  domain-shift grid, one episode, pre-training curves (notebook 01).
- :mod:`~ptx_utils.plots.strategies`, :mod:`~ptx_utils.plots.steps` — accuracy per strategy,
  its spread, against the number of updates (03).
- :mod:`~ptx_utils.plots.shift`, :mod:`~ptx_utils.plots.routing` — searched scheme per target,
  accuracy vs shift (04); where SpotTune routes per block.
"""

from ptx_utils.plots.analysis import search_overview, shift_overview, transfer_overview
from ptx_utils.plots.common import (
    OKABE_ITO,
    SEARCH_COLORS,
    STRATEGY_COLORS,
    lr_code,
    rate_colormap,
    save_figure,
    short_label,
    strategy_palette,
)
from ptx_utils.plots.data import class_grid, episode_figure, image_grid, shift_grid
from ptx_utils.plots.pretraining import curves_figure
from ptx_utils.plots.routing import routing_figure
from ptx_utils.plots.search import LiveSearchPlot, scheme_heatmap, search_figure
from ptx_utils.plots.shift import shift_figure, shift_scheme_map
from ptx_utils.plots.steps import steps_figure
from ptx_utils.plots.strategies import episode_distribution, strategy_figure

__all__ = [
    "OKABE_ITO",
    "SEARCH_COLORS",
    "STRATEGY_COLORS",
    "LiveSearchPlot",
    "class_grid",
    "curves_figure",
    "episode_distribution",
    "episode_figure",
    "image_grid",
    "lr_code",
    "rate_colormap",
    "routing_figure",
    "save_figure",
    "scheme_heatmap",
    "search_figure",
    "search_overview",
    "shift_figure",
    "shift_grid",
    "shift_overview",
    "shift_scheme_map",
    "short_label",
    "steps_figure",
    "strategy_figure",
    "strategy_palette",
    "transfer_overview",
]
