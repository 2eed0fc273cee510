"""knative/kn-deploy.sh against the kustomize render: the same deployment, object by object.

The script runs for real (sh) with a recording `kn` and `kubectl` first on PATH. Each recorded
command is then replayed into the objects it would create: YAML that kubectl applies is taken as
is; a kn command is turned into its object the way knative/client v1.23 builds it (flags read
from `pkg/commands/service/configuration_edit_flags.go`, `pkg/flags/podspec_helper.go`,
`pkg/serving/config_changes.go`, `pkg/flags/sink/sink.go`, `pkg/util/parsing_helper.go`; an
unknown flag fails the test rather than being guessed). kn resolves every sink by fetching the
object first, so a sink naming something not yet created (or of the wrong resource, like
`channel:` for a Sequence's InMemoryChannel) fails here as it fails on a cluster.

Every object is then compared with the kustomize build of the same images, field by field;
what differs must be listed in DIFFERENCES, with the reason, and every listed difference must
still occur (so the list cannot go stale).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_manifests import KNATIVE, build

REG, TAG = "registry.test/imagerec", "9.9.9"
NAMESPACE = "imagerec"

FAKE = r'''#!{python}
"""A recording stand-in for kn and kubectl: logs argv (and what `apply -f` would read)."""
import json, os, sys, base64
tool, argv = os.path.basename(sys.argv[0]), sys.argv[1:]
entry = {{"tool": tool, "argv": argv, "inputs": []}}
if tool == "kubectl" and "apply" in argv:
    for i, a in enumerate(argv):
        if a == "-f":
            path = argv[i + 1]
            entry["inputs"].append(sys.stdin.read() if path == "-" else open(path).read())
with open(os.environ["RECORD"], "a") as log:
    log.write(json.dumps(entry) + "\n")
if "describe" in argv:
    sys.exit(1)  # nothing exists yet: the script creates it
if tool == "kubectl" and argv[:1] == ["-n"] and argv[2:5] == ["create", "secret", "generic"]:
    name = argv[5]
    env_file = next(a.split("=", 1)[1] for a in argv if a.startswith("--from-env-file="))
    data = {{}}
    for line in open(env_file).read().splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            data[key] = base64.b64encode(value.encode()).decode()
    print(json.dumps({{"apiVersion": "v1", "kind": "Secret",
                      "metadata": {{"name": name, "namespace": argv[1]}}, "data": data}}))
'''


# --- running the script ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deploy_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kn") / "knative"
    import shutil

    shutil.copytree(KNATIVE, folder, ignore=shutil.ignore_patterns("*.env"))
    return folder


@pytest.fixture(scope="module")
def recorded(deploy_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    bin_dir = tmp_path_factory.mktemp("bin")
    for tool in ("kn", "kubectl"):
        path = bin_dir / tool
        path.write_text(FAKE.format(python=sys.executable))
        path.chmod(0o755)
    record = bin_dir / "record.jsonl"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RECORD": str(record),
        "REG": REG,
        "TAG": TAG,
    }
    result = subprocess.run(
        ["sh", str(deploy_copy / "kn-deploy.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in record.read_text().splitlines()]


# --- kn, as knative/client builds objects ----------------------------------------------------

# kn sink prefixes (pkg/flags/sink/sink.go DefaultMappings) -> (apiVersion, resource)
SINK_PREFIXES = {
    "ksvc": ("serving.knative.dev/v1", "services"),
    "kservice": ("serving.knative.dev/v1", "services"),
    "broker": ("eventing.knative.dev/v1", "brokers"),
    "channel": ("messaging.knative.dev/v1", "channels"),
    "svc": ("v1", "services"),
    "service": ("v1", "services"),
}


def resource_of(obj: dict) -> tuple[str, str]:
    """(apiVersion, plural resource) of an object, as kn's dynamic client addresses it."""
    return obj["apiVersion"], obj["kind"].lower() + "s"


