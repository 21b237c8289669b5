#!/usr/bin/env python3
"""Head-to-head: gatehouse, nginx and HAProxy doing the same job on this machine, taking turns.

Each proxy terminates TLS (ECDSA P-256 on one port, RSA 2048 on another, the same certificates),
runs one worker/thread pinned to core 0, checks an IP allow rule, adds the same two response
headers and the forwarded headers, and forwards over a keep-alive pool of 64 to the same backend
(examples/bench_backend.rs). The load generator and the backend run on core 1.

Logging, both ways (--logging on|off|both, default both; the throughput scenarios run once per
way, each a run of its own): "on" is an access log line per request in the same fields (the
common log format: client, time, request line, status, bytes) written the way each proxy's users
would on a busy proxy: gatehouse batches its lines (64 KiB, flushed every 100 ms), nginx buffers
its log (`buffer=64k flush=100ms`), HAProxy sends each line as a syslog datagram to a local
receiver (its usual production setup; a receiver in this harness reads and drops them). "off"
turns access logging off in all three. The report also records each proxy's negotiated protocol,
cipher and key-exchange group, the TLS library each is built on, and the host's transparent
huge-page setting.

Scenarios: a) wrk -t1 -c64, small response; b) the same, 16 KiB; c) h2load -c16 -m10;
d) full TLS handshakes, one fresh connection per request (h2load --h1 -c2000 -n2000 -m1), ECDSA
and RSA; e) resident memory per idle TLS connection (2,000 held open after the handshake, then
after one request each) on a freshly started process; f) gatehouse with 10,000 environments: start,
reload, and scenario a against it, in rounds alternating with a 10-environment configuration.

Throughput alone cannot show a win on a shared machine, so each proxy's CPU time is read from /proc
and the table reports requests (or handshakes) per proxy CPU-second, the median of the rounds with
min-max, and the gatehouse/nginx and gatehouse/HAProxy ratios. The proxies run side by side on
their own ports and take turns run by run (the order rotating each round), so that a change in
the machine's load, which on this shared machine lasts seconds to minutes, lands on all of them
alike; memory (e) is measured on each proxy freshly started in turn.

Run (needs nginx, haproxy, wrk, h2load from Debian's nginx, haproxy, wrk and nghttp2-client):
    python3 benches/head_to_head.py            # about 20 minutes (10 per logging way)
    python3 benches/head_to_head.py --quick    # 1 run of 3 s each, to check the harness
    python3 benches/head_to_head.py --only gatehouse --baseline /tmp/gatehouse-before --scenarios a,c
        # a change against an earlier build of gatehouse, in alternating runs
"""

import argparse
import os
import re
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


def release_dir():
    """Where cargo puts release builds (target/, or wherever CARGO_TARGET_DIR says), as cargo reports it."""
    import json
    metadata = subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
                                       cwd=ROOT)
    return os.path.join(json.loads(metadata)["target_directory"], "release")
PROXY_CORE, LOAD_CORE = "0", "1"
ECDSA_PORT, RSA_PORT, BACKEND_PORT, ADMIN_PORT = 9443, 9444, 9100, 9901
SYSLOG_PORT = 9514
# The access log fields of all three when logging is on: the common log format, as gatehouse's
# `access_log_format = "common"` writes it.
NGINX_COMMON = "'$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent'"
HAPROXY_COMMON = '"%ci - - [%tr] \\"%r\\" %ST %B"'
HOST = "bench.test"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def run(cmd, **kwargs):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


def tree(pid):
    """The pid and its descendants."""
    pids, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == parent:
                    pids.append(int(entry))
                    frontier.append(int(entry))
    return pids


def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLOCK_TICKS


