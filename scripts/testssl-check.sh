#!/usr/bin/env bash
# TLS check with testssl.sh (Debian package testssl.sh, command `testssl`): start gatehouse on the
# shipped conf/ and fail if testssl reports any vulnerability or weak protocol/cipher finding.
# Findings about the certificate itself (conf/ uses a self-signed development certificate, with no
# CRL/OCSP) concern the operator's certificate, not gatehouse, and are listed but not counted.
# Bounded: testssl gets at most 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin gatehouse
out=$(mktemp -d)
target/release/gatehouse run --config conf/gatehouse.toml > "$out/gatehouse.log" 2>&1 &
proxy=$!
trap 'kill $proxy 2>/dev/null; wait 2>/dev/null; rm -rf "$out"' EXIT
for _ in $(seq 1 50); do
  (echo > /dev/tcp/127.0.0.1/8443) 2>/dev/null && break
  sleep 0.1
done

timeout 300 testssl --quiet --color 0 --warnings off --sneaky --ip 127.0.0.1 \
  --protocols --server-defaults --fs --vulnerable --std \
  --jsonfile "$out/testssl.json" shop.apps.example.test:8443 > "$out/testssl.txt" 2>&1 || true

python3 - "$out/testssl.json" <<'PY'
import json, sys
findings = json.load(open(sys.argv[1]))
if not findings:
    sys.exit("testssl produced no findings at all: it did not run")
about_certificate = lambda f: f["id"].startswith("cert") or f["id"] in ("DNS_CAArecord", "engine_problem", "OCSP_stapling")
bad = [f for f in findings if f.get("severity") in ("LOW", "MEDIUM", "HIGH", "CRITICAL", "WARN") and not about_certificate(f)]
for f in findings:
    if f.get("severity") not in ("OK", "INFO"):
        print(("FAIL    " if f in bad else "ignored ") + f"{f['severity']:8} {f['id']}: {f['finding']}")
protocols = {f["id"]: f["finding"] for f in findings if f["id"] in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3")}
print("protocols:", protocols)
if bad:
    sys.exit(f"testssl: {len(bad)} finding(s) against gatehouse's TLS")
print(f"testssl: {len(findings)} checks, no vulnerability or weak protocol/cipher")
PY
