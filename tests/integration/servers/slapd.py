"""A throwaway OpenLDAP slapd for the directory tests and the benchmark (issue 3).

``cn=config`` is built offline with ``slapadd -n0`` in a temp dir: core, cosine,
inetorgperson and nis schemas, the ppolicy module and overlay, the argon2 password
module, congvu's shipped schema (``conf/ldap/congvu.ldif``) and an mdb database whose
access rules are the olcAccess values of the shipped example ``conf/ldap/congvu-acl.ldif``.
The tree comes from the shipped ``conf/ldap/congvu-service.ldif`` (service account
password filled in).  slapd runs in the foreground on a loopback port and is killed
afterwards; ``stop()``/``start()``/``pause()``/``resume()`` drive outage tests.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import free_port, need, stop_process

REPO = Path(__file__).resolve().parents[3]
LDAP_CONF = REPO / "conf" / "ldap"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")

SUFFIX = "dc=cantho,dc=gov,dc=vn"
PEOPLE = f"ou=people,{SUFFIX}"
SERVICE_DN = f"cn=congvu,ou=services,{SUFFIX}"
ROOT_DN = f"cn=admin,{SUFFIX}"
POLICY_DN = f"cn=default,ou=policies,{SUFFIX}"


#: A stand-in for a site's existing mail schema (like Univention's), so the attribute map
#: can be tested against names that are not congvu's.  Test-only OIDs under the placeholder arc.
SITE_SCHEMA = """dn: cn=site,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: site
olcAttributeTypes: ( 1.3.6.1.4.1.99999.9.1.1 NAME 'mailPrimaryAddress'
  EQUALITY caseIgnoreIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )
olcAttributeTypes: ( 1.3.6.1.4.1.99999.9.1.2 NAME 'mailAlternativeAddress'
  EQUALITY caseIgnoreIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 )
olcObjectClasses: ( 1.3.6.1.4.1.99999.9.2.1 NAME 'siteMailUser' SUP top AUXILIARY
  MAY ( mailPrimaryAddress $ mailAlternativeAddress ) )
