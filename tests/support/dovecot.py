"""A throwaway Dovecot IMAP server for the tests: its own config and maildirs under a temp dir.

Every login name is an account (created on first use) with the one `password`, so each test can
have a fresh mailbox without touching the server. Dovecot runs "rootless" (every process as one
unprivileged user, no chroot), listening on free loopback ports: plain IMAP (STARTTLS offered) and
implicit-TLS IMAPS, with a self-signed certificate made here. Run as root, it runs as `nobody`
instead, the way tests/support/pg_ctl runs PostgreSQL as `postgres`.
"""

from __future__ import annotations

import datetime
import getpass
import grp
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DOVECOT_CANDIDATES = ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot")

_CONFIG = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{base}/cert.pem
ssl_key = <{base}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = {user}
default_internal_user = {user}
default_internal_group = {group}
first_valid_uid = 1
mail_location = maildir:{base}/mail/%u
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={user} gid={group} home={base}/mail/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
}}
service anvil {{
  chroot =
}}
"""


def dovecot_binary() -> str | None:
    """Where Dovecot's master binary is (Debian's dovecot-core keeps it out of a user's PATH)."""
    found = shutil.which("dovecot")
    if found:
        return found
    return next((path for path in DOVECOT_CANDIDATES if os.access(path, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed(base: Path) -> Path:
    """A certificate for 127.0.0.1/localhost; returns the PEM path (the client's trust anchor)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (base / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path = base / "cert.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


@dataclass(slots=True)
class DovecotServer:
    """A running Dovecot: any login name with `password` opens that name's mailbox."""

    base: Path
    imap_port: int
    imaps_port: int
    cert_path: Path
    password: str
    # The user Dovecot's processes run as, who must be able to read its files.
    run_as: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    host = "127.0.0.1"

    @classmethod
    def start(cls, password: str, *, timeout: float = 15.0) -> DovecotServer:
        """Start a server in a new temp dir; `stop` removes it."""
        binary = dovecot_binary()
        if binary is None:
            raise RuntimeError("no dovecot binary: run scripts/test-deps.sh (Debian's dovecot-imapd)")
        # Its own directory under /tmp: pytest's tmp_path is private to root, and Dovecot's
        # processes run as another user when the tests run as root.
        base = Path(tempfile.mkdtemp(prefix="parley-dovecot-"))
        base.chmod(0o755)
        for sub in ("run", "state", "mail"):
            (base / sub).mkdir(exist_ok=True)
        as_root = os.geteuid() == 0
        user = "nobody" if as_root else getpass.getuser()
        group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
        server = cls(
            base=base,
            imap_port=_free_port(),
            imaps_port=_free_port(),
            cert_path=_self_signed(base),
            password=password,
            run_as=user,
        )
        config = base / "dovecot.conf"
        config.write_text(
            _CONFIG.format(
                base=base,
                user=user,
                group=group,
                password=password,
                imap_port=server.imap_port,
                imaps_port=server.imaps_port,
            )
        )
        if as_root:
            uid = pwd.getpwnam(user).pw_uid
            gid = pwd.getpwnam(user).pw_gid
            os.chown(base, uid, gid)
            for path in base.rglob("*"):
                os.chown(path, uid, gid)
        command = [binary, "-F", "-c", str(config)]
        if as_root:
            command = ["runuser", "-u", user, "--", *command]
        server.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        server._wait_listening(timeout)
        return server

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"dovecot exited ({self.process.returncode}): {stderr}{self.log()}")
            try:
                with socket.create_connection((self.host, self.imap_port), timeout=1) as s:
                    if s.recv(256).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not start listening in {timeout}s: {self.log()}")

    def log(self) -> str:
        path = self.base / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.base, ignore_errors=True)
