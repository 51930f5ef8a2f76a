"""Runs a script's named checks in order and reports each one.

A failed check does not stop the ones after it: each prints `ok <name>` or
`FAILED <name>` with its error (the node's reply for a refused command), and
the script exits 1 if any failed, so one run tells everything that is missing.
"""

import os
import sys
import time
import traceback

THIS = os.path.abspath(__file__)
HERE = os.path.dirname(THIS)


def wait_for(what, condition, within=15.0):
    """Polls `condition` until it holds; fails after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run(title, checks):
    """Runs `checks`, a list of (name, function), and exits 0 only if all passed."""
    failed = []
    for name, check in checks:
        started = time.monotonic()
        try:
            check()
        except Exception as e:  # noqa: BLE001 - every failure is reported the same way
            failed.append(name)
            print(f"FAILED {name}: {type(e).__name__}: {e}", flush=True)
            # Where in the scripts it failed, without the libraries' frames.
            for frame in traceback.extract_tb(e.__traceback__):
                if frame.filename.startswith(HERE) and frame.filename != THIS:
                    print(f"         at {os.path.basename(frame.filename)}:{frame.lineno}: {frame.line}")
        else:
            print(f"ok     {name} ({time.monotonic() - started:.1f}s)", flush=True)
    print(f"{title}: {len(checks) - len(failed)} of {len(checks)} checks passed", flush=True)
    sys.exit(1 if failed else 0)
