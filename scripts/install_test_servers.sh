#!/usr/bin/env bash
# Installs the database servers the tests start themselves, where they are missing:
# MariaDB (Debian's mariadb-server) for the tests of MySQL sources. PostgreSQL comes from the
# pgserver wheel in requirements.txt. Without root or apt-get, nothing is installed and the
# MySQL tests are reported as skipped, with the reason.
set -euo pipefail

if command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_test_servers: mariadb-server is missing and cannot be installed here" \
         "(needs root and apt-get); the MySQL source tests will be skipped" >&2
    exit 0
fi
echo "install_test_servers: installing mariadb-server (for the MySQL source tests)"
# The tests start their own server in a temporary directory: keep the package's service off.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    mariadb-server >/dev/null
echo "install_test_servers: $(mariadbd --version 2>/dev/null || /usr/sbin/mariadbd --version)"
