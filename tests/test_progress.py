"""Progress lines of long work: each piece reported as it finishes, with the time left, on stderr."""

import time
from concurrent.futures import ThreadPoolExecutor

from pipeline.progress import Progress, duration, finishing_order


def test_results_come_in_the_order_the_jobs_finish_not_the_order_they_were_handed_out():
    def sleep_then_say(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    with ThreadPoolExecutor(3) as pool:
        assert list(finishing_order(pool, sleep_then_say, [0.6, 0.0, 0.3])) == [0.0, 0.3, 0.6]


def test_each_line_says_what_is_done_and_scales_the_time_so_far_to_what_is_left(capsys):
    now = [100.0]
    progress = Progress("evaluate", 4, "runs", clock=lambda: now[0])
    now[0] = 130.0
    progress.done(1, "real seed 0")
    now[0] = 160.0
    progress.done(1, "classical seed 0")
    progress.done(2, "the rest")
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays for the figures
    assert captured.err.splitlines() == [
        "evaluate: 1 of 4 runs: real seed 0; about 1 min 30 s left",
        "evaluate: 2 of 4 runs: classical seed 0; about 1 min 00 s left",
        "evaluate: 4 of 4 runs: the rest; about 0 s left",
    ]
    assert duration(59.6) == "1 min 00 s" and duration(7) == "7 s"
