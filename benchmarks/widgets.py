"""Widget overhead benchmark; prints JSON.

    python benchmarks/widgets.py [--jobs 5] [--widgets 20] [--seconds 20]

Starts ``--jobs`` background jobs that report progress continuously (about 20 progress lines a second
each, plus metrics), attaches ``--widgets`` job widgets to them (spread evenly), plus a dashboard and
a system panel, and runs the poller on an asyncio loop in this process - as a kernel would - for
``--seconds``. Every message a widget sends goes through a comm that serializes it as ipykernel does
(jupyter_client's ``Session.serialize``: JSON, the HMAC signature, the frames), so the cost of talking to a
browser is counted. Reports the CPU time this process used per second of wall time (the kernel's share of
one core), ticks per second, what one tick costs, and the bytes sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


class SerializingComm:
    """A comm that serializes each message the way ipykernel's does, and counts what it would send."""

    sent = {"messages": 0, "bytes": 0}

    @staticmethod
    def install() -> None:
        import comm
        from comm.base_comm import BaseComm
        from jupyter_client.session import Session

        session = Session(key=b"benchmark")

        class Comm(BaseComm):
            def close(self, data=None, metadata=None, buffers=None, deleting=False):
                self._closed = True  # no comm manager to leave: nothing listens here

            def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
                content = {"data": data or {}, "comm_id": self.comm_id, **keys}
                msg = session.msg(msg_type, content=content, metadata=metadata or {})
                frames = session.serialize(msg)
                SerializingComm.sent["messages"] += 1
                SerializingComm.sent["bytes"] += sum(len(f) for f in frames) + sum(len(b) for b in buffers or [])

        comm.create_comm = Comm


async def measure(args) -> dict:
    import saekit as sk
    from saekit.jobs import submit
    from saekit.widgets.dashboard import Dashboard
    from saekit.widgets.job_widget import JobWidget
    from saekit.widgets.poller import Poller
    from saekit.widgets.system_widget import SystemMonitor

    sk.set_workspace(tempfile.mkdtemp())
    jobs = [submit("count", {"n": 10**6, "delay": 0.05, "tag": i}, progress=False) for i in range(args.jobs)]
    deadline = time.monotonic() + 60
    while not all(j.status == "running" for j in jobs):
        assert time.monotonic() < deadline, [j.status for j in jobs]
        await asyncio.sleep(0.1)
    poller = Poller()
    widgets = [JobWidget(jobs[i % len(jobs)], poller=poller) for i in range(args.widgets)]
    panels = [Dashboard(poller=poller), SystemMonitor(poller=poller)] if args.panels else []
    await asyncio.sleep(2)  # settle: first reads of the logs' history
    cpu0, wall0, ticks0 = time.process_time(), time.monotonic(), poller.ticks
    sent0 = dict(SerializingComm.sent)
    await asyncio.sleep(args.seconds)
    cpu, wall, ticks = time.process_time() - cpu0, time.monotonic() - wall0, poller.ticks - ticks0
    sent = {k: SerializingComm.sent[k] - sent0[k] for k in sent0}
    for j in jobs:
        j.cancel()
    for w in [*widgets, *panels]:
        w.close()
    return {"jobs": args.jobs, "widgets": len(widgets), "panels": len(panels), "seconds": round(wall, 1),
            "kernel_cpu_percent_of_one_core": round(100 * cpu / wall, 2), "ticks_per_s": round(ticks / wall, 2),
            "ms_per_tick": round(1000 * cpu / max(ticks, 1), 2),
            "messages_per_s": round(sent["messages"] / wall, 1), "kib_sent_per_s": round(sent["bytes"] / wall / 1024, 1),
            "progress_seen": [round(w.done) for w in widgets[: args.jobs]]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--widgets", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--no-panels", dest="panels", action="store_false")
    args = parser.parse_args()
    import kinds_for_tests  # noqa: F401  (the `count` kind)

    SerializingComm.install()
    print(json.dumps(asyncio.run(measure(args)), indent=2))


if __name__ == "__main__":
    main()
