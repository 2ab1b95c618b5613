"""Real multi-node Ray clusters on one machine, for tests: one `ray start` process per node, each node on its
own loopback address with its own ports, so a hard-coded "localhost" anywhere in the code under test reaches
the wrong node (or nothing).

The head defaults to 127.0.0.3, not 127.0.0.1: Ray replaces a node address of 127.0.0.1/localhost with the
machine's own IP (``resolve_ip_for_localhost``), while any other loopback address (127.0.0.2, 127.0.0.3, ...)
is kept as given.

Each node runs ``ray start --block`` as the leader of its own process group; ``stop`` sends SIGTERM to that
process, whose shutdown hook ends the node's Ray processes, and kills the group if it lingers. ``ray stop``
is never used: it would end every Ray process on the machine (the session ``ray_cluster`` fixture's, other
test runs'). The client side (``run_client``) runs in a subprocess because one Python process can only be
connected to one Ray cluster, and pytest's is connected to the ``ray_cluster`` fixture.

Token auth is off (``RAY_AUTH_MODE=disabled``) on every node and client: Ray 2.60 otherwise turns it on for
local clusters, and CLI clients then fail without the token.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY_BIN = Path(sys.executable).with_name("ray")


def free_ports(ip: str, n: int) -> list[int]:
    """``n`` distinct TCP ports free on ``ip`` right now. All sockets stay bound until every port is picked:
    picking them one at a time can return the same port twice, and ``ray start`` refuses duplicates."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((ip, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_env() -> dict[str, str]:
    """Environment for ``ray start`` and clients of these clusters."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", VLLM_CPU_KVCACHE_SPACE="1",
               TOKENIZERS_PARALLELISM="false")
    return env


@dataclass
class LocalNode:
    ip: str
    proc: subprocess.Popen
    log: Path


@dataclass
class LocalCluster:
    """A head on a loopback address plus worker nodes on others. Use as a context manager."""

    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rr", dir="/tmp")))
    nodes: list[LocalNode] = field(default_factory=list)
    # the leaving context's ``stop`` timeout: how long each node may take to end on SIGTERM before its process
    # group is killed. The head of a two-node training run did not end within 30 s of SIGTERM (measured; the
    # worker node took 2 s), so tests that do not check the graceful exit pass a short one
    stop_timeout: float = 30
    gcs_port: int = 0
    dashboard_port: int = 0

    @property
    def address(self) -> str:
        return f"{self.nodes[0].ip}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.nodes[0].ip}:{self.dashboard_port}"

    def _start(self, ip: str, args: list[str], num_cpus: float, resources: dict[str, float] | None,
               timeout: float, ports: list[int]) -> LocalNode:
        """Start a node with ``ports``: six free ports picked in the same ``free_ports`` call as any other port
        this node uses (separate calls returned the head's dashboard port again as its metrics port, once)."""
        import json

        base = 30000 + 1000 * len(self.nodes) + (os.getpid() % 20) * 50  # worker ports, away from Ray's default range
        ports = [str(p) for p in ports]
        # a temp dir per node: nodes sharing one unpack a job's working dir into the same folder, and one node's
        # runtime-env agent removed it under the other's job driver
        temp_dir = self.temp_dir / f"n{len(self.nodes)}" if self.nodes else self.temp_dir
        cmd = [str(RAY_BIN), "start", "--block", "--node-ip-address", ip, "--num-cpus", str(int(num_cpus)),
               "--temp-dir", str(temp_dir), "--disable-usage-stats",
               "--node-manager-port", ports[0], "--object-manager-port", ports[1],
               "--runtime-env-agent-port", ports[2], "--metrics-export-port", ports[3],
               "--dashboard-agent-listen-port", ports[4], "--dashboard-agent-grpc-port", ports[5],
               "--min-worker-port", str(base), "--max-worker-port", str(base + 49), *args]
        if resources:
            cmd += ["--resources", json.dumps(resources)]
        log = self.temp_dir / f"node-{len(self.nodes)}-{ip}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=node_env(), start_new_session=True)
        node = LocalNode(ip, proc, log)
        self.nodes.append(node)
        deadline = time.monotonic() + timeout
        while "Ray runtime started." not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {ip} did not start (exit code {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        return node

    def start_head(self, num_cpus: float = 1, resources: dict[str, float] | None = None,
                   include_dashboard: bool = False, ip: str = "127.0.0.3", timeout: float = 60) -> LocalNode:
        """Start the head (GCS, dashboard if asked, ray client server on free ports)."""
        self.gcs_port, self.dashboard_port, client_port, *node_ports = free_ports(ip, 9)
        args = ["--head", "--port", str(self.gcs_port), "--ray-client-server-port", str(client_port),
                "--include-dashboard", str(include_dashboard).lower()]
        if include_dashboard:
            args += ["--dashboard-host", ip, "--dashboard-port", str(self.dashboard_port)]
        return self._start(ip, args, num_cpus, resources, timeout, node_ports)

    def add_node(self, ip: str, num_cpus: float = 1, resources: dict[str, float] | None = None,
                 timeout: float = 60) -> LocalNode:
        """Start a worker node on ``ip`` (e.g. 127.0.0.2) that joins the head."""
        return self._start(ip, ["--address", self.address], num_cpus, resources, timeout, free_ports(ip, 6))

    def run_client(self, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run Python ``code`` in a fresh process with ``ADDRESS`` (the GCS address) and ``HEAD_IP`` defined
        (connect with ``ray.init(address=ADDRESS, _node_ip_address=HEAD_IP)``); raises on failure."""
        script = f"ADDRESS = {self.address!r}\nHEAD_IP = {self.nodes[0].ip!r}\n{code}"
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                             env=node_env(), cwd=Path(__file__).resolve().parents[1])
        if res.returncode != 0:
            raise RuntimeError(f"client failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
        return res

    def stop(self, timeout: float = 30) -> None:
        """Stop the worker nodes, then the head; kill any process group that outlives ``timeout``."""
        for node in reversed(self.nodes):
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(node.proc.pid, signal.SIGKILL)  # leftovers of this node's own process group
            except ProcessLookupError:
                pass
        self.nodes.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(self.stop_timeout)
