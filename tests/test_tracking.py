"""TensorBoard event files, read back with TensorBoard's own event reader; MLflow, read back from its store."""

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import fedhpc_run, metrics

from fedhpc.config import load_config
from fedhpc.tracking import SCALARS, TensorBoard



def read(directory):
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def line(r: int, accuracy=None) -> dict:
    return {"round": r, "accuracy": accuracy, "loss": 1.0 / r, "bytes_up": 100 * r, "bytes_down": 7, "round_seconds": 0.5,
            "train_seconds": 0.4, "overhead_seconds": 0.1, "sim_seconds": None, "clients_reported": 3,
            "clients_late": 1, "clients_failed": 0, "update_norm_median": 2.0}


@pytest.mark.unit
def test_rounds_config_and_norm_histograms_are_written(tmp_path):
    cfg = load_config(None, ["tracking.histogram_every=2", "rounds=4"])
    tb = TensorBoard(tmp_path, cfg, 0)
    for r in range(1, 5):
        tb.round(line(r, accuracy=0.1 * r if r % 2 == 0 else None), [1.0, 2.0, 3.0 * r])
    tb.close()
    acc = read(tmp_path / "tensorboard")
    tags = acc.Tags()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("eval/accuracy")] == [(2, 0.2), (4, 0.4)]
    assert [e.value for e in acc.Scalars("traffic/bytes_up")] == [100, 200, 300, 400]
    assert "time/simulated_seconds" not in tags["scalars"]  # None on the wall clock: not written
    assert set(tags["scalars"]) == {t for k, t in SCALARS.items() if k != "sim_seconds"}
    assert [e.step for e in acc.Histograms("clients/update_norm")] == [2, 4]
    assert acc.Histograms("clients/update_norm")[-1].histogram_value.max == 12.0
    assert any("config" in t for t in tags["tensors"])


@pytest.mark.unit
def test_a_resumed_run_purges_the_rounds_after_its_checkpoint(tmp_path):
    cfg = load_config(None, ["rounds=6"])
    tb = TensorBoard(tmp_path, cfg, 0)
    for r in range(1, 5):  # rounds 1-4 written, then the job dies; the checkpoint is after round 2
        tb.round(line(r), [])
    tb.close()
    tb = TensorBoard(tmp_path, cfg, 2)
    for r in range(3, 7):
        tb.round(line(r) | {"bytes_down": 8}, [])
    tb.close()
    steps = [(e.step, e.value) for e in read(tmp_path / "tensorboard").Scalars("traffic/bytes_down")]
    assert steps == [(1, 7), (2, 7), (3, 8), (4, 8), (5, 8), (6, 8)]


@pytest.mark.e2e
def test_mlflow_gets_the_config_every_round_and_the_artifacts(tmp_path):
    import mlflow

    out = tmp_path / "run"
    fedhpc_run(3, out, "rounds=3", "checkpoint.every=1", "tracking.mlflow=true")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("fedhpc").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_id == (out / "mlflow_run_id").read_text().strip()
    assert run.data.params["local.lr"] == "0.2" and run.data.params["codec.name"] == "none"
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert [(m.step, m.value) for m in history] == [(r["round"], pytest.approx(r["accuracy"])) for r in metrics(out)]
    assert (out / "mlflow-artifacts").is_dir() and not (Path.cwd() / "mlruns").exists()  # all inside the run
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"final_weights.npy", "report", "checkpoints"} <= arts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} >= {"report/index.html",
                                                                                   "report/accuracy_loss.png"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/ckpt-000003.h5"]
    # resumed and extended: the same MLflow run goes on
    fedhpc_run(3, out, "rounds=5", resume=True)
    (again,) = client.search_runs([run.info.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [1, 2, 3, 4, 5]


@pytest.mark.unit
def test_mlflow_settings_are_checked():
    from fedhpc.errors import ConfigError

    with pytest.raises(ConfigError, match="'tracking.mlflow_uri' needs tracking.mlflow = true"):
        load_config(None, ["tracking.mlflow_uri='http://x'"])
