# Sourced by scripts/try and scripts/install-test-deps.sh: make ./.venv and install REQUIREMENTS in it.
# A virtual environment because Debian/Ubuntu's system Python refuses `pip install`
# (externally-managed-environment) and may lack `python`; Python 3.11-3.13 are supported.
# Re-runs are quick: pip runs only when the requirements file changed since the last install.

venv_python=".venv/bin/python"

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
      echo "venv: Python 3.11, 3.12 or 3.13 is needed (apt-get install python3)" >&2; return 1
    fi
    if ! "$py" -m venv .venv >/dev/null 2>&1; then
      # Debian splits venv/ensurepip into python3.X-venv.
      rm -rf .venv
      [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
      if ! command -v apt-get >/dev/null 2>&1 || { [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; }; then
        echo "venv: '$py -m venv' failed; install your distribution's venv package (Debian: python3-venv)" >&2; return 1
      fi
      local pkg
      pkg="python$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')-venv"
      echo "venv: installing $pkg (apt-get) for '$py -m venv'" >&2
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
}
