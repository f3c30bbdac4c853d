#!/usr/bin/env bash
# Fail when a fresh clone of this repository, .git included, is 90 MB or more.
# The Extensions Index clones the whole history (scm_revision set) and refuses
# repositories over 100 MB; every model ever committed stays in that history,
# so CI stops the growth 10 MB early. Measured on a clone of what is committed
# (HEAD and the branches' history), the way the index gets it.
set -euo pipefail
cd "$(dirname "$0")/.."
limit_mb="${CLONE_SIZE_LIMIT_MB:-90}"
if [ "$(git rev-parse --is-shallow-repository)" = "true" ]; then
    echo "check_clone_size: this checkout is shallow, so its history cannot be measured (fetch it whole)" >&2
    exit 1
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
git clone --quiet --no-local "file://$PWD" "$scratch/clone"
size_kb="$(du -sk "$scratch/clone" | cut -f1)"
git_kb="$(du -sk "$scratch/clone/.git" | cut -f1)"
size_mb=$(( (size_kb + 1023) / 1024 ))
echo "check_clone_size: a fresh clone is ${size_mb} MB ($(( (git_kb + 1023) / 1024 )) MB of it .git); limit ${limit_mb} MB"
if [ "$size_kb" -ge $(( limit_mb * 1024 )) ]; then
    echo "check_clone_size: too large for the Extensions Index; ship large models as release assets (docs/slicer.md)" >&2
    exit 1
fi
