"""Progress wherever people wait: one updating line on a terminal, newline-ended lines in a file (nohup,
SLURM, CI), and an end line with the total time and the latest metrics."""

import io
import time

import saekit as sk
from saekit.jobs import submit
from saekit.jobs.events import read_all
from saekit.jobs.lifecycle import events_path
from saekit.jobs.textbar import TextProgress, render_log


def _replay(ws, job_id, stream, tty):
    bar = TextProgress(job_id, stream=stream, tty=tty, interval=0.0)
    for record in read_all(events_path(ws, job_id)):
        bar.update(record)
    return stream.getvalue()


def test_lines_in_a_file_and_one_line_on_a_terminal(ws):
    job = submit("count", {"n": 40}, background=False, progress=False)
    logged = _replay(ws, job.id, io.StringIO(), tty=False)
    lines = logged.splitlines()
    assert "\r" not in logged and len(lines) >= 2 and all(line.startswith(job.id) for line in lines)
    assert "completed in" in lines[-1] and "value=39" in lines[-1]  # the total time and the latest metric
    assert "40/40" in logged and "steps" in logged
    terminal = _replay(ws, job.id, io.StringIO(), tty=True)
    assert terminal.count("\r") >= 1 and terminal.rstrip("\n").count("\n") == 1  # one line, then the end line


def test_the_rendered_line_has_rate_elapsed_and_metrics(ws):
    job = submit("count", {"n": 30, "delay": 0.01}, background=False, progress=False)
    line = render_log(read_all(events_path(ws, job.id)), width=100)
    assert "100%" in line and "30/30" in line and "steps/s" in line and "value=" in line


def test_a_later_phase_that_goes_on_counting_shows_its_own_rate():
    """A job whose phases share one count (an evaluation in % of the whole): at a phase's first record the rate
    is unknown, not the whole count over that phase's first instant (it showed thousands of %/s)."""
    t = time.time() - 60
    records = [{"t": "start", "time": t},
               {"t": "progress", "done": 0, "total": 100, "unit": "%", "phase": "core", "time": t},
               {"t": "progress", "done": 40, "total": 100, "unit": "%", "phase": "core", "time": t + 40},
               {"t": "progress", "done": 40, "total": 100, "unit": "%", "phase": "probing", "time": t + 40.02}]
    line = render_log(records, width=100)
    assert "40/100" in line and "? %/s" in line
    records.append({"t": "progress", "done": 50, "total": 100, "unit": "%", "phase": "probing", "time": t + 60.02})
    assert "2.00s/ %" in render_log(records, width=100)  # 10 % in 20 s of this phase


def test_wait_writes_lines_when_output_is_a_file(ws, capsys):
    job = submit("count", {"n": 20, "delay": 0.05})
    job.wait(timeout=120)  # not a terminal: newline-ended lines, the last one says how it ended
    err = capsys.readouterr().err
    assert job.id in err and "completed in" in err and "\r" not in err


def test_listings_are_sequences(ws, docs_file, tiny_lm):
    jobs = [submit("count", {"n": 2, "tag": i}, background=False, progress=False) for i in range(3)]
    table = sk.jobs()
    assert [j.id for j in table] == [j.id for j in reversed(jobs)]  # newest first, Job handles
    assert isinstance(table[0], sk.Job) and [j.id for j in table[:2]] == [jobs[2].id, jobs[1].id]
    assert table[jobs[0].id].status == "completed" and len(table.to_pandas()) == 3
    tokens = sk.tokenize(sk.load_corpus(docs_file), tiny_lm, context_length=32, background=False, progress=False).result()
    assert [s.id for s in sk.token_stores()] == [tokens.id] and sk.token_stores()[0].n_sequences == tokens.n_sequences
    store = sk.ActivationStore.from_array(__import__("torch").randn(100, 4), "x")
    assert [s.id for s in sk.activation_stores()] == [store.id]
