"""Small inline SVG charts (bars, stacked bars, lines): no script, no font or file to fetch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#64748b")
WIDTH, HEIGHT = 560, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 28, 48

Series = Sequence[tuple[str, Sequence[float | None]]]  # (name, one value per category)


def _frame(title: str, body: list[str], legend: Sequence[str]) -> str:
    keys, x = [], LEFT
    for index, name in enumerate(legend):
        keys.append(
            f'<rect x="{x}" y="8" width="10" height="10" fill="{PALETTE[index % len(PALETTE)]}"/>'
            f'<text x="{x + 14}" y="17" class="legend">{escape(name)}</text>'
        )
        x += 30 + 6 * len(name)  # room for the swatch and the label at 11px
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'width="{WIDTH}" height="{HEIGHT}" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        + "".join(keys)
        + "".join(body)
        + "</svg>"
    )


def _axes(categories: Sequence[str], top: float, fmt: Callable[[float], str]) -> tuple[list[str], float]:
    """Grid lines, y labels and category labels; returns them and the width of one category slot."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = []
    for step in range(5):
        value = top * step / 4
        y = TOP + plot_h - plot_h * step / 4
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{fmt(value)}</text>'
        )
    slot = plot_w / max(len(categories), 1)
    for index, name in enumerate(categories):
        x = LEFT + slot * (index + 0.5)
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" class="tick" text-anchor="middle">'
            f"{escape(name)}</text>"
        )
    return parts, slot


def _scale(series: Series, stacked: bool) -> float:
    if stacked:
        totals = [
            sum(v or 0 for v in column) for column in zip(*(values for _, values in series), strict=True)
        ]
        peak = max(totals, default=0)
    else:
        peak = max((v or 0 for _, values in series for v in values), default=0)
    return nice_top(peak)


def number(value: float) -> str:
    """A tick or value label: whole numbers with thousands separators, else two decimals at most."""
    return f"{value:,.0f}" if value == int(value) else f"{value:,.2f}".rstrip("0")


def nice_top(peak: float) -> float:
    """The smallest top >= peak whose quarter is 1, 2 or 5 times a power of ten (round tick labels)."""
    if peak <= 4:
        return 4  # counts: ticks 0, 1, 2, 3, 4
    step = 10 ** math.floor(math.log10(peak / 4))
    for factor in (1, 2, 2.5, 5, 10):
        if 4 * step * factor >= peak:
            return 4 * step * factor
    return 40 * step


def bar_chart(
    title: str,
    categories: Sequence[str],
    series: Series,
    *,
    stacked: bool = False,
    top: float | None = None,
    fmt: Callable[[float], str] = number,
) -> str:
    """Bars per category: side by side, or stacked."""
    top = top or _scale(series, stacked)
    parts, slot = _axes(categories, top, fmt)
    plot_h = HEIGHT - TOP - BOTTOM
    width = slot * 0.7 / (1 if stacked else max(len(series), 1))
    for index in range(len(categories)):
        base = 0.0
        for number, (name, values) in enumerate(series):
            value = values[index] or 0
            if value <= 0:
                continue  # nothing to draw (and nothing to stack on)
            h = plot_h * value / top
            x = LEFT + slot * index + slot * 0.15 + (0 if stacked else number * width)
            y = TOP + plot_h - h - (plot_h * base / top if stacked else 0)
            color = PALETTE[number % len(PALETTE)]
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{h:.1f}" fill="{color}">'
                f"<title>{escape(name)} {escape(categories[index])}: {fmt(value)}</title></rect>"
            )
            if stacked:
                base += value
    return _frame(title, parts, [name for name, _ in series])


def line_chart(
    title: str,
    categories: Sequence[str],
    series: Series,
    *,
    top: float | None = None,
    fmt: Callable[[float], str] = number,
    target: float | None = None,
) -> str:
    """Lines with dots per category (gaps where a value is None), with an optional target line."""
    top = top or _scale(series, False)
    parts, slot = _axes(categories, top, fmt)
    plot_h = HEIGHT - TOP - BOTTOM
    if target is not None:
        y = TOP + plot_h - plot_h * target / top
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="target"/>')
    for number, (name, values) in enumerate(series):
        color = PALETTE[number % len(PALETTE)]
        points = [
            (LEFT + slot * (i + 0.5), TOP + plot_h - plot_h * v / top)
            for i, v in enumerate(values)
            if v is not None
        ]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2.5"/>')
        for (x, y), value in zip(points, [v for v in values if v is not None], strict=True):
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}"><title>{escape(name)}: {fmt(value)}'
                "</title></circle>"
            )
    return _frame(title, parts, [name for name, _ in series])
