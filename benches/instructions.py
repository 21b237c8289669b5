#!/usr/bin/env python3
"""User-space instructions per request, counted by callgrind: a measure the machine's noise cannot move.

Throughput and CPU time on a shared machine vary by 10-40% between runs (benches/RESULTS.md), so a
change worth a few percent cannot be seen in them. Instructions are counted exactly: gatehouse runs
under `valgrind --tool=callgrind` with the head-to-head harness's configuration and backend, and
h2load sends N and then 3N requests to a fresh process each time; the difference divided by 2N is
the cost of one request, with start-up, TLS handshakes and shutdown cancelled out. Kernel work
(about half of the CPU in benches/RESULTS.md) is not counted.

Run (needs valgrind and h2load: Debian's valgrind and nghttp2-client):
    python3 benches/instructions.py                                   # scenarios a and c, ~2 minutes
    python3 benches/instructions.py --baseline /tmp/gatehouse-before  # and an earlier build beside it
    python3 benches/instructions.py --top 30                          # and the costliest functions
    python3 benches/instructions.py --scenarios d --requests 500      # full TLS handshakes (ECDSA)
    python3 benches/instructions.py --scenarios a --environments 10000  # a with 10,000 environments
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


def counted_run(work, binary, scenario, requests, environments=1):
    """Total instructions of a gatehouse process that served `requests` requests (after a warm-up)."""
    proxy = h2h.Gatehouse(work, environments, binary=binary, name="callgrind")
    out = os.path.join(work, f"callgrind.{scenario}.{requests}")
    process = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, "run",
                                "--worker-threads", "1", "--config", f"{proxy.dir}/gatehouse.toml"],
                               cwd=proxy.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        h2h.wait_port(h2h.ECDSA_PORT, timeout=600)  # 10,000 environments load slowly under valgrind
        url = f"https://{h2h.HOST}:{h2h.ECDSA_PORT}/small"
        for count in (2000, requests):  # the first run warms the pool and the caches
            connections = ["-c", str(count)] if scenario == "d" else []
            result = h2h.run(["h2load", *LOADS[scenario], *connections, "-n", str(count), f"--connect-to=127.0.0.1:{h2h.ECDSA_PORT}", url],
                             timeout=600)
            if f"{count} succeeded" not in result.stdout or f"{count} 2xx" not in result.stdout:
                sys.exit(f"not every request succeeded:\n{result.stdout}")
    finally:
        process.terminate()
        process.wait(timeout=120)
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


def per_request(work, binary, scenario, requests, top, environments):
    small, large = (per_function(counted_run(work, binary, scenario, n, environments)) for n in (requests, 3 * requests))
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
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_annotate", "h2load", "taskset", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install valgrind nghttp2-client util-linux openssl")
    binaries = {"gatehouse": f"{h2h.ROOT}/target/release/gatehouse"}
    if args.baseline:
        binaries["baseline"] = os.path.abspath(args.baseline)
    work, backend = h2h.prepare("gatehouse-instructions-")
    results = {}
    try:
        for scenario in args.scenarios.split(","):
            for name, binary in binaries.items():
                print(f"{name} {scenario}:", flush=True)
                results[(name, scenario)] = per_request(work, binary, scenario, args.requests, args.top, args.environments)
                print(f"  {results[(name, scenario)]:,.0f} instructions per request", flush=True)
    finally:
        backend.terminate()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| scenario | " + " | ".join(binaries) + (" | gatehouse/baseline |" if args.baseline else " |"))
    print("| --- |" + " --- |" * (len(binaries) + bool(args.baseline)))
    for scenario in args.scenarios.split(","):
        cells = [f"{results[(name, scenario)]:,.0f}" for name in binaries]
        ratio = f" | {results[('gatehouse', scenario)] / results[('baseline', scenario)]:.3f}" if args.baseline else ""
        print(f"| {scenario} | " + " | ".join(cells) + ratio + " |")


if __name__ == "__main__":
    main()