"""


def ssha(password: str) -> str:
    """An RFC 2307 ``{SSHA}`` hash slapd verifies natively (for the fixture's own accounts)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def ldif_values(path: Path, attribute: str) -> list[str]:
    """Every value of ``attribute`` in an LDIF file (continuation lines unfolded)."""
    lines: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.startswith("#"):
            continue
        if raw.startswith(" ") and lines:
            lines[-1] += raw[1:]
        else:
            lines.append(raw)
    prefix = attribute.lower() + ":"
    return [line.split(":", 1)[1].strip() for line in lines if line.lower().startswith(prefix)]


def ldif_entry(dn: str, attrs: dict[str, list[bytes]]) -> str:
    """One LDIF record; values that are not plain ASCII go base64 (``attr:: ...``)."""

    def line(name: str, value: bytes) -> str:
        safe = (value.isascii() and b"\n" not in value and b"\r" not in value and b"\x00" not in value
                and not value.startswith((b" ", b":", b"<")) and not value.endswith(b" "))
        return f"{name}: {value.decode()}" if safe else f"{name}:: {base64.b64encode(value).decode()}"

    out = [line("dn", dn.encode())]
    for name, values in attrs.items():
        out.extend(line(name, v) for v in values)
    return "\n".join(out) + "\n\n"


class SlapdServer:
    """One slapd instance in ``root``; build() once, then start()/stop() as often as needed."""

    def __init__(self, root: Path, slapd: str = "/usr/sbin/slapd", slapadd: str = "/usr/sbin/slapadd",
                 openssl: str | None = "/usr/bin/openssl", port: int | None = None) -> None:
        self.root = root
        self.slapd, self.slapadd, self.openssl = slapd, slapadd, openssl
        self.port = port or free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        #: ldaps:// listener with a self-signed certificate (``ca_file``); only when openssl is given.
        self.tls_port = free_port() if openssl else 0
        self.ldaps_url = f"ldaps://127.0.0.1:{self.tls_port}" if openssl else ""
        self.ca_file = root / "cert.pem"
        self.suffix, self.base_dn = SUFFIX, PEOPLE
        self.bind_dn, self.root_dn, self.policy_dn = SERVICE_DN, ROOT_DN, POLICY_DN
        self.password_file = root / "service.secret"
        self.root_password = secrets.token_urlsafe(18)
        self._proc: subprocess.Popen[bytes] | None = None
        self.log = root / "slapd.log"

    def __repr__(self) -> str:
        return f"SlapdServer(url={self.url!r}, base_dn={self.base_dn!r})"

    # ------------------------------------------------------------------ building
    def build(self, entries: Iterable[str] = ()) -> None:
        """Write cn=config and the base tree with slapadd, plus any extra LDIF records."""
        conf, db = self.root / "slapd.d", self.root / "db"
        conf.mkdir(parents=True)
        db.mkdir()
        if self.openssl:
            self._run([self.openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                       "-nodes", "-keyout", str(self.root / "key.pem"), "-out", str(self.ca_file), "-days", "2",
                       "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        config = self.root / "config.ldif"
        config.write_text(self._config_ldif(db), encoding="utf-8")
        self._run([self.slapadd, "-n0", "-F", str(conf), "-l", str(config)])
        service_password = secrets.token_urlsafe(18)
        self.password_file.write_text(service_password + "\n", encoding="utf-8")
        self.password_file.chmod(0o600)
        tree = self.root / "tree.ldif"
        with tree.open("w", encoding="utf-8") as f:
            f.write(self._tree_ldif(service_password))
            for record in entries:
                f.write(record)
        self._run([self.slapadd, "-q", "-n1", "-F", str(conf), "-l", str(tree)])

    def _config_ldif(self, db: Path) -> str:
        schemas = [SCHEMA_DIR / f"{n}.ldif" for n in ("core", "cosine", "inetorgperson", "nis")]
        schemas.append(LDAP_CONF / "congvu.ldif")
        site = self.root / "site-schema.ldif"
        site.write_text(SITE_SCHEMA, encoding="utf-8")
        schemas.append(site)
        access = ldif_values(LDAP_CONF / "congvu-acl.ldif", "olcAccess")
        # The site's own baseline after congvu's rules (Debian's default has the same shape):
        # anyone may authenticate, nobody else reads anything.
        access += [f"{{{len(access)}}}to attrs=userPassword by anonymous auth by * none",
                   f"{{{len(access) + 1}}}to * by * none"]
        indexes = ["objectClass eq", *ldif_values(LDAP_CONF / "congvu-acl.ldif", "olcDbIndex")]
        lines = [
            "dn: cn=config", "objectClass: olcGlobal", "cn: config",
            f"olcPidFile: {self.root / 'slapd.pid'}", f"olcArgsFile: {self.root / 'slapd.args'}",
            "olcLogLevel: none",
            *([f"olcTLSCertificateFile: {self.ca_file}", f"olcTLSCertificateKeyFile: {self.root / 'key.pem'}"]
              if self.openssl else []), "",
            "dn: cn=module{0},cn=config", "objectClass: olcModuleList", "cn: module{0}",
            f"olcModulePath: {MODULE_DIR}", "olcModuleLoad: back_mdb", "olcModuleLoad: ppolicy",
            "olcModuleLoad: argon2", "",
            "dn: cn=schema,cn=config", "objectClass: olcSchemaConfig", "cn: schema", "",
            *[f"include: file://{s}\n" for s in schemas],
            "dn: olcDatabase={-1}frontend,cn=config", "objectClass: olcDatabaseConfig",
            "objectClass: olcFrontendConfig", "olcDatabase: {-1}frontend",
            'olcAccess: {0}to dn.base="" by * read', 'olcAccess: {1}to dn.base="cn=Subschema" by * read', "",
            "dn: olcDatabase={0}config,cn=config", "objectClass: olcDatabaseConfig", "olcDatabase: {0}config",
            "olcAccess: {0}to * by * none", "",
            "dn: olcDatabase={1}mdb,cn=config", "objectClass: olcDatabaseConfig", "objectClass: olcMdbConfig",
            "olcDatabase: {1}mdb", f"olcSuffix: {SUFFIX}", f"olcDbDirectory: {db}",
            f"olcRootDN: {ROOT_DN}", f"olcRootPW: {ssha(self.root_password)}",
            "olcDbMaxSize: 1073741824", "olcDbNoSync: TRUE", "olcSizeLimit: unlimited",
            *[f"olcDbIndex: {i}" for i in indexes], *[f"olcAccess: {a}" for a in access], "",
            "dn: olcOverlay={0}ppolicy,olcDatabase={1}mdb,cn=config", "objectClass: olcOverlayConfig",
            "objectClass: olcPPolicyConfig", "olcOverlay: {0}ppolicy", f"olcPPolicyDefault: {POLICY_DN}", "",
        ]
        return "\n".join(lines) + "\n"

    def _tree_ldif(self, service_password: str) -> str:
        shipped = (LDAP_CONF / "congvu-service.ldif").read_text(encoding="utf-8")
        shipped = shipped.replace("{SSHA}REPLACE-WITH-slappasswd-OUTPUT", ssha(service_password))
        return (f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: cantho\n"
                f"o: UBND TP Can Tho\n\n{shipped.strip()}\n\n"
                f"dn: ou=policies,{SUFFIX}\nobjectClass: organizationalUnit\nou: policies\n\n"
                f"dn: {POLICY_DN}\nobjectClass: device\nobjectClass: pwdPolicy\ncn: default\n"
                f"pwdAttribute: userPassword\npwdMustChange: TRUE\npwdAllowUserChange: FALSE\n\n")

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")

    # ------------------------------------------------------------------ running
    def start(self, timeout: float = 15.0) -> None:
        """Start slapd in the foreground (``-d 0``) and wait until it accepts connections."""
        if self._proc is not None:
            return
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.slapd, "-d", "0", "-F", str(self.root / "slapd.d"), "-h", self._listeners()],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        ports = [p for p in (self.port, self.tls_port) if p]
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"slapd exited at start; see {self.log}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                for port in ports:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        pass
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"slapd did not listen on {self.url} within {timeout}s")

    def _listeners(self) -> str:
        return f"{self.url}/ {self.ldaps_url}/" if self.ldaps_url else f"{self.url}/"

    def stop(self) -> None:
        """Kill slapd and wait for it (the outage tests call this mid-test)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # in case it was paused
        stop_process(proc)

    def pause(self) -> None:
        """Freeze slapd (SIGSTOP): connections stay open but nothing answers."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)
        # SIGSTOP is asynchronous: wait until every thread is really stopped, or a busy machine
        # lets slapd answer one more request after pause() returned.
        deadline = time.monotonic() + 10
        tasks = Path(f"/proc/{self._proc.pid}/task")
        while time.monotonic() < deadline:
            states = []
            for stat in tasks.glob("*/stat"):
                try:
                    states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
                except (OSError, IndexError):
                    continue
            if states and all(s in ("T", "t") for s in states):
                return
            time.sleep(0.01)
        raise RuntimeError("slapd did not stop on SIGSTOP")

    def resume(self) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ clients
    def directory_overrides(self, **extra: Any) -> dict[str, Any]:
        """The ``[directory]`` table that points congvu at this server."""
        return {"backend": "ldap", "url": self.url, "base_dn": self.base_dn, "bind_dn": self.bind_dn,
                "bind_password_file": str(self.password_file), "timeout": "3s", "pool_size": 2, **extra}

    def admin(self) -> Any:
        """An ldap3 connection bound as the rootdn (tests use it to look behind congvu's back)."""
        import ldap3

        return ldap3.Connection(ldap3.Server(self.url, connect_timeout=5), self.root_dn, self.root_password,
                                auto_bind=True, receive_timeout=10, raise_exceptions=True)


@pytest.fixture(scope="session")
def slapd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlapdServer]:
    """A running slapd with the shipped schema, ACL and service account; killed at the end."""
    server = SlapdServer(tmp_path_factory.mktemp("slapd"), slapd=need("slapd", "slapd"),
                         slapadd=need("slapadd", "slapd"), openssl=need("openssl", "openssl"))
    server.build()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def running_slapd(slapd_server: SlapdServer) -> Iterator[SlapdServer]:
    """The session slapd, guaranteed running before and after the test (outage tests stop it)."""
    slapd_server.start()
    try:
        yield slapd_server
    finally:
        if slapd_server.running:
            slapd_server.resume()
        slapd_server.start()
