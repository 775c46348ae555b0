"""The gRPC gateway: stubs, security, limits, chunked streaming, and hybrid MPI + worker jobs."""

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import h5py
import numpy as np
import pytest

from conftest import MPIEXEC, fedhpc_run, metrics, mpi_env
from fedhpc.errors import ConfigError
from fedhpc.gateway import certs
from fedhpc.gateway import fedhpc_pb2 as pb
from fedhpc.gateway import fedhpc_pb2_grpc as pb_grpc
from fedhpc.gateway.server import CHUNK_BYTES, TOKEN_KEY, GatewayServer, Task, load_tokens
from fedhpc.gateway.stubs import HERE, generate
from fedhpc.secagg import SecAggClient
from fedhpc.update import Status, UpdateHeader, pack_update, unpack_update

JOB = 4242


@pytest.mark.unit
def test_committed_stubs_match_the_proto(tmp_path):
    for f in generate(tmp_path):
        assert f.read_text() == (HERE / f.name).read_text(), f"{f.name} is stale: run python -m fedhpc.gateway.stubs"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    certs.init(d, ["localhost", "127.0.0.1"])
    for name in ("w1", "w2"):
        certs.issue(d, name)
    other = d / "other"
    certs.init(other, ["localhost"])
    certs.issue(other, "intruder")
    return d


AUDIT = Path(__file__).with_name("secagg_audit.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gateway(pki):
    srv = GatewayServer(job_id=JOB, slots=[10, 11], config_toml="rounds = 1\n", tokens=load_tokens(pki / "tokens.txt"),
                        max_update_bytes=3 << 20, calls_per_second=200, heartbeat_s=0.2, max_samples=1000,
                        stream_idle_s=0.5)
    port = srv.start("127.0.0.1:0", str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem"))
    yield srv, f"127.0.0.1:{port}"
    srv.stop(0.5)


def channel(pki, addr, who="w1", ca_dir=None):
    ca_dir = ca_dir or pki
    creds = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes(), (ca_dir / f"{who}.key").read_bytes(),
                                         (ca_dir / f"{who}.pem").read_bytes())
    return grpc.secure_channel(addr, creds, options=[("grpc.max_receive_message_length", 2 * CHUNK_BYTES)])


def token(pki, who="w1"):
    return ((TOKEN_KEY, (pki / f"{who}.token").read_text().strip()),)


def register(stub, md, client=-1, samples=5):
    return stub.Register(pb.RegisterRequest(worker="t", requested_client=client, profile=pb.Profile(),
                                            num_samples=samples), metadata=md, timeout=10)


@pytest.mark.unit
def test_calls_without_or_with_a_wrong_token_are_refused(pki, gateway):
    srv, addr = gateway
    stub = pb_grpc.GatewayStub(channel(pki, addr))
    for md in ((), ((TOKEN_KEY, "x" * 40),)):
        with pytest.raises(grpc.RpcError) as exc:
            register(stub, md)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert register(stub, token(pki)).client_id == 10


@pytest.mark.unit
def test_a_certificate_from_another_ca_or_no_tls_cannot_connect(pki, gateway):
    srv, addr = gateway
    for ch in (channel(pki, addr, "intruder", pki / "other"), grpc.insecure_channel(addr)):
        with pytest.raises(grpc.RpcError) as exc:
            register(pb_grpc.GatewayStub(ch), token(pki))
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert srv.connected() == {}


@pytest.mark.unit
def test_slots_are_handed_out_and_run_out(pki, gateway):
    srv, addr = gateway
    s1 = pb_grpc.GatewayStub(channel(pki, addr, "w1"))
    s2 = pb_grpc.GatewayStub(channel(pki, addr, "w2"))
    assert register(s1, token(pki, "w1"), client=11).client_id == 11
    assert register(s2, token(pki, "w2")).client_id == 10
    assert register(s1, token(pki, "w1"), client=11).client_id == 11  # the same worker reconnecting
    with pytest.raises(grpc.RpcError) as exc:
        register(s1, token(pki, "w1"), client=10)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert sorted(srv.connected()) == [10, 11]


@pytest.mark.unit
def test_a_100_mb_model_and_update_stream_in_chunks(pki, gateway):
    srv, addr = gateway
    srv.max_update_bytes = 110 << 20
    stub = pb_grpc.GatewayStub(channel(pki, addr))
    md = token(pki)
    reg = register(stub, md)
    model = np.random.default_rng(0).standard_normal(25_000_000).astype(np.float32).tobytes()  # 100 MB
    srv.begin_round(3)
    assert srv.offer_task(Task(3, reg.client_id, 0.0, model))
    got = bytearray()
    for chunk in stub.GetTask(pb.TaskRequest(session=reg.session, wait_s=5), metadata=md, timeout=60):
        assert chunk.kind == pb.TaskChunk.TRAIN and len(chunk.data) <= CHUNK_BYTES
        got += chunk.data
    assert bytes(got) == model
    body = model[:100_000_000]
    update = pack_update(UpdateHeader(Status.OK, JOB, 3, reg.client_id, 5, 0.1, 0.0, 0.0, 0), body).tobytes()
    chunks = (pb.UpdateChunk(session=reg.session, round=3, data=update[a : a + CHUNK_BYTES])
              for a in range(0, len(update), CHUNK_BYTES))
    assert stub.PushUpdate(chunks, metadata=md, timeout=60).accepted
    client, rnd, data = srv.updates.get(timeout=5)
    assert (client, rnd) == (reg.client_id, 3) and data == update


def push(stub, session, rnd, data):
    return stub.PushUpdate(iter([pb.UpdateChunk(session=session, round=rnd, data=data)]), metadata=stub.md,
                           timeout=10)


@pytest.mark.unit
def test_bad_updates_are_refused_and_reported_as_the_clients_failure(pki, gateway):
    """Each refused push fails its client's open task: rank 0 gets a REJECTED failure saying why,
    never the update itself; a push without an open task is refused and reported to nobody."""
    srv, addr = gateway
    stub = pb_grpc.GatewayStub(channel(pki, addr))
    stub.md = token(pki)
    reg = register(stub, stub.md)
    srv.begin_round(1)

    def take_task():
        srv.offer_task(Task(1, reg.client_id, 0.0, b"\0" * 64))
        list(stub.GetTask(pb.TaskRequest(session=reg.session, wait_s=5), metadata=stub.md, timeout=10))

    def update(**kw):
        h = dict(status=Status.OK, job=JOB, round=1, client=reg.client_id, num_samples=5, loss=0.1, compute_s=0.0,
                 sim_s=0.0, body_len=0) | kw
        return pack_update(UpdateHeader(**h), b"payload").tobytes()

    flipped = bytearray(update())
    flipped[20] ^= 1  # a bit of the sample count
    cases = [(bytes(flipped), 1, "checksum"), (b"X" + update()[1:], 1, "not a fedhpc Update"),
             (update(job=1), 1, "job"), (update(client=99), 1, "claims client"),
             (update(round=2), 2, "not open"),
             (update(num_samples=5000), 1, "claims 5000 samples, the worker registered 5"),
             (update(status=Status.REJECTED), 1, "only the gateway")]
    for data, rnd, why in cases:
        take_task()
        assert why in push(stub, reg.session, rnd, data).reason
        client, r, failure = srv.updates.get(timeout=5)
        head, body = unpack_update(failure)
        assert (client, r, head.client, head.round, head.status) == (reg.client_id, 1, reg.client_id, 1,
                                                                      Status.REJECTED)
        assert why in bytes(body).decode()
    assert "not open" in push(stub, reg.session, 1, update()).reason  # no task open now: nothing reported
    assert srv.updates.empty()
    take_task()
    with pytest.raises(grpc.RpcError) as exc:
        push(stub, reg.session, 1, b"\0" * (4 << 20))  # over max_update_bytes (one chunk over 1 MiB is refused too)
    assert exc.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,)
    assert srv.updates.empty()
    assert push(stub, reg.session, 1, update()).accepted
    assert srv.updates.get(timeout=5)[2] == update()
    srv.end_round()
    assert "not open" in push(stub, reg.session, 1, update()).reason  # late: the round has closed


