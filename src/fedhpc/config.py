"""Run configuration: one TOML file, validated into typed dataclasses.

Every key can be overridden on the command line with ``--set dotted.key=value``
(the value is parsed as TOML, so ``--set local.lr=0.1``, ``--set
clock='"simulated"'`` or ``--set clock=simulated`` all work). Unknown keys and
bad values raise :class:`~fedhpc.errors.ConfigError` naming the key and what
is allowed. Sections whose plugin is chosen by ``name`` (``codec``,
``strategy``, ``selection``) pass their other keys to the plugin, which
validates them when the config is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal

import tomli_w

from fedhpc.errors import ConfigError
from fedhpc.ring import DEFAULT_SCALE_BITS


@dataclass
class ClientsConfig:
    total: int = 20
    per_round: int = 10
    # RAM for the error-feedback residuals each hosting rank keeps (0 = no limit); the least
    # recently used beyond it are spilled to state_dir and read back when selected again
    state_memory_mb: float = 0.0
    state_dir: str = ""  # where to spill; "" = node-local scratch ($SLURM_TMPDIR, $TMPDIR), else the run directory

    def check(self, key):
        _require(self.total >= 1, f"{key}.total", "must be >= 1")
        _require(self.per_round >= 1, f"{key}.per_round", "must be >= 1")
        _require(self.state_memory_mb >= 0, f"{key}.state_memory_mb", "must be >= 0 (0 = no limit)")


@dataclass
class SyntheticConfig:
    """The data of ``data.name = "synthetic"``: Gaussian class clusters (seeded, independent of the run seed)."""

    shape: list[int] = field(default_factory=lambda: [32])  # of one sample, e.g. [3, 32, 32] for images
    classes: int = 10
    samples: int = 2000  # train + test

    def check(self, key):
        _require(len(self.shape) >= 1 and min(self.shape) >= 1, f"{key}.shape",
                 "must be a non-empty list of sizes >= 1")
        _require(self.classes >= 2, f"{key}.classes", "must be >= 2")
        _require(self.samples >= 2, f"{key}.samples", "must be >= 2")


@dataclass
class DataConfig:
    name: str = "digits"  # digits | synthetic | cifar10 | shakespeare | shakespeare-offline | medmnist | text
    partition: Literal["iid", "dirichlet", "classes", "natural"] = "classes"
    alpha: float = 0.5  # Dirichlet concentration (smaller = more skewed)
    classes_per_client: int = 2
    # the dataset on disk: CIFAR-10 python directory, LEAF Shakespeare directory (train/, test/), MedMNIST .npz file
    root: str = ""
    test_fraction: float = 0.2  # held-out share for central evaluation when the dataset has no test split
    # a client with more training samples keeps a seeded random subset of this many (0 = all): bounds the
    # cost of a round on skewed natural partitions (Shakespeare's largest role has 49,415, its median 1,864)
    max_client_samples: int = 0
    # text: tokens per sample (a block of the tokenized documents, the next token of each its target), and
    # the Hugging Face tokenizer directory (default: the hf: model's own)
    block: int = 64
    tokenizer: str = ""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def check(self, key):
        _require(self.block >= 1, f"{key}.block", "must be >= 1 (tokens per sample)")
        _require(self.alpha > 0, f"{key}.alpha", "must be > 0")
        _require(self.classes_per_client >= 1, f"{key}.classes_per_client", "must be >= 1")
        _require(0 < self.test_fraction < 1, f"{key}.test_fraction", "must be in (0, 1)")
        _require(self.max_client_samples >= 0, f"{key}.max_client_samples", "must be >= 0 (0 = all)")


#: ``model.name = "hf:PATH"``: a causal language model in the Hugging Face format in local directory PATH
HF_PREFIX = "hf:"


@dataclass
class ModelConfig:
    # mlp | logreg | cnn-cifar | cnn-medmnist | lstm-shakespeare | "hf:PATH" | "package.module:factory"
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [64])  # hidden layer sizes of mlp

    @property
    def hf_path(self) -> str:
        """The model directory of ``hf:PATH`` ("" for any other model), ``~`` expanded."""
        return str(Path(self.name[len(HF_PREFIX):]).expanduser()) if self.name.startswith(HF_PREFIX) else ""

    def check(self, key):
        _require(all(h >= 1 for h in self.hidden), f"{key}.hidden", "must be a list of layer sizes >= 1")
        if self.name.startswith(HF_PREFIX):  # reserved, and checked before the module:factory rule
            _require(bool(self.name[len(HF_PREFIX):].strip()), f"{key}.name",
                     "'hf:' must be followed by the directory of a Hugging Face model, e.g. 'hf:~/models/tiny-llama'")
            return
        module, colon, factory = self.name.partition(":")
        _require(not colon or (module and factory), f"{key}.name",
                 f"'{self.name}' must be a model name or 'package.module:factory'")


@dataclass
class LocalConfig:
    epochs: int = 2
    batch_size: int = 16
    lr: float = 0.2
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.0
    threads: int = 1  # torch threads per trainer rank; fixed so results do not depend on the host

    def check(self, key):
        _require(self.epochs >= 1, f"{key}.epochs", "must be >= 1")
        _require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _require(self.lr > 0, f"{key}.lr", "must be > 0")
        _require(0 <= self.momentum < 1, f"{key}.momentum", "must be in [0, 1)")
        _require(self.threads >= 1, f"{key}.threads", "must be >= 1")


@dataclass
class PluginConfig:
    """A section that names a plugin; its other keys are the plugin's parameters."""

    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class StrategyConfig(PluginConfig):
    name: str = "fedavg"
    # FedProx proximal coefficient used by clients; None = the strategy's default
    # (0.01 for fedprox, 0 otherwise). The term is client-side, so it composes
    # with any server rule.
    mu: float | None = None

    def check(self, key):
        _require(self.mu is None or self.mu >= 0, f"{key}.mu", "must be >= 0")


