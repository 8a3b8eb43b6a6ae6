"""tests/waiting.py's wait_until: returns the first accepted value, fails naming what it waited for and the last
value seen, treats only the `ignore`d exceptions as "not yet"."""

from __future__ import annotations

import itertools
import time

import pytest

from .waiting import WaitTimeout, wait_until


def test_returns_the_first_accepted_value_after_polling():
    counter = itertools.count()
    assert wait_until(lambda: next(counter), 5, every=0.001, accept=lambda n: n >= 3) == 3
    assert wait_until(lambda: "ready", 5) == "ready"  # accepted at once: no sleep


def test_times_out_naming_what_and_the_last_value_and_the_context():
    counter = itertools.count()
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        wait_until(lambda: {"status": "queued", "polls": next(counter)}, 0.3, every=0.05,
                   accept=lambda job: job["status"] == "done", what="job 7 done", context=lambda: "log: worker idle")
    assert 0.3 <= time.monotonic() - started < 2
    message = str(caught.value)
    assert message.startswith("gave up waiting for job 7 done after 0.3 s (timeout 0.3 s); last seen: {'status': 'queued'")
    assert message.endswith("\nlog: worker idle")
    assert isinstance(caught.value, TimeoutError)  # callers that caught TimeoutError still do


def test_the_check_runs_once_more_at_the_deadline():
    calls = []
    with pytest.raises(WaitTimeout):
        wait_until(lambda: calls.append(time.monotonic()), 0.2, every=10)
    assert len(calls) == 2 and calls[1] - calls[0] == pytest.approx(0.2, abs=0.15)


def test_without_what_the_message_names_the_check():
    def model_loaded() -> bool:
        return False

    with pytest.raises(WaitTimeout, match=r"waiting for .*model_loaded after .* last seen: False"):
        wait_until(model_loaded, 0.05, every=0.01)


def test_ignored_errors_mean_not_yet_and_are_reported():
    attempts = itertools.count()

    def flaky() -> str:
        if next(attempts) < 2:
            raise ConnectionError("refused")
        return "up"

    assert wait_until(flaky, 5, every=0.001, ignore=ConnectionError) == "up"

    def down() -> str:
        raise ConnectionError("refused")

    with pytest.raises(WaitTimeout, match=r"last seen: ConnectionError\('refused'\)"):
        wait_until(down, 0.05, every=0.01, ignore=ConnectionError)


def test_other_errors_end_the_wait_at_once():
    def exited() -> str:
        raise RuntimeError("server exited")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="server exited"):
        wait_until(exited, 30, ignore=ConnectionError)
    assert time.monotonic() - started < 1


def test_a_long_last_value_is_cut():
    with pytest.raises(WaitTimeout) as caught:
        wait_until(lambda: "x" * 10_000, 0.01, accept=lambda v: False)
    assert len(str(caught.value)) < 2300 and "(10002 characters)" in str(caught.value)
