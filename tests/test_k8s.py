"""`fedhpc k8s render` and jobs/k8s: the manifests' structure and the values they take from the
options and the run config. The files are JSON under `#` comment lines (JSON is YAML), so they
are parsed here with the standard library, the way kubectl reads them."""

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from fedhpc.launch import LaunchError, k8s

pytestmark = pytest.mark.unit

JOBS_K8S = Path(__file__).resolve().parents[1] / "jobs" / "k8s"

# the placeholder credentials jobs/k8s/ was rendered from (see the README, "Running on clusters"):
# `fedhpc certs issue --dir pki --name cloud --count 4` makes the real ones, one per remote slot
PODS = 4


def example(k: int | None) -> dict[str, str]:
    """Placeholder file name -> text: the CA (k None), or pod k's token, certificate and key."""
    if k is None:
        return {"ca.pem": "-----BEGIN CERTIFICATE-----\n<the CA certificate: pki/ca.pem made by `fedhpc certs init`>\n"
                          "-----END CERTIFICATE-----\n"}
    return {f"cloud-{k}.token": f"<pod {k}'s token: the contents of pki/cloud-{k}.token>\n",
            f"cloud-{k}.pem": f"-----BEGIN CERTIFICATE-----\n<pod {k}'s certificate: pki/cloud-{k}.pem>\n"
                              "-----END CERTIFICATE-----\n",
            f"cloud-{k}.key": f"-----BEGIN PRIVATE KEY-----\n<pod {k}'s key: pki/cloud-{k}.key>\n"
                              "-----END PRIVATE KEY-----\n"}


def secret_data(pods: int) -> dict[str, str]:
    """What the Secret holds for ``pods`` pods of the placeholder credentials."""
    out = {"ca.pem": example(None)["ca.pem"]}
    for k in range(pods):
        e = example(k)
        out |= {f"token-{k}": e[f"cloud-{k}.token"], f"cert-{k}.pem": e[f"cloud-{k}.pem"],
                f"key-{k}.pem": e[f"cloud-{k}.key"]}
    return out


def parse(text: str) -> dict:
    """One manifest file: comment header, then one JSON document."""
    head = [line for line in text.splitlines() if line.startswith("#")]
    assert head and text.startswith("#"), "every manifest starts with a comment header"
    return json.loads("".join(line for line in text.splitlines(True) if not line.startswith("#")))


