# Sourced by scripts/try and scripts/install-test-deps.sh: make ./.venv, install REQUIREMENTS in it,
# and install the project itself (editable, no dependencies) so that `.venv/bin/vpn-bot` exists.
# A virtual environment because Debian/Ubuntu's system Python refuses `pip install`
# (externally-managed-environment) and may lack `python`; Python 3.11-3.13 are supported.
# Re-runs are quick: pip runs only when the requirements file (or pyproject.toml) changed since the last install.

venv_python=".venv/bin/python"

# Root runs apt-get itself; so does a user sudo lets in (without a password, or asked at a terminal).
# Anyone else is told what an administrator must install, one line each, before any apt output.
can_apt() {
  command -v apt-get >/dev/null 2>&1 || return 1
  [ "$(id -u)" -eq 0 ] && return 0
  command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [ -t 0 ]; }
}

ensure_venv() {
  local requirements="$1" py="" sudo=""
  if [ ! -x "$venv_python" ]; then
    for candidate in python3 python python3.13 python3.12 python3.11; do
      if command -v "$candidate" >/dev/null 2>&1 &&
         "$candidate" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 14))' 2>/dev/null; then
        py="$candidate"; break
      fi
    done
    if [ -z "$py" ]; then
      echo "venv: Python 3.11, 3.12 or 3.13 is needed; an administrator must install it, then run this again:" >&2
      echo "venv:   python3 and python3-venv (Debian/Ubuntu: apt-get install python3 python3-venv)" >&2
      return 1
    fi
    if ! "$py" -m venv .venv >/dev/null 2>&1; then
      # Debian splits venv/ensurepip into python3.X-venv.
      rm -rf .venv
      local pkg
      pkg="python$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')-venv"
      if ! can_apt; then
        echo "venv: '$py -m venv' does not work here; an administrator must install, then run this again:" >&2
        echo "venv:   $pkg (Debian/Ubuntu: apt-get install $pkg; elsewhere your distribution's venv package)" >&2
        return 1
      fi
      [ "$(id -u)" -ne 0 ] && sudo="sudo"
      echo "venv: installing $pkg with ${sudo:+sudo }apt-get, for '$py -m venv'" >&2
      $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null || return 1
      "$py" -m venv .venv || return 1
    fi
  fi
  local stamp=".venv/.installed-$(basename "$requirements")" want
  want="$(cat "$requirements" requirements.txt | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "venv: installing $requirements into .venv" >&2
    "$venv_python" -m pip install -q --disable-pip-version-check -r "$requirements" || return 1
    echo "$want" > "$stamp"
  fi
  ensure_project
}

# The `vpn-bot` command (pyproject.toml's console script), pointing at this checkout: an editable
# install without dependencies (requirements.txt pins those), redone only when pyproject.toml changes.
ensure_project() {
  local stamp=".venv/.installed-project" want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x .venv/bin/vpn-bot ]; then
    echo "venv: installing the vpn-bot command into .venv" >&2
    "$venv_python" -m pip install -q --disable-pip-version-check --no-deps -e . || return 1
    echo "$want" > "$stamp"
  fi
}
