"""What keeps a deployment's data and pods safe on a cluster, checked offline on the build.

The namespace outlives `skaffold delete`, the volumes' claims are retained, PostgreSQL and Redis
run as their images' own non-root users behind PodDisruptionBudgets, every pod meets Pod Security
Admission's restricted profile, Redis never sees its password in its arguments, and skaffold
neither rolls Revisions with its run id nor trips over the immutable migrate Job.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.test_manifests import (
    KNATIVE,
    STEPS,
    container,
    env_of,
    knative_services,
    kustomization,
    namespace_manifest,
    objects,
    one,
    secret_data,
    skaffold,
)
from tests.test_manifests import built as built  # noqa: F401 (fixture)
from tests.test_manifests import deploy_dir as deploy_dir  # noqa: F401 (fixture)

# https://kubernetes.io/docs/concepts/security/pod-security-standards/ "Restricted"
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
# The users of the official images (postgres:16 and redis:7, Debian variants).
IMAGE_USERS = {"postgres": 999, "redis": 999}


def pod_templates(built: list[dict[str, Any]]) -> dict[str, dict]:
    """Every pod spec the build makes pods from, by owner."""
    found = {}
    for o in built:
        kind, name = o["kind"], o["metadata"]["name"]
        if kind in ("StatefulSet", "Job", "Deployment"):
            found[f"{kind} {name}"] = o["spec"]["template"]["spec"]
        elif kind == "CronJob":
            found[f"{kind} {name}"] = o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "Service" and o["apiVersion"].startswith("serving.knative.dev/"):
            found[f"ksvc {name}"] = o["spec"]["template"]["spec"]
    return found


def restricted_violations(pod: dict) -> list[str]:
    """What Pod Security Admission's restricted profile would refuse in this pod spec."""
    problems = []
    pod_context = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(flag)
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {kinds}")
    if pod_context.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    for c in pod.get("initContainers", []) + pod["containers"]:
        context = c.get("securityContext", {})
        where = f"container {c['name']}"
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in context.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: does not drop ALL capabilities")
        if set(context.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities")
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        if context.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser 0")
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: no RuntimeDefault seccomp profile")
        for port in c.get("ports", []):
            if "hostPort" in port:
                problems.append(f"{where}: hostPort")
    return problems


# --- the namespace and the volumes --------------------------------------------------------------


def test_namespace_outlives_the_build() -> None:
    # Not rendered, so `skaffold delete` / `kubectl delete -k` cannot delete it (and the claims).
    assert "namespace.yaml" not in kustomization()["resources"]
    namespace = namespace_manifest()
    assert (namespace["kind"], namespace["metadata"]["name"]) == ("Namespace", "imagerec")
    assert kustomization()["namespace"] == namespace["metadata"]["name"]
    # skaffold applies it before every deploy.
    before = skaffold()["deploy"]["kubectl"]["hooks"]["before"]
    hooks = [" ".join(h["host"]["command"]) for h in before]
    applies = r'kubectl --context "\$SKAFFOLD_KUBE_CONTEXT" apply -f knative/namespace\.yaml$'
    assert any(re.search(applies, h) for h in hooks), hooks


def test_namespace_enforces_the_restricted_pod_security_profile(
    built: list[dict[str, Any]],
) -> None:
    labels = namespace_manifest()["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
    # Enforcing is only honest if every pod complies (Knative's queue-proxy does: knative/serving
    # pkg/reconciler/revision/resources/queue.go queueSecurityContext).
    templates = pod_templates(built)
    assert len(templates) == 2 + 2 + 6  # StatefulSets, Job and CronJob, Knative Services
    problems = {owner: restricted_violations(pod) for owner, pod in templates.items()}
    assert not {owner: p for owner, p in problems.items() if p}


def test_restricted_check_bites(built: list[dict[str, Any]]) -> None:
    pod = pod_templates(built)["StatefulSet postgres"]
    assert not restricted_violations(pod)
    broken = yaml.safe_load(yaml.safe_dump(pod))
    del broken["securityContext"]["seccompProfile"]
    broken["containers"][0]["securityContext"]["capabilities"]["drop"] = []
    broken["volumes"] = [{"name": "host", "hostPath": {"path": "/"}}]
    assert len(restricted_violations(broken)) == 3


def test_database_claims_are_retained(built: list[dict[str, Any]]) -> None:
    for name in ("postgres", "redis"):
        spec = one(built, "StatefulSet", name)["spec"]
        assert spec["persistentVolumeClaimRetentionPolicy"] == {
            "whenDeleted": "Retain",
            "whenScaled": "Retain",
        }, name


def test_databases_run_as_their_images_user(built: list[dict[str, Any]]) -> None:
    for name, uid in IMAGE_USERS.items():
        pod = one(built, "StatefulSet", name)["spec"]["template"]["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == context["runAsGroup"] == context["fsGroup"] == uid, name
        assert pod["containers"][0]["image"].split(":")[0] == name


def test_databases_have_disruption_budgets(built: list[dict[str, Any]]) -> None:
    for name in ("postgres", "redis"):
        budget = one(built, "PodDisruptionBudget", name)["spec"]
        statefulset = one(built, "StatefulSet", name)["spec"]
        labels = statefulset["template"]["metadata"]["labels"]
        assert budget["selector"]["matchLabels"].items() <= labels.items(), name
        # One replica, the only copy: no voluntary eviction while it is healthy.
        assert budget["minAvailable"] == statefulset["replicas"] == 1, name
        assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow", name
    assert len(objects(built, "PodDisruptionBudget")) == 2


# --- the Redis password --------------------------------------------------------------------------


def test_no_secret_reaches_a_process_argument(built: list[dict[str, Any]]) -> None:
    for owner, pod in pod_templates(built).items():
        for c in pod.get("initContainers", []) + pod["containers"]:
            secret_vars = {
                e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
            }
            argv = " ".join(c.get("command", []) + c.get("args", []))
            for variable in secret_vars:
                assert f"$({variable})" not in argv, f"{owner} {c['name']} passes {variable}"
            assert "requirepass" not in c.get("args", []) and "--requirepass" not in argv, owner


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redis_reads_its_password_from_the_generated_config(
    built: list[dict[str, Any]], tmp_path: Path
) -> None:
    # The init container's script and the server's arguments, run here against a real
    # redis-server: the password works, nothing else does, and it is not in /proc/<pid>/cmdline.
    redis_server = shutil.which("redis-server")
    assert redis_server, "redis-server is missing (make test-setup installs it)"
    pod = one(built, "StatefulSet", "redis")["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    [server] = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_name = volumes["password"]["secret"]["secretName"]
    password = secret_data(built, secret_name)["REDIS_PASSWORD"]
    assert volumes["config"]["emptyDir"]["medium"] == "Memory"

    secrets_dir, config_dir = tmp_path / "secret", tmp_path / "config"
    secrets_dir.mkdir()
    config_dir.mkdir()
    (secrets_dir / "REDIS_PASSWORD").write_text(password)
    script = init["command"][-1]
    script = script.replace(mounts["password"], str(secrets_dir))
    script = script.replace(mounts["config"], str(config_dir))
    subprocess.run(init["command"][:-1] + [script], check=True, timeout=10)
    assert (config_dir / "redis.conf").stat().st_mode & 0o077 == 0

    [server_config_mount] = [m for m in server["volumeMounts"] if m["name"] == "config"]
    args = [a.replace(server_config_mount["mountPath"], str(config_dir)) for a in server["args"]]
    args[args.index("--dir") + 1] = str(tmp_path)  # the volume's mount point
    port = free_port()
    args = [*args, "--port", str(port), "--bind", "127.0.0.1"]
    process = subprocess.Popen([redis_server, *args], stdout=subprocess.DEVNULL)
    client = functools.partial(redis.Redis, host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client(password=password).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        with pytest.raises(redis.AuthenticationError):
            client(password="wrong").ping()
        with pytest.raises(
            (redis.AuthenticationError, redis.ResponseError), match="NOAUTH|authenticated"
        ):
            client().set("k", "v")
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert password.encode() not in cmdline
        assert client(password=password).config_get("maxmemory-policy") == {
            "maxmemory-policy": "noeviction"
        }
        # What the upload's 201 promises: the blob is in the fsynced append-only file.
        settings = client(password=password).config_get("append*")
        assert (settings["appendonly"], settings["appendfsync"]) == ("yes", "always")
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


# --- skaffold: Revisions and the migrate Job ------------------------------------------------------


def test_skaffold_labels_stay_off_knative_revision_templates() -> None:
    # skaffold's default allow-list labels every `metadata` inside a Knative Service, the
    # revision template's included; this entry replaces it: images anywhere, labels on top only.
    [entry] = [
        e
        for e in skaffold()["resourceSelector"]["allow"]
        if e["groupKind"] == "Service.serving.knative.dev"
    ]
    assert entry == {
        "groupKind": "Service.serving.knative.dev",
        "image": [".*"],
        "labels": [".metadata.labels"],
    }
    assert "deny" not in skaffold()["resourceSelector"], "a deny entry drops the kind altogether"


def test_migrate_job_is_replaced_before_each_deploy(built: list[dict[str, Any]]) -> None:
    hooks = [h["host"]["command"] for h in skaffold()["deploy"]["kubectl"]["hooks"]["before"]]
    job = one(built, "Job", "migrate")
    deletes = [
        c
        for c in hooks
        if re.search(
            rf"-n {job['metadata']['namespace']} delete job {job['metadata']['name']} "
            r"--ignore-not-found",
            c[-1],
        )
    ]
    assert deletes, hooks
    assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 3600


def test_running_the_migration_again_is_harmless(
    built: list[dict[str, Any]], tmp_path: Path
) -> None:
    [c] = one(built, "Job", "migrate")["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["imagerec", "migrate"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEREC_", "K_SINK"))}
    env["IMAGEREC_DATA_DIR"] = str(tmp_path)
    command = [sys.executable, "-c", "import sys; from workflows.cli import main; sys.exit(main())"]
    for _ in range(2):
        result = subprocess.run(
            [*command, "migrate"], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr


def test_backups_are_documented() -> None:
    readme = (KNATIVE / "README.md").read_text()
    section = readme.split("## Backups", 1)[1].split("\n## ", 1)[0]
    assert "pg_dump" in section and "redis-cli" in section and "--rdb" in section


# --- threads and probes ------------------------------------------------------------------------


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_threads_are_sized_to_the_cpu_limit_and_bound_concurrency(
    built: list[dict[str, Any]],
) -> None:
    # The default (as functions-framework's) is 4 threads per core of the node (os.cpu_count()),
    # whatever the container's CPU limit; Knative's containerConcurrency must not exceed them.
    services = knative_services(built)
    for name in STEPS:
        c = container(services[name])
        spec = services[name]["spec"]["template"]["spec"]
        threads = int(env_of(c)["THREADS"]["value"])
        limit = cpu_cores(c["resources"]["limits"]["cpu"])
        assert threads == spec["containerConcurrency"], name
        assert 1 <= threads <= 4 * limit, (name, threads, limit)
        if name == "detect-objects":  # CPU-bound: one request per core
            assert threads == limit
    web = container(services["web"])
    options = dict(zip(web["args"][::2], web["args"][1::2], strict=True))
    concurrency = services["web"]["spec"]["template"]["spec"]["containerConcurrency"]
    assert concurrency == int(options["--threads"])  # one process


def test_services_restart_when_their_server_is_gone(built: list[dict[str, Any]]) -> None:
    services = knative_services(built)
    for name in STEPS:
        probe = container(services[name])["livenessProbe"]
        # TCP: a step's few threads may all be busy for minutes; an HTTP probe would kill it.
        assert probe["tcpSocket"] == {"port": 8080}, name
        assert probe["periodSeconds"] * probe["failureThreshold"] >= 30, name
    web = container(services["web"])["livenessProbe"]
    assert web["httpGet"]["path"] == "/healthz"
    for name in ("postgres",):
        c = one(built, "StatefulSet", name)["spec"]["template"]["spec"]["containers"][0]
        startup = c["startupProbe"]
        # Crash recovery may take minutes before the server first answers.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
        assert "initialDelaySeconds" not in c["livenessProbe"]


# skaffold's label transform (GoogleContainerTools/skaffold v2.24
# pkg/skaffold/kubernetes/manifest/visitor.go traverseManifestFields/visitFields and labels.go
# labelsSetter/allowByNavpath), for an allow-listed kind without deny entries.
SKAFFOLD_DEFAULT_KSVC = {
    "groupKind": "Service.serving.knative.dev",
    "image": [".*"],
    "labels": [".*"],
}


def skaffold_set_labels(manifest: dict, allow: dict, labels: dict[str, str]) -> dict:
    manifest = copy.deepcopy(manifest)

    def allowed(navpath: str, key: str) -> str | None:
        for path in allow["labels"]:
            if path == ".*":
                return "labels" if key == "metadata" else None
            head, _, field = path.rpartition(".")
            if navpath == head:
                return field
        return None

    def visit(navpath: str, node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                visit(navpath, item)
        elif isinstance(node, dict):
            for key, value in node.items():
                field = allowed(f"{navpath}.{key}", key)
                if field is None:
                    visit(f"{navpath}.{key}", value)
                elif isinstance(value, dict):
                    value.setdefault(field, {}).update(labels)

    visit("", manifest)
    return manifest


def test_skaffold_run_id_would_roll_revisions_without_the_selector(
    built: list[dict[str, Any]],
) -> None:
    run_id = {"skaffold.dev/run-id": "8e1f"}
    [ours] = [
        e
        for e in skaffold()["resourceSelector"]["allow"]
        if e["groupKind"] == "Service.serving.knative.dev"
    ]
    for name, service in knative_services(built).items():
        template = service["spec"]["template"]
        # skaffold's default: the label lands in the revision template, a new Revision per run.
        default = skaffold_set_labels(service, SKAFFOLD_DEFAULT_KSVC, run_id)
        assert default["spec"]["template"] != template, name
        # With skaffold.yaml's entry: on the Service's metadata only.
        labelled = skaffold_set_labels(service, ours, run_id)
        assert labelled["spec"]["template"] == template, name
        assert labelled["metadata"]["labels"]["skaffold.dev/run-id"] == "8e1f"


# skaffold v2.24's defaults for StatefulSets (visitor.go TransformAllowlist, TransformDenylist).
SKAFFOLD_DEFAULT_STATEFULSET = {
    "groupKind": "StatefulSet.apps",
    "image": [".*"],
    "labels": [".*"],
    "podSpec": [".*"],
}


def test_skaffold_run_id_would_restart_the_databases_without_the_selector(
    built: list[dict[str, Any]],
) -> None:
    run_id = {"skaffold.dev/run-id": "8e1f"}
    [ours] = [
        e for e in skaffold()["resourceSelector"]["allow"] if e["groupKind"] == "StatefulSet.apps"
    ]
    assert ours["podSpec"] == [".*"] and ours["image"] == [".*"], "only the labels change"
    for statefulset in objects(built, "StatefulSet"):
        name = statefulset["metadata"]["name"]
        template = statefulset["spec"]["template"]
        # skaffold's default: the run id lands in the pod template, a rolling restart per run.
        default = skaffold_set_labels(statefulset, SKAFFOLD_DEFAULT_STATEFULSET, run_id)
        assert default["spec"]["template"] != template, name
        labelled = skaffold_set_labels(statefulset, ours, run_id)
        assert labelled["spec"] == statefulset["spec"], name
        assert labelled["metadata"]["labels"]["skaffold.dev/run-id"] == "8e1f"


# --- what the README tells an operator to run ---------------------------------------------


def readme() -> str:
    return (KNATIVE / "README.md").read_text()


def test_every_skaffold_run_the_readme_says_forwards_asks_for_it() -> None:
    # `skaffold run` forwards nothing unless --port-forward says so; `dev` forwards the
    # profile's portForward entries by default (skaffold cmd/skaffold/app/cmd/flags.go).
    text = readme()
    commands = list(re.finditer(r"skaffold run -p (?:kind|minikube)[^\n`]*", text))
    assert commands
    for command in commands:
        # Either the command asks for it, or the sentence goes on to forward by hand.
        after = text[command.end() : command.end() + 120]
        assert "--port-forward=user" in command[0] or "kubectl -n kourier-system port-forward" in (
            " ".join(after.split())
        ), command[0]
    assert "`skaffold dev -p kind` (or `skaffold run -p kind`)" not in readme()


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


KUBERNETES_FLOOR = (1, 34)  # knative/pkg version/version.go on release-1.22 and release-1.23


def test_the_quickstart_pins_a_kind_node_knative_accepts() -> None:
    [image] = re.findall(r"kind create cluster[^\n]*\n?[^\n]*--image (\S+)", readme())
    match = re.fullmatch(r"kindest/node:v(\d+\.\d+)\.\d+@sha256:[0-9a-f]{64}", image)
    assert match, f"pin the node image by tag and digest: {image}"
    assert version(match[1]) >= KUBERNETES_FLOOR


def test_the_kafka_broker_release_matches_eventings_minor_version() -> None:
    [eventing] = re.findall(
        r"knative/eventing/releases/download/knative-v(\d+\.\d+)\.\d+", readme()
    )
    kafka = re.findall(r"eventing-kafka-broker/releases/tag/knative-v(\d+\.\d+)\.\d+", readme())
    assert kafka and set(kafka) == {eventing}, (eventing, kafka)
