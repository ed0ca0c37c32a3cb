"""One rule for showing text: newlines and tabs as arrows, other control characters as escapes (never boxes)."""

from saekit._visible import visible
from saekit.widgets.feature_html import context_html


def test_control_characters_are_escapes_and_whitespace_is_arrows():
    assert visible("a\nb\tc\x04d\x7fe é") == "a↵b⇥c\\x04d\\x7fe é"
    html = context_html({"tokens": ["\x04ction", " x"], "values": [1.0, 0.0], "center": 0, "value": 1.0}, 1.0)
    assert "\\x04ction" in html and "\x04" not in html
