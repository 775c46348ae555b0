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


@pytest.mark.parametrize("sets,message", [
    (["rounds=1000000000000000000000000000000"], "'rounds' must be an integer of magnitude <= 2^63 - 1"),
    (["rounds=2000000000"], "'rounds' must be in [1, 1000000000]"),
    (["seed=1180591620717411303424"], "'seed' must be an integer of magnitude <= 2^63 - 1"),
    (["local.lr=inf"], "'local.lr' must be a finite number"),
    (["local.lr=nan"], "'local.lr' must be a finite number"),
    (["profiles.slow_factor=inf"], "'profiles.slow_factor' must be a finite number"),
    (["gateway.heartbeat_s=inf"], "'gateway.heartbeat_s' must be a finite number"),
    (["gateway.heartbeat_s=1e12"], "'gateway.heartbeat_s' must be in (0, 2592000] seconds"),
    (["stragglers.timeout_s=0"], "'stragglers.timeout_s' must be in (0, 2592000] seconds"),
    (["stragglers.deadline_s=-1"], "'stragglers.deadline_s' must be in [0, 2592000] seconds"),
    (["local.lr=" + "9" * 5000], "has a value fedhpc cannot read"),
    (["gateway.max_samples=0"], "'gateway.max_samples' must be >= 1"),
])
def test_absurd_values_are_refused_naming_the_key(sets, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, sets)
    assert message in str(exc.value)


def test_unreadable_config_files_are_refused_with_what_is_wrong(tmp_path):
    binary = tmp_path / "model.pt"
    binary.write_bytes(bytes(range(256)) * 4)
    latin = tmp_path / "latin.toml"
    latin.write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    huge = tmp_path / "huge.toml"
    huge.write_text("rounds = " + "7" * 5000 + "\n")
    for path, message in [(binary, "is not UTF-8 text"), (latin, "is not UTF-8 text"),
                          (tmp_path, "is a directory"), (deep, "nests tables or arrays too deeply"),
                          (huge, "has a value fedhpc cannot read")]:
        with pytest.raises(ConfigError) as exc:
            load_config(path)
        assert message in str(exc.value) and str(path) in str(exc.value)


def test_a_model_factory_that_does_not_build_a_model_is_a_config_error():
    from fedhpc.models import build_model

    cfg = load_config(None, ["model.name=os:getcwd"])
    with pytest.raises(ConfigError, match=r"model.name 'os:getcwd': calling it as factory.* failed with TypeError"):
        build_model(cfg.model, (8,), 2, 0)
    with pytest.raises(ConfigError, match="returned a slice, not a torch.nn.Module"):
        build_model(load_config(None, ["model.name=builtins:slice"]).model, (8,), 2, 0)
