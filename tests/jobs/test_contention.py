"""The test that matters most: under the load where open/close-with-retry lost acknowledged DuckDB
writes, every acknowledged write is in the registry afterwards and no error reaches a caller."""

import json
import sys
from pathlib import Path

import pytest

from saekit import registry

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import registry as registry_benchmark  # noqa: E402


@pytest.mark.heavy
def test_acknowledged_writes_survive_contention(ws, tmp_path):
    result = registry_benchmark.contention(str(ws.path), writers=8, writes=50, readers=2, appenders=4,
                                           tailers=4, hz=10.0, lines=30)
    assert result["errors"] == []
    assert len(result["acked_creates"]) == 8 * 25 and len(result["acked_transitions"]) == 8 * 25
    rows = {r.id: r for r in registry.list_jobs(ws)}
    assert set(result["acked_creates"]) <= set(rows)
    assert all(rows[i].status == "running" for i in result["acked_transitions"])
    assert len(rows) == 200
    # every tailer saw every progress line of its log exactly once, in order, never a partial line
    assert result["tails_seen"] == [list(range(1, 31))] * 4
    latency = result["latency"]
    assert {"create", "transition", "list", "append", "tail"} <= set(latency)
    assert latency["list"]["n"] == 2 * 40  # every reader made all its reads, however busy the machine
    (tmp_path / "contention-latency.json").write_text(json.dumps(latency, indent=2))
    print(json.dumps(latency))
