"""An example job kind: count the lines and words of a text file, resumably.

The job reads the file in blocks, records progress and a metric per block, and commits its position and
running totals every few blocks, so a killed or cancelled run resumes where it stopped. Its result is a
small JSON file in the workspace, which ``job.result()`` loads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from saekit.errors import ConfigError
from saekit.jobs import JobSpec, job_kind, spec_field


@dataclass(frozen=True)
class LineCountSpec(JobSpec):
    """What a line_count job reads: ``submit`` refuses an unknown, missing or mistyped field, naming it."""
    path: str = spec_field(doc="the text file")
    fingerprint: str = spec_field("", doc="its size and time (filled in by _validate)")
    block_bytes: int = spec_field(1 << 16, volatile=True, doc="bytes read at a time")  # how, not what:
    commit_every: int = spec_field(4, volatile=True, doc="blocks between resume points")  # not in the key


def _validate(spec: LineCountSpec) -> LineCountSpec:
    """Normalise the spec before its key is computed; refuse bad input with the fix."""
    path = Path(spec.path).expanduser()
    if not path.is_file():
        raise ConfigError(f"path={spec.path!r} is not a file; give the path of a text file")
    if spec.block_bytes < 1 or spec.commit_every < 1:
        raise ConfigError(f"block_bytes={spec.block_bytes} and commit_every={spec.commit_every} must be positive")
    stat = path.stat()  # the same path with other content is new work
    return replace(spec, path=str(path.resolve()), fingerprint=f"{stat.st_size}:{int(stat.st_mtime)}")


def _output(ws, job_id: str) -> Path:
    return ws.path / "counts" / f"{job_id}.json"


@job_kind("line_count", spec=LineCountSpec, validate=_validate,
          load_result=lambda ws, result: json.loads(Path(result["file"]).read_text()),
          outputs=lambda ws, row: [_output(ws, row.id)],
          output_dirs={"counts": None})
def line_count(ctx, spec: LineCountSpec):
    size = os.path.getsize(spec.path)
    state = ctx.resume_point or {"offset": 0, "lines": 0, "words": 0, "block": 0}
    with open(spec.path, "rb") as f:
        f.seek(state["offset"])
        while state["offset"] < size:
            block = f.read(spec.block_bytes)
            cut = block.rfind(b"\n") + 1 or len(block)  # up to the last whole line (all of a longer line)
            f.seek(state["offset"] + cut)
            text = block[:cut]
            state = {"offset": state["offset"] + cut, "lines": state["lines"] + text.count(b"\n"),
                     "words": state["words"] + len(text.split()), "block": state["block"] + 1}
            ctx.metrics(state["block"], words_per_line=len(text.split()) / max(1, text.count(b"\n")))
            ctx.progress(state["offset"], size, unit="bytes", phase="counting")  # also the cancel check
            if state["block"] % spec.commit_every == 0:
                ctx.commit(state)  # nothing else to make durable: the state is the whole of the work
    target = _output(ctx.workspace, ctx.job_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"lines": state["lines"], "words": state["words"]}))
    ctx.event(f"{state['lines']:,} lines, {state['words']:,} words")
    return {"file": str(target)}
