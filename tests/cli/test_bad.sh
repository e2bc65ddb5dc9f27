#!/usr/bin/env bash
# Hostile inputs (tests/bad/, listed in tests/bad/EXPECT): each must be
# refused with the exit status and one-line message EXPECT gives, within a
# time limit and a memory bound, without touching the input and without
# writing anything (no output, no temporaries, nothing in the working
# folder). Rows whose command this build lacks are reported as skipped.
#   env: BAD_TIMEOUT (seconds, default 20), BAD_MAX_RSS_KB (default 524288)
. "$(dirname "$0")/lib.sh"
BAD=$ROOT/tests/bad
limit=${BAD_TIMEOUT:-20}
max_rss=${BAD_MAX_RSS_KB:-524288}
have_time=0; [ -x /usr/bin/time ] && have_time=1

[ -x "$BMPLAN" ] || { notok "no program at $BMPLAN"; finish; }
commands=$("$BMPLAN" --help 2>/dev/null | sed -n '/^commands:/,/^$/p' | awk 'NF {print $1}')
built() { printf '%s\n' "$commands" | grep -qx -- "$1"; }

# digest of a file or of every file under a folder (names and bytes)
digest() { (cd "$1" 2>/dev/null && find . -type f -print0 | sort -z | xargs -0 sha256sum) || sha256sum <"$1"; }
trim() { local s=$1; s=${s#"${s%%[![:space:]]*}"}; printf '%s' "${s%"${s##*[![:space:]]}"}"; }

n=0 skipped=0 checked=0 missing=""
while IFS= read -r line; do
    case $line in ''|'#'*) continue ;; esac
    n=$((n + 1))
    IFS='|' read -r path cmd want words nlines <<<"$line"
    path=$(trim "$path"); cmd=$(trim "$cmd"); want=$(trim "$want"); words=$(trim "$words")
    nlines=$(trim "${nlines:-1}")
    file=$BAD/$path
    read -r -a argv <<<"$cmd"
    if ! built "${argv[0]}"; then
        skipped=$((skipped + 1)); missing="$missing ${argv[0]}"; continue
    fi
    if [ ! -e "$file" ]; then notok "$path: missing (run tests/bad/generate.sh)"; continue; fi
    run=$T/run.$n; outp=$T/outp.$n; mkdir -p "$run" "$outp"
    out=$outp/out
    args=()
    for a in "${argv[@]}"; do
        if [ "$a" = '{text}' ]; then args+=("$(cat "$file")"); continue; fi
        a=${a//\{out\}/$out}; a=${a//\{bad\}/$BAD}; a=${a//\{\}/$file}
        args+=("$a")
    done
    before=$(digest "$file")
    meter=()
    [ $have_time = 1 ] && meter=(/usr/bin/time -f %M -o "$T/rss.$n")
    (cd "$run" && exec timeout -s KILL "$limit" "${meter[@]}" "$BMPLAN" "${args[@]}") >"$T/out" 2>"$T/err"
    rc=$?
    problems=""
    [ "$rc" -eq "$want" ] || problems="$problems; exit $rc, wanted $want"
    [ "$rc" -eq 137 ] && problems="$problems (killed after ${limit}s)"
    [ -s "$T/out" ] && problems="$problems; wrote to stdout"
    lines=$(wc -l <"$T/err")
    [ "$lines" -eq "$nlines" ] || problems="$problems; $lines lines on stderr, wanted $nlines"
    grep -q "^bmplan ${argv[0]}: " "$T/err" || problems="$problems; message lacks 'bmplan ${argv[0]}: '"
    IFS=';' read -r -a wl <<<"$words"
    for w in "${wl[@]}"; do
        w=$(trim "$w")
        [ -z "$w" ] || grep -qF -- "$w" "$T/err" || problems="$problems; message lacks '$w'"
    done
    if [ $have_time = 1 ] && [ -s "$T/rss.$n" ]; then
        rss=$(tail -1 "$T/rss.$n")
        [ "$rss" -le "$max_rss" ] 2>/dev/null || problems="$problems; used ${rss} kB (bound ${max_rss} kB)"
    fi
    [ "$(digest "$file")" = "$before" ] || problems="$problems; the input changed"
    [ -z "$(ls -A "$run")" ] || problems="$problems; wrote in the working folder: $(ls -A "$run" | head -3 | tr '\n' ' ')"
    [ -z "$(ls -A "$outp")" ] || problems="$problems; left output: $(ls -A "$outp" | head -3 | tr '\n' ' ')"
    checked=$((checked + 1))
    if [ -z "$problems" ]; then
        ok "$path: ${argv[0]} refuses it"
    else
        notok "$path: ${problems#; } (stderr: $(head -c 300 "$T/err"))"
    fi
    rm -rf "$run" "$outp"
done <"$BAD/EXPECT"
for c in $(printf '%s\n' $missing | sort -u); do
    echo "skipped: $(printf '%s\n' $missing | grep -cx "$c") rows of tests/bad/EXPECT ($c not built)"
done
echo "# hostile inputs: $n in EXPECT, $checked checked, $skipped skipped"
finish
