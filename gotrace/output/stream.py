"""Where and how each object a tracing command yields is written: reports and calls to stdout, the rest to stderr."""

from __future__ import annotations

import json

from gotrace.capture.values import Call
from gotrace.output.args import call_json, format_call
from gotrace.output.count import CountReport
from gotrace.output.events import BpfSource, Detached
from gotrace.output.latency import LatencyReport
from gotrace.output.slow import SlowCall


def render(event: object, *, as_json: bool, unit: str = "auto") -> list[tuple[bool, str]]:
    """[(True for stdout / False for stderr, the text with its line ends)] of one yielded object.

    A detachment by the cost guard is said on stderr, and with --json also
    as JSON Lines objects on stdout.
    """
    if isinstance(event, (LatencyReport, CountReport)):
        return [(True, json.dumps(event.json()) + "\n" if as_json else event.text(unit))]
    if isinstance(event, SlowCall):
        return [(True, json.dumps(event.json(), ensure_ascii=False) + "\n" if as_json else event.text(unit))]
    if isinstance(event, Call):
        return [(True, (json.dumps(call_json(event), ensure_ascii=False) if as_json else format_call(event)) + "\n")]
    if isinstance(event, BpfSource):
        return [(True, event.text)]
    out = [(False, event.text() + "\n")]
    if as_json and isinstance(event, Detached):
        out.append((True, "".join(json.dumps(line) + "\n" for line in event.json_lines())))
    return out
