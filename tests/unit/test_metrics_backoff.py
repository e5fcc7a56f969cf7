"""When the daemon restarts a metrics listener that died, and how it says why."""
from vipd.control.metrics import RestartBackoff, describe_exit


def test_delays_double_to_the_most_and_start_over_after_a_stable_run() -> None:
    backoff = RestartBackoff(first=1.0, most=30.0, stable=60.0)
    assert [backoff.delay(0.1) for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.delay(59.9) == 30.0                 # up less than `stable`: still dying too often
    assert backoff.delay(60.0) == 1.0
    assert backoff.delay(0.0) == 2.0


def test_exit_described_by_signal_name_or_status() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(1) == "exit status 1"
    assert describe_exit(-200) == "killed by signal 200"
    assert describe_exit(None) == "exit status unknown"
