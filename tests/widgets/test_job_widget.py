"""The job widget's synced traits follow the registry and the event log; Cancel writes the flag; one
poller (one asyncio task) serves many widgets and stops when there is nothing left to follow."""

import asyncio
import os
import signal
import time

from data_for_tests import quick, toy_store

import saekit as sk
from saekit.jobs import submit
from saekit.jobs.lifecycle import cancel_path
from saekit.widgets import poller as poller_module
from saekit.widgets.job_widget import JobWidget
from saekit.widgets.poller import Poller


def _tick_until(poller, predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        poller.tick()
        time.sleep(0.05)


def test_traits_follow_a_running_job_to_its_end(ws):
    poller = Poller()
    job = submit("count", {"n": 40, "delay": 0.05}, progress=False)
    widget = JobWidget(job, poller=poller)
    assert widget.job_id == job.id and widget.kind == "count" and widget in poller.widgets
    _tick_until(poller, lambda: widget.status == "running" and widget.done > 5, what="progress to show")
    assert widget.total == 40 and widget.unit == "steps" and widget.phase == "counting"
    first = widget.done
    _tick_until(poller, lambda: widget.done > first, what="progress to rise")
    _tick_until(poller, lambda: widget.status == "completed", what="the end")
    assert widget.done == 40 and widget.rate > 0 and widget.ended_at >= widget.started_at
    assert widget.last_event == "counted to 40"
    poller.tick()
    assert widget not in poller.widgets  # nothing more to follow
    again = JobWidget(sk.job(job.id), poller=poller)  # re-attached later: the final state at once
    assert again.status == "completed" and again.done == 40 and again not in poller.widgets


def test_cancel_button_writes_the_flag_and_the_widget_shows_the_end(ws):
    poller = Poller()
    job = submit("count", {"n": 10_000, "delay": 0.01}, progress=False)
    widget = JobWidget(job, poller=poller)
    _tick_until(poller, lambda: widget.status == "running", what="the start")
    widget._on_message(widget, {"type": "cancel"}, [])  # what the button sends
    assert cancel_path(ws, job.id).exists() and widget.cancel_requested
    _tick_until(poller, lambda: widget.status == "cancelled", what="the cancel to land")
    assert sk.job(job.id).status == "cancelled" and widget.done < 10_000
    snapshot = widget.snapshot_html()  # a cancel is not an error: it says how to go on
    assert "resume()" in snapshot and "#fef2f2" not in snapshot


def test_one_poller_one_feed_for_many_widgets(ws, monkeypatch):
    poller = Poller()
    job = submit("count", {"n": 30, "delay": 0.05}, progress=False)
    widgets = [JobWidget(job, poller=poller) for _ in range(5)]
    other = JobWidget(submit("count", {"n": 5, "tag": "b"}, progress=False), poller=poller)
    assert len(poller.widgets) >= 5
    reads = []
    original = poller_module.EventTail.read
    monkeypatch.setattr(poller_module.EventTail, "read", lambda self: reads.append(self.path) or original(self))
    poller.tick()
    assert len(reads) <= 2  # one read per job, not per widget
    _tick_until(poller, lambda: all(w.final for w in [*widgets, other]), what="both jobs to end")
    assert {w.done for w in widgets} == {30} and len({id(w._feed) for w in widgets}) == 1
    poller.tick()
    assert poller.widgets == [] and poller._feeds == {}


def test_closing_a_widget_stops_its_polling(ws):
    poller = Poller()
    job = submit("count", {"n": 10_000, "delay": 0.01}, progress=False)
    widget = JobWidget(job, poller=poller)
    widget.close()
    poller.tick()
    assert widget not in poller.widgets
    job.cancel().wait(timeout=120)


def test_a_killed_worker_shows_as_failed(ws, monkeypatch):
    monkeypatch.setenv("SAEKIT_WIDGET_LIVENESS", "0")
    poller = Poller()
    job = submit("count", {"n": 10_000, "delay": 0.01}, progress=False)
    widget = JobWidget(job, poller=poller)
    _tick_until(poller, lambda: widget.status == "running", what="the start")
    os.kill(job.info()["worker_pid"], signal.SIGKILL)
    _tick_until(poller, lambda: widget.status == "failed", what="the loss to be seen")
    assert widget.error_type == "worker_lost" and widget.suggestion and widget not in poller.widgets


def test_training_metrics_reach_the_charts(ws):
    store = toy_store()
    job = sk.train(store, "toy", sk.SAEConfig(arch="topk", d_sae=32, k=2),
                   sk.TrainConfig(total_tokens=20_000, batch_size=500, lr=3e-3, log_every=5, eval_tokens=2_000),
                   background=False, progress=False)
    widget = JobWidget(job, poller=Poller())
    assert {"loss", "fvu", "l0", "dead_fraction", "lr", "tokens_per_s"} <= set(widget.metrics)
    assert [p[0] for p in widget.metrics["fvu"]] == list(range(5, 41, 5))
    assert widget.status == "completed" and widget.done == widget.total == 40
    assert [s for s, _ in widget.step_times] == list(range(5, 41, 5)) and widget.tokens_per_step == 500
    assert widget.evaluation[0]["metrics"]["fvu"] == job.info()["result"]["saes"][0]["eval"]["fvu"]
    assert widget.health["level"] == "ok" and "fvu=" in widget.latest


def test_a_diverged_run_is_flagged(ws):
    job = sk.train(toy_store(), "toy", sk.SAEConfig(arch="relu", d_sae=32, l1_coefficient=0.0),
                   sk.TrainConfig(total_tokens=20_000, batch_size=500, lr=5.0, log_every=5, eval_tokens=2_000,
                                  lr_warmup=0, lr_decay="none"), background=False, progress=False)
    widget = JobWidget(job, poller=Poller())
    assert widget.status == "completed" and widget.health["level"] == "diverged", widget.health  # was a green badge
    assert any("FVU" in r or "grew" in r for r in widget.health["reasons"])
    data = widget._repr_mimebundle_()[0]
    assert "diverged" in data["text/html"] and "diverged" in data["text/plain"]


def test_the_mimebundle_carries_a_snapshot_and_a_summary(ws):
    job = sk.train(toy_store(), "toy", sk.SAEConfig(arch="topk", d_sae=32, k=2), quick(), background=False,
                   progress=False)
    data = JobWidget(job, poller=Poller())._repr_mimebundle_()[0]
    assert "application/vnd.jupyter.widget-view+json" in data  # the live view
    html, text = data["text/html"], data["text/plain"]
    assert job.id in html and "completed" in html and "<svg" in html and "held out" in html
    assert "object at 0x" not in text and job.id in text and "completed" in text


def test_the_poller_is_one_task_on_the_running_loop_and_ends(ws, tmp_path):
    gate = tmp_path / "gate"  # the jobs cannot end before the widgets exist, however busy the machine is

    async def main():
        poller = Poller(interval=0.05)
        jobs = [submit("count", {"n": 20, "delay": 0.02, "tag": i, "gate": str(gate)}, progress=False) for i in range(3)]
        widgets = [JobWidget(j, poller=poller) for j in jobs for _ in range(2)]
        task = poller._task
        assert task is not None and poller.running
        assert all(poller._task is task for _ in widgets)  # one task, however many widgets
        gate.touch()
        deadline = time.monotonic() + 120
        while poller.running:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        return widgets, poller

    widgets, poller = asyncio.run(main())
    assert all(w.status == "completed" and w.done == 20 for w in widgets) and poller.ticks > 2


def test_job_repr_outside_a_kernel_is_text(ws):
    job = submit("count", {"n": 3}, background=False, progress=False)
    bundle = job._repr_mimebundle_()
    assert list(bundle) == ["text/plain"] and job.id in bundle["text/plain"]
    assert isinstance(job.widget(), JobWidget)


def test_a_warm_up_above_fvu_one_is_not_a_divergence():
    """A ReLU SAE's first points are above FVU 1 and falling: no badge; above 1 and rising is diverged."""
    from saekit.sae.health import assess

    falling = {(step, "fvu"): fvu for step, fvu in enumerate([1.4, 1.13, 1.05, 0.9])}
    assert assess({k: v for k, v in falling.items() if k[0] < 1})["level"] == "ok"  # one point: no trend yet
    assert assess({k: v for k, v in falling.items() if k[0] < 3})["level"] == "ok"  # 1.05 below all before
    assert assess(falling)["level"] == "ok"
    for values in ([0.8, 1.1, 1.3], [3.1, 3.5, 3.2], [0.9, 1.2]):  # rising, a plateau above 1, up from below 1
        assert assess({(step, "fvu"): fvu for step, fvu in enumerate(values)})["level"] == "diverged", values


def test_one_chart_says_the_loss_when_it_is_the_fvu_and_each_sae_is_judged_on_its_own_auxk(ws):
    job = sk.train(toy_store(), "toy", sk.SAEConfig(arch="topk", d_sae=32, k=2), quick(), background=False,
                   progress=False)
    widget = JobWidget(job, poller=Poller())
    steps = range(1, 6)
    fvu = [[s, 1 / s] for s in steps]
    titles = lambda: [t.split("</div>")[0].removesuffix(" (log)") for t in widget.snapshot_html().split("font-weight:600'>")[1:]]  # noqa: E731
    # a TopK SAE: its loss is its FVU but where AuxK adds to it; its L0 is k throughout
    widget.metrics = {"loss": [[s, v + (0.1 if s == 3 else 0)] for s, v in fvu], "fvu": fvu,
                      "auxk": [[s, 0.1 if s == 3 else 0.0] for s in steps], "l0": [[s, 2.0] for s in steps]}
    assert titles() == ["FVU (the loss)"]
    # a sweep: TopK with AuxK on every step beside a ReLU whose loss adds its L1 penalty: the ReLU keeps its chart
    widget.metrics = {"sae0/loss": [[s, v + 0.1] for s, v in fvu], "sae0/fvu": fvu,
                      "sae0/auxk": [[s, 0.1] for s in steps],
                      "sae1/loss": [[s, v + 0.1] for s, v in fvu], "sae1/fvu": fvu,
                      "sae1/l0": [[s, 10.0 - s] for s in steps]}
    assert titles() == ["loss", "fvu", "l0"]


def test_in_a_kernel_the_live_view_and_its_snapshot_are_two_outputs_and_elsewhere_the_summary_once(ws, monkeypatch):
    import IPython.display

    from saekit.widgets import _base

    shown = []
    monkeypatch.setattr(IPython.display, "display",
                        lambda data, **options: shown.append((data, options)) or options.get("display_id") and object())
    job = sk.train(toy_store(), "toy", sk.SAEConfig(arch="topk", d_sae=32, k=2), quick(), background=False,
                   progress=False)
    widget = JobWidget(job, poller=Poller())
    widget._ipython_display_()  # terminal IPython: no view to draw
    assert [set(data) for data, _ in shown] == [{"text/html", "text/plain"}] and job.id in shown[0][0]["text/plain"]
    shown.clear()
    monkeypatch.setattr(_base, "in_kernel", lambda: True)
    widget._ipython_display_()
    (view, view_options), (snapshot, snapshot_options) = shown
    assert "application/vnd.jupyter.widget-view+json" in view and view["text/plain"] == ""
    assert view_options["display_id"] and snapshot_options["display_id"]
    assert f"class='saekit-snapshot' data-saekit-key='{widget.snapshot_key}'" in snapshot["text/html"]
    assert len(widget.snapshot_key) == 16 and "completed" in snapshot["text/plain"]
