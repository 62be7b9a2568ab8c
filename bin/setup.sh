#!/usr/bin/env bash
# Everything a fresh clone needs before the stack can run or be tested, each step skipped when done:
# the virtualenv and its packages, the email mock's signing keys in .env, reachable PostgreSQL and
# RabbitMQ, the database roles, database and schema, and queues made by an earlier version migrated
# to this one's arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

find_python() {
    for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    say "Python 3.11 or newer is required and none was found on PATH (set PYTHON=/path/to/python3.11)."
    exit 1
}

if [ ! -x "$VENV/bin/python" ]; then
    python=$(find_python)
    say "creating $VENV with $($python --version)"
    "$python" -m venv "$VENV"
fi
stamp="$VENV/.installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing the project and its test tools into $VENV (log: $VENV/install.log)"
    if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
        "$VENV/bin/python" -m pip install -e ".[test]"; } >"$VENV/install.log" 2>&1; then
        tail -n 30 "$VENV/install.log" >&2
        say "installing failed; the whole log is in $VENV/install.log"
        exit 1
    fi
    touch "$stamp"
fi

# The email mock signs its event webhook as SendGrid does, with a key pair of this clone's own: the
# mock reads the private key from .env, the gateway the public one. Appended lines win over empty
# ones copied from .env.example; a key already set (a real provider's public key) is left alone.
if [ -z "${EMAIL_EVENTS_PRIVATE_KEY:-}${EMAIL_EVENTS_PUBLIC_KEY:-}" ] &&
    ! grep -qsE '^EMAIL_EVENTS_(PRIVATE|PUBLIC)_KEY=.' .env; then
    say "generating the email mock's event-signing key pair into .env"
    if [ -s .env ] && [ -n "$(tail -c 1 .env)" ]; then
        echo >>.env
    fi
    "$VENV/bin/python" -m email_service.mock_keys >>.env
fi

if ! "$VENV/bin/python" bin/preflight.py 2>/dev/null; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
        say "starting PostgreSQL and RabbitMQ with docker compose"
        docker compose -p messaging-service-dev -f docker-compose.dev.yml up -d --wait postgres rabbitmq
        "$VENV/bin/python" bin/preflight.py --wait 30 || exit 1
    else
        "$VENV/bin/python" bin/preflight.py || true
        say "Start the services above, or point DATABASE_URL / AMQP_URL (environment or .env) at running ones,"
        say "then run this again. They could not be started for you: no Docker engine with compose answered."
        exit 1
    fi
fi

say "creating the database role and database if missing, and migrating the schema"
"$VENV/bin/python" -m conversation_service.migrate

say "giving queues made by an earlier version this one's arguments, keeping their messages"
"$VENV/bin/python" -m common.queue_migration