@pytest.fixture
def pki(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    for k in (None, *range(PODS)):
        for name, text in example(k).items():
            (d / name).write_text(text)
    return d


def test_rendered_manifests_fit_together(tmp_path, pki):
    config = tmp_path / "hybrid.toml"
    config.write_text('[clients]\ntotal = 10\nper_round = 5\n[local]\nthreads = 4\n[data]\nname = "synthetic"\n'
                      '[gateway]\nclients = 3\n')
    d = k8s.WorkerSet(connect="gw.example.org:50051", pki=pki, worker="cloud", config=config, image="reg/fedhpc:1",
                      namespace="fl", memory="3Gi", cpu_target=70)
    paths = k8s.write(d, tmp_path / "out")
    assert [p.name for p in paths] == ["secret.yaml", "workers.yaml", "hpa.yaml"]
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "secret.yaml").st_mode) == 0o600
    secret, workers, hpa = (parse(p.read_text()) for p in paths)

    assert (secret["apiVersion"], secret["kind"], secret["type"]) == ("v1", "Secret", "Opaque")
    # one token and certificate for each pod the autoscaler may start (the job's 3 remote slots)
    assert secret["stringData"] == secret_data(3) and secret["metadata"]["namespace"] == "fl"

    assert (workers["apiVersion"], workers["kind"]) == ("apps/v1", "StatefulSet")
    spec = workers["spec"]
    assert spec["replicas"] == 2 and spec["podManagementPolicy"] == "Parallel" and spec["serviceName"]
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "reg/fedhpc:1"
    args = container["args"]
    flags = dict(zip(args[::2], args[1::2]))
    assert flags == {"--connect": "gw.example.org:50051", "--name": "$(POD_NAME)", "--data": "synthetic",
                     "--ca": "/etc/fedhpc/ca.pem"}  # each pod's own token, certificate and key: see the next test
    env = {e["name"]: e for e in container["env"]}
    assert env["FEDHPC_FIRST_CLIENT"]["value"] == "10"  # remote slots follow the 10 MPI clients
    assert env["OMP_NUM_THREADS"]["value"] == "4"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "3Gi"}, "limits": {"memory": "3Gi"}}
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert mount == {"name": volume["name"], "mountPath": "/etc/fedhpc", "readOnly": True}
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]

    assert (hpa["apiVersion"], hpa["kind"]) == ("autoscaling/v2", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                             "name": workers["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)  # the job's 3 remote slots
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}


def test_each_pod_takes_its_own_remote_client_slot_and_credentials(tmp_path, pki):
    """Run the container's command the way Kubernetes would: $(VAR) expanded, $$ made $."""
    manifests = k8s.manifests(k8s.WorkerSet(connect="gw:1", pki=pki, worker="cloud"))
    container = manifests["workers"]["spec"]["template"]["spec"]["containers"][0]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "fedhpc").write_text('#!/bin/sh\necho "$@"\n')
    (fake / "fedhpc").chmod(0o755)
    for pod, slot in (("fedhpc-worker-0", 20), ("fedhpc-worker-3", 23)):
        env = {"POD_NAME": pod, "FEDHPC_FIRST_CLIENT": "20", "PATH": f"{fake}:/usr/bin:/bin"}

        def expand(s, env=env):
            return re.sub(r"\$\$|\$\((\w+)\)", lambda m: "$" if m.group(0) == "$$" else env[m.group(1)], s)

        argv = [expand(a) for a in container["command"] + container["args"]]
        out = subprocess.run(argv, capture_output=True, text=True, env=env).stdout.split()
        assert out[:2] == ["worker", "--connect"]
        flags = dict(zip(out[1::2], out[2::2]))
        k = slot - 20
        assert flags["--client-id"] == str(slot) and flags["--name"] == pod
        assert (flags["--token-file"], flags["--cert"], flags["--key"]) == (
            f"/etc/fedhpc/token-{k}", f"/etc/fedhpc/cert-{k}.pem", f"/etc/fedhpc/key-{k}.pem")


@pytest.mark.parametrize("change, error", [
    ({"connect": "gw"}, "--connect must be HOST:PORT"),
    ({"max_replicas": 5}, "do not fit the job's remote client slots 20..23"),
    ({"first_client": 22, "max_replicas": 3}, "from client 22 do not fit"),
    ({"replicas": 3, "min_replicas": 4, "max_replicas": 4}, "--min-replicas"),
    ({"cpu_target": 0}, "--cpu-target"),
    ({"worker": "other"}, "no .*other-0.token"),
    ({"pki": None, "token_file": Path("/nonexistent/token"), "max_replicas": 1}, "no such file"),
    ({"pki": None, "token_file": Path("token")}, "4 workers cannot share one --token-file"),
    ({"pki": None, "token_file": Path("token"), "cert": Path("c.pem"), "max_replicas": 1}, "--cert and --key go"),
    ({"token_file": Path("token")}, "give one worker's --token-file, or --pki"),
])
def test_render_refuses_what_cannot_work(pki, change, error):
    d = k8s.WorkerSet(connect="gw:50051", pki=pki, worker="cloud")
    for key, value in change.items():
        setattr(d, key, value)
    with pytest.raises(LaunchError, match=error):
        k8s.manifests(d)


def test_job_manifests_are_the_rendered_example(tmp_path, pki):
    d = k8s.WorkerSet(connect="gateway.example.org:50051", pki=pki, worker="cloud")
    for name, text in k8s.render_files(d).items():
        assert (JOBS_K8S / name).read_text() == text, \
            f"jobs/k8s/{name} differs from `fedhpc k8s render` (regenerate it as the README says)"
        parse(text)
