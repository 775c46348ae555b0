"""Kubernetes: manifests for ``fedhpc worker`` pods that join a running job through its gateway.

Three manifests: a Secret with the workers' tokens and TLS files, a StatefulSet
of worker pods (resource requests, the Secret mounted read-only), and a
HorizontalPodAutoscaler over it. A StatefulSet rather than a Deployment
because the gateway knows a worker by its token and lets one token play one
client slot: every pod needs its own token (and certificate), and only a
StatefulSet gives a pod a stable number to pick them and its slot by (pod
NAME-K takes slot FIRST+K with the credentials WORKER-K issued by
``fedhpc certs issue --name WORKER --count N``).

The files are JSON, which is YAML, so ``kubectl apply -f`` takes them as they
are and the tests parse them with the standard library; each starts with
``#`` comment lines explaining its knobs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from fedhpc.launch import LaunchError

#: Where the Secret's files appear inside a worker pod.
SECRET_MOUNT = "/etc/fedhpc"


@dataclass
class WorkerSet:
    """Options of ``fedhpc k8s render``."""

    connect: str  # HOST:PORT of the gateway, as the pods reach it
    token_file: Path | None = None  # one worker's token (at most one pod); or:
    pki: Path | None = None  # ... credentials per pod: WORKER-K.token/.pem/.key (and ca.pem) in this directory
    worker: str = ""
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    config: Path | None = None  # the job's run config: remote client slots, data set, threads per worker
    first_client: int | None = None  # slot of pod 0; default: the job's first remote slot (clients.total)
    image: str = "fedhpc:0.1.0"
    name: str = "fedhpc-worker"
    namespace: str = ""
    replicas: int = 2  # at most max_replicas
    min_replicas: int = 1
    max_replicas: int | None = None  # default: every remote slot from first_client on
    cpu_target: int = 80  # percent of the CPU request at which the autoscaler adds pods
    cpu: str = ""  # CPU request; default: local.threads of the config
    memory: str = "2Gi"


def _check(d: WorkerSet, pods: int) -> None:
    from fedhpc.launch.slurm import check_slot_files, check_worker_files

    host, _, port = d.connect.rpartition(":")
    if not host or not port.isdigit():
        raise LaunchError(f"--connect must be HOST:PORT (the gateway address the pods can reach), got {d.connect!r}")
    if not 1 <= d.cpu_target <= 100:
        raise LaunchError(f"--cpu-target is a percentage of the CPU request, 1..100, got {d.cpu_target}")
    check_slot_files(d.pki, d.worker, d.token_file, pods)
    if d.token_file is not None:
        check_worker_files(d.token_file, d.ca, d.cert, d.key)


def manifests(d: WorkerSet) -> dict[str, dict]:
    """``{"secret": ..., "workers": ..., "hpa": ...}`` (the Secret, the StatefulSet, the autoscaler) as dicts."""
    from fedhpc.config import load_config

    cfg = load_config(d.config)
    first = cfg.clients.total if d.first_client is None else d.first_client
    slots = range(cfg.clients.total, cfg.clients.total + cfg.gateway.clients)
    most = slots.stop - first if d.max_replicas is None else d.max_replicas
    replicas = min(d.replicas, most)
    if first not in slots or first + most - 1 not in slots:
        raise LaunchError(f"--max-replicas {most} pods from client {first} do not fit the job's remote client "
                             f"slots {slots.start}..{slots.stop - 1} ([gateway] clients = {cfg.gateway.clients} in "
                             f"the config); lower --max-replicas or raise gateway.clients")
    if not 1 <= d.min_replicas <= replicas <= most:
        raise LaunchError(f"need 1 <= --min-replicas ({d.min_replicas}) <= --replicas ({replicas}) <= "
                             f"--max-replicas ({most})")
    _check(d, most)  # every pod the autoscaler may start needs its own credentials
    labels = {"app.kubernetes.io/name": "fedhpc-worker", "app.kubernetes.io/instance": d.name}
    meta = {"name": d.name, "labels": labels}
    if d.namespace:
        meta["namespace"] = d.namespace
    secret_name = f"{d.name}-credentials"
    from fedhpc.gateway.certs import slot_name

    ca = d.ca or (d.pki / "ca.pem" if d.pki is not None and (d.pki / "ca.pem").is_file() else None)
    files: dict[str, Path | None] = {"ca.pem": ca}
    if d.pki is None:
        files |= {"token": d.token_file, "cert.pem": d.cert, "key.pem": d.key}
    else:
        for k in range(most):
            name = d.pki / slot_name(d.worker, k)
            files[f"token-{k}"] = name.with_suffix(".token")
            if ca is not None:
                files |= {f"cert-{k}.pem": name.with_suffix(".pem"), f"key-{k}.pem": name.with_suffix(".key")}
    secret = {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": dict(meta, name=secret_name),
        "type": "Opaque",
        "stringData": {k: p.read_text() for k, p in files.items() if p is not None},
    }
    args = ["--connect", d.connect, "--name", "$(POD_NAME)", "--data", cfg.data.name]
    if cfg.data.root:
        args += ["--data-root", cfg.data.root]
    if ca:
        args += ["--ca", f"{SECRET_MOUNT}/ca.pem"]
    # pod NAME-K takes remote client slot FIRST+K and, under --pki, its own token-K (and cert-K, key-K)
    # ("$$" is Kubernetes' escape for a literal "$")
    own = ""
    if d.pki is None:
        args += ["--token-file", f"{SECRET_MOUNT}/token"]
        if d.cert:
            args += ["--cert", f"{SECRET_MOUNT}/cert.pem", "--key", f"{SECRET_MOUNT}/key.pem"]
    else:
        own = f" --token-file {SECRET_MOUNT}/token-$$K"
        if ca:
            own += f" --cert {SECRET_MOUNT}/cert-$$K.pem --key {SECRET_MOUNT}/key-$$K.pem"
    cpu = d.cpu or str(cfg.local.threads)
    container = {
        "name": "worker",
        "image": d.image,
        "command": ["sh", "-c", "K=$${POD_NAME##*-}; "
                    f'exec fedhpc worker "$$@" --client-id $$((FEDHPC_FIRST_CLIENT + K)){own}', "fedhpc-worker"],
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "FEDHPC_FIRST_CLIENT", "value": str(first)},
            {"name": "OMP_NUM_THREADS", "value": str(cfg.local.threads)},
        ],
        "resources": {"requests": {"cpu": cpu, "memory": d.memory}, "limits": {"memory": d.memory}},
        "volumeMounts": [{"name": "credentials", "mountPath": SECRET_MOUNT, "readOnly": True}],
    }
    workers = {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "serviceName": d.name,  # required by the API; workers only dial out, so no Service is created
            "podManagementPolicy": "Parallel",  # scale up and down at once, not one pod after the other
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [container],
                    "volumes": [{"name": "credentials", "secret": {"secretName": secret_name}}],
                },
            },
        },
    }
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": d.name},
            "minReplicas": d.min_replicas,
            "maxReplicas": most,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": d.cpu_target}}}],
        },
    }
    return {"secret": secret, "workers": workers, "hpa": hpa}


_HEADERS = {
    "secret": """\
