"""Live progress of a run: one line per finished round, job counts and an ETA.

The launchers call a progress callback with events (dicts); :class:`ProgressView` turns them into
output. On a terminal it shows rich bars with the round lines printed above them; otherwise
(piped, redirected to a file, under a supervisor) it writes the same round lines as plain text,
each flushed as it comes, so that ``fedattr run ... 2>&1 | tee run.log`` shows every round live.

Events: ``{"event": "start", "jobs_total", "rounds_total", "log"}``;
``{"event": "round", "job", "arm", "seed", "round", "rounds", "jobs_done", "jobs_total"}`` with,
when the round record holds them, ``accuracy``, ``attacker``, ``evaluator``, ``attacker_value``,
``attacker_rank``, ``clients`` and ``seconds``; ``{"event": "job", "job", "status", "jobs_done",
"jobs_total"}``; ``{"event": "jobs", "jobs_done", "jobs_total"}``; ``{"event": "log",
"message"}``. Other events are ignored, so launchers may add more.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn)

__all__ = ["ProgressView", "round_line", "format_duration"]


def format_duration(seconds: float) -> str:
    """``1h02m03s``, ``2m05s`` or ``7s``."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _num(x: Any, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def round_line(event: Mapping[str, Any]) -> str:
    """One finished round as one line: job, round, test accuracy, the attacker's value and rank, seconds."""
    job = event.get("job") or f"{event.get('arm')}__s{event.get('seed')}"
    parts = [f"{job} round {event.get('round')}/{event.get('rounds')}",
             f"acc {_num(event.get('accuracy'), '.4f')}"]
    if event.get("attacker") is not None:
        rank = event.get("attacker_rank")
        of = f"/{event['clients']}" if rank is not None and event.get("clients") else ""
        parts.append(f"attacker {event['attacker']} {event.get('evaluator', '')} "
                     f"{_num(event.get('attacker_value'), '+.4f')} rank {rank if rank is not None else '-'}{of}")
    parts.append(f"{_num(event.get('seconds'), '.1f')} s")
    return "  ".join(parts)


class ProgressView:
    """Show a launcher's progress events on ``console``.

    Parameters: ``console`` (where to write), ``plain`` (plain lines instead of rich bars; by
    default when ``console`` is not a terminal), ``clock`` (seconds, for the ETA). Attributes
    after events: ``rounds_done_``, ``rounds_total_``, ``eta_s_`` (None until a round is done).
    """

    def __init__(self, console: Console, plain: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.console = console
        self.plain = (not console.is_terminal) if plain is None else plain
        self.clock = clock
        self.rounds_done_ = 0
        self.rounds_total_: int | None = None
        self.eta_s_: float | None = None
        self._jobs_done = 0
        self._first_round_at: float | None = None
        self._progress: Progress | None = None
        if not self.plain:
            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), console=console)
            self._jobs = self._progress.add_task("jobs", total=None)
            self._rounds = self._progress.add_task("rounds", total=None, visible=False)

    def __enter__(self) -> ProgressView:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def line(self, text: str) -> None:
        """Write one line now (plain: flushed at once, so that a pipe sees it as it happens)."""
        if self._progress is not None:
            self._progress.console.print(escape(text))
            return
        self.console.file.write(text + "\n")
        self.console.file.flush()

    def _eta(self, seconds: Any) -> float | None:
        """Seconds left: remaining rounds times the wall time per round since the first one finished.

        Start-up (Flower, Ray, data) comes before the first round and is left out; after one round
        only that round's own time (``seconds``) is known.
        """
        if self.rounds_total_ is None:
            return None
        now = self.clock()
        if self._first_round_at is None:
            self._first_round_at = now
        if self.rounds_done_ > 1:
            per_round = (now - self._first_round_at) / (self.rounds_done_ - 1)
        elif isinstance(seconds, (int, float)):
            per_round = float(seconds)
        else:
            return None
        return max(0, self.rounds_total_ - self.rounds_done_) * per_round

    def __call__(self, event: Mapping[str, Any]) -> None:
        """Show one progress event."""
        kind = event.get("event")
        if kind == "log":
            self.line(str(event.get("message", "")))
            return
        if kind == "start":
            self.rounds_total_ = event.get("rounds_total")
            if event.get("log"):
                self.line(f"log: {event['log']}")
        if "jobs_done" in event:
            # never move the jobs count backwards: a round event may carry a stale jobs_done
            self._jobs_done = max(self._jobs_done, int(event.get("jobs_done") or 0))
        if kind == "round" and event.get("round"):
            self.rounds_done_ += 1
            self.eta_s_ = self._eta(event.get("seconds"))
            eta = f"  ETA {format_duration(self.eta_s_)}" if self.eta_s_ is not None else ""
            jobs = f"  jobs {self._jobs_done}/{event['jobs_total']}" if event.get("jobs_total") else ""
            self.line(round_line(event) + jobs + eta)
        if kind == "job" and event.get("status") not in (None, "finished"):
            self.line(f"{event.get('job')} {event.get('status')}: {event.get('reason') or 'see the failures table'}")
        if self._progress is not None:
            self._update_bars(event)

    def _update_bars(self, event: Mapping[str, Any]) -> None:
        assert self._progress is not None
        if "jobs_total" in event:
            where = (f"point {int(event['point']) + 1}/{event['points']} "
                     if "point" in event and "points" in event else "")
            self._progress.update(self._jobs, description=f"{where}jobs", total=event.get("jobs_total"),
                                  completed=self._jobs_done)
        if event.get("event") == "round":
            self._progress.update(self._rounds, visible=True,
                                  description=f"{event.get('arm')} seed {event.get('seed')} rounds",
                                  total=event.get("rounds"), completed=event.get("round", 0))
