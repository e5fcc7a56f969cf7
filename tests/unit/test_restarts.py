"""How long vipd and lbproxy wait before trying again (VIP adds, the netlink monitor, the metrics
listener, proxy workers), and how they say why a child ended."""
from lbproxy.restarts import Backoff, describe_exit


def test_delays_double_to_the_most_and_start_over_after_a_stable_run() -> None:
    backoff = Backoff(first=1.0, most=30.0)
    assert [backoff.after_run(0.1, stable=60.0) for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.after_run(59.9, stable=60.0) == 30.0      # up less than `stable`: still dying too often
    assert backoff.after_run(60.0, stable=60.0) == 1.0
    assert backoff.after_run(0.0, stable=60.0) == 2.0


def test_reset_starts_over_from_the_first_delay() -> None:
    backoff = Backoff(first=0.5, most=10.0)
    assert [backoff.next() for _ in range(3)] == [0.5, 1.0, 2.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_exit_described_by_signal_name_or_status() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(1) == "exit status 1"
    assert describe_exit(-200) == "killed by signal 200"
    assert describe_exit(None) == "exit status unknown"
