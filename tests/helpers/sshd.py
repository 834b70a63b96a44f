"""A real OpenSSH server on 127.0.0.1 and a free port, with keys made at test time.

Playbooks reach "remote" nodes through it, so module transfer and remote execution go over SSH
exactly as in production. Host keys are pinned through a known_hosts file (no blind trust).
"""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import sys
import time
import typing as t

from helpers.registry import free_port

SSHD = "/usr/sbin/sshd"


def _keygen(path: str, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], check=True)


class SshServer:
    """`sshd -D` for the current user with key authentication only."""

    def __init__(self, directory: str):
        self.directory = directory
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = os.path.join(directory, "ssh_host_ed25519_key")
        self.client_key = os.path.join(directory, "id_ed25519")
        self.known_hosts = os.path.join(directory, "known_hosts")
        self.config = os.path.join(directory, "sshd_config")
        self.log = os.path.join(directory, "sshd.log")
        # Ansible's multiplexed connections, kept here so stop() can close them.
        self.control_path = os.path.join(directory, "cp-%C")
        self.process: subprocess.Popen | None = None

    def start(self) -> SshServer:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        _keygen(self.host_key, "ironcore-test-host")
        _keygen(self.client_key, "ironcore-test-client")
        authorized = os.path.join(self.directory, "authorized_keys")
        with open(self.client_key + ".pub") as source, open(authorized, "w") as target:
            target.write(source.read())
        with open(self.host_key + ".pub") as source:
            key_type, key = source.read().split()[:2]
        with open(self.known_hosts, "w") as stream:
            stream.write("[127.0.0.1]:%d %s %s\n" % (self.port, key_type, key))
        with open(self.config, "w") as stream:
            stream.write(
                "\n".join(
                    [
                        "ListenAddress 127.0.0.1",
                        "Port %d" % self.port,
                        "HostKey %s" % self.host_key,
                        "AuthorizedKeysFile %s" % authorized,
                        "PidFile %s" % os.path.join(self.directory, "sshd.pid"),
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "PubkeyAuthentication yes",
                        "PermitRootLogin prohibit-password",
                        "AllowUsers %s" % self.user,
                        # The key files live in a pytest temp dir whose parents sshd would reject.
                        "StrictModes no",
                        "UsePAM no",
                        "Subsystem sftp internal-sftp",
                        "LogLevel VERBOSE",
                        "",
                    ]
                )
            )
        # sshd's privilege separation needs this directory (normally made by the systemd unit).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        subprocess.run([SSHD, "-t", "-f", self.config], check=True, capture_output=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", self.config], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        self._wait_until_it_answers()
        return self

    def _wait_until_it_answers(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError("sshd exited (rc=%s): %s" % (self.process.returncode, self.read_log()))
            proc = subprocess.run(self.ssh_command("true"), capture_output=True, timeout=30, check=False)
            if proc.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("sshd on 127.0.0.1:%d does not accept our key: %s" % (self.port, self.read_log()))

    def ssh_options(self) -> list[str]:
        return [
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityFile=%s" % self.client_key,
            "-o",
            "UserKnownHostsFile=%s" % self.known_hosts,
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
        ]

    def ssh_command(self, remote: str) -> list[str]:
        return ["ssh", "-p", str(self.port), *self.ssh_options(), "%s@127.0.0.1" % self.user, remote]

    def host_vars(self) -> dict[str, t.Any]:
        """Inventory variables that make Ansible reach this server over SSH."""
        return {
            "ansible_connection": "ssh",
            "ansible_host": "127.0.0.1",
            "ansible_port": self.port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": self.client_key,
            "ansible_ssh_common_args": shlex.join(self.ssh_options()[4:]),
            "ansible_ssh_args": "-C -o ControlMaster=auto -o ControlPersist=60s -o ControlPath=%s" % self.control_path,
            # The "remote" node is this machine: run modules with the interpreter that has their dependencies.
            "ansible_python_interpreter": sys.executable,
        }

    def read_log(self) -> str:
        if not os.path.exists(self.log):
            return ""
        with open(self.log, errors="replace") as stream:
            return stream.read()[-4000:]

    def commands_run(self) -> int:
        """How many commands sshd ran for us: proves that work really went over SSH.

        Counted per command, not per login: Ansible multiplexes many commands over one kept-open login.
        """
        with open(self.log, errors="replace") as stream:
            return sum(1 for line in stream if "Starting session: command for %s " % self.user in line)

    def stop(self) -> None:
        # Close the control masters Ansible left behind, then the listener.
        subprocess.run(
            [
                "ssh",
                "-p",
                str(self.port),
                "-o",
                "ControlPath=%s" % self.control_path,
                "-O",
                "exit",
                "%s@127.0.0.1" % self.user,
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
