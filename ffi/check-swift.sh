#!/usr/bin/env bash
# Generates the Swift bindings (with the Python ones to compare against) and
# checks they exist and declare the same API. Swift itself cannot be
# compiled on these machines; see ffi/BINDINGS-DRAFT.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/target-bindings"
"$here/build-bindings.sh" python swift
for f in concord.swift concordFFI.h concordFFI.modulemap; do
  [ -s "$out/swift/$f" ] || { echo "missing $out/swift/$f" >&2; exit 1; }
done
python3 "$here/tests/check_swift_api.py" "$out/python" "$out/swift/concord.swift"
