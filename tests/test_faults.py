"""The fault points' pauses (studio/trainer/faults.py), in a small process with a stop
handler like the trainer's: `pause` holds through a stop signal until the test deletes the
marker; `pause-until-stop` ends at the signal, which the process's own handler still gets."""
import signal
import subprocess
import sys

import pytest

from tests.trainer_helpers import ROOT, env
from tests.waiting import wait_for

CHILD = """
import os, signal, sys
from studio.trainer import faults

def stop(signum, frame):
    print("handled", signal.Signals(signum).name, flush=True)

signal.signal(signal.SIGTERM, stop)
faults.point("after-saved", 2)
print("returned", os.path.exists(os.environ["STUDIO_FAULT_MARKER"]),
      signal.getsignal(signal.SIGTERM) is stop, flush=True)
"""


def paused_child(tmp_path, action: str):
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE,
                             env=env(STUDIO_FAULT_AT="after-saved:2", STUDIO_FAULT_ACTION=action,
                                     STUDIO_FAULT_MARKER=str(marker)))
    return child, marker


@pytest.mark.parametrize("action", ["pause", "pause-until-stop"])
def test_a_stop_signal_reaches_the_handler_and_ends_only_a_pause_until_stop(tmp_path, action):
    child, marker = paused_child(tmp_path, action)
    try:
        wait_for(lambda: marker.exists() or child.poll() is not None, timeout=60,
                 what="the child at its fault point", interval=0.02)
        assert child.poll() is None, "the child ended before its fault point"
        child.send_signal(signal.SIGTERM)
        assert child.stdout.readline().split() == ["handled", "SIGTERM"]
        if action == "pause":
            marker.unlink()  # a plain pause ends here, and only here
        lines = child.stdout.read().split()
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
    # Returned with the marker still there only if the signal ended the pause; the process's
    # own handler is back in place either way.
    assert lines == ["returned", str(action == "pause-until-stop"), "True"]
