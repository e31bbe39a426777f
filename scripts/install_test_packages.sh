#!/usr/bin/env bash
# Installs the Debian packages the tests use themselves, where they are missing: MariaDB
# (mariadb-server, for the tests of MySQL sources: they start their own server) and Chromium
# (the report's browser test). PostgreSQL comes from the pgserver wheel in requirements.txt.
# Without root or apt-get nothing is installed, and those tests are reported as skipped, with
# the reason.
set -euo pipefail

missing=()
if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
    missing+=(mariadb-server)
fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    missing+=(chromium)
fi
if [ ${#missing[@]} = 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_test_packages: ${missing[*]} missing and cannot be installed here (needs" \
         "root and apt-get); the tests that need them will be skipped" >&2
    exit 0
fi
echo "install_test_packages: installing ${missing[*]}"
# The tests start their own MariaDB in a temporary directory: keep the package's service off.
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
    "${missing[@]}" >/dev/null
echo "install_test_packages: installed ${missing[*]}"
