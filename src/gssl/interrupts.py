"""Stopping gssl with a signal as with Ctrl-C. `kill` (SIGTERM), a closed terminal (SIGHUP) and Ctrl-C
(SIGINT) all raise KeyboardInterrupt, so every command unwinds the same way: a training run releases
its lock with its last epoch's checkpoint intact, a sweep or a campaign stops the runs it started (in
sessions of their own, which no signal to it reaches), and the CLI exits 130 saying how to go on."""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

# Signal names that arrived inside `deferred()`, raised as it ends; None outside it.
_held: list[str] | None = None


def _interrupt(signum, frame):
    name = signal.Signals(signum).name
    if _held is not None:
        _held.append(name)
        return
    raise KeyboardInterrupt(name)


@contextlib.contextmanager
def interrupted_by_signals():
    """SIGTERM, SIGHUP and SIGINT raise KeyboardInterrupt(signal name) inside the block. A signal already
    ignored stays ignored (`nohup gssl sweep ...` outlives its terminal). Outside the main thread, where
    Python cannot set handlers, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred():
    """Hold back an interrupt until the block has run, then raise it: a sweep starts a run and records it
    in one step, so that a signal cannot arrive between the two and leave the run unsupervised."""
    global _held
    if _held is not None:  # nested: the outer block raises
        yield
        return
    _held = []
    try:
        yield
    finally:
        held, _held = _held, None
        if held:
            raise KeyboardInterrupt(held[0])
