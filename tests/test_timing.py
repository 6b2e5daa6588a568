"""`PhaseTimer`: phases are exclusive (nested ones and compilation are set apart) and add up.

A fake clock makes the accounting exact; one test uses a real jit to check that JAX's compile
events reach the timer.
"""

import jax
import jax.numpy as jnp
import pytest

from jaxsent.training import timing
from jaxsent.training.timing import COMPILE, COMPILE_EVENTS, PhaseTimer


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def advance(seconds):
        now[0] += seconds

    return advance


def compile_for(seconds):
    jax.monitoring.record_event_duration_secs(COMPILE_EVENTS[-1], seconds)


def test_nested_phases_and_compilation_are_set_apart(clock):
    with PhaseTimer() as timer:
        clock(1.0)  # outside every phase
        with timer.phase("train"):
            clock(10.0)
            compile_for(4.0)  # the step's compile, inside train
            clock(4.0)
            with timer.phase("validate"):
                clock(2.0)
                compile_for(1.5)  # the eval step's compile, inside validate
                clock(1.5)
            clock(3.0)
        with timer.phase("train"):  # a phase opened twice adds up
            clock(5.0)
    assert timer.as_dict() == {
        "train": 18.0,
        COMPILE: 5.5,
        "validate": 2.0,
        "other": 1.0,
        "total": 26.5,
    }
    assert timer.summary() == (
        "time (s): train 18.0, validate 2.0, compile 5.5, other 1.0; total 26.5"
    )


def test_compile_events_count_only_while_the_timer_is_open(clock):
    timer = PhaseTimer()
    with timer, timer.phase("a"):
        compile_for(2.0)
        clock(2.0)
    compile_for(7.0)  # the listener is gone
    with timer.phase("b"):
        clock(1.0)
    assert timer.seconds == {"a": 0.0, COMPILE: 2.0, "b": 1.0}


def test_a_real_jit_compile_is_counted():
    with PhaseTimer() as timer, timer.phase("run"):
        jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((17, 13))).block_until_ready()
    assert timer.seconds[COMPILE] > 0


def test_compiles_on_another_thread_overlap_and_only_waiting_counts(clock):
    import threading

    from jaxsent.training.timing import COMPILE_AHEAD, COMPILE_WAIT_EVENT

    with PhaseTimer() as timer, timer.phase("train"):
        background = threading.Thread(target=compile_for, args=(30.0,))
        background.start()
        background.join()
        clock(40.0)
        jax.monitoring.record_event_duration_secs(COMPILE_WAIT_EVENT, 3.0)  # a step waited
    phases = timer.as_dict()
    assert (phases["train"], phases[COMPILE], phases[COMPILE_AHEAD]) == (37.0, 3.0, 30.0)
    assert phases["total"] == 40.0  # the background compile overlapped: not added
    assert timer.summary().endswith(
        "total 40.0 (and 30.0 s of compiling on a background thread, beside the steps)"
    )