def resolve_sink(sink: str, namespace: str, existing: dict) -> dict:
    """kn's Parse + Resolve: the object must exist; the Destination names its real kind."""
    parts = sink.split(":", 2)
    if len(parts) == 1:
        prefix, name, ns = "ksvc", parts[0], ""
    else:
        prefix, name = parts[0], parts[1]
        ns = parts[2] if len(parts) == 3 else ""
    if prefix in SINK_PREFIXES:
        api_version, resource = SINK_PREFIXES[prefix]
    else:  # GROUP/VERSION/RESOURCE
        api_version, resource = prefix.rsplit("/", 1)
        resource = resource.lower() if resource.endswith("s") else resource.lower() + "s"
    namespace = ns or namespace
    for (kind, obj_ns, obj_name), obj in existing.items():
        if (obj_ns, obj_name) == (namespace, name) and resource_of(obj) == (api_version, resource):
            return {
                "ref": {
                    "apiVersion": obj["apiVersion"],
                    "kind": kind,
                    "name": name,
                    "namespace": namespace,
                }
            }
    raise AssertionError(f"kn: sink {sink!r}: {resource}.{api_version} {name!r} not found")


def key_values(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(","))


def probe_handler(text: str) -> dict:
    """pkg/flags/podspec_helper.go resolveProbeHandler."""
    parts = text.split(":")
    if parts[0] in ("http", "https"):
        assert len(parts) == 4, text
        handler = {"path": parts[3]}
        if parts[1]:
            handler["host"] = parts[1]
        if parts[2]:
            handler["port"] = int(parts[2]) if parts[2].isdigit() else parts[2]
        if parts[0] == "https":
            handler["scheme"] = "HTTPS"
        return {"httpGet": handler}
    if parts[0] == "tcp":
        assert len(parts) == 3, text
        handler = {"port": int(parts[2]) if parts[2].isdigit() else parts[2]}
        if parts[1]:
            handler["host"] = parts[1]
        return {"tcpSocket": handler}
    if parts[0] == "exec":
        return {"exec": {"command": parts[1].split(",")}}
    raise AssertionError(f"unsupported probe {text}")


PROBE_OPTIONS = {
    "initialdelayseconds": "initialDelaySeconds",
    "timeoutseconds": "timeoutSeconds",
    "periodseconds": "periodSeconds",
    "successthreshold": "successThreshold",
    "failurethreshold": "failureThreshold",
}
STRICT = {  # pkg/flags/podspec_helper.go DefaultStrictSecCon
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def options(argv: list[str]) -> list[tuple[str, str | None]]:
    """(flag, value) pairs; `--flag=value` and `--flag value`; boolean flags get None."""
    booleans = {"--cluster-local", "--force", "--no-wait", "--wait"}
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        assert arg.startswith("-"), f"unexpected positional {arg!r} in {argv}"
        if "=" in arg and arg.startswith("--"):
            flag, value = arg.split("=", 1)
            pairs.append((flag, value))
            i += 1
        elif arg in booleans:
            pairs.append((arg, None))
            i += 1
        else:
            pairs.append((arg, argv[i + 1]))
            i += 2
    return pairs


def kn_service(name: str, argv: list[str]) -> dict:
    """`kn service create NAME ...`, as create.go constructService + editFlags.Apply build it."""
    namespace = NAMESPACE
    service: dict[str, Any] = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {}, "annotations": {}},
        "spec": {"template": {"metadata": {"labels": {}, "annotations": {}}, "spec": {}}},
    }
    template = service["spec"]["template"]
    c: dict[str, Any] = {}
    template["spec"]["containers"] = [c]
    liveness_options = readiness_options = None
    for flag, value in options(argv):
        if flag in ("-n", "--namespace"):
            namespace = value
        elif flag == "--force":
            pass
        elif flag == "--image":
            c["image"] = value
            template["metadata"]["annotations"]["client.knative.dev/user-image"] = value
        elif flag == "--cluster-local":
            service["metadata"]["labels"]["networking.knative.dev/visibility"] = "cluster-local"
        elif flag in (
            "--label-service",
            "--label-revision",
            "--annotation-service",
            "--annotation-revision",
        ):
            key, val = value.split("=", 1)
            where = service if flag.endswith("-service") else template
            field = "labels" if flag.startswith("--label") else "annotations"
            where["metadata"][field][key] = val
        elif flag == "--cmd":
            c.setdefault("command", []).append(value)
        elif flag == "--arg":
            c.setdefault("args", []).append(value)
        elif flag == "--port":
            port_name, _, number = value.rpartition(":")
            port = {"containerPort": int(number)}
            if port_name:
                port["name"] = port_name
            c["ports"] = [port]
        elif flag in ("--scale-min", "--scale-max"):
            key = "min-scale" if flag == "--scale-min" else "max-scale"
            template["metadata"]["annotations"][f"autoscaling.knative.dev/{key}"] = str(int(value))
        elif flag == "--concurrency-limit":
            template["spec"]["containerConcurrency"] = int(value)
        elif flag == "--timeout":
            template["spec"]["timeoutSeconds"] = int(value)
        elif flag in ("--request", "--limit"):
            bound = "requests" if flag == "--request" else "limits"
            c.setdefault("resources", {}).setdefault(bound, {}).update(key_values(value))
        elif flag == "--env":
            key, val = value.split("=", 1)
            c.setdefault("env", []).append({"name": key, "value": val})
        elif flag == "--env-value-from":
            key, source = value.split("=", 1)
            kind, ref_name, ref_key = source.split(":")
            assert kind in ("secret", "sc"), source
            c.setdefault("env", []).append(
                {"name": key, "valueFrom": {"secretKeyRef": {"name": ref_name, "key": ref_key}}}
            )
        elif flag == "--probe-readiness":
            c["readinessProbe"] = probe_handler(value)
        elif flag == "--probe-liveness":
            c["livenessProbe"] = probe_handler(value)
        elif flag == "--probe-readiness-opts":
            readiness_options = value
        elif flag == "--probe-liveness-opts":
            liveness_options = value
        elif flag == "--security-context":
            assert value == "strict", value
            c["securityContext"] = copy.deepcopy(STRICT)
        else:
            raise AssertionError(f"kn service create: flag {flag} is not modelled")
    for probe, opts in (("readinessProbe", readiness_options), ("livenessProbe", liveness_options)):
        if opts:
            for key, val in key_values(opts).items():
                c[probe][PROBE_OPTIONS[key.lower()]] = int(val)
    service["metadata"]["namespace"] = namespace
    return service


