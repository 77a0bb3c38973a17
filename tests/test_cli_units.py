"""Unit tests of small command helpers that need no binary and no BPF."""

from gotrace.commands.tracing import SLOW_DETACH_WARN_SITES, slow_detach


def test_slow_detach_warning_on_perf_links_only():
    warning = slow_detach("perf_link", 3000)
    assert warning is not None
    text = warning.text()
    assert "\n" not in text
    assert "detaching 3000 probe sites will take about 261 s" in text

    assert slow_detach("uprobe_multi", 3000) is None
    assert slow_detach("perf_link", SLOW_DETACH_WARN_SITES - 1) is None
