"""bench.CpuMeter: the CPU a burst cost each group of processes, children included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench import CpuMeter

# A parent that starts a child, lets it burn a fixed amount of work, then reaps it, each
# step on a line from the test: its output says where it is (no sleeps).
PARENT = r"""
import subprocess, sys
burn = "input(); sum(range(2 * 10**7)); print('burned', flush=True); input()"
c = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True)
print(c.pid, flush=True)
sys.stdin.readline()
c.stdin.write("go\n"); c.stdin.flush()
print(c.stdout.readline().strip(), flush=True)
sys.stdin.readline()
c.stdin.write("\n"); c.stdin.flush(); c.wait()
print("reaped", flush=True)
sys.stdin.readline()
"""


def test_a_child_counts_once_before_and_after_it_is_reaped() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdin is not None
    assert parent.stdout is not None

    def step() -> str:
        assert parent.stdin is not None
        assert parent.stdout is not None
        parent.stdin.write("\n")
        parent.stdin.flush()
        return parent.stdout.readline().strip()

    try:
        child = int(parent.stdout.readline())
        meter = CpuMeter({"p": [parent.pid], "none": []})
        assert step() == "burned"
        running = meter.read()
        assert running["none"] == 0.0
        assert running["p_children"] >= 0.04  # the burn, in the live child
        assert step() == "reaped"
        assert not Path(f"/proc/{child}").exists()  # gone
        reaped = meter.read()
        # Now in the parent's waited-for time, and counted once: nothing lost, nothing
        # twice (10 ms clock ticks per process either way).
        assert reaped.get("p_children", 0.0) == 0.0
        before = running["p"] + running["p_children"]
        after = reaped["p"]
        assert after >= before - 0.021
        assert after <= before + 0.1  # the child's exit and the parent's own work: small
    finally:
        parent.kill()
        parent.wait()


def test_a_root_counts_the_children_it_has_waited_for() -> None:
    meter = CpuMeter({"me": [os.getpid()]})
    done = subprocess.run(
        [sys.executable, "-c", "sum(range(2 * 10**7))"], check=True, capture_output=True
    )
    assert done.returncode == 0
    assert meter.read()["me"] >= 0.04  # the child's burn, added once it was waited for
