"""The client-state store: a memory budget, spilling to disk and back, bf16 residuals, bad input."""

import contextlib
import resource
import signal
import subprocess

import numpy as np
import pytest

from fedhpc import kernels as K
from fedhpc.config import load_config
from fedhpc.errors import ConfigError
from fedhpc.runtime.state import ClientStates, StateError, check_budget, spill_warning, state_bytes

pytestmark = pytest.mark.unit

N = 1000


def encode_like(store: ClientStates, cid: int, delta: np.ndarray) -> np.ndarray:
    """What a client step does with its residual: add the delta, keep what is not 'sent'
    (here: every other coordinate is sent and cleared)."""
    r = store.checkout(cid)
    r += delta
    sent = r[::2].copy()
    r[::2] = 0
    store.commit(cid, r)
    return sent


def workload(store: ClientStates, rounds: int = 6, clients: int = 40, per_round: int = 15, seed: int = 0):
    """A few rounds of random clients; every 'sent' vector, in order."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        for cid in rng.choice(clients, per_round, replace=False):
            out.append(encode_like(store, int(cid), rng.standard_normal(N).astype(np.float32)))
    return out


def test_spilling_gives_the_same_bits_as_keeping_everything_in_ram(tmp_path):
    """With room for 4 of 40 clients, what every client sends is bit for bit what it sends
    with no limit, and at no time do more than 4 residuals sit in RAM."""
    free = ClientStates(N)
    tight = ClientStates(N, budget_bytes=4 * state_bytes(N, "float32"), spill_path=tmp_path / "s.state")
    peak = 0
    real_make_room = tight._make_room

    def watched():
        nonlocal peak
        real_make_room()
        peak = max(peak, tight.ram_bytes)

    tight._make_room = watched
    a, b = workload(free), workload(tight)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))
    assert peak <= 3 * state_bytes(N, "float32") and tight.ram_bytes <= tight.budget
    assert tight.spills > 0 and tight.loads > 0 and len(tight) == len(free) <= 40
    # and the states a checkpoint reads are the same, in client order, spilled ones read back
    assert [(c, r.tobytes()) for c, r in free.items()] == [(c, r.tobytes()) for c, r in tight.items()]
    assert tight.ram_bytes <= tight.budget  # items() did not pull the spilled ones into RAM
    tight.close()
    assert not (tmp_path / "s.state").exists()


def test_bf16_residuals_are_rounded_each_time_and_deterministic(tmp_path):
    """bf16 storage: the residual a client starts from is its float32 residual rounded to
    bfloat16 (what it costs), the same with or without spilling."""
    store = ClientStates(N, "bf16")
    spilled = ClientStates(N, "bf16", budget_bytes=2 * state_bytes(N, "bf16"), spill_path=tmp_path / "b.state")
    assert state_bytes(N, "bf16") * 2 == state_bytes(N, "float32")
    a, b = workload(store), workload(spilled)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))
    rng = np.random.default_rng(5)
    d = rng.standard_normal(N).astype(np.float32)
    r = store.checkout(99)
    r += d
    store.commit(99, r)
    back = store.checkout(99)
    assert np.array_equal(back, K.from_bf16(K.to_bf16(d))) and not np.array_equal(back, d)
    assert np.max(np.abs(back - d) / np.abs(d)) <= 2.0**-8


def test_a_budget_smaller_than_one_client_is_refused():
    check_budget(0, N, "float32")  # no limit
    check_budget(state_bytes(N, "float32") / 2**20, N, "float32")
    with pytest.raises(ConfigError, match="clients.state_memory_mb.*less than one client's.*raise it"):
        check_budget(0.001, N, "float32")
    with pytest.raises(ConfigError, match="must be >= 0"):
        load_config(None, ["clients.state_memory_mb=-1"])


def test_an_unwritable_state_directory_is_reported_before_the_first_round(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    store = ClientStates(N, budget_bytes=state_bytes(N, "float32"), spill_path=tmp_path / "file" / "x.state")
    with pytest.raises(ConfigError, match="cannot be created.*clients.state_dir"):
        store.prepare()


def test_a_corrupt_spilled_record_fails_that_client_and_only_once(tmp_path):
    store = ClientStates(N, budget_bytes=state_bytes(N, "float32"), spill_path=tmp_path / "s.state")
    encode_like(store, 1, np.ones(N, np.float32))
    encode_like(store, 2, np.ones(N, np.float32))  # spills client 1
    assert not any(tmp_path.iterdir())  # the spill file has no name: only the store can reach it
    with open(f"/proc/self/fd/{store.fd}", "r+b") as f:
        f.seek(17)
        f.write(b"\xff")
    with pytest.raises(StateError, match="client 1's spilled state .* is corrupt .*checksum.*starts again"):
        store.checkout(1)
    assert np.all(store.checkout(1) == 0)  # dropped: it starts again from no residual, like a new client
    assert len(store) == 2


@contextlib.contextmanager
def small_disk(path, nbytes: int):
    """A directory where files cannot grow past ``nbytes``: a tmpfs of that size (root),
    else this process's file-size limit (the kernel refuses the write either way)."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={nbytes}", "tmpfs", str(path)],
                      capture_output=True).returncode == 0:
        try:
            yield "No space left"
        finally:
            subprocess.run(["umount", str(path)], check=True)
        return
    old_limit, old_handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old_limit[1]))
    try:
        yield "File too large"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_full_disk_fails_the_client_that_needs_room_and_keeps_the_victim(tmp_path):
    """Room on disk for 4 residuals: the fifth spill fails the client that needed the room,
    naming the file and what to do, and the residual that could not be written stays in RAM."""
    record = state_bytes(N, "float32")
    with small_disk(tmp_path / "disk", 4 * record) as why:
        store = ClientStates(N, budget_bytes=record, spill_path=tmp_path / "disk" / "s.state")
        try:
            for cid in range(5):
                encode_like(store, cid, np.full(N, cid + 1, np.float32))  # spills 0 .. 3
            with pytest.raises(StateError, match=f"cannot spill client 4's state .*({why}|disk is full).*state_dir"):
                store.checkout(5)
            assert np.all(store.checkout(4)[1::2] == 5)  # nothing was lost
        finally:
            store.close()