def rss_kib(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_KIB
        except OSError:
            pass
    return total


def wait_port(port, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def make_certificates(work):
    for kind, args in (("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]), ("rsa", ["-newkey", "rsa:2048"])):
        run(["openssl", "req", "-x509", "-nodes", *args, "-days", "30", "-subj", f"/CN={HOST}",
             "-addext", f"subjectAltName=DNS:{HOST},DNS:*.{HOST}", "-keyout", f"{work}/{kind}.key", "-out", f"{work}/{kind}.pem"])
        with open(f"{work}/{kind}-combined.pem", "w") as out:
            out.write(open(f"{work}/{kind}.pem").read() + open(f"{work}/{kind}.key").read())


def prepare(prefix):
    """Build gatehouse and the backend, make a work directory with the certificates, and start
    the backend on the load core: (work directory, backend process)."""
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "gatehouse", "--example", "bench_backend"],
                   cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix=prefix)
    make_certificates(work)
    backend = subprocess.Popen(["taskset", "-c", LOAD_CORE, f"{release_dir()}/examples/bench_backend",
                                f"127.0.0.1:{BACKEND_PORT}"], stdout=subprocess.DEVNULL)
    try:
        wait_port(BACKEND_PORT)
    except RuntimeError:
        backend.terminate()
        raise
    return work, backend


# ---------------------------------------------------------------- proxies under test


class Proxy:
    name = ""

    def __init__(self, work, offset=0, logging=True):
        self.work = work
        self.logging = logging
        self.process = None
        # Each proxy of a session listens on its own pair of ports, so that all can run side by side.
        self.ecdsa_port, self.rsa_port = ECDSA_PORT + offset, RSA_PORT + offset

    def start(self):
        self.process = subprocess.Popen(["taskset", "-c", PROXY_CORE, *self.command()], cwd=self.work,
                                        stdout=subprocess.DEVNULL,
                                        stderr=open(f"{self.work}/{self.name}-stderr.log", "a"))
        wait_port(self.ecdsa_port)
        wait_port(self.rsa_port)

    def stop(self):
        if self.process:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        for port in (self.ecdsa_port, self.rsa_port):
            deadline = time.time() + 10
            while time.time() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    time.sleep(0.05)
                except OSError:
                    break

    @property
    def pid(self):
        return self.process.pid


class Gatehouse(Proxy):
    name = "gatehouse"

    def __init__(self, work, environments=1, binary=None, name="gatehouse", offset=0, logging=True):
        super().__init__(work, offset, logging)
        self.name = name
        self.binary = binary or f"{release_dir()}/gatehouse"
        self.environments = environments
        self.dir = f"{work}/{name}-{environments}"
        os.makedirs(f"{self.dir}/env", exist_ok=True)
        main = f"""environments = "env/*.toml"
[listen]
https = ["127.0.0.1:{self.ecdsa_port}"]
admin = "127.0.0.1:{ADMIN_PORT + offset}"
[tls]
certificate = "../ecdsa.pem"
key = "../ecdsa.key"
[logging]
access_log = "{"access.log" if logging else "off"}"
access_log_format = "common"
audit_log = "off"
[limits]
max_connections = 100000
max_connections_per_client = 100000
max_requests_per_connection = 1000000
[reload]
watch_files = false
[upstream]
pool_max_idle_per_instance = 64
[profiles.local]
ranges = ["127.0.0.0/8"]
"""
        for index in range(environments - 1):
            main += f'[profiles.office-{index}]\nranges = [{", ".join(f"{chr(34)}10.{index // 256 % 256}.{index % 256}.{n}/32{chr(34)}" for n in range(10))}]\n'
        with open(f"{self.dir}/gatehouse.toml", "w") as f:
            f.write(main)
        # The RSA port: a second process with the RSA certificate, so that each port has its own
        # platform certificate as in the peers' configurations.
        rsa_main = main.replace(f"127.0.0.1:{self.ecdsa_port}", f"127.0.0.1:{self.rsa_port}").replace("../ecdsa.", "../rsa.").replace(
            f'admin = "127.0.0.1:{ADMIN_PORT + offset}"', 'admin = "off"')
        os.makedirs(f"{self.dir}/rsa/env", exist_ok=True)
        with open(f"{self.dir}/rsa/gatehouse.toml", "w") as f:
            f.write(rsa_main.replace('"../', '"../../'))
        env = f"""name = "bench"
domains = ["{HOST}"]
upstreams = ["127.0.0.1:{BACKEND_PORT}"]
[access]
"/" = "local"
[response_headers]
Strict-Transport-Security = false
X-Frame-Options = "DENY"
X-Content-Type-Options = "nosniff"
"""
        for directory in (self.dir, f"{self.dir}/rsa"):
            with open(f"{directory}/env/bench.toml", "w") as f:
                f.write(env)
        for index in range(environments - 1):
            with open(f"{self.dir}/env/e{index:05}.toml", "w") as f:
                f.write(f'name = "e{index}"\ndomains = ["e{index}.{HOST}"]\nupstreams = ["127.0.0.1:{10000 + index % 5000}"]\n'
                        f'[access]\n"/" = "office-{index}"\n"/api/" = "allow-all"\n'
                        '[response_headers]\nX-Frame-Options = "DENY"\n')
        self.rsa_process = None

    def command(self):
        return [self.binary, "run", "--worker-threads", "1", "--config", f"{self.dir}/gatehouse.toml"]

    def start(self):
        self.rsa_process = subprocess.Popen(
            ["taskset", "-c", PROXY_CORE, self.binary, "run", "--worker-threads", "1", "--config",
             f"{self.dir}/rsa/gatehouse.toml"], cwd=self.dir, stdout=subprocess.DEVNULL,
            stderr=open(f"{self.work}/{self.name}-rsa-stderr.log", "a"))
        super().start()

    def stop(self):
        if self.rsa_process:
            self.rsa_process.send_signal(signal.SIGTERM)
            self.rsa_process.wait(timeout=20)
            self.rsa_process = None
        super().stop()

    def pid_for(self, port):
        return self.rsa_process.pid if port == self.rsa_port else self.process.pid


class Nginx(Proxy):
    name = "nginx"

    def __init__(self, work, offset=0, logging=True):
        super().__init__(work, offset, logging)
        servers = ""
        for port, kind in ((self.ecdsa_port, "ecdsa"), (self.rsa_port, "rsa")):
            servers += f"""
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name {HOST};
        ssl_certificate {work}/{kind}.pem;
        ssl_certificate_key {work}/{kind}.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            allow 127.0.0.0/8;
            deny all;
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            add_header X-Frame-Options DENY always;
            add_header X-Content-Type-Options nosniff always;
        }}
    }}"""
        with open(f"{work}/nginx.conf", "w") as f:
            f.write(f"""worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 8000; }}
http {{
    log_format common {NGINX_COMMON};
    access_log {f"{work}/nginx-access.log common buffer=64k flush=100ms" if logging else "off"};
    # Long-lived keep-alive connections, as in the other proxies (the default closes after 1,000
    # requests, which would turn part of scenarios a-c into handshakes).
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    upstream app {{
        server 127.0.0.1:{BACKEND_PORT};
        keepalive 64;
    }}
{servers}
}}
""")

    def command(self):
        return ["nginx", "-p", self.work, "-c", f"{self.work}/nginx.conf", "-g", "daemon off; user root;"]

    def pid_for(self, port):
        return self.process.pid


class Haproxy(Proxy):
    name = "haproxy"

    def __init__(self, work, offset=0, logging=True):
        super().__init__(work, offset, logging)
        # Logging on: one syslog datagram per request to a local receiver (SyslogSink).
        global_log = f"    log 127.0.0.1:{SYSLOG_PORT} len 2048 local0\n" if logging else ""
        defaults_log = f"    log global\n    log-format {HAPROXY_COMMON}\n" if logging else ""
        with open(f"{work}/haproxy.cfg", "w") as f:
            f.write(f"""global
    nbthread 1
    maxconn 8000
{global_log}defaults
    mode http
{defaults_log}    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:{self.ecdsa_port} ssl crt {work}/ecdsa-combined.pem alpn h2,http/1.1
    bind 127.0.0.1:{self.rsa_port} ssl crt {work}/rsa-combined.pem alpn h2,http/1.1
    http-request deny unless {{ src 127.0.0.0/8 }}
    option forwardfor
    http-request set-header X-Real-IP %[src]
    http-request set-header X-Forwarded-Proto https
    http-response set-header X-Frame-Options DENY
    http-response set-header X-Content-Type-Options nosniff
    default_backend app
backend app
    http-reuse always
    server app1 127.0.0.1:{BACKEND_PORT} pool-max-conn 64
""")

    def command(self):
        return ["haproxy", "-db", "-f", f"{self.work}/haproxy.cfg"]

    def pid_for(self, port):
        return self.process.pid


# ---------------------------------------------------------------- load and parsing


def load(cmd, timeout):
    return subprocess.run(["taskset", "-c", LOAD_CORE, *cmd], capture_output=True, text=True, timeout=timeout).stdout


def wrk(port, path, duration, scheme="https"):
    out = load(["wrk", "-t1", "-c64", f"-d{duration}s", "--latency", "-H", f"Host: {HOST}",
                f"{scheme}://127.0.0.1:{port}{path}"], duration + 30)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)] if p99 else float("nan")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = int(errors.group(1)) if errors else 0
    return {"count": requests - bad, "rate": rate, "p99_ms": p99_ms,
            "errors": bad, "socket_errors": socket_errors.group(1) if socket_errors else ""}


