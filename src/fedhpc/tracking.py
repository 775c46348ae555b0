"""Experiment tracking: rank 0 writes the run to TensorBoard (``OUT/tensorboard/``), and with
``tracking.mlflow`` to MLflow.

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
from fedhpc.errors import ConfigError

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
            self.writer.add_text("config", "```toml\n" + cfg.to_toml() + "```", 0)

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


def flat_params(d: dict, prefix: str = "") -> dict[str, str]:
    """A nested config dict as MLflow parameters: dotted keys, values as text."""
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flat_params(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


class MLflow:
    """The run in MLflow: the config as parameters, every round's numbers as metrics, and at the
    end the final model, the report (``fedhpc report``) and the newest checkpoint as artifacts.

    By default the store is ``sqlite:///OUT/mlflow.db``, local to the run, with its artifacts in
    ``OUT/mlflow-artifacts/``: MLflow 3 refuses its old directory store unless told otherwise, and
    a SQLite file is as local. A resumed run goes
    on in the same MLflow run (its id is kept in ``OUT/mlflow_run_id``); the rounds after the
    checkpoint are logged again, at the same steps.
    """

    def __init__(self, out: Path, cfg: RunConfig):
        try:
            import mlflow
        except ImportError:
            raise ConfigError("config key 'tracking.mlflow' is true but MLflow is not installed: "
                              "pip install 'fedhpc[mlflow]'") from None
        self.mlflow, self.out = mlflow, out
        t = cfg.tracking
        mlflow.set_tracking_uri(t.mlflow_uri or f"sqlite:///{out.resolve()}/mlflow.db")
        if not t.mlflow_uri and mlflow.get_experiment_by_name(t.mlflow_experiment) is None:
            # the local store keeps its artifacts beside it, not in ./mlruns of whatever directory this is
            mlflow.create_experiment(t.mlflow_experiment, artifact_location=(out / "mlflow-artifacts").resolve().as_uri())
        mlflow.set_experiment(t.mlflow_experiment)
        id_file = out / "mlflow_run_id"
        previous = id_file.read_text().strip() if id_file.is_file() else None
        self.run = mlflow.start_run(run_id=previous, run_name=None if previous else out.name)
        id_file.write_text(self.run.info.run_id + "\n")
        if previous is None:
            mlflow.log_params(flat_params(cfg.to_dict()))

    def round(self, metrics: dict) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "round"}
        self.mlflow.log_metrics(numbers, step=metrics["round"])

    def close(self, status: int) -> None:
        """Log the artifacts of a finished run and end the MLflow run (FINISHED, or KILLED when stopped)."""
        if status == 0:
            from fedhpc.checkpoint import list_checkpoints
            from fedhpc.report import report

            report(self.out)
            self.mlflow.log_artifact(str(self.out / "final_weights.npy"))
            self.mlflow.log_artifacts(str(self.out / "report"), artifact_path="report")
            newest = list_checkpoints(self.out / "checkpoints")
            if newest:
                self.mlflow.log_artifact(str(newest[0]), artifact_path="checkpoints")
        self.mlflow.end_run("FINISHED" if status == 0 else "KILLED")
