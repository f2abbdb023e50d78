"""Stand-ins for the parts of Kubernetes that run pods, for the operator tests: what the
operator writes must start a working cluster.

No kube-apiserver, kubelet or container runtime can run on these machines. The API server is
kmock's ``KubernetesEmulator`` (objects, list, watch, patch); this module plays the rest:

- :class:`Kubelet` is the StatefulSet controller and the kubelet in one. It reads each
  StatefulSet through the API, creates its pods (``OnDelete``: a missing ordinal gets a pod from
  the current template; ordinals past ``replicas`` are deleted, highest first) and runs every
  pod's container as a real process: the container's ``command`` and ``args`` (``kafscale`` is
  the venv's, as the image's PATH has it), its ``env`` resolved as the kubelet does (``fieldRef``
  ``metadata.name``/``namespace``/``uid``, ``status.podIP``; ``$(VAR)`` references to earlier
  variables; ``envFrom`` Secrets), ``HOSTNAME`` set to the pod name, the working directory and
  emptyDir volumes under a directory per pod (an absolute mount path in an env value is mapped
  there too: there is no filesystem namespace). Each pod gets its own loopback address
  (127.X.Y.N: all of 127/8 is loopback on Linux), so every broker listens on the same ports as
  in a cluster. Readiness: the container's ``readinessProbe`` (HTTP GET) every
  :data:`PROBE_S` seconds, written to the pod's ``Ready`` condition and the StatefulSet's
  ``readyReplicas``. A pod deleted through the API gets SIGTERM, then SIGKILL after its
  ``terminationGracePeriodSeconds``; its replacement starts once the old process is gone (as a
  StatefulSet pod's name is reused only then). A container that exits by itself is restarted.
- :class:`ClusterDns` answers the cluster's DNS names in this process (``socket.getaddrinfo``
  patched while it is active): ``POD.SERVICE.NS.svc.DOMAIN`` is the pod's address, a
  ``SERVICE.NS.svc.DOMAIN`` of a Service with a selector is a ready pod it selects (round robin,
  as kube-proxy spreads connections). Other names resolve as usual. Clients in this process
  (kafka-python, the operator's admin client) thus reach the brokers by the names the brokers
  advertise.

Deviations, on purpose: probes run faster than their ``periodSeconds`` (tests are short), and
there is no scheduling, no resource limits, no image, no security context: processes run as the
test's user with its Python. Only processes started here are ever signalled, by their pid.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kafscale.operator.kube import Kube, KubeError, path

PROBE_S = 0.5
"""Seconds between readiness probes of a pod (the real kubelet: its periodSeconds)."""
TICK_S = 0.2
VENV_BIN = Path(sys.executable).parent


@dataclass
class PodRun:
    """One pod this kubelet runs."""

    namespace: str
    name: str
    statefulset: str
    ordinal: int
    ip: str
    root: Path
    pod: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    ready: bool = False
    deleted_at: float | None = None
    grace_s: float = 30.0
    exits: list[int] = field(default_factory=list)
    restarts: int = 0
    next_probe: float = 0.0
    error: str = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Kubelet:
    """Runs the pods of every StatefulSet in ``namespace`` (see the module docstring)."""

    def __init__(self, server: str, namespace: str, root: Path, domain: str = "cluster.local"):
        self.kube = Kube(server)
        self.namespace = namespace
        self.root = root
        self.domain = domain
        self.pods: dict[str, PodRun] = {}
        self.finished: list[PodRun] = []
        """Pods deleted and whose process exited (with their exit statuses)."""
        self.subnet = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
        self._ips: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._rr = itertools.count()
        self.events: list[str] = []
        """What happened, in order ("started kfs-broker-0", "SIGTERM kfs-broker-2", ...)."""
        self.timeline: list[tuple[float, str]] = []
        """The same with the time (``time.monotonic``) of each."""

    def _event(self, text: str) -> None:
        self.events.append(text)
        self.timeline.append((time.monotonic(), text))

    # --- lifecycle ---

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._loop())

    async def stop(self, timeout: float = 30) -> dict[str, int | None]:
        """Stop the loop, then SIGTERM every process and wait (SIGKILL after ``timeout``);
        pod name -> exit status (None: had to be killed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        statuses: dict[str, int | None] = {}
        runs = [r for r in self.pods.values() if r.running]
        for run in runs:
            assert run.proc is not None
            run.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for run in runs:
            assert run.proc is not None
            while run.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
                statuses[run.name] = None
            else:
                statuses[run.name] = run.proc.returncode
        if self._session is not None:
            await self._session.close()
        await self.kube.close()
        return statuses

    def kill_all(self) -> None:
        """SIGKILL whatever still runs (a test that failed half-way). The loop is cancelled
        first: it would restart a killed container whose pod still exists."""
        if self._task is not None:
            self._task.cancel()
        for run in [*self.pods.values(), *self.finished]:
            if run.proc is not None and run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()

    # --- what the DNS stand-in asks ---

    def ip_of_pod(self, namespace: str, name: str) -> str | None:
        run = self.pods.get(name)
        return run.ip if run is not None and run.namespace == namespace and run.running else None

    def ready_ips(self, namespace: str, selector: dict[str, str]) -> list[str]:
        out = []
        for run in self.pods.values():
            labels = (run.pod.get("metadata") or {}).get("labels") or {}
            if (
                run.namespace == namespace
                and run.ready
                and run.deleted_at is None
                and all(labels.get(k) == v for k, v in selector.items())
            ):
                out.append(run.ip)
        return sorted(out)

    def next_index(self) -> int:
        return next(self._rr)

    # --- the loop ---

    async def _loop(self) -> None:
        while True:
            try:
                await self._pass()
            except (KubeError, aiohttp.ClientError, OSError) as e:
                self._event(f"pass failed: {e}")
            await asyncio.sleep(TICK_S)

    async def _pass(self) -> None:
        sets = await self.kube._request("GET", path("apps/v1", "statefulsets", self.namespace))
        pods = await self.kube._request("GET", path("v1", "pods", self.namespace))
        live = {p["metadata"]["name"]: p for p in (pods or {}).get("items") or []}
        # Pods deleted through the API: SIGTERM, then SIGKILL after the grace period.
        for name, run in list(self.pods.items()):
            if name not in live and run.deleted_at is None:
                run.deleted_at = time.monotonic()
                run.ready = False
                if run.running:
                    assert run.proc is not None
                    run.proc.send_signal(signal.SIGTERM)
                    self._event(f"SIGTERM {name}")
            if run.deleted_at is not None:
                if run.running and time.monotonic() - run.deleted_at > run.grace_s:
                    assert run.proc is not None
                    run.proc.kill()
                    self._event(f"SIGKILL {name} (grace period over)")
                if not run.running:
                    if run.proc is not None:
                        run.exits.append(run.proc.wait())
                    self._event(f"exited {name}: {run.exits[-1] if run.exits else '-'}")
                    self.finished.append(self.pods.pop(name))
        for sts in (sets or {}).get("items") or []:
            await self._statefulset(sts, live)
        await self._probe_all()

    async def _statefulset(self, sts: dict[str, Any], live: dict[str, Any]) -> None:
        name = sts["metadata"]["name"]
        spec = sts.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        ours = {}
        for pod_name, pod in live.items():
            m = re.fullmatch(re.escape(name) + r"-([0-9]+)", pod_name)
            if m:
                ours[int(m.group(1))] = pod
        for ordinal in sorted(ours, reverse=True):
            if ordinal >= replicas:  # scaled down: highest ordinal first
                await self.kube.delete(path("v1", "pods", self.namespace, f"{name}-{ordinal}"))
                self._event(f"scale down: deleted {name}-{ordinal}")
                break
        for ordinal in range(replicas):
            pod_name = f"{name}-{ordinal}"
            if ordinal in ours or pod_name in self.pods:
                continue  # exists, or its old process is still draining
            await self._create_pod(sts, ordinal)
        for run in self.pods.values():
            if run.statefulset == name and run.deleted_at is None and not run.running:
                await self._restart(run)
        ready = len([r for r in self.pods.values() if r.statefulset == name and r.ready])
        status = {"replicas": len(ours), "readyReplicas": ready, "availableReplicas": ready}
        if {k: (sts.get("status") or {}).get(k) for k in status} != status:
            await self.kube.patch(
                path("apps/v1", "statefulsets", self.namespace, name), {"status": status}
            )

    async def _create_pod(self, sts: dict[str, Any], ordinal: int) -> None:
        sts_name = sts["metadata"]["name"]
        name = f"{sts_name}-{ordinal}"
        template = sts["spec"]["template"]
        ip = self._ips.setdefault(name, f"{self.subnet}.{10 + len(self._ips)}")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "uid": f"pod-{name}-{time.monotonic_ns()}",
                "resourceVersion": "1",
                "labels": {
                    **(template.get("metadata", {}).get("labels") or {}),
                    "statefulset.kubernetes.io/pod-name": name,
                },
                "annotations": dict(template.get("metadata", {}).get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "StatefulSet",
                        "name": sts_name,
                        "uid": sts["metadata"].get("uid", ""),
                        "controller": True,
                    }
                ],
            },
            "spec": {**template["spec"], "hostname": name},
            "status": {"phase": "Pending", "podIP": ip, "conditions": []},
        }
        await self.kube.create(pod)
        root = self.root / f"{name}-{time.monotonic_ns()}"
        run = PodRun(self.namespace, name, sts_name, ordinal, ip, root, pod)
        run.grace_s = float(template["spec"].get("terminationGracePeriodSeconds", 30))
        self.pods[name] = run
        await self._run(run)

    async def _restart(self, run: PodRun) -> None:
        if run.proc is not None:
            run.exits.append(run.proc.wait())
            run.restarts += 1
            self._event(f"restarting {run.name} (exited {run.exits[-1]})")
        await self._run(run)

    async def _run(self, run: PodRun) -> None:
        [container] = run.pod["spec"]["containers"]
        try:
            env = await self._env(run, container)
        except LookupError as e:  # CreateContainerConfigError: tried again next pass
            run.error = str(e)
            return
        mounts = {
            m["mountPath"]: run.root / m["mountPath"].lstrip("/")
            for m in container.get("volumeMounts") or []
        }
        for local in mounts.values():
            local.mkdir(parents=True, exist_ok=True)
        for key, value in env.items():
            for mount_path, local in mounts.items():
                if value == mount_path or value.startswith(mount_path + "/"):
                    env[key] = str(local) + value[len(mount_path) :]
        workdir = run.root / str(container.get("workingDir", "/")).lstrip("/")
        workdir.mkdir(parents=True, exist_ok=True)
        command = [*container.get("command", []), *container.get("args", [])]
        exe = shutil.which(command[0], path=str(VENV_BIN))
        if exe is None:
            run.error = f"{command[0]}: not found"
            return
        log = run.root / f"run-{len(run.logs) + 1}.log"
        run.logs.append(log)
        with log.open("wb") as out:
            run.proc = subprocess.Popen(
                [exe, *command[1:]],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        run.ready = False
        run.next_probe = time.monotonic() + PROBE_S
        self._event(f"started {run.name} at {run.ip}")
        await self._pod_status(run, "Running")

    async def _env(self, run: PodRun, container: dict[str, Any]) -> dict[str, str]:
        """The container's environment as the kubelet builds it."""
        meta = run.pod["metadata"]
        fields = {
            "metadata.name": run.name,
            "metadata.namespace": run.namespace,
            "metadata.uid": meta["uid"],
            "status.podIP": run.ip,
        }
        env: dict[str, str] = {
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(run.root),
            "HOSTNAME": run.name,
            "LANG": "C.UTF-8",
        }
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef")
            if ref:
                secret = await self.kube.get(path("v1", "secrets", run.namespace, ref["name"]))
                if secret is None:
                    if ref.get("optional"):
                        continue
                    raise LookupError(f"secret {ref['name']!r} not found")
                for k, v in (secret.get("data") or {}).items():
                    env[k] = base64.b64decode(v).decode()
                env.update(secret.get("stringData") or {})
        for item in container.get("env") or []:
            if "valueFrom" in item:
                field_path = item["valueFrom"].get("fieldRef", {}).get("fieldPath")
                if field_path not in fields:
                    raise LookupError(
                        f"env {item['name']}: unsupported valueFrom {item['valueFrom']}"
                    )
                env[item["name"]] = fields[field_path]
            else:
                # $(VAR) refers to variables defined before; $$ escapes; unknown ones stay.
                env[item["name"]] = re.sub(
                    r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                    lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                    str(item.get("value", "")),
                )
        return env

    async def _probe_all(self) -> None:
        """Probe every pod that is due, all at once (one slow broker delays no other)."""
        now = time.monotonic()
        due = [
            run
            for run in self.pods.values()
            if run.deleted_at is None and run.running and now >= run.next_probe
        ]
        for run in due:
            run.next_probe = now + PROBE_S
        for run, ready in zip(
            due, await asyncio.gather(*(self._probe(r) for r in due)), strict=True
        ):
            if ready != run.ready and run.deleted_at is None:
                run.ready = ready
                self._event(f"{run.name} {'ready' if ready else 'not ready'}")
                await self._pod_status(run, "Running")

    async def _probe(self, run: PodRun) -> bool:
        [container] = run.pod["spec"]["containers"]
        probe = (container.get("readinessProbe") or {}).get("httpGet")
        if probe is None:
            return True
        port = probe["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
        assert self._session is not None
        try:
            async with self._session.get(
                f"http://{run.ip}:{port}{probe.get('path', '/')}",
                timeout=aiohttp.ClientTimeout(total=3),
            ) as response:
                return 200 <= response.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _pod_status(self, run: PodRun, phase: str) -> None:
        status = {
            "phase": phase,
            "podIP": run.ip,
            "conditions": [{"type": "Ready", "status": "True" if run.ready else "False"}],
            "containerStatuses": [
                {"name": "broker", "ready": run.ready, "restartCount": run.restarts}
            ],
        }
        with contextlib.suppress(KubeError):  # deleted meanwhile
            await self.kube.patch(path("v1", "pods", run.namespace, run.name), {"status": status})
            run.pod["status"] = status


class ClusterDns:
    """The cluster's DNS names for this process (see the module docstring)."""

    def __init__(self, kubelet: Kubelet, services: dict[str, dict[str, str]]) -> None:
        self.kubelet = kubelet
        self.services = services
        """Service name -> its selector, for the names that are not a pod's (the tests fill it
        from the Services the operator wrote)."""
        self._real = socket.getaddrinfo

    def resolve(self, host: str) -> str | None:
        suffix = f".svc.{self.kubelet.domain}"
        if not host.endswith(suffix):
            return None
        parts = host[: -len(suffix)].split(".")
        if len(parts) == 3:  # pod.service.namespace
            return self.kubelet.ip_of_pod(parts[2], parts[0])
        if len(parts) == 2:  # service.namespace
            selector = self.services.get(parts[0])
            if selector is None:
                return None
            ips = self.kubelet.ready_ips(parts[1], selector)
            return ips[self.kubelet.next_index() % len(ips)] if ips else None
        return None

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode()
        if isinstance(host, str) and host.endswith(f".svc.{self.kubelet.domain}"):
            ip = self.resolve(host)
            if ip is None:
                raise socket.gaierror(socket.EAI_NONAME, f"{host}: no such name (cluster DNS)")
            host = ip
        return self._real(host, port, *args, **kwargs)

    @contextlib.contextmanager
    def active(self) -> Iterator[ClusterDns]:
        socket.getaddrinfo = self.getaddrinfo  # type: ignore[assignment]
        try:
            yield self
        finally:
            socket.getaddrinfo = self._real


def pod_logs(kubelet: Kubelet, lines: int = 30) -> str:
    """The last lines of every pod's last log (for failure messages)."""
    out = []
    for run in [*kubelet.pods.values(), *kubelet.finished[-4:]]:
        if run.logs:
            text = run.logs[-1].read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {run.name} ({run.logs[-1]}):\n" + "\n".join(text))
    return "\n".join(out)
