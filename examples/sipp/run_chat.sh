#!/usr/bin/env bash
# SIPp against a running imc-actors: register alice and bob, create a room, join, chat.
#
#   .venv/bin/imc-actors serve &               # udp 127.0.0.1:5060 (the default)
#   examples/sipp/run_chat.sh                  # or: examples/sipp/run_chat.sh HOST:PORT
#
# Two SIPp instances run: imc_member_uas.xml plays the members' phones (alice's and bob's
# contacts both point at it; it answers every MESSAGE with 200 and keeps what arrived), and
# imc_chat_uac.xml sends REGISTER x2, "#create ROOM", "#join", "hello from sipp" to the
# server. The script then checks that the members received the notices a room sends.
# ROOM is new on every run (sippchat-<time>-<pid>), so the script can run again against the
# same server; set ROOM to choose it. Exit status 0 when everything arrived; otherwise it says
# which answer or which notice was wrong. Needs sipp (Debian package sip-tester) and ss.
# WORKDIR (default: a new temporary directory) receives the SIPp logs and member-messages.log.
set -euo pipefail

server=${1:-127.0.0.1:5060}
here=$(cd "$(dirname "$0")" && pwd)
work=${WORKDIR:-$(mktemp -d)}
mkdir -p "$work"
cd "$work"

free_udp_port() {
  python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
uas_port=${UAS_PORT:-$(free_udp_port)}
uac_port=${UAC_PORT:-$(free_udp_port)}
messages="$work/member-messages.log"

# The members' phone: 4 MESSAGEs are expected (room created to alice; bob joined to alice
# and bob; alice's line relayed to bob).
sipp -sf "$here/imc_member_uas.xml" -i 127.0.0.1 -p "$uas_port" -m 4 -timeout 30s -timeout_error \
  -nostdin -trace_msg -message_file "$messages" >"$work/uas.out" 2>&1 &
uas=$!
trap 'kill "$uas" 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do   # until the UAS listens
  ss -Hlun "sport = :$uas_port" | grep -q . && break
  sleep 0.05
done

room=${ROOM:-sippchat-$(date +%s)-$$}

# Why the chat scenario failed, in words: the answer SIPp did not expect (and to what), or
# that nothing answered; then the notices the members got, which say why a command was refused.
explain_failure() {
  local errors="$work/uac-errors.log" answer
  answer=$(tr -d '\r' <"$errors" 2>/dev/null | grep -o "while expecting '[0-9]*' ([^)]*), received 'SIP/2.0 [0-9]* [^']*" | head -n 1 || true)
  if [ -n "$answer" ]; then
    local expected got to
    expected=$(sed -E "s/^while expecting '([0-9]+)'.*/\1/" <<<"$answer")
    got=$(sed -E "s/.*received 'SIP\/2.0 //" <<<"$answer")
    to=$(tr -d '\r' <"$errors" | grep -A 8 "received 'SIP/2.0" | grep -m 1 -io '^To: <[^>]*>' | sed -E 's/^To: <(.*)>/\1/I' || true)
    echo "run_chat: the server answered $got to a request for ${to:-?} (the scenario expected $expected; room $room)" >&2
  elif grep -qi "timeout\|time out\|timed out" "$errors" "$work/uac.out" 2>/dev/null; then
    echo "run_chat: no answer from $server (is imc-actors serve running there?)" >&2
  else
    echo "run_chat: sipp failed against $server; its last lines:" >&2
    tail -n 5 "$work/uac.out" >&2
  fi
  sleep 0.5   # the refusal's notice is sent with the answer; let the members' phone take it
  kill "$uas" 2>/dev/null || true
  wait "$uas" 2>/dev/null || true
  if grep -q '^\*\*\* ' "$messages" 2>/dev/null; then
    echo "run_chat: the members received:" >&2
    grep '^\*\*\* ' "$messages" | sed 's/^/  /' >&2
  fi
  echo "run_chat: SIPp's logs are in $work" >&2
}

if ! sipp "$server" -sf "$here/imc_chat_uac.xml" -i 127.0.0.1 -p "$uac_port" -m 1 \
    -set uas_port "$uas_port" -set room "$room" -default_behaviors all,-bye \
    -timeout 30s -timeout_error -nostdin -trace_err -error_file "$work/uac-errors.log" \
    >"$work/uac.out" 2>&1; then
  explain_failure
  exit 1
fi
if ! wait "$uas"; then
  echo "run_chat: the members did not receive 4 MESSAGEs (see $work/uas.out)" >&2
  exit 1
fi
trap - EXIT

for expected in '\*\*\* Room was created' '\*\*\* \[bob\] has joined the room' \
                '\[alice\]: hello from sipp' 'Supported: kamailio/imc'; do
  if ! grep -q "$expected" "$messages"; then
    echo "run_chat: no '$expected' in $messages" >&2
    exit 1
  fi
done
echo "run_chat: ok (room $room created, bob joined, alice's line relayed; logs in $work)"
