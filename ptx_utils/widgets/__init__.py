"""Interactive explorers for the notebooks, each with a static matplotlib twin; see docs/widgets.md.

- :mod:`~ptx_utils.widgets.render` — the :class:`Explorer` protocol, shared drawing, :func:`show`.
- :mod:`~ptx_utils.widgets.scheme_explorer` — :class:`SchemeExplorer`.
- :mod:`~ptx_utils.widgets.domain_shift_explorer` — :class:`DomainShiftExplorer`.
- :mod:`~ptx_utils.widgets.search_history` — :class:`SearchHistoryBrowser`.
"""

from ptx_utils.widgets.domain_shift_explorer import DomainShiftExplorer
from ptx_utils.widgets.render import Explorer, scheme_label, show
from ptx_utils.widgets.scheme_explorer import SchemeExplorer
from ptx_utils.widgets.search_history import SearchHistoryBrowser

__all__ = [
    "DomainShiftExplorer",
    "Explorer",
    "SchemeExplorer",
    "SearchHistoryBrowser",
    "scheme_label",
    "show",
]
