#!/usr/bin/env python3
"""10,000 customer certificates: gatehouse and nginx with the same certificates, side by side.

10,000 environments, each with its own custom-domain certificate (ECDSA P-256; every tenth,
1,000 in all, RSA 2048), leaf and intermediate in one chain file, besides the platform wildcard
certificate. The same certificates are given to nginx, one `server` block each, as its users
configure many TLS hosts. Measured for both, in one run on this machine:

- `check`: `gatehouse check` / `nginx -t` on the configuration, wall time;
- start: process start until the TLS port answers a handshake (gatehouse: until /readyz is 200);
- RSS: resident memory of the process tree once started, after 2,000 handshakes spread over
  all the names (certificates that are loaded lazily would show here), and after the reloads;
- reload, nothing changed: gatehouse `POST /reload` round trip; nginx `-s reload` until every old
  worker has exited and the new ones answer;
- reload after one environment file changed (nginx: after one change to its configuration; its
  reload is always a full one);
- full reload: every certificate and key file rewritten (new modification times), so that nothing
  can be reused;
- full-handshake rate by SNI: fresh TLS 1.3 connections, no resumption, cycling over every
  custom name (10% of them RSA), per proxy CPU-second, after one pass over all names; the same
  against a 10-environment configuration with the same 9:1 ECDSA:RSA mix. The client
  (`examples/handshake_load.rs`, rustls, 64 connections at once) runs on core 1, the proxy on
  core 0. Both configurations run at once (the 10,000 one as the reloads above left it) and
  are measured in alternating rounds, first one then the other; each round gives a ratio, and
  the median ratio is reported with its range. Measured one after the other, minutes apart,
  the ratio moved by up to 7% between runs on this shared machine: drift of the host, not of
  the proxy, that alternating rounds cancel.

Run (needs nginx from Debian's nginx package and Python's cryptography):
    python3 benches/certificates.py                   # about 13 minutes, certificates cached in build/
    python3 benches/certificates.py --only gatehouse  # without nginx
    python3 benches/certificates.py --baseline /tmp/gatehouse-old  # and an earlier build, same run
"""

import argparse
import datetime
import json
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, "build", "certificates-bench")
ENVIRONMENTS = 10_000
HTTPS_PORT, ADMIN_PORT, NGINX_PORT = 9543, 9902, 9544
# The 10-environment configurations, running beside the 10,000 ones.
FEW_HTTPS_PORT, FEW_ADMIN_PORT, FEW_NGINX_PORT = 9553, 9912, 9554
HANDSHAKE_ROUNDS = 12
PROXY_CORE, LOAD_CORE = "0", "1"


# ---------------------------------------------------------------- certificates

def is_rsa(index):
    return index % 10 == 0


def custom_name(index):
    return f"www.customer{index}.bench"


def _make_certificates(arguments):
    """Write certificates `start..end` into CACHE (a worker process's share)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    start, end = arguments
    with open(os.path.join(CACHE, "intermediate.key"), "rb") as f:
        issuer_key = serialization.load_pem_private_key(f.read(), None)
    with open(os.path.join(CACHE, "intermediate.pem"), "rb") as f:
        issuer_pem = f.read()
    issuer = x509.load_pem_x509_certificate(issuer_pem)
    now = datetime.datetime.now(datetime.timezone.utc)
    for index in range(start, end):
        if is_rsa(index):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        name = custom_name(index)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(issuer_key, hashes.SHA256())
        )
        with open(os.path.join(CACHE, "certs", f"c{index}.pem"), "wb") as f:
            f.write(certificate.public_bytes(serialization.Encoding.PEM) + issuer_pem)
        with open(os.path.join(CACHE, "certs", f"c{index}.key"), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))


def certificates():
    """The intermediate, the platform wildcard and 10,000 custom certificates, made once."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    done = os.path.join(CACHE, "complete")
    if os.path.exists(done):
        return
    shutil.rmtree(CACHE, ignore_errors=True)
    os.makedirs(os.path.join(CACHE, "certs"))
    now = datetime.datetime.now(datetime.timezone.utc)

    def write(name, certificate, key, extra=b""):
        with open(os.path.join(CACHE, f"{name}.pem"), "wb") as f:
            f.write(certificate.public_bytes(serialization.Encoding.PEM) + extra)
        with open(os.path.join(CACHE, f"{name}.key"), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))

    def build(subject, issuer, public_key, signing_key, ca, names=()):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650 if ca else 365))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                            critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    root_key = ec.generate_private_key(ec.SECP256R1())
    root = build("bench root", "bench root", root_key.public_key(), root_key, True)
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate = build("bench intermediate", "bench root", intermediate_key.public_key(), root_key, True)
    write("root", root, root_key)
    write("intermediate", intermediate, intermediate_key)
    platform_key = ec.generate_private_key(ec.SECP256R1())
    platform = build("*.apps.bench", "bench intermediate", platform_key.public_key(), intermediate_key, False,
                     ["*.apps.bench"])
    write("platform", platform, platform_key, intermediate.public_bytes(serialization.Encoding.PEM))
    print("making 10,000 certificates (1,000 RSA 2048), once ...", flush=True)
    shares = [(start, min(start + 500, ENVIRONMENTS)) for start in range(0, ENVIRONMENTS, 500)]
    with multiprocessing.Pool(os.cpu_count()) as pool:
        pool.map(_make_certificates, shares)
    open(done, "w").close()


