"""Bounded polling and forgiving file reads for the tests."""

import time


def wait_until(pred, timeout=10.0, step=0.05):
    """Poll `pred` until it is true or `timeout` seconds have passed; return
    its last value (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step)


def read(path):
    """A text file's contents, or None when it does not exist."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None
