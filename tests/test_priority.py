"""gotrace's analysis of the binary runs at a lower priority than the traced service (gotrace.trace.priority),
and the thread gets its own priority back before the probes are registered. Real setpriority calls on the
test's own thread; nothing traced."""

from __future__ import annotations

import pytest

import gotrace.commands.count as count_command
import gotrace.commands.latency as latency_command
from gotrace.commands.count import CountRequest, count
from gotrace.commands.latency import LatencyRequest, latency
from gotrace.trace.priority import ANALYSIS_NICE, set_thread_nice, thread_nice, yielding
from test_latency_cli import WORK, service


@pytest.fixture
def own_nice():
    own = thread_nice()
    assert own < ANALYSIS_NICE, "the test needs a thread above ANALYSIS_NICE"
    yield own
    set_thread_nice(own)


def test_yielding_lowers_the_thread_and_gives_its_own_back(own_nice):
    with yielding():
        assert thread_nice() == ANALYSIS_NICE
    assert thread_nice() == own_nice
    with pytest.raises(RuntimeError), yielding():
        raise RuntimeError("the analysis failed")
    assert thread_nice() == own_nice
    with yielding(own_nice - 1):  # never raises the thread's priority
        assert thread_nice() == own_nice


@pytest.mark.parametrize("module, request_for", [
    (latency_command, lambda binary: (latency, LatencyRequest((str(binary), WORK), print_bpf=True), "plan_latency")),
    (count_command, lambda binary: (count, CountRequest((str(binary), WORK), print_bpf=True), "plan_count")),
])
def test_commands_read_the_binary_at_the_analysis_priority(monkeypatch, own_nice, module, request_for):
    command, request, planner = request_for(service())
    seen = []
    plan = getattr(module, planner)

    def watched(*args, **kwargs):
        seen.append(thread_nice())
        return plan(*args, **kwargs)

    monkeypatch.setattr(module, planner, watched)
    (source,) = command(request)
    assert seen == [ANALYSIS_NICE] and thread_nice() == own_nice and source.text


def test_a_command_gotrace_starts_is_read_at_gotraces_own_priority(own_nice):
    """-c: the command is held before exec until the probes are in place; nothing runs to yield to."""
    from gotrace.commands.target import reading_priority
    from gotrace.trace.session import Target

    with reading_priority(Target("/bin/true", "/bin/true", command=["/bin/true"])):
        assert thread_nice() == own_nice
    with reading_priority(Target("/bin/true", "/bin/true", pid=1)):
        assert thread_nice() == ANALYSIS_NICE
    assert thread_nice() == own_nice
