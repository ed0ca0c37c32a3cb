"""Writes the "Job specs" section of docs/reference.md from the built-in kinds' spec classes
(``python tools/spec_reference.py``); tests/jobs/test_specs.py checks that the page says what the code does."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference.md"
BEGIN, END = "<!-- job specs: written by tools/spec_reference.py -->", "<!-- end of job specs -->"


def section() -> str:
    from saekit.jobs.kinds import builtin_kinds

    parts = [BEGIN, ""]
    for kind in builtin_kinds():
        if kind.spec is None:
            continue
        parts += [f"### `{kind.name}`: `{kind.spec.__module__}.{kind.spec.__qualname__}`", "",
                  kind.spec.reference(), ""]
    return "\n".join([*parts, END])


def written(page: str) -> str:
    """The section as it stands in ``page`` (empty when it has none)."""
    found = re.search(re.escape(BEGIN) + ".*?" + re.escape(END), page, re.S)
    return found.group(0) if found else ""


if __name__ == "__main__":
    page = PAGE.read_text()
    old = written(page)
    PAGE.write_text(page.replace(old, section()) if old else page.rstrip("\n") + "\n\n" + section() + "\n")
    print(f"wrote {PAGE}")
