#!/usr/bin/env bash
# The end of `make test`: lists every test part that did not run (tests/common/skip.rs appends one
# line per skip to LOG). With CI=true any skip is a failure: CI must run every part.
set -euo pipefail
LOG=${1:?usage: test-skips.sh LOG}
if [[ ! -s $LOG ]]; then
    echo "make test: nothing skipped"
    exit 0
fi
n=$(wc -l <"$LOG")
echo
echo "make test: $n test part(s) did NOT run:"
sed 's/^/  - /' "$LOG"
if [[ ${CI:-} == true ]]; then
    echo "make test: CI=true runs every part; the skips above are failures"
    exit 1
fi
echo "(install or start what each line names and run make test again to run them)"
