#!/usr/bin/env bash
# A curl tour of the API against a running stack (bin/start.sh): three sends, three webhooks, then
# the conversations they made, and one send's status history. Exits non-zero if any call does not
# answer 2xx.
set -euo pipefail

BASE_URL=${BASE_URL:-http://127.0.0.1:${GATEWAY_PORT:-8080}}
pretty() { python3 -m json.tool 2>/dev/null || cat; }
json_field() { python3 -c "import json, sys; print(json.load(sys.stdin)[\"$1\"])"; }

ids=()

call() {
    local title=$1 method=$2 path=$3 data=${4:-}
    echo
    echo "=== $title: $method $path"
    local args=(-sS -X "$method" "$BASE_URL$path" -H "Content-Type: application/json" -w '\n%{http_code}')
    [ -n "$data" ] && args+=(--data "$data")
    local output status body
    output=$(curl "${args[@]}")
    status=${output##*$'\n'}
    body=${output%$'\n'*}
    echo "$body" | pretty
    echo "HTTP $status"
    case $status in 2??) ;; *) echo "!!! $title answered $status" >&2; exit 1 ;; esac
    if [ "$method" = POST ]; then ids+=("$(echo "$body" | json_field id)"); fi
}

call "Send an SMS" POST /api/messages/sms '{
  "from": "+12016661234", "to": "+18045551234", "type": "sms",
  "body": "Hello! This is a test SMS message.", "attachments": null,
  "timestamp": "2024-11-01T14:00:00Z"}'

call "Send an MMS" POST /api/messages/sms '{
  "from": "+12016661234", "to": "+18045551234", "type": "mms",
  "body": "Hello! This is a test MMS message with attachment.",
  "attachments": ["https://example.com/image.jpg"], "timestamp": "2024-11-01T14:01:00Z"}'

call "Send an email" POST /api/messages/email '{
  "from": "user@usehatchapp.com", "to": "contact@gmail.com",
  "body": "Hello! This is a test email message with <b>HTML</b> formatting.",
  "attachments": ["https://example.com/document.pdf"], "timestamp": "2024-11-01T14:02:00Z"}'

call "Receive an SMS (provider webhook)" POST /api/webhooks/sms '{
  "from": "+18045551234", "to": "+12016661234", "type": "sms",
  "messaging_provider_id": "message-1", "body": "This is an incoming SMS message",
  "attachments": null, "timestamp": "2024-11-01T14:03:00Z"}'

call "Receive an MMS (provider webhook)" POST /api/webhooks/sms '{
  "from": "+18045551234", "to": "+12016661234", "type": "mms",
  "messaging_provider_id": "message-2", "body": "This is an incoming MMS message",
  "attachments": ["https://example.com/received-image.jpg"], "timestamp": "2024-11-01T14:04:00Z"}'

call "Receive an email (provider webhook)" POST /api/webhooks/email '{
  "from": "contact@gmail.com", "to": "user@usehatchapp.com", "xillio_id": "message-3",
  "body": "<html><body>This is an incoming email with <b>HTML</b> content</body></html>",
  "attachments": ["https://example.com/received-document.pdf"], "timestamp": "2024-11-01T14:05:00Z"}'

# A message is accepted before it is stored, a send before the provider answered, and the provider's
# delivery receipt comes a moment later: wait (15 s at most) until every message of the tour is
# stored and every send has its outcome.
for _ in $(seq 1 75); do
    settled=0
    for id in "${ids[@]}"; do
        status=$(curl -sS "$BASE_URL/api/messages/$id" | json_field status 2>/dev/null || echo missing)
        case $status in missing | queued | sent) ;; *) settled=$((settled + 1)) ;; esac
    done
    [ "$settled" -eq "${#ids[@]}" ] && break
    sleep 0.2
done

# After a fresh start these are conversations 1 and 2; on a database with history, wherever the tour landed.
phone_conversation=$(curl -sS "$BASE_URL/api/messages/${ids[0]}" | json_field conversation_id)
email_conversation=$(curl -sS "$BASE_URL/api/messages/${ids[2]}" | json_field conversation_id)

call "List conversations" GET /api/conversations
call "Messages of the phone conversation" GET "/api/conversations/$phone_conversation/messages"
call "Messages of the email conversation" GET "/api/conversations/$email_conversation/messages"
call "The SMS send and its status history" GET "/api/messages/${ids[0]}"