def test_restored_states_are_checked_and_spill_beyond_the_budget(tmp_path):
    store = ClientStates(N, budget_bytes=2 * state_bytes(N, "float32"), spill_path=tmp_path / "s.state")
    states = {c: np.full(N, c, np.float32) for c in range(5)}
    for c, r in states.items():
        store.put(c, r)
    assert store.ram_bytes <= store.budget and len(store) == 5
    held = store.ram_bytes + (0 if store.spare is None else store.spare.nbytes)  # nothing else kept
    assert held <= store.budget + store.record
    assert {c: r[0] for c, r in store.items()} == {c: c for c in range(5)}
    with pytest.raises(StateError, match="float64.*expected float32"):
        store.put(9, np.zeros(N))
    with pytest.raises(StateError, match=r"\[3\], expected float32\[1000\]"):
        store.put(9, np.zeros(3, np.float32))


def test_spill_goes_to_node_scratch_or_warns(tmp_path, monkeypatch):
    from fedhpc import env
    from fedhpc.runtime.state import spill_directory

    cfg = load_config(None, ["clients.state_memory_mb=10"])
    monkeypatch.setattr(env, "NODE_SCRATCH", None)
    assert spill_directory(cfg, tmp_path) == tmp_path / "client-state"
    assert "no node-local scratch" in spill_warning(cfg, tmp_path)
    monkeypatch.setattr(env, "NODE_SCRATCH", "/scratch/job")
    assert str(spill_directory(cfg, tmp_path)) == "/scratch/job" and spill_warning(cfg, tmp_path) == ""
    assert spill_warning(load_config(None), tmp_path) == ""  # no budget: nothing spills
    assert spill_directory(load_config(None, ["clients.state_dir=/local"]), tmp_path).as_posix() == "/local"
