"""``fedhpc worker``: an external worker that joins a job through its gateway.

A plain process, no MPI (nothing it imports needs mpi4py): it registers with
a profile of its host and the number of samples it trains on, long-polls for
tasks, turns the model it is sent into an Update with the same client step
as a trainer rank (:class:`~fedhpc.runtime.step.ClientStep`: federated
dropout, partial work, error feedback and faults included), streams it back,
and repeats until the job ends. It reconnects with exponential backoff when
the link drops; a refused credential is fatal and says so.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from fedhpc.clock import make_clock
from fedhpc.config import DataConfig, load_config_text
from fedhpc.data import load_dataset
from fedhpc.errors import ConfigError
from fedhpc.gateway import fedhpc_pb2 as pb
from fedhpc.gateway import fedhpc_pb2_grpc as pb_grpc
from fedhpc.gateway.server import CHUNK_BYTES, TOKEN_KEY
from fedhpc.models import Layout, build_model
from fedhpc.runtime.context import simulated_profiles
from fedhpc.runtime.step import ClientStep, ClientTask
from fedhpc.runtime.training import host_memory_gb
from fedhpc.secagg import PublicKeys, SealedShare, SecAggClient, SecAggError
from fedhpc.update import Status, failure_update

log = logging.getLogger("fedhpc.worker")
FATAL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)


class Worker:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.token = Path(args.token_file).read_text().strip()
        self.metadata = ((TOKEN_KEY, self.token),)
        options = [("grpc.max_receive_message_length", 2 * CHUNK_BYTES),
                   ("grpc.max_send_message_length", 2 * CHUNK_BYTES)]
        if args.ca:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(args.ca).read_bytes(),
                private_key=Path(args.key).read_bytes() if args.key else None,
                certificate_chain=Path(args.cert).read_bytes() if args.cert else None)
            self.channel = grpc.secure_channel(args.connect, creds, options=options)
        else:
            log.warning("no --ca: connecting WITHOUT TLS; the token travels in clear")
            self.channel = grpc.insecure_channel(args.connect, options=options)
        self.stub = pb_grpc.GatewayStub(self.channel)
        k, n = (int(v) for v in args.shard.split("/"))
        if not 0 <= k < n:
            raise ValueError(f"--shard {args.shard}: need 0 <= K < N")
        self.shard = (k, n)
        self.step: ClientStep | None = None  # built at the first registration, kept across reconnections
        self.played = -1  # the client id self.step trains
        self.secure: SecAggClient | None = None  # secure aggregation: this client's side of the round
        self.secure_error = ""  # why it cannot go on this round
        self.session = ""

    # -- setup -----------------------------------------------------------------
    def register(self) -> None:
        if self.args.data == "text" and not (self.args.tokenizer and self.args.block >= 1):
            raise ConfigError("--data text needs --tokenizer DIR (the job's hf: model directory) and --block N >= 1 "
                              "(the job's data.block)")
        data = load_dataset(DataConfig(name=self.args.data, root=self.args.data_root, tokenizer=self.args.tokenizer,
                                       block=self.args.block))
        order = np.random.default_rng(0).permutation(len(data.y_train))
        self.indices = np.sort(np.array_split(order, self.shard[1])[self.shard[0]])
        grpc.channel_ready_future(self.channel).result(timeout=30)
        profile = self.probe_link()
        reply = self.stub.Register(pb.RegisterRequest(worker=self.args.name, requested_client=self.args.client_id,
                                                      profile=profile, num_samples=len(self.indices)),
                                   metadata=self.metadata, timeout=30)
        self.session, self.client, self.job = reply.session, reply.client_id, reply.job_id
        cfg = load_config_text(reply.config_toml, source="the gateway's run config")
        if self.args.data == "text" and self.args.block != cfg.data.block:
            raise ConfigError(f"--block {self.args.block} is not the job's data.block = {cfg.data.block}")
        self.cfg = cfg
        wan = cfg.gateway.codec if cfg.gateway.codec.name else cfg.codec
        # the error-feedback residual outlives a reconnection to the same job and client
        if self.step is None or (self.step.job_id, self.played) != (self.job, self.client):
            model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed, cfg.lora)
            self.layout = Layout(model)
            self.step = ClientStep(cfg, self.job, model, self.layout, data.x_train, data.y_train, wan,
                                   make_clock(cfg.clock))
            self.played = self.client
        self.profile = simulated_profiles(cfg, [self.client]).record(self.client)
        # the training throughput needs the job's model, known only now: send it with a heartbeat
        profile.samples_per_s = self.measure_throughput()
        self.stub.Heartbeat(pb.HeartbeatRequest(session=self.session, profile=profile), metadata=self.metadata,
                            timeout=30)
        log.info("registered as client %d of job %d (%d samples, codec %s, %.0f samples/s, %.1f Mbit/s)",
                 self.client, self.job, len(self.indices), wan.name, profile.samples_per_s, profile.bandwidth_mbps)

    def client_step(self) -> ClientStep:
        """The client step built at registration."""
        if self.step is None:
            raise RuntimeError("the worker has not registered yet")
        return self.step

    def probe_link(self) -> pb.Profile:
        """Latency from an empty echo, bandwidth from a 256 KiB echo, and this host's memory."""
        def echo(n: int) -> float:
            t0 = time.perf_counter()
            self.stub.Heartbeat(pb.HeartbeatRequest(payload=bytes(n)), metadata=self.metadata, timeout=30)
            return time.perf_counter() - t0

        rtt = min(echo(0) for _ in range(3))
        big = min(echo(1 << 18) for _ in range(2))
        return pb.Profile(memory_gb=host_memory_gb(), latency_ms=rtt / 2 * 1e3,
                          bandwidth_mbps=2 * (1 << 18) * 8 / max(big - rtt, 1e-6) / 1e6)

    def measure_throughput(self) -> float:
        """Samples per second of local training on a few batches (the weights are left alone)."""
        local = self.client_step().local
        n = min(len(self.indices), 4 * self.cfg.local.batch_size)
        weights = self.layout.flatten(local.model)
        t0 = time.perf_counter()
        local.train(self.indices[:n], weights, 0, self.client, 0.0, lambda: False, epochs=1)
        return n / max(time.perf_counter() - t0, 1e-9)

    # -- the loop ----------------------------------------------------------------
    def serve(self) -> None:
        """Work until the job stops (returns) or the link fails (raises grpc.RpcError)."""
        beat = threading.Event()
        beating = threading.Thread(target=self._heartbeat, args=(beat,), daemon=True)
        beating.start()
        try:
            while True:
                chunks = self.stub.GetTask(pb.TaskRequest(session=self.session, wait_s=10.0),
                                           metadata=self.metadata, timeout=60)
                first, model = None, bytearray()
                for c in chunks:
                    if c.kind == pb.TaskChunk.STOP:
                        log.info("the job is over")
                        return
                    if c.kind == pb.TaskChunk.IDLE:
                        break
                    if c.kind != pb.TaskChunk.TRAIN:  # a step of secure aggregation: one chunk
                        self.secagg_step(c)
                        break
                    first = first or c
                    model += c.data
                if first is not None:
                    self.train(first, bytes(model))
        finally:
            beat.set()
            beating.join(timeout=15)  # no gRPC call may outlive the channel (it aborts the process)

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.cfg.gateway.heartbeat_s):
            try:
                self.stub.Heartbeat(pb.HeartbeatRequest(session=self.session), metadata=self.metadata, timeout=10)
            except grpc.RpcError:
                pass  # the main loop notices a dead link and reconnects

    def secagg_step(self, c: pb.TaskChunk) -> None:
        """Take one step of the round's secure aggregation and answer it (the routed shares
        need no answer: the model to train follows)."""
        answer = pb.SecAggAnswer(session=self.session, round=c.round, step=c.kind)
        try:
            if c.kind == pb.TaskChunk.SECAGG_KEYS:
                self.secure, self.secure_error = SecAggClient(c.round, self.client), ""
                k = self.secure.keys()
                answer.keys.CopyFrom(pb.SecAggKeys(client=k.client, cipher=k.cipher, mask=k.mask,
                                                   self_digest=k.self_digest))
            else:
                if self.secure is None or self.secure.round != c.round:
                    raise SecAggError(f"client {self.client} holds no keys of round {c.round}")
                if c.kind == pb.TaskChunk.SECAGG_SHARE:
                    keys = [PublicKeys(k.client, k.cipher, k.mask, k.self_digest) for k in c.neighbours]
                    answer.shares.extend(pb.SecAggShare(sender=x.sender, recipient=x.recipient,
                                                        ciphertext=x.ciphertext)
                                         for x in self.secure.share(keys, c.threshold))
                elif c.kind == pb.TaskChunk.SECAGG_ROUTED:
                    self.secure.receive([SealedShare(x.sender, x.recipient, x.ciphertext) for x in c.inbox],
                                        c.sharers)
                    return
                elif c.kind == pb.TaskChunk.SECAGG_UNMASK:
                    answer.reveals.extend(pb.SecAggReveal(sender=x.sender, owner=x.owner, secret=int(x.secret),
                                                          share=x.share, view=x.view)
                                          for x in self.secure.reveal(c.survivors, c.dropped))
                else:
                    raise SecAggError(f"unknown task kind {c.kind}: is the gateway newer than this worker?")
        except SecAggError as exc:
            log.warning("round %d: secure aggregation: %s", c.round, exc)
            if c.kind == pb.TaskChunk.SECAGG_ROUTED:
                self.secure_error = str(exc)  # said when the model comes: the client fails the round
                return
            answer = pb.SecAggAnswer(session=self.session, round=c.round, step=c.kind, error=str(exc))
        reply = self.stub.SecAgg(answer, metadata=self.metadata, timeout=30)
        if not reply.accepted:
            log.warning("round %d: the gateway refused the secure aggregation answer: %s", c.round, reply.reason)

    def train(self, task: pb.TaskChunk, model: bytes) -> None:
        start = time.monotonic()  # the model just arrived: the origin of the partial-work cutoff
        if len(model) != 4 * self.layout.size:
            raise ValueError(f"the job's model has {len(model) // 4} parameters but the model built for this "
                             f"worker's data ({self.args.data}) has {self.layout.size}: use data of the same shape")
        weights = np.frombuffer(model, dtype=np.float32)
        step = self.client_step()
        step.begin_round()
        secure = None
        if self.cfg.secagg.enabled:  # the update leaves masked, weighed as rank 0 weighs it
            secure, step.scale = self.secure, task.coef_scale
            if secure is None or secure.round != task.round or self.secure_error:
                why = self.secure_error or f"no secure aggregation keys of round {task.round}"
                self.push(task.round, failure_update(Status.ERROR, self.job, task.round, self.client, why))
                return
        frame = step.run(ClientTask(task.round, task.client_id, task.mu, width=task.width or 1.0), weights,
                         self.indices, self.profile, lambda: False, start, secure)
        self.push(task.round, frame)

    def push(self, round_: int, frame: np.ndarray) -> None:
        """Stream one sealed Update to the gateway."""
        buf = frame.tobytes()
        chunks = (pb.UpdateChunk(session=self.session, round=round_, data=buf[a : a + CHUNK_BYTES])
                  for a in range(0, len(buf), CHUNK_BYTES))
        reply = self.stub.PushUpdate(chunks, metadata=self.metadata, timeout=120)
        if reply.accepted:
            log.info("round %d: update sent (%d bytes)", round_, len(buf))
        else:
            log.warning("round %d: the gateway refused the update: %s", round_, reply.reason)


