#!/usr/bin/env bash
# TLS check with testssl.sh (Debian package testssl.sh, command `testssl`): start gatehouse on the
# shipped conf/ and fail if testssl reports any vulnerability or weak protocol/cipher finding.
# Findings about the certificate itself (conf/ uses a self-signed development certificate, with no
# CRL/OCSP) concern the operator's certificate, not gatehouse, and are listed but not counted.
#
# testssl drives hundreds of `openssl s_client` connections; when one of them fails it records a
# WARN "check failed because of connect problem" instead of a result. The known case is a race in
# testssl's session-resumption check: under TLS 1.3 the ticket arrives after the handshake, and an
# `s_client </dev/null` that quits before reading it saves no session, so the resuming s_client
# cannot start (with nginx on this machine too, such an `s_client` saved no session in 8 of 20
# tries). When that check is the only one that could not run, this script runs it itself with a
# client that waits a second for the ticket, for TLS 1.3 and 1.2: the second connection must
# report "Reused". Any other connect problem repeats the whole scan once; a second one fails like
# any finding. Either way, gatehouse's handshake log and testssl's own words are printed.
# Bounded: each testssl run gets at most 5 minutes, and there are at most two.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin gatehouse
. scripts/target-dir.sh
out=$(mktemp -d)
proxy=
trap '[[ -n $proxy ]] && kill $proxy 2>/dev/null; wait 2>/dev/null; rm -rf "$out"' EXIT

start_gatehouse() {
  # Debug level for the TLS listener: a failed handshake is logged there with its reason.
  RUST_LOG=info,gatehouse::server::tls=debug \
    "$target_dir/release/gatehouse" run --config conf/gatehouse.toml > "$out/gatehouse.log" 2>&1 &
  proxy=$!
  for _ in $(seq 1 50); do
    (echo > /dev/tcp/127.0.0.1/8443) 2>/dev/null && return 0
    sleep 0.1
  done
  echo "gatehouse did not listen on 127.0.0.1:8443 within 5 s"; cat "$out/gatehouse.log"; return 1
}

stop_gatehouse() {
  kill "$proxy" 2>/dev/null || true
  wait "$proxy" 2>/dev/null || true
  proxy=
}

# Prints the findings; exits 0 when clean, 3 when only the ticket-resumption check could not
# connect, 2 when only connect problems were found, 1 otherwise.
judge() {
  python3 - "$out/testssl.json" <<'PY'
import json, sys
findings = json.load(open(sys.argv[1]))
if not findings:
    print("testssl produced no findings at all: it did not run")
    sys.exit(1)
about_certificate = lambda f: f["id"].startswith("cert") or f["id"] in ("DNS_CAArecord", "engine_problem", "OCSP_stapling")
bad = [f for f in findings if f.get("severity") in ("LOW", "MEDIUM", "HIGH", "CRITICAL", "WARN") and not about_certificate(f)]
for f in findings:
    if f.get("severity") not in ("OK", "INFO"):
        print(("FAIL    " if f in bad else "ignored ") + f"{f['severity']:8} {f['id']}: {f['finding']}")
protocols = {f["id"]: f["finding"] for f in findings if f["id"] in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3")}
print("protocols:", protocols)
if not bad:
    print(f"testssl: {len(findings)} checks, no vulnerability or weak protocol/cipher")
    sys.exit(0)
print(f"testssl: {len(bad)} finding(s) against gatehouse's TLS")
connect_problems = all(f["severity"] == "WARN" and "connect problem" in f["finding"] for f in bad)
only_ticket_resumption = connect_problems and all(f["id"] == "sessionresumption_ticket" for f in bad)
sys.exit(3 if only_ticket_resumption else 2 if connect_problems else 1)
PY
}

# testssl's ticket-resumption check, done with a client that reads the ticket before it quits:
# a session saved from one connection must resume on the next, TLS 1.3 and 1.2.
resumes_with_tickets() {
  local version session
  for version in -tls1_3 -tls1_2; do
    session="$out/session$version"
    sleep 1 | timeout 10 openssl s_client -connect 127.0.0.1:8443 -servername shop.apps.example.test \
      "$version" -sess_out "$session" > /dev/null 2>&1 || true
    if ! timeout 10 openssl s_client -connect 127.0.0.1:8443 -servername shop.apps.example.test \
      "$version" -sess_in "$session" < /dev/null 2> /dev/null | grep -q "^Reused"; then
      echo "ticket resumption ($version): the saved session did not resume"
      return 1
    fi
  done
  echo "ticket resumption checked with a client that waits for the ticket: TLS 1.3 and 1.2 resume"
}

explain_failure() {
  echo "-- testssl's report where it warned"
  grep -n -i -B2 -A2 "connect problem\|not possible\|failed" "$out/testssl.txt" | head -40 || true
  echo "-- gatehouse's log: warnings and failed handshakes"
  grep -v '"log":"access"' "$out/gatehouse.log" | grep -i "warn\|error\|handshake" | tail -40 || true
}

for attempt in 1 2; do
  start_gatehouse
  timeout 300 testssl --quiet --color 0 --warnings off --sneaky --ip 127.0.0.1 \
    --protocols --server-defaults --fs --vulnerable --std \
    --jsonfile "$out/testssl.json" shop.apps.example.test:8443 > "$out/testssl.txt" 2>&1 || true
  stop_gatehouse
  verdict=0
  judge || verdict=$?
  [[ $verdict -eq 0 ]] && exit 0
  if [[ $verdict -eq 3 ]]; then
    echo "testssl's ticket-resumption check could not connect (its client quit before the ticket came)"
    start_gatehouse
    resumed=0
    resumes_with_tickets || resumed=$?
    stop_gatehouse
    [[ $resumed -eq 0 ]] && exit 0
    verdict=1
  fi
  explain_failure
  if [[ $verdict -eq 2 && $attempt -eq 1 ]]; then
    echo "testssl could not connect for some checks (not a finding): scanning once more"
    rm -f "$out/testssl.json"
    continue
  fi
  exit 1
done
