#!/usr/bin/env bash
# Builds the concord-ffi library and generates its Kotlin, Swift and Python
# bindings from it (UniFFI library mode: the API is read from the metadata
# compiled into the library, so bindings never drift from the code).
#
#   ffi/build-bindings.sh [python|kotlin|swift ...]   (default: all three)
#
# Output: ffi/target-bindings/<language>/ (generated, ignored by git), and
# ffi/target-bindings/lib/, a link to the library the bindings load. The
# Python module loads the library from its own directory, so a link to it
# sits next to concord.py too.
# Set CARGO_PROFILE=release to build optimised. CONCORD_FFI_BUILD replaces
# the arguments of the `cargo build` below; the test suite sets it to the
# workspace build it has already made, so nothing is compiled twice.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
profile="${CARGO_PROFILE:-dev}"
profile_dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="$root/ffi/target-bindings"
languages=("$@")
[ ${#languages[@]} -gt 0 ] || languages=(python kotlin swift)

case "$(uname -s)" in
  Darwin) lib_name=libconcord_ffi.dylib ;;
  *) lib_name=libconcord_ffi.so ;;
esac

# One build for the library and the generator: building them with different
# features would compile the dependency tree twice.
if [ -n "${CONCORD_FFI_BUILD:-}" ]; then
  read -r -a build_args <<<"$CONCORD_FFI_BUILD"
else
  build_args=(-p concord-ffi --features cli --lib --bin uniffi-bindgen)
fi
cargo build "${build_args[@]}" --profile "$profile"
bindgen="$target_dir/$profile_dir/uniffi-bindgen"
lib="$target_dir/$profile_dir/$lib_name"

mkdir -p "$out/lib"
ln -sfn "$lib" "$out/lib/$lib_name"
for language in "${languages[@]}"; do
  rm -rf "${out:?}/$language"
  # --no-format: formatting needs ktlint/swiftformat, which CI does not have.
  "$bindgen" generate --library "$lib" --language "$language" --no-format \
    --out-dir "$out/$language"
  if [ "$language" = python ]; then
    ln -sfn "$lib" "$out/python/$lib_name"
  fi
  echo "generated $language bindings in $out/$language"
done
