"""The stack's secrets: a local CA, a server certificate for 127.0.0.1/localhost, and
random passwords for every account a client uses: the PostgreSQL role, RabbitMQ's
administrator (``guest`` is never left usable: any local account could log in with
it), Kafka (SCRAM-SHA-512) and RabbitMQ's vhost-limited user. Made once per stack
folder, private to its owner (a shared host's other accounts read nothing).

The CA may sign for 127.0.0.1 and localhost only (X.509 name constraints), and its
private key is deleted once the server certificate is signed: nothing can issue
another certificate under it.

Nothing here passes a secret on a command line: openssl reads no password (the keys
are unencrypted files in a 0700 folder). Clients read ``local.env`` (0600; the
kernel's settings read it from the working directory, ``relaybus.settings``) for the
plaintext dev endpoints and ``client.env`` for the authenticated ones
(``set -a; . .stack/secure/client.env; set +a``); values are shell-quoted.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from relaybus.stack.errors import StackError
from relaybus.stack.procs import private_dir
from relaybus.stack.settings import StackSettings

KAFKA_USER = "relaybus"
RABBITMQ_USER = "relaybus"
RABBITMQ_VHOST = "relaybus"
RABBITMQ_ADMIN = "relaybus-admin"
# Where the kernel's settings look for the dev stack's endpoints (relative to the
# working directory, like ``.env``), and the stack writes them.
LOCAL_ENV = Path(".stack") / "secure" / "local.env"


@dataclass(frozen=True)
class Credentials:
    """Generated passwords of the stack's users."""

    kafka_password: str
    rabbitmq_password: str
    postgres_password: str
    rabbitmq_admin_password: str


_PASSWORDS = tuple(Credentials.__dataclass_fields__)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 0600, not chmod'ed
    after: no moment where another user could open it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