# ---------------------------------------------------------------- configurations

def gatehouse_config(work, count, https_port=HTTPS_PORT, admin_port=ADMIN_PORT):
    """A gatehouse configuration of `count` environments in `work`, sharing the cached files."""
    os.makedirs(os.path.join(work, "env"), exist_ok=True)
    certs = os.path.join(work, "certs")
    os.makedirs(certs, exist_ok=True)
    for index in range(count):
        for suffix in ("pem", "key"):
            target = os.path.join(certs, f"c{index}.{suffix}")
            if not os.path.exists(target):
                shutil.copyfile(os.path.join(CACHE, "certs", f"c{index}.{suffix}"), target)
            os.chmod(target, 0o600)
    for name in ("platform.pem", "platform.key"):
        shutil.copyfile(os.path.join(CACHE, name), os.path.join(work, name))
        os.chmod(os.path.join(work, name), 0o600)
    with open(os.path.join(work, "gatehouse.toml"), "w") as f:
        f.write(f"""environments = "env/*.toml"
[listen]
https = ["127.0.0.1:{https_port}"]
admin = "127.0.0.1:{admin_port}"
[tls]
certificate = "platform.pem"
key = "platform.key"
[logging]
access_log = "off"
[limits]
shutdown_grace = "off"
max_connections_per_client = 100000
[reload]
watch_files = false
""")
    for index in range(count):
        write_environment(work, index)
    return os.path.join(work, "gatehouse.toml")


def write_environment(work, index, comment=""):
    with open(os.path.join(work, "env", f"e{index}.toml"), "w") as f:
        f.write(f'{comment}name = "e{index}"\ndomains = ["e{index}.apps.bench", "{custom_name(index)}"]\n'
                f'upstreams = ["127.0.0.1:9100"]\n'
                f'[[certificates]]\ncertificate = "../certs/c{index}.pem"\nkey = "../certs/c{index}.key"\n')


def nginx_config(work, count, port=NGINX_PORT):
    certs = os.path.join(work, "certs")
    lines = [
        "worker_processes 1;", f"pid {work}/nginx.pid;", f"error_log {work}/nginx-error.log;",
        "events { worker_connections 4096; }",
        "http {", "access_log off;", "ssl_protocols TLSv1.2 TLSv1.3;", "ssl_session_tickets off;",
        "ssl_session_cache off;", "server_names_hash_max_size 65536;", "server_names_hash_bucket_size 128;",
        f"client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp;",
        f"uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;",
        "server {",
        f"  listen 127.0.0.1:{port} ssl default_server;", "  server_name *.apps.bench;",
        f"  ssl_certificate {work}/platform.pem;", f"  ssl_certificate_key {work}/platform.key;",
        "  location / { proxy_pass http://127.0.0.1:9100; }", "}",
    ]
    for index in range(count):
        lines += [
            "server {", f"  listen 127.0.0.1:{port} ssl;",
            f"  server_name e{index}.apps.bench {custom_name(index)};",
            f"  ssl_certificate {certs}/c{index}.pem;", f"  ssl_certificate_key {certs}/c{index}.key;",
            "  location / { proxy_pass http://127.0.0.1:9100; }", "}",
        ]
    lines.append("}")
    os.makedirs(os.path.join(work, "tmp"), exist_ok=True)
    path = os.path.join(work, "nginx.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- process facts

# The process tree and its CPU time, read from /proc as the head-to-head harness does.
from head_to_head import cpu_seconds, rss_kib, tree  # noqa: E402


def rss_mib(pid):
    return rss_kib(pid) / 1024


def handshake(port, name):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return tls.getpeercert(binary_form=True)


def wait_until(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError("timed out waiting")


def readyz(admin_port=ADMIN_PORT):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2) as answer:
        return answer.status == 200


def reload_gatehouse():
    request = urllib.request.Request(f"http://127.0.0.1:{ADMIN_PORT}/reload", method="POST")
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=120) as answer:
        body = answer.read().decode()
        if answer.status != 200:
            raise RuntimeError(f"reload answered {answer.status}: {body}")
    return time.monotonic() - started


