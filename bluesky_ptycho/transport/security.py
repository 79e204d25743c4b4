"""ZeroMQ CURVE keys: who may talk to a back-end that listens beyond localhost.

``bluesky-ptycho keys DIR`` writes a key pair for the back-end
(``server.key`` public, ``server.key_secret``) and one for clients
(``client.key``, ``client.key_secret``), and puts the client's public key in
``DIR/authorized/``. The back-end accepts only clients whose public key is
in ``authorized/``; a client needs ``client.key_secret`` and
``server.key``. Copy the client files to the beamline machine only.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


def generate_keys(folder: str | Path) -> Path:
    """Write server and client key pairs under *folder* (refuses to overwrite)."""
    folder = Path(folder)
    if (folder / "server.key_secret").exists():
        raise FileExistsError(
            f"{folder} holds keys already: keep them, or remove the folder to make new ones "
            "(every client then needs the new client keys)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(folder, "server")
    zmq.auth.create_certificates(folder, "client")
    (folder / "authorized").mkdir(exist_ok=True)
    shutil.copy(folder / "client.key", folder / "authorized" / "client.key")
    for secret in folder.glob("*.key_secret"):
        secret.chmod(0o600)
    return folder


def _load(path: Path, what: str) -> tuple[bytes, bytes | None]:
    if not path.exists():
        raise FileNotFoundError(
            f"{what} {path} not found: make keys with `bluesky-ptycho keys {path.parent}`"
        )
    return zmq.auth.load_certificate(path)


def is_local(host: str) -> bool:
    """True when *host* (a name or an address; ``*`` is every interface) is this machine's loopback."""
    if host in ("localhost", "ip6-localhost"):
        return True
    if host == "*":
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


@dataclass
class ServerKeys:
    """The back-end's side: its key pair and the folder of authorized client keys."""

    folder: Path

    def apply(self, sock: zmq.Socket) -> None:
        public, secret = _load(self.folder / "server.key_secret", "server secret key")
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True

    def authenticator(self, context: zmq.Context) -> ThreadAuthenticator:
        """A running ZAP authenticator that admits only the authorized client keys."""
        authorized = self.folder / "authorized"
        if not authorized.is_dir() or not any(authorized.glob("*.key")):
            raise FileNotFoundError(
                f"no authorized client keys in {authorized}: `bluesky-ptycho keys {self.folder}` "
                "makes one"
            )
        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve(domain="*", location=str(authorized))
        return auth


@dataclass
class ClientKeys:
    """A client's side: its key pair and the back-end's public key."""

    folder: Path

    def apply(self, sock: zmq.Socket) -> None:
        public, secret = _load(self.folder / "client.key_secret", "client secret key")
        server_public, _ = _load(self.folder / "server.key", "server public key")
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_serverkey = server_public


def client_keys(folder: str | Path | None) -> ClientKeys | None:
    return None if folder is None else ClientKeys(Path(folder))


def apply(sock: zmq.Socket, keys: Any) -> None:
    if keys is not None:
        keys.apply(sock)
