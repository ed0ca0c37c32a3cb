"""Text from outside never becomes markup in a widget's static snapshot (issue 24, item 3): the ``text/html`` a saved
notebook keeps (and a bundle can carry) shows a job named ``<span><img src=x onerror=...></span>`` as text."""

from html.parser import HTMLParser

import saekit as sk
from saekit.widgets.dashboard import Compare, Dashboard
from saekit.widgets.poller import Poller

EVIL = "<span><img src=x onerror=alert(document.domain)></span>"


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.handlers = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]


def _tags(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


def test_a_job_name_is_text_in_the_dashboard_and_compare_snapshots(ws):
    jobs = [sk.submit("count", {"n": n}, name=EVIL, background=False, progress=False) for n in (3, 4)]
    board = Dashboard(workspace=ws, poller=Poller())
    board.poll()
    chart = Compare(jobs, "value", poller=Poller())
    for widget in (board, chart):
        html = widget._repr_mimebundle_()[0]["text/html"] if isinstance(widget._repr_mimebundle_(), tuple) \
            else widget._repr_mimebundle_()["text/html"]
        found = _tags(html)
        assert "img" not in found.tags and not found.handlers, type(widget).__name__
        assert "&lt;img src=x onerror=alert(document.domain)&gt;" in html  # shown, as text
    assert "span" in _tags(board.snapshot_html()).tags  # the status badges are still markup
