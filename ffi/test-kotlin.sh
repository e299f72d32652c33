#!/usr/bin/env bash
# Builds the library, generates the Kotlin bindings, compiles them with the
# scenario test (ffi/tests/kotlin/ConcordTest.kt) and runs it on the JVM
# against the real engine.
#
# Needs: a JDK (17+); kotlinc and the coroutines jar from the npm package
# `kotlin-compiler`, pinned in ffi/tests/kotlin/package.json (KOTLIN_HOME,
# default: what `npm ci --prefix ffi/tests/kotlin` installed); JNA from Debian's `libjna-java`
# (JNA_JAR, default /usr/share/java/jna.jar).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$here/target-bindings"

kotlin_home="${KOTLIN_HOME:-}"
for candidate in "$here/tests/kotlin/node_modules/kotlin-compiler"; do
  [ -n "$kotlin_home" ] || { [ -x "$candidate/bin/kotlinc" ] && kotlin_home="$candidate"; } || true
done
[ -n "$kotlin_home" ] || { echo "kotlinc not found: npm ci --prefix ffi/tests/kotlin, or set KOTLIN_HOME" >&2; exit 1; }
jna="${JNA_JAR:-/usr/share/java/jna.jar}"
[ -f "$jna" ] || { echo "JNA not found: apt-get install libjna-java, or set JNA_JAR" >&2; exit 1; }
coroutines="$(ls "$kotlin_home"/lib/kotlinx-coroutines-core-jvm*.jar | head -n 1)"

"$here/build-bindings.sh" kotlin
mkdir -p "$out/kotlin-test"
jar="$out/kotlin-test/concord-test.jar"
"$kotlin_home/bin/kotlinc" -nowarn -include-runtime -cp "$jna:$coroutines" \
  "$out/kotlin/uniffi/concord/concord.kt" "$here/tests/kotlin/ConcordTest.kt" -d "$jar"
exec java -Djna.library.path="$out/lib" -cp "$jar:$jna:$coroutines" ConcordTestKt