@dataclass
class CodecConfig(PluginConfig):
    name: str = "none"
    error_feedback: bool = True
    # how error-feedback residuals are stored: bf16 halves their memory and disk, and rounds
    # each residual to bfloat16 after every encode (see the README for what it costs)
    residual_dtype: Literal["float32", "bf16"] = "float32"


@dataclass
class SelectionConfig(PluginConfig):
    name: str = "random"


@dataclass
class StragglersConfig:
    deadline_s: float = 0.0  # close the round this long after it starts (0 = no deadline)
    fastest_k: int = 0  # close the round when this many updates arrived (0 = wait for all)
    timeout_s: float = 300.0  # hard wall-clock bound on any wait, whatever the clock
    # after a round closes, how long rank 0 waits for every rank's accounting (one batch must end
    # first) before it aborts the job as hung: raise it when one batch takes longer
    close_grace_s: float = 10.0
    # FedProx's "partial work": a client that cannot finish every local epoch before
    # the deadline trains the epochs its speed allows (at least one) and still
    # reports, instead of being dropped. Needs a deadline.
    partial_work: bool = False

    def check(self, key):
        _seconds(self.deadline_s, f"{key}.deadline_s", positive=False)
        _require(self.fastest_k >= 0, f"{key}.fastest_k", "must be >= 0")
        _seconds(self.timeout_s, f"{key}.timeout_s")
        _seconds(self.close_grace_s, f"{key}.close_grace_s")


@dataclass
class FaultsConfig:
    dropout_prob: float = 0.0  # chance that a selected client vanishes in a round
    # Fault injection, to rehearse a deployment's failure handling: these clients
    # raise during local training, or send a bit-flipped update.
    error_clients: list[int] = field(default_factory=list)
    corrupt_clients: list[int] = field(default_factory=list)
    crash_ranks: list[int] = field(default_factory=list)  # these trainer ranks die in the first round
    # secure aggregation's steps (see fedhpc.secagg): these clients go silent when asked for their keys,
    # for their shares, or for what they reveal to unmask the sum
    drop_at_keys: list[int] = field(default_factory=list)
    drop_at_shares: list[int] = field(default_factory=list)
    drop_at_unmask: list[int] = field(default_factory=list)

    def check(self, key):
        _require(0 <= self.dropout_prob < 1, f"{key}.dropout_prob", "must be in [0, 1)")


@dataclass
class ProfilesConfig:
    """Simulated heterogeneity of the clients (seeded)."""

    speed_sigma: float = 0.0  # client speed = exp(N(0, sigma)); 0 = all equal
    slow_clients: list[int] = field(default_factory=list)  # these clients run slow_factor times slower
    slow_factor: float = 10.0
    bandwidth_mbps: float = 1000.0
    latency_ms: float = 0.5
    cost_per_sample_s: float = 0.0005  # simulated compute seconds per sample and epoch at speed 1

    def check(self, key):
        _require(self.speed_sigma >= 0, f"{key}.speed_sigma", "must be >= 0")
        _require(self.slow_factor >= 1, f"{key}.slow_factor", "must be >= 1")
        _require(self.bandwidth_mbps > 0, f"{key}.bandwidth_mbps", "must be > 0")
        _require(self.latency_ms >= 0, f"{key}.latency_ms", "must be >= 0")
        _require(self.cost_per_sample_s > 0, f"{key}.cost_per_sample_s", "must be > 0")


@dataclass
class FedDropoutConfig:
    """Structured federated dropout (``submodels.mode = "random"``; this rate alone turns it on):
    clients train a sub-model without a random share of the hidden units."""

    rate: float = 0.0  # fraction of hidden units dropped per client and round

    def check(self, key):
        _require(0 <= self.rate < 1, f"{key}.rate", "must be in [0, 1)")


@dataclass
class SubmodelsConfig:
    """Sub-models: clients train narrower networks (see fedhpc.runtime.submodels)."""

    # "random": each client drops a random fed_dropout.rate of every hidden layer's units (federated
    # dropout; fed_dropout.rate > 0 alone means this); "budget": rank 0 gives each client the widest
    # of widths whose predicted round fits (1 - margin) of stragglers.deadline_s
    mode: Literal["none", "random", "budget"] = "none"
    widths: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    nested: bool = True  # budget: a width-w model is the first w of every hidden layer (false: w of them at random)
    margin: float = 0.1

    def check(self, key):
        _require(bool(self.widths) and all(0 < w <= 1 for w in self.widths), f"{key}.widths",
                 "must be a non-empty list of fractions in (0, 1]")
        _require(len(set(self.widths)) == len(self.widths), f"{key}.widths", "must not repeat a width")
        _require(0 <= self.margin < 1, f"{key}.margin", "must be in [0, 1)")