# Secret with the fedhpc workers' credentials, rendered by `fedhpc k8s render`. JSON is YAML:
# `kubectl apply -f` takes this file as it is. It holds secrets: never commit a rendered copy.
# The gateway lets one token play one client slot, and under mutual TLS only with the certificate
# of the same worker: every pod the autoscaler may start has its own token and certificate here.
# Knobs (options of `fedhpc k8s render`):
#   --pki DIR --worker W  stringData."token-K", "cert-K.pem", "key-K.pem" for pod K: DIR/W-K.token,
#                   .pem and .key from `fedhpc certs issue --dir DIR --name W --count N` (N >= the
#                   autoscaler's maximum); "ca.pem": DIR/ca.pem (or --ca), the CA of the gateway's
#                   certificate; without a CA the link is not encrypted
#   --token-file T [--cert C --key K]  instead, for one pod only: stringData.token (cert.pem, key.pem)
#   --name, --namespace   metadata (the Secret is NAME-credentials)
# The same Secret by hand: kubectl create secret generic NAME-credentials --from-file=ca.pem=DIR/ca.pem
#   --from-file=token-0=DIR/W-0.token --from-file=cert-0.pem=DIR/W-0.pem --from-file=key-0.pem=DIR/W-0.key ...
""",
    "workers": """\
# StatefulSet of fedhpc workers, rendered by `fedhpc k8s render`. JSON is YAML: `kubectl apply -f`
# takes this file as it is. Each pod runs `fedhpc worker`, which registers with the gateway rank of
# a running fedhpc job, trains the tasks it is sent and streams the updates back; it exits 0 when
# the job ends (then delete the workers: `kubectl delete -f DIR`). Pod NAME-K is remote client
# FIRST+K with its own token and certificate (token-K, cert-K.pem, key-K.pem of the Secret).
# Knobs (options of `fedhpc k8s render`; or edit the values below):
#   --connect HOST:PORT  args: the gateway address as the pods reach it (a jobs/slurm/hybrid.sbatch
#                        job prints it and writes it to OUT/gateway.address)
#   --image IMAGE        an image with fedhpc installed (`pip install fedhpc` with torch==2.13.0)
#   --replicas N         spec.replicas: workers at the start; the autoscaler moves it afterwards
#   --cpu, --memory      resources.requests (memory also the limit); --cpu defaults to local.threads
#   CONFIG               the job's run config: FEDHPC_FIRST_CLIENT (its first remote slot,
#                        clients.total, or --first-client), data.name/data.root as --data/--data-root,
#                        local.threads as OMP_NUM_THREADS
#   --name, --namespace  metadata; the Secret NAME-credentials is mounted read-only at /etc/fedhpc
""",
    "hpa": """\
# HorizontalPodAutoscaler for the fedhpc worker StatefulSet, rendered by `fedhpc k8s render`.
# JSON is YAML: `kubectl apply -f` takes this file as it is. Needs the cluster's metrics-server.
# Knobs (options of `fedhpc k8s render`):
#   --min-replicas, --max-replicas  bounds on the number of workers; the maximum must fit the job's
#                                   remote client slots ([gateway] clients; checked at render time)
#   --cpu-target P                  add pods when the average CPU use exceeds P% of the request
""",
}


def render_files(d: WorkerSet) -> dict[str, str]:
    """File name -> text (comment header + JSON) for each manifest."""
    return {f"{kind}.yaml": _HEADERS[kind] + json.dumps(doc, indent=2) + "\n" for kind, doc in manifests(d).items()}


def write(d: WorkerSet, out: Path) -> list[Path]:
    """Write the manifests into directory ``out``; the Secret file is readable by its owner only."""
    texts = render_files(d)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():
        path = out / name
        mode = 0o600 if name == "secret.yaml" else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, mode)  # an existing file keeps its old mode through os.open
        paths.append(path)
    return paths
