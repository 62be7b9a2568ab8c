#!/usr/bin/env bash
# Start the whole stack in the foreground: set-up, migrations, the two mock providers and the four
# services, each log line prefixed with its process. Ctrl-C or SIGTERM stops all of it; so does any
# one process dying.
set -euo pipefail
cd "$(dirname "$0")/.."

# Text logs read better in a terminal; LOG_FORMAT=json (environment or .env) gives what docker-compose ships.
if [ -z "${LOG_FORMAT:-}" ] && ! grep -qs '^LOG_FORMAT=' .env; then
    export LOG_FORMAT=text
fi

bin/setup.sh
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
# .env is not sourced here: every process reads it itself, below whatever the environment sets.

# The mocks post delivery receipts to the gateway; when the environment moves the gateway, follow it.
if [ -n "${GATEWAY_PORT:-}" ]; then
    export SMS_STATUS_CALLBACK_URL=${SMS_STATUS_CALLBACK_URL-http://127.0.0.1:$GATEWAY_PORT/api/webhooks/sms/status}
    export EMAIL_MOCK_EVENT_WEBHOOK_URL=${EMAIL_MOCK_EVENT_WEBHOOK_URL-http://127.0.0.1:$GATEWAY_PORT/api/webhooks/email/status}
fi

pids=()
run_service() {
    local name=$1
    shift
    "$@" > >(sed -u "s/^/[$name] /") 2>&1 &
    pids+=($!)
}

stop_all() {
    trap - INT TERM EXIT
    echo "[start] stopping ${#pids[@]} processes" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

run_service sms_provider "$PY" -m sms_service.mock_provider
run_service email_provider "$PY" -m email_service.mock_provider
run_service conversation_service "$PY" -m conversation_service
run_service sms_service "$PY" -m sms_service
run_service email_service "$PY" -m email_service
run_service gateway "$PY" -m gateway

"$PY" bin/wait_ready.py --timeout "${START_TIMEOUT_SECONDS:-60}"

# Whichever process exits first, on its own, takes the rest down with it.
set +e
wait -n "${pids[@]}"
status=$?
echo "[start] a process exited with status $status; stopping the stack" >&2
exit "$status"