def kn_delivery(pairs: list[tuple[str, str | None]], namespace: str, existing: dict) -> dict:
    delivery: dict[str, Any] = {}
    for flag, value in pairs:
        if flag == "--dl-sink":
            delivery["deadLetterSink"] = resolve_sink(value, namespace, existing)
        elif flag == "--retry":
            delivery["retry"] = int(value)
        elif flag == "--backoff-policy":
            delivery["backoffPolicy"] = value
        elif flag == "--backoff-delay":
            delivery["backoffDelay"] = value
        elif flag == "--timeout":
            delivery["timeout"] = value
    return delivery


def kn_object(command: list[str], existing: dict) -> dict | None:
    """The object a kn command creates, or None for a read-only command."""
    noun, verb, *rest = command
    if noun == "source":
        noun, verb, *rest = [f"source {verb}", *rest]
    if verb == "describe":
        return None
    assert verb == "create", command
    name, argv = rest[0], rest[1:]
    if noun == "service":
        return kn_service(name, argv)
    pairs = options(argv)
    namespace = dict(pairs).get("-n", NAMESPACE)
    metadata = {"name": name, "namespace": namespace}
    if noun == "broker":
        known = {
            "-n",
            "--class",
            "--dl-sink",
            "--retry",
            "--backoff-policy",
            "--backoff-delay",
            "--timeout",
        }
        assert {f for f, _ in pairs} <= known, pairs
        annotations = {"eventing.knative.dev/broker.class": dict(pairs)["--class"]}
        return {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {**metadata, "annotations": annotations},
            "spec": {"delivery": kn_delivery(pairs, namespace, existing)},
        }
    if noun == "trigger":
        assert {f for f, _ in pairs} <= {"-n", "--broker", "--filter", "--sink"}, pairs
        attributes = dict(value.split("=", 1) for flag, value in pairs if flag == "--filter")
        return {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": metadata,
            "spec": {
                "broker": dict(pairs)["--broker"],
                "filter": {"attributes": attributes},
                "subscriber": resolve_sink(dict(pairs)["--sink"], namespace, existing),
            },
        }
    if noun == "source binding":
        assert {f for f, _ in pairs} <= {"-n", "--subject", "--sink"}, pairs
        kind, group_version, name_or_selector = dict(pairs)["--subject"].split(":", 2)
        subject = {"apiVersion": group_version, "kind": kind, "namespace": namespace}
        if "=" in name_or_selector:
            subject["selector"] = {"matchLabels": key_values(name_or_selector)}
        else:
            subject["name"] = name_or_selector
        return {
            "apiVersion": "sources.knative.dev/v1",
            "kind": "SinkBinding",
            "metadata": metadata,
            "spec": {
                "subject": subject,
                "sink": resolve_sink(dict(pairs)["--sink"], namespace, existing),
            },
        }
    raise AssertionError(f"kn {noun} {verb} is not modelled")