@dataclass
class GatewayConfig:
    """The gRPC gateway rank (the last rank) through which external workers join."""

    enabled: bool = False
    listen: str = "0.0.0.0:50051"
    clients: int = 4  # remote client slots; their ids follow the MPI-hosted clients
    token_file: str = ""  # one "worker-name token" per line; every call must carry one of them
    tls_cert: str = ""  # server certificate and key (PEM): TLS when set
    tls_key: str = ""
    client_ca: str = ""  # CA of the worker certificates: mutual TLS when set
    # codec on the WAN link; name "" = the same as [codec]
    codec: CodecConfig = field(default_factory=lambda: CodecConfig(name=""))
    min_workers: int = 0  # before the first round, wait until this many workers registered ...
    wait_s: float = 120.0  # ... but no longer than this
    calls_per_second: float = 50.0  # per worker, beyond which calls are refused
    heartbeat_s: float = 2.0  # a worker silent for 3 heartbeats while holding a task has failed
    # the most training samples a worker may declare at registration (its weight in FedAvg); every
    # Update of its client must claim exactly what it declared
    max_samples: int = 100_000
    stream_idle_s: float = 30.0  # an upload that moves no chunk for this long is cancelled

    def check(self, key):
        _require(self.clients >= 1, f"{key}.clients", "must be >= 1")
        host, _, port = self.listen.rpartition(":")
        _require(bool(host) and port.isdigit() and 0 <= int(port) < 65536, f"{key}.listen",
                 f"must be HOST:PORT, got '{self.listen}'")
        _require(not self.enabled or bool(self.token_file), f"{key}.token_file",
                 "must name a token file when the gateway is enabled (create one with `fedhpc certs init`)")
        _require(bool(self.tls_cert) == bool(self.tls_key), f"{key}.tls_cert",
                 "and gateway.tls_key must be given together")
        _require(not self.client_ca or bool(self.tls_cert), f"{key}.client_ca", "needs gateway.tls_cert (mutual TLS)")
        _require(0 <= self.min_workers <= self.clients, f"{key}.min_workers", f"must be in [0, gateway.clients={self.clients}]")
        _seconds(self.wait_s, f"{key}.wait_s", positive=False)
        _require(self.calls_per_second > 0, f"{key}.calls_per_second", "must be > 0")
        _seconds(self.heartbeat_s, f"{key}.heartbeat_s")
        _require(self.max_samples >= 1, f"{key}.max_samples", "must be >= 1")
        _seconds(self.stream_idle_s, f"{key}.stream_idle_s")


@dataclass
class GuardConfig:
    """Bounds that keep a hostile or broken client from wrecking the model (see fedhpc.runtime.guard)."""

    # refuse an update whose L2 norm is above this multiple of the median norm of the
    # updates accepted in the last norm_window rounds (the first round: of its own); 0 = off
    norm_multiple: float = 10.0
    norm_window: int = 5
    norm_limit: float = 0.0  # and any update above this absolute L2 norm (0 = none)
    idle_rounds: int = 5  # stop the run after this many rounds in a row without a result (0 = never)

    def check(self, key):
        _require(self.norm_multiple == 0 or self.norm_multiple >= 1, f"{key}.norm_multiple",
                 "must be 0 (off) or >= 1 (a multiple of the median honest norm)")
        _require(self.norm_window >= 1, f"{key}.norm_window", "must be >= 1")
        _require(self.norm_limit >= 0, f"{key}.norm_limit", "must be >= 0")
        _require(self.idle_rounds >= 0, f"{key}.idle_rounds", "must be >= 0")


@dataclass
class AggregationConfig:
    """How sums of updates are formed (see fedhpc.ring)."""

    # fixed-point bits after the binary point of the integer ring that every sum of updates
    # (and secure aggregation's masks) lives in: resolution 2**-scale_bits per weighted value
    scale_bits: int = DEFAULT_SCALE_BITS
    # where sum-decomposable strategies fold the updates: "ranks" = each rank that hosts
    # clients folds its own and the partial sums meet in a reduce-scatter (rank 0 holds no
    # update); "rank0" = every update travels to rank 0, which folds it as it arrives
    fold: Literal["ranks", "rank0"] = "ranks"

    def check(self, key):
        _require(16 <= self.scale_bits <= 52, f"{key}.scale_bits",
                 "must be in [16, 52] (resolution 2**-scale_bits; the int64 ring holds the rest)")


@dataclass
class TrackingConfig:
    """Where rank 0 reports the run besides metrics.jsonl and run.h5 (see fedhpc.tracking)."""

    tensorboard: bool = True  # OUT/tensorboard/ event files
    histogram_every: int = 5  # a histogram of the clients' update norms every N rounds (0 = never)
    mlflow: bool = False  # also track the run in MLflow (pip install 'fedhpc[mlflow]')
    mlflow_uri: str = ""  # its tracking URI; "" = a local store in the run directory, sqlite:///OUT/mlflow.db
    mlflow_experiment: str = "fedhpc"

    def check(self, key):
        _require(self.histogram_every >= 0, f"{key}.histogram_every", "must be >= 0")
        _require(not self.mlflow_uri or self.mlflow, f"{key}.mlflow_uri", "needs tracking.mlflow = true")
        _require(bool(self.mlflow_experiment.strip()), f"{key}.mlflow_experiment", "must not be empty")


@dataclass
class DPConfig:
    """User-level differential privacy (DP-FedAvg): clipped updates, Gaussian noise on the
    round's sum at rank 0, the guarantee computed by ``dp-accounting``."""

    enabled: bool = False
    clip: float = 1.0  # L2 bound on each client's update (with adaptive_clip: the first round's)
    # noise std = noise_multiplier * clip, on the sum (with adaptive_clip: the vector's and the clipped
    # count's noise together cost what this one multiplier costs, and the accountant counts this one)
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    target_epsilon: float = 0.0  # stop before the round that would exceed it (0 = no limit)
    # "server": rank 0 adds the noise to the round's sum; "client" (needs secagg.enabled): each client adds
    # a share, std noise_multiplier * clip / sqrt(min_clients), so that any min_clients of them together
    # carry the whole noise, and rank 0, which only sees the masked sum, never a noiseless update
    placement: Literal["server", "client"] = "server"
    min_clients: int = 0  # the fewest survivors whose sum is released (0 = half the expected clients, rounded up)
    # the noise comes from a secret drawn at the run's start and kept in its checkpoints only;
    # false: from the run seed, reproducible, and removable by anyone with the config (experiments)
    secret_noise: bool = True
    # adaptive clipping (Andrew et al. 2021): the clip follows the target_quantile of the update norms,
    # estimated from each client's clipped bit with noise of std clipped_count_stddev (0 = expected clients / 20)
    adaptive_clip: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2  # the geometric step: clip *= exp(-rate * (unclipped fraction - quantile))
    clipped_count_stddev: float = 0.0

    def check(self, key):
        _require(0 < self.target_quantile < 1, f"{key}.target_quantile", "must be in (0, 1)")
        _require(self.clip_learning_rate > 0, f"{key}.clip_learning_rate", "must be > 0")
        _require(self.clipped_count_stddev >= 0, f"{key}.clipped_count_stddev",
                 "must be >= 0 (0 = expected clients / 20)")
        _require(self.enabled or not self.adaptive_clip, f"{key}.adaptive_clip", f"needs {key}.enabled = true")
        _require(self.clip > 0, f"{key}.clip", "must be > 0 (the L2 bound on each client's update)")
        _require(self.noise_multiplier >= 0, f"{key}.noise_multiplier", "must be >= 0")
        _require(0 < self.delta < 1, f"{key}.delta", "must be in (0, 1)")
        _require(self.target_epsilon >= 0, f"{key}.target_epsilon", "must be >= 0 (0 = no limit)")
        _require(self.min_clients >= 0, f"{key}.min_clients", "must be >= 0 (0 = half the expected clients)")
        _require(self.placement == "client" or not self.min_clients, f"{key}.min_clients",
                 f"is for {key}.placement = 'client' only")


