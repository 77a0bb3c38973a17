"""The terminal of `gotrace top`: draws each snapshot full-screen with curses and reads the keys.

Keys: t, c, p, m, n choose the sort (time, calls/s, p99, max, name), space
pauses and resumes the display (tracing goes on), q quits. When tracing
ends on its own (the traced process exited, -d elapsed) the final counts
stay on the screen until q; Ctrl-C quits at once.
"""

from __future__ import annotations

import curses
import dataclasses
from collections.abc import Iterable

from gotrace.output.events import Skipped
from gotrace.output.top import SORTS, TopSnapshot, render_top

QUIT_KEYS = (ord("q"), ord("Q"))
PAUSE_KEY = ord(" ")


class TopScreen:
    """Consumes what `gotrace top` yields and keeps the screen up to date."""

    def __init__(self, stdscr) -> None:
        self.stdscr = stdscr
        self.sort = "t"
        self.paused = False
        self.snapshot: TopSnapshot | None = None
        self.note: str | None = None

    def keys(self) -> bool:
        """Handle the keys pressed so far; False when the user asked to quit."""
        while True:
            key = self.stdscr.getch()
            if key == -1:
                return True
            if key in QUIT_KEYS:
                return False
            if key == PAUSE_KEY:
                self.paused = not self.paused
            elif 0 <= key < 256 and chr(key).lower() in SORTS:
                self.sort = chr(key).lower()
            elif key == curses.KEY_RESIZE:
                pass
            else:
                continue
            self.draw()

    def draw(self) -> None:
        height, width = self.stdscr.getmaxyx()
        snapshot = self.snapshot
        if snapshot is not None and self.note and not snapshot.note:
            snapshot = dataclasses.replace(snapshot, note=self.note)
        lines = render_top(snapshot, width, height, self.sort, self.paused)
        self.stdscr.erase()
        for y, line in enumerate(lines):
            try:  # the bottom-right cell cannot be written without scrolling: curses raises, the text is there
                self.stdscr.addstr(y, 0, line[: width - 1] if y == height - 1 else line)
            except curses.error:
                pass
        self.stdscr.refresh()

    def run(self, events: Iterable[object]) -> None:
        self.stdscr.nodelay(True)
        self.draw()
        for event in events:
            if isinstance(event, Skipped):
                self.note = event.text()
            elif isinstance(event, TopSnapshot):
                if not self.paused or event.ended:
                    self.snapshot = event
                    self.paused = False if event.ended else self.paused
                    self.draw()
                if event.ended:
                    if event.ended != "signal":
                        self.wait_for_quit()
                    return
            if not self.keys():
                return

    def wait_for_quit(self) -> None:
        self.stdscr.nodelay(False)
        while True:
            key = self.stdscr.getch()
            if key in QUIT_KEYS:
                return
            if 0 <= key < 256 and chr(key).lower() in SORTS:
                self.sort = chr(key).lower()
                self.draw()


def run_top(events: Iterable[object]) -> None:
    """Run the screen over `events` in the terminal (restored on the way out, also on an error)."""
    def main(stdscr) -> None:
        try:
            curses.curs_set(0)
        except curses.error:
            pass
        TopScreen(stdscr).run(events)

    try:
        curses.wrapper(main)
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # a generator: leaving its `with` detaches the probes
