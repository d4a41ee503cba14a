#!/usr/bin/env bash
# The containers' entrypoint: sets up the licensed Xilinx tools that the host mounts (the
# worker image only; nothing is found in the coordinator's), then runs hlsfarm with the
# container's arguments (`serve`, `worker`, `--version` ...).
#
#   HLSFARM_BIN              the binary (default /usr/local/bin/hlsfarm)
#   XILINX_ROOT              where the host's Xilinx installation is mounted (default
#                            /tools/Xilinx); each tool's settings64.sh found there is sourced,
#                            the newest version of each tool, so vitis_hls, vitis-run,
#                            vivado_hls and vivado come on PATH
#   HLSFARM_XILINX_SETTINGS  settings64.sh files to source instead, separated by `:`
#   XILINXD_LICENSE_FILE     the licence server (port@host), passed through to the tools
set -euo pipefail

bin="${HLSFARM_BIN:-/usr/local/bin/hlsfarm}"
root="${XILINX_ROOT:-/tools/Xilinx}"

# settings_files: the newest settings64.sh of each tool under $root, in both layouts
# (<root>/<Tool>/<version>/settings64.sh up to 2024.1, <root>/<version>/<Tool>/settings64.sh
# from 2024.2).
settings_files() {
    local tool newest
    for tool in Vitis_HLS Vivado Vitis Vivado_HLS; do
        newest="$(
            {
                compgen -G "$root/$tool/*/settings64.sh" || true
                compgen -G "$root/*/$tool/settings64.sh" || true
            } | sort -V | tail -n 1
        )"
        if [ -n "$newest" ]; then
            echo "$newest"
        fi
    done
}

if [ -n "${HLSFARM_XILINX_SETTINGS:-}" ]; then
    IFS=':' read -r -a files <<<"$HLSFARM_XILINX_SETTINGS"
elif [ -d "$root" ]; then
    mapfile -t files < <(settings_files)
else
    files=()
fi
for f in "${files[@]}"; do
    if [ ! -r "$f" ]; then
        echo "hlsfarm-entrypoint: error: cannot read $f (HLSFARM_XILINX_SETTINGS, or the mount at $root)" >&2
        exit 2
    fi
    # The vendor's scripts are not written for `set -u`.
    set +u
    # shellcheck source=/dev/null
    . "$f" >/dev/null
    set -u
    echo "hlsfarm-entrypoint: sourced $f" >&2
done

# An image built with fewer FORMATS lacks some venvs: the worker then offers only the formats
# it has, instead of failing to probe a venv that is not there.
for var in HLSFARM_PYTHON_ONNX HLSFARM_PYTHON_PYTORCH; do
    if [ -n "${!var:-}" ] && [ ! -x "${!var}" ]; then
        unset "$var"
    fi
done

exec "$bin" "$@"