def h2load(args, port, path, timeout):
    out = load(["h2load", *args, f"--connect-to=127.0.0.1:{port}", f"https://{HOST}:{port}{path}"], timeout)
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if not done:
        raise RuntimeError(f"h2load said:\n{out}")
    return {"count": int(done.group(1)), "rate": float(rate.group(1)) if rate else float("nan")}


def measured(proxy, port, work):
    """Run `work()` and add the proxy's CPU seconds and requests per CPU-second to its result."""
    pid = proxy.pid_for(port)
    before = cpu_seconds(pid)
    result = work()
    result["cpu"] = cpu_seconds(pid) - before
    result["per_cpu_s"] = result["count"] / result["cpu"] if result["cpu"] > 0 else float("nan")
    return result


def check_response(port):
    """Every proxy must answer with the backend's body and the two headers, or the comparison is void."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw, server_hostname=HOST) as tls:
        tls.sendall(f"GET /small HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    text = answer.decode(errors="replace").lower()
    for expected in ("200", "x-frame-options: deny", "x-content-type-options: nosniff", "hello, bench"):
        if expected not in text:
            raise RuntimeError(f"unexpected answer on port {port}: missing {expected!r}\n{text}")


def hold_connections(port, count, proxy_pid):
    """Open `count` TLS connections and keep them; resident memory before, after the handshakes,
    and after one keep-alive request on each."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    time.sleep(0.5)
    base = rss_kib(proxy_pid)
    connections = []
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", port))
        connections.append(context.wrap_socket(raw, server_hostname=HOST))
    time.sleep(1.0)
    after_handshake = rss_kib(proxy_pid)
    request = f"GET /small HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    # One request at a time: what stays is the cost of an idle connection that has served a
    # request, not the peak of 2,000 requests in flight at once.
    for tls in connections:
        tls.sendall(request)
        answer = b""
        while b"hello, bench" not in answer:
            chunk = tls.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed before its answer")
            answer += chunk
    time.sleep(1.0)
    after_request = rss_kib(proxy_pid)
    for tls in connections:
        tls.close()
    return {"handshake": (after_handshake - base) / count, "request": (after_request - base) / count}


