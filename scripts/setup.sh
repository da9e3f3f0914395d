#!/usr/bin/env bash
# Installs everything vcam-talker needs on Debian/Ubuntu into ./.venv:
#   Debian packages (pulseaudio, pipewire + wireplumber + pipewire-pulse (the tests run
#   against both servers), libportaudio2, ffmpeg, espeak-ng, chromium + chromium-driver
#   for the browser tests) when root or with sudo,
#   torch 2.13.0 first (a looser spec would pull a multi-GB CUDA build), then the project.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium + chromium-driver: the control page's browser tests (selenium drives Debian's
# chromedriver, so nothing is downloaded at test time)
# festival + voices + sox: the viseme benchmark's second synthesizer and the viseme
# network's training data (scripts/train_visemes.py); the engine itself needs none of them
apt_pkgs=(pulseaudio pulseaudio-utils pipewire wireplumber pipewire-pulse dbus libportaudio2 ffmpeg espeak-ng
          chromium chromium-driver festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
          festvox-ca-ona-hts festvox-italp16k festvox-itapc16k sox)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Installing pipewire-pulse enables its user units for every login; on a desktop that
    # runs PulseAudio the two would race for the pulse socket. The tests start private
    # servers, so leave the user's choice alone.
    if [[ " ${missing[*]} " == *" pipewire-pulse "* ]] && command -v systemctl >/dev/null &&
       systemctl --global is-enabled --quiet pulseaudio.socket 2>/dev/null; then
      $SUDO systemctl --global disable --quiet pipewire-pulse.socket pipewire-pulse.service 2>/dev/null || true
      echo "setup: PulseAudio stays the login sound server (pipewire-pulse installed for the tests only)" >&2
    fi
  else
    echo "setup: missing Debian packages: ${missing[*]} (run as root or: sudo apt-get install ${missing[*]})" >&2
  fi
fi

py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev]"
echo "setup: ready (.venv/bin/vcam-talker)" >&2
