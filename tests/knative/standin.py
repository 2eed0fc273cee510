"""The harness's only simulated part: what Knative Serving's controllers and kube-dns would do.

No pod can run here, so nothing would ever make a Knative Service Ready. `ServingStandIn`
stands in for Serving's controller, activator and the cluster DNS, and for nothing else:

- every Knative Service (already defaulted and validated by Serving's real webhook) gets the
  status Serving's controller writes once its revision is ready: Ready, ConfigurationsReady and
  RoutesReady True, observedGeneration, latestCreated/ReadyRevisionName `<name>-00001`, `url`
  and `address.url` `http://<name>.<namespace>.svc.cluster.local` (a cluster-local Service's
  address, as Serving writes it);
- that name is put into the pods' hosts files at the address of the process the test registered
  for the Service (`serve`), the part kube-dns plus Kourier would play; a Service nobody serves
  has no address in the hosts files, as a Service whose pods never start;
- each ExternalName Service (the InMemoryChannel controller's `<channel>-kn-channel`) gets the
  address its externalName resolves to, as kube-dns answers a CNAME.

It does not scale, queue, time out requests (Serving's `timeoutSeconds`), nor enforce
NetworkPolicies; tests that need those say so.
"""

from __future__ import annotations

import threading
import urllib.error

from harness import CLUSTER_DOMAIN, Cluster


class ServingStandIn:
    def __init__(self, cluster: Cluster, interval: float = 0.3) -> None:
        self.cluster = cluster
        self.interval = interval
        self.served: dict[tuple[str, str], str] = {}  # (namespace, service) -> ip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="serving-stand-in", daemon=True)
        self.errors: list[str] = []

    def start(self) -> ServingStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def serve(self, namespace: str, service: str, ip: str) -> None:
        """The Knative Service `service` in `namespace` is answered by a process at ip:80."""
        self.served[(namespace, service)] = ip
        self.cluster.set_hosts({f"{service}.{namespace}.{CLUSTER_DOMAIN}": ip})

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
            except (urllib.error.URLError, OSError, ValueError) as error:
                self.errors.append(repr(error))

    def sync(self) -> None:
        ksvcs = self.cluster.get("/apis/serving.knative.dev/v1/services") or {"items": []}
        for ksvc in ksvcs["items"]:
            meta = ksvc["metadata"]
            status = ksvc.get("status", {})
            ready = any(
                c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
            )
            if ready and status.get("observedGeneration") == meta["generation"]:
                continue
            url = f"http://{meta['name']}.{meta['namespace']}.{CLUSTER_DOMAIN}"
            revision = f"{meta['name']}-{meta['generation']:05d}"
            conditions = [
                {"type": t, "status": "True", "lastTransitionTime": _now()}
                for t in ("ConfigurationsReady", "Ready", "RoutesReady")
            ]
            self.cluster.patch_status(
                f"/apis/serving.knative.dev/v1/namespaces/{meta['namespace']}/services/{meta['name']}",
                {
                    "observedGeneration": meta["generation"],
                    "conditions": conditions,
                    "latestCreatedRevisionName": revision,
                    "latestReadyRevisionName": revision,
                    "url": url,
                    "address": {"url": url},
                    "traffic": [{"revisionName": revision, "latestRevision": True, "percent": 100}],
                },
            )
        services = self.cluster.get("/api/v1/services") or {"items": []}
        names = {}
        for svc in services["items"]:
            target = svc["spec"].get("externalName")
            if svc["spec"].get("type") == "ExternalName" and target in self.cluster.hosts:
                meta = svc["metadata"]
                names[f"{meta['name']}.{meta['namespace']}.{CLUSTER_DOMAIN}"] = self.cluster.hosts[
                    target
                ]
        if names:
            self.cluster.set_hosts(names)


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
