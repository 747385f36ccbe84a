#!/usr/bin/env bash
# The server binaries the test suite starts throwaway instances of: PostgreSQL, Redis and Dovecot
# (IMAP); swaks, the SMTP client the email tests send with; and the browser the web chat widget
# is tested in (Debian's Chromium, driven by Playwright, no download).
# Installs them from Debian's packages when they are missing and we may (root); otherwise says how.
set -euo pipefail

missing=()
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || command -v pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ [ -x /usr/sbin/dovecot ] || command -v dovecot >/dev/null 2>&1; } && [ -x /usr/lib/dovecot/imap ] || missing+=(dovecot-imapd)
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "The tests need these Debian packages (or the same programs). Install them, e.g.:" >&2
    echo "  sudo apt-get install ${missing[*]}" >&2
    echo "or point the tests at running servers with PARLEY_TEST_DATABASE_URL / PARLEY_TEST_REDIS_URL." >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged servers; the tests start their own, so leave those alone.
