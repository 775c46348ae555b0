"""The gateway's gRPC server: registration, tasks, updates, liveness, security.

It knows nothing of MPI: :class:`GatewayServer` is driven by the gateway rank
(:mod:`fedhpc.gateway.rank`) through :meth:`~GatewayServer.offer_task`, its
``updates`` queue and friends, so it can also be exercised on its own in tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import queue
import secrets
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import grpc

from fedhpc.errors import ConfigError, CorruptUpdateError
from fedhpc.gateway import fedhpc_pb2 as pb
from fedhpc.gateway import fedhpc_pb2_grpc as pb_grpc
from fedhpc.runtime.messages import RemoteProfile
from fedhpc.secagg import PublicKeys, Reveal, SealedShare, Secret
from fedhpc.secagg.client import SEALED_BYTES
from fedhpc.secagg.shamir import SHARE_BYTES
from fedhpc.update import MAX_REASON_BYTES, Status, failure_update, unpack_update

log = logging.getLogger("fedhpc.gateway")

CHUNK_BYTES = 1 << 20  # well under gRPC's 4 MiB default, framing included
TOKEN_KEY = "x-fedhpc-token"
STREAMS_PER_WORKER = 4  # open GetTask/PushUpdate streams one worker may hold (an honest one holds 1, 2 reconnecting)
BAD_TOKENS_PER_PEER = 10  # failed authentications from one address ...
LOCKOUT_S = 60.0  # ... within this long lock that address out for as long


def load_tokens(path: str | Path) -> dict[str, str]:
    """token -> worker name, from lines ``name token`` (``#`` comments allowed)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"gateway token file {path} cannot be read: {exc}") from None
    tokens = {}
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[1]) < 16:
            raise ConfigError(f"{path}:{n}: expected 'worker-name token' with a token of >= 16 characters")
        tokens[parts[1]] = parts[0]
    if not tokens:
        raise ConfigError(f"gateway token file {path} holds no tokens")
    return tokens


CLOSED, ANY = -1, -2  # GatewayServer.open_round: no round open; every task (asynchronous modes)


@dataclass
class Task:
    """What a worker is handed: a round's model to train (with the coefficient scale under
    secure aggregation, and its sub-model's width), or, with ``step``, one step of secure
    aggregation."""

    round: int
    client: int
    mu: float = 0.0
    model: bytes = b""
    scale: float = 0.0
    width: float = 1.0  # sub-models: the fraction of every hidden layer it trains
    step: pb.TaskChunk | None = None


@dataclass(frozen=True)
class Answer:
    """A worker's answer to a step of secure aggregation, as typed messages: its keys, its
    sealed shares, its reveals, or why it could not take the step (``error``)."""

    client: int
    round: int
    step: int
    keys: PublicKeys | None = None
    shares: tuple[SealedShare, ...] = ()
    reveals: tuple[Reveal, ...] = ()
    error: str = ""


@dataclass
class Session:
    id: str
    worker: str  # the token's name
    client: int
    profile: RemoteProfile  # as registered, measurements refreshed by heartbeats
    last_seen: float
    tasks: queue.Queue = field(default_factory=queue.Queue)
    outstanding: Task | None = None  # handed out, no update yet
    step: Task | None = None  # a step of secure aggregation handed out, not answered yet
    told_to_stop: bool = False


class _RateLimiter:
    """Token bucket per worker: ``rate`` calls per second, bursts of 2 s worth."""

    def __init__(self, rate: float):
        self.rate, self.burst = rate, max(1.0, 2 * rate)
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def allow(self, who: str) -> bool:
        now = time.monotonic()
        with self.lock:
            level, then = self.buckets.get(who, (self.burst, now))
            level = min(self.burst, level + (now - then) * self.rate)
            ok = level >= 1.0
            self.buckets[who] = (level - 1.0 if ok else level, now)
            return ok


