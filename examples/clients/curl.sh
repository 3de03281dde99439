#!/bin/sh
# Call keymux (here the `keymux dev` front on 127.0.0.1:10000) with curl.
# KEYMUX_TOKEN is your client token in client_keys mode; with auth mode
# `none` (the dev demo) any value, or no Authorization header, is fine.
set -eu
KEYMUX_URL=${KEYMUX_URL:-http://127.0.0.1:10000}
KEYMUX_TOKEN=${KEYMUX_TOKEN:-km-example-alice-not-a-real-token}

# Chat completion.
curl -sS "$KEYMUX_URL/v1/chat/completions" \
  -H "Authorization: Bearer $KEYMUX_TOKEN" \
  -H 'Content-Type: application/json' \
  -d '{"model":"gpt-4","messages":[{"role":"user","content":"Say hello"}]}'
echo

# Streaming, with the usage chunk at the end.
curl -sS -N "$KEYMUX_URL/v1/chat/completions" \
  -H "Authorization: Bearer $KEYMUX_TOKEN" \
  -H 'Content-Type: application/json' \
  -d '{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello"}]}'

# The models the pool serves.
curl -sS "$KEYMUX_URL/v1/models" -H "Authorization: Bearer $KEYMUX_TOKEN"
echo
