#!/usr/bin/env bash
# SIPp against a running imc-actors: register alice and bob, create a room, join, chat.
#
#   .venv/bin/imc-actors serve &               # udp 127.0.0.1:5060 (the default)
#   examples/sipp/run_chat.sh                  # or: examples/sipp/run_chat.sh HOST:PORT
#
# Two SIPp instances run: imc_member_uas.xml plays the members' phones (alice's and bob's
# contacts both point at it; it answers every MESSAGE with 200 and keeps what arrived), and
# imc_chat_uac.xml sends REGISTER x2, "#create sippchat", "#join", "hello from sipp" to the
# server. The script then checks that the members received the notices a room sends.
# Exit status 0 when everything arrived. Needs sipp (Debian package sip-tester) and ss.
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

if ! sipp "$server" -sf "$here/imc_chat_uac.xml" -i 127.0.0.1 -p "$uac_port" -m 1 \
    -set uas_port "$uas_port" -timeout 30s -timeout_error -nostdin >"$work/uac.out" 2>&1; then
  echo "run_chat: the chat scenario failed against $server (see $work/uac.out)" >&2
  tail -n 40 "$work/uac.out" >&2
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
echo "run_chat: ok (room created, bob joined, alice's line relayed; logs in $work)"