class _Lockout:
    """Failed authentications per peer address: beyond ``limit`` in ``window_s`` the address
    is refused outright for ``window_s``, and logged once per window, not once per guess."""

    def __init__(self, limit: int = BAD_TOKENS_PER_PEER, window_s: float = LOCKOUT_S):
        self.limit, self.window_s = limit, window_s
        self.failures: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def locked(self, peer: str) -> bool:
        with self.lock:
            recent = self._recent(peer)
            return len(recent) >= self.limit

    def fail(self, peer: str) -> tuple[int, bool]:
        """Count a failure; (failures in the window, whether this one should be logged)."""
        with self.lock:
            recent = self._recent(peer)
            recent.append(time.monotonic())
            return len(recent), len(recent) in (1, self.limit)

    def _recent(self, peer: str) -> list[float]:
        since = time.monotonic() - self.window_s
        recent = [t for t in self.failures.get(peer, []) if t > since]
        self.failures[peer] = recent
        return recent


def peer_address(context) -> str:
    """The caller's address without its port (``ipv4:10.0.0.5:40122`` -> ``ipv4:10.0.0.5``)."""
    return context.peer().rpartition(":")[0] or context.peer()


class GatewayServer(pb_grpc.GatewayServicer):
    """Serves external workers for one job.

    ``slots``: the remote client ids workers can play. ``config_toml``: the
    run config sent to workers. ``max_samples``: the most training samples a
    worker may declare at registration; every Update it pushes must claim
    exactly what it declared. A pushed Update that is refused while its
    client's task is open is reported on ``updates`` as a REJECTED failure,
    so rank 0 records why the client failed.

    What one token can do is bounded: it plays one client slot at a time
    (registering again replaces its session); under mutual TLS its
    certificate must name the same worker; it holds at most
    ``STREAMS_PER_WORKER`` open streams, each of which must move a chunk
    every ``stream_idle_s`` or is cancelled; it makes at most
    ``calls_per_second`` calls; and its profile must be finite and
    non-negative. An address that fails to authenticate
    ``BAD_TOKENS_PER_PEER`` times in a minute is locked out for a minute.
    """

    def __init__(self, *, job_id: int, slots: list[int], config_toml: str, tokens: dict[str, str],
                 max_update_bytes: int, calls_per_second: float, heartbeat_s: float, max_samples: int,
                 stream_idle_s: float = 30.0):
        self.job_id, self.slots, self.config_toml, self.tokens = job_id, slots, config_toml, tokens
        self.max_update_bytes, self.heartbeat_s, self.max_samples = max_update_bytes, heartbeat_s, max_samples
        self.stream_idle_s = stream_idle_s
        self.limiter = _RateLimiter(calls_per_second)
        self.lockout = _Lockout()
        self.streams: dict[str, int] = {}  # worker -> open streams
        self.stream_warned: dict[str, float] = {}  # worker -> when its refused streams were last logged
        self.pushes: dict[int, tuple[object, float]] = {}  # id -> (context, last chunk) of uploads in progress
        self.bind_certificates = False  # set by start() under mutual TLS
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()
        self.updates: queue.Queue = queue.Queue()  # (client, round, Update bytes) for the gateway rank
        self.answers: queue.Queue = queue.Queue()  # secure aggregation: Answers for the gateway rank
        self.open_round = CLOSED  # the round tasks are for (ANY: the asynchronous modes' tasks, by ticket)
        self.bytes_down = 0  # model bytes streamed to workers in the open round
        self.stopping = threading.Event()
        self.server: grpc.Server | None = None

    # -- lifecycle --------------------------------------------------------
    def start(self, listen: str, tls_cert: str = "", tls_key: str = "", client_ca: str = "") -> int:
        """Start serving on ``listen``; return the bound port."""
        options = [("grpc.max_receive_message_length", 2 * CHUNK_BYTES),
                   ("grpc.max_send_message_length", 2 * CHUNK_BYTES),
                   ("grpc.so_reuseport", 0)]  # a stale server must not silently share the port
        # every worker may hold its streams and still leave threads for everyone's heartbeats
        threads = max(16, (STREAMS_PER_WORKER + 1) * len(self.slots) + 4)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=options,
                                  maximum_concurrent_rpcs=4 * threads)
        self.bind_certificates = bool(tls_cert and client_ca)
        pb_grpc.add_GatewayServicer_to_server(self, self.server)
        try:
            if tls_cert:
                creds = grpc.ssl_server_credentials(
                    [(_pem("gateway.tls_key", tls_key), _pem("gateway.tls_cert", tls_cert))],
                    root_certificates=_pem("gateway.client_ca", client_ca) if client_ca else None,
                    require_client_auth=bool(client_ca))
                port = self.server.add_secure_port(listen, creds)
            else:
                port = self.server.add_insecure_port(listen)
        except RuntimeError as exc:  # newer grpcio raises where older ones returned port 0
            raise ConfigError(f"config key 'gateway.listen': cannot listen on {listen} ({exc})") from None
        if port == 0:
            raise ConfigError(f"config key 'gateway.listen': cannot listen on {listen} (address in use or invalid)")
        self.server.start()
        threading.Thread(target=self._watch_uploads, name="gateway-upload-watchdog", daemon=True).start()
        return port

    def _watch_uploads(self) -> None:
        """Cancel uploads that stopped moving: a stalled stream must not hold a server thread."""
        while not self.stopping.wait(min(1.0, self.stream_idle_s / 4)):
            limit = time.monotonic() - self.stream_idle_s
            with self.lock:
                stalled = [ctx for ctx, last in self.pushes.values() if last < limit]
            for ctx in stalled:
                ctx.cancel()  # type: ignore[attr-defined]

    def stop(self, grace_s: float = 2.0, drain_s: float = 0.0) -> None:
        """Stop serving; first give connected workers up to ``drain_s`` to collect
        their STOP, so they exit cleanly instead of retrying a vanished gateway."""
        self.stopping.set()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            with self.lock:
                if all(s.told_to_stop for s in self.sessions.values()):
                    break
            time.sleep(0.05)
        if self.server is not None:
            self.server.stop(grace_s).wait(grace_s + 1)

    # -- driven by the gateway rank ----------------------------------------
    def client_session(self, client: int) -> Session | None:
        with self.lock:
            return next((s for s in self.sessions.values() if s.client == client), None)

    def offer_task(self, task: Task) -> bool:
        """Queue a task for the worker playing ``task.client``; False if none is connected."""
        s = self.client_session(task.client)
        if s is None:
            return False
        s.tasks.put(task)
        return True

    def begin_round(self, r: int) -> None:
        with self.lock:
            self.open_round, self.bytes_down = r, 0

    def is_open(self, r: int) -> bool:
        """Whether tasks of round (or ticket) ``r`` may be handed out and answered."""
        return self.open_round == ANY or r == self.open_round

    def end_round(self) -> None:
        """Close the round: queued tasks are dropped, later pushes refused as late."""
        self.open_round = CLOSED
        with self.lock:
            for s in self.sessions.values():
                s.outstanding = s.step = None
                while not s.tasks.empty():
                    s.tasks.get_nowait()

    def lost_clients(self) -> list[int]:
        """Clients whose worker holds a task but stopped sending heartbeats (and drop their sessions)."""
        limit = time.monotonic() - 3 * self.heartbeat_s
        with self.lock:
            lost = [s for s in self.sessions.values() if s.last_seen < limit]
            for s in lost:
                del self.sessions[s.id]
                log.warning("worker %s (client %d) went silent; its session is closed", s.worker, s.client)
            return [s.client for s in lost if s.outstanding is not None]

    def connected(self) -> dict[int, RemoteProfile]:
        """client id -> profile of the workers connected now."""
        with self.lock:
            return {s.client: s.profile for s in self.sessions.values()}

    # -- RPCs ----------------------------------------------------------------
    def _auth(self, context) -> str:
        """The caller's worker name; aborts the call unless its token is valid (and, under mutual
        TLS, its certificate names the same worker) and it is within its rate."""
        peer = peer_address(context)
        if self.lockout.locked(peer):
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, f"too many failed authentications from {peer}: "
                   f"locked out for {LOCKOUT_S:.0f}s")
        token = dict(context.invocation_metadata()).get(TOKEN_KEY, "")
        worker = self.tokens.get(token) if token else None
        problem = f"{'wrong' if token else 'no'} token" if worker is None else None
        if worker is not None and self.bind_certificates:
            names = [n.decode() for n in context.auth_context().get("x509_common_name", [])]
            if names != [worker]:
                problem = f"the token of worker {worker} with the certificate of {names or 'nobody'}"
        if problem:
            count, loud = self.lockout.fail(peer)
            if loud:
                log.warning("refused a call from %s: %s%s", peer, problem,
                            f" ({count} failures: the address is locked out for {LOCKOUT_S:.0f}s)"
                            if count >= BAD_TOKENS_PER_PEER else "")
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token (x-fedhpc-token), or a "
                   "certificate of another worker")
        assert worker is not None  # a refused token aborted above
        if not self.limiter.allow(worker):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"worker {worker}: too many calls per second")
        return worker

    def _session(self, context, worker: str, sid: str) -> Session:
        with self.lock:
            s = self.sessions.get(sid)
            if s is None or s.worker != worker:
                _abort(context, grpc.StatusCode.NOT_FOUND, "unknown or expired session: register again")
            s.last_seen = time.monotonic()
            return s

    @contextlib.contextmanager
    def _stream(self, context, worker: str):
        """Hold one of the worker's ``STREAMS_PER_WORKER`` stream slots while a stream is open."""
        with self.lock:
            held = self.streams.get(worker, 0)
            if held >= STREAMS_PER_WORKER:
                if time.monotonic() - self.stream_warned.get(worker, -LOCKOUT_S) >= LOCKOUT_S:
                    self.stream_warned[worker] = time.monotonic()  # one line a minute, not one per stream
                    log.warning("worker %s: refusing streams beyond the %d it holds", worker, held)
                _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"worker {worker} holds {held} open streams, the most allowed")
            self.streams[worker] = held + 1
        try:
            yield
        finally:
            with self.lock:
                self.streams[worker] -= 1

    def Register(self, request, context):
        worker = self._auth(context)
        bad = _bad_profile(request.profile)
        if bad:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"profile {bad}")
        if not 1 <= request.num_samples <= self.max_samples:
            log.warning("worker %s (%s): registration refused: it declares %d training samples, allowed 1..%d",
                        worker, context.peer(), request.num_samples, self.max_samples)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"num_samples {request.num_samples} is outside 1..{self.max_samples} (gateway.max_samples)")
        with self.lock:
            mine = [s for s in self.sessions.values() if s.worker == worker]
            taken = {s.client for s in self.sessions.values() if s.worker != worker}
            free = [c for c in self.slots if c not in taken]
            if request.requested_client >= 0:
                free = [c for c in free if c == request.requested_client]
            if not free:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"no free remote client slot (slots {self.slots[0]}..{self.slots[-1]}, "
                              f"requested {request.requested_client})")
            for old in mine:  # one worker plays one client: registering again replaces its session
                del self.sessions[old.id]
                task = old.outstanding
                if task is not None and self.is_open(task.round):
                    reason = f"worker {worker} registered again while holding client {old.client}'s task"
                    log.warning("%s; the client fails this round", reason)
                    self.updates.put((old.client, task.round, failure_update(
                        Status.ERROR, self.job_id, task.round, old.client, reason).tobytes()))
            p = request.profile
            s = Session(secrets.token_hex(16), worker, free[0],
                        _profile(RemoteProfile(worker, request.num_samples), p), time.monotonic())
            self.sessions[s.id] = s
        log.info("worker %s (%s) registered as client %d (%d samples, link %.1f Mbit/s, %.2f ms)", worker,
                 context.peer(), s.client, request.num_samples, p.bandwidth_mbps, p.latency_ms)
        return pb.RegisterReply(session=s.id, client_id=s.client, job_id=self.job_id, config_toml=self.config_toml,
                                max_update_bytes=self.max_update_bytes, chunk_bytes=CHUNK_BYTES)

    def GetTask(self, request, context):
        worker = self._auth(context)
        s = self._session(context, worker, request.session)
        with self._stream(context, worker):
            yield from self._task_stream(s, request, context)

    def _task_stream(self, s: Session, request, context):
        deadline = time.monotonic() + min(max(request.wait_s, 0.0), 30.0)
        while not self.stopping.is_set():
            try:
                task = s.tasks.get(timeout=0.05)
            except queue.Empty:
                s.last_seen = time.monotonic()
                if time.monotonic() >= deadline or not context.is_active():
                    yield pb.TaskChunk(kind=pb.TaskChunk.IDLE)
                    return
                continue
            if not self.is_open(task.round):
                continue  # the round closed while the task waited
            if task.step is not None:
                with self.lock:
                    s.step = task
                yield task.step
                return
            s.outstanding = task
            for a in range(0, max(len(task.model), 1), CHUNK_BYTES):
                yield pb.TaskChunk(kind=pb.TaskChunk.TRAIN, round=task.round, client_id=task.client, mu=task.mu,
                                   model_bytes=len(task.model), data=task.model[a : a + CHUNK_BYTES],
                                   coef_scale=task.scale, width=task.width)
                with self.lock:
                    self.bytes_down += len(task.model[a : a + CHUNK_BYTES])
            return
        s.told_to_stop = True
        yield pb.TaskChunk(kind=pb.TaskChunk.STOP)

    def PushUpdate(self, request_iterator, context):
        worker = self._auth(context)
        with self._stream(context, worker):
            key = id(context)
            with self.lock:
                self.pushes[key] = (context, time.monotonic())
            try:
                return self._receive_update(worker, request_iterator, context, key)
            finally:
                with self.lock:
                    self.pushes.pop(key, None)

    def _receive_update(self, worker: str, request_iterator, context, key: int):
        parts: list[bytes] = []
        size, s, rnd = 0, None, 0
        max_chunks = self.max_update_bytes // CHUNK_BYTES + 2
        for chunk in request_iterator:
            with self.lock:
                self.pushes[key] = (context, time.monotonic())
            if s is None:
                s, rnd = self._session(context, worker, chunk.session), chunk.round
            size += len(chunk.data)
            if size > self.max_update_bytes or len(parts) >= max_chunks:
                log.warning("worker %s: update refused, over %d bytes / %d chunks", worker, self.max_update_bytes,
                            max_chunks)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"update exceeds {self.max_update_bytes} bytes or {max_chunks} chunks")
            parts.append(chunk.data)
        if s is None:
            return pb.PushReply(accepted=False, reason="empty upload")
        data = b"".join(parts)
        reason = self._check(s, rnd, data)
        if reason:
            log.warning("worker %s (client %d): update refused: %s", worker, s.client, reason)
            task = s.outstanding
            if task is not None and self.is_open(task.round):
                # the client's task is open: its failure, and why, is rank 0's to record
                s.outstanding = None
                refusal = failure_update(Status.REJECTED, self.job_id, task.round, s.client, reason)
                self.updates.put((s.client, task.round, refusal.tobytes()))
            return pb.PushReply(accepted=False, reason=reason)
        s.outstanding = None
        self.updates.put((s.client, rnd, data))
        return pb.PushReply(accepted=True)

    def _check(self, s: Session, rnd: int, data: bytes) -> str | None:
        try:
            head, _ = unpack_update(data)
        except CorruptUpdateError as exc:
            return str(exc)
        if head.job != self.job_id:
            return f"update is for job {head.job}, this job is {self.job_id}"
        if head.client != s.client:
            return f"update claims client {head.client}, this session plays client {s.client}"
        if head.status == Status.REJECTED:
            return "only the gateway reports a refused update"
        if head.status == Status.OK and head.num_samples != s.profile.num_samples:
            return f"update claims {head.num_samples} samples, the worker registered {s.profile.num_samples}"
        if head.round != rnd or s.outstanding is None or s.outstanding.round != rnd:
            return f"round {head.round} is not open for client {s.client} (late or never assigned)"
        return None

    def Heartbeat(self, request, context):
        worker = self._auth(context)
        if request.session:
            s = self._session(context, worker, request.session)
            if request.HasField("profile"):
                bad = _bad_profile(request.profile)
                if bad:
                    _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"profile {bad}")
                s.profile = _profile(s.profile, request.profile)
        return pb.HeartbeatReply(payload=request.payload[:CHUNK_BYTES])


    def SecAgg(self, request, context):
        """A worker's answer to the step of secure aggregation it was handed: refused unless
        that step is open for its session, and unless everything in it is its own client's
        (no keys, shares or reveals in another client's name) and of the protocol's sizes."""
        worker = self._auth(context)
        s = self._session(context, worker, request.session)
        with self.lock:
            task = s.step
            if task is None or task.round != request.round or task.step is None or task.step.kind != request.step:
                return pb.PushReply(accepted=False, reason=f"no step {request.step} of round {request.round} is open "
                                                           f"for client {s.client}")
            s.step = None
        refused = ""
        try:
            step = task.step  # what it may answer with: a share per neighbour, a reveal per client named
            answer = _answer(s.client, request, len(step.neighbours) + len(step.survivors) + len(step.dropped))
        except ValueError as exc:
            refused = str(exc)
            log.warning("worker %s (client %d): secure aggregation answer refused: %s", worker, s.client, refused)
            answer = Answer(s.client, request.round, request.step, error=f"the gateway refused its answer: {refused}")
        self.answers.put(answer)
        return pb.PushReply(accepted=not refused, reason=refused)


