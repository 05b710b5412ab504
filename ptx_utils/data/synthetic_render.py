"""Procedural renderer for the embedded few-shot dataset ``synthetic``.

Details: ``docs/synthetic-renderer.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["NUM_PRIMITIVES", "SYNTHETIC_RENDER_VERSION", "render_classes"]

SYNTHETIC_RENDER_VERSION: int = 1
"""Bump whenever the rendered pixels change for identical arguments."""

NUM_PRIMITIVES: int = 8
"""Size of the shared part vocabulary (see module docstring)."""

_MASK64 = (1 << 64) - 1
_MAX_PARTS = 4
_FILLED_TYPES = (3, 7)  # blob and dots are filled; everything else is a stroke

# Layout of the per-instance uniform vector (all in [0, 1)).
_G_ROT, _G_SCALE, _G_TX, _G_TY, _G_BG_ANGLE, _G_BG_GRAD, _G_WIDTH, _G_TINT = range(8)
_N_GLOBAL = 8
_PART_FIELDS = 8  # dx, dy, dangle, dsize, dwidth, hue_index, hue_jitter, sat/val
_N_BLOBS = 5
_BLOB_FIELDS = 4  # cx, cy, radius, hue
_TEX_RES = 6  # low-res paper-texture grid
_OFF_PARTS = _N_GLOBAL
_OFF_BLOBS = _OFF_PARTS + _MAX_PARTS * _PART_FIELDS
_OFF_STRIPE = _OFF_BLOBS + _N_BLOBS * _BLOB_FIELDS  # freq, angle, phase
_OFF_HATCH = _OFF_STRIPE + 3  # freq, angle, phase
_OFF_TEX = _OFF_HATCH + 3
_N_UNIFORMS = _OFF_TEX + _TEX_RES * _TEX_RES

# Base-domain palette (HSV hues): coral, amber, lemon, mint, teal, sky, violet, pink.
_PALETTE_HUES = (0.98, 0.08, 0.15, 0.36, 0.48, 0.57, 0.72, 0.87)
_BG_DARK = ((0.055, 0.070, 0.135), (0.12, 0.12, 0.27))  # navy gradient ends, shift 0
_BG_PAPER = ((0.93, 0.90, 0.82), (0.85, 0.80, 0.70))  # cream gradient ends, shift 1
_HUE_ROTATION = 0.22  # palette hue rotation at shift 1 (fraction of the colour wheel)
_STROKE_WIDTH = 0.11  # in normalised units (the image spans [-1, 1])
_MAX_BLUR_SIGMA_32PX = 0.6  # blur sigma (pixels at 32 px) at shift 1
_NOISE_STD = 0.035
_TEMPLATE_EXTENT = 0.74  # max radius of a template in canonical units
_CHUNK_PIXELS = 1 << 21  # supersampled pixels per chunk (bounds memory)


# --------------------------------------------------------------------------- seeding
def _mix64(*values: int) -> int:
    """Hash a tuple of ints into a 63-bit seed (splitmix64 finaliser chain)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


def _class_generator(seed: int, class_id: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix64(seed, class_id, 0xC1A55))


def _instance_generator(seed: int, class_id: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix64(seed, class_id, 0x1457, index))


# ------------------------------------------------------------------------ templates
def _class_template(seed: int, class_id: int) -> torch.Tensor:
    """Draw one class template.

    Returns:
        ``(P, 6)`` float tensor, ``P`` in {3, 4}; columns are
        ``(type, cx, cy, angle, size, shape_param)`` in canonical coordinates.
    """
    g = _class_generator(seed, class_id)
    u = torch.rand(64, generator=g, dtype=torch.float64)
    n_parts = 3 + int(u[0] < 0.5)
    types = torch.randperm(NUM_PRIMITIVES, generator=g)[:n_parts].to(torch.float64)
    # Spread the parts around the centre: evenly spaced angles plus jitter.
    base = u[1] * 2 * math.pi
    k = torch.arange(n_parts, dtype=torch.float64)
    theta = base + 2 * math.pi * k / n_parts + (u[2 : 2 + n_parts] - 0.5) * 1.2
    radius = 0.18 + 0.27 * u[6 : 6 + n_parts]
    cx = radius * torch.cos(theta)
    cy = radius * torch.sin(theta)
    cx = cx - 0.5 * cx.mean()
    cy = cy - 0.5 * cy.mean()
    angle = u[10 : 10 + n_parts] * 2 * math.pi
    size = 0.17 + 0.14 * u[14 : 14 + n_parts]
    shape = u[18 : 18 + n_parts]
    # Normalise the composition so that every class fills the frame similarly.
    extent = (torch.hypot(cx, cy) + 1.3 * size).max()
    fit = _TEMPLATE_EXTENT / extent
    cx, cy, size = cx * fit, cy * fit, size * fit
    return torch.stack([types, cx, cy, angle, size, shape], dim=1).float()


