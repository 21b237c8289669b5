#!/usr/bin/env python3
"""System calls per request of gatehouse, nginx and HAProxy: a second count the machine's noise cannot move.

About half of each proxy's CPU time in the head-to-head scenarios is kernel work (benches/RESULTS.md),
and callgrind (benches/instructions.py) counts only user space. The kernel's share follows the
system calls a proxy makes: each read or write is a trip through the TCP stack, each epoll_wait a
possible sleep and wake-up, each connect a TCP handshake with the app. `strace -c` counts them
exactly. Each proxy runs with the head-to-head configuration (benches/head_to_head.py: same
certificates, allow rule, headers, access log and keep-alive pool of 64 to the same backend);
strace attaches to its worker after a warm-up and h2load sends N requests.

strace slows every call down, so only the counts mean something here, not the times.

Run (needs strace, h2load, nginx and haproxy: Debian's strace, nghttp2-client, nginx, haproxy):
    python3 benches/syscalls.py                  # scenarios a, c and d, ~1 minute
    python3 benches/syscalls.py --scenarios d --top 12
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import head_to_head as h2h  # noqa: E402  (the same certificates, configurations and backend)

# h2load arguments and request count per scenario, as in head_to_head.py.
SCENARIOS = {
    "a": (["--h1", "-c64", "-m1"], 20_000),  # HTTP/1.1 keep-alive, small response
    "c": (["-c16", "-m10"], 20_000),  # HTTP/2, 16 connections x 10 streams
    "d": (["--h1", "-c2000", "-m1"], 2_000),  # a full ECDSA handshake per request
}
PROXIES = {"gatehouse": h2h.Gatehouse, "nginx": h2h.Nginx, "haproxy": h2h.Haproxy}


def workers(proxy):
    """The processes that serve traffic: the proxy and its children (nginx's worker)."""
    pid = proxy.pid_for(h2h.ECDSA_PORT)
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *map(int, children)]


def h2load(args, requests):
    url = f"https://{h2h.HOST}:{h2h.ECDSA_PORT}/small"
    out = h2h.load(["h2load", *args, "-n", str(requests), f"--connect-to=127.0.0.1:{h2h.ECDSA_PORT}", url], 300)
    if f"{requests} succeeded" not in out or f"{requests} 2xx" not in out:
        sys.exit(f"not every request succeeded:\n{out}")


def counted(proxy, scenario, work):
    """System calls per request, by name, while the proxy serves one scenario's requests."""
    args, requests = SCENARIOS[scenario]
    h2load(args, requests)  # warm-up: the keep-alive pool, caches, memory
    out = os.path.join(work, f"{proxy.name}.{scenario}.strace")
    attach = [flag for pid in workers(proxy) for flag in ("-p", str(pid))]
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out, *attach], stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # strace attaches before the first request
    try:
        h2load(args, requests)
        time.sleep(0.5)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    calls = {}
    for line in open(out).read().splitlines():
        # % time, seconds, usecs/call, calls, [errors,] syscall
        match = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?([a-z_0-9]+)$", line)
        if match and match.group(2) != "total":
            calls[match.group(2)] = int(match.group(1)) / requests
    return calls


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="a,c,d")
    parser.add_argument("--top", type=int, default=8, help="how many system calls to list per proxy")
    args = parser.parse_args()
    for tool in ("strace", "h2load", "nginx", "haproxy", "taskset", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install strace nghttp2-client nginx haproxy util-linux openssl")
    work, backend = h2h.prepare("gatehouse-syscalls-")
    totals = {}
    try:
        for scenario in args.scenarios.split(","):
            for name, kind in PROXIES.items():
                proxy = kind(work)
                proxy.start()
                try:
                    calls = counted(proxy, scenario, work)
                finally:
                    proxy.stop()
                totals[(name, scenario)] = sum(calls.values())
                listed = ", ".join(f"{call} {count:.2f}" for call, count in
                                   sorted(calls.items(), key=lambda item: -item[1])[:args.top])
                print(f"{scenario} {name}: {totals[(name, scenario)]:.2f} per request ({listed})", flush=True)
    finally:
        backend.terminate()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| scenario | " + " | ".join(PROXIES) + " |")
    print("| --- |" + " --- |" * len(PROXIES))
    for scenario in args.scenarios.split(","):
        print(f"| {scenario} | " + " | ".join(f"{totals[(name, scenario)]:.2f}" for name in PROXIES) + " |")


if __name__ == "__main__":
    main()
