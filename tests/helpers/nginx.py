"""nginx the way a caller of `ironcore.image.mirror` with `mirror_service_manager: none` runs it: a main
configuration of its own that includes the role's site file, every path under one directory, in the
foreground so the process handle is nginx's master."""

from __future__ import annotations

import os
import subprocess
import typing as t

from helpers.registry import wait_for_port

NGINX = "/usr/sbin/nginx"
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# A playbook that runs the role on the controller; callers give the role variables as extra vars.
MIRROR_PLAY = """- name: Site cache
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: ironcore.image.mirror
"""


def main_conf(directory: str, site_file: str) -> str:
    """Write <directory>/nginx.conf, whose http block includes `site_file`; returns its path."""
    temp = os.path.join(directory, "temp")
    os.makedirs(temp, exist_ok=True)
    lines = [
        # Run by root on files private to root (pytest's and the benchmark's directories): workers too.
        "user root;",
        "daemon off;",
        "worker_processes 2;",
        "pid %s/nginx.pid;" % directory,
        "error_log %s/error.log info;" % directory,
        "events { worker_connections 4096; }",
        "http {",
        "    access_log %s/access.log;" % directory,
        *["    %s_temp_path %s/%s;" % (kind, temp, kind) for kind in TEMP_PATHS],
        "    include %s;" % site_file,
        "}",
    ]
    path = os.path.join(directory, "nginx.conf")
    with open(path, "w", encoding="utf-8") as stream:
        stream.write("\n".join(lines) + "\n")
    return path


def start(directory: str, site_file: str, ports: t.Iterable[int]) -> subprocess.Popen:
    """Start nginx on main_conf(directory, site_file) and wait until every port listens."""
    if not os.path.exists(NGINX):
        raise RuntimeError("nginx is missing: install nginx-light (make system-deps)")
    conf = main_conf(directory, site_file)
    with open(os.path.join(directory, "nginx.out"), "wb") as output:
        process = subprocess.Popen(  # pylint: disable=consider-using-with
            [NGINX, "-c", conf], stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        for port in ports:
            wait_for_port(port, process)
    except RuntimeError:
        stop(process)
        raise
    return process


def stop(process: subprocess.Popen) -> None:
    """SIGTERM: nginx's fast shutdown; the master waits for its workers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