class SecureMaterial:
    """Files under ``<data_dir>/secure``; ``ensure()`` makes whatever is missing."""

    def __init__(self, settings: StackSettings) -> None:
        self.s = settings
        self.home = settings.data_dir / "secure"
        self.ca_cert = self.home / "ca.pem"
        self.ca_key = self.home / "ca.key"
        self.server_cert = self.home / "server.crt"
        self.server_key = self.home / "server.key"
        # Kafka's PEM keystore: the private key and its certificate chain in one file.
        self.kafka_keystore = self.home / "kafka-keystore.pem"
        self.credentials_file = self.home / "credentials.json"
        self.client_env = self.home / "client.env"
        self.local_env = self.home / "local.env"
        # Kafka Connect's FileConfigProvider reads the database password from here:
        # the connector's config (GET /connectors/<name>/config) shows a reference.
        self.connect_secrets = self.home / "connect-secrets.properties"

    def ensure(self) -> Credentials:
        """Create the CA, the server certificate and the credentials if absent."""
        private_dir(self.home)
        # A CA key still on disk is an older stack's unconstrained CA: make a new one.
        if not (self.ca_cert.exists() and self.kafka_keystore.exists()) or self.ca_key.exists():
            self._certificates()
        stored = (
            json.loads(self.credentials_file.read_text()) if self.credentials_file.exists() else {}
        )
        missing = [name for name in _PASSWORDS if not stored.get(name)]
        if missing:  # an older stack's file gains the passwords it lacks, once
            stored.update({name: secrets.token_urlsafe(24) for name in missing})
            write_private(self.credentials_file, json.dumps(stored))
        credentials = self.credentials()
        write_private(self.client_env, self._client_env(credentials))
        write_private(self.local_env, self._local_env(credentials))
        write_private(self.connect_secrets, f"database.password={credentials.postgres_password}\n")
        return credentials

    def credentials(self) -> Credentials:
        data = json.loads(self.credentials_file.read_text())
        return Credentials(*(str(data[name]) for name in _PASSWORDS))

    def _openssl(self, *args: str) -> None:
        proc = subprocess.run(
            ["openssl", *args], capture_output=True, text=True, cwd=self.home, check=False
        )
        if proc.returncode != 0:
            raise StackError(f"openssl {args[0]} failed", proc.stderr[-2000:])

    def _certificates(self) -> None:
        days = "825"
        self._openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            "-keyout", str(self.ca_key), "-out", str(self.ca_cert),
            "-subj", "/CN=relaybus local stack CA",
            "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            # Whatever this CA signed, a client accepts it only for these names.
            "-addext", f"nameConstraints=critical,permitted;IP:{self.s.host}/255.255.255.255,"
            "permitted;DNS:localhost",
        )  # fmt: skip
        request = self.home / "server.csr"
        self._openssl(
            "req", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(self.server_key), "-out", str(request), "-subj", "/CN=localhost",
        )  # fmt: skip
        extensions = self.home / "server.ext"
        extensions.write_text(
            f"subjectAltName=IP:{self.s.host},DNS:localhost\n"
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
        )
        self._openssl(
            "x509", "-req", "-in", str(request), "-CA", str(self.ca_cert),
            "-CAkey", str(self.ca_key), "-CAcreateserial", "-days", days,
            "-out", str(self.server_cert), "-extfile", str(extensions),
        )  # fmt: skip
        request.unlink()
        write_private(
            self.kafka_keystore,
            self.server_key.read_text() + self.server_cert.read_text() + self.ca_cert.read_text(),
        )
        self.server_key.chmod(0o600)
        # Never needed again: the next certificate comes with a new CA.
        self.ca_key.unlink()
        (self.home / "ca.srl").unlink(missing_ok=True)

    def _client_env(self, c: Credentials) -> str:
        s = self.s
        lines = {
            "RELAYBUS_KAFKA_BOOTSTRAP": f"{s.host}:{s.kafka_secure_port}",
            "RELAYBUS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "RELAYBUS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "RELAYBUS_KAFKA_SASL_USERNAME": KAFKA_USER,
            "RELAYBUS_KAFKA_SASL_PASSWORD": c.kafka_password,
            "RELAYBUS_KAFKA_SSL_CAFILE": str(self.ca_cert),
            "RELAYBUS_RABBITMQ_URL": (
                f"amqps://{RABBITMQ_USER}:{c.rabbitmq_password}@{s.host}:{s.rabbitmq_tls_port}"
                f"/{RABBITMQ_VHOST}?cafile={self.ca_cert}"
            ),
            "RELAYBUS_RABBITMQ_MANAGEMENT_URL": (
                f"http://{RABBITMQ_USER}:{c.rabbitmq_password}@{s.host}:"
                f"{s.rabbitmq_management_port}"
            ),
        }
        header = "# relaybus clients on the stack's authenticated endpoints (secret: 0600)\n"
        return header + _env_lines(lines)

    def _local_env(self, c: Credentials) -> str:
        """The plaintext dev endpoints' credentials, which ``relaybus.settings`` reads."""
        s = self.s
        lines = {
            "RELAYBUS_DATABASE_URL": (
                f"postgresql+asyncpg://{s.postgres_user}:{c.postgres_password}@{s.host}:"
                f"{s.postgres_port}/{s.postgres_db}"
            ),
            "RELAYBUS_RABBITMQ_URL": (
                f"amqp://{RABBITMQ_ADMIN}:{c.rabbitmq_admin_password}@{s.host}:{s.rabbitmq_port}/"
            ),
            "RELAYBUS_RABBITMQ_MANAGEMENT_URL": (
                f"http://{RABBITMQ_ADMIN}:{c.rabbitmq_admin_password}@{s.host}:"
                f"{s.rabbitmq_management_port}"
            ),
        }
        header = "# relaybus clients on the local stack's dev endpoints (secret: 0600)\n"
        return header + _env_lines(lines)


def _env_lines(values: dict[str, str]) -> str:
    """``NAME=value`` lines that a shell's ``.`` and a dotenv reader both read back
    exactly (shell-quoted: a quote or ``$`` in a value stays literal)."""
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())
