"""fedattr.launch.processes: every process tagged with a run's tag, and its children, is ended."""

import os
import subprocess
import sys
import time

from fedattr.launch.processes import RUN_TAG, end_tagged_processes, tagged_pids


def test_tagged_processes_and_their_children_are_ended():
    tag = "test-" + str(os.getpid())
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], env={}); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, RUN_TAG: tag}, start_new_session=True)
    deadline = time.monotonic() + 10
    while len(tagged_pids(tag)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    found = end_tagged_processes(tag)
    assert parent.pid in found and len(found) == 2  # the child has no tag in its environment
    parent.wait(timeout=5)
    assert tagged_pids(tag) == []
