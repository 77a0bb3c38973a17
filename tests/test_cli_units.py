"""Unit tests of small CLI helpers that need no binary and no BPF."""

from gotrace import cli


def test_slow_detach_warning_on_perf_links_only(capsys):
    cli._warn_slow_detach("perf_link", 3000)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "detaching 3000 probe sites will take about 261 s" in err

    cli._warn_slow_detach("uprobe_multi", 3000)
    cli._warn_slow_detach("perf_link", cli.SLOW_DETACH_WARN_SITES - 1)
    assert capsys.readouterr().err == ""
