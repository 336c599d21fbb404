#!/bin/sh
# make demo: a throwaway Prosody, sj-proxy for alice with two raw clients and
# one XMPP client through sj-c2s, and bob talking to them. Everything runs on
# 127.0.0.1 and is stopped at the end.
set -eu
cd "$(dirname "$0")"
exec "${PYTHON:-python3}" -m sjtest.demo "$@"
