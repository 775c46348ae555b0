"""Experiment tracking: rank 0 writes the run to TensorBoard (``OUT/tensorboard/``).

Per round (the step is the round number): accuracy and loss, bytes up and
down, round, training and overhead seconds (and simulated seconds on that
clock), clients reported, late and failed, and the median update norm; the
resolved config as text; every ``tracking.histogram_every`` rounds a
histogram of the clients' update norms. A resumed run purges the events
after its checkpoint's round, so the curves show each round once.
``tensorboard --logdir runs/`` shows every run below ``runs/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedhpc.config import RunConfig

#: metrics.jsonl field -> TensorBoard tag
SCALARS = {
    "accuracy": "eval/accuracy",
    "loss": "eval/loss",
    "bytes_up": "traffic/bytes_up",
    "bytes_down": "traffic/bytes_down",
    "round_seconds": "time/round_seconds",
    "train_seconds": "time/train_seconds",
    "overhead_seconds": "time/overhead_seconds",
    "sim_seconds": "time/simulated_seconds",
    "clients_reported": "clients/reported",
    "clients_late": "clients/late",
    "clients_failed": "clients/failed",
    "update_norm_median": "clients/update_norm_median",
}


class TensorBoard:
    """The run's TensorBoard event files (the writer PyTorch ships, over the ``tensorboard`` package)."""

    def __init__(self, out: Path, cfg: RunConfig, rounds_done: int):
        from torch.utils.tensorboard import SummaryWriter

        self.every = cfg.tracking.histogram_every
        # on resume, drop what an earlier incarnation wrote after the checkpoint
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=rounds_done + 1 if rounds_done
                                    else None)
        if not rounds_done:
            import tomli_w

            self.writer.add_text("config", "```toml\n" + tomli_w.dumps(cfg.to_dict()) + "```", 0)

    def round(self, metrics: dict, norms: list[float]) -> None:
        """Write one round's metrics line, and the histogram of its update norms when due."""
        step = metrics["round"]
        for key, tag in SCALARS.items():
            if metrics.get(key) is not None:
                self.writer.add_scalar(tag, metrics[key], step)
        if norms and self.every and step % self.every == 0:
            finite = np.asarray([n for n in norms if np.isfinite(n)], dtype=np.float64)
            if finite.size:
                self.writer.add_histogram("clients/update_norm", finite, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
