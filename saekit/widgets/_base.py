"""What every widget shares: its front-end module (vendored uPlot + the chart adapter + its own module, joined,
no build step), its CSS, thinning of chart series, and a mimebundle that carries a static snapshot.

A widget's ``_repr_mimebundle_`` holds, beside the live view, ``text/html`` (a static picture: the header,
tables and small SVG charts, see ``snapshot.py``) and ``text/plain`` (a summary), so GitHub, nbviewer,
nbconvert and saved notebooks show its last state without a kernel.

Displayed in a notebook (``_ipython_display_``), the snapshot is an output of its own, after the live view's:
nbconvert shows the live view alone when the notebook was saved with its widget state (an empty box without
the widgets' JavaScript, e.g. offline), so the picture cannot ride in the same output. Where the live view
renders, it hides the snapshot that follows it (``.saekit-live`` in widgets.css; in other front ends a style
rule naming the snapshot's ``snapshot_key``, ``saekitHideSnapshot`` in charts.js).
"""

from __future__ import annotations

import math
from pathlib import Path

import os
import sys
import uuid

import anywidget
import traitlets

from saekit._steps import in_kernel

HERE = Path(__file__).parent
JS = HERE / "js"
MAX_POINTS = 600  # per chart series sent to the browser


def esm(*names: str) -> str:
    """A widget's ES module: uPlot (which defines ``uPlot``), the chart adapter, then the widget's own files
    (the last one has the ``export default``)."""
    source = "\n".join((JS / part).read_text() for part in ("vendor/uPlot.iife.min.js", "charts.js", *names))
    if source.count("export default {") != 1:
        raise ValueError(f"{names[-1]} must end with one 'export default {{ render }}'")
    # every view marks its element (widgets.css then hides the static snapshot output after it in JupyterLab and
    # the classic Notebook) and hides its own snapshot by its key wherever it is drawn (other front ends)
    return source.replace("export default {", "const widgetModule = {") + (
        "\nexport default { ...widgetModule, render(context) { context.el.classList.add('saekit-live'); "
        "saekitHideSnapshot(context.model.get('snapshot_key')); return widgetModule.render(context); } };\n")


CSS = (JS / "vendor" / "uPlot.min.css").read_text() + "\n" + (JS / "widgets.css").read_text()


def thin(points: list[list[float]], limit: int = MAX_POINTS) -> list[list[float]]:
    """At most about ``limit`` points: the first and the last, and in each of the buckets between, the lowest
    and the highest (so a spike, a divergence, survives the thinning of a million-step run)."""
    if len(points) <= limit:
        return points
    buckets = max(1, (limit - 2) // 2)
    size = (len(points) - 2) / buckets
    out = [points[0]]
    for b in range(buckets):
        chunk = points[1 + math.floor(b * size):1 + math.floor((b + 1) * size)]
        if not chunk:
            continue
        low = min(chunk, key=lambda p: p[1])
        high = max(chunk, key=lambda p: p[1])
        out += sorted({id(low): low, id(high): high}.values(), key=lambda p: p[0])
    out.append(points[-1])
    return out


def kernel_id() -> str:
    """The id of the Jupyter kernel this process is ('' outside one): a view compares it with its kernel's."""
    if "ipykernel" not in sys.modules:  # not a kernel (and importing it would replace comm.create_comm)
        return ""
    try:
        from ipykernel.connect import get_connection_file

        name = os.path.basename(get_connection_file())
    except Exception:  # noqa: BLE001 - not in a kernel
        return ""
    return name.removeprefix("kernel-").removesuffix(".json")


class SnapshotWidget(anywidget.AnyWidget):
    """An anywidget whose mimebundle also carries ``snapshot_html()`` and ``summary()``, and whose views know
    when they have lost their kernel (``kernel_id``)."""

    _css = CSS
    kernel_id = traitlets.Unicode("").tag(sync=True)
    snapshot_key = traitlets.Unicode("").tag(sync=True)  # names this widget's snapshot output for its views to hide

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.kernel_id = kernel_id()
        self.snapshot_key = uuid.uuid4().hex[:16]
        self.on_msg(self._answer_ping)

    def _answer_ping(self, widget, content, buffers) -> None:
        """A view asks whether this kernel still knows it (see ``watchKernel`` in charts.js)."""
        if isinstance(content, dict) and content.get("type") == "ping":
            self.send({"type": "pong", "n": content.get("n")})

    def summary(self) -> str:  # pragma: no cover - each widget says its own
        raise NotImplementedError

    def snapshot_html(self) -> str:  # pragma: no cover
        raise NotImplementedError

    def _outputs(self) -> tuple[tuple[dict, dict], dict]:
        """(the live view's output and its metadata, the snapshot's output) of a notebook display."""
        bundle = self._repr_mimebundle_()
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
        view = {k: v for k, v in data.items() if k not in ("text/html", "text/plain")}
        view["text/plain"] = ""  # the summary is the snapshot's: a text-only reader shows it once
        snapshot = {"text/html": f"<div class='saekit-snapshot' data-saekit-key='{self.snapshot_key}'>"
                                 f"{data['text/html']}</div>",
                    "text/plain": data["text/plain"]}
        return (view, metadata), snapshot

    def _ipython_display_(self) -> None:
        """Shown in a notebook as two outputs with display ids (the live view, then its static snapshot), so that
        ``refresh_snapshot`` can replace the snapshot saved with the notebook (a job's view displayed while it
        runs is saved with its end, not its start)."""
        from IPython.display import display

        (view, metadata), snapshot = self._outputs()
        if not in_kernel():  # terminal IPython: no view to draw, the summary once
            display(snapshot, raw=True)
            return
        self._display_handle = display(view, metadata=metadata, raw=True, display_id=True)
        self._snapshot_handle = display(snapshot, raw=True, display_id=True)

    def refresh_snapshot(self) -> None:
        """Send this widget's outputs again (the live view is the same), with its snapshot as it is now."""
        handle = getattr(self, "_display_handle", None)
        if handle is not None:
            (view, metadata), snapshot = self._outputs()
            handle.update(view, metadata=metadata, raw=True)
            self._snapshot_handle.update(snapshot, raw=True)

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
        data = {**(data or {}), "text/plain": self.summary(), "text/html": self.snapshot_html()}
        return (data, metadata) if isinstance(bundle, tuple) else data
