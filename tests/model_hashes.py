"""Final-model hashes of representative configs: the guard of a refactoring.

Run it before and after a change that must not change what is computed, and
compare the two JSON files; every hash must be the same::

    .venv/bin/python tests/model_hashes.py --json before.json
    ... change the code ...
    .venv/bin/python tests/model_hashes.py --json after.json --compare before.json

Each config runs as a real job (``mpiexec -n 3``: rank 0 and two trainer
ranks; the gateway config adds a gateway rank and two ``fedhpc worker``
processes). The hashes are of this machine's floating point: they are
compared on one machine, never committed as expected values of a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
SMALL = ["rounds=4", "clients.total=12", "clients.per_round=8", "local.epochs=1"]
CONFIGS = {
    "topk-int8 + error feedback": SMALL + ["codec.name=topk-int8", "codec.ratio=0.1", "codec.stochastic=true"],
    "fastest-k (simulated)": SMALL + ["clock=simulated", "stragglers.fastest_k=5", "profiles.speed_sigma=0.5"],
    "dropouts + deadline (simulated)": SMALL + ["clock=simulated", "faults.dropout_prob=0.25",
                                                "profiles.slow_clients=[3]", "profiles.slow_factor=50",
                                                "stragglers.deadline_s=0.5", "stragglers.partial_work=true"],
    "adaptive selection (simulated)": SMALL + ["rounds=8", "clock=simulated", "selection.name=adaptive",
                                               "profiles.speed_sigma=1.0", "clients.per_round=4"],
    "fedadam": SMALL + ["strategy.name=fedadam"],
    "federated dropout": SMALL + ["fed_dropout.rate=0.5", "model.hidden=[64]"],
    "fedprox + randk": SMALL + ["strategy.name=fedprox", "codec.name=randk", "codec.ratio=0.2"],
}


def run(out: Path, sets: list[str], extra: list[str] = (), nprocs: int = 3) -> str:
    cmd = [str(BIN / "mpiexec"), "-n", str(nprocs), sys.executable, "-m", "mpi4py", "-m", "fedhpc", "run",
           "--out", str(out), *extra]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1",
                                                                                 "PATH": str(BIN)})
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return hashlib.sha256((out / "final_weights.npy").read_bytes()).hexdigest()


def gateway_hash(tmp: Path) -> str:
    """A hybrid job: one trainer rank, a gateway, two workers each playing one remote client."""
    from fedhpc.gateway import certs

    pki = tmp / "pki"
    certs.init(pki, ["localhost", "127.0.0.1"])
    for name in ("w1", "w2"):
        certs.issue(pki, name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sets = SMALL + ["clients.total=6", "clients.per_round=8", "gateway.enabled=true",
                    f"gateway.listen='127.0.0.1:{port}'", "gateway.clients=2", "gateway.min_workers=2",
                    "gateway.wait_s=60", f"gateway.token_file='{pki}/tokens.txt'",
                    f"gateway.tls_cert='{pki}/server.pem'", f"gateway.tls_key='{pki}/server.key'",
                    f"gateway.client_ca='{pki}/ca.pem'"]
    workers = [subprocess.Popen(
        [sys.executable, "-m", "fedhpc", "worker", "--connect", f"127.0.0.1:{port}", "--token-file",
         str(pki / f"{w}.token"), "--ca", str(pki / "ca.pem"), "--cert", str(pki / f"{w}.pem"), "--key",
         str(pki / f"{w}.key"), "--name", w, "--client-id", str(6 + i), "--shard", f"{i}/2", "--retry-s", "30"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, w in enumerate(("w1", "w2"))]
    try:
        return run(tmp / "gateway", sets)
    finally:
        for w in workers:
            w.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, required=True, help="write {config: sha256 of final_weights.npy} here")
    ap.add_argument("--compare", type=Path, help="a JSON file of an earlier run: exit 1 unless every hash matches")
    args = ap.parse_args()
    hashes = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for i, (name, sets) in enumerate(CONFIGS.items()):
            hashes[name] = run(tmp / str(i), sets)
            print(f"{hashes[name][:16]}  {name}", flush=True)
        hashes["gateway (hybrid)"] = gateway_hash(tmp)
        print(f"{hashes['gateway (hybrid)'][:16]}  gateway (hybrid)")
    args.json.write_text(json.dumps(hashes, indent=1) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        changed = [k for k in before if before[k] != hashes.get(k)]
        print("all hashes identical" if not changed else f"CHANGED: {changed}")
        raise SystemExit(1 if changed else 0)


if __name__ == "__main__":
    main()
