"""``fedhpc watch OUT``: a running (or finished) job in the terminal.

It follows ``OUT/metrics.jsonl`` as it grows and shows the rounds done of the
configured ones, the accuracy curve, the last rounds' clients reported / late
/ failed, traffic, round time and the framework's overhead, and the status of
each client in the last rounds from ``OUT/run.h5``. The run record is open
for writing while the job runs (serial HDF5, no SWMR): it is read only when
it can be opened, without taking HDF5's file lock, and a read that fails
(the writer was mid-flush) keeps the previous picture. The view is drawn
with ``rich``; it ends by itself when the run has done all its rounds (or
with ``--once`` after one picture) and cleanly on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPARK = "▁▂▃▄▅▆▇█"
CLIENT_MARK = {0: ("·", "dim"), 1: ("●", "green"), 2: ("◌", "yellow"), 3: ("✗", "red")}  # record.STATUS codes
MAX_CLIENTS_SHOWN = 96
LAST_ROUNDS = 8
# what rank 0 logs when a job ends: done, stopped by a signal or the guard, or aborted
ENDINGS = ("] INFO done: ", "the job exits with status", "aborting the job")


@dataclass
class RunView:
    """What the run directory says now."""

    out: Path
    rounds: int | None = None  # configured
    metrics: list[dict] = field(default_factory=list)
    status: np.ndarray | None = None  # rounds x clients, from run.h5
    finished: bool = False

    def refresh(self) -> None:
        if self.rounds is None and (self.out / "config.toml").is_file():
            import tomllib

            self.rounds = int(tomllib.loads((self.out / "config.toml").read_text()).get("rounds", 0)) or None
        path = self.out / "metrics.jsonl"
        if path.is_file():
            lines = path.read_text().splitlines()
            if lines and not lines[-1].endswith("}"):
                lines = lines[:-1]  # a line being written
            self.metrics = [json.loads(line) for line in lines if line.strip()]
        self.status = read_status(self.out / "run.h5", self.status)
        self.finished = (bool(self.rounds) and len(self.metrics) >= (self.rounds or 0)) or self.ended()

    def ended(self) -> bool:
        """Whether rank 0's log says the job is over before its last round (stopped, preempted, aborted)."""
        log = self.out / "run.log"
        if not log.is_file():
            return False
        with open(log, "rb") as f:
            f.seek(max(0, log.stat().st_size - 4096))
            tail = f.read().decode("utf-8", "replace")
        return any(s in tail for s in ENDINGS)


def read_status(path: Path, previous: np.ndarray | None) -> np.ndarray | None:
    """The per-client status rows of the run record, or ``previous`` if it cannot be read now."""
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            return f["clients/status"][()]
    except (OSError, KeyError, ValueError):
        return previous


def sparkline(values: list[float], width: int = 60) -> str:
    """The last ``width`` values as unicode bars, scaled to their range."""
    vals = [v for v in values if v is not None][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5))] for v in vals)


def render(view: RunView):
    """The picture of ``view`` as a rich renderable."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    m = view.metrics
    done, total = len(m), view.rounds or len(m)
    state = "finished" if view.finished else ("running" if m else "waiting for the first round")
    head = Text(f"{view.out}  round {done}/{total}  {state}", style="bold")
    filled = int(40 * done / max(total, 1))
    bar = Text("█" * filled + "░" * (40 - filled) + f" {done / max(total, 1):.0%}")
    acc = [r["accuracy"] for r in m]
    known = [a for a in acc if a is not None]
    curve = Text(f"accuracy {sparkline(acc)}  "
                 + (f"last {known[-1]:.4f}, best {max(known):.4f}" if known else "not evaluated yet"))
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("round", "acc", "loss", "ok/late/fail", "up MB", "down MB", "round s", "train s", "ovh"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in m[-LAST_ROUNDS:]:
        share = r["overhead_seconds"] / r["round_seconds"] if r.get("round_seconds") else 0.0
        table.add_row(str(r["round"]), "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}",
                      "-" if r["loss"] is None else f"{r['loss']:.3f}",
                      f"{r['clients_reported']}/{r['clients_late']}/{r['clients_failed']}",
                      f"{r['bytes_up'] / 1e6:.2f}", f"{r['bytes_down'] / 1e6:.2f}", f"{r['round_seconds']:.2f}",
                      f"{r['train_seconds']:.2f}", f"{share:.0%}")
    parts: list[Text | Table] = [head, bar, curve, table]
    if m:
        secs = sum(r["round_seconds"] for r in m)
        parts.append(Text(f"throughput {sum(r['clients_reported'] for r in m) / max(secs, 1e-9):.1f} client "
                          f"updates/s over {secs:.1f}s of rounds"))
    if view.status is not None and len(view.status):
        grid = Text("clients (● reported ◌ late ✗ failed · not selected), last rounds:\n")
        first = max(0, len(view.status) - LAST_ROUNDS)
        for i in range(first, len(view.status)):
            row = view.status[i]
            grid.append(f"{i + 1:>5} ")
            for code in row[:MAX_CLIENTS_SHOWN]:
                mark, style = CLIENT_MARK.get(int(code), ("?", "magenta"))
                grid.append(mark, style=style)
            if len(row) > MAX_CLIENTS_SHOWN:
                grid.append(f" +{len(row) - MAX_CLIENTS_SHOWN} more")
            grid.append("\n")
        parts.append(grid)
    return Panel(Group(*parts), title="fedhpc watch", subtitle="Ctrl-C to leave")


def watch(out: Path, interval_s: float = 1.0, once: bool = False) -> int:
    """Show ``out`` until the run finishes (or once); 0, or 2 if ``out`` is not a run directory."""
    from rich.console import Console
    from rich.live import Live

    if not (out / "config.toml").is_file() and not (out / "metrics.jsonl").is_file():
        print(f"fedhpc watch: error: {out} is not a run directory (no config.toml or metrics.jsonl yet)",
              file=sys.stderr)
        return 2
    console = Console()
    view = RunView(out)
    view.refresh()
    if once:
        console.print(render(view))
        return 0
    # Ctrl-C only sets a flag that the loop reads between refreshes: a KeyboardInterrupt raised
    # wherever the signal lands (inside h5py reading run.h5, say) could surface as another error
    leave = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: leave.set())
    try:
        with Live(render(view), console=console, refresh_per_second=4) as live:
            while not view.finished and not leave.wait(interval_s):
                view.refresh()
                live.update(render(view))
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="the run directory (fedhpc run --out)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes (default 1)")
    p.add_argument("--once", action="store_true", help="print the picture once and exit")