class HandshakeLoad:
    """Full handshakes against one proxy, cycling over the custom names of `count` environments in
    a scattered order, from `examples/handshake_load.rs` (64 connections at once, enough to keep
    the proxy's core busy)."""

    def __init__(self, pid, port, count, work):
        self.pid, self.port = pid, port
        order = [custom_name((i * 7919) % count) for i in range(count)]
        self.names = os.path.join(work, f"names-{count}")
        with open(self.names, "w") as f:
            f.write("\n".join(order) + "\n")
        # One pass over every name first: the first handshake with each key costs more (the
        # crypto library prepares each key on first use), and a running proxy is measured in its
        # steady state.
        self.run(max(1.0, count / 2000))

    def run(self, seconds):
        client = os.path.join(release_dir(), "examples", "handshake_load")
        out = subprocess.run(["taskset", "-c", LOAD_CORE, client, f"127.0.0.1:{self.port}", self.names,
                              str(seconds), "64"], check=True, capture_output=True, text=True).stdout
        done, failed = (int(word) for word in out.split() if word.isdigit())
        if failed:
            raise RuntimeError(f"{failed} handshakes failed")
        return done

    def rate(self, seconds):
        """Handshakes per proxy CPU-second over `seconds` of load."""
        before = cpu_seconds(self.pid)
        done = self.run(seconds)
        cpu = cpu_seconds(self.pid) - before
        return done / cpu if cpu > 0 else float("nan")


def handshake_rates(many, few, seconds, figures):
    """The handshake rates of two running proxies (10,000 and 10 environments) in alternating
    rounds of `seconds` each, which proxy goes first alternating too; the median rate of each and
    the median and range of the per-round ratios go into `figures`."""
    rates_many, rates_few, ratios = [], [], []
    for round_number in range(HANDSHAKE_ROUNDS):
        pair = (many, few) if round_number % 2 == 0 else (few, many)
        measured = {id(load): load.rate(seconds) for load in pair}
        rates_many.append(measured[id(many)])
        rates_few.append(measured[id(few)])
        ratios.append(rates_many[-1] / rates_few[-1])
        print(f"  handshake round {round_number}: {rates_many[-1]:,.0f} / {rates_few[-1]:,.0f} = {ratios[-1]:.3f}",
              flush=True)
    figures["handshakes_10000"] = statistics.median(rates_many)
    figures["handshakes_10"] = statistics.median(rates_few)
    figures["handshake_ratio"] = statistics.median(ratios)
    figures["handshake_ratio_range"] = [min(ratios), max(ratios)]


def release_dir():
    """Where cargo puts release builds, as cargo reports it."""
    metadata = subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
                                       cwd=ROOT)
    return os.path.join(json.loads(metadata)["target_directory"], "release")


# ---------------------------------------------------------------- the proxies

class Gatehouse:
    def __init__(self, binary, work, count, https_port=HTTPS_PORT, admin_port=ADMIN_PORT):
        self.binary, self.work, self.count = binary, work, count
        self.https_port, self.admin_port = https_port, admin_port
        self.config = gatehouse_config(work, count, https_port, admin_port)
        self.process = None

    def check(self):
        started = time.monotonic()
        subprocess.run([self.binary, "check", "--config", self.config], check=True, capture_output=True)
        return time.monotonic() - started

    def start(self):
        started = time.monotonic()
        self.log = open(os.path.join(self.work, "gatehouse.log"), "w")
        self.process = subprocess.Popen(["taskset", "-c", PROXY_CORE, self.binary, "run", "--config", self.config],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: readyz(self.admin_port))
        return time.monotonic() - started

    @property
    def pid(self):
        return self.process.pid

    def stop(self):
        if self.process:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
            self.log.close()


