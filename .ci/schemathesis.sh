#!/usr/bin/env bash
# Property-based API test: Schemathesis (from PyPI) against /v1/openapi.json of
# a live server. Fails on any 5xx and on any response that does not match the
# spec (status code, content type, body schema, headers).
#
# Usage: .ci/schemathesis.sh [PATH_TO_LATCHKEY_BINARY]   (default target/debug/latchkey)
# Builds nothing: build the binary first (`cargo build -p latchkey`).
#
# Environment knobs (defaults in brackets):
#   ST_MAX_EXAMPLES  test cases per operation and phase [30]
#   ST_MAX_TIME      wall-clock bound of the whole run, in seconds [600]
#   ST_SEED          Hypothesis seed [20251126]
set -euo pipefail
SELF=$(readlink -f "$0")
BIN=${1:-}
if [ -n "$BIN" ]; then BIN=$(readlink -f "$BIN"); fi
cd "$(dirname "$SELF")/.."

ST_VERSION=4.32.5
MAX_EXAMPLES=${ST_MAX_EXAMPLES:-30}
MAX_TIME=${ST_MAX_TIME:-600}
SEED=${ST_SEED:-20251126}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
VENV="$TARGET_DIR/schemathesis-venv"
BIN=${BIN:-$TARGET_DIR/debug/latchkey}

if [ ! -x "$BIN" ]; then
  echo "schemathesis.sh: no latchkey binary at $BIN (cargo build -p latchkey first)" >&2
  exit 2
fi

# --- Schemathesis, pinned, in its own venv (reused between runs) -------------
if [ ! -x "$VENV/bin/st" ] || [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null)" != "$ST_VERSION" ]; then
  echo "== installing schemathesis $ST_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION"
fi

# --- No network but loopback -------------------------------------------------
# The server validates credentials by calling providers; fuzzed keys must not
# leave the machine. Re-run this script in a fresh network namespace holding
# only `lo` (as root, or through a user namespace). Where that is impossible,
# say so and go on: the outbound calls then fail or reach the providers.
if [ -z "${LATCHKEY_ST_ISOLATED:-}" ] && command -v unshare >/dev/null && command -v ip >/dev/null; then
  for flags in -n -rn; do
    if unshare "$flags" true 2>/dev/null; then
      export LATCHKEY_ST_ISOLATED=1
      exec unshare "$flags" bash -c 'ip link set lo up && exec "$@"' _ "$SELF" "$BIN"
    fi
  done
fi
if [ -z "${LATCHKEY_ST_ISOLATED:-}" ]; then
  echo "schemathesis.sh: warning: no network namespace; the server's outbound calls are not confined" >&2
fi

# --- The server, on a free loopback port, with a throwaway data dir ----------
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# --auth-failure-limit 0: Schemathesis sends many requests with missing or bad
# credentials on purpose; the per-address limit would turn them into 429s.
# --ingress-limit 0: same for the per-credential delivery bucket.
LATCHKEY_LOG=debug "$BIN" serve \
  --listen 127.0.0.1:0 \
  --data-dir "$WORK/data" \
  --auth-failure-limit 0 \
  --ingress-limit 0 \
  >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!

ADDR=
TOKEN=
for _ in $(seq 1 300); do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "schemathesis.sh: the server exited during start" >&2
    cat "$WORK/server.out" "$WORK/server.err" >&2
    exit 1
  fi
  ADDR=$(sed -n 's#^ *API *http://\([^/ ]*\)/v1 .*#\1#p' "$WORK/server.out" | head -n 1)
  TOKEN=$(sed -n 's#^ *LATCHKEY_TOKEN=\(.*\)$#\1#p' "$WORK/server.out" | head -n 1)
  [ -n "$ADDR" ] && [ -n "$TOKEN" ] && break
  sleep 0.1
done
if [ -z "$ADDR" ] || [ -z "$TOKEN" ]; then
  echo "schemathesis.sh: no API address or token in the banner" >&2
  cat "$WORK/server.out" "$WORK/server.err" >&2
  exit 1
fi
echo "== latchkey (pid $SERVER_PID) at http://$ADDR/v1"

