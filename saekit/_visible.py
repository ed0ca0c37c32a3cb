"""Text as it is shown: a token or an explanation with its newlines and tabs as arrows (↵ ⇥) and any other
control character as an escape (``\\x04``), never as an empty box. One rule for every view: the card, the
browser, the HTML export and the job's event lines (the widgets' ``tokenText`` applies the same)."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def visible(text: str) -> str:
    """``text`` with newlines as ↵, tabs as ⇥ and other control characters as ``\\xNN``."""
    text = text.replace("\n", "↵").replace("\t", "⇥")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