# --- replaying the recording ----------------------------------------------------------------------


def replay(records: list[dict]) -> dict[tuple[str, str, str], dict]:
    objects: dict[tuple[str, str, str], dict] = {}

    def put(obj: dict) -> None:
        obj.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
        if obj["kind"] == "Namespace":
            obj["metadata"].pop("namespace")
        key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        objects[key] = obj

    for record in records:
        argv = record["argv"]
        if record["tool"] == "kn":
            obj = kn_object(argv, objects)
            if obj:
                put(obj)
            continue
        words = [a for a in argv if not a.startswith("-")]
        namespace = argv[argv.index("-n") + 1] if "-n" in argv else NAMESPACE
        if "apply" in argv:
            for text in record["inputs"]:
                for doc in yaml.safe_load_all(text):
                    if doc:
                        put(doc)
        elif "create" in argv and "--dry-run=client" in argv:
            pass  # only prints; the apply that reads it is recorded next
        elif "annotate" in argv:
            kind, name, *pairs = words[words.index("annotate") + 1 :]
            [obj] = [
                o
                for (k, ns, n), o in objects.items()
                if k.lower() == kind and (ns, n) == (namespace, name)
            ]
            obj["metadata"].setdefault("annotations", {}).update(key_values(",".join(pairs)))
        elif "delete" in argv:
            kind, name = words[words.index("delete") + 1 :][:2]
            objects.pop((kind.capitalize(), namespace, name), None)
        else:
            raise AssertionError(f"kubectl {shlex.join(argv)} is not modelled")
    return objects


@pytest.fixture(scope="module")
def kn_objects(recorded: list[dict]) -> dict[tuple[str, str, str], dict]:
    return replay(recorded)


