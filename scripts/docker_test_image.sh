#!/usr/bin/env bash
# Import a minimal image for machines that cannot pull from a registry (CI, tests): busybox and
# an empty /tmp. Tests run it with the machine's Python and the project's venv bind-mounted
# (tests/compose/docker-compose.test.yml). Usage: scripts/docker_test_image.sh [TAG]
set -euo pipefail
tag="${1:-fedattr-test-base:local}"
busybox="$(command -v busybox || true)"
if [ -z "$busybox" ]; then
    echo "busybox not found: apt-get install -y busybox-static" >&2
    exit 2
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/etc"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
tar -C "$root" -c . | docker import - "$tag" > /dev/null
echo "$tag"
