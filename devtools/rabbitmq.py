"""A private RabbitMQ node for the tests and the bench, started from Debian's `rabbitmq-server`.

Everything of its own: node name, AMQP and distribution ports, data and log directories,
config file, and the Erlang cookie (in a HOME of its own), so a system RabbitMQ on 5672 is
never touched. It registers with the machine's epmd (port 4369), which its first start
launches when none runs, as every Erlang node does.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from coachpipe.embedded import MissingBinaryError, free_port

RABBITMQ_PACKAGE = "rabbitmq-server"
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
"""Debian's real scripts: `/usr/sbin/rabbitmq-server` switches to the `rabbitmq` user and
its system paths, which a private node must not use."""
START_TIMEOUT_S = 90.0


@dataclass
class PrivateRabbitMQ:
    """One RabbitMQ node on free ports, keeping everything under `base_dir`."""

    base_dir: Path
    port: int = 0
    dist_port: int = 0
    name: str = field(default_factory=lambda: f"coachpipe-{os.getpid()}-{secrets.token_hex(3)}")
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.base_dir = self.base_dir.resolve()
        self.port = self.port or free_port()
        self.dist_port = self.dist_port or free_port()

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"

    @property
    def url(self) -> str:
        """The AMQP URL of the default vhost (`guest` may connect from loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> dict[str, str]:
        """The environment of the node and of `rabbitmqctl` calls aimed at it."""
        return {
            **os.environ,
            "HOME": str(self.base_dir / "home"),  # the Erlang cookie lives here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base_dir / "data"),
            "RABBITMQ_LOG_BASE": str(self.base_dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.base_dir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base_dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.base_dir / "rabbitmq.pid"),
        }

    def _script(self, name: str) -> str:
        script = RABBITMQ_BIN / name
        if not script.exists():
            raise MissingBinaryError(
                f"{script} not found. Install it: apt-get install {RABBITMQ_PACKAGE}"
            )
        return str(script)

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`rabbitmqctl -n NODE ARGS…` with this node's cookie."""
        return subprocess.run(
            [self._script("rabbitmqctl"), "-n", self.node, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def new_vhost(self) -> str:
        """A new, empty vhost that `guest` may use; returns its AMQP URL."""
        vhost = f"v{secrets.token_hex(6)}"
        for args in (
            ("add_vhost", vhost),
            ("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"),
        ):
            result = self.ctl(*args)
            if result.returncode != 0:
                raise RuntimeError(f"rabbitmqctl {args[0]} failed: {result.stderr.strip()}")
        return self.url.removesuffix("/") + vhost

    def start(self) -> PrivateRabbitMQ:
        for sub in ("home", "data", "log"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        cookie = self.base_dir / "home" / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16))
            cookie.chmod(0o400)
        (self.base_dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        (self.base_dir / "enabled_plugins").write_text("[].\n")
        handle = (self.base_dir / "log" / "server.out").open("ab")
        self.process = subprocess.Popen(
            [self._script("rabbitmq-server")],
            env=self.env(),
            cwd=self.base_dir,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        self._await_startup()
        return self

    def _await_startup(self) -> None:
        """`rabbitmqctl await_startup` fails at once while the node is not yet registered with
        epmd, so it is asked again until it answers, the server exits or time runs out."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited; see {self.base_dir / 'log'}")
            if remaining <= 0:
                raise RuntimeError(f"rabbitmq-server did not start; see {self.base_dir / 'log'}")
            result = self.ctl("await_startup", "--timeout", str(int(max(remaining, 1))))
            if result.returncode == 0:
                return
            time.sleep(0.5)

    def stop(self) -> None:
        """`rabbitmqctl stop` (a clean shutdown), then SIGTERM and SIGKILL if it lingers."""
        if self.process is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.ctl("stop", timeout=30)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                self.process.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, sig)
        self.process = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)
