# Helpers for CLI tests (sourced). Each check prints "ok N - what" or
# "not ok N - what" and the script's exit status is non-zero if any failed.
set -u
T=$(mktemp -d "${TMPDIR:-/tmp}/bmplan-test.XXXXXX")
trap 'rm -rf "$T"' EXIT
_n=0 _bad=0
ok()     { _n=$((_n+1)); echo "ok $_n - $*"; }
notok()  { _n=$((_n+1)); _bad=1; echo "not ok $_n - $*"; }
# expect_rc RC DESCRIPTION -- CMD...   (stdout -> $T/out, stderr -> $T/err)
expect_rc() {
    local want=$1 what=$2; shift 3
    "$@" >"$T/out" 2>"$T/err"; local rc=$?
    if [ "$rc" -eq "$want" ]; then ok "$what"; else notok "$what (exit $rc, wanted $want; stderr: $(head -c 300 "$T/err"))"; fi
}
# expect_err_contains TEXT: the last command's stderr contains TEXT
expect_err_contains() {
    if grep -qF -- "$1" "$T/err"; then ok "stderr mentions '$1'"; else notok "stderr lacks '$1': $(head -c 300 "$T/err")"; fi
}
expect_out_contains() {
    if grep -qF -- "$1" "$T/out"; then ok "stdout mentions '$1'"; else notok "stdout lacks '$1': $(head -c 300 "$T/out")"; fi
}
# one_line_err: stderr of the last command is exactly one line
one_line_err() {
    local n; n=$(wc -l <"$T/err")
    if [ "$n" -eq 1 ]; then ok "one-line error"; else notok "error is $n lines: $(head -c 300 "$T/err")"; fi
}
finish() { exit $_bad; }
