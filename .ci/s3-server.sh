# shellcheck shell=bash
# An S3-compatible server on loopback for the object-store tests and example.
#
#   source .ci/s3-server.sh        # in .ci/run or a shell: starts it, exports the settings
#   s3_server_stop                 # stops the server this script started
#
# Installs moto's server from PyPI (`moto[server]`) when `moto_server` is
# missing, starts it on 127.0.0.1:${DICTDB_S3_PORT:-5055} in the background
# (log: target/moto.log, pid: target/moto-PORT.pid) unless something already
# answers there, waits (at most 60 s) until it answers, creates the buckets
# ${DICTDB_S3_BUCKET:-dictdb-test} and dictdb-example, and exports what the
# tests and `examples/s3_backup.rs` read:
#   AWS_ENDPOINT AWS_ALLOW_HTTP AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
#   AWS_REGION DICTDB_S3_ENDPOINT DICTDB_S3_BUCKET DICTDB_MOTO_SERVER
# Run as a script instead (`bash .ci/s3-server.sh`), it prints those export
# lines for `eval`.
#
# moto keeps everything in memory and does not check signatures: it is a
# test server only. It only listens on 127.0.0.1.

_s3_main() {
    local root port host endpoint bucket moto pidfile i
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    port="${DICTDB_S3_PORT:-5055}"
    host=127.0.0.1
    endpoint="http://$host:$port"
    bucket="${DICTDB_S3_BUCKET:-dictdb-test}"
    pidfile="$root/target/moto-$port.pid"
    mkdir -p "$root/target"

    moto="$(command -v moto_server || true)"
    if [ -z "$moto" ]; then
        echo "s3-server: installing moto[server] from PyPI" >&2
        python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' >&2 || return 1
        if command -v pyenv >/dev/null 2>&1; then pyenv rehash >/dev/null 2>&1 || true; fi
        hash -r
        moto="$(command -v moto_server || true)"
        if [ -z "$moto" ]; then
            # The package is there even when its script is not on PATH.
            moto="python3 -m moto.server"
        fi
    fi

    if curl -s -o /dev/null --max-time 2 "$endpoint/"; then
        echo "s3-server: something already answers on $endpoint, using it" >&2
    else
        echo "s3-server: starting $moto on $endpoint (log: target/moto.log)" >&2
        # shellcheck disable=SC2086  # $moto may be "python3 -m moto.server"
        nohup $moto -H "$host" -p "$port" >"$root/target/moto.log" 2>&1 </dev/null &
        echo $! >"$pidfile"
        for ((i = 0; i < 120; i++)); do
            if curl -s -o /dev/null --max-time 2 "$endpoint/"; then
                break
            fi
            if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
                echo "s3-server: moto_server exited; its log:" >&2
                cat "$root/target/moto.log" >&2
                return 1
            fi
            sleep 0.5
        done
        if ! curl -s -o /dev/null --max-time 2 "$endpoint/"; then
            echo "s3-server: no answer on $endpoint after 60 s; log:" >&2
            cat "$root/target/moto.log" >&2
            return 1
        fi
    fi

    for b in "$bucket" dictdb-example; do
        # Creating a bucket that exists is not an error worth stopping for.
        curl -s -o /dev/null --max-time 10 -X PUT "$endpoint/$b" || {
            echo "s3-server: could not create bucket $b" >&2
            return 1
        }
    done

    cat <<EOF
export AWS_ENDPOINT=$endpoint
export AWS_ALLOW_HTTP=true
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export DICTDB_S3_ENDPOINT=$endpoint
export DICTDB_S3_BUCKET=$bucket
export DICTDB_MOTO_SERVER="$moto"
EOF
}

# Stops the server this script started on ${DICTDB_S3_PORT:-5055} (not one
# it found running).
s3_server_stop() {
    local root pidfile
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    pidfile="$root/target/moto-${DICTDB_S3_PORT:-5055}.pid"
    if [ -f "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # Run as a script: print the export lines.
    set -euo pipefail
    _s3_main
else
    # Sourced: export the settings into the caller's shell.
    _s3_exports="$(_s3_main)" || return 1
    eval "$_s3_exports"
    unset _s3_exports
    echo "s3-server: S3 endpoint $DICTDB_S3_ENDPOINT, bucket $DICTDB_S3_BUCKET" >&2
fi
