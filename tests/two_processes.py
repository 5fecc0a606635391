"""The CLI on two CPU processes under torchrun (gloo): the tests of data-parallel training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun_cli(*args: str, timeout: float = 300) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `torchrun --nproc_per_node 2 -m agent.cli ARGS`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "agent.cli",
           *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too: a hung rendezvous must not outlive the test
        raise
    return proc.returncode, out, err
