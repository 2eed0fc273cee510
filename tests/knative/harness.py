"""A real Kubernetes API server with Knative Eventing's own control and data plane, on this machine.

What runs (docs/knative-harness.md says why each part is there):

- etcd and kube-apiserver, built by tests/knative/build.sh; token authentication, RBAC,
  service-account tokens signed by a key made at start (OIDC).
- Knative Eventing's webhook, controller, MT channel broker controller, broker ingress and
  filter, InMemoryChannel controller and dispatcher, with the CRDs, config maps, RBAC and
  webhook configurations of the module's own config/ folder.
- Knative Serving's webhook, CRDs and config maps: every Knative Service is defaulted and
  validated by Serving itself.

Each Knative process is a "pod": a network namespace of its own (`ikn-<name>`) on the bridge
`ikn0` (10.213.0.0/16), with the Service ports redirected to the container ports as kube-proxy
would, an Endpoints and an EndpointSlice naming its address, and a hosts file
(/etc/netns/ikn-<name>/hosts, bind-mounted by `ip netns exec`) that gives the
`*.svc.cluster.local` names. The only simulated part is `ServingStandIn` (standin.py): no pod runs
here, so it marks each Knative Service Ready at the address of a process the test started.
Traffic stays on this machine: the bridge, its namespaces and loopback.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("IMAGEREC_KNATIVE_CACHE", Path.home() / ".cache" / "imagerec-knative"))
BRIDGE = "ikn0"
NETNS_PREFIX = "ikn-"
NETWORK = ipaddress.ip_network("10.213.0.0/16")
GATEWAY = "10.213.0.1"  # the bridge's address: the API server and the steps listen here
# 443, as the in-cluster address https://kubernetes.default.svc that Eventing's OIDC
# verifier fetches the issuer's discovery document from.
APISERVER_PORT = 443
CLUSTER_DOMAIN = "svc.cluster.local"
ADMIN_TOKEN = "imagerec-harness-admin"  # noqa: S105 - a test cluster's token, made per run


class HarnessError(RuntimeError):
    """A component of the harness is missing or did not come up."""


def versions() -> dict[str, str]:
    """The versions pinned in tests/knative/versions.sh."""
    found = {}
    for line in (HERE / "versions.sh").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isupper():
            found[key] = value.split()[0]
    return found


VERSIONS = versions()


def binary(component: str, name: str) -> Path:
    version = VERSIONS[f"{component.upper()}_VERSION"]
    return CACHE / f"{component}@{version}" / "bin" / name


def module_dir(module: str, version: str) -> Path:
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/local/go/bin"}
    modcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()
    path = Path(modcache) / f"{module}@{version}"
    if not path.is_dir():
        raise HarnessError(f"{path} missing: run tests/knative/build.sh")
    return path


def missing_components() -> list[str]:
    """What build.sh has not built (or downloaded) yet on this machine."""
    wanted = [binary("kubernetes", n) for n in ("etcd", "kube-apiserver", "kubectl")] + [
        binary("eventing", n)
        for n in (
            "controller",
            "webhook",
            "mtchannel_broker",
            "ingress",
            "filter",
            "channel_controller",
            "channel_dispatcher",
        )
    ]
    wanted += [binary("serving", "webhook"), binary("client", "kn")]
    missing = [str(p) for p in wanted if not os.access(p, os.X_OK)]
    for tool in ("ip", "nft", "openssl"):
        if shutil.which(tool) is None:
            missing.append(tool)
    return missing


def load_yaml(paths: Iterable[Path]) -> list[dict]:
    docs = []
    for path in paths:
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


@dataclass
class Pod:
    """A Knative process in a network namespace of its own, behind zero or more Services."""

    name: str
    namespace: str
    argv: list[str]
    env: dict[str, str]
    ip: str
    services: list[dict] = field(default_factory=list)
    process: subprocess.Popen | None = None
    deployment: dict | None = None

    @property
    def netns(self) -> str:
        return NETNS_PREFIX + self.name


class Cluster:
    """Starts, drives and stops the cluster. One per machine at a time (a file lock)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen] = []
        self.pods: dict[str, Pod] = {}
        self.hosts: dict[str, str] = {}
        self.host_addresses: list[str] = []
        self._next_pod = 10
        self._next_host = 10
        self._lock = None
        self.kubeconfig = workdir / "kubeconfig"
        self.eventing_config = (
            module_dir("knative.dev/eventing", VERSIONS["EVENTING_VERSION"]) / "config"
        )
        self.serving_config = (
            module_dir("knative.dev/serving", VERSIONS["SERVING_VERSION"]) / "config"
        )

    # ----------------------------------------------------------------- start and stop
    def start(self) -> Cluster:
        CACHE.mkdir(parents=True, exist_ok=True)
        self._lock = open(CACHE / "cluster.lock", "w")  # noqa: SIM115 - held until stop()
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            self._network_up()
            self._certificates()
            self._start_etcd()
            self._start_apiserver()
            self._install_knative()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()
        if getattr(self, "_etcd_data", None):
            shutil.rmtree(self._etcd_data, ignore_errors=True)
        self._network_down()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _network_down(self) -> None:
        for line in run(["ip", "netns", "list"]).stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith(NETNS_PREFIX):
                subprocess.run(["ip", "netns", "delete", name], check=False)
                shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
        subprocess.run(["ip", "link", "delete", BRIDGE], check=False, capture_output=True)

    def _network_up(self) -> None:
        self._network_down()  # whatever a killed run left
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{GATEWAY}/{NETWORK.prefixlen}", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])

    def host_address(self) -> str:
        """A new address on the bridge, for a process of the test's on this side (a step)."""
        ip = f"10.213.1.{self._next_host}"
        self._next_host += 1
        run(["ip", "addr", "add", f"{ip}/{NETWORK.prefixlen}", "dev", BRIDGE])
        self.host_addresses.append(ip)
        return ip

    def _netns(self, pod: Pod) -> None:
        ns, veth = pod.netns, f"ikn{len(self.pods)}h"
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "link", "set", veth, "master", BRIDGE, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{pod.ip}/{NETWORK.prefixlen}", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        # No DNS server: every cluster name is in the hosts file; anything else fails at once.
        (etc / "resolv.conf").write_text(
            f"search knative-eventing.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN} cluster.local\n"
            "nameserver 127.0.0.1\n"
        )
        (etc / "hosts").write_text(self._hosts_text())
        # kube-proxy's part: a Service port reaches the container port. Only traffic to the pod's
        # own address: its calls to other pods' port 80 must leave it.
        rules = []
        for svc in pod.services:
            for port in svc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                if isinstance(target, int) and target != port["port"]:
                    rules.append(
                        f"ip daddr {pod.ip} tcp dport {port['port']} redirect to :{target}"
                    )
        if rules:
            body = "; ".join(rules)
            script = (
                "table ip kubeproxy {\n"
                f" chain pre {{ type nat hook prerouting priority dstnat; {body}; }}\n"
                f" chain out {{ type nat hook output priority -100; {body}; }}\n"
                "}\n"
            )
            run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script)

    def _hosts_text(self) -> str:
        lines = ["127.0.0.1 localhost"]
        lines += [f"{ip} {name}" for name, ip in sorted(self.hosts.items())]
        return "\n".join(lines) + "\n"

    def set_hosts(self, entries: dict[str, str]) -> None:
        """Adds cluster names to every pod's hosts file, rewritten in place: the bind mount
        keeps the inode, and Go's resolver re-reads a hosts file whose mtime changed."""
        if all(self.hosts.get(k) == v for k, v in entries.items()):
            return
        self.hosts.update(entries)
        text = self._hosts_text()
        for pod in self.pods.values():
            path = Path("/etc/netns") / pod.netns / "hosts"
            with open(path, "r+") as f:
                f.truncate(0)
                f.write(text)

    # ----------------------------------------------------------------- API server
    def _certificates(self) -> None:
        d = self.workdir / "pki"
        d.mkdir(exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run(["openssl", "req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.crt",
             "-days", "2", "-subj", "/CN=imagerec-harness-ca"])  # fmt: skip
        sans = ",".join(
            [f"IP:{GATEWAY}", "IP:127.0.0.1", "DNS:kubernetes", "DNS:kubernetes.default",
             "DNS:kubernetes.default.svc", f"DNS:kubernetes.default.{CLUSTER_DOMAIN}"]
        )  # fmt: skip
        run(["openssl", "req", *ec, "-keyout", d / "server.key", "-out", d / "server.csr",
             "-subj", "/CN=kube-apiserver"])  # fmt: skip
        (d / "ext").write_text(f"subjectAltName={sans}\n")
        run(["openssl", "x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.crt",
             "-CAkey", d / "ca.key", "-CAcreateserial", "-out", d / "server.crt", "-days", "2",
             "-extfile", d / "ext"])  # fmt: skip
        run(
            ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", d / "sa.key"]
        )
        run(["openssl", "ec", "-in", d / "sa.key", "-pubout", "-out", d / "sa.pub"])
        (d / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
        self.pki = d
        server = f"https://{GATEWAY}:{APISERVER_PORT}"
        self.server = server
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "h",
                            "cluster": {
                                "server": server,
                                "certificate-authority": str(d / "ca.crt"),
                            },
                        }
                    ],
                    "users": [{"name": "admin", "user": {"token": ADMIN_TOKEN}}],
                    "contexts": [{"name": "h", "context": {"cluster": "h", "user": "admin"}}],
                    "current-context": "h",
                }
            )
        )
        self._ssl = ssl.create_default_context(cafile=str(d / "ca.crt"))

    def _spawn(self, name: str, argv: list, env: dict | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else dict(os.environ),
        )
        log.close()
        self.processes.append(proc)
        return proc

    def _start_etcd(self) -> None:
        data = Path(
            tempfile.mkdtemp(
                prefix="ikn-etcd-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None
            )
        )
        self._etcd_data = data
        self._spawn(
            "etcd",
            [
                binary("kubernetes", "etcd"),
                "--name=harness",
                f"--data-dir={data}",
                "--listen-client-urls=http://127.0.0.1:23790",
                "--advertise-client-urls=http://127.0.0.1:23790",
                "--listen-peer-urls=http://127.0.0.1:23800",
                "--initial-advertise-peer-urls=http://127.0.0.1:23800",
                "--initial-cluster=harness=http://127.0.0.1:23800",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        d = self.pki
        self._spawn(
            "kube-apiserver",
            [
                binary("kubernetes", "kube-apiserver"),
                "--etcd-servers=http://127.0.0.1:23790",
                f"--bind-address={GATEWAY}",
                f"--advertise-address={GATEWAY}",
                f"--secure-port={APISERVER_PORT}",
                f"--tls-cert-file={d / 'server.crt'}",
                f"--tls-private-key-file={d / 'server.key'}",
                f"--client-ca-file={d / 'ca.crt'}",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer=https://kubernetes.default.{CLUSTER_DOMAIN}",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                # No kube-controller-manager or kubelet: nothing would keep the kubernetes
                # Service's endpoints, and webhooks are reached through the EndpointSlices the
                # harness writes (Knative's webhook configs name Services, never URLs).
                "--endpoint-reconciler-type=none",
                "--enable-aggregator-routing=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "-v=1",
            ],
        )
        self.wait(lambda: self.get("/readyz", raw=True) == "ok", 120, "kube-apiserver /readyz")

    # ----------------------------------------------------------------- API access
    def request(
        self, method: str, path: str, body: object = None, content_type: str = "application/json"
    ):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, context=self._ssl, timeout=30) as resp:  # noqa: S310
            return resp.read().decode()

    def get(self, path: str, raw: bool = False):
        try:
            text = self.request("GET", path)
        except (urllib.error.URLError, OSError, TimeoutError):
            return None
        return text if raw else json.loads(text)

    def patch_status(self, path: str, status: dict) -> None:
        self.request("PATCH", path + "/status", {"status": status}, "application/merge-patch+json")

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        proc = subprocess.run(
            [str(binary("kubernetes", "kubectl")), *args],
            input=input,
            capture_output=True,
            text=True,
            env=env,
        )
        if check and proc.returncode != 0:
            raise HarnessError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
            )
        return proc

    def apply(self, docs: list[dict]) -> None:
        if docs:
            self.kubectl(
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                "-",
                input=yaml.safe_dump_all(docs),
            )

    @staticmethod
    def wait(check, timeout: float, what: str, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except Exception as error:  # noqa: BLE001 - retried until the deadline
                last = error
            if last and not isinstance(last, Exception):
                return last
            time.sleep(interval)
        raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")

    # ----------------------------------------------------------------- Knative
    def _install_knative(self) -> None:
        ev, sv = self.eventing_config, self.serving_config
        eventing = load_yaml(
            sorted((ev / "core").rglob("*.yaml"))
            + sorted((ev / "channels" / "in-memory-channel").rglob("*.yaml"))
            + sorted((ev / "brokers" / "mt-channel-broker").rglob("*.yaml"))
        )
        serving = load_yaml(
            sorted((sv / "core").glob("*.yaml"))
            + sorted((sv / "core" / "200-roles").glob("*.yaml"))
            + sorted((sv / "core" / "300-resources").glob("*.yaml"))
            + sorted((sv / "core" / "configmaps").glob("*.yaml"))
            + sorted((sv / "core" / "deployments").glob("*.yaml"))
            + sorted((sv / "core" / "webhooks").glob("*.yaml"))
        )
        everything = eventing + serving
        skip = {"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
        webhooks = {"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}
        by_kind: dict[str, list[dict]] = {}
        for doc in everything:
            by_kind.setdefault(doc["kind"], []).append(doc)
        self.apply(by_kind.pop("Namespace", []))
        crds = by_kind.pop("CustomResourceDefinition", [])
        self.apply(crds)
        for crd in crds:
            self.kubectl(
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                f"crd/{crd['metadata']['name']}",
            )
        hooks = [d for k in webhooks for d in by_kind.pop(k, [])]
        deployments = by_kind.get("Deployment", [])
        services = [s for s in by_kind.get("Service", [])]
        # Serving's internal Certificate and Image objects need CRDs of knative.dev/networking and
        # knative.dev/caching, which only Serving's controllers use.
        internal = ("networking.internal.knative.dev/", "caching.internal.knative.dev/")
        rest = [
            d
            for k, ds in by_kind.items()
            if k not in skip
            for d in ds
            if not d["apiVersion"].startswith(internal)
        ]
        self.apply(rest)
        self._aggregate_cluster_roles()
        configmaps = {
            (d["metadata"]["namespace"], d["metadata"]["name"]): d
            for d in by_kind.get("ConfigMap", [])
        }

        def pod(deploy_name: str, namespace: str, component: str, exe: str, name: str) -> Pod:
            deploy = next(
                d
                for d in deployments
                if d["metadata"]["name"] == deploy_name and d["metadata"]["namespace"] == namespace
            )
            labels = deploy["spec"]["template"]["metadata"].get("labels", {})
            container = deploy["spec"]["template"]["spec"]["containers"][0]
            env = pod_env(container, namespace, name, configmaps)
            selected = [
                s
                for s in services
                if s["metadata"]["namespace"] == namespace
                and s["spec"].get("selector")
                and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())
            ]
            ip = f"10.213.0.{self._next_pod}"
            self._next_pod += 1
            made = Pod(name, namespace, [str(binary(component, exe))], env, ip, selected)
            made.deployment = deploy
            return made

        pods = [
            pod("eventing-webhook", "knative-eventing", "eventing", "webhook", "eventing-webhook"),
            pod("webhook", "knative-serving", "serving", "webhook", "serving-webhook"),
            pod(
                "eventing-controller",
                "knative-eventing",
                "eventing",
                "controller",
                "eventing-controller",
            ),
            pod(
                "mt-broker-controller",
                "knative-eventing",
                "eventing",
                "mtchannel_broker",
                "mt-broker-controller",
            ),
            pod(
                "mt-broker-ingress", "knative-eventing", "eventing", "ingress", "mt-broker-ingress"
            ),
            pod("mt-broker-filter", "knative-eventing", "eventing", "filter", "mt-broker-filter"),
            pod(
                "imc-controller",
                "knative-eventing",
                "eventing",
                "channel_controller",
                "imc-controller",
            ),
            pod(
                "imc-dispatcher",
                "knative-eventing",
                "eventing",
                "channel_dispatcher",
                "imc-dispatcher",
            ),
        ]
        for name in ("kubernetes.default.svc", f"kubernetes.default.{CLUSTER_DOMAIN}"):
            self.hosts[name] = GATEWAY
        for p in pods:
            for svc in p.services:
                self.hosts[
                    f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.{CLUSTER_DOMAIN}"
                ] = p.ip
                self.hosts[f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"] = p.ip
        for p in pods:
            self.pods[p.name] = p
            self._netns(p)
            self.apply(endpoints(p))
            self._deployment_available(p.deployment)
        # Webhooks first: their configurations are applied once they serve, and every object
        # after that is defaulted and validated by Knative itself. The InMemoryChannel's webhook
        # is served by its controller.
        for p in pods[:2]:
            self._start_pod(p)
        for ns, secret in (
            ("knative-eventing", "eventing-webhook-certs"),
            ("knative-serving", "webhook-certs"),
        ):
            self.wait(lambda n=ns, s=secret: self._secret_filled(n, s), 120, f"{ns}/{secret}")
        self.apply(hooks)
        for p in pods[2:]:
            self._start_pod(p)
        for hook in hooks:
            self.wait(
                lambda h=hook: self._hook_ready(h),
                120,
                f"{hook['kind']} {hook['metadata']['name']}",
            )
        self.check_alive()

    def _aggregate_cluster_roles(self) -> None:
        """What kube-controller-manager's clusterrole-aggregation controller does: an aggregated
        ClusterRole (Serving's knative-serving-admin, Eventing's addressable-resolver, ...)
        gets the rules of every ClusterRole its selectors match. Without it they grant nothing."""
        roles = self.get("/apis/rbac.authorization.k8s.io/v1/clusterroles")["items"]
        for role in roles:
            selectors = (role.get("aggregationRule") or {}).get("clusterRoleSelectors") or []
            if not selectors:
                continue
            rules = []
            for other in roles:
                labels = other["metadata"].get("labels") or {}
                if other is not role and any(
                    all(labels.get(k) == v for k, v in sel.get("matchLabels", {}).items())
                    for sel in selectors
                ):
                    rules.extend(r for r in other.get("rules") or [] if r not in rules)
            path = f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{role['metadata']['name']}"
            self.request("PATCH", path, {"rules": rules}, "application/merge-patch+json")

    def _deployment_available(self, deploy: dict) -> None:
        """The Deployment whose pod the harness runs, with the status the deployment controller
        would write for it (the IMC controller reads it: PropagateDispatcherStatus)."""
        self.apply([deploy])
        meta = deploy["metadata"]
        self.patch_status(
            f"/apis/apps/v1/namespaces/{meta['namespace']}/deployments/{meta['name']}",
            {
                "observedGeneration": 1,
                "replicas": 1,
                "updatedReplicas": 1,
                "readyReplicas": 1,
                "availableReplicas": 1,
                "conditions": [
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                ],
            },
        )

    def _service_account_kubeconfig(self, p: Pod) -> Path:
        """A kubeconfig with a token of the pod's service account, as the kubelet would mount
        (Knative checks who changed what: the IMC webhook admits spec.subscribers only from the
        eventing-controller's account)."""
        assert p.deployment is not None
        account = p.deployment["spec"]["template"]["spec"].get("serviceAccountName", "default")
        path = f"/api/v1/namespaces/{p.namespace}/serviceaccounts/{account}/token"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400},
        }
        token = json.loads(self.request("POST", path, body))["status"]["token"]
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["users"] = [{"name": "admin", "user": {"token": token}}]
        out = self.workdir / f"kubeconfig-{p.name}"
        out.write_text(yaml.safe_dump(config))
        return out

    def _start_pod(self, p: Pod) -> None:
        p.env["KUBECONFIG"] = str(self._service_account_kubeconfig(p))
        p.process = self._spawn(
            p.name, ["ip", "netns", "exec", p.netns, *p.argv], {**p.env, "PATH": os.environ["PATH"]}
        )

    def _secret_filled(self, ns: str, name: str) -> bool:
        secret = self.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
        return bool(secret and secret.get("data", {}).get("server-cert.pem"))

    def _hook_ready(self, hook: dict) -> bool:
        group = "admissionregistration.k8s.io/v1"
        plural = (
            "validatingwebhookconfigurations"
            if hook["kind"].startswith("Validating")
            else "mutatingwebhookconfigurations"
        )
        found = self.get(f"/apis/{group}/{plural}/{hook['metadata']['name']}")
        return bool(
            found
            and all(w.get("clientConfig", {}).get("caBundle") for w in found.get("webhooks", []))
        )

    def check_alive(self) -> None:
        dead = [
            p.name
            for p in self.pods.values()
            if p.process is not None and p.process.poll() is not None
        ]
        if dead:
            raise HarnessError(f"Knative processes exited: {dead} (logs in {self.logs})")

    # ----------------------------------------------------------------- readiness
    def conditions(self, obj: dict) -> dict[str, str]:
        return {c["type"]: c.get("status", "") for c in obj.get("status", {}).get("conditions", [])}

    def not_ready(self, namespace: str, kinds: Iterable[str]) -> list[str]:
        """Names of the objects of these kinds in namespace that are not Ready (with the reason)."""
        waiting = []
        for kind in kinds:
            out = json.loads(self.kubectl("get", kind, "-n", namespace, "-o", "json").stdout)
            for obj in out["items"]:
                ready = next(
                    (
                        c
                        for c in obj.get("status", {}).get("conditions", [])
                        if c["type"] == "Ready"
                    ),
                    None,
                )
                generation = obj["metadata"].get("generation")
                observed = obj.get("status", {}).get("observedGeneration")
                if (
                    not ready
                    or ready.get("status") != "True"
                    or (generation and observed != generation)
                ):
                    why = (
                        (ready or {}).get("message")
                        or (ready or {}).get("reason")
                        or "no Ready condition"
                    )
                    waiting.append(f"{obj['kind']}/{obj['metadata']['name']}: {why}")
        return waiting

    def wait_ready(self, namespace: str, kinds: Iterable[str], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            waiting = self.not_ready(namespace, kinds)
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"not Ready after {timeout:.0f} s in {namespace}:\n" + "\n".join(waiting)
                )
            time.sleep(1)

    def create_namespace(self, name: str) -> str:
        self.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
        return name


def pod_env(container: dict, namespace: str, pod_name: str, configmaps: dict) -> dict[str, str]:
    """The container's environment as the kubelet would set it (fieldRefs, config map keys)."""
    env = {"HOME": "/root", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        source = var.get("valueFrom", {})
        if "fieldRef" in source:
            fieldpath = source["fieldRef"]["fieldPath"]
            env[var["name"]] = {"metadata.namespace": namespace, "metadata.name": pod_name}.get(
                fieldpath, ""
            )
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            cm = configmaps.get((namespace, ref["name"]), {})
            env[var["name"]] = str(cm.get("data", {}).get(ref["key"], ""))
    env.setdefault("CONTAINER_NAME", container["name"])
    return env


def endpoints(p: Pod) -> list[dict]:
    """What the endpoints controller would write for the pod's Services (Endpoints for Knative's
    listers, an EndpointSlice for the API server's webhook calls)."""
    docs = []
    for svc in p.services:
        meta = svc["metadata"]
        ports = []
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            ports.append(
                {
                    "name": port.get("name", ""),
                    "port": target if isinstance(target, int) else port["port"],
                    "protocol": "TCP",
                }
            )
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "subsets": [{"addresses": [{"ip": p.ip}], "ports": ports}],
            }
        )
        docs.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{meta['name']}-harness",
                    "namespace": meta["namespace"],
                    "labels": {"kubernetes.io/service-name": meta["name"]},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [p.ip], "conditions": {"ready": True}}],
                "ports": ports,
            }
        )
    return docs