def run_worker(args: argparse.Namespace) -> int:
    """Register and serve, reconnecting with backoff; 0 when the job ends, 2 when refused or misconfigured,
    1 on giving up."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [worker {args.name}] %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    worker = Worker(args)
    delay, lost_since = 1.0, None
    while True:
        try:
            worker.register()
            delay, lost_since = 1.0, None
            worker.serve()
            worker.channel.close()
            return 0
        except ConfigError as exc:  # its data, or its data against the job's config: no retry helps
            log.error("%s", exc)
            return 2
        except grpc.FutureTimeoutError:
            reason = f"cannot reach the gateway at {args.connect} (or the TLS handshake failed: check --ca/--cert)"
        except grpc.RpcError as exc:
            if exc.code() in FATAL:
                log.error("the gateway refused this worker: %s: %s", exc.code().name, exc.details())
                return 2
            reason = f"{exc.code().name}: {exc.details()}"
        lost_since = lost_since or time.monotonic()
        if time.monotonic() - lost_since > args.retry_s:
            log.error("giving up after %.0fs without the gateway (%s)", args.retry_s, reason)
            return 1
        log.warning("link to the gateway lost (%s); retrying in %.0fs", reason, delay)
        time.sleep(delay)
        delay = min(2 * delay, 30.0)