def _instance_uniforms(
    seed: int, class_id: int, indices: range, image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw all per-instance random numbers (independent of ``shift``).

    Returns:
        ``(uniforms, noise)`` with shapes ``(N, _N_UNIFORMS)`` (values in [0, 1))
        and ``(N, 3, S, S)`` (standard normal sensor noise).
    """
    us, ns = [], []
    for i in indices:
        g = _instance_generator(seed, class_id, i)
        us.append(torch.rand(_N_UNIFORMS, generator=g))
        ns.append(torch.randn(3, image_size, image_size, generator=g))
    return torch.stack(us), torch.stack(ns)


# ----------------------------------------------------------------------------- SDFs
def _segment(
    px: torch.Tensor,
    py: torch.Tensor,
    ax: torch.Tensor,
    ay: torch.Tensor,
    bx: torch.Tensor,
    by: torch.Tensor,
) -> torch.Tensor:
    """Distance from points ``(px, py)`` to segment ``a-b`` (broadcasting)."""
    bax, bay = bx - ax, by - ay
    pax, pay = px - ax, py - ay
    h = ((pax * bax + pay * bay) / (bax * bax + bay * bay).clamp_min(1e-12)).clamp(0.0, 1.0)
    return torch.hypot(pax - bax * h, pay - bay * h)


def _sdf(
    kind: int, ux: torch.Tensor, uy: torch.Tensor, r: torch.Tensor, k: torch.Tensor
) -> torch.Tensor:
    """Signed distance of primitive ``kind`` in its local frame.

    Args:
        ux, uy: local coordinates, ``(N, H, W)``.
        r: part size (half extent), ``(N, 1, 1)``.
        k: shape parameter in [0, 1), ``(N, 1, 1)``.

    Returns:
        ``(N, H, W)`` distances (unsigned centre-line distance for strokes,
        signed distance for filled primitives).
    """
    if kind == 0:  # line segment
        half = r * 1.3
        return torch.hypot(ux - torch.maximum(torch.minimum(ux, half), -half), uy)
    if kind == 1:  # arc, 180-300 degrees, opening towards -y
        a = (0.5 + 0.35 * k) * math.pi
        s, c = torch.sin(a), torch.cos(a)
        ax = ux.abs()
        rr = r * 1.05
        on_arc = c * ax > s * uy
        d_end = torch.hypot(ax - s * rr, uy - c * rr)
        d_ring = (torch.hypot(ax, uy) - rr).abs()
        return torch.where(on_arc, d_end, d_ring)
    if kind == 2:  # ring
        return (torch.hypot(ux, uy) - r * (0.75 + 0.2 * k)).abs()
    if kind == 3:  # filled ellipse blob
        rx, ry = r * 0.62, r * 0.62 * (0.55 + 0.45 * k)
        return (torch.hypot(ux / rx, uy / ry) - 1.0) * ry
    if kind == 4:  # chevron
        b = 0.35 + 0.45 * k  # half opening angle
        ax = ux.abs()
        apex_y = -0.55 * r
        return _segment(
            ax,
            uy,
            torch.zeros_like(r),
            apex_y,
            r * 1.15 * torch.sin(b),
            apex_y + r * 1.15 * torch.cos(b),
        )
    if kind == 5:  # rectangle outline
        hx, hy = r * 0.95, r * 0.95 * (0.5 + 0.5 * k)
        qx, qy = ux.abs() - hx, uy.abs() - hy
        outside = torch.hypot(qx.clamp_min(0.0), qy.clamp_min(0.0))
        inside = torch.maximum(qx, qy).clamp_max(0.0)
        return (outside + inside).abs()
    if kind == 6:  # cross (+), second arm 60-100 % of the first
        ax, ay = ux.abs(), uy.abs()
        r2 = r * (0.6 + 0.4 * k)
        return torch.minimum(
            torch.hypot((ax - r).clamp_min(0.0), ay), torch.hypot(ax, (ay - r2).clamp_min(0.0))
        )
    if kind == 7:  # row of three dots
        sp = r * (0.8 + 0.3 * k)
        idx = torch.round(ux / sp).clamp(-1.0, 1.0)
        return torch.hypot(ux - idx * sp, uy) - 0.3 * sp - 0.03
    raise ValueError(f"unknown primitive {kind}")


# ------------------------------------------------------------------------ colours
def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Vectorised HSV -> RGB. Inputs share a shape ``(...)``; returns ``(..., 3)``."""
    n = torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype)
    k = torch.remainder(n + h.unsqueeze(-1) * 6.0, 6.0)
    f = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return v.unsqueeze(-1) * (1.0 - s.unsqueeze(-1) * f)