def _answer(client: int, a, most: int) -> Answer:
    """The typed Answer of client ``client``'s ``a`` (a pb.SecAggAnswer to a step that admits
    at most ``most`` shares or reveals); ValueError naming what does not belong."""
    if a.error:
        return Answer(client, a.round, a.step, error=a.error[:MAX_REASON_BYTES])
    if a.step == pb.TaskChunk.SECAGG_KEYS:
        k = a.keys
        if k.client != client or len(k.cipher) != 32 or len(k.mask) != 32 or len(k.self_digest) != 32:
            raise ValueError(f"keys for client {k.client} (sizes {len(k.cipher)}, {len(k.mask)}, "
                             f"{len(k.self_digest)}): only client {client}'s 32-byte keys are taken")
        return Answer(client, a.round, a.step, keys=PublicKeys(client, k.cipher, k.mask, k.self_digest))
    if a.step == pb.TaskChunk.SECAGG_SHARE:
        if len(a.shares) > most or any(x.sender != client or len(x.ciphertext) != SEALED_BYTES for x in a.shares):
            raise ValueError(f"{len(a.shares)} shares for {most} neighbours, each must be client {client}'s and "
                             f"{SEALED_BYTES} bytes")
        return Answer(client, a.round, a.step, shares=tuple(SealedShare(x.sender, x.recipient, x.ciphertext)
                                                            for x in a.shares))
    if a.step == pb.TaskChunk.SECAGG_UNMASK:
        if len(a.reveals) > most or any(
                x.sender != client or x.secret not in (0, 1) or len(x.share) != SHARE_BYTES or len(x.view) != 32
                for x in a.reveals):
            raise ValueError(f"{len(a.reveals)} reveals (at most {most}), each must be client {client}'s, of a "
                             f"known secret and of the protocol's sizes")
        return Answer(client, a.round, a.step, reveals=tuple(Reveal(x.sender, x.owner, Secret(x.secret), x.share,
                                                                    x.view) for x in a.reveals))
    raise ValueError(f"step {a.step} takes no answer")