@pytest.fixture(scope="module")
def rendered(deploy_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The kustomize build of the same images, Secrets without their hash suffix."""
    import shutil

    folder = tmp_path_factory.mktemp("render") / "knative"
    shutil.copytree(deploy_copy, folder)  # with the credentials kn-deploy.sh generated
    config = yaml.safe_load((folder / "kustomization.yaml").read_text())
    # As README.md's `kustomize edit set image` does, on the top kustomization.
    config["images"] = [
        {"name": name, "newName": f"{REG}/{name}", "newTag": TAG}
        for name in ("imagerec-web", "imagerec-step", "imagerec-detector")
    ]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(config))
    text = yaml.safe_dump_all(build(folder))
    text = re.sub(r"\b(imagerec-(?:app|postgres|redis))-[a-z0-9]{10}\b", r"\1", text)
    return {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
        for o in yaml.safe_load_all(text)
        if o
    }


# --- comparing ------------------------------------------------------------------------------------

PART_OF = "app.kubernetes.io/part-of"


def normalised(obj: dict) -> dict:
    """What means the same to Kubernetes, written one way."""
    obj = copy.deepcopy(obj)
    namespace = obj["metadata"].get("namespace")

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: visit(v) for k, v in node.items()}
            # A reference's namespace defaults to the referring object's (knative.dev/pkg
            # apis/duck/v1 KReference; tracker.Reference).
            if {"apiVersion", "kind"} <= set(node) and node.get("namespace") == namespace:
                node.pop("namespace")
            if "env" in node and isinstance(node["env"], list):
                # Order is meaningless without $(VAR) references, asserted below.
                node["env"] = sorted(node["env"], key=lambda e: e["name"])
            for bound in ("requests", "limits"):
                if bound in node and isinstance(node[bound], dict):
                    node[bound] = {k: quantity(v) for k, v in node[bound].items()}
            return {k: v for k, v in node.items() if v != {}}
        if isinstance(node, list):
            return [visit(v) for v in node]
        return node

    obj = visit(obj)
    if obj["kind"] == "Secret":
        obj["data"] = {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
        obj.pop("type", None)  # Opaque is the default
    return obj


def quantity(value: Any) -> float:
    text = str(value)
    units = {"m": 1e-3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where the render (a) and kn-deploy (b) differ."""
    if isinstance(a, dict) and b == "<absent>":
        b = {}
    if isinstance(b, dict) and a == "<absent>":
        a = {}
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            found += differences(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{path}/{key}")
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{path}/{i}")
        ]
    return [] if a == b else [path]


# Every way the kn deployment differs from the render: (kind, name regex, path regex) -> reason.
KSVC_CONTAINER = r"/spec/template/spec/containers/0"
DIFFERENCES = {
    ("Namespace", ".*", "<object>"): "kn-deploy.sh applies namespace.yaml; the kustomize build "
    "leaves it out on purpose, so that deleting the build never deletes it (namespace.yaml)",
    (".*", ".*", f"/metadata/labels/{PART_OF}"): "kustomize's `labels:` adds it to every "
    "object; the raw YAML the script applies has none, and kn broker/trigger/binding create "
    "have no label flag (the kn services get it with --label-service: asserted separately)",
    (
        "Service",
        ".*",
        r"/spec/template/metadata/annotations/client\.knative\.dev/user-image",
    ): "kn records the image it was given, so that a later `kn service update` can pin its digest",
    ("Service", ".*", f"{KSVC_CONTAINER}/name"): "kn leaves the container unnamed (Serving "
    "names it user-container); the YAML names it step or web. Nothing refers to the name",
    ("Trigger", ".*", "/spec/delivery/.*"): "kn trigger create has no delivery flags: the Broker's "
    "delivery applies instead (the same retries, backoff and dead-letter sink; a 75 s timeout, "
    "where on-accepted's own is 30 s, harmless since the Sequence's channel answers at once)",
}


def listed(kind: str, name: str, path: str) -> str | None:
    for (kind_re, name_re, path_re), reason in DIFFERENCES.items():
        if (
            re.fullmatch(kind_re, kind)
            and re.fullmatch(name_re, name)
            and re.fullmatch(path_re, path)
        ):
            return reason
    return None


def test_the_script_creates_every_object_of_the_render(kn_objects: dict, rendered: dict) -> None:
    missing = set(rendered) - set(kn_objects)
    assert not missing, f"kn-deploy.sh does not create {sorted(missing)}"
    extra = {k for k in set(kn_objects) - set(rendered) if not listed(k[0], k[2], "<object>")}
    assert not extra, f"kn-deploy.sh creates more than the render: {sorted(extra)}"


def test_every_object_matches_the_render_but_for_listed_differences(
    kn_objects: dict, rendered: dict
) -> None:
    unlisted, used = [], set()
    for key in sorted(set(rendered) & set(kn_objects)):
        kind, _, name = key
        for path in differences(normalised(rendered[key]), normalised(kn_objects[key])):
            reason = listed(kind, name, path)
            if reason is None:
                unlisted.append(f"{kind} {name} {path}")
            else:
                used.add(reason)
    for key in set(kn_objects) - set(rendered):
        used.add(listed(key[0], key[2], "<object>"))
    assert not unlisted, "differences not listed in DIFFERENCES:\n" + "\n".join(unlisted)
    stale = set(DIFFERENCES.values()) - used
    assert not stale, f"listed differences that no longer occur: {stale}"


def test_the_comparison_sees_what_matters(kn_objects: dict, rendered: dict) -> None:
    # Each kind of drift the issue names is caught: change it on the kn side and it shows up.
    key = ("Service", NAMESPACE, "detect-objects")
    base = normalised(rendered[key])
    for change in (
        lambda s: s["spec"]["template"]["spec"].update(timeoutSeconds=60),
        lambda s: s["spec"]["template"]["spec"].update(containerConcurrency=9),
        lambda s: s["spec"]["template"]["metadata"]["annotations"].update(
            {"autoscaling.knative.dev/max-scale": "9"}
        ),
        lambda s: s["spec"]["template"]["spec"]["containers"][0]["env"].append(
            {"name": "THREADS", "value": "16"}
        ),
        lambda s: s["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(
            cpu="4"
        ),
        lambda s: s["spec"]["template"]["spec"]["containers"][0]["livenessProbe"].update(
            periodSeconds=1
        ),
        lambda s: s["spec"]["template"]["spec"]["containers"][0]["args"].append("--debug"),
        lambda s: s["spec"]["template"]["spec"]["containers"][0].update(image="other"),
    ):
        drifted = copy.deepcopy(kn_objects[key])
        change(drifted)
        found = [p for p in differences(base, normalised(drifted)) if not listed("Service", "x", p)]
        assert found, change
    trigger = copy.deepcopy(kn_objects[("Trigger", NAMESPACE, "on-accepted")])
    trigger["spec"]["subscriber"]["ref"]["kind"] = "InMemoryChannel"
    assert differences(
        normalised(rendered[("Trigger", NAMESPACE, "on-accepted")]), normalised(trigger)
    )


def test_no_environment_variable_refers_to_another(rendered: dict) -> None:
    # The comparison ignores env order; that is only sound while nothing uses $(VAR) expansion.
    for obj in rendered.values():
        found = re.findall(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", json.dumps(obj.get("spec", {})))
        assert not found, (obj["metadata"]["name"], found)


def test_on_accepted_names_the_sequence(recorded: list[dict], kn_objects: dict) -> None:
    trigger = kn_objects[("Trigger", NAMESPACE, "on-accepted")]
    assert trigger["spec"]["subscriber"]["ref"] == {
        "apiVersion": "flows.knative.dev/v1",
        "kind": "Sequence",
        "name": "process-image",
        "namespace": NAMESPACE,
    }
    # kn resolves the sink by fetching it, so the Sequence must exist by then.
    commands = [(r["tool"], r["argv"]) for r in recorded]
    sequence_applied = next(
        i
        for i, (tool, argv) in enumerate(commands)
        if tool == "kubectl" and any("kind: Sequence" in t for t in recorded[i]["inputs"])
    )
    trigger_created = next(
        i
        for i, (tool, argv) in enumerate(commands)
        if tool == "kn" and "on-accepted" in argv and "create" in argv
    )
    assert sequence_applied < trigger_created


def test_the_old_channel_sink_fails_as_on_a_cluster(kn_objects: dict) -> None:
    # `channel:` means channels.messaging.knative.dev; the Sequence's channels are InMemoryChannels.
    with pytest.raises(AssertionError, match="not found"):
        resolve_sink("channel:process-image-kn-sequence-0", NAMESPACE, kn_objects)
    assert resolve_sink("flows.knative.dev/v1/sequences:process-image", NAMESPACE, kn_objects)


def created_by(record: dict, existing: dict) -> list[dict]:
    """The objects one recorded command sends to the API server."""
    if record["tool"] == "kn":
        obj = kn_object(record["argv"], existing)
        return [obj] if obj else []
    return [doc for text in record["inputs"] for doc in yaml.safe_load_all(text) if doc]


def test_the_broker_is_asynchronous_from_the_request_that_creates_it(
    recorded: list[dict],
) -> None:
    # The Broker makes its channel at once and the IMC dispatcher fixes the channel's mode when
    # it first serves it (docs/knative.md §12): an annotation patched in later comes too late.
    creations = [
        (record, obj)
        for i, record in enumerate(recorded)
        for obj in created_by(record, replay(recorded[:i]))
        if obj["kind"] == "Broker"
    ]
    assert creations, "the script never creates the Broker"
    record, broker = creations[0]
    assert broker["metadata"]["annotations"] == {
        "eventing.knative.dev/broker.class": "MTChannelBasedBroker",
        "messaging.knative.dev/async-handler": "true",
    }, record["argv"]
    annotations = [r["argv"] for r in recorded if "annotate" in r["argv"]]
    assert not annotations, "nothing is patched onto objects after their creation"


def test_broker_class_and_strict_security_contexts(recorded: list[dict], kn_objects: dict) -> None:
    broker = kn_objects[("Broker", NAMESPACE, "default")]
    assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == (
        "MTChannelBasedBroker"
    )
    services = [
        r["argv"] for r in recorded if r["tool"] == "kn" and r["argv"][:2] == ["service", "create"]
    ]
    assert len(services) == 6
    for argv in services:
        assert argv[argv.index("--security-context") + 1] == "strict", argv[2]


def test_the_readme_points_at_the_script() -> None:
    readme = (KNATIVE / "README.md").read_text()
    assert "kn-deploy.sh" in readme
    assert "kn service create" not in readme, "the kn commands live in kn-deploy.sh only"
