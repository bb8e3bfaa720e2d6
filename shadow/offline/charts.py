"""Inline SVG charts for the HTML report: axes with ticks and titles, legends, no script.

Every chart is an ``<svg class="chart">`` with a ``<title>``, an x-axis and a y-axis title
(``text.axis-label.x`` / ``.y``), tick labels (``text.tick``) and, with several series, a
legend (``g.legend``): what a reader needs without hovering, and what the browser test checks.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

__all__ = ["PALETTE", "bars", "hbars", "lines", "nice_ticks"]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")
_W, _H = 820, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 58, 62


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(v, 12))
    return ticks


def _frame(title: str, x_label: str, y_label: str, legend: Sequence[tuple[str, str]],
           body: str, height: int = _H, width: int = _W, series: int = 1) -> str:
    leg = ""
    if len(legend) > 1:
        items, x = [], _LEFT
        for name, colour in legend:
            items.append(f"<rect x='{x}' y='28' width='12' height='12' fill='{colour}'/>"
                         f"<text x='{x + 17}' y='38' font-size='12'>{_e(name)}</text>")
            x += 30 + 7 * len(name)
        leg = f"<g class='legend'>{''.join(items)}</g>"
    return (f"<svg class='chart' role='img' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' data-series='{series}'>"
            f"<title>{_e(title)}</title><text class='chart-title' x='{_LEFT}' y='18' "
            f"font-size='14' font-weight='600'>{_e(title)}</text>{leg}{body}"
            f"<text class='axis-label x' x='{_LEFT + (width - _LEFT - _RIGHT) / 2:.0f}' "
            f"y='{height - 8}' text-anchor='middle' font-size='13'>{_e(x_label)}</text>"
            f"<text class='axis-label y' transform='translate(16,"
            f"{_TOP + (height - _TOP - _BOTTOM) / 2:.0f}) rotate(-90)' text-anchor='middle' "
            f"font-size='13'>{_e(y_label)}</text></svg>")


def _y_axis(ticks: list[float], y: Callable[[float], float], fmt: Callable[[float], str],
            width: int) -> str:
    out = []
    for t in ticks:
        yy = y(t)
        out.append(f"<line x1='{_LEFT}' x2='{width - _RIGHT}' y1='{yy:.1f}' y2='{yy:.1f}' "
                   f"stroke='#e5e5e5'/><text class='tick' x='{_LEFT - 6}' y='{yy + 4:.1f}' "
                   f"text-anchor='end' font-size='11'>{_e(fmt(t))}</text>")
    return "".join(out)


def _axes(width: int, height: int) -> str:
    return (f"<line x1='{_LEFT}' x2='{_LEFT}' y1='{_TOP}' y2='{height - _BOTTOM}' "
            f"stroke='#333'/><line x1='{_LEFT}' x2='{width - _RIGHT}' "
            f"y1='{height - _BOTTOM}' y2='{height - _BOTTOM}' stroke='#333'/>")


def lines(title: str, series: dict[str, list[tuple[float, float | None]]], *, x_label: str,
          y_label: str, x_fmt: Callable[[float], str], y_fmt: Callable[[float], str],
          colours: dict[str, str], y_min: float | None = 0.0,
          gap: float | None = None) -> str:
    """One line per series, x and y axes with round ticks. A point with None, or two points
    further apart than ``gap`` (missing windows), break the line."""
    pts = [(x, v) for s in series.values() for x, v in s if v is not None and math.isfinite(v)]
    if not pts:
        return f"<p class='empty'>{_e(title)}: no data</p>"
    xs = sorted({x for s in series.values() for x, _ in s})
    lo = min(v for _, v in pts) if y_min is None else min(y_min, *(v for _, v in pts))
    yt = nice_ticks(lo, max(v for _, v in pts))
    w, h = _W, _H
    x0, x1 = xs[0], xs[-1]

    def x(v: float) -> float:
        return _LEFT + 10 + (w - _LEFT - _RIGHT - 20) * ((v - x0) / (x1 - x0) if x1 > x0 else 0.5)

    def y(v: float) -> float:
        return h - _BOTTOM - (h - _TOP - _BOTTOM) * (v - yt[0]) / ((yt[-1] - yt[0]) or 1)

    step = max(1, math.ceil(len(xs) / 8))
    xticks = "".join(f"<line x1='{x(v):.1f}' x2='{x(v):.1f}' y1='{h - _BOTTOM}' "
                     f"y2='{h - _BOTTOM + 4}' stroke='#333'/><text class='tick' x='{x(v):.1f}' "
                     f"y='{h - _BOTTOM + 17}' text-anchor='middle' font-size='11'>"
                     f"{_e(x_fmt(v))}</text>" for v in xs[::step])
    paths = []
    for name, s in series.items():
        colour = colours[name]
        segments: list[list[str]] = [[]]
        last: float | None = None
        for xv, yv in s:
            if yv is None or not math.isfinite(yv):
                segments.append([])  # a window without a value: a gap in the line
                continue
            if gap is not None and last is not None and xv - last > gap:
                segments.append([])  # windows missing in between: no line across them
            segments[-1].append(f"{x(xv):.1f},{y(yv):.1f}")
            last = xv
        for seg in segments:
            if seg:
                paths.append(f"<polyline points='{' '.join(seg)}' fill='none' "
                             f"stroke='{colour}' stroke-width='2'/>")
        paths += [f"<circle cx='{x(xv):.1f}' cy='{y(yv):.1f}' r='3' fill='{colour}'>"
                  f"<title>{_e(name)}: {_e(y_fmt(yv))} at {_e(x_fmt(xv))}</title></circle>"
                  for xv, yv in s if yv is not None and math.isfinite(yv)]
    body = _y_axis(yt, y, y_fmt, w) + _axes(w, h) + xticks + "".join(paths)
    return _frame(title, x_label, y_label, [(n, colours[n]) for n in series], body,
                  series=len(series))


def bars(title: str, categories: list[str], series: dict[str, list[float]], *, x_label: str,
         y_label: str, y_fmt: Callable[[float], str], colours: dict[str, str]) -> str:
    """Grouped vertical bars: one group per category, one bar per series."""
    values = [v for vs in series.values() for v in vs]
    if not values or not categories:
        return f"<p class='empty'>{_e(title)}: no data</p>"
    yt = nice_ticks(0.0, max(values))
    w, h = _W, _H
    group = (w - _LEFT - _RIGHT) / len(categories)
    bar = max(2.0, (group - 8) / len(series))

    def y(v: float) -> float:
        return h - _BOTTOM - (h - _TOP - _BOTTOM) * v / (yt[-1] or 1)

    out = [_y_axis(yt, y, y_fmt, w), _axes(w, h)]
    for i, cat in enumerate(categories):
        gx = _LEFT + i * group + 4
        out.append(f"<text class='tick' x='{gx + group / 2 - 4:.1f}' y='{h - _BOTTOM + 17}' "
                   f"text-anchor='middle' font-size='11'>{_e(cat)}</text>")
        for j, (name, vs) in enumerate(series.items()):
            v = vs[i]
            out.append(f"<rect x='{gx + j * bar:.1f}' y='{y(v):.1f}' width='{bar - 1:.1f}' "
                       f"height='{h - _BOTTOM - y(v):.1f}' fill='{colours[name]}'><title>"
                       f"{_e(name)}, {_e(cat)}: {_e(y_fmt(v))}</title></rect>")
    return _frame(title, x_label, y_label, [(n, colours[n]) for n in series], "".join(out),
                  series=len(series))


def hbars(title: str, rows: list[tuple[str, dict[str, float]]], *, x_label: str,
          y_label: str, x_fmt: Callable[[float], str], colours: dict[str, str],
          marker: tuple[float, str] | None = None) -> str:
    """Horizontal bars, one row per category (its name written on the axis), one bar per
    series in each row; ``marker`` draws a labelled vertical line (a threshold)."""
    names = list(colours)
    values = [v for _, vs in rows for v in vs.values()]
    if not rows or not values:
        return f"<p class='empty'>{_e(title)}: no data</p>"
    left = min(320, 40 + 7 * max(len(label) for label, _ in rows))
    top_v = max(values + ([marker[0]] if marker else []))
    xt = nice_ticks(0.0, top_v)
    per = max(len([n for n in names if any(n in vs for _, vs in rows)]), 1)
    row_h = 6 + 12 * per
    h = _TOP + row_h * len(rows) + _BOTTOM
    w = _W

    def x(v: float) -> float:
        return left + (w - left - _RIGHT) * v / (xt[-1] or 1)

    out = []
    for t in xt:
        out.append(f"<line x1='{x(t):.1f}' x2='{x(t):.1f}' y1='{_TOP}' y2='{h - _BOTTOM}' "
                   f"stroke='#e5e5e5'/><text class='tick' x='{x(t):.1f}' y='{h - _BOTTOM + 16}'"
                   f" text-anchor='middle' font-size='11'>{_e(x_fmt(t))}</text>")
    out.append(f"<line x1='{left}' x2='{left}' y1='{_TOP}' y2='{h - _BOTTOM}' stroke='#333'/>"
               f"<line x1='{left}' x2='{w - _RIGHT}' y1='{h - _BOTTOM}' y2='{h - _BOTTOM}' "
               f"stroke='#333'/>")
    for i, (label, vs) in enumerate(rows):
        ry = _TOP + i * row_h
        out.append(f"<text class='tick' x='{left - 6}' y='{ry + row_h / 2 + 4:.1f}' "
                   f"text-anchor='end' font-size='11'>{_e(label)}</text>")
        k = 0
        for name in names:
            if name not in vs:
                continue
            v = vs[name]
            out.append(f"<rect x='{left}' y='{ry + 3 + 12 * k}' width='{x(v) - left:.1f}' "
                       f"height='10' fill='{colours[name]}'><title>{_e(label)}, {_e(name)}: "
                       f"{_e(x_fmt(v))}</title></rect>")
            k += 1
    if marker is not None:
        mx = x(marker[0])
        out.append(f"<line x1='{mx:.1f}' x2='{mx:.1f}' y1='{_TOP - 4}' y2='{h - _BOTTOM}' "
                   f"stroke='#b00' stroke-dasharray='4 3'/><text x='{mx - 4:.1f}' "
                   f"y='{_TOP - 6}' font-size='11' fill='#b00' text-anchor='end'>"
                   f"{_e(marker[1])}</text>")
    return _frame(title, x_label, y_label, [(n, colours[n]) for n in names],
                  "".join(out), height=h, width=w, series=len(names))
