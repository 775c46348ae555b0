"""The run record ``OUT/run.h5``: per-round metrics and per-client participation.

Layout: ``/rounds/<field>`` one extendable dataset per metrics.jsonl field
(``failures`` as JSON text; a missing accuracy/loss/sim_seconds is NaN), and
``/clients/status``, ``/clients/bytes_up``, ``/clients/seconds``: one row per
round, one column per client. Status codes are :data:`STATUS`.
On resume the record is cut back to the checkpoint's round first, so it always
matches the model it describes.
"""

from __future__ import annotations

import json
from pathlib import Path

from typing import Any

import h5py
import numpy as np

#: per-client status codes in /clients/status
STATUS = {"not selected": 0, "reported": 1, "late": 2, "failed": 3}

_FLOAT = ("accuracy", "loss", "round_seconds", "train_seconds", "overhead_seconds", "sim_seconds",
          "update_norm_median", "state_ram_mb", "epsilon", "epsilon_pld", "dp_sampling_rate", "perplexity",
          "dp_clip", "dp_unclipped", "secagg_seconds", "width_mean", "staleness_mean", "staleness_max")
_INT = ("round", "clients_selected", "clients_reported", "clients_late", "clients_failed", "stale_dropped",
        "bytes_up", "bytes_down", "state_spills", "state_loads", "clients_flagged",
        "secagg_bytes")
_CLIENT = {"status": np.int8, "bytes_up": np.int64, "seconds": np.float64, "width": np.float32}


class RunRecord:
    """Appends one round at a time to ``path`` (rank 0 only: serial HDF5)."""

    def __init__(self, path: Path, clients: int, rounds_done: int):
        self.file = h5py.File(path, "a")
        self.clients = clients
        str_dtype = h5py.string_dtype()
        specs: list[tuple[str, Any, tuple[int, ...]]] = [(f"rounds/{k}", np.float64, ()) for k in _FLOAT]
        specs += [(f"rounds/{k}", np.int64, ()) for k in _INT]
        specs += [("rounds/failures", str_dtype, ())] + [(f"clients/{k}", t, (clients,)) for k, t in _CLIENT.items()]
        for name, dtype, tail in specs:
            if name not in self.file:
                # a round's row of every client is one chunk of its own, compressed: with 100,000
                # clients and 1,000 selected a round it is 31 kB on disk instead of 1.7 MB, and no
                # chunk of earlier rounds is rewritten
                per_client = {"chunks": (1, *tail), "compression": "gzip", "compression_opts": 1} if tail else {}
                # a resumed run's file from before this dataset existed: its rounds so far are unknown
                fill = {"fillvalue": np.nan} if dtype in (np.float32, np.float64) else {}
                self.file.create_dataset(name, shape=(rounds_done, *tail), maxshape=(None, *tail), dtype=dtype,
                                         **({"chunks": (64,)} | per_client | fill))
            ds = self.file[name]
            if ds.shape[0] > rounds_done:  # a resumed run: forget rounds after the checkpoint
                ds.resize(rounds_done, axis=0)
        self.file.flush()

    def append(self, metrics: dict, status: np.ndarray, bytes_up: np.ndarray, seconds: np.ndarray,
               width: np.ndarray) -> None:
        """Add one round: its metrics dict and per-client arrays (length ``clients``): status,
        bytes up, seconds and sub-model width (NaN: not selected)."""
        row = {f"rounds/{k}": np.nan if metrics[k] is None else metrics[k] for k in _FLOAT + _INT}
        row["rounds/failures"] = json.dumps(metrics["failures"])
        row |= {"clients/status": status, "clients/bytes_up": bytes_up, "clients/seconds": seconds,
                "clients/width": width}
        for name, value in row.items():
            ds = self.file[name]
            ds.resize(ds.shape[0] + 1, axis=0)
            ds[-1] = value
        self.file.flush()

    def close(self) -> None:
        self.file.close()
