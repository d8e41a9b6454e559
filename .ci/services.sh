#!/usr/bin/env bash
# Make sure the shared PostgreSQL (127.0.0.1:5432) and Mosquitto (127.0.0.1:1883) are up,
# installing them from Debian's packages when the machine has none.
set -euo pipefail

port_open() { python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
}

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then echo "need root to install $*" >&2; exit 1; fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! port_open 5432; then
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    version=$(ls /etc/postgresql | sort -V | tail -1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 30); do port_open 5432 && break; sleep 1; done
fi
# The suite connects as the OS user with trust auth, as on the CI machines; create the role
# and database when a freshly installed cluster lacks them.
if ! psql -h 127.0.0.1 -d test -Atc 'select 1' >/dev/null 2>&1; then
    runuser -u postgres -- psql -Atc "select 1 from pg_roles where rolname='$(whoami)'" \
        | grep -q 1 || runuser -u postgres -- createuser --superuser "$(whoami)"
    runuser -u postgres -- createdb -O "$(whoami)" test 2>/dev/null || true
fi

if ! port_open 1883; then
    command -v mosquitto >/dev/null || apt_install mosquitto
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
    for _ in $(seq 1 10); do port_open 1883 && break; sleep 1; done
fi
port_open 5432 && port_open 1883
echo "services: postgresql 127.0.0.1:5432 and mosquitto 127.0.0.1:1883 are up"
