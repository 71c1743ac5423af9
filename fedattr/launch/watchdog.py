"""A watchdog tied to the launching CLI's life: when the CLI dies, it ends the run's process family.

``python -m fedattr.launch.watchdog --parent PID --tag TAG`` is started by the CLI in a session of its own
(so Ctrl-C, a closed terminal or ``kill`` of the CLI's process group do not reach it). It polls
its parent: once the CLI is gone, whatever ended it (SIGKILL included), the watchdog has been
re-parented, and it ends every process carrying the run's tag (SuperLink, SuperExec, simulation,
Ray, ``flwr run``). It inherits the results directory's lock, so a re-run into that directory
waits out the clean-up instead of racing an orphan. A normal end of the CLI stops it first.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def main(argv: list[str] | None = None) -> int:
    """Watch the parent; return 0 when it ended normally (SIGTERM) or after cleaning up."""
    parser = argparse.ArgumentParser(prog="python -m fedattr.launch.watchdog")
    parser.add_argument("--parent", type=int, required=True, help="PID of the launcher to watch")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--poll-s", type=float, default=0.5)
    args = parser.parse_args(argv)
    # The parent's PID comes from the parent: the launcher may die before this process has started.
    parent = args.parent
    # A normal end of the CLI: it has ended the family itself.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while os.getppid() == parent:
        time.sleep(args.poll_s)
    from fedattr.launch.processes import end_tagged_processes

    found = end_tagged_processes(args.tag)
    print(f"fedattr watchdog: launcher {parent} is gone; ended {len(found)} process(es) of run {args.tag}",
          file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
