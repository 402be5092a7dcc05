"""A real IMAP server for the tests: Debian's dovecot, started from a temporary config on free
loopback ports (plain/STARTTLS and IMAPS), with one passwd-file user and a self-signed certificate.

Other agents run tests on this machine at the same time, so nothing of the system's dovecot is
used: its own base_dir, state, log and mail folders, and ports found free just before the start
(tried again on a clash). As root (CI containers), the mail processes run as ``nobody``, since
dovecot refuses mail access as uid 0; as anyone else, as that user.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DOVECOT = "/usr/sbin/dovecot"
USER = "bounces"
PASSWORD = "imap-secret-0123"


def dovecot_available() -> bool:
    return Path(DOVECOT).is_file() and shutil.which("openssl") is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Imap:
    """A running dovecot: where it listens, the user's login, and the CA that signed its certificate."""

    port: int
    tls_port: int
    cafile: Path
    root: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))

    def client(self) -> imaplib.IMAP4:
        conn = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        conn.login(USER, PASSWORD)
        return conn

    def deliver(self, *messages: bytes, folder: str = "INBOX") -> None:
        """Put messages into the user's folder as a delivery would (APPEND, unseen)."""
        conn = self.client()
        try:
            for data in messages:
                status, detail = conn.append(folder, None, None, data)
                assert status == "OK", detail
        finally:
            conn.logout()

    def folder(self, name: str = "INBOX") -> list[tuple[set[str], bytes]]:
        """Each message of ``name`` as (flags, first bytes), in order."""
        conn = self.client()
        try:
            status, data = conn.select(f'"{name}"', readonly=True)
            if status != "OK":
                return []
            out: list[tuple[set[str], bytes]] = []
            if int(data[0] or 0) == 0:
                return out
            status, fetched = conn.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID SUBJECT)])")
            for item in fetched:
                if isinstance(item, tuple):
                    meta = item[0].decode()
                    flags = set(meta.split("FLAGS (", 1)[1].split(")", 1)[0].split())
                    out.append((flags, item[1]))
            return out
        finally:
            conn.logout()


def _config(root: Path, port: int, tls_port: int, uid: int, gid: int, internal: str, login: str) -> str:
    return f"""
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
instance_name = finews-test-{port}
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = 1
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


def _ready(port: int, tls: bool = False, timeout: float = 15.0) -> bool:
    """The server greets on ``port`` (after a TLS handshake when ``tls``)."""
    deadline = time.monotonic() + timeout
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                sock = context.wrap_socket(raw) if tls else raw
                if sock.recv(100).startswith(b"* OK"):
                    return True
        except OSError:
            time.sleep(0.1)
    return False


@contextmanager
def running_dovecot() -> Iterator[Imap]:
    # Not pytest's tmp_path: its folders are private to their owner, and as root the mail
    # processes run as nobody, who must reach the mail folder.
    root = Path(tempfile.mkdtemp(prefix="finews-dovecot-"))
    root.chmod(0o755)
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-keyout", str(root / "key.pem"), "-out", str(root / "cert.pem")],
                       check=True, capture_output=True)
        (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n", encoding="utf-8")
        (root / "mail").mkdir()
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            uid, gid, internal, login = nobody.pw_uid, nobody.pw_gid, "dovecot", "dovenull"
            os.chown(root / "mail", uid, gid)
        else:
            me = pwd.getpwuid(os.geteuid())
            uid, gid, internal, login = me.pw_uid, me.pw_gid, me.pw_name, me.pw_name
        for _attempt in range(3):
            port, tls_port = _free_port(), _free_port()
            conf = root / "dovecot.conf"
            conf.write_text(_config(root, port, tls_port, uid, gid, internal, login), encoding="utf-8")
            # dovecot forks into the background; its output goes to the log, so no pipe is held open.
            subprocess.run([DOVECOT, "-c", str(conf)], check=True, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if _ready(port) and _ready(tls_port, tls=True):
                break
            _stop(root)
        else:
            log = (root / "dovecot.log").read_text(errors="replace") if (root / "dovecot.log").exists() else ""
            raise RuntimeError(f"dovecot did not start: {log[-2000:]}")
        try:
            yield Imap(port, tls_port, root / "cert.pem", root)
        finally:
            _stop(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _stop(root: Path) -> None:
    pid_file = root / "run" / "master.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
