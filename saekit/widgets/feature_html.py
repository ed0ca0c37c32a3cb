"""Static HTML of features (inline styles and SVG, no script): the snapshot in the card's and the browser's
mimebundles, and the self-contained file of ``FeatureSet.export_html``. The value of every token is its
hover text (``title``), so it reads without a kernel or JavaScript."""

from __future__ import annotations

import html
import math
from pathlib import Path

from saekit._fs import write_atomic
from saekit._visible import visible
from saekit.widgets.snapshot import BOX, esc, number


def _token(t: str) -> str:
    return visible(t)


def context_html(example: dict, max_value: float) -> str:
    spans = []
    for i, (token, value) in enumerate(zip(example["tokens"], example["values"])):
        if token == "" and i != example["center"]:
            continue
        alpha = min(1.0, max(0.0, value / max_value)) if max_value > 0 else 0.0
        style = f"background:rgba(249,115,22,{0.12 + 0.88 * alpha:.3f});" if alpha > 0 else ""
        if i == example["center"]:
            style += "outline:1px solid #c2410c;"
        spans.append(f"<span style='{style}border-radius:2px' title='{esc(repr(token))}: {number(value)}'>"
                     f"{esc(_token(token))}</span>")
    return (f"<div style='display:flex;gap:8px;border-bottom:1px solid #f1f1f1'><span style='min-width:52px;"
            f"text-align:right;color:#666'>{number(example['value'])}</span><span style='font-family:monospace;"
            f"white-space:pre-wrap;word-break:break-word'>{''.join(spans)}</span></div>")


def histogram_svg(edges: list, counts: list[int], width: int = 300, height: int = 120) -> str:
    """Bars of the nonzero bins on a log activation axis, with the axis range and the tallest count."""
    used = [i for i, c in enumerate(counts) if c]
    if not used:
        return "<div style='color:#666'>never fired</div>"
    lo, hi = used[0], used[-1]
    left, bottom, top = 40, 16, 6
    n = hi - lo + 1
    peak = max(counts[lo:hi + 1])
    bar = (width - left - 4) / n
    rects = []
    for j, i in enumerate(range(lo, hi + 1)):
        h = (height - top - bottom) * counts[i] / peak
        rects.append(f"<rect x='{left + j * bar:.1f}' y='{height - bottom - h:.1f}' width='{max(bar - 1, 1):.1f}' "
                     f"height='{h:.1f}' fill='#2563eb' fill-opacity='0.6'><title>{number(edges[i])} – "
                     f"{number(edges[i + 1]) if edges[i + 1] is not None else '∞'}: {counts[i]:,}</title></rect>")
    low = edges[lo] if edges[lo] else edges[lo + 1]
    high = edges[hi + 1] if edges[hi + 1] is not None and math.isfinite(edges[hi + 1]) else edges[hi]
    axis = (f"<line x1='{left}' y1='{height - bottom}' x2='{width - 4}' y2='{height - bottom}' stroke='#999'/>"
            f"<text x='{left - 4}' y='{top + 8}' text-anchor='end' font-size='10'>{peak:,}</text>"
            f"<text x='{left}' y='{height - 3}' font-size='10'>{number(low)}</text>"
            f"<text x='{width - 4}' y='{height - 3}' text-anchor='end' font-size='10'>{number(high)}</text>")
    return (f"<div style='font-weight:600'>activations (nonzero, log-spaced bins)</div>"
            f"<svg width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'>{axis}{''.join(rects)}</svg>")


def _pairs_table(title: str, rows: list, fmt) -> str:
    body = "".join(f"<tr><td style='padding:1px 6px'><code>{esc(_token(str(a)))}</code></td>"
                   f"<td style='padding:1px 6px'>{fmt(b)}</td></tr>" for a, b in rows)
    return f"<table style='border-collapse:collapse'><tr><th style='text-align:left'>{esc(title)}</th><th></th></tr>{body}</table>"


