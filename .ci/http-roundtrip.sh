#!/usr/bin/env bash
# Drives examples/http_service over real HTTP on a loopback port: writes,
# SIGTERM, restart on the same backup directory, and checks over HTTP that
# every acknowledged write is back (and every acknowledged delete stays
# deleted). Three runs, so the second one also continues the restored
# chain with deltas. Exit status non-zero on any mismatch.
#
#   bash .ci/http-roundtrip.sh [PATH_TO_HTTP_SERVICE_BINARY]
#
# Default binary: target/debug/examples/http_service (built with
# `cargo build --all-features --example http_service` when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:-target/debug/examples/http_service}"
if [ ! -x "$bin" ]; then
    cargo build --all-features --example http_service
fi

work="$(mktemp -d)"
dir="$work/backups"
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "http-roundtrip: FAILED: $*" >&2
    for f in "$work"/err.*; do
        [ -f "$f" ] && { echo "--- $f" >&2; tail -n 40 "$f" >&2; }
    done
    exit 1
}

run=0
base=""
start() {
    run=$((run + 1))
    RUST_LOG="${RUST_LOG:-info}" "$bin" 0 "$dir" >"$work/out.$run" 2>"$work/err.$run" &
    pid=$!
    local i
    for ((i = 0; i < 300; i++)); do
        if grep -q '^listening on ' "$work/out.$run" 2>/dev/null; then
            base="$(sed -n 's/^listening on //p' "$work/out.$run" | head -n 1)"
            echo "http-roundtrip: run $run listening on $base"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || fail "run $run exited before listening"
        sleep 0.1
    done
    fail "run $run did not listen within 30 s"
}

stop() {
    kill -TERM "$pid"
    local i status
    for ((i = 0; i < 300; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && fail "run $run still running 30 s after SIGTERM"
    status=0
    wait "$pid" || status=$?
    pid=""
    [ "$status" -eq 0 ] || fail "run $run exited with status $status after SIGTERM"
    grep -q 'final backup written' "$work/err.$run" || fail "run $run: no final backup"
    echo "http-roundtrip: run $run stopped cleanly"
}

# HTTP helpers: print the body, fail unless the status is the expected one.
req() { # METHOD PATH EXPECTED_STATUS [BODY]
    local out code
    out="$work/body"
    if [ $# -ge 4 ]; then
        code="$(curl -s -o "$out" -w '%{http_code}' --max-time 10 -X "$1" \
            -H 'content-type: application/json' --data "$4" "$base$2")" || code=000
    else
        code="$(curl -s -o "$out" -w '%{http_code}' --max-time 10 -X "$1" "$base$2")" || code=000
    fi
    [ "$code" = "$3" ] || fail "$1 $2: status $code, expected $3: $(cat "$out" 2>/dev/null)"
    cat "$out"
}

# What was acknowledged: the body each id answered last, or DELETED.
declare -A users notes

write_users() { # RUN
    local r="$1" i id body
    for ((i = 1; i <= 40; i++)); do
        id="u$i"
        body="{\"name\":\"user $i\",\"run\":$r,\"n\":$((i * r))}"
        users[$id]="$(req PUT "/users/$id" 200 "$body")"
    done
    # Replace some whole (fields removed), count visits, delete some.
    for ((i = 1; i <= 40; i += 7)); do
        users[u$i]="$(req PUT "/users/u$i" 200 "{\"name\":\"slim $i\"}")"
    done
    for ((i = 2; i <= 40; i += 9)); do
        req POST "/users/u$i/visits" 200 >/dev/null
        users[u$i]="$(req POST "/users/u$i/visits" 200)"
    done
    for ((i = 5; i <= 40; i += 10)); do
        req DELETE "/users/u$i" 204 >/dev/null
        users[u$i]=DELETED
    done
    for ((i = 1; i <= 5; i++)); do
        local key
        key="$(req POST /notes 201 "{\"text\":\"note $r.$i\"}" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')"
        [ -n "$key" ] || fail "POST /notes answered no id"
        notes[$key]="note $r.$i"
    done
}

check_all() {
    local id got key
    for id in "${!users[@]}"; do
        if [ "${users[$id]}" = DELETED ]; then
            req GET "/users/$id" 404 >/dev/null
        else
            got="$(req GET "/users/$id" 200)"
            [ "$got" = "${users[$id]}" ] ||
                fail "run $run: /users/$id is $got, acknowledged ${users[$id]}"
        fi
    done
    for key in "${!notes[@]}"; do
        got="$(req GET "/notes/$key" 200)"
        case "$got" in
        *"\"text\":\"${notes[$key]}\""*) ;;
        *) fail "run $run: /notes/$key is $got, acknowledged ${notes[$key]}" ;;
        esac
    done
    echo "http-roundtrip: run $run: ${#users[@]} users and ${#notes[@]} notes as acknowledged"
}

start
write_users 1
check_all
stop

start
check_all
write_users 2
# Over 100 changes: the change-count trigger writes a delta on the full
# backup restored at start, within about a second, without notify_change().
for ((i = 0; i < 40; i++)); do
    users[u1]="$(req POST /users/u1/visits 200)"
done
for ((i = 0; i < 150; i++)); do
    case "$(req GET /status 200)" in
    *'"kind":"delta"'*) break ;;
    esac
    sleep 0.1
done
case "$(req GET /status 200)" in
*'"kind":"delta"'*) echo "http-roundtrip: run $run continued the restored chain with a delta" ;;
*) fail "run $run: no delta on the restored chain: $(req GET /status 200)" ;;
esac
stop

start
check_all
stop

deltas="$(find "$dir" -name 'dictdb_delta_*' | wc -l)"
fulls="$(find "$dir" -name 'dictdb_backup_*' | wc -l)"
echo "http-roundtrip: $fulls full backups, $deltas deltas in the directory"
[ "$fulls" -ge 1 ] || fail "no full backup in $dir"
[ "$deltas" -ge 1 ] || fail "no delta in $dir"
echo "http-roundtrip: passed"
