#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian/Ubuntu machine: WireGuard (userspace
# wireguard-go + wireguard-tools), iproute2 and nftables for the namespace tests, Debian's Chromium
# for the claim-page browser test (Playwright drives it; no browser is downloaded), Azurite (npm) for
# the Table Storage store's tests, and the Python packages of requirements-dev.txt (into ./.venv).
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/venv.sh  # can_apt, ensure_venv

AZURITE_VERSION=3.37.0
missing=()
command -v wireguard-go >/dev/null 2>&1 || missing+=(wireguard-go)
command -v wg >/dev/null 2>&1 || missing+=(wireguard-tools)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v nft >/dev/null 2>&1 || command -v iptables >/dev/null 2>&1 || missing+=(nftables)  # host-setup's NAT
# Playwright's bundled Node driver links libatomic.so.1, which stock Debian does not have (the browser tests).
# (bash globs only: no external tool is assumed to exist yet)
compgen -G '/usr/lib/*/libatomic.so.1' >/dev/null || compgen -G '/lib/*/libatomic.so.1' >/dev/null || compgen -G '/usr/lib*/libatomic.so.1' >/dev/null || missing+=(libatomic1)
azurite_ok() { command -v azurite-table >/dev/null 2>&1 && [ "$(azurite-table --version 2>/dev/null)" = "$AZURITE_VERSION" ]; }

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
if ! command -v apt-get >/dev/null 2>&1; then
  if [ ${#missing[@]} -gt 0 ]; then
    echo "install-test-deps: no apt-get; install these yourself (Debian names; the namespace tests are skipped without them):" >&2
    for pkg in "${missing[@]}"; do echo "install-test-deps:   $pkg" >&2; done
  fi
  missing=()
elif { [ ${#missing[@]} -gt 0 ] || ! azurite_ok; } && ! can_apt; then
  # Not root, and sudo is absent or refuses: say exactly what an administrator must install, one line
  # each, and stop before any apt or npm output.
  echo "install-test-deps: not root and no sudo here; an administrator must install, then run this again:" >&2
  for pkg in "${missing[@]}"; do echo "install-test-deps:   apt-get install -y --no-install-recommends $pkg" >&2; done
  azurite_ok || echo "install-test-deps:   npm install -g azurite@$AZURITE_VERSION" >&2
  exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-test-deps: installing with ${SUDO:+sudo }apt-get: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Azurite's table service: the Table Storage store's tests run against it on 127.0.0.1.
if ! azurite_ok; then
  if command -v npm >/dev/null 2>&1; then
    echo "install-test-deps: installing azurite@$AZURITE_VERSION with ${SUDO:+sudo }npm" >&2
    APPLICATION_INSIGHTS_NO_STATSBEAT=1 $SUDO npm install -g --no-fund --no-audit --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
  else
    echo "install-test-deps: no npm; install Node.js and run: npm install -g azurite@$AZURITE_VERSION" >&2
  fi
fi

# The Python packages (and the vpn-bot command) go into ./.venv (scripts/venv.sh), which the README's test command runs.
ensure_venv requirements-dev.txt