def _lerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    return a + (b - a) * t


def _centered(u: torch.Tensor, half_range: float) -> torch.Tensor:
    """Map uniforms in [0, 1) to [-half_range, half_range)."""
    return (u * 2.0 - 1.0) * half_range


def _field(u: torch.Tensor, i: int) -> torch.Tensor:
    """Column ``i`` of the ``(N, K)`` uniforms, shaped ``(N, 1, 1)`` for broadcasting."""
    return u[:, i].view(-1, 1, 1)


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [-1, 1]: ``x`` is ``(1, 1, size)``, ``y`` ``(1, size, 1)``."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    return c.view(1, 1, size), c.view(1, size, 1)


# ---------------------------------------------------------------------- rendering
def _background(u: torch.Tensor, size: int, shift: float) -> torch.Tensor:
    """Graded background plus shift-scaled clutter, ``(N, 3, S, S)``."""
    n = u.shape[0]
    x, y = _grid(size)
    ang = _field(u, _G_BG_ANGLE) * 2 * math.pi
    g = 0.5 * (0.6 + 0.4 * _field(u, _G_BG_GRAD))
    t = (0.5 + g * torch.cos(ang) * x) + g * torch.sin(ang) * y  # (N, S, S), separable
    t = t.clamp_(0.0, 1.0).unsqueeze(1)
    # lerp(lerp(dark0, dark1, t), lerp(paper0, paper1, t), shift) == lerp(c0, c1, t)
    c0 = _lerp(torch.tensor(_BG_DARK[0]), torch.tensor(_BG_PAPER[0]), shift).view(1, 3, 1, 1)
    c1 = _lerp(torch.tensor(_BG_DARK[1]), torch.tensor(_BG_PAPER[1]), shift).view(1, 3, 1, 1)
    bg = torch.lerp(c0.expand(n, 3, size, size), c1.expand(n, 3, size, size), t)
    if shift == 0.0:  # clutter is scaled by shift: skip the work in the clean domain
        return bg

    # Paper texture (bicubically upsampled low-res noise, multiplicative) and faint stripes.
    tex = u[:, _OFF_TEX : _OFF_TEX + _TEX_RES * _TEX_RES].view(n, 1, _TEX_RES, _TEX_RES)
    tex = F.interpolate(tex, size=(size, size), mode="bicubic", align_corners=False)
    s_f = math.pi * (2.0 + 4.0 * _field(u, _OFF_STRIPE))
    s_a = _field(u, _OFF_STRIPE + 1) * math.pi
    s_p = _field(u, _OFF_STRIPE + 2) * 2 * math.pi
    stripes = torch.sin((s_f * torch.cos(s_a) * x + s_p) + s_f * torch.sin(s_a) * y)
    gain = tex.sub_(0.5).mul_(0.16 * shift).add_(1.0)
    offset = stripes.add_(1.0).mul_(0.025 * shift).unsqueeze(1)
    bg = torch.addcmul(-offset, bg, gain)

    # Soft clutter blobs in muted palette colours (separable Gaussians, blended additively).
    b = u[:, _OFF_BLOBS : _OFF_BLOBS + _N_BLOBS * _BLOB_FIELDS].view(n, _N_BLOBS, _BLOB_FIELDS)
    inv = -0.5 / (0.15 + 0.25 * b[..., 2]).square().view(n, _N_BLOBS, 1, 1)
    wx = torch.exp(
        (x.unsqueeze(1) - _centered(b[..., 0], 1.0).view(n, _N_BLOBS, 1, 1)).square() * inv
    )
    wy = torch.exp(
        (y.unsqueeze(1) - _centered(b[..., 1], 1.0).view(n, _N_BLOBS, 1, 1)).square() * inv
    )
    alpha = (wx * wy).mul_(0.18 * shift)  # (N, B, S, S)
    sat = torch.full_like(b[..., 3], 0.25)
    bcol = _hsv_to_rgb(b[..., 3], sat, torch.full_like(sat, 0.75))  # (N, B, 3)
    # Elementwise accumulation only (no BLAS / reductions): bit-stable across machines.
    cover = alpha[:, :1].clone()
    tint = alpha[:, :1] * bcol[:, 0].view(n, 3, 1, 1)
    for i in range(1, _N_BLOBS):
        a_i = alpha[:, i : i + 1]
        cover.add_(a_i)
        tint.addcmul_(a_i, bcol[:, i].view(n, 3, 1, 1))
    return tint.addcmul_(bg, 1.0 - cover.clamp_(max=1.0))


