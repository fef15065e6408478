"""Progress of long work: a bar where a person watches, lines in a log otherwise."""

import io

from pyrovae.progress import LogProgress, _duration, progress


def test_log_lines_say_what_is_done_and_estimate_what_is_left():
    stream = io.StringIO()
    counter = LogProgress(100, "decoding images", "image", every=0.0, stream=stream)
    counter.update(25)
    line = stream.getvalue().strip()
    assert line.startswith("decoding images: 25/100 images (25%), ") and "image/s, about" in line


def test_no_line_before_the_interval_and_none_when_disabled(capsys):
    stream = io.StringIO()
    counter = LogProgress(10, "x", "step", every=3600, stream=stream)
    counter.update(10)
    assert stream.getvalue() == ""
    with progress(10, "x", enabled=False) as quiet:
        quiet.update(10)
    assert capsys.readouterr().err == ""


def test_a_counter_started_part_way_estimates_from_its_own_work():
    counter = LogProgress(10, "epoch 2", "batch", initial=5)
    assert counter.line().startswith("epoch 2: 5/10 batches (50%), 0 batch/s")


def test_durations_read_as_people_write_them():
    assert [_duration(s) for s in (5, 75, 3725)] == ["5 s", "1 min 15 s", "1 h 02 min"]
