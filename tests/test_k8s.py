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

# the placeholder credentials jobs/k8s/ was rendered from (see the README, "Running on clusters")
EXAMPLE = {
    "token": "<the worker token: the contents of pki/NAME.token made by `fedhpc certs issue`>\n",
    "ca.pem": "-----BEGIN CERTIFICATE-----\n<the CA certificate: pki/ca.pem made by `fedhpc certs init`>\n"
              "-----END CERTIFICATE-----\n",
    "cert.pem": "-----BEGIN CERTIFICATE-----\n<the worker certificate: pki/NAME.pem>\n-----END CERTIFICATE-----\n",
    "key.pem": "-----BEGIN PRIVATE KEY-----\n<the worker key: pki/NAME.key>\n-----END PRIVATE KEY-----\n",
}


def parse(text: str) -> dict:
    """One manifest file: comment header, then one JSON document."""
    head = [line for line in text.splitlines() if line.startswith("#")]
    assert head and text.startswith("#"), "every manifest starts with a comment header"
    return json.loads("".join(line for line in text.splitlines(True) if not line.startswith("#")))


@pytest.fixture
def creds(tmp_path):
    paths = {}
    for name, text in EXAMPLE.items():
        paths[name] = tmp_path / name
        paths[name].write_text(text)
    return paths


def test_rendered_manifests_fit_together(tmp_path, creds):
    config = tmp_path / "hybrid.toml"
    config.write_text('[clients]\ntotal = 10\nper_round = 5\n[local]\nthreads = 4\n[data]\nname = "synthetic"\n'
                      '[gateway]\nclients = 3\n')
    d = k8s.WorkerSet(connect="gw.example.org:50051", token_file=creds["token"], ca=creds["ca.pem"],
                      cert=creds["cert.pem"], key=creds["key.pem"], config=config, image="reg/fedhpc:1",
                      namespace="fl", memory="3Gi", cpu_target=70)
    paths = k8s.write(d, tmp_path / "out")
    assert [p.name for p in paths] == ["secret.yaml", "workers.yaml", "hpa.yaml"]
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "secret.yaml").st_mode) == 0o600
    secret, workers, hpa = (parse(p.read_text()) for p in paths)

    assert (secret["apiVersion"], secret["kind"], secret["type"]) == ("v1", "Secret", "Opaque")
    assert secret["stringData"] == EXAMPLE and secret["metadata"]["namespace"] == "fl"

    assert (workers["apiVersion"], workers["kind"]) == ("apps/v1", "StatefulSet")
    spec = workers["spec"]
    assert spec["replicas"] == 2 and spec["podManagementPolicy"] == "Parallel" and spec["serviceName"]
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "reg/fedhpc:1"
    args = container["args"]
    flags = dict(zip(args[::2], args[1::2]))
    assert flags == {"--connect": "gw.example.org:50051", "--token-file": "/etc/fedhpc/token",
                     "--name": "$(POD_NAME)", "--data": "synthetic", "--ca": "/etc/fedhpc/ca.pem",
                     "--cert": "/etc/fedhpc/cert.pem", "--key": "/etc/fedhpc/key.pem"}
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


def test_each_pod_takes_its_own_remote_client_slot(tmp_path, creds):
    """Run the container's command the way Kubernetes would: $(VAR) expanded, $$ made $."""
    manifests = k8s.manifests(k8s.WorkerSet(connect="gw:1", token_file=creds["token"]))
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
        assert out[:2] == ["worker", "--connect"] and out[-2:] == ["--client-id", str(slot)]
        assert out[out.index("--name") + 1] == pod


@pytest.mark.parametrize("change, error", [
    ({"connect": "gw"}, "--connect must be HOST:PORT"),
    ({"max_replicas": 5}, "do not fit the job's remote client slots 20..23"),
    ({"first_client": 22, "max_replicas": 3}, "from client 22 do not fit"),
    ({"replicas": 3, "min_replicas": 4, "max_replicas": 4}, "--min-replicas"),
    ({"cpu_target": 0}, "--cpu-target"),
    ({"cert": Path("cert.pem")}, "--cert and --key go together"),
    ({"token_file": Path("/nonexistent/token")}, "no such file"),
])
def test_render_refuses_what_cannot_work(creds, change, error):
    d = k8s.WorkerSet(connect="gw:50051", token_file=creds["token"])
    for key, value in change.items():
        setattr(d, key, value)
    with pytest.raises(LaunchError, match=error):
        k8s.manifests(d)


def test_job_manifests_are_the_rendered_example(tmp_path, creds):
    d = k8s.WorkerSet(connect="gateway.example.org:50051", token_file=creds["token"], ca=creds["ca.pem"],
                      cert=creds["cert.pem"], key=creds["key.pem"])
    for name, text in k8s.render_files(d).items():
        assert (JOBS_K8S / name).read_text() == text, \
            f"jobs/k8s/{name} differs from `fedhpc k8s render` (regenerate it as the README says)"
        parse(text)