# ---------------------------------------------------------------- the session


def summarize(values):
    values = sorted(v for v in values if v == v)
    if not values:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(values), values[0], values[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per throughput run")
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s: check the harness only")
    parser.add_argument("--connections", type=int, default=2000, help="connections for scenarios d and e")
    parser.add_argument("--only", default="", help="comma-separated proxies to run (default: all)")
    parser.add_argument("--scenarios", default="a,b,c,d-ecdsa,d-rsa,e,f", help="comma-separated scenarios (default: all)")
    parser.add_argument("--baseline", default="", help="another gatehouse binary, run as the proxy 'baseline' "
                        "alternating with the others (to measure a change against an earlier build)")
    parser.add_argument("--logging", default="both", choices=("on", "off", "both"),
                        help="access logging in all proxies: on, off, or both (the throughput scenarios run once each way)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.duration = 1, 3
    for tool in ("nginx", "haproxy", "wrk", "h2load", "taskset", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install nginx haproxy wrk nghttp2-client util-linux openssl")
    print("building gatehouse and the backend (release)...", flush=True)
    work, backend = prepare("gatehouse-h2h-")
    ways = {"on": [True], "off": [False], "both": [True, False]}[args.logging]
    sink = SyslogSink()

    def proxies_for(logging):
        """The proxies of one logging way, each in a folder of that way (their configurations differ)."""
        folder = f"{work}/logging-{'on' if logging else 'off'}"
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(work):
            if name.endswith((".pem", ".key")):
                shutil.copy(f"{work}/{name}", folder)
        chosen = [Gatehouse(folder, logging=logging), Nginx(folder, offset=10, logging=logging),
                  Haproxy(folder, offset=20, logging=logging)]
        if args.only:
            chosen = [p for p in chosen if p.name in args.only.split(",")]
        if args.baseline:
            chosen.insert(1, Gatehouse(folder, binary=os.path.abspath(args.baseline), name="baseline", offset=30,
                                       logging=logging))
        return chosen

    proxies = proxies_for(ways[0])
    scenarios = {
        "a": lambda port: wrk(port, "/small", args.duration),
        "b": lambda port: wrk(port, "/16k", args.duration),
        "c": lambda port: h2load(["-c16", "-m10", "-D", str(args.duration)], port, "/small", args.duration + 60),
        "d-ecdsa": lambda port: h2load(["--h1", f"-c{args.connections}", f"-n{args.connections}", "-m1"], port, "/small", 300),
        "d-rsa": lambda port: h2load(["--h1", f"-c{args.connections}", f"-n{args.connections}", "-m1"], port, "/small", 300),
    }
    chosen = args.scenarios.split(",")
    scenarios = {name: run_it for name, run_it in scenarios.items() if name in chosen}
    results_by_way = {}
    memory = {p.name: [] for p in proxies}
    facts = None
    try:
        ceiling = {"a": wrk(BACKEND_PORT, "/small", args.duration, "http"), "b": wrk(BACKEND_PORT, "/16k", args.duration, "http")}
        if "e" in chosen:
            # Memory: on a freshly started process each time, one proxy after another.
            for round_number in range(1, args.runs + 1):
                for proxy in proxies:
                    proxy.start()
                    check_response(proxy.ecdsa_port)
                    held = hold_connections(proxy.ecdsa_port, args.connections, proxy.pid_for(proxy.ecdsa_port))
                    memory[proxy.name].append(held)
                    print(f"round {round_number} {proxy.name:9} e        {held['handshake']:.1f} KiB per connection after "
                          f"the handshake, {held['request']:.1f} KiB after one request", flush=True)
                    proxy.stop()
        # Throughput and handshakes, once per logging way: all proxies of the way run side by
        # side (an idle one costs nothing) and take turns run by run, the order rotating each
        # round, so that a change in the machine's load lands on all of them alike instead of on
        # whichever ran during it.
        for logging in ways if scenarios else []:
            way = "on" if logging else "off"
            proxies = proxies_for(logging)
            results = results_by_way[way] = {name: {p.name: [] for p in proxies} for name in scenarios}
            for proxy in proxies:
                proxy.start()
                check_response(proxy.ecdsa_port)
                check_response(proxy.rsa_port)
            if facts is None:
                facts = tls_facts(proxies)
            for round_number in range(1, args.runs + 1):
                turn = (round_number - 1) % len(proxies)
                for name, scenario in scenarios.items():
                    for proxy in proxies[turn:] + proxies[:turn]:
                        port = proxy.rsa_port if name == "d-rsa" else proxy.ecdsa_port
                        result = measured(proxy, port, lambda: scenario(port))
                        results[name][proxy.name].append(result)
                        print(f"logging {way:3} round {round_number} {proxy.name:9} {name:8} {result['count']:>8} done, "
                              f"{result['rate']:>9.0f}/s, {result['per_cpu_s']:>9.0f} per CPU-s"
                              + (f", p99 {result['p99_ms']:.2f} ms" if "p99_ms" in result else ""), flush=True)
            for proxy in proxies:
                proxy.stop()
        many = None
        if "f" in chosen and any(p.name == "gatehouse" for p in proxies):
            try:
                many = environments_scenario(work, args)
            except Exception as err:  # the other scenarios' results are still worth printing
                print(f"scenario f failed: {err}", flush=True)
    finally:
        for proxy in proxies:
            proxy.stop()
        backend.terminate()
        sink.stop()
        # The proxies' access logs reach a gigabyte in a full run.
        shutil.rmtree(work, ignore_errors=True)
    report_facts(facts, sink.received)
    for way, results in results_by_way.items():
        print()
        print(f"### Access logging {way}")
        report(results, {}, ceiling, None, proxies, args)
    if any(memory.values()) or many:
        print()
        print(f"### Memory and many environments (access logging {'on' if ways[0] else 'off'})")
        report({}, memory, ceiling, many, proxies, args)


def environments_scenario(work, args):
    """Scenario a with 10 and with 10,000 environments, and the start and reload times of each.

    The two configurations alternate round by round, like the proxies in the other scenarios,
    so that a change in the machine's load lands on both alike rather than on whichever ran
    second: their ratio is what the target compares."""
    proxies = {environments: Gatehouse(work, environments) for environments in (10, 10_000)}
    samples = {environments: {"start": [], "reload": [], "a": [], "a_rate": []} for environments in proxies}
    for _ in range(args.runs):
        for environments, proxy in proxies.items():
            taken = samples[environments]
            try:
                started = time.time()
                proxy.start()
                taken["start"].append(time.time() - started)
                reload_started = time.time()
                request = urllib.request.Request(f"http://127.0.0.1:{ADMIN_PORT}/reload", method="POST")
                urllib.request.urlopen(request, timeout=60).read()
                taken["reload"].append(time.time() - reload_started)
                result = measured(proxy, ECDSA_PORT, lambda: wrk(ECDSA_PORT, "/small", args.duration))
                taken["a"].append(result["per_cpu_s"])
                taken["a_rate"].append(result["rate"])
            finally:
                proxy.stop()
    return {f"{measure}_{environments}": summarize(values)
            for environments, measures in samples.items() for measure, values in measures.items()}


def fmt(summary, digits=0):
    median, low, high = summary
    return f"{median:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def report(results, memory, ceiling, many, proxies, args):
    names = [p.name for p in proxies]
    peers = [(peer, title) for peer, title in (("nginx", "nginx"), ("haproxy", "HAProxy"), ("baseline", "baseline"))
             if peer in names or peer != "baseline"]
    print()
    print(f"Head-to-head ({time.strftime('%Y-%m-%d')}, {args.runs} rounds of turns, {args.duration} s each; median (min-max))")
    if not results:
        return report_memory(memory, many, names, args)
    print()
    print("Requests (d: handshakes) per proxy CPU-second:")
    print()
    print("| scenario | " + " | ".join(names) + "".join(f" | gatehouse/{title}" for _, title in peers) + " |")
    print("| --- |" + " --- |" * (len(names) + len(peers)))
    labels = {"a": "a. h1 keep-alive, small", "b": "b. h1 keep-alive, 16 KiB", "c": "c. h2, 16 conn x 10 streams",
              "d-ecdsa": "d. full handshakes, ECDSA P-256", "d-rsa": "d. full handshakes, RSA 2048"}
    for name, label in labels.items():
        if name not in results:
            continue
        row = {n: summarize([r["per_cpu_s"] for r in results[name][n]]) for n in names}
        ratios = []
        for peer, _ in peers:
            if "gatehouse" in row and peer in row:
                # The ratio of the medians, and beside it the range of the ratios within each
                # round (the two ran seconds apart there): how far one run's ratio can stray.
                by_round = [g["per_cpu_s"] / p["per_cpu_s"] for g, p in zip(results[name]["gatehouse"], results[name][peer])
                            if p["per_cpu_s"] > 0]
                spread = f" ({min(by_round):.2f}-{max(by_round):.2f} by round)" if len(by_round) > 1 else ""
                ratios.append(f"{row['gatehouse'][0] / row[peer][0]:.2f}{spread}")
            else:
                ratios.append("-")
        print(f"| {label} | " + " | ".join(fmt(row[n]) for n in names) + "".join(f" | {r}" for r in ratios) + " |")
    print()
    print("Throughput and latency (requests per second; a: p99 in ms):")
    print()
    print("| scenario | " + " | ".join(names) + " | direct to backend |")
    print("| --- |" + " --- |" * (len(names) + 1))
    for name in ("a", "b", "c"):
        if name not in results:
            continue
        cells = [fmt(summarize([r["rate"] for r in results[name][n]])) for n in names]
        direct = f"{ceiling[name]['rate']:,.0f}" if name in ceiling else "-"
        print(f"| {labels[name]} | " + " | ".join(cells) + f" | {direct} |")
    if "a" in results:
        cells = [fmt(summarize([r["p99_ms"] for r in results["a"][n]]), 2) for n in names]
        print("| a. p99 latency (ms) | " + " | ".join(cells) + f" | {ceiling['a']['p99_ms']:.2f} |")
    report_memory(memory, many, names, args)


def report_memory(memory, many, names, args):
    if not any(memory.values()):
        return report_many(many)
    print()
    print(f"Resident memory per idle TLS connection ({args.connections} connections, KiB):")
    print()
    print("| after | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for key, label in (("handshake", "the handshake"), ("request", "one keep-alive request")):
        print(f"| {label} | " + " | ".join(fmt(summarize([m[key] for m in memory[n]]), 1) for n in names) + " |")
    report_many(many)


class SyslogSink:
    """The local syslog receiver HAProxy sends its log datagrams to: reads and drops them (and
    counts them, which shows that HAProxy did log)."""

    def __init__(self):
        import threading
        self.received = 0
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", SYSLOG_PORT))
        self.socket.settimeout(0.5)
        self.running = True
        self.thread = threading.Thread(target=self.drain, daemon=True)
        self.thread.start()

    def drain(self):
        while self.running:
            try:
                self.socket.recv(4096)
                self.received += 1
            except OSError:
                continue

    def stop(self):
        self.running = False
        self.thread.join(timeout=2)
        self.socket.close()


def tls_facts(proxies):
    """What each proxy negotiates with OpenSSL's client on each port (protocol, cipher,
    key-exchange group), and the TLS library each is built on."""
    negotiated = []
    for proxy in proxies:
        for port, kind in ((proxy.ecdsa_port, "ECDSA"), (proxy.rsa_port, "RSA")):
            text = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOST, "-brief"],
                                  input="", capture_output=True, text=True, timeout=30).stderr
            field = lambda label: next((line.split(":", 1)[1].strip() for line in text.splitlines()
                                        if line.startswith(label)), "?")
            negotiated.append((proxy.name, kind, field("Protocol version"), field("Ciphersuite"),
                               field("Peer Temp Key") if "Peer Temp Key" in text else field("Server Temp Key")))
    return negotiated


def library_versions():
    """The TLS library of each proxy, as it reports it (gatehouse: from Cargo.lock)."""
    lock = open(f"{ROOT}/Cargo.lock").read()
    crate = lambda name: (re.search(rf'name = "{name}"\nversion = "([^"]+)"', lock) or [None, "?"])[1]
    nginx = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
    haproxy = subprocess.run(["haproxy", "-vv"], capture_output=True, text=True).stdout
    line = lambda text, label: next((l.split(label, 1)[1].strip(" :") for l in text.splitlines() if label in l), "?")
    return [
        ("gatehouse", f"rustls {crate('rustls')} with aws-lc-rs {crate('aws-lc-rs')} (aws-lc-sys {crate('aws-lc-sys')})"),
        ("nginx", f"{line(nginx, 'nginx version')}; built with {line(nginx, 'built with')}"),
        ("haproxy", f"{line(haproxy, 'HAProxy version').split(' ')[0]}; built with {line(haproxy, 'Built with OpenSSL version')}, "
                    f"running on {line(haproxy, 'Running on OpenSSL version')}"),
    ]


def report_facts(facts, syslog_datagrams):
    print()
    print("Host and TLS facts:")
    print()
    thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip()
    defrag = open("/sys/kernel/mm/transparent_hugepage/defrag").read().strip()
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"- CPU: {model}; kernel {os.uname().release}")
    print(f"- transparent huge pages: enabled {thp}, defrag {defrag} (gatehouse turns them off for its own process)")
    for name, library in library_versions():
        print(f"- {name}: {library}")
    for name, kind, protocol, cipher, group in facts or []:
        print(f"- {name} {kind} port: {protocol}, {cipher}, key exchange {group}")
    print(f"- HAProxy log datagrams received by the harness's syslog receiver: {syslog_datagrams:,}")


def report_many(many):
    if many:
        print()
        print("gatehouse with many environments:")
        print()
        print("| measure | 10 environments | 10,000 environments |")
        print("| --- | --- | --- |")
        print(f"| start (process start to listening) | {fmt(many['start_10'], 2)} s | {fmt(many['start_10000'], 2)} s |")
        print(f"| reload (POST /reload round trip) | {fmt(many['reload_10'], 2)} s | {fmt(many['reload_10000'], 2)} s |")
        print(f"| a. requests per CPU-second | {fmt(many['a_10'])} | {fmt(many['a_10000'])} |")
        print(f"| a. requests per second | {fmt(many['a_rate_10'])} | {fmt(many['a_rate_10000'])} |")
        print(f"| 10,000 / 10 (per CPU-second) | | {many['a_10000'][0] / many['a_10'][0]:.3f} |")


if __name__ == "__main__":
    main()
