"""RabbitMQ from Debian's packages, as a node of our own with the management plugin."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from urllib.parse import quote

from relaybus.stack.errors import StackError
from relaybus.stack.procs import (
    pid_alive,
    private_dir,
    read_pid,
    require_free_port,
    spawn,
    stop_pid,
    tail,
    wait_until,
)
from relaybus.stack.secure import (
    RABBITMQ_ADMIN,
    RABBITMQ_USER,
    RABBITMQ_VHOST,
    SecureMaterial,
    write_private,
)
from relaybus.stack.service import ServiceStatus
from relaybus.stack.settings import StackSettings

RABBIT_BIN = "/usr/lib/rabbitmq/bin"


class RabbitMQ:
    """A RabbitMQ node named ``rabbitmq_node`` (``relaybus@localhost``) with data under
    the stack's folder.

    Ready means ``rabbitmqctl await_startup`` succeeded: the broker, not just the port.
    """

    name = "rabbitmq"

    def __init__(self, settings: StackSettings) -> None:
        self.s = settings
        self.node = settings.rabbitmq_node
        self.secure = SecureMaterial(settings)
        self.home = settings.data_dir / "rabbitmq"
        self.log = self.home / "rabbitmq.out"
        self.pid_file = self.home / "beam.pid"
        self.admin = (RABBITMQ_ADMIN, "")  # set from the credentials by start()

    def _env(self) -> dict[str, str]:
        h = self.home
        return {
            # rabbitmqctl finds the Erlang cookie in $HOME: keep ours private to the stack.
            "HOME": str(h / "home"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_MNESIA_BASE": str(h / "mnesia"),
            "RABBITMQ_LOG_BASE": str(h / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(h / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(h / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_DIST_PORT": str(self.s.rabbitmq_dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # The Erlang distribution listener (inter-node and CLI traffic) on loopback.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _write_config(self, admin_password: str) -> None:
        private_dir(self.home)
        for sub in ("home", "mnesia", "log"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        (self.home / "enabled_plugins").write_text("[rabbitmq_management].\n")
        write_private(  # it holds the administrator's password
            self.home / "rabbitmq.conf",
            f"listeners.tcp.1 = {self.s.host}:{self.s.rabbitmq_port}\n"
            f"management.tcp.ip = {self.s.host}\n"
            f"management.tcp.port = {self.s.rabbitmq_management_port}\n"
            # A fresh node's first user is ours, with a generated password, not guest.
            f"default_user = {RABBITMQ_ADMIN}\n"
            f"default_pass = {admin_password}\n"
            "default_user_tags.administrator = true\n"
            "default_permissions.configure = .*\n"
            "default_permissions.read = .*\n"
            "default_permissions.write = .*\n"
            "loopback_users.guest = true\n"
            # AMQPS next to plain AMQP; clients check the server certificate, the server
            # asks for none (users log in with passwords).
            f"listeners.ssl.1 = {self.s.host}:{self.s.rabbitmq_tls_port}\n"
            f"ssl_options.cacertfile = {self.secure.ca_cert}\n"
            f"ssl_options.certfile = {self.secure.server_cert}\n"
            f"ssl_options.keyfile = {self.secure.server_key}\n"
            "ssl_options.verify = verify_none\n"
            "ssl_options.fail_if_no_peer_cert = false\n",
        )

    def _ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [f"{RABBIT_BIN}/rabbitmqctl", "-n", self.node, *args],
            capture_output=True,
            text=True,
            env={**os.environ, **self._env()},
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        """Start the node unless it runs; either way make sure the vhost user exists."""
        credentials = self.secure.ensure()
        self.admin = (RABBITMQ_ADMIN, credentials.rabbitmq_admin_password)
        if read_pid(self.pid_file) is None:
            self._start(credentials.rabbitmq_admin_password)
        self._ensure_admin()
        self._ensure_vhost_user(credentials.rabbitmq_password)

    def _start(self, admin_password: str) -> None:
        for port in (
            self.s.rabbitmq_port,
            self.s.rabbitmq_management_port,
            self.s.rabbitmq_tls_port,
        ):
            require_free_port(self.s.host, port, self.name)
        self._write_config(admin_password)
        spawn(
            [f"{RABBIT_BIN}/rabbitmq-server"],
            self.log,
            self.home / "launcher.pid",
            env=self._env(),
            cwd=self.home,
        )

        def ready() -> bool:
            if read_pid(self.home / "launcher.pid") is None and read_pid(self.pid_file) is None:
                raise StackError("rabbitmq: the server exited during start", tail(self.log))
            try:
                return self._ctl("await_startup", "--timeout", "5", timeout=30).returncode == 0
            except subprocess.TimeoutExpired:
                # rabbitmqctl is an Erlang VM of its own: on a busy machine starting it
                # can outlast the probe. Not ready yet; the deadline decides.
                return False

        wait_until(ready, self.s.start_timeout_s, self.name, self.log)

    def _ensure_admin(self) -> None:
        """Our administrator exists and ``guest`` does not. A node made before the
        stack set ``default_user`` has guest/guest, which any local account can use:
        guest creates our administrator once, then goes."""
        if self._management("GET", "/api/whoami", None, self.admin, missing_ok=True) is None:
            name, password = self.admin
            self._management(
                "PUT",
                f"/api/users/{quote(name, safe='')}",
                {"password": password, "tags": "administrator"},
                ("guest", "guest"),
            )
            self._management(
                "PUT",
                f"/api/permissions/%2F/{quote(name, safe='')}",
                {"configure": ".*", "write": ".*", "read": ".*"},
                ("guest", "guest"),
            )
        self._management("DELETE", "/api/users/guest", None, self.admin, missing_ok=True)

    def _ensure_vhost_user(self, password: str) -> None:
        """The vhost ``relaybus`` and a user allowed only there (management tag so it
        can list its own queues), through the management API: the password travels
        in a request body, not on a command line."""
        vhost = quote(RABBITMQ_VHOST, safe="")
        self._management_put(f"/api/vhosts/{vhost}", {})
        self._management_put(
            f"/api/users/{RABBITMQ_USER}", {"password": password, "tags": "management"}
        )
        self._management_put(
            f"/api/permissions/{vhost}/{RABBITMQ_USER}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )

    def _management_put(self, path: str, body: dict[str, str]) -> None:
        self._management("PUT", path, body, self.admin)

    def _management(
        self,
        method: str,
        path: str,
        body: dict[str, str] | None,
        login: tuple[str, str],
        missing_ok: bool = False,
    ) -> bytes | None:
        """One management API call as ``login``; None for a 401/404 when
        ``missing_ok`` (a user that cannot log in, a user already gone)."""
        url = f"http://{self.s.host}:{self.s.rabbitmq_management_port}{path}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("content-type", "application/json")
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        request.add_header("authorization", f"Basic {token}")
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return bytes(answer.read())
            except urllib.error.HTTPError as err:  # an answer: a real refusal
                if missing_ok and err.code in (401, 404):
                    return None
                raise StackError(f"rabbitmq: {method} {path} refused ({err.code})") from None
            except OSError as err:  # the management listener may lag await_startup
                if time.monotonic() > deadline:
                    raise StackError(f"rabbitmq: management API unreachable: {err}") from None
                time.sleep(0.5)

    def stop(self) -> bool:
        pid = read_pid(self.pid_file)
        if pid is None:
            return False
        # `rabbitmqctl stop` closes queues cleanly; the pid wait makes it synchronous.
        self._ctl("stop", str(self.pid_file), timeout=60)
        if pid_alive(pid):
            stop_pid(self.pid_file)
        stop_pid(self.home / "launcher.pid", timeout=10)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> list[ServiceStatus]:
        pid = read_pid(self.pid_file)
        s = self.s
        return [
            ServiceStatus(
                self.name,
                pid is not None,
                f"amqp://{RABBITMQ_ADMIN}:***@{s.host}:{s.rabbitmq_port}/",
                pid,
                f"management http://{s.host}:{s.rabbitmq_management_port}/; "
                f"amqps://{RABBITMQ_USER}:***@{s.host}:{s.rabbitmq_tls_port}/{RABBITMQ_VHOST}",
            )
        ]
