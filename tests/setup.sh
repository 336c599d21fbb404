#!/bin/sh
# Install what the integration tests and the demo need on a fresh Debian
# machine. Idempotent: a fast no-op when everything is present.
set -eu

missing=
for cmd in prosody prosodyctl tcpclient socat openssl mandoc pgrep; do
	command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
done
if [ -n "$missing" ]; then
	echo "setup.sh: installing Debian packages for:$missing" >&2
	SUDO=
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	$SUDO apt-get update
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y \
		prosody ucspi-tcp socat openssl mandoc procps python3 python3-pip
	# The package starts a system Prosody; the tests run their own.
	if command -v systemctl >/dev/null 2>&1; then
		$SUDO systemctl disable --now prosody >/dev/null 2>&1 || true
	fi
fi

# ejabberd, the second real server (tests/sjtest/ejabberd.py runs its own).
if ! dpkg -s ejabberd >/dev/null 2>&1; then
	echo "setup.sh: installing the Debian package ejabberd" >&2
	SUDO=
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	$SUDO apt-get update
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y ejabberd
	# The package starts a system ejabberd (and epmd); the tests run their own.
	if command -v systemctl >/dev/null 2>&1; then
		$SUDO systemctl disable --now ejabberd >/dev/null 2>&1 || true
	fi
fi

# mcabber in tmux: a real client that answers groupchat it did not join
# with a leave (tests/test_rooms.py).
if ! command -v mcabber >/dev/null 2>&1 || ! command -v tmux >/dev/null 2>&1; then
	echo "setup.sh: installing the Debian packages mcabber and tmux" >&2
	SUDO=
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	$SUDO apt-get update
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y mcabber tmux
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import slixmpp, pytest, pytest_timeout' >/dev/null 2>&1; then
	echo "setup.sh: installing Python packages slixmpp pytest pytest-timeout" >&2
	"$PY" -m pip install --quiet slixmpp pytest pytest-timeout ||
		"$PY" -m pip install --quiet --break-system-packages slixmpp pytest pytest-timeout
fi
