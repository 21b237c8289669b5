#!/usr/bin/env python3
"""User-space instructions per request, counted by callgrind: a measure the machine's noise cannot move.

Throughput and CPU time on a shared machine vary by 10-40% between runs (benches/RESULTS.md), so a
change worth a few percent cannot be seen in them. Instructions are counted exactly: gatehouse runs
under `valgrind --tool=callgrind` with the head-to-head harness's configuration and backend, and
h2load sends N and then 3N requests to a fresh process each time; the difference divided by 2N is
the cost of one request, with start-up, TLS handshakes and shutdown cancelled out. Kernel work
(about half of the CPU in benches/RESULTS.md) is not counted. With --peers, nginx and HAProxy are
counted the same way (their head-to-head configurations, one process or thread), so that the
user-space work of the three can be compared without the machine's noise.

Run (needs valgrind and h2load: Debian's valgrind and nghttp2-client):
    python3 benches/instructions.py                                   # scenarios a and c, ~2 minutes
    python3 benches/instructions.py --baseline /tmp/gatehouse-before  # and an earlier build beside it
    python3 benches/instructions.py --top 30                          # and the costliest functions
    python3 benches/instructions.py --scenarios d --requests 500      # full TLS handshakes (ECDSA)
    python3 benches/instructions.py --scenarios a --environments 10000  # a with 10,000 environments
    python3 benches/instructions.py --peers                            # nginx and HAProxy beside gatehouse
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import head_to_head as h2h  # noqa: E402  (the same certificates, configuration and backend)

LOADS = {
    "a": ["--h1", "-c64", "-m1"],  # HTTP/1.1 keep-alive, small response
    "c": ["-c16", "-m10"],  # HTTP/2, 16 connections x 10 streams
    "d": ["--h1", "-m1"],  # a fresh connection (full ECDSA handshake) per request: -c is the request count
}


def proxy_command(work, name, binary, environments):
    """The command that runs one proxy in the foreground as a single process, and the port it serves.

    nginx runs without its master process (the worker's work in one process); HAProxy with one
    thread, as in the head-to-head harness, whose configurations all three use.
    """
    if name == "nginx":
        proxy = h2h.Nginx(work)
        return ["nginx", "-p", work, "-c", f"{work}/nginx.conf", "-g", "daemon off; master_process off; user root;"], work, proxy.ecdsa_port
    if name == "haproxy":
        proxy = h2h.Haproxy(work)
        return ["haproxy", "-db", "-f", f"{work}/haproxy.cfg"], work, proxy.ecdsa_port
    proxy = h2h.Gatehouse(work, environments, binary=binary, name="callgrind")
    return [binary, "run", "--worker-threads", "1", "--config", f"{proxy.dir}/gatehouse.toml"], proxy.dir, proxy.ecdsa_port


def counted_run(work, binary, scenario, requests, environments=1, name="gatehouse"):
    """Total instructions of a proxy process that served `requests` requests (after a warm-up)."""
    command, directory, port = proxy_command(work, name, binary, environments)
    out = os.path.join(work, f"callgrind.{name}.{scenario}.{requests}")
    log = open(os.path.join(work, f"{name}.out"), "a")  # HAProxy logs to its standard output
    process = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
                               cwd=directory, stdout=log, stderr=subprocess.DEVNULL)
    try:
        h2h.wait_port(port, timeout=600)  # 10,000 environments load slowly under valgrind
        url = f"https://{h2h.HOST}:{port}/small"
        for count in (2000, requests):  # the first run warms the pool and the caches
            connections = ["-c", str(count)] if scenario == "d" else []
            result = h2h.run(["h2load", *LOADS[scenario], *connections, "-n", str(count), f"--connect-to=127.0.0.1:{port}", url],
                             timeout=600)
            if f"{count} succeeded" not in result.stdout or f"{count} 2xx" not in result.stdout:
                sys.exit(f"not every request succeeded:\n{result.stdout}")
    finally:
        process.terminate()
        process.wait(timeout=120)
        log.close()
    return out


def per_function(path):
    """Instructions per function (self cost) of one callgrind output."""
    text = h2h.run(["callgrind_annotate", "--auto=no", "--threshold=100", path]).stdout
    costs = {}
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*)", line)
        if match and "PROGRAM TOTALS" not in line:
            name = re.sub(r" \[.*\]$", "", match.group(2).split(":", 1)[-1])
            costs[name] = costs.get(name, 0) + int(match.group(1).replace(",", ""))
    return costs


def per_request(work, binary, scenario, requests, top, environments, name="gatehouse"):
    small, large = (per_function(counted_run(work, binary, scenario, n, environments, name)) for n in (requests, 3 * requests))
    delta = {name: (large[name] - small.get(name, 0)) / (2 * requests) for name in large}
    for name, cost in sorted(delta.items(), key=lambda item: -item[1])[:top]:
        print(f"    {cost:8,.0f}  {name[:150]}")
    return sum(delta.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000, help="N: the runs send N and 3N requests")
    parser.add_argument("--scenarios", default="a,c")
    parser.add_argument("--baseline", default="", help="another gatehouse binary to count beside this build")
    parser.add_argument("--top", type=int, default=0, help="also list the N costliest functions per request")
    parser.add_argument("--environments", type=int, default=1,
                        help="environments in the configuration (head_to_head.py's scenario f uses 10 and 10,000)")
    parser.add_argument("--peers", action="store_true", help="also count nginx and HAProxy, in the same scenarios")
    args = parser.parse_args()
    tools = ("valgrind", "callgrind_annotate", "h2load", "taskset", "openssl") + (("nginx", "haproxy") if args.peers else ())
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install valgrind nghttp2-client util-linux openssl nginx haproxy")
    # Each counted proxy: its name and the binary (the peers' come from PATH).
    binaries = {"gatehouse": f"{h2h.release_dir()}/gatehouse"}
    if args.baseline:
        binaries["baseline"] = os.path.abspath(args.baseline)
    if args.peers:
        binaries.update({"nginx": "nginx", "haproxy": "haproxy"})
    work, backend = h2h.prepare("gatehouse-instructions-")
    results = {}
    try:
        for scenario in args.scenarios.split(","):
            for name, binary in binaries.items():
                print(f"{name} {scenario}:", flush=True)
                kind = name if name in ("nginx", "haproxy") else "gatehouse"
                results[(name, scenario)] = per_request(work, binary, scenario, args.requests, args.top, args.environments, kind)
                print(f"  {results[(name, scenario)]:,.0f} instructions per request", flush=True)
    finally:
        backend.terminate()
        shutil.rmtree(work, ignore_errors=True)
    # The ratios compare gatehouse with each other proxy counted (fewer instructions: below 1).
    others = [name for name in binaries if name != "gatehouse"]
    print()
    print("| scenario | " + " | ".join(binaries) + "".join(f" | gatehouse/{name}" for name in others) + " |")
    print("| --- |" + " --- |" * (len(binaries) + len(others)))
    for scenario in args.scenarios.split(","):
        cells = [f"{results[(name, scenario)]:,.0f}" for name in binaries]
        cells += [f"{results[('gatehouse', scenario)] / results[(name, scenario)]:.3f}" for name in others]
        print(f"| {scenario} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