@pytest.mark.unit
def test_a_worker_must_declare_a_sample_count_within_the_cap(pki, gateway):
    srv, addr = gateway
    stub = pb_grpc.GatewayStub(channel(pki, addr))
    for samples in (0, 1001, 2**32 - 1):
        with pytest.raises(grpc.RpcError) as exc:
            register(stub, token(pki), samples=samples)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "gateway.max_samples" in exc.value.details()
    assert srv.connected() == {}
    register(stub, token(pki), samples=1000)
    assert srv.connected()[10].num_samples == 1000


@pytest.mark.unit
def test_rate_limit_per_worker(pki, gateway):
    srv, addr = gateway
    srv.limiter.rate, srv.limiter.burst = 2.0, 4.0
    stub = pb_grpc.GatewayStub(channel(pki, addr))
    codes = []
    for _ in range(12):
        try:
            stub.Heartbeat(pb.HeartbeatRequest(), metadata=token(pki), timeout=5)
            codes.append("ok")
        except grpc.RpcError as exc:
            codes.append(exc.code())
    assert codes[:3] == ["ok"] * 3 and grpc.StatusCode.RESOURCE_EXHAUSTED in codes


@pytest.mark.unit
def test_a_silent_worker_holding_a_task_is_reported_lost(pki, gateway):
    srv, addr = gateway
    stub = pb_grpc.GatewayStub(channel(pki, addr))
    reg = register(stub, token(pki))
    srv.begin_round(0)
    srv.offer_task(Task(0, reg.client_id, 0.0, b"\0" * 8))
    list(stub.GetTask(pb.TaskRequest(session=reg.session, wait_s=5), metadata=token(pki), timeout=10))
    time.sleep(0.7)  # > 3 heartbeats of 0.2 s
    assert srv.lost_clients() == [reg.client_id]
    assert srv.connected() == {}


