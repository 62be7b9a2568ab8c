#!/usr/bin/env bash
# Start the whole stack in the foreground: set-up, migrations, the two mock providers and the four
# services under bin/supervise.py, each log line prefixed with its process. A process that dies is
# restarted with backoff while the others keep serving; one that keeps crashing (SUPERVISE_CRASH_LIMIT
# times within SUPERVISE_CRASH_WINDOW_SECONDS) stops the stack with status 1. Ctrl-C or SIGTERM stops
# all of it: SIGTERM to each process, SIGKILL after SUPERVISE_STOP_GRACE_SECONDS.
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

services=()
run_service() {
    services+=(--service "$@")
}

run_service sms_provider "$PY" -m sms_service.mock_provider
run_service email_provider "$PY" -m email_service.mock_provider
run_service conversation_service "$PY" -m conversation_service
run_service sms_service "$PY" -m sms_service
run_service email_service "$PY" -m email_service
run_service gateway "$PY" -m gateway

# exec: signals reach the supervisor itself, and its exit status is the script's.
exec "$PY" bin/supervise.py --when-started "$PY" bin/wait_ready.py --timeout "${START_TIMEOUT_SECONDS:-60}" \
    "${services[@]}"