@dataclass
class SecAggConfig:
    """Secure aggregation (see fedhpc.secagg): rank 0 only ever sees the masked sum of the survivors' updates."""

    enabled: bool = False
    # the fraction of a client's neighbours that must reveal their shares to recover its secrets;
    # also the least a round's survivors may be (fewer: the round fails and the model stays)
    threshold: float = 0.5
    neighbors: int = 0  # each client's neighbours in SecAgg+'s random graph (rounded up to even); 0 = all (SecAgg)
    # how long the gateway waits for its workers' answers at each step (a silent one drops out)
    step_timeout_s: float = 10.0

    def check(self, key):
        _require(0 < self.threshold <= 1, f"{key}.threshold", "must be in (0, 1]")
        _require(self.step_timeout_s > 0, f"{key}.step_timeout_s", "must be > 0")
        _require(self.neighbors >= 0, f"{key}.neighbors", "must be >= 0 (0 = the complete graph)")


@dataclass
class AttackConfig:
    """Simulated Byzantine clients, to measure the defenses (see fedhpc.attack): how, who, from when."""

    kind: str = ""  # "" = none | sign-flip | scale | gaussian | label-flip | alie | ipm
    fraction: float = 0.0  # this share of clients.total attacks, drawn with the run seed ...
    clients: list[int] = field(default_factory=list)  # ... or exactly these clients
    scale: float = 0.0  # the attack's strength (0 = its default)
    start_round: int = 1  # the first round (1-based, as in metrics.jsonl) in which they attack

    def check(self, key):
        from fedhpc.attack import ATTACKS

        if not self.kind:
            _require(not self.fraction and not self.clients, f"{key}.kind",
                     f"must name an attack ({', '.join(ATTACKS)}) when {key}.fraction or {key}.clients is set")
            return
        _require(self.kind in ATTACKS, f"{key}.kind", f"is '{self.kind}'; choose one of: {', '.join(ATTACKS)}")
        _require(0 <= self.fraction <= 1, f"{key}.fraction", "must be in [0, 1]")
        _require(bool(self.fraction) != bool(self.clients), f"{key}.fraction",
                 f"or {key}.clients (not both) must say who attacks")
        _require(self.scale >= 0, f"{key}.scale", "must be >= 0 (0 = the attack's default)")
        _require(self.start_round >= 1, f"{key}.start_round", "must be >= 1")
        _require(not self.scale or self.kind != "label-flip", f"{key}.scale",
                 "plays no part in label-flip (its labels are mirrored): leave it 0")

    @property
    def omniscient(self) -> bool:
        """The attack forges its updates from the round's honest ones, on rank 0 (every update
        must then reach rank 0 whole: nothing is folded on the hosting ranks)."""
        from fedhpc.attack import ATTACKS, OmniscientAttack

        return bool(self.kind) and issubclass(ATTACKS[self.kind], OmniscientAttack)


#: what DP-FedAvg's sensitivity bound allows (uniform weights, a sum of clipped updates)
DP_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi")
DP_CODECS = ("none", "topk", "randk")  # a subset of a clipped update's values is still clipped