def card_html(data: dict) -> str:
    """One feature's card as static HTML (``data`` is ``Feature.to_dict()``)."""
    freq = data["frequency"]
    label = ""
    if data.get("label"):
        source = esc(data.get("label_source", "auto"))
        label = f" — {esc(data['label'])} <span style='color:#888;font-weight:normal'>({source})</span>"
    head = (f"<div style='font-weight:600;font-size:13px'>Feature {data['id']}{label}</div>"
            f"<div style='color:#444'>fires on {100 * freq:.4g}% of tokens ({data['count']:,}); mean {number(data['mean'])}, "
            f"max {number(data['max'])}; top tokens: "
            f"{esc('  '.join(f'{_token(t)} ×{c}' for t, c in data['top_tokens'][:5])) or '-'}</div>")
    contexts = "".join(context_html(e, data["max"]) for e in data["examples"])
    quantiles = "".join(
        f"<details><summary>bin {q['index'] + 1}: {number(q['low'])} – {number(q['high'])}</summary>"
        f"{''.join(context_html(e, data['max']) for e in q['examples'])}</details>"
        for q in reversed(data["quantiles"]))
    if quantiles:
        quantiles = "<div style='font-weight:600;margin-top:6px'>quantile samples</div>" + quantiles
    side = histogram_svg(data["histogram"]["edges"], data["histogram"]["counts"])
    if data.get("logits"):
        side += ("<div style='font-weight:600;margin-top:6px'>logit lens</div><div style='display:flex;gap:10px'>"
                 + _pairs_table("promotes", data["logits"]["top"], number)
                 + _pairs_table("suppresses", data["logits"]["bottom"], number) + "</div>")
    side += ("<div style='font-weight:600;margin-top:6px'>nearest by decoder cosine</div>"
             + esc(", ".join(f"#{i} ({c:.3f})" for i, c in data["neighbours"]) or "none")
             + "<div style='font-weight:600;margin-top:6px'>fires together with</div>"
             + esc(", ".join(f"#{i} ({100 * s:.1f}%)" for i, s in data["cooccurring"]) or "none"))
    for analysis, latent, cos in data.get("matches") or []:
        side += f"<div style='font-weight:600;margin-top:6px'>match in {esc(analysis)}</div>#{latent} (cos {cos:.3f})"
    return (f"<div style='{BOX}' data-feature='{data['id']}'>{head}<div style='display:grid;grid-template-columns:"
            f"minmax(0,3fr) minmax(260px,2fr);gap:12px'><div><div style='font-weight:600;margin-top:6px'>top "
            f"{len(data['examples'])} contexts</div>{contexts}"
            f"{quantiles}</div><div>{side}</div></div></div>")


def overview_html(rows: list[dict], title: str, matches: int, total: int) -> str:
    body = "".join(f"<tr><td style='padding:1px 6px'>{r['id']}</td><td style='padding:1px 6px'>{100 * r['frequency']:.3g}%</td>"
                   f"<td style='padding:1px 6px'>{number(r['max'])}</td><td style='padding:1px 6px'>"
                   f"{esc(r['label'] or ' · '.join(_token(t) for t in r['top_tokens']))}</td></tr>" for r in rows)
    return (f"<div style='font-weight:600'>{esc(title)}: {matches:,} of {total:,} features</div><table style='border-collapse:"
            f"collapse'><tr><th>#</th><th>frequency</th><th>max</th><th style='text-align:left'>top tokens</th></tr>{body}</table>")


def export_html(feats, path, features=None) -> Path:
    """Write a self-contained HTML file of the chosen features (see ``FeatureSet.export_html``)."""
    from saekit.features.export import chosen

    items = chosen(feats, features)
    index = " ".join(f"<a href='#f{f.id}'>#{f.id}</a>" for f in items)
    title = f"saekit features of analysis {feats.id}"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family:system-ui,sans-serif;margin:16px'><h2>{html.escape(title)}</h2>"
            f"<p>{feats.n_latents:,} latents analysed on {feats.n_tokens:,} tokens; {len(items)} shown: {index}</p>"
            + "".join(f"<div id='f{f.id}' style='margin:10px 0'>{card_html(f.to_dict())}</div>" for f in items)
            + "<p style='color:#666'>Hover a token for its activation.</p></body></html>")
    path = Path(path)
    write_atomic(path, page)
    return path


def text_features_html(tokens: list[dict], features: dict) -> str:
    """A text with each token shaded by its strongest activation (its latents on hover), and a table of the
    tokens' latents."""
    peak = max((t["top"][0][1] for t in tokens if t["top"]), default=0.0)
    spans, rows = [], []
    for position, token in enumerate(tokens):
        top = token["top"]
        alpha = min(1.0, top[0][1] / peak) if top and peak > 0 else 0.0
        style = f"background:rgba(249,115,22,{0.12 + 0.88 * alpha:.3f});" if alpha > 0 else ""
        hover = ", ".join(f"#{i} {number(v)}" for i, v in top) or "nothing fired"
        spans.append(f"<span style='{style}border-radius:2px' title='{esc(hover)}'>{esc(_token(token['text']))}</span>")
        if top:
            names = "; ".join(f"#{i} {number(v)} {esc(features.get(str(i), {}).get('label') or '')}" for i, v in top)
            rows.append(f"<tr><td>{position}</td><td><code>{esc(_token(token['text']))}</code></td><td>{names}</td></tr>")
    return (f"<div style='{BOX}'><div style='font-family:monospace;white-space:pre-wrap;word-break:break-word;"
            f"margin-bottom:6px'>{''.join(spans)}</div><table style='font-size:12px'><tr><th>#</th><th>token</th>"
            f"<th>latents (activation, label)</th></tr>{''.join(rows[:64])}</table></div>")
