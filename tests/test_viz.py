"""Figures: grids tile exactly, labels shorten readably, every figure is saved as PDF and PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from ptx_utils.plots import image_grid, save_figure, short_label


def test_image_grid_tiles_images_in_rows() -> None:
    images = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 2, 3).contiguous()
    grid = image_grid(images, ncol=2, pad=1, fill=255)
    assert grid.shape == (3 * 3 - 1, 2 * 4 - 1, 3)
    assert (grid[0:2, 0:3] == 0).all() and (grid[0:2, 4:7] == 1).all()
    assert (grid[6:8, 0:3] == 4).all() and (grid[6:8, 4:7] == 255).all()  # empty last cell


def test_short_label_keeps_both_ends() -> None:
    assert short_label("Tifinagh/character06", 24) == "Tifinagh/character06"
    short = short_label("Old_Church_Slavonic_(Cyrillic)/character06", 24)
    assert len(short) == 24 and short.startswith("Old_Church") and short.endswith("character06")


def test_save_figure_writes_pdf_and_png(tmp_path: Path) -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = save_figure(fig, tmp_path / "figures" / "line")
    plt.close(fig)
    assert [p.name for p in paths] == ["line.pdf", "line.png"]
    assert paths[0].read_bytes().startswith(b"%PDF") and paths[1].read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["line.pdf", "line.png"]
