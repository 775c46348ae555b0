"""Config loading: defaults, TOML, --set overrides, and errors that name the key."""

import pytest

from fedhpc.config import load_config, save_config
from fedhpc.errors import ConfigError

pytestmark = pytest.mark.unit


def test_defaults_are_the_embedded_demo():
    cfg = load_config()
    assert (cfg.data.name, cfg.data.partition, cfg.data.classes_per_client) == ("digits", "classes", 2)
    assert (cfg.clients.total, cfg.strategy.name, cfg.model.name) == (20, "fedavg", "mlp")


def test_toml_and_overrides(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('rounds = 3\n[codec]\nname = "topk"\nratio = 0.05\n[local]\nlr = 0.2\n')
    cfg = load_config(f, ["local.lr=0.3", "clock=simulated", "codec.ratio=0.1", "profiles.slow_clients=[1, 2]"])
    assert cfg.rounds == 3 and cfg.local.lr == 0.3 and cfg.clock == "simulated"
    assert cfg.codec.name == "topk" and cfg.codec.params == {"ratio": 0.1}
    assert cfg.profiles.slow_clients == [1, 2]


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["codec.name=int8", "codec.block=64", "strategy.name=fedprox", "strategy.mu=0.1"])
    save_config(cfg, tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml") == cfg


@pytest.mark.parametrize("sets,message", [
    (["local.lrr=1"], "unknown config key 'local.lrr'; allowed keys here: batch_size"),
    (["nonsense=1"], "unknown config key 'nonsense'"),
    (["clock=fast"], "config key 'clock' is 'fast'; allowed values: 'wall', 'simulated'"),
    (["data.partition=zipf"], "'data.partition' is 'zipf'; allowed values: 'iid', 'dirichlet', 'classes'"),
    (["local.epochs=0"], "'local.epochs' must be >= 1"),
    (["local.epochs=1.5"], "'local.epochs' must be int"),
    (["clients.per_round=50"], "'clients.per_round' must be in [1, clients.total=20]"),
    (["faults.dropout_prob=1.2"], "'faults.dropout_prob' must be in [0, 1)"),
    (["stragglers.fastest_k=11"], "'stragglers.fastest_k' must be <= clients.per_round=10"),
    (["stragglers.partial_work=true"], "'stragglers.partial_work' needs stragglers.deadline_s > 0"),
    (["stragglers.partial_work=true", "clock=simulated"], "'stragglers.partial_work' needs stragglers.deadline_s"),
    (["codec.name=zip"], "[codec]: unknown codec 'zip'"),
    (["codec.name=topk", "codec.ratio=2"], "[codec]: codec 'topk': ratio must be in (0, 1]"),
    (["strategy.name=fedsgd"], "[strategy]"),
    (["selection.name=best"], "[selection]"),
    (["profiles.slow_clients=[99]"], "'profiles.slow_clients' has client id 99"),
    (["local=3"], "config key 'local' must be a table"),
    (["seed"], "--set expects dotted.key=value"),
])
def test_errors_name_the_key(sets, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, sets)
    assert message in str(exc.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