def _blur(img: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, 3, S, S)`` with std ``sigma`` pixels.

    Implemented as a sum of shifted slices (much faster on CPU than a depthwise
    ``conv2d`` with a 1-D kernel); borders are replicated.
    """
    if sigma < 1e-3:
        return img
    size = img.shape[-1]
    xs = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(xs**2) / (2.0 * sigma * sigma))
    k = (k / k.sum()).tolist()
    pad = F.pad(img, (radius, radius, 0, 0), mode="replicate")
    out = pad[..., 0:size] * k[0]
    for j in range(1, len(k)):
        out.add_(pad[..., j : j + size], alpha=k[j])
    pad = F.pad(out, (0, 0, radius, radius), mode="replicate")
    out = pad[..., 0:size, :] * k[0]
    for j in range(1, len(k)):
        out.add_(pad[..., j : j + size, :], alpha=k[j])
    return out


def _render_chunk(
    template: torch.Tensor, u: torch.Tensor, noise: torch.Tensor, size: int, shift: float
) -> torch.Tensor:
    """Render a chunk of instances of one class.

    Args:
        template: ``(P, 6)`` class template (see :func:`_class_template`).
        u: ``(N, _N_UNIFORMS)`` per-instance uniforms.
        noise: ``(N, 3, S, S)`` per-instance standard-normal noise.
        size: output side ``S``.
        shift: domain-shift dial in [0, 1].

    Returns:
        ``(N, 3, S, S)`` float32 image in [0, 1].
    """
    n = u.shape[0]
    px_ss = 1.0 / size  # supersampled pixel pitch (2x grid over [-1, 1])
    x, y = _grid(2 * size)  # (1, 1, 2S), (1, 2S, 1)

    # Global affine jitter: image point p -> canonical q = R(-rot) (p - t) / scale.
    rot = _centered(_field(u, _G_ROT), math.radians(15.0))
    scale = 0.85 + 0.30 * _field(u, _G_SCALE)
    tx, ty = _centered(_field(u, _G_TX), 0.08), _centered(_field(u, _G_TY), 0.08)
    xt, yt = x - tx, y - ty  # (N, 1, 2S), (N, 2S, 1)

    img = _background(u, size, shift)
    styled = shift > 0.0

    if styled:  # stroke texture (hatching), ~4 px period at 32 px, at output resolution
        xo, yo = _grid(size)
        h_a = _field(u, _OFF_HATCH + 1) * math.pi
        h_p = _field(u, _OFF_HATCH + 2) * 2 * math.pi
        h_f = 2 * math.pi / (0.25 * (0.9 + 0.2 * _field(u, _OFF_HATCH)))
        hatch = torch.sin((h_f * torch.cos(h_a) * xo + h_p) + h_f * torch.sin(h_a) * yo)
        hatch_keep = hatch.add_(1.0).mul_(-0.15 * shift).add_(1.0).unsqueeze(1)

    halo_strength = 3.2 * shift * (1.0 - shift)  # peaks mid-way, where the polarity flips
    halo_col = torch.tensor((0.07, 0.07, 0.10)).view(1, 3, 1, 1).expand(n, 3, 1, 1)
    width_global = 0.85 + 0.30 * _field(u, _G_WIDTH)
    palette = torch.tensor(_PALETTE_HUES)
    tint = _centered(u[:, _G_TINT], 0.03)
    cov_gain = scale / px_ss  # SDF units -> supersampled pixels

    for p in range(template.shape[0]):
        kind = int(template[p, 0])
        o = _OFF_PARTS + p * _PART_FIELDS
        pu = u[:, o : o + _PART_FIELDS]
        cx = float(template[p, 1]) + _centered(pu[:, 0], 0.035).view(n, 1, 1)
        cy = float(template[p, 2]) + _centered(pu[:, 1], 0.035).view(n, 1, 1)
        phi = float(template[p, 3]) + _centered(pu[:, 2], math.radians(8.0)).view(n, 1, 1)
        r = float(template[p, 4]) * (1.0 + _centered(pu[:, 3], 0.08).view(n, 1, 1))
        k = torch.full_like(r, float(template[p, 5]))
        width = _STROKE_WIDTH * width_global * (0.9 + 0.2 * pu[:, 4].view(n, 1, 1))
        width = width * (1.0 + 0.3 * shift)

        # Local part frame u = R(-phi) (q - c) = R(-(phi + rot)) (p - t) / scale - R(-phi) c,
        # separable in x and y, so each coordinate costs a single full-size add.
        cp, sp = torch.cos(phi), torch.sin(phi)
        cs, ss = torch.cos(phi + rot) / scale, torch.sin(phi + rot) / scale
        ux = (cs * xt - (cp * cx + sp * cy)) + ss * yt
        uy = (-ss * xt - (-sp * cx + cp * cy)) + cs * yt
        d = _sdf(kind, ux, uy, r, k)
        half = (width - _STROKE_WIDTH) * 0.5 if kind in _FILLED_TYPES else 0.5 * width
        # Coverage = clamp(0.5 - (d - half) * scale / px_ss, 0, 1), then 2x2 average pool.
        cov = torch.addcmul(0.5 + half * cov_gain, d, cov_gain, value=-1.0).clamp_(0.0, 1.0)
        if halo_strength > 0.0:
            halo_off = 0.5 + (half + 0.05) * cov_gain
            halo = torch.addcmul(halo_off, d, cov_gain, value=-1.0).clamp_(0.0, 1.0)
            halo = F.avg_pool2d(halo.unsqueeze(1), 2).mul_(halo_strength)
            img = img.lerp_(halo_col.expand_as(img), halo)
        cov = F.avg_pool2d(cov.unsqueeze(1), 2)
        if styled:
            cov = cov.mul_(hatch_keep)

        hue_idx = (pu[:, 5] * len(_PALETTE_HUES)).long().clamp_max(len(_PALETTE_HUES) - 1)
        hue = palette[hue_idx] + _centered(pu[:, 6], 0.025) + tint + _HUE_ROTATION * shift
        sat = (0.60 + 0.25 * pu[:, 7]) * (1.0 + 0.1 * shift)
        val = _lerp(0.88 + 0.12 * pu[:, 7], 0.24 + 0.14 * pu[:, 7], shift)
        rgb = _hsv_to_rgb(hue, sat, val).view(n, 3, 1, 1)
        img = img.lerp_(rgb.expand_as(img), cov)

    if styled:  # lower contrast, blur, sensor noise
        mean = img.double().mean(dim=(1, 2, 3), keepdim=True).float()
        img = img.sub_(mean).mul_(1.0 - 0.2 * shift).add_(mean)
        sigma_max = _MAX_BLUR_SIGMA_32PX * size / 32.0
        img = _blur(img, sigma_max * shift, radius=max(1, math.ceil(3.0 * sigma_max)))
        img = img.add_(noise, alpha=_NOISE_STD * shift)
    return img.clamp_(0.0, 1.0)


# ----------------------------------------------------------------------- public API
def render_classes(
    class_ids: Sequence[int],
    images_per_class: int,
    image_size: int = 32,
    shift: float = 0.0,
    seed: int = 0,
) -> torch.Tensor:
    """Render ``images_per_class`` instances of each class in ``class_ids``.

    Args:
        class_ids: non-negative integer class ids; each class is rendered
            independently of the others (order and company do not matter).
        images_per_class: number of instances ``N`` per class (>= 1).
        image_size: output side ``S`` in pixels (>= 8).
        shift: domain-shift dial in ``[0, 1]``; 0 is the base domain, 1 the
            most shifted one.  Changes appearance only, never geometry.
        seed: dataset seed.

    Returns:
        ``uint8`` tensor of shape ``(len(class_ids), N, 3, S, S)``.

    Raises:
        ValueError: for ``shift`` outside ``[0, 1]``, ``image_size < 8``,
            ``images_per_class < 1`` or negative class ids.
    """
    shift = float(shift)
    if not 0.0 <= shift <= 1.0:  # also rejects NaN
        raise ValueError(f"shift must be in [0, 1], got {shift}")
    if int(image_size) < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if int(images_per_class) < 1:
        raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
    ids = [int(c) for c in class_ids]
    if any(c < 0 for c in ids):
        raise ValueError(f"class ids must be non-negative, got {ids}")
    size, n_img, seed = int(image_size), int(images_per_class), int(seed)

    out = torch.empty((len(ids), n_img, 3, size, size), dtype=torch.uint8)
    chunk = max(1, _CHUNK_PIXELS // (4 * size * size))
    with torch.no_grad():
        for ci, class_id in enumerate(ids):
            template = _class_template(seed, class_id)
            for start in range(0, n_img, chunk):
                idx = range(start, min(n_img, start + chunk))
                u, noise = _instance_uniforms(seed, class_id, idx, size)
                img = _render_chunk(template, u, noise, size, shift)
                out[ci, idx.start : idx.stop] = (img * 255.0).round_().to(torch.uint8)
    return out
