#!/usr/bin/env bash
# Builds the library, generates the Python bindings, and runs the Python
# test suite against the real engine (standard library only, no pip): the
# bindings' own tests, and two processes of the chat example
# (examples/python/chat.py) talking to each other.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/build-bindings.sh" python
cd "$here/tests/python"
exec python3 -m unittest -v test_concord test_example_chat "$@"
