#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian/Ubuntu machine: WireGuard (userspace
# wireguard-go + wireguard-tools), iproute2 and nftables for the namespace tests, Debian's Chromium
# for the claim-page browser test (Playwright drives it; no browser is downloaded), Azurite (npm) for
# the Table Storage store's tests, and the Python packages of requirements-dev.txt (into ./.venv).
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

missing=()
command -v wireguard-go >/dev/null 2>&1 || missing+=(wireguard-go)
command -v wg >/dev/null 2>&1 || missing+=(wireguard-tools)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v nft >/dev/null 2>&1 || command -v iptables >/dev/null 2>&1 || missing+=(nftables)  # host-setup's NAT
# Playwright's bundled Node driver links libatomic.so.1, which stock Debian does not have (the browser tests).
{ ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep 'libatomic\.so\.1' >/dev/null || missing+=(libatomic1)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "install-test-deps: no apt-get; install ${missing[*]} yourself (namespace tests will be skipped)" >&2
  fi
fi

# Azurite's table service: the Table Storage store's tests run against it on 127.0.0.1.
AZURITE_VERSION=3.37.0
if ! command -v azurite-table >/dev/null 2>&1 || [ "$(azurite-table --version 2>/dev/null)" != "$AZURITE_VERSION" ]; then
  if command -v npm >/dev/null 2>&1; then
    APPLICATION_INSIGHTS_NO_STATSBEAT=1 $SUDO npm install -g --no-fund --no-audit --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
  else
    echo "install-test-deps: no npm; install Node.js and run: npm install -g azurite@$AZURITE_VERSION" >&2
  fi
fi

# The Python packages go into ./.venv (scripts/venv.sh), which the README's test command runs.
. scripts/venv.sh
ensure_venv requirements-dev.txt
