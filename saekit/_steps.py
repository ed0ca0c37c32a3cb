"""Progress of work that runs in the caller's process and is not a job (a steering comparison, a sweep): in a
notebook a line that updates in place, on a terminal a line rewritten on stderr; gone when the work ends."""

from __future__ import annotations

import html
import sys
import time


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where widgets can be shown), False in scripts and terminals."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class Steps:
    """``with Steps(12, "steering sweep") as steps: ... steps.advance("coeff 2")``. ``show=False`` (or a script
    whose stderr is not a terminal) shows nothing."""

    def __init__(self, total: int, what: str, *, show: bool = True, stream=None):
        self.total, self.what, self.done = int(total), what, 0
        self.stream = stream or sys.stderr
        self.kernel = show and in_kernel()
        self.tty = show and not self.kernel and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.monotonic()
        self._handle, self._width = None, 0
        self.lines: list[str] = []  # what was shown, newest last (for tests and the curious)

    def __enter__(self) -> "Steps":
        self._show("")
        return self

    def advance(self, label: str = "") -> None:
        self.done += 1
        self._show(label)

    def line(self, label: str = "") -> str:
        took = time.monotonic() - self.started
        return (f"{self.what}: {self.done}/{self.total}" + (f" · {label}" if label else "")
                + f" · {took:.0f} s")

    def _show(self, label: str) -> None:
        text = self.line(label)
        self.lines.append(text)
        if self.kernel:
            from IPython.display import HTML, display

            body = HTML(f"<div class='saekit-steps'><progress max='{self.total}' value='{self.done}' "
                        f"style='width:200px'></progress> {html.escape(text)}</div>")
            if self._handle is None:
                self._handle = display(body, display_id=True)
            else:
                self._handle.update(body)
        elif self.tty:
            shown = text[:150]
            self.stream.write("\r" + shown.ljust(self._width))  # over the longer line before it
            self._width = max(self._width, len(shown))
            self.stream.flush()

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            from IPython.display import HTML

            self._handle.update(HTML(""))  # the result shows below; the bar is done
        elif self.tty:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
