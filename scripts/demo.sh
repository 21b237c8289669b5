#!/usr/bin/env bash
# Quick start: build gatehouse, start the demo app and gatehouse on the shipped conf/, and show a
# few requests going through. gatehouse keeps running until Ctrl-C (or exits at once with --check).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin gatehouse --example demo_app
. scripts/target-dir.sh
"$target_dir/release/examples/demo_app" 127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003 &
app=$!
"$target_dir/release/gatehouse" run --config conf/gatehouse.toml &
proxy=$!
trap 'kill $app $proxy 2>/dev/null; wait 2>/dev/null' EXIT

for _ in $(seq 1 50); do
  curl -ks -o /dev/null https://127.0.0.1:8443/ && break
  sleep 0.1
done

# Print the command without the --resolve noise, then run it.
show() { echo; echo "\$ curl ... ${*: -1}"; "$@"; }
resolve=(--resolve shop.apps.example.test:8443:127.0.0.1 --resolve www.shop.example.test:8443:127.0.0.1
         --resolve a.acceptance.shop.example.test:8443:127.0.0.1 --resolve unknown.example.test:8443:127.0.0.1
         --resolve shop.apps.example.test:8080:127.0.0.1)
show curl -ks "${resolve[@]}" https://shop.apps.example.test:8443/hello
show curl -ks "${resolve[@]}" https://shop.apps.example.test:8443/again   # the other instance (ties go in turn)
show curl -ks --http2 "${resolve[@]}" https://a.acceptance.shop.example.test:8443/over-h2
show curl -ks "${resolve[@]}" https://unknown.example.test:8443/
show curl -ks -o /dev/null -w '%{http_code} (the /admin/ rule lets in 192.0.2.0/24 only)\n' "${resolve[@]}" https://shop.apps.example.test:8443/admin/
show curl -ks -o /dev/null -w '%{http_code} (deny-all, however the path is spelled)\n' "${resolve[@]}" https://shop.apps.example.test:8443/api/%2e%2e/rest-doc/
show curl -ks -D - -o /dev/null "${resolve[@]}" https://shop.apps.example.test:8443/
show curl -s -i "${resolve[@]}" http://shop.apps.example.test:8080/login
echo
echo "\$ gatehouse explain --host shop.apps.example.test --path /admin/ --client 192.0.2.10"
"$target_dir/release/gatehouse" explain --config conf/gatehouse.toml --host shop.apps.example.test --path /admin/ --client 192.0.2.10 || true

if [ "${1:-}" = "--check" ]; then
  curl -ksf "${resolve[@]}" https://shop.apps.example.test:8443/ | grep -q "hello from the demo app"
  curl -sf http://127.0.0.1:9901/status | grep -q "<td>shop-production</td>"
  echo; echo "demo OK"
  exit 0
fi
echo; echo "gatehouse is serving https://shop.apps.example.test:8443 (see conf/); its status page is http://127.0.0.1:9901/status. Press Ctrl-C to stop."
wait $proxy
