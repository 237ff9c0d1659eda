"""SIGTERM / SIGINT as a request to checkpoint and stop, remembered from process start.

`install()` is idempotent; the CLI calls it before it imports JAX, the trainer calls it again
(for runs started from Python). A signal that arrives while the run is still compiling or
restoring is not lost: the loop sees `requested()` at its first step and stops cleanly.
"""

from __future__ import annotations

import signal

_HANDLED = (signal.SIGTERM, signal.SIGINT)
_requested: list[str] = []
_previous: dict = {}


def _handle(signum, frame) -> None:
    del frame
    if _requested and signum == signal.SIGINT:  # a second Ctrl-C: stop now
        raise KeyboardInterrupt
    _requested.append(signal.Signals(signum).name)


def installed() -> bool:
    return bool(_previous)


def install() -> None:
    """Handles SIGTERM and SIGINT by remembering them (until `uninstall`)."""
    for sig in _HANDLED:
        if sig not in _previous:
            _previous[sig] = signal.signal(sig, _handle)


def uninstall() -> None:
    """Restores the previous handlers and forgets any request."""
    for sig, handler in _previous.items():
        signal.signal(sig, handler)
    _previous.clear()
    _requested.clear()


def requested() -> str | None:
    """The name of the first signal received since `install`, or None."""
    return _requested[0] if _requested else None