def _pem(key: str, path: str) -> bytes:
    """The PEM file that config key ``key`` names, or a ConfigError saying why it cannot be used."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"config key '{key}': cannot read {path} ({exc.strerror or exc})") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"config key '{key}': {path} is not a PEM file")
    return data


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    """End the call with ``code`` (``context.abort`` raises; this says so to the type checker)."""
    context.abort(code, details)
    raise AssertionError("unreachable: grpc's abort raises")


def _bad_profile(p) -> str | None:
    """What is wrong with a worker's reported profile (every number finite and >= 0), or None."""
    for name in ("samples_per_s", "memory_gb", "bandwidth_mbps", "latency_ms"):
        v = getattr(p, name)
        if not (math.isfinite(v) and v >= 0):
            return f"field {name} is {v}: every measurement must be a finite number >= 0"
    return None


def _profile(base: RemoteProfile, p) -> RemoteProfile:
    """``base`` with the measurements of ``p``."""
    return dataclasses.replace(base, samples_per_s=p.samples_per_s, memory_gb=p.memory_gb,
                               bandwidth_mbps=p.bandwidth_mbps, latency_ms=p.latency_ms)


def fingerprint(cert_path: str | Path) -> str:
    """SHA-256 fingerprint of a PEM certificate, as workers can compare it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