@pytest.mark.unit
def test_a_token_is_bound_to_its_certificate_and_plays_one_slot(pki, gateway):
    srv, addr = gateway
    with pytest.raises(grpc.RpcError) as exc:  # w1's token with w2's certificate
        register(pb_grpc.GatewayStub(channel(pki, addr, "w2")), token(pki, "w1"))
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    s1 = pb_grpc.GatewayStub(channel(pki, addr, "w1"))
    assert register(s1, token(pki, "w1"), client=10).client_id == 10
    assert register(s1, token(pki, "w1"), client=11).client_id == 11  # replaces its session: one slot at a time
    assert sorted(srv.connected()) == [11]


@pytest.mark.unit
@pytest.mark.parametrize("field,value", [("samples_per_s", float("nan")), ("bandwidth_mbps", float("inf")),
                                         ("latency_ms", -1.0), ("memory_gb", float("-inf"))])
def test_a_profile_with_non_finite_or_negative_numbers_is_refused(pki, gateway, field, value):
    srv, addr = gateway
    stub, md = pb_grpc.GatewayStub(channel(pki, addr)), token(pki)
    bad = pb.Profile(**{field: value})
    with pytest.raises(grpc.RpcError) as exc:
        stub.Register(pb.RegisterRequest(worker="t", requested_client=-1, profile=bad, num_samples=5), metadata=md,
                      timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in exc.value.details()
    reg = register(stub, md)
    with pytest.raises(grpc.RpcError) as exc:
        stub.Heartbeat(pb.HeartbeatRequest(session=reg.session, profile=bad), metadata=md, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert all(np.isfinite(v) for p in srv.connected().values() for v in (p.samples_per_s, p.bandwidth_mbps))


@pytest.mark.unit
def test_guessing_tokens_locks_the_address_out_and_logs_a_line_not_a_flood(pki, gateway, caplog):
    from fedhpc.gateway.server import BAD_TOKENS_PER_PEER

    srv, addr = gateway
    stub = pb_grpc.GatewayStub(channel(pki, addr))
    with caplog.at_level("WARNING", logger="fedhpc.gateway"):
        for i in range(3 * BAD_TOKENS_PER_PEER):
            with pytest.raises(grpc.RpcError):
                register(stub, ((TOKEN_KEY, f"guess-{i:040d}"),))
        with pytest.raises(grpc.RpcError) as exc:  # now even the right token is refused from this address
            register(stub, token(pki))
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED and "locked out" in exc.value.details()
    refusals = [r.getMessage() for r in caplog.records if "refused a call" in r.getMessage()]
    assert len(refusals) == 2 and "127.0.0.1" in refusals[0] and "locked out" in refusals[1], refusals


@pytest.mark.unit
def test_stalled_uploads_from_one_token_cannot_take_the_gateway_offline(pki, gateway):
    """100 uploads that send one chunk and stall: at most STREAMS_PER_WORKER are served, each is
    cancelled once idle for stream_idle_s; another worker's calls go through all along."""
    import threading

    from fedhpc.gateway.server import STREAMS_PER_WORKER

    srv, addr = gateway
    evil, md = pb_grpc.GatewayStub(channel(pki, addr, "w1")), token(pki, "w1")
    reg = register(evil, md)
    release = threading.Event()

    def stalled():
        yield pb.UpdateChunk(session=reg.session, round=0, data=b"x" * 100)
        release.wait(30)

    calls = [evil.PushUpdate.future(stalled(), metadata=md, timeout=30) for _ in range(100)]
    honest, hmd = pb_grpc.GatewayStub(channel(pki, addr, "w2")), token(pki, "w2")
    hreg = register(honest, hmd)
    t0 = time.monotonic()
    for _ in range(5):
        honest.Heartbeat(pb.HeartbeatRequest(session=hreg.session), metadata=hmd, timeout=5)
    assert time.monotonic() - t0 < 5
    codes = [c.exception().code() for c in calls]  # every call ends, none waits for release
    release.set()
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 100 - STREAMS_PER_WORKER
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
    # the server's handlers leave a moment after their callers saw the cancellation
    deadline = time.monotonic() + 10
    while srv.streams["w1"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.updates.empty() and srv.streams["w1"] == 0


@pytest.mark.unit
def test_a_worker_registering_again_while_holding_a_task_fails_that_client_at_once(pki, gateway):
    srv, addr = gateway
    stub, md = pb_grpc.GatewayStub(channel(pki, addr)), token(pki)
    reg = register(stub, md)
    srv.begin_round(4)
    srv.offer_task(Task(4, reg.client_id, 0.0, b"\0" * 64))
    list(stub.GetTask(pb.TaskRequest(session=reg.session, wait_s=5), metadata=md, timeout=10))
    register(stub, md)
    client, rnd, data = srv.updates.get(timeout=5)
    head, body = unpack_update(data)
    assert (client, rnd, head.status) == (reg.client_id, 4, Status.ERROR) and b"registered again" in bytes(body)


# --- hybrid jobs: mpiexec with a gateway rank, workers as plain processes ---------------------


def job_config(tmp_path, pki, port, head: str, clients: int, min_workers: int, tail: str = "") -> Path:
    """A hybrid job's config: ``head`` (its rounds, clients, stragglers ...), a gateway on ``port``
    with ``clients`` remote slots under mutual TLS, then ``tail`` (more [gateway] keys, sections)."""
    cfg = tmp_path / "job.toml"
    cfg.write_text(f"""{head}
[gateway]
enabled = true
listen = "127.0.0.1:{port}"
clients = {clients}
min_workers = {min_workers}
wait_s = 90
token_file = "{pki}/tokens.txt"
tls_cert = "{pki}/server.pem"
tls_key = "{pki}/server.key"
client_ca = "{pki}/ca.pem"
{tail}""")
    return cfg


def start_job(cfg: Path, out: Path) -> subprocess.Popen:
    """``mpiexec -n 3 fedhpc run``: rank 0, one trainer rank, the gateway rank."""
    return subprocess.Popen([MPIEXEC, "-n", "3", sys.executable, "-m", "fedhpc", "run", "--config", str(cfg),
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env())


HYBRID = "rounds = 30\n[clients]\ntotal = 5\nper_round = 7\n[profiles]\nslow_clients = [0]\nslow_factor = 40.0\n" \
         "[stragglers]\ndeadline_s = 5.0"


def finish(job: subprocess.Popen, workers: list[subprocess.Popen]) -> str:
    """Wait for a hybrid job and its workers; each must exit 0. The job's stderr."""
    _, err = job.communicate(timeout=240)
    logs = [w.communicate(timeout=60)[0] for w in workers]
    assert job.returncode == 0, err[-4000:]
    assert all(w.returncode == 0 for w in workers), logs
    return err


def worker_args(pki, port, who, client, shard, *args) -> list[str]:
    """``fedhpc worker ...`` arguments of worker ``who`` playing ``client`` on ``shard`` of its data."""
    return ["worker", "--connect", f"127.0.0.1:{port}", "--token-file", str(pki / f"{who}.token"), "--ca",
            str(pki / "ca.pem"), "--cert", str(pki / f"{who}.pem"), "--key", str(pki / f"{who}.key"), "--name", who,
            "--client-id", str(client), "--shard", shard, "--retry-s", "20", *args]


def start_worker(pki, port, who, client, shard, *args, **env):
    return subprocess.Popen([sys.executable, "-m", "fedhpc", *worker_args(pki, port, who, client, shard, *args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=mpi_env(**env))


@pytest.mark.e2e
def test_hybrid_job_with_a_worker_that_dies_and_rejoins(pki, tmp_path):
    port = free_port()
    out = tmp_path / "run"
    job = start_job(job_config(tmp_path, pki, port, HYBRID, 2, 2, 'heartbeat_s = 1.0\n[gateway.codec]\n'
                                                                   'name = "topk-int8"\nratio = 0.1'), out)
    w1 = start_worker(pki, port, "w1", 5, "0/2")
    w2 = start_worker(pki, port, "w2", 6, "1/2")

    def lines():
        return len((out / "metrics.jsonl").read_text().splitlines()) if (out / "metrics.jsonl").exists() else 0

    deadline = time.monotonic() + 180
    while lines() < 4:
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.1)
    w2.send_signal(signal.SIGKILL)  # vanishes mid-run, maybe mid-round
    w2.wait()
    gone = lines()
    while lines() < gone + 2:  # a whole round without w2 (whenever the kill landed): its client misses it
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.1)
    w2 = start_worker(pki, port, "w2", 6, "1/2")
    _, err = job.communicate(timeout=240)
    assert job.returncode == 0, err[-4000:]
    assert w1.wait(timeout=60) == 0 and w2.wait(timeout=60) == 0, (w1.stdout.read(), w2.stdout.read())
    assert "gateway listening on 127.0.0.1" in err and "fingerprint" in err
    assert "remote client 5 joined" in err and "remote client 6 joined" in err
    m = metrics(out)
    assert len(m) == 30
    with h5py.File(out / "run.h5") as f:
        status = f["clients/status"][()]
    assert status.shape == (30, 7)
    killed = np.flatnonzero(status[:, 6] != 1)
    assert (killed >= 3).any()  # w2's client missed rounds after the kill (round 0 may miss as it warms up) ...
    assert status[-1, 6] == 1  # ... and was accepted again after rejoining
    assert (status[:, 5] == 1).sum() >= 20  # w1 kept working (a CPU-starved worker may miss a few)
    assert m[-1]["accuracy"] > 0.8
    # bytes down: the broadcast to the trainer and the gateway rank, plus each model the gateway streamed
    model_bytes = np.load(out / "final_weights.npy").nbytes
    relayed = [r["bytes_down"] - 2 * model_bytes for r in m]
    assert all(b % model_bytes == 0 and 0 <= b <= 2 * model_bytes for b in relayed), relayed
    assert sum(relayed) >= (status == 1)[:, 5:].sum() * model_bytes  # every remote report had a model sent


def no_mpi4py(tmp_path) -> dict:
    """Environment of a process in which ``import mpi4py`` fails, as on a host without MPI."""
    d = tmp_path / "no_mpi"
    d.mkdir(exist_ok=True)
    (d / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoMPI:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'mpi4py' or name.startswith('mpi4py.'):\n"
        "            raise ImportError('mpi4py is not installed on this host')\n"
        "sys.meta_path.insert(0, _NoMPI())\n")
    return {"PYTHONPATH": str(d)}


@pytest.mark.e2e
def test_the_worker_imports_and_runs_without_mpi4py(tmp_path):
    env = mpi_env(**no_mpi4py(tmp_path))
    blocked = subprocess.run([sys.executable, "-c", "import mpi4py"], capture_output=True, text=True, env=env)
    assert blocked.returncode != 0 and "mpi4py is not installed" in blocked.stderr  # the blocker works
    code = "import fedhpc.gateway.worker, fedhpc.runtime.step, fedhpc.update; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    proc = subprocess.run([sys.executable, "-m", "fedhpc", "worker", "--help"], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0 and "--connect" in proc.stdout, proc.stderr


@pytest.mark.e2e
def test_hybrid_federated_dropout_with_workers_that_have_no_mpi(pki, tmp_path):
    """Workers do federated dropout exactly as trainer ranks do (the same client step), so rank 0
    decodes their sub-model updates; the workers run where mpi4py cannot be imported."""
    port = free_port()
    out = tmp_path / "run"
    job = start_job(job_config(tmp_path, pki, port, "rounds = 4\n[clients]\ntotal = 5\nper_round = 7\n"
                                                     "[fed_dropout]\nrate = 0.5\n[model]\nhidden = [64]", 2, 2), out)
    workers = [start_worker(pki, port, w, 5 + i, f"{i}/2", **no_mpi4py(tmp_path)) for i, w in enumerate(("w1", "w2"))]
    err = finish(job, workers)
    with h5py.File(out / "run.h5") as f:
        status, up = f["clients/status"][()], f["clients/bytes_up"][()]
    assert (status[:, 5:] == 1).all(), (status, err[-3000:])  # every remote update was accepted
    full = 4 * (64 * 64 + 64 + 64 * 10 + 10)
    assert (up[:, 5:] < 0.6 * full + 200).all()  # sub-models, not the whole model
    assert "corrupt" not in err


def hostile_worker(pki, port, samples, attack, log):
    """A worker holding a valid token and certificate that pushes ``attack(round, model)`` as its
    update, well-formed (the job's codec, a sealed header), every round it is given a task."""
    from fedhpc.compress import get_codec
    from fedhpc.config import load_config_text
    from fedhpc.update import HEADER, seal_update

    ch = channel(pki, f"127.0.0.1:{port}", "w1")
    grpc.channel_ready_future(ch).result(timeout=120)
    stub, md = pb_grpc.GatewayStub(ch), token(pki, "w1")
    profile = pb.Profile(samples_per_s=1e4, memory_gb=1.0, bandwidth_mbps=1000.0, latency_ms=0.1)
    with pytest.raises(grpc.RpcError) as exc:  # "minus the model with 2^32-1 samples": refused at the door
        stub.Register(pb.RegisterRequest(worker="evil", requested_client=-1, profile=profile, num_samples=2**32 - 1), metadata=md,
                      timeout=30)
    log.append(exc.value.code())
    reg = stub.Register(pb.RegisterRequest(worker="evil", requested_client=-1, profile=profile, num_samples=samples), metadata=md,
                        timeout=30)
    cfg = load_config_text(reg.config_toml)
    codec = get_codec(cfg.codec.name, **cfg.codec.params)
    while True:
        chunks = list(stub.GetTask(pb.TaskRequest(session=reg.session, wait_s=2), metadata=md, timeout=30))
        if any(c.kind == pb.TaskChunk.STOP for c in chunks):
            return
        if not chunks or chunks[0].kind != pb.TaskChunk.TRAIN:
            continue
        rnd = chunks[0].round
        model = np.frombuffer(b"".join(c.data for c in chunks), dtype=np.float32)
        payload = codec.encode(attack(rnd, model), None, seed=rnd, headroom=HEADER.size)
        buf = seal_update(UpdateHeader(Status.OK, reg.job_id, rnd, reg.client_id, samples, 0.1), payload).tobytes()
        reply = stub.PushUpdate(iter([pb.UpdateChunk(session=reg.session, round=rnd, data=buf[a : a + CHUNK_BYTES])
                                      for a in range(0, len(buf), CHUNK_BYTES)]), metadata=md, timeout=30)
        log.append((rnd, reply.accepted))


@pytest.mark.e2e
def test_a_worker_with_a_valid_token_cannot_wreck_the_model(pki, tmp_path):
    """Absurd but finite updates (1e30) are refused as beyond the aggregation ring's range, a boosted
    "minus the model" (model replacement, -1000 w) by the default norm guard; "minus the model with 2^32-1 samples" by the sample cap; the
    model trains on as if the attacker were absent. (An unboosted -w with a plausible sample count is
    within 10x the honest norms: that is for the robust strategies to hold, not for a norm bound.)"""
    import threading

    port = free_port()
    out = tmp_path / "run"
    job = start_job(job_config(tmp_path, pki, port, "rounds = 10\n[clients]\ntotal = 6\nper_round = 7", 1, 1), out)
    log: list = []

    def attack(rnd, model):
        return np.full(model.size, 1e30, np.float32) if rnd % 2 == 0 else -1000 * model

    evil = threading.Thread(target=hostile_worker, args=(pki, port, 500, attack, log), daemon=True)
    evil.start()
    _, err = job.communicate(timeout=300)
    evil.join(timeout=60)
    assert job.returncode == 0, err[-4000:]
    assert log[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert [r for r, _ in log[1:]] == list(range(10)), log  # it was given every round's task ...
    with h5py.File(out / "run.h5") as f:
        status = f["clients/status"][()]
        failures = [json.loads(x) for x in f["rounds/failures"][()]]
    assert (status[:, 6] == 3).all()  # ... and every one of its updates failed
    assert [fl.get("overflow" if r % 2 == 0 else "norm") for r, fl in enumerate(failures)] == [1] * 10, failures
    assert (status[:, :6] == 1).all()
    assert err.count("update refused: update L2 norm") == 5
    assert err.count("beyond the aggregation range") == 5
    # the same six clients without an attacker (and without a gateway): bitwise the same model
    fedhpc_run(3, tmp_path / "clean", "rounds=10", "clients.total=6", "clients.per_round=6")
    assert np.load(out / "final_weights.npy").tobytes() == np.load(tmp_path / "clean" / "final_weights.npy").tobytes()


@pytest.mark.e2e
def test_a_worker_that_holds_its_task_in_silence_makes_rounds_time_out_not_the_job_die(pki, tmp_path):
    """It heartbeats (so it is not lost) but never pushes: every round runs into stragglers.timeout_s,
    the remote client is late, and the gateway rank waits for rank 0's close instead of giving up."""
    import threading

    port = free_port()
    out = tmp_path / "run"
    head = "rounds = 3\n[clients]\ntotal = 5\nper_round = 6\n[stragglers]\ntimeout_s = 3.0\nclose_grace_s = 2.0"
    job = start_job(job_config(tmp_path, pki, port, head, 1, 1, "heartbeat_s = 1.0"), out)
    done = threading.Event()

    def silent():
        ch = channel(pki, f"127.0.0.1:{port}", "w1")
        grpc.channel_ready_future(ch).result(timeout=120)
        stub, md = pb_grpc.GatewayStub(ch), token(pki, "w1")
        reg = register(stub, md)
        while not done.is_set():
            with contextlib.suppress(grpc.RpcError):
                list(stub.GetTask(pb.TaskRequest(session=reg.session, wait_s=0.5), metadata=md, timeout=5))
                stub.Heartbeat(pb.HeartbeatRequest(session=reg.session), metadata=md, timeout=5)

    t = threading.Thread(target=silent, daemon=True)
    t.start()
    try:
        _, err = job.communicate(timeout=180)
    finally:
        done.set()
    assert job.returncode == 0, err[-4000:]
    with h5py.File(out / "run.h5") as f:
        status = f["clients/status"][()]
    assert (status[:, 5] == 2).all() and (status[:, :5] == 1).all(), status
    assert all(r["round_seconds"] >= 3.0 for r in metrics(out))


@pytest.mark.unit
def test_certs_issue_gives_each_worker_slot_its_own_token_and_certificate(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    certs.init(tmp_path, ["localhost"])
    files = certs.issue_slots(tmp_path, "cloud", 3)
    assert len(files) == 9
    tokens = load_tokens(tmp_path / "tokens.txt")
    assert sorted(tokens.values()) == ["cloud-0", "cloud-1", "cloud-2"] and len(set(tokens)) == 3
    for k in range(3):
        cert = x509.load_pem_x509_certificate((tmp_path / f"cloud-{k}.pem").read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"cloud-{k}"
        assert tokens[(tmp_path / f"cloud-{k}.token").read_text().strip()] == f"cloud-{k}"
    with pytest.raises(ConfigError, match="has credentials already"):
        certs.issue_slots(tmp_path, "cloud", 2)


@pytest.mark.e2e
def test_a_lora_job_trains_a_remote_worker_on_its_own_text(pki, tmp_path):
    """The worker loads the same base from its disk and its own text with --tokenizer/--block, and
    sends adapters like the in-job clients."""
    from datafiles import write_text_users, write_tiny_llm

    model = write_tiny_llm(tmp_path / "model")
    text = write_text_users(tmp_path / "text", {"alice": 40, "bob": 30, "carol": 25})
    port = free_port()
    out = tmp_path / "run"
    head = (f'rounds = 3\n[clients]\ntotal = 2\nper_round = 3\n[model]\nname = "hf:{model}"\n[data]\n'
            f'name = "text"\nroot = "{text}"\npartition = "natural"\nblock = 16')
    job = start_job(job_config(tmp_path, pki, port, head, 1, 1), out)
    worker = start_worker(pki, port, "w1", 2, "0/1", "--data", "text", "--data-root", str(text / "carol.txt"),
                          "--tokenizer", str(model), "--block", "16")
    _, err = job.communicate(timeout=240)
    assert job.returncode == 0, err[-4000:]
    assert worker.wait(timeout=60) == 0, worker.stdout.read()
    with h5py.File(out / "run.h5") as f:
        assert (f["clients/status"][()] == 1).all()  # both in-job clients and the remote one, every round
    assert all(r["clients_reported"] == 3 and r["perplexity"] is not None for r in metrics(out))


@pytest.mark.unit
def test_a_worker_answers_only_its_own_open_secure_aggregation_step(pki, gateway):
    """Keys, shares or reveals in another client's name, of the wrong sizes, for a step never
    handed out, or a second time, are refused; the refusal reaches the gateway rank as that
    client's error, so it drops out of the step rather than poisoning it."""
    srv, addr = gateway
    stub = pb_grpc.GatewayStub(channel(pki, addr))
    md = token(pki)
    reg = register(stub, md)
    me = reg.client_id
    srv.begin_round(3)

    def step(kind, **fields):
        srv.offer_task(Task(3, me, step=pb.TaskChunk(kind=kind, round=3, client_id=me, **fields)))
        [chunk] = list(stub.GetTask(pb.TaskRequest(session=reg.session, wait_s=5), metadata=md, timeout=10))
        assert chunk.kind == kind
        return chunk

    def answer(kind, **fields):
        return stub.SecAgg(pb.SecAggAnswer(session=reg.session, round=3, step=kind, **fields), metadata=md, timeout=10)

    keys = SecAggClient(3, me).keys()
    mine = pb.SecAggKeys(client=me, cipher=keys.cipher, mask=keys.mask, self_digest=keys.self_digest)
    assert "no step" in answer(pb.TaskChunk.SECAGG_KEYS, keys=mine).reason  # nothing handed out yet
    step(pb.TaskChunk.SECAGG_KEYS)
    theirs = pb.SecAggKeys(client=me + 1, cipher=keys.cipher, mask=keys.mask, self_digest=keys.self_digest)
    reply = answer(pb.TaskChunk.SECAGG_KEYS, keys=theirs)
    assert not reply.accepted and f"only client {me}'s 32-byte keys" in reply.reason
    got = srv.answers.get(timeout=5)
    assert got.client == me and got.keys is None and "refused" in got.error
    assert "no step" in answer(pb.TaskChunk.SECAGG_KEYS, keys=mine).reason  # answered once: closed
    step(pb.TaskChunk.SECAGG_KEYS)
    assert answer(pb.TaskChunk.SECAGG_KEYS, keys=mine).accepted
    assert srv.answers.get(timeout=5).keys == keys
    step(pb.TaskChunk.SECAGG_SHARE, neighbours=[mine], threshold=1)
    forged = pb.SecAggShare(sender=me + 1, recipient=me, ciphertext=bytes(160))
    assert "each must be client" in answer(pb.TaskChunk.SECAGG_SHARE, shares=[forged]).reason
    assert "each must be client" in srv.answers.get(timeout=5).error
    step(pb.TaskChunk.SECAGG_UNMASK, survivors=[me, me + 1])
    too_many = [pb.SecAggReveal(sender=me, owner=me, secret=0, share=bytes(66), view=bytes(32))] * 3
    assert "3 reveals (at most 2)" in answer(pb.TaskChunk.SECAGG_UNMASK, reveals=too_many).reason
    assert "3 reveals" in srv.answers.get(timeout=5).error
    step(pb.TaskChunk.SECAGG_UNMASK, survivors=[me, me + 1])
    assert answer(pb.TaskChunk.SECAGG_UNMASK, reveals=too_many[:1]).accepted
    assert len(srv.answers.get(timeout=5).reveals) == 1


@pytest.mark.e2e
def test_secure_aggregation_with_remote_workers_gives_the_same_bits(pki, tmp_path):
    """Two workers mask their updates themselves (the gateway relays masked inputs and sealed
    shares only); every client reports every round, so the run equals the same hybrid run
    without secure aggregation, bit for bit."""
    head = "rounds = 3\nseed = 5\n[clients]\ntotal = 5\nper_round = 7\n[local]\nepochs = 1\n[guard]\nnorm_multiple = 0"
    runs = {}
    for name, extra in (("plain", ""), ("secure", "\n[secagg]\nenabled = true")):
        port = free_port()
        out = tmp_path / name
        d = tmp_path / name / "cfg"
        d.mkdir(parents=True)
        job = start_job(job_config(d, pki, port, head + extra, 2, 2), out)
        workers = [start_worker(pki, port, w, 5 + i, f"{i}/2") for i, w in enumerate(("w1", "w2"))]
        err = finish(job, workers)
        with h5py.File(out / "run.h5") as f:
            assert (f["clients/status"][()] == 1).all(), err[-3000:]
        runs[name] = out
    m = metrics(runs["secure"])
    assert all(r["secagg_error"] is None and r["secagg_bytes"] > 0 for r in m)
    assert np.load(runs["secure"] / "final_weights.npy").tobytes() == \
        np.load(runs["plain"] / "final_weights.npy").tobytes()


@pytest.mark.e2e
def test_neither_rank0_nor_the_gateway_ever_holds_a_remote_workers_update(pki, tmp_path):
    """Instrumented (tests/secagg_audit.py): every Update the gateway rank hands on, and every
    account rank 0 gets, against each worker's update as it was before the worker masked it."""
    audit, out, port = tmp_path / "audit", tmp_path / "run", free_port()
    cfg = job_config(tmp_path, pki, port, "rounds = 2\n[clients]\ntotal = 5\nper_round = 7\n[local]\nepochs = 1\n"
                                          "[guard]\nnorm_multiple = 0\n[secagg]\nenabled = true", 2, 2)
    job = subprocess.Popen([MPIEXEC, "-n", "3", sys.executable, "-m", "mpi4py", str(AUDIT), str(audit), "run",
                            "--config", str(cfg), "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=mpi_env())
    workers = [subprocess.Popen([sys.executable, str(AUDIT), str(audit), *worker_args(pki, port, w, 5 + i, f"{i}/2")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=mpi_env())
               for i, w in enumerate(("w1", "w2"))]
    finish(job, workers)
    plain = {k: v for w in ("w1", "w2") for k, v in np.load(audit / f"worker-{w}.npz").items()}
    handed = {k: v for k, v in np.load(audit / "rank2.npz").items() if k.startswith("handed-")}  # the gateway
    at0 = dict(np.load(audit / "rank0.npz"))
    assert len(plain) == 4 and set(handed) == {k.replace("plain-", "handed-") for k in plain}
    assert not any(k.startswith("update-") for k in at0)  # rank 0 got accounts only ...
    assert not np.isfinite([v[0] for k, v in at0.items() if k.startswith("norm-")]).any()  # ... without norms
    for key, body in handed.items():
        y, q = body[:-4].view("<i8"), plain[key.replace("handed-", "plain-")]
        assert y.size == q.size and not np.array_equal(y, q)
        assert np.mean(np.abs(y.astype(np.float64)) > 2.0**62) > 0.4  # uniform over the ring
        assert np.mean(np.abs(q.astype(np.float64)) > 2.0**62) == 0
        for other in plain.values():
            assert np.count_nonzero(y == other) < 5


@pytest.mark.e2e
def test_remote_workers_train_the_width_rank0_gives_them(pki, tmp_path):
    """Budget sub-models with widths of at most a half: every client, the workers' included, is
    given a width (the task carries it), trains that sub-model and sends exactly its slice, which
    rank 0 maps back. Which width a worker gets depends on its measured throughput, which on the
    wall clock may not have come yet in the first round (then it is the slowest possible host and
    gets the narrowest): the test checks each client's bytes against its own width, whichever."""
    port = free_port()
    out = tmp_path / "run"
    job = start_job(job_config(tmp_path, pki, port, "rounds = 3\n[clients]\ntotal = 5\nper_round = 7\n"
                                                     "[stragglers]\ndeadline_s = 60.0\n[model]\nhidden = [64]\n"
                                                     "[submodels]\nmode = \"budget\"\nwidths = [0.5, 0.25]", 2, 2),
                    out)
    workers = [start_worker(pki, port, w, 5 + i, f"{i}/2") for i, w in enumerate(("w1", "w2"))]
    err = finish(job, workers)
    with h5py.File(out / "run.h5") as f:
        status, up, width = f["clients/status"][()], f["clients/bytes_up"][()], f["clients/width"][()]
    assert (status == 1).all() and np.isin(width, [0.5, 0.25]).all(), (status, width, err[-3000:])
    units = np.ceil(64 * width)
    values = 64 * units + units + units * 10 + 10  # the slice of MLP 64-64-10 each client trained
    assert (4 * values < up).all() and (up < 4 * values + 200).all(), (up, width)  # float32, plus framing


@pytest.mark.e2e
def test_remote_workers_train_continuously_in_an_asynchronous_run(pki, tmp_path):
    """FedBuff on the simulated clock with every client training at once, the two workers'
    included: the gateway hands each worker task after task (each from the model version of its
    start, under the WAN codec), and the workers' updates are applied with the staleness they
    have; the run is the same bits when repeated (remote work included, on the simulated clock)."""
    head = ("rounds = 8\nseed = 4\nclock = \"simulated\"\n[clients]\ntotal = 5\nper_round = 7\n[local]\nepochs = 1\n"
            "[async]\nmode = \"fedbuff\"\nbuffer = 3")
    runs = []
    for name in ("a", "b"):
        port, out = free_port(), tmp_path / name / "run"
        d = tmp_path / name
        d.mkdir()
        job = start_job(job_config(d, pki, port, head, 2, 2, '[gateway.codec]\nname = "topk-int8"\nratio = 0.2'),
                        out)
        workers = [start_worker(pki, port, w, 5 + i, f"{i}/2") for i, w in enumerate(("w1", "w2"))]
        err = finish(job, workers)
        runs.append(out)
    m = metrics(runs[0])
    assert len(m) == 8 and all(r["clients_reported"] == 3 and r["clients_failed"] == 0 for r in m), err[-3000:]
    with h5py.File(runs[0] / "run.h5") as f:
        status = f["clients/status"][()]
    assert (status[:, 5:] == 1).any(axis=0).all()  # each worker's updates were applied
    assert max(r["staleness_max"] for r in m) >= 1  # and the steps applied stale updates too
    assert np.load(runs[0] / "final_weights.npy").tobytes() == np.load(runs[1] / "final_weights.npy").tobytes()
