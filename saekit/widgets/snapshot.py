"""Static pictures of widgets for places without a kernel or JavaScript (GitHub, nbviewer, nbconvert, a saved
notebook): plain HTML with inline SVG. The live views draw with uPlot; these only need to be truthful and
legible: axes with their range, the series, the last value."""

from __future__ import annotations

import html
import math

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
BADGES = {"queued": "#6b7280", "running": "#2563eb", "completed": "#16a34a", "failed": "#dc2626",
          "cancelled": "#d97706", "suspicious": "#b45309", "diverged": "#b45309", "orphan": "#7c3aed"}
BOX = "font-family:system-ui,sans-serif;font-size:12px;border:1px solid #ddd;border-radius:6px;padding:6px 8px;max-width:980px"


class Markup(str):
    """HTML made here (a badge), which ``table`` puts in a cell as it is; every other cell is escaped, so text
    from outside (a job name, a label) never becomes markup, whatever it starts with."""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def number(x) -> str:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "?"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:,.4g}"


def badge(text: str) -> str:
    color = BADGES.get(text, "#6b7280")
    return Markup(f"<span style='color:#fff;background:{color};border-radius:9px;padding:1px 8px;font-size:11px'>"
                  f"{esc(text)}</span>")


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='padding:2px 8px'>{c if isinstance(c, Markup) else esc(c)}</td>"
                                    for c in row) + "</tr>" for row in rows)
    return f"<table style='border-collapse:collapse;margin-top:4px'><tr>{head}</tr>{body}</table>"


def line_chart(title: str, series: dict[str, list[list[float]]], *, log: bool = False, width: int = 300,
               height: int = 150) -> str:
    """An SVG line chart of ``{name: [[x, y], ...]}`` with its x and y range and each series' last value."""
    points = {n: [(x, y) for x, y in p if y is not None and math.isfinite(y) and (y > 0 or not log)]
              for n, p in series.items()}
    points = {n: p for n, p in points.items() if p}
    if not points:
        return ""
    tf = (lambda y: math.log10(y)) if log else (lambda y: y)
    xs = [x for p in points.values() for x, _ in p]
    ys = [tf(y) for p in points.values() for _, y in p]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, bottom, top, right = 52, 18, 6, 6
    sx = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    sy = lambda y: height - bottom - (tf(y) - y0) / (y1 - y0) * (height - top - bottom)  # noqa: E731
    lines = []
    for i, p in enumerate(points.values()):
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in p)
        lines.append(f"<polyline points='{coords}' fill='none' stroke='{PALETTE[i % len(PALETTE)]}' stroke-width='1.5'/>")
    low, high = (10 ** y0, 10 ** y1) if log else (y0, y1)
    axis = (f"<line x1='{left}' y1='{top}' x2='{left}' y2='{height - bottom}' stroke='#999'/>"
            f"<line x1='{left}' y1='{height - bottom}' x2='{width - right}' y2='{height - bottom}' stroke='#999'/>"
            f"<text x='{left - 4}' y='{top + 8}' text-anchor='end' font-size='10'>{number(high)}</text>"
            f"<text x='{left - 4}' y='{height - bottom}' text-anchor='end' font-size='10'>{number(low)}</text>"
            f"<text x='{left}' y='{height - 4}' font-size='10'>{number(x0)}</text>"
            f"<text x='{width - right}' y='{height - 4}' text-anchor='end' font-size='10'>{number(x1)}</text>")
    legend = " ".join(f"<span style='color:{PALETTE[i % len(PALETTE)]}'>■</span> {esc(n)} {number(p[-1][1])}"
                      for i, (n, p) in enumerate(points.items()))
    return (f"<div style='display:inline-block;margin:4px 8px 4px 0'><div style='font-weight:600'>{esc(title)}"
            f"{' (log)' if log else ''}</div><svg width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'>"
            f"{axis}{''.join(lines)}</svg><div style='font-size:11px'>{legend}</div></div>")


def box(*parts: str) -> str:
    return f"<div style='{BOX}'>{''.join(p for p in parts if p)}</div>"
