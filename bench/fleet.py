"""Fleet delivery (`make bench-fleet`): N nodes provisioned at once, through a site cache, from the origin, and
through distribution's pull-through cache.

One origin registry (TLS + htpasswd) behind a byte-counting relay. The site cache is nginx as the
ironcore.image.mirror role configures it; the pull-through cache is docker-registry with `proxy: remoteurl:`.
For each N, one `ansible-playbook playbooks/provision.yml` over N hosts of group `baremetal` (local
connection, a boot directory each, forks N) delivers the baremetal layers, every cache cold. Printed per
contender and N: bytes the origin sent / the image's baremetal bytes, wall time, the slowest node's fetch.
Then the same playbook again over the same hosts, where nothing is left to deliver (the honest floor on a
small machine: Ansible's own cost per host), and wall(site cache, largest N) / that second run.

Nodes reach a cache through `provision_mirrors`: tags resolved at the origin, bytes by digest from the cache.
Try it small: --size-mib=16 --nodes=1,4
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import typing as t
from dataclasses import dataclass

import _common as c
from helpers import nginx
from helpers.counting import ByteCountingProxy
from helpers.inventory import local_host, write_inventory
from helpers.registry import REGISTRY_BINARY, Registry, free_port, start_registry, wait_for_port

REPOSITORY = "bench/fleet"
TAG = "1.0"
PROVISION = os.path.join(c.REPO, "playbooks", "provision.yml")
FETCH_TASK = "Fetch the image's files"
# Goals of the issue: through the site cache the origin sends each byte at most 1.05 times, and the
# largest fleet's wall time stays within 1.3 times the run that has nothing to deliver.
GOAL_ORIGIN = 1.05
GOAL_SECOND_RUN = 1.3


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


@dataclass
class Delivery:
    contender: str
    nodes: int
    origin_bytes: int
    wall: float
    slowest: float


class SiteCache:
    """nginx with the mirror role's configuration, in front of the origin's relay."""

    name = "site cache (mirror role)"

    def __init__(self, ansible: c.Ansible, directory: str, origin: Registry, upstream: str) -> None:
        assert origin.pki is not None
        self.directory = directory
        self.port = free_port()
        self.url = "https://127.0.0.1:%d" % self.port
        self.site = os.path.join(directory, "ironcore-mirror.conf")
        self.cache_dir = os.path.join(directory, "cache")
        self.process: subprocess.Popen | None = None
        os.makedirs(directory, exist_ok=True)
        role_vars = {
            "mirror_service_manager": "none",
            "mirror_install": False,
            "mirror_nginx_site": self.site,
            "mirror_cache_dir": self.cache_dir,
            "mirror_cache_max_size": "64g",
            "mirror_tls_cert": origin.pki.server_cert,
            "mirror_tls_key": origin.pki.server_key,
            "mirror_upstreams": [
                {
                    "listen": "127.0.0.1:%d" % self.port,
                    "url": "https://" + upstream,
                    "ca_cert": origin.pki.ca_cert,
                    "username": origin.username,
                    "password": origin.password,
                }
            ],
        }
        play = os.path.join(directory, "mirror.yml")
        with open(play, "w", encoding="utf-8") as stream:
            stream.write(nginx.MIRROR_PLAY)
        variables = os.path.join(directory, "mirror-vars.json")
        with open(variables, "w", encoding="utf-8") as stream:
            json.dump(role_vars, stream)
        os.chmod(variables, 0o600)
        command = [os.path.join(ansible.bin, "ansible-playbook"), "-i", "localhost,", "-e", "@" + variables, play]
        c.run(command, env=ansible.env)

    def cold(self) -> None:
        """nginx started afresh on an empty cache."""
        self.stop()
        c.remove(self.cache_dir)
        os.makedirs(self.cache_dir, mode=0o700)
        self.process = nginx.start(self.directory, self.site, [self.port])

    def stop(self) -> None:
        if self.process is not None:
            nginx.stop(self.process)
            self.process = None


class PullThrough:
    """distribution's pull-through cache (`proxy: remoteurl:`), anonymous to the nodes, TLS with the test CA."""

    name = "pull-through (docker-registry proxy)"

    def __init__(self, directory: str, origin: Registry, upstream: str) -> None:
        self.directory = directory
        self.origin = origin
        self.upstream = upstream
        self.port = free_port()
        self.url = "https://127.0.0.1:%d" % self.port
        self.process: subprocess.Popen | None = None
        os.makedirs(directory, exist_ok=True)

    def cold(self) -> None:
        """docker-registry started afresh on empty storage."""
        self.stop()
        assert self.origin.pki is not None
        storage = os.path.join(self.directory, "storage")
        c.remove(storage)
        os.makedirs(storage)
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": storage}, "delete": {"enabled": True}},
            "http": {
                "addr": "127.0.0.1:%d" % self.port,
                "secret": base64.b16encode(os.urandom(16)).decode(),
                "tls": {"certificate": self.origin.pki.server_cert, "key": self.origin.pki.server_key},
            },
            "proxy": {
                "remoteurl": "https://" + self.upstream,
                **({"username": self.origin.username} if self.origin.username else {}),
                **({"password": self.origin.password} if self.origin.password else {}),
            },
        }
        path = os.path.join(self.directory, "config.yml")
        with open(path, "w", encoding="utf-8") as stream:
            json.dump(config, stream)  # JSON is YAML
        os.chmod(path, 0o600)
        # Go reads the CA it trusts for the upstream from SSL_CERT_FILE.
        env = dict(os.environ, SSL_CERT_FILE=self.origin.pki.ca_cert)
        with open(os.path.join(self.directory, "registry.log"), "ab") as log:
            self.process = subprocess.Popen(  # pylint: disable=consider-using-with
                [REGISTRY_BINARY, "serve", path],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        self.process = None


class Fleet:
    """N local hosts of group baremetal and one provision run over them."""

    def __init__(self, ansible: c.Ansible, workdir: str) -> None:
        self.ansible = ansible
        self.workdir = workdir

    def node_vars(self, origin: Registry, upstream: str, cache: SiteCache | PullThrough | None) -> dict[str, t.Any]:
        """The nodes' variables: the origin reached at `upstream` (its relay), through `cache` when given."""
        assert origin.pki is not None
        origin_vars: dict[str, t.Any] = {
            "provision_name": "%s/%s:%s" % (upstream, REPOSITORY, TAG),
            "provision_registry_ca_cert": origin.pki.ca_cert,
        }
        if origin.username:
            origin_vars.update(provision_registry_username=origin.username, provision_registry_password=origin.password)
        common = {"provision_architecture": "amd64", "provision_boot_url": "http://pxe.example.com/boot"}
        if cache is None:
            return dict(common, **origin_vars)
        return dict(common, provision_mirrors=[{"url": cache.url, "ca_cert": origin.pki.ca_cert}], **origin_vars)

    def inventory(self, label: str, count: int, node_vars: t.Mapping[str, t.Any]) -> str:
        directory = os.path.join(self.workdir, "nodes-%s-%d" % (label, count))
        c.remove(directory)
        os.makedirs(directory)
        hosts = {
            "node%02d" % number: local_host(provision_boot_dir=os.path.join(directory, "node%02d" % number))
            for number in range(count)
        }
        path = write_inventory(os.path.join(directory, "hosts.yml"), {"baremetal": hosts}, node_vars)
        os.chmod(path, 0o600)
        return path

    def provision(self, inventory: str, count: int) -> tuple[float, float]:
        """(wall seconds, the slowest node's fetch seconds) of one playbook run over the inventory."""
        command = [os.path.join(self.ansible.bin, "ansible-playbook"), "-i", inventory, PROVISION]
        seconds, document = playbook(command, dict(self.ansible.env, ANSIBLE_FORKS=str(max(count, 5))))
        fetched = [
            result.get("elapsed", 0.0)
            for play in document["plays"]
            for task in play["tasks"]
            if task["task"]["name"].endswith(FETCH_TASK)
            for result in task["hosts"].values()
        ]
        if len(fetched) != count:
            raise c.BenchError("the provision run fetched on %d of %d nodes" % (len(fetched), count))
        return seconds, max(fetched)


def playbook(command: t.Sequence[str], env: t.Mapping[str, str]) -> tuple[float, dict[str, t.Any]]:
    """(wall seconds, results_json document) of an ansible-playbook run; stderr (warnings) kept apart."""
    start = time.monotonic()
    proc = subprocess.run(list(command), env=dict(os.environ, **env), capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    try:
        document = json.loads(proc.stdout)
    except ValueError:
        raise c.BenchError(
            "ansible-playbook printed no JSON (rc=%d): %s" % (proc.returncode, proc.stderr[-1500:])
        ) from None
    failed = [
        "%s: %s" % (host, result.get("msg"))
        for play in document.get("plays", [])
        for task in play["tasks"]
        for host, result in task["hosts"].items()
        if result.get("failed")
    ]
    if proc.returncode != 0 or failed:
        raise c.BenchError("the provision run failed (rc=%d): %s" % (proc.returncode, "; ".join(failed)[:2000]))
    return seconds, document


def image_bytes(layout: str, built: t.Mapping[str, t.Any]) -> int:
    """Bytes of the layers a baremetal amd64 node gets."""
    return sum(os.path.getsize(c.blob_path(layout, digest)) for digest in c.layers(built, "baremetal").values())


@dataclass
class Contender:
    name: str
    origin: Registry
    counter: ByteCountingProxy
    cache: SiteCache | PullThrough | None


def bench_fleet(workdir: str, size_mib: int, counts: t.Sequence[int]) -> str:
    ansible = c.Ansible()
    origin = c.registry(os.path.join(workdir, "origin"))
    # distribution's pull-through cache cannot log in to an htpasswd origin (it answers 500 UNAUTHORIZED):
    # it gets the same registry without authentication, with a relay of its own.
    open_origin = start_registry("bench-open", os.path.join(workdir, "open-origin"), tls=True)
    counter, open_counter = ByteCountingProxy(origin.host), ByteCountingProxy(open_origin.host)
    stoppable: list[SiteCache | PullThrough] = []
    try:
        built = c.published(ansible, workdir, size_mib, origin, REPOSITORY)
        layout = os.path.join(workdir, "layout")
        c.skopeo(
            *open_origin.skopeo_flags("dest-"),
            "oci:%s:%s" % (layout, c.NAME),
            "docker://%s/%s:%s" % (open_origin.host, REPOSITORY, TAG),
        )
        size = image_bytes(layout, built)
        c.warm(c.tree_files(origin.storage) + c.tree_files(open_origin.storage))
        fleet = Fleet(ansible, workdir)
        site = SiteCache(ansible, os.path.join(workdir, "site-cache"), origin, counter.host)
        pull_through = PullThrough(os.path.join(workdir, "pull-through"), open_origin, open_counter.host)
        stoppable += [site, pull_through]
        contenders = [
            Contender(site.name, origin, counter, site),
            Contender("origin only (no mirror)", origin, counter, None),
            Contender(pull_through.name, open_origin, open_counter, pull_through),
        ]
        deliveries = []
        second_run = 0.0
        for contender in contenders:
            node_vars = fleet.node_vars(contender.origin, contender.counter.host, contender.cache)
            for count in counts:
                print("%s, %d nodes" % (contender.name, count), flush=True)
                if contender.cache is not None:
                    contender.cache.cold()
                inventory = fleet.inventory(contender.name.split()[0], count, node_vars)
                contender.counter.reset()
                wall, slowest = fleet.provision(inventory, count)
                sent = contender.counter.sent_back
                deliveries.append(Delivery(contender.name, count, sent, wall, slowest))
                print("  origin sent %.2f x, %.1f s" % (sent / size, wall), flush=True)
                if contender.cache is site and count == max(counts):
                    second_run, _slowest = fleet.provision(inventory, count)
                    print("  second run %.1f s" % second_run, flush=True)
                c.remove(os.path.dirname(inventory))
            if contender.cache is not None:
                contender.cache.stop()
    finally:
        for cache in stoppable:
            cache.stop()
        for relay in (counter, open_counter):
            relay.stop()
        origin.stop()
        open_origin.stop()
    return report(deliveries, size, max(counts), second_run)


def report(deliveries: t.Sequence[Delivery], size: int, largest: int, second_run: float) -> str:
    rows = []
    for delivery in deliveries:
        ratio = delivery.origin_bytes / size
        goal = "%.2f (<= %.2f)%s" % (ratio, GOAL_ORIGIN, "" if ratio <= GOAL_ORIGIN else " over")
        shown = goal if delivery.contender.startswith("site") else "%.2f" % ratio
        rows.append([delivery.contender, str(delivery.nodes), shown, "%.1f" % delivery.wall, "%.1f" % delivery.slowest])
    columns = ["contender", "nodes", "origin sent / image", "wall s", "slowest node fetch s"]
    cached = [d for d in deliveries if d.contender.startswith("site") and d.nodes == largest]
    ratio = cached[0].wall / second_run if cached and second_run > 0 else 0.0
    lines = [
        "# ironcore.image fleet delivery",
        "",
        "Machine: " + c.machine() + ".",
        "Image: the baremetal layers, %.0f MiB (kernel, initramfs, rootfs of random bytes). Nodes reach a cache "
        "through `provision_mirrors` (tags resolved at the origin)." % (size / c.MiB),
        "",
        c.table(columns, rows),
        "",
        "Second run over the same %d hosts, nothing to deliver: %.1f s; wall(site cache, %d nodes) / second run: "
        "%.2f (<= %.2f)%s."
        % (largest, second_run, largest, ratio, GOAL_SECOND_RUN, "" if ratio <= GOAL_SECOND_RUN else " over"),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    options = c.parser(__doc__.splitlines()[0])
    options.add_argument("--nodes", type=numbers, default=[1, 8, 32], help="nodes provisioned at once")
    args = options.parse_args()
    if shutil.which("nginx") is None and not os.path.exists(nginx.NGINX):
        raise c.BenchError("nginx is missing: install nginx-light (make system-deps)")
    workdir = c.scratch(args.workdir, "fleet-")
    try:
        c.write_report(bench_fleet(workdir, args.size_mib, args.nodes), "fleet.md")
    finally:
        if not args.workdir:
            c.remove(workdir)


if __name__ == "__main__":
    main()
