"""Where and how each object a tracing command yields is written: reports and calls to stdout, the rest to stderr."""

from __future__ import annotations

import json

from gotrace.capture.values import Call
from gotrace.output.args import call_json, format_call
from gotrace.output.events import BpfSource
from gotrace.output.latency import LatencyReport
from gotrace.output.slow import SlowCall


def render(event: object, *, as_json: bool, unit: str = "auto") -> tuple[bool, str]:
    """(True for stdout / False for stderr, the text with its line ends) of one yielded object."""
    if isinstance(event, LatencyReport):
        return True, json.dumps(event.json()) + "\n" if as_json else event.text(unit)
    if isinstance(event, SlowCall):
        return True, json.dumps(event.json(), ensure_ascii=False) + "\n" if as_json else event.text(unit)
    if isinstance(event, Call):
        return True, (json.dumps(call_json(event), ensure_ascii=False) if as_json else format_call(event)) + "\n"
    if isinstance(event, BpfSource):
        return True, event.text
    return False, event.text() + "\n"