@dataclass
class LoraConfig:
    """LoRA adapters (``peft``) on an ``hf:`` model: only they are trained, sent and averaged."""

    r: int = 8  # the adapters' rank
    alpha: float = 16.0  # their scaling is alpha / r
    dropout: float = 0.0  # dropout on the adapters' input (seeded per client and round like all training)
    # the modules that get adapters (empty: peft's default for the model's type, e.g. q_proj and v_proj for
    # Llama and Qwen, c_attn for GPT-2)
    target_modules: list[str] = field(default_factory=list)

    def check(self, key):
        _require(self.r >= 1, f"{key}.r", "must be >= 1")
        _require(self.alpha > 0, f"{key}.alpha", "must be > 0")
        _require(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")


@dataclass
class StalenessConfig(PluginConfig):
    """The staleness weight of asynchronous aggregation (see fedhpc.staleness); its other keys are its parameters."""

    name: str = "polynomial"


@dataclass
class AsyncConfig:
    """Asynchronous aggregation (TOML section ``[async]``; see fedhpc.runtime.asynchronous):
    clients train continuously, each from the newest model, and the server applies their
    updates one at a time (fedasync) or every ``buffer`` of them (fedbuff), down-weighted
    by their staleness. ``rounds`` then counts server steps."""

    mode: Literal["sync", "fedasync", "fedbuff"] = "sync"
    concurrency: int = 0  # clients training at once; 0 = clients.per_round
    buffer: int = 10  # fedbuff: updates a server step applies (fedasync: 1)
    # the server's step size on a step's aggregate: fedasync's mixing weight (Xie et al. 2019),
    # fedbuff's server learning rate; 0 = the mode's default (0.6 for fedasync, 1 for fedbuff)
    alpha: float = 0.0
    max_staleness: int = 0  # refuse an update that started more than this many server steps ago (0 = never)
    staleness: StalenessConfig = field(default_factory=StalenessConfig)

    def check(self, key):
        _require(self.concurrency >= 0, f"{key}.concurrency", "must be >= 0 (0 = clients.per_round)")
        _require(self.buffer >= 1, f"{key}.buffer", "must be >= 1")
        _require(0 <= self.alpha <= 1, f"{key}.alpha", "must be in (0, 1] (0 = the mode's default)")
        _require(self.max_staleness >= 0, f"{key}.max_staleness", "must be >= 0 (0 = no limit)")

    @property
    def enabled(self) -> bool:
        return self.mode != "sync"

    @property
    def step_size(self) -> float:
        """``alpha``, or the mode's default."""
        return self.alpha or (0.6 if self.mode == "fedasync" else 1.0)

    @property
    def step_updates(self) -> int:
        """How many updates a server step applies."""
        return 1 if self.mode == "fedasync" else self.buffer


@dataclass
class CheckpointConfig:
    every: int = 0  # write a checkpoint every this many rounds (0 = only at the end and on a signal)
    keep: int = 3  # keep the newest K checkpoints

    def check(self, key):
        _require(self.every >= 0, f"{key}.every", "must be >= 0")
        _require(self.keep >= 1, f"{key}.keep", "must be >= 1")


@dataclass
class EvalConfig:
    every: int = 1
    max_samples: int = 0  # evaluate on a fixed seeded subset of this many test samples (0 = all)

    def check(self, key):
        _require(self.every >= 1, f"{key}.every", "must be >= 1")
        _require(self.max_samples >= 0, f"{key}.max_samples", "must be >= 0")


@dataclass
class RunConfig:
    seed: int = 0
    rounds: int = 50
    clock: Literal["wall", "simulated"] = "wall"
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    stragglers: StragglersConfig = field(default_factory=StragglersConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    fed_dropout: FedDropoutConfig = field(default_factory=FedDropoutConfig)
    submodels: SubmodelsConfig = field(default_factory=SubmodelsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    asynchronous: AsyncConfig = field(default_factory=AsyncConfig, metadata={"toml": "async"})  # a Python keyword

    def check(self, key):
        _require(1 <= self.rounds <= MAX_ROUNDS, "rounds", f"must be in [1, {MAX_ROUNDS}]")
        population = self.clients.total + (self.gateway.clients if self.gateway.enabled else 0)
        _require(self.clients.per_round <= population, "clients.per_round",
                 f"must be in [1, clients.total={self.clients.total}"
                 + (f" + gateway.clients={self.gateway.clients}]" if self.gateway.enabled else "]"))
        _require(self.seed >= 0, "seed", "must be >= 0")
        for key, ids in (("profiles.slow_clients", self.profiles.slow_clients), ("attack.clients", self.attack.clients),
                         ("faults.error_clients", self.faults.error_clients),
                         ("faults.corrupt_clients", self.faults.corrupt_clients),
                         ("faults.drop_at_keys", self.faults.drop_at_keys),
                         ("faults.drop_at_shares", self.faults.drop_at_shares),
                         ("faults.drop_at_unmask", self.faults.drop_at_unmask)):
            for c in ids:
                _require(0 <= c < self.clients.total, key, f"has client id {c}, not in [0, {self.clients.total})")
        _require(not self.stragglers.partial_work or self.stragglers.deadline_s > 0, "stragglers.partial_work",
                 "needs stragglers.deadline_s > 0 (a client's epochs are cut to what fits before the deadline)")
        _require(self.stragglers.fastest_k <= self.clients.per_round, "stragglers.fastest_k",
                 f"must be <= clients.per_round={self.clients.per_round}")
        if self.asynchronous.enabled:  # before DP's and secure aggregation's checks: it refuses both
            self._check_async()
        if self.dp.enabled:
            self._check_dp()
        if self.secagg.enabled:
            self._check_secagg()
        else:
            f = self.faults
            _require(not (f.drop_at_keys or f.drop_at_shares or f.drop_at_unmask), "faults.drop_at_keys",
                     "and faults.drop_at_shares and faults.drop_at_unmask need secagg.enabled = true")
        hf, text = bool(self.model.hf_path), self.data.name == "text"
        _require(hf == text or (text and bool(self.data.tokenizer)), "data.name" if hf else "model.name",
                 "must be 'text' with an hf: model (a language model reads token blocks)" if hf else
                 "must be an hf: model with data.name = 'text' (or set data.tokenizer)")
        sub = self.submodel_mode != "none"
        _require(self.submodels.mode != "random" or self.fed_dropout.rate > 0, "submodels.mode",
                 "'random' drops fed_dropout.rate of every hidden layer's units: set fed_dropout.rate > 0")
        _require(self.submodels.mode != "budget" or not self.fed_dropout.rate, "fed_dropout.rate",
                 "must be 0 with submodels.mode = 'budget' (the widths say how much each client drops)")
        _require(self.submodel_mode != "budget" or self.stragglers.deadline_s > 0, "stragglers.deadline_s",
                 "must be > 0 with submodels.mode = 'budget': each client's width is the widest whose round fits "
                 "the deadline")
        _require(not hf or not sub, self.submodel_key,
                 "must be off with an hf: model: its LoRA layers share their inputs with the frozen ones, so "
                 "dropping units would not make a smaller network")
        _require(not text or self.data.partition in ("iid", "natural"), "data.partition",
                 "must be 'iid' or 'natural' (one user per file) with data.name = 'text': its samples have no "
                 "class to split by")
        if self.attack.kind:
            _require(self.attack.start_round <= self.rounds, "attack.start_round",
                     f"is {self.attack.start_round}, after the run's last round ({self.rounds}): nobody would attack")
            self._check_attack()
        _require(not sub or self.strategy.name not in ROBUST_STRATEGIES, self.submodel_key,
                 f"must be off with the robust strategy '{self.strategy.name}' (sub-model updates have holes "
                 f"that a median or Krum would read as zeros); use fedavg, fedprox, weighted, fedadam or fedyogi")

    @property
    def submodel_mode(self) -> str:
        """How clients' sub-models are chosen: ``submodels.mode``, or "random" when
        ``fed_dropout.rate`` (its alias) is set."""
        return "random" if self.fed_dropout.rate else self.submodels.mode

    @property
    def submodel_key(self) -> str:
        """The key that turned sub-models on, for messages."""
        return "fed_dropout.rate" if self.fed_dropout.rate else "submodels.mode"

    @property
    def dp_min_clients(self) -> int:
        """With ``dp.placement = "client"``: the fewest survivors whose sum is released (their
        noise shares together are the whole noise); ``dp.min_clients``, or half the expected
        clients, rounded up."""
        return self.dp.min_clients or -(-self.round_size // 2)

    @property
    def round_size(self) -> int:
        """How many of the in-job clients a round selects (on average, with Poisson sampling)."""
        return min(self.clients.per_round, self.clients.total)

    def data_source(self) -> DataConfig:
        """``[data]`` as the loaders read it: a text dataset's tokenizer defaults to the hf: model's."""
        return dataclasses.replace(self.data, tokenizer=self.data.tokenizer or self.model.hf_path)

    def _check_attack(self) -> None:
        """An omniscient attack needs whole updates at rank 0; a defense refuses more attackers
        a round (on average) than it claims to tolerate."""
        from fedhpc.strategy import get_strategy

        if self.attack.omniscient:
            _require(not self.dp.enabled and self.submodel_mode == "none", "attack.kind",
                     f"'{self.attack.kind}' forges updates from the honest ones at rank 0, which needs whole "
                     f"updates: set dp.enabled = false, fed_dropout.rate = 0 and submodels.mode = 'none'")
        total, per_round = self.clients.total, self.round_size
        count = len(set(self.attack.clients)) if self.attack.clients else round(self.attack.fraction * total)
        attackers = math.ceil(count * per_round / total)
        try:
            why = get_strategy(self.strategy.name, **self.strategy.params).tolerates(attackers, per_round)
        except ValueError:
            return  # the strategy's own parameters are wrong: that error is reported where it is built
        _require(not why, "strategy.name",
                 f"refuses this attack: {why} ({count} of clients.total={total} attack, about {attackers} of the "
                 f"{per_round} clients a round)")

    @property
    def concurrency(self) -> int:
        """How many clients train at once in the asynchronous modes."""
        return self.asynchronous.concurrency or self.clients.per_round

    def _check_async(self) -> None:
        """What the asynchronous modes cannot do: close a round (there is none), sample rounds
        the way DP's accountant assumes, sum a fixed cohort under masks, or hand a rule that
        needs every update of a round a round, or draw a random number of clients."""
        from fedhpc.selection import get_selector
        from fedhpc.strategy import get_strategy

        mode = f"async.mode = '{self.asynchronous.mode}'"
        st = self.stragglers
        _require(not (st.deadline_s or st.fastest_k or st.partial_work), "stragglers.deadline_s",
                 f"and stragglers.fastest_k and stragglers.partial_work must be off with {mode}: there are no "
                 f"rounds to close, every update is applied when it arrives (down-weighted by its staleness)")
        _require(not self.dp.enabled, "dp.enabled",
                 f"must be false with {mode}: DP-FedAvg's accountant assumes Poisson-sampled rounds of a fixed "
                 f"expected size, which continuously training clients are not")
        _require(not self.secagg.enabled, "secagg.enabled",
                 f"must be false with {mode}: secure aggregation unmasks the sum of a fixed cohort, and an "
                 f"asynchronous step's updates come from clients that started at different times")
        _require(self.submodel_mode == "none", self.submodel_key, f"must be off with {mode} (not built yet)")
        _require(not self.attack.omniscient, "attack.kind",
                 f"'{self.attack.kind}' forges from a whole round's honest updates: not with {mode}")
        population = self.clients.total + (self.gateway.clients if self.gateway.enabled else 0)
        _require(self.concurrency <= population, "async.concurrency",
                 f"is {self.concurrency}, more than the {population} clients there are")
        try:
            decomposable = get_strategy(self.strategy.name, **self.strategy.params).decomposable
            exact = get_selector(self.selection.name, **self.selection.params).exact
        except ValueError:
            return  # a plugin's own parameters are wrong: that error is reported where it is built
        _require(exact, "selection.name",
                 f"'{self.selection.name}' draws a random number of clients: with {mode} each free slot takes one "
                 f"client (use random or adaptive)")
        _require(decomposable, "strategy.name",
                 f"'{self.strategy.name}' needs every update of a round: with {mode} use a sum-decomposable rule "
                 f"(fedavg, fedprox, weighted, fedadam, fedyogi)")

    def _check_secagg(self) -> None:
        """What secure aggregation needs: a sum (of several clients) to unmask, dense frames,
        and no server-side check that would need one client's update."""
        from fedhpc.compress import get_codec
        from fedhpc.strategy import get_strategy

        _require(self.clients.per_round >= 2, "clients.per_round",
                 "must be >= 2 with secagg.enabled: the sum of one client is that client's update")
        try:
            decomposable = get_strategy(self.strategy.name, **self.strategy.params).decomposable
            sparse = get_codec(self.codec.name, **self.codec.params).sparse
        except (KeyError, ValueError, TypeError):
            return  # a wrong strategy or codec is reported where it is built
        _require(decomposable, "strategy.name",
                 f"'{self.strategy.name}' needs every client's update, which secure aggregation hides: use a "
                 f"sum-decomposable rule (fedavg, fedprox, weighted, fedadam, fedyogi) with secagg.enabled")
        _require(not sparse, "codec.name",
                 f"'{self.codec.name}' sends the positions it keeps, which masking would reveal: use a dense codec "
                 f"(none, fp16, bf16, int8, int4) with secagg.enabled")
        _require(self.guard.norm_multiple == 0 and self.guard.norm_limit == 0, "guard.norm_multiple",
                 "and guard.norm_limit must be 0 with secagg.enabled: rank 0 cannot see one client's norm; bound "
                 "what clients send with dp.clip instead (the sum's range is checked after unmasking)")
        _require(self.submodel_mode == "none", self.submodel_key,
                 "must be off with secagg.enabled (sub-models under secure aggregation are not built yet)")
        _require(not self.attack.omniscient, "attack.kind",
                 f"'{self.attack.kind}' forges from the whole honest updates, which secure aggregation hides")
        _require(self.secagg.step_timeout_s < self.stragglers.timeout_s / 2, "secagg.step_timeout_s",
                 f"must be below half of stragglers.timeout_s = {self.stragglers.timeout_s:g}: rank 0 waits that long "
                 f"for each step, the gateway's wait for its workers included")

    def _check_dp(self) -> None:
        """What DP-FedAvg's guarantee relies on: Poisson sampling (what the accountant assumes),
        uniform weights over a fixed denominator and updates whose norm the clip bounds."""
        _require(self.dp.delta < 1 / self.clients.total, "dp.delta",
                 f"must be below 1 / clients.total = {1 / self.clients.total:.3g}")
        _require(self.selection.name == "poisson", "selection.name",
                 "must be 'poisson' with dp.enabled: the accountant assumes each client is sampled independently "
                 "with probability clients.per_round / clients.total")
        _require(not self.selection.params.get("trust"), "selection.trust",
                 "must be 0 with dp.enabled: leaving distrusted clients out changes the sampling the accountant "
                 "assumes")
        _require(self.strategy.name in DP_STRATEGIES, "strategy.name",
                 f"must be one of {', '.join(DP_STRATEGIES)} with dp.enabled: weighted, robust or loss-weighted "
                 f"rules break the sensitivity bound")
        _require(self.submodel_mode == "none", self.submodel_key,
                 "must be off with dp.enabled: sub-models' per-coordinate divisors break the sensitivity bound")
        _require(self.codec.name in DP_CODECS, "codec.name",
                 f"must be one of {', '.join(DP_CODECS)} with dp.enabled: a quantized update may decode above the "
                 f"clip")
        _require(not self.codec.error_feedback or self.codec.name == "none", "codec.error_feedback",
                 "must be false with dp.enabled: the residual would carry unclipped mass into later rounds")
        _require(self.stragglers.deadline_s == 0 and self.stragglers.fastest_k == 0, "stragglers",
                 "deadline_s and fastest_k must be 0 with dp.enabled: who makes the cut would change the sampling "
                 "the accountant assumes")
        _require(self.guard.norm_multiple == 0, "guard.norm_multiple",
                 "must be 0 with dp.enabled: the clip bounds every update, and a bound relative to the others' "
                 "norms would let one client's presence decide another's")
        _require(not self.gateway.enabled, "gateway.enabled",
                 "must be false with dp.enabled: remote workers come and go, which the sampling does not allow for")
        if self.dp.placement == "client":
            _require(self.secagg.enabled, "dp.placement",
                     "'client' needs secagg.enabled = true: without it rank 0 would see each update with only its "
                     "own share of the noise")
            _require(2 <= self.dp_min_clients <= self.round_size, "dp.min_clients",
                     f"must be in [2, {self.round_size}] (the expected clients a round): the sum of fewer would carry "
                     f"too little noise or be one client's update")
        _require(not (self.dp.adaptive_clip and self.secagg.enabled), "dp.adaptive_clip",
                 "must be false with secagg.enabled: each client's clipped bit would reach rank 0 outside the masked "
                 "sum")
        if self.dp.adaptive_clip:
            from fedhpc.privacy.adaptive import count_stddev, vector_noise_multiplier

            std = count_stddev(self.dp.clipped_count_stddev, self.round_size)
            try:
                vector_noise_multiplier(self.dp.noise_multiplier, std)
            except ValueError as exc:
                default = " = clients.per_round / 20, its default" if not self.dp.clipped_count_stddev else ""
                _require(False, "dp.clipped_count_stddev",
                         f"is too small ({std:g}{default}): {exc}, since the clipped count's noise and the update's "
                         f"share one budget; raise it or lower dp.noise_multiplier")
        if self.dp.target_epsilon:
            from fedhpc.privacy import Accountant

            first = Accountant(self.dp.noise_multiplier, self.dp.delta).epsilon(
                [self.round_size / self.clients.total])
            _require(first <= self.dp.target_epsilon, "dp.target_epsilon",
                     f"is {self.dp.target_epsilon:g}, but one round already costs epsilon {first:.3g} at delta "
                     f"{self.dp.delta:g}: raise dp.noise_multiplier, lower clients.per_round or raise the target")

    def to_dict(self) -> dict:
        """Plain nested dict, plugin params flattened back into their section."""
        return _to_plain(self)

    def to_toml(self) -> str:
        """The resolved config as TOML text (loadable by :func:`load_config_text`)."""
        return tomli_w.dumps(self.to_dict())

    def identity(self) -> dict:
        """The settings that define what a run computes: a checkpoint may only be
        resumed under a config with the same identity. Extending ``rounds``,
        checkpointing, evaluation and wall-clock safety bounds may change."""
        d = self.to_dict()
        for key in ("rounds", "checkpoint", "eval", "tracking"):
            d.pop(key, None)
        d["stragglers"].pop("timeout_s", None)
        d["clients"].pop("state_memory_mb", None)  # where state is kept, not what it is
        d["clients"].pop("state_dir", None)
        d["stragglers"].pop("close_grace_s", None)
        d["secagg"].pop("step_timeout_s", None)
        for key in ("listen", "token_file", "tls_cert", "tls_key", "client_ca", "calls_per_second", "heartbeat_s",
                    "min_workers", "wait_s", "stream_idle_s"):
            d["gateway"].pop(key, None)  # where and how workers connect, not what the run computes
        return d


ROBUST_STRATEGIES = ("median", "trimmed-mean", "krum", "bulyan", "geomedian", "centered-clipping")
MAX_INT = 2**63 - 1  # every integer of a config fits in int64 (HDF5 attributes, NumPy seeds)
MAX_FLOAT = 1e300  # and every float is finite: inf or NaN in a rate or a duration is always a mistake
MAX_SECONDS = 30 * 86400.0  # no wait of a run is longer than a month (sleep and timer APIs overflow near 1e9)
MAX_ROUNDS = 10**9


def _require(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {what}")


def _seconds(value: float, key: str, positive: bool = True) -> None:
    """A duration: > 0 (or >= 0) and at most MAX_SECONDS."""
    ok = (value > 0 if positive else value >= 0) and value <= MAX_SECONDS
    _require(ok, key, f"must be in {'(0' if positive else '[0'}, {MAX_SECONDS:.0f}] seconds, got {value}")


def _key(f: dataclasses.Field) -> str:
    """A field's TOML key: its name, unless that is a Python keyword (``[async]``)."""
    return f.metadata.get("toml", f.name)


def _to_plain(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out[_key(f)] = _to_plain(v)
        elif f.name == "params":
            out.update(v)
        elif v is not None:
            out[_key(f)] = v
    return out


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"config key '{key}' is {value!r}; allowed values: {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not abs(value) <= MAX_FLOAT:  # also NaN; an int beyond float range fails here, not in float()
            raise ConfigError(f"config key '{key}' must be a finite number of magnitude <= {MAX_FLOAT:g}, "
                              f"got {value!r}")
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool) and not abs(value) <= MAX_INT:
        raise ConfigError(f"config key '{key}' must be an integer of magnitude <= 2^63 - 1, got {value!r}")
    if tp is bool and isinstance(value, bool) or tp is not bool and isinstance(value, tp) and not isinstance(value, bool):
        return value
    raise ConfigError(f"config key '{key}' must be {tp.__name__}, got {value!r} ({type(value).__name__})")


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.')}' must be a table (section), got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {_key(f): f.name for f in dataclasses.fields(cls) if f.name != "params"}  # TOML key -> field
    kwargs: dict[str, Any] = {}
    extra = {k: v for k, v in raw.items() if k not in names}
    if extra and not issubclass(cls, PluginConfig):
        key = f"{prefix}{sorted(extra)[0]}"
        raise ConfigError(f"unknown config key '{key}'; allowed keys here: {', '.join(sorted(names))}")
    for key in names.keys() & raw.keys():
        name, tp, value = names[key], hints[names[key]], raw[key]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if issubclass(tp, PluginConfig) and isinstance(value, str):
                value = {"name": value}  # a plugin without parameters may be given by its name alone
            kwargs[name] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{key}")
    if issubclass(cls, PluginConfig):
        kwargs["params"] = extra
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check(prefix.rstrip("."))
    return obj


def _parse_toml(text: str, source: str) -> dict:
    """``tomllib.loads``, with every way it can fail as a ConfigError naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source} nests tables or arrays too deeply to be a fedhpc config") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits (Python's int conversion limit)
        raise ConfigError(f"{source} has a value fedhpc cannot read: {exc}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], parsed value); bare words are strings."""
    if "=" not in item:
        raise ConfigError(f"--set expects dotted.key=value, got '{item}'")
    key, text = item.split("=", 1)
    try:
        value = _parse_toml(f"v = {text}", f"--set {item}")["v"]
    except ConfigError as exc:
        if "is not valid TOML" not in str(exc):
            raise
        value = text  # a bare word
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML file (or the defaults when ``path`` is None), apply ``--set``
    overrides, validate, and check that the named plugins accept their params."""
    if path is None:
        return load_config_text("", overrides)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file '{path}' is a directory; give the TOML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not UTF-8 text (byte {exc.start}): is it a TOML file?") from None
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read: {exc.strerror or exc}") from None
    return load_config_text(text, overrides, source=f"config file '{path}'")


def load_config_text(text: str, overrides: Sequence[str] = (), source: str = "config") -> RunConfig:
    """Like :func:`load_config` for TOML text (e.g. the config stored in a checkpoint)."""
    raw = _parse_toml(text, source)
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: '{k}' is not a section")
        node[keys[-1]] = value
    cfg = _build(RunConfig, raw, "")
    _check_plugins(cfg)
    return cfg


def _check_plugins(cfg: RunConfig) -> None:
    from fedhpc.compress import get_codec
    from fedhpc.selection import get_selector
    from fedhpc.staleness import get_staleness
    from fedhpc.strategy import get_strategy

    plugins = [("codec", cfg.codec, get_codec), ("strategy", cfg.strategy, get_strategy),
               ("selection", cfg.selection, get_selector),
               ("async.staleness", cfg.asynchronous.staleness, get_staleness)]
    if cfg.gateway.codec.name:
        plugins.append(("gateway.codec", cfg.gateway.codec, get_codec))
    for section, plugin, factory in plugins:
        try:
            factory(plugin.name, **plugin.params)
        except ValueError as exc:
            raise ConfigError(f"config section [{section}]: {exc}") from None


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as TOML (loadable by :func:`load_config`)."""
    Path(path).write_text(cfg.to_toml())