# --- The leak canary ----------------------------------------------------------
# A credential whose API key and webhook secret are random markers, stored
# before the run. Schemathesis then reads, lists, changes, exports and deletes
# what it finds; afterwards neither marker may appear in any response it got
# (the VCR cassette), the server's log (at debug level) or the data dir.
CANARY_KEY="sk_test_canary$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
CANARY_HOOK="whsec_canary$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
CANARY_STATUS=$(curl -s -o "$WORK/canary.json" -w '%{http_code}' \
  -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  --data "{\"name\":\"Canary\",\"integration\":\"stripe\",\"api_key\":\"$CANARY_KEY\",\"config_params\":[{\"key\":\"webhook_secret\",\"value\":\"$CANARY_HOOK\"}],\"validate\":false}" \
  "http://$ADDR/v1/credentials")
if [ "$CANARY_STATUS" != 201 ]; then
  echo "schemathesis.sh: could not store the canary credential ($CANARY_STATUS)" >&2
  cat "$WORK/canary.json" >&2
  exit 1
fi

# --- Schemathesis -------------------------------------------------------------
# Every check runs. Narrow exclusions, each with its reason:
#   * POST /hooks/{credential_id} and POST /actions/{credential_id}: provider
#     webhooks, authenticated by the provider's signature over the raw body,
#     which Schemathesis cannot produce; the ingress tests cover them.
#   * positive_data_acceptance: it expects 2xx for any schema-valid input, but
#     much of what the server checks is not in the schema (catalog ids, roles
#     and kinds as plain strings, name lengths, opaque cursors, passphrase
#     length, existing ids); those get a documented 4xx problem instead.
#   * missing_required_header: the only required headers are If-Match (PATCH
#     /v1/credentials/{id}, PUT /v1/services/{id}); without it the server
#     answers 428 Precondition Required (RFC 6585, documented), which this
#     check does not accept.
REPORT="$TARGET_DIR/schemathesis-report"
rm -rf "$REPORT"
START=$(date +%s)
set +e
timeout --signal=INT --kill-after=30 "$MAX_TIME" \
  "$VENV/bin/st" run "http://$ADDR/v1/openapi.json" \
  --url "http://$ADDR" \
  --header "Authorization: Bearer $TOKEN" \
  --checks all \
  --exclude-checks positive_data_acceptance,missing_required_header \
  --exclude-path-regex '^/(hooks|actions)/' \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --generation-database none \
  --workers 1 \
  --request-timeout 10 \
  --max-redirects 0 \
  --no-color \
  --report junit,vcr --report-dir "$REPORT" 2>&1 | tee "$WORK/st.log"
RC=${PIPESTATUS[0]}
set -e
END=$(date +%s)

CASES=$(grep -A1 '^Test cases:' "$WORK/st.log" | sed -n 's/^ *\([0-9][0-9]*\) generated.*/\1/p' | tail -n 1)
echo "== schemathesis $ST_VERSION: ${CASES:-?} test cases in $((END - START)) s, exit $RC"
if [ "$RC" -eq 124 ]; then
  echo "schemathesis.sh: the run went past ${MAX_TIME}s" >&2
fi
if grep -q 'panicked' "$WORK/server.err"; then
  echo "schemathesis.sh: the server panicked:" >&2
  grep -A5 'panicked' "$WORK/server.err" >&2
  [ "$RC" -ne 0 ] || RC=1
fi
CASSETTES=$(find "$REPORT" -name '*.yaml' | wc -l)
if [ "$CASSETTES" -eq 0 ]; then
  echo "schemathesis.sh: no VCR cassette was written; the leak canary cannot look at the responses" >&2
  [ "$RC" -ne 0 ] || RC=1
fi
for marker in "$CANARY_KEY" "$CANARY_HOOK"; do
  if grep -rlF "$marker" "$REPORT" "$WORK/server.out" "$WORK/server.err" "$WORK/data" 2>/dev/null; then
    echo "schemathesis.sh: the leak canary shows in the files above" >&2
    [ "$RC" -ne 0 ] || RC=1
  fi
done
echo "== leak canary: not in $(find "$REPORT" -type f | wc -l) report files, the server log or $(find "$WORK/data" -type f | wc -l) data files"
exit "$RC"
