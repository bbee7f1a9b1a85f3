"""Several sites on one machine: each site a network namespace of its own (`ip netns`) with
its code server and the systems it backs up, and one Dagster instance (webserver, daemon,
PostgreSQL storage, compute logs on moto's S3) in this one, as `deploy/sites/` lays them out.

A site reaches this namespace only at its veth address, where TCP forwarders stand for the
instance's PostgreSQL, the store (moto), the broker and the compute-log bucket; the
webserver and the daemon reach each site's code server at the site's address. Every
process of a site also runs in a UTS namespace of its own, named after the site, so a run
says by its hostname where it ran. What a site serves on its 127.0.0.1 no other site, and
not this namespace, can reach.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from backup_pipelines.processes import free_loopback_port
from backup_pipelines_tests.conftest import wait_for_http
from backup_pipelines_tests.dagster_stack import (
    DEPLOY,
    DagsterUI,
    grpc_healthy,
    start_logged,
    stop_process,
    wait_until,
)
from backup_pipelines_tests.tcp_proxy import SwitchableProxy

BIN = Path(sys.executable).parent
CODE_PORT = 4000


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Site:
    """A site's namespace: where this namespace and the site reach each other."""

    name: str
    namespace: str
    address: str  # the site's end of its veth pair
    gateway: str  # this namespace's end: where the site reaches the instance
    forwarders: dict[int, SwitchableProxy] = field(default_factory=dict)

    @property
    def hostname(self) -> str:
        return f"{self.name}-host"

    @property
    def location(self) -> str:
        return f"backup_pipelines_{self.name}"

    def reach(self, port: int) -> int:
        """The port at `gateway` that forwards to this namespace's 127.0.0.1:`port`."""
        if port not in self.forwarders:
            self.forwarders[port] = SwitchableProxy(port, host=self.gateway)
        return self.forwarders[port].port

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the site: its network, and a hostname of its own."""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "sh", "-c",
                f'hostname {self.hostname} && exec "$@"', "sh", *argv]  # fmt: skip

    def run(self, argv: list[str]) -> str:
        return subprocess.run(self.command(argv), check=True, capture_output=True, text=True).stdout


@contextmanager
def site_namespace(name: str, subnet: int) -> Iterator[Site]:
    """A network namespace joined to this one by a veth pair on 10.231.<subnet>.0/30."""
    tag = secrets.token_hex(3)
    namespace, outside, inside = f"bp-{name}-{tag}", f"bpo{tag}", f"bpi{tag}"
    gateway, address = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    ip("netns", "add", namespace)
    site = Site(name, namespace, address, gateway)
    try:
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", namespace)
        ip("addr", "add", f"{gateway}/30", "dev", outside)
        ip("link", "set", outside, "up")
        ip("-n", namespace, "addr", "add", f"{address}/30", "dev", inside)
        ip("-n", namespace, "link", "set", inside, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        yield site
    finally:
        for forwarder in site.forwarders.values():
            forwarder.down()
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", outside], capture_output=True)


@contextmanager
def site_redis(site: Site, workdir: Path, keys: int) -> Iterator[None]:
    """A redis-server on the site's own 127.0.0.1:6379 holding `keys` keys."""
    directory = workdir / f"redis-{site.name}"
    directory.mkdir()
    argv = ["redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(directory)]  # fmt: skip
    process = subprocess.Popen(site.command(argv), stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            pinged = subprocess.run(site.command(["redis-cli", "ping"]), capture_output=True)
            if pinged.returncode == 0:
                break
            time.sleep(0.05)
        for n in range(keys):
            site.run(["redis-cli", "SET", f"{site.name}:{n}", site.name])
        yield
    finally:
        stop_process(process)


@dataclass
class Sites:
    """The instance's UI, each site by name, and a way to stop a site's code server."""

    ui: DagsterUI
    sites: dict[str, Site]
    code_servers: dict[str, subprocess.Popen]
    env: dict[str, str]
    """The instance's environment here (the compute-log bucket, ...)."""

    def stop_code_server(self, site: str) -> None:
        stop_process(self.code_servers[site])


@contextmanager
def running_sites(
    workdir: Path, sites: list[Site], env: dict[str, str], instance_ports: dict[str, int]
) -> Iterator[Sites]:
    """The instance (webserver, daemon) here and each site's code server in its namespace.

    `env` is the shared environment with every address at 127.0.0.1; `instance_ports` names
    the ports of it a site must reach (`BACKUP_DATABASE_URL`'s PostgreSQL, the store, the
    broker, the compute-log bucket): each site gets `env` with those rewritten to its
    forwarders.
    """
    logs = workdir / "logs"
    logs.mkdir()
    home = dagster_home(workdir / "instance")
    workspace = home / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        + "".join(
            f"  - grpc_server: {{host: {site.address}, port: {CODE_PORT}, "
            f"location_name: {site.location}}}\n"
            for site in sites
        )
    )
    here = {**env, "DAGSTER_HOME": str(home)}
    subprocess.run([str(BIN / "dagster"), "instance", "migrate"], env=here, check=True,
                   capture_output=True)  # fmt: skip
    web_port = free_loopback_port()
    ui = DagsterUI(url=f"http://127.0.0.1:{web_port}", logs=logs)
    with ExitStack() as cleanup:
        code_servers = {}
        for site in sites:
            site_env = {
                **rewritten(env, instance_ports, site),
                "DAGSTER_HOME": str(dagster_home(workdir / site.name)),
                "BACKUP_SITE": site.name,
                "BACKUP_ARTIFACTS_DIR": str(workdir / site.name / "artifacts"),
            }
            argv = [str(BIN / "dagster"), "code-server", "start", "-h", "0.0.0.0", "-p",
                    str(CODE_PORT), "-m", "backup_pipelines.definitions", "--location-name",
                    site.location]  # fmt: skip
            process = start_logged(site.location, site.command(argv), site_env, logs)
            cleanup.callback(stop_process, process)
            code_servers[site.name] = process
        for site in sites:
            healthy = lambda site=site: grpc_healthy(BIN, CODE_PORT, here, host=site.address)  # noqa: E731
            wait_until(healthy, site.location, 120, ui)
        commands = {
            "webserver": [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p",
                          str(web_port), "-w", str(workspace)],
            "daemon": [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
        }  # fmt: skip
        for name, argv in commands.items():
            cleanup.callback(stop_process, start_logged(name, argv, here, logs))
        wait_for_http(f"{ui.url}/server_info", timeout_s=90)
        wait_until(lambda: not ui.unhealthy_daemons(), "the daemons", 90, ui)
        yield Sites(ui, {site.name: site for site in sites}, code_servers, here)


def dagster_home(path: Path) -> Path:
    """A DAGSTER_HOME with the production instance file, `deploy/dagster.yaml`."""
    path.mkdir(parents=True)
    shutil.copy(DEPLOY / "dagster.yaml", path / "dagster.yaml")
    return path


def rewritten(env: dict[str, str], ports: dict[str, int], site: Site) -> dict[str, str]:
    """`env` as a site must see it: each `127.0.0.1:<port>` of `ports` as its forwarder."""
    found = dict(env)
    for name, port in ports.items():
        found[name] = found[name].replace(f"127.0.0.1:{port}", f"{site.gateway}:{site.reach(port)}")
    return found