class Nginx:
    def __init__(self, work, count, port=NGINX_PORT):
        self.work, self.count, self.port = work, count, port
        self.config = nginx_config(work, count, port)
        self.process = None

    def check(self):
        started = time.monotonic()
        subprocess.run(["nginx", "-t", "-q", "-c", self.config, "-e", f"{self.work}/nginx-error.log"],
                       check=True, capture_output=True)
        return time.monotonic() - started

    def start(self):
        started = time.monotonic()
        self.process = subprocess.Popen(["taskset", "-c", PROXY_CORE, "nginx", "-c", self.config,
                                         "-e", f"{self.work}/nginx-error.log", "-g", "daemon off;"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: handshake(self.port, custom_name(0)) is not None)
        return time.monotonic() - started

    @property
    def pid(self):
        return self.process.pid

    def workers(self):
        return set(tree(self.pid)) - {self.pid}

    def reload(self):
        old = self.workers()
        started = time.monotonic()
        self.process.send_signal(signal.SIGHUP)
        # Done when no old worker is left and a new one serves.
        wait_until(lambda: not (self.workers() & old) and self.workers(), timeout=120)
        wait_until(lambda: handshake(self.port, custom_name(1)) is not None)
        return time.monotonic() - started

    def stop(self):
        if self.process:
            self.process.send_signal(signal.SIGQUIT)
            self.process.wait(timeout=60)


def touch_all(work, count):
    """Rewrite every certificate and key file with its own content: new modification times and
    inodes, as a renewal of every certificate would leave them."""
    for index in range(count):
        for suffix in ("pem", "key"):
            path = os.path.join(work, "certs", f"c{index}.{suffix}")
            with open(path, "rb") as f:
                content = f.read()
            temporary = path + ".new"
            with open(temporary, "wb") as f:
                f.write(content)
            os.chmod(temporary, 0o600)
            os.replace(temporary, path)


def memory_once_started(pid, port, figures):
    """Resident memory once started, and after a handshake with every fifth custom name (a
    certificate loaded on first use would show here)."""
    time.sleep(1)
    figures["rss_started"] = rss_mib(pid)
    for index in range(0, ENVIRONMENTS, 5):
        handshake(port, custom_name(index))
    figures["rss_after_handshakes"] = rss_mib(pid)


def handshakes_beside(many, many_port, few, few_port, work, seconds, figures):
    """Start `few` (10 environments) beside the running `many` (10,000) and measure both
    proxies' handshake rates in alternating rounds (see `handshake_rates`); `few` is stopped after."""
    few.start()
    try:
        handshake_rates(HandshakeLoad(many.pid, many_port, ENVIRONMENTS, work),
                        HandshakeLoad(few.pid, few_port, 10, work), seconds, figures)
    finally:
        few.stop()


def measure_gatehouse(binary, work, seconds):
    figures = {}
    many = Gatehouse(binary, os.path.join(work, "g10000"), ENVIRONMENTS)
    figures["check"] = statistics.median(many.check() for _ in range(3))
    figures["start"] = many.start()
    try:
        memory_once_started(many.pid, HTTPS_PORT, figures)
        figures["reload_unchanged"] = statistics.median(reload_gatehouse() for _ in range(3))
        one = []
        for round_number in range(3):
            write_environment(many.work, 4242, comment=f"# round {round_number}\n")
            one.append(reload_gatehouse())
        figures["reload_one_file"] = statistics.median(one)
        cli = []
        for round_number in range(3):
            write_environment(many.work, 4243, comment=f"# round {round_number}\n")
            started = time.monotonic()
            subprocess.run([binary, "reload", "--config", many.config], check=True, capture_output=True)
            cli.append(time.monotonic() - started)
        figures["reload_cli_one_file"] = statistics.median(cli)
        full = []
        for _ in range(3):
            touch_all(many.work, ENVIRONMENTS)
            full.append(reload_gatehouse())
        figures["reload_full"] = statistics.median(full)
        time.sleep(1)
        figures["rss_after_reloads"] = rss_mib(many.pid)
        few = Gatehouse(binary, os.path.join(work, "g10"), 10, FEW_HTTPS_PORT, FEW_ADMIN_PORT)
        handshakes_beside(many, HTTPS_PORT, few, FEW_HTTPS_PORT, work, seconds, figures)
    finally:
        many.stop()
    return figures


def measure_nginx(work, seconds):
    figures = {}
    shutil.copytree(os.path.join(work, "g10000", "certs"), os.path.join(work, "n10000", "certs"))
    for name in ("platform.pem", "platform.key"):
        shutil.copyfile(os.path.join(CACHE, name), os.path.join(work, "n10000", name))
    many = Nginx(os.path.join(work, "n10000"), ENVIRONMENTS)
    figures["check"] = statistics.median(many.check() for _ in range(3))
    figures["start"] = many.start()
    try:
        memory_once_started(many.pid, NGINX_PORT, figures)
        figures["reload_unchanged"] = statistics.median(many.reload() for _ in range(2))
        # nginx has no partial reload: after one changed file it reloads everything.
        with open(many.config, "a") as f:
            f.write("# one change\n")
        figures["reload_one_file"] = many.reload()
        touch_all(many.work, ENVIRONMENTS)
        figures["reload_full"] = many.reload()
        time.sleep(1)
        figures["rss_after_reloads"] = rss_mib(many.pid)
        os.makedirs(os.path.join(work, "n10", "certs"))
        for index in range(10):
            for suffix in ("pem", "key"):
                shutil.copyfile(os.path.join(CACHE, "certs", f"c{index}.{suffix}"),
                                os.path.join(work, "n10", "certs", f"c{index}.{suffix}"))
        for name in ("platform.pem", "platform.key"):
            shutil.copyfile(os.path.join(CACHE, name), os.path.join(work, "n10", name))
        few = Nginx(os.path.join(work, "n10"), 10, FEW_NGINX_PORT)
        handshakes_beside(many, NGINX_PORT, few, FEW_NGINX_PORT, work, seconds, figures)
    finally:
        many.stop()
    return figures


def report(results):
    names = list(results)
    rows = [
        ("check", "`check` / `nginx -t`", "{:.2f} s"),
        ("start", "start to ready", "{:.2f} s"),
        ("rss_started", "RSS once started", "{:.0f} MiB"),
        ("rss_after_handshakes", "RSS after 2,000 handshakes over all names", "{:.0f} MiB"),
        ("rss_after_reloads", "RSS after the reloads below", "{:.0f} MiB"),
        ("reload_unchanged", "reload, nothing changed", "{:.3f} s"),
        ("reload_one_file", "reload after one environment file changed", "{:.3f} s"),
        ("reload_cli_one_file", "`gatehouse reload` after one environment file changed", "{:.3f} s"),
        ("reload_full", "full reload (every certificate and key rewritten)", "{:.3f} s"),
        ("handshakes_10", "full handshakes per CPU-second, 10 environments", "{:,.0f}"),
        ("handshakes_10000", "full handshakes per CPU-second, 10,000 environments", "{:,.0f}"),
    ]
    print("| measure | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for key, label, form in rows:
        cells = []
        for name in names:
            value = results[name].get(key, float("nan"))
            cells.append("n/a" if value != value else form.format(value))
        print(f"| {label} | " + " | ".join(cells) + " |")
    for name in names:
        r = results[name]
        low, high = r["handshake_ratio_range"]
        print(f"{name}: handshakes 10,000 / 10 = {r['handshake_ratio']:.3f} (median of {HANDSHAKE_ROUNDS} "
              f"alternating rounds; rounds {low:.3f} to {high:.3f})")


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "gatehouse", "--example", "handshake_load"],
                   cwd=ROOT, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "gatehouse"))
    parser.add_argument("--only", choices=["gatehouse", "nginx"])
    parser.add_argument("--baseline", help="an earlier gatehouse build, measured in the same run")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help=f"length of each handshake round ({HANDSHAKE_ROUNDS} rounds per configuration)")
    args = parser.parse_args()
    build()
    certificates()
    results = {}
    with tempfile.TemporaryDirectory(prefix="gatehouse-certificates-") as work:
        if args.only != "nginx":
            results["gatehouse"] = measure_gatehouse(args.binary, work, args.seconds)
            print(json.dumps(results["gatehouse"]), flush=True)
            if args.baseline:
                earlier = os.path.join(work, "baseline")
                os.makedirs(earlier)
                results["baseline"] = measure_gatehouse(args.baseline, earlier, args.seconds)
                print(json.dumps(results["baseline"]), flush=True)
        if args.only != "gatehouse":
            if args.only == "nginx":
                gatehouse_config(os.path.join(work, "g10000"), ENVIRONMENTS)
            results["nginx"] = measure_nginx(work, args.seconds)
            print(json.dumps(results["nginx"]), flush=True)
    report(results)


if __name__ == "__main__":
    sys.exit(main())
