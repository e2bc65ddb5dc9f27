#!/usr/bin/env bash
# Crash safety of the commands that write outputs (bmplan shard and bmplan
# offload write folders, bmplan graph one file), on a small generated
# checkpoint (3 MiB):
#   - SIGKILL at 20 points of each command's run (10 into a fresh output,
#     10 replacing an older output with --force; for offload 10 more with
#     --merge into an older folder), chosen with a fixed seed among the
#     syscalls of a traced reference run that change the file system
#     (writes, syncs, renames, creations, removals; strace delivers the
#     signal at the chosen call). After each kill: the final name holds the
#     older output byte for byte, the complete new output, or nothing;
#     nothing else visible beside it but temporaries; the input unchanged.
#     Then the next run succeeds, gives the reference output and leaves no
#     temporaries (graph -o: single files take no lock, so a killed run's
#     hidden temporary file stays).
#   - Failing writes: a file-size limit (ulimit -f), injected ENOSPC / EIO /
#     EDQUOT at chosen calls, an unwritable parent folder, a missing
#     parent: exit 1, one line naming what failed, nothing partial, an older
#     output untouched.
#   - Two runs into one output at once: the second fails at once on the
#     lock, the first completes, the output is the reference.
# Without strace (or with CRASH_NO_STRACE=1) the kills fall back to timed
# SIGKILLs (same seed) and the tests that need strace are skipped.
. "$(dirname "$0")/lib.sh"
REAL=${BMPLAN_REAL:-$BMPLAN}
RANDOM=20240229 # the fixed seed of every choice below
commands=$("$REAL" --help 2>/dev/null | sed -n '/^commands:/,/^$/p' | awk 'NF {print $1}')
built() { printf '%s\n' "$commands" | grep -qx -- "$1"; }
have_strace=0
# LeakSanitizer cannot run under ptrace: traced runs of an ASan build go
# without it (the untraced runs keep it)
TRACE=(env "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" strace -f -qq)
[ -z "${CRASH_NO_STRACE:-}" ] && "${TRACE[@]}" -o /dev/null -e trace=none true 2>/dev/null && have_strace=1

# ---- inputs ------------------------------------------------------------------
le64() {
    local n=$1 i
    for i in 0 1 2 3 4 5 6 7; do printf "\\$(printf %03o $(( (n >> (8 * i)) & 255 )))"; done
}
# mkckpt FILE N: N float32 tensors of 512 KiB each, random bytes
mkckpt() {
    local json='{"__metadata__":{"format":"pt"}' off=0 i n=131072
    for i in $(seq 0 $(( $2 - 1 ))); do
        json="$json,\"model.layers.$i.weight\":{\"dtype\":\"F32\",\"shape\":[128,1024],\"data_offsets\":[$off,$((off + 4 * n))]}"
        off=$((off + 4 * n))
    done
    json="$json}"
    local pad=$(( (8 - ${#json} % 8) % 8 ))
    { le64 $(( ${#json} + pad )); printf '%s%*s' "$json" "$pad" ''; head -c "$off" /dev/urandom; } >"$1"
}
export LC_ALL=C
mkdir -p "$T/in" "$T/in2"
mkckpt "$T/in/model.safetensors" 6
mkckpt "$T/in2/model.safetensors" 5
SRC=$T/in/model.safetensors

# digest of a folder (names, modes and bytes of everything in it) or a file
tree_digest() {
    [ -e "$1" ] || { echo absent; return; }
    [ -d "$1" ] || { sha256sum <"$1" | cut -c1-16; return; }
    (cd "$1" 2>/dev/null && find . -printf '%p %y\n' | sort && find . -type f -print0 | sort -z |
        xargs -0 -r sha256sum) | sha256sum | cut -c1-16
}
input_digest=$(sha256sum <"$SRC")
# what may sit beside an output: the output and dot-prefixed temporaries
beside() { ls -A "$1" | grep -v -x -e out -e '\.out\..*' | head -3 | tr '\n' ' '; }

# CMD=(...) for KIND reading SRC into OUT; FORCE=(...) the flag that lets
# it replace an existing output; FSIZE a file-size limit (KiB) below the
# output's size
cmd_for() {
    local kind=$1 src=$2 out=$3
    case $kind in
        graph) CMD=(graph --from-checkpoint "$src" -o "$out" --format json); FORCE=(); FSIZE=0 ;;
        shard) CMD=(shard "$src" -o "$out" --max-shard-size 1MiB); FORCE=(--force); FSIZE=256 ;;
        offload) CMD=(offload "$src" -o "$out"); FORCE=(--force); FSIZE=256 ;;
    esac
}
# file-system syscalls a writer makes (the kill and fault points)
SYSCALLS=write,pwrite64,writev,copy_file_range,sendfile,fsync,fdatasync,sync_file_range,rename,renameat,renameat2,openat,unlink,unlinkat,mkdir,mkdirat,rmdir,ftruncate,fallocate
# output_calls LOG: from an strace -f log ("PID name(args) = ret"), the calls
# that change the file system (creating opens, writes other than to stdout
# and stderr, syncs, renames...), each as NAME:N, the N-th call of that name
# in its thread (strace counts injections per syscall and thread)
output_calls() {
    awk '{ pid = $1; sub(/^[0-9]+ +/, ""); if ($0 ~ /resumed>/) next
           name = $0; sub(/\(.*/, "", name); n[pid ":" name]++
           if (name == "openat" && $0 !~ /O_CREAT|O_WRONLY|O_RDWR/) next
           if ($0 ~ /^(write|pwrite64|writev)\([12],/) next
           print name ":" n[pid ":" name] }' "$1"
}

crash_test() {
    local kind=$1
    local d=$T/$kind
    mkdir -p "$d/ref-new" "$d/ref-old"
    cmd_for "$kind" "$SRC" "$d/ref-new/out"
    expect_rc 0 "$kind: reference run" -- "$REAL" "${CMD[@]}"
    cmd_for "$kind" "$T/in2/model.safetensors" "$d/ref-old/out"
    expect_rc 0 "$kind: an older output (another checkpoint)" -- "$REAL" "${CMD[@]}"
    local new old
    new=$(tree_digest "$d/ref-new/out"); old=$(tree_digest "$d/ref-old/out")
    [ "$new" != absent ] && [ "$new" != "$old" ] && ok "$kind: outputs differ" ||
        notok "$kind: reference outputs missing or equal"
    cmd_for "$kind" "$SRC" "$d/ref-new/again"
    "$REAL" "${CMD[@]}" >/dev/null 2>&1
    [ "$(tree_digest "$d/ref-new/again")" = "$new" ] && ok "$kind: output is deterministic" ||
        notok "$kind: two runs on one input differ"

    local merged=none
    if [ "$kind" = offload ]; then
        # --merge updates an older folder in place: its reference
        cp -a "$d/ref-old/out" "$d/ref-merge"
        cmd_for "$kind" "$SRC" "$d/ref-merge"
        expect_rc 0 "$kind: reference --merge run" -- "$REAL" "${CMD[@]}" --merge
        merged=$(tree_digest "$d/ref-merge")
    fi

    local fired=0 points=0 scenario scenarios="fresh replace"
    [ "$kind" = offload ] && scenarios="fresh replace merge"
    for scenario in $scenarios; do
        cmd_for "$kind" "$SRC" "$d/x"
        # per scenario: the flags, what the output may be after a kill, and
        # what the next run must give
        local flags=() again=() allowed=("absent" "$new") final=$new
        case $scenario in
            replace) flags=("${FORCE[@]}"); again=("${FORCE[@]}"); allowed=("$old" "$new") ;;
            merge) flags=(--merge); again=(--merge); allowed=("$old" "$merged"); final=$merged ;;
        esac
        # the calls of one whole run in this scenario
        local w=$d/trace-$scenario; mkdir -p "$w"
        [ $scenario = fresh ] || cp -a "$d/ref-old/out" "$w/out"
        cmd_for "$kind" "$SRC" "$w/out"
        local calls=()
        if [ $have_strace = 1 ]; then
            "${TRACE[@]}" -o "$w/log" -e trace=$SYSCALLS -- "$REAL" "${CMD[@]}" "${flags[@]}" >/dev/null 2>&1
            mapfile -t calls < <(output_calls "$w/log")
        else
            local t0; t0=$(date +%s%N)
            "$REAL" "${CMD[@]}" "${flags[@]}" >/dev/null 2>&1
            local ms=$(( ($(date +%s%N) - t0) / 1000000 + 1 ))
            local i; for i in $(seq 1 10); do calls+=("time:$(( ms * i / 10 ))"); done
        fi
        local total=${#calls[@]} npoints=10
        [ "$total" -lt 10 ] && npoints=$total
        [ "$total" -ge 3 ] || { notok "$kind $scenario: only $total kill points found"; continue; }
        local seg=$(( total / npoints )) i
        for i in $(seq 0 $(( npoints - 1 ))); do
            local pick=${calls[$(( i * seg + RANDOM % seg ))]}
            local name=${pick%%:*} k=${pick##*:}
            local p=$d/kill.$scenario.$i; mkdir -p "$p"
            [ $scenario = fresh ] || cp -a "$d/ref-old/out" "$p/out"
            cmd_for "$kind" "$SRC" "$p/out"
            local rc
            if [ "$name" = time ]; then
                "$REAL" "${CMD[@]}" "${flags[@]}" >/dev/null 2>&1 &
                local pid=$!
                sleep "$(printf '0.%03d' "$k")"
                kill -KILL "$pid" 2>/dev/null
                { wait "$pid"; } 2>/dev/null; rc=$?
            else
                # (grouped so that bash's "Killed" note goes nowhere)
                rc=$( { "${TRACE[@]}" -o /dev/null -e trace="$name" -e inject="$name":signal=KILL:when="$k" \
                    -- "$REAL" "${CMD[@]}" "${flags[@]}" >/dev/null 2>&1; echo $?; } 2>/dev/null )
            fi
            points=$((points + 1))
            [ $rc -eq 137 ] && fired=$((fired + 1))
            local got problems=""
            got=$(tree_digest "$p/out")
            if [ "$got" != "${allowed[0]}" ] && [ "$got" != "${allowed[1]}" ]; then
                if [ $scenario = fresh ]; then problems="$problems; a partial output under the final name"
                else problems="$problems; the older output was damaged"; fi
            fi
            [ $rc -eq 137 ] || [ $rc -eq 0 ] || problems="$problems; exit $rc"
            [ $rc -eq 0 ] && [ "$got" != "$final" ] && problems="$problems; exit 0 without the output"
            [ -z "$(beside "$p")" ] || problems="$problems; beside the output: $(beside "$p")"
            [ "$(sha256sum <"$SRC")" = "$input_digest" ] || problems="$problems; THE INPUT CHANGED"
            # the next run cleans up and succeeds
            local next=(); [ -e "$p/out" ] && next=("${again[@]}")
            "$REAL" "${CMD[@]}" "${next[@]}" >"$T/out" 2>"$T/err"
            local rc2=$?
            [ $rc2 -eq 0 ] || problems="$problems; the next run failed ($rc2: $(head -c 200 "$T/err"))"
            [ "$(tree_digest "$p/out")" = "$final" ] || problems="$problems; the next run's output differs"
            # single files (graph -o) are written without a lock, so a run
            # cannot tell a dead run's temporary from a live one's: those
            # stay, hidden; folder outputs must be clean
            local left; left=$(ls -A "$p" | grep -v -x out)
            [ "$kind" = graph ] && left=$(printf '%s\n' "$left" | grep -v '^\.out\.tmp\.')
            [ -z "$left" ] || problems="$problems; left after the next run: $(echo $left)"
            local what="$kind $scenario: killed at $name #$k"
            [ $rc -eq 137 ] || what="$kind $scenario: $name #$k not reached (completed)"
            if [ -z "$problems" ]; then
                ok "$what"
            else
                notok "$what: ${problems#; }"
            fi
            rm -rf "$p"
        done
    done
    # most chosen points must really interrupt the run (timed kills of a
    # run of a few milliseconds cannot promise that: only reported then)
    [ $have_strace = 0 ] && echo "# $kind: $fired of $points timed kills landed mid-way"
    [ $have_strace = 0 ] || [ $fired -ge $(( points * 3 / 4 )) ] && ok "$kind: $fired of $points runs were killed mid-way" ||
        notok "$kind: only $fired of $points runs were killed mid-way"
}

# expect_clean_failure KIND DIR WHAT [-- CMD...]: exit 1, one line, nothing
# beside DIR/out but what was there (the older output, digest in $old_here)
fail_check() {
    local what=$1 dir=$2 want_old=$3 rc=$4
    local problems=""
    [ "$rc" -eq 1 ] || problems="$problems; exit $rc, wanted 1"
    [ "$(wc -l <"$T/err")" -eq 1 ] || problems="$problems; $(wc -l <"$T/err") lines on stderr"
    if [ "$want_old" = absent ]; then
        [ -z "$(ls -A "$dir")" ] || problems="$problems; left: $(ls -A "$dir" | head -3 | tr '\n' ' ')"
    else
        [ "$(tree_digest "$dir/out")" = "$want_old" ] || problems="$problems; the older output changed"
        [ "$(ls -A "$dir")" = out ] || problems="$problems; left: $(ls -A "$dir" | tr '\n' ' ')"
    fi
    [ "$(sha256sum <"$SRC")" = "$input_digest" ] || problems="$problems; THE INPUT CHANGED"
    if [ -z "$problems" ]; then ok "$what"; else notok "$what: ${problems#; } ($(head -c 200 "$T/err"))"; fi
}

limits_test() {
    local kind=$1 d=$T/$kind-limits
    local old; old=$(tree_digest "$T/$kind/ref-old/out")
    mkdir -p "$d"
    # a file-size limit below the output size (ulimit -f counts KiB)
    local s
    for s in fresh replace; do
        if [ "$FSIZE" = 0 ] && [ -n "${BMPLAN_WRAPPER:-}" ]; then
            echo "skipped: a 0 KiB file-size limit for $kind (the wrapper cannot start under it)"
            break
        fi
        local p=$d/ulimit-$s force=(); mkdir -p "$p"
        local want=absent
        cmd_for "$kind" "$SRC" "$p/out"
        if [ $s = replace ]; then cp -a "$T/$kind/ref-old/out" "$p/out"; force=("${FORCE[@]}"); want=$old; fi
        # (stderr through a pipe: the limit applies to files it writes too)
        # (a wrapper such as valgrind writes files of its own first: it gets
        # the signal ignored for it; bmplan must ignore it by itself, as the
        # plain and sanitizer runs check)
        (ulimit -f "$FSIZE"; [ -n "${BMPLAN_WRAPPER:-}" ] && trap '' XFSZ
         exec "$BMPLAN" "${CMD[@]}" "${force[@]}") 2>&1 >/dev/null | cat >"$T/err"
        fail_check "$kind $s: a $FSIZE KiB file-size limit" "$p" "$want" "${PIPESTATUS[0]}"
        grep -q -i -e 'too large' -e 'space' -e 'limit' "$T/err" &&
            ok "$kind $s: the message says why" || notok "$kind $s: no reason in '$(head -c 200 "$T/err")'"
    done
    # an unwritable parent folder (root obeys the modes once it drops
    # CAP_DAC_OVERRIDE)
    local p=$d/ro; mkdir -p "$p"; chmod 555 "$p"
    cmd_for "$kind" "$SRC" "$p/out"
    local drop=(); [ "$(id -u)" = 0 ] && drop=(setpriv --bounding-set -dac_override,-dac_read_search --)
    "${drop[@]}" "$BMPLAN" "${CMD[@]}" >"$T/out" 2>"$T/err"
    fail_check "$kind: an unwritable output folder" "$p" absent $?
    grep -qF "$p" "$T/err" && ok "$kind: the message names the folder" || notok "$kind: message lacks $p"
    chmod 755 "$p"
    # a parent that does not exist; an output that is a file
    cmd_for "$kind" "$SRC" "$d/nonesuch/out"
    "$BMPLAN" "${CMD[@]}" >"$T/out" 2>"$T/err"
    fail_check "$kind: a missing parent folder" "$d/ro" absent $?
    if [ "$kind" != graph ]; then
        p=$d/file; mkdir -p "$p"; echo keep >"$p/out"
        cmd_for "$kind" "$SRC" "$p/out"
        local keep; keep=$(tree_digest "$p/out")
        "$BMPLAN" "${CMD[@]}" "${FORCE[@]}" >"$T/out" 2>"$T/err"
        fail_check "$kind: an output path that is a file" "$p" "$keep" $?
        [ "$(cat "$p/out")" = keep ] && ok "$kind: the file is kept" || notok "$kind: the file was changed"
    fi

    # symlinks planted beside the output must never lead a run elsewhere: an
    # output name that is a link to another folder or file, and links named
    # like a killed run's temporaries
    p=$d/links; mkdir -p "$p/victim"; echo precious >"$p/victim/keep"
    local victim; victim=$(tree_digest "$p/victim")
    cmd_for "$kind" "$SRC" "$p/out"
    if [ "$kind" = graph ]; then
        ln -s victim/keep "$p/out"
        "$BMPLAN" "${CMD[@]}" >"$T/out" 2>"$T/err"
        [ $? -eq 0 ] && [ -f "$p/out" ] && [ ! -L "$p/out" ] &&
            ok "$kind: an output name that is a link is replaced, not followed" ||
            notok "$kind: output through a link: $(head -c 200 "$T/err")"
    else
        ln -s victim "$p/out"
        "$BMPLAN" "${CMD[@]}" "${FORCE[@]}" >"$T/out" 2>"$T/err"
        local rc=$?
        [ $rc -eq 1 ] && [ -L "$p/out" ] && ok "$kind: an output name that is a link is refused" ||
            notok "$kind: output through a link: exit $rc, $(head -c 200 "$T/err")"
        rm "$p/out"
        ln -s victim "$p/.out.tmp-1"
        "$BMPLAN" "${CMD[@]}" >"$T/out" 2>"$T/err"
        [ $? -eq 0 ] && [ ! -e "$p/.out.tmp-1" ] && [ ! -L "$p/.out.tmp-1" ] &&
            ok "$kind: a link named like a stale temporary is removed, not followed" ||
            notok "$kind: stale-temporary link: $(ls -A "$p" | tr '\n' ' ') $(head -c 200 "$T/err")"
    fi
    [ "$(tree_digest "$p/victim")" = "$victim" ] && ok "$kind: the link's target is untouched" ||
        notok "$kind: a run wrote through a link"

    # injected failures at calls chosen from the traced runs: a full disk
    # or a quota at a write or a creation, an I/O error at a sync, a failed
    # rename, in a fresh and in a replacing run
    [ $have_strace = 1 ] || { echo "skipped: injected write failures (strace cannot run here)"; return; }
    [ -z "${BMPLAN_WRAPPER:-}" ] || { echo "skipped: injected write failures (under ${BMPLAN_WRAPPER%% *})"; return; }
    local injected=0
    for s in fresh replace; do
        local log=$T/$kind/trace-$s/log
        [ -s "$log" ] || { notok "$kind $s: no trace to choose failures from"; continue; }
        local name
        for name in write pwrite64 copy_file_range openat mkdir mkdirat fsync fdatasync rename renameat renameat2 unlinkat; do
            local ks; mapfile -t ks < <(output_calls "$log" | grep "^$name:" | cut -d: -f2)
            [ ${#ks[@]} -gt 0 ] || continue
            local k=${ks[$(( ${#ks[@]} / 2 ))]} errno
            case $name in
                write|pwrite64|copy_file_range) errno=ENOSPC; [ $s = replace ] && errno=EDQUOT ;;
                openat|mkdir|mkdirat) errno=ENOSPC ;;
                *) errno=EIO ;;
            esac
            local p=$d/inj-$name-$s force=() want=absent; mkdir -p "$p"
            cmd_for "$kind" "$SRC" "$p/out"
            if [ $s = replace ]; then cp -a "$T/$kind/ref-old/out" "$p/out"; force=("${FORCE[@]}"); want=$old; fi
            "${TRACE[@]}" -o "$T/inj.log" -e trace="$name" -e inject="$name":error="$errno":when="$k" \
                -- "$REAL" "${CMD[@]}" "${force[@]}" >"$T/out" 2>"$T/err"
            local rc=$?
            if ! grep -q "(INJECTED)" "$T/inj.log"; then
                notok "$kind $s: $name #$k was not reached"; continue
            fi
            injected=$((injected + 1))
            if [ $rc -eq 0 ]; then
                # a failure after the output is in place (syncing its folder,
                # removing a replaced folder or the lock) cannot be undone:
                # then the run may succeed, with the complete output
                [ "$(tree_digest "$p/out")" = "$(tree_digest "$T/$kind/ref-new/out")" ] &&
                    [ "$(ls -A "$p")" = out ] &&
                    ok "$kind $s: $errno at $name #$k came after the commit; output complete" ||
                    notok "$kind $s: $errno at $name #$k: exit 0 with a wrong output"
                continue
            fi
            fail_check "$kind $s: $errno at $name #$k" "$p" "$want" $rc
        done
    done
    [ $injected -ge 4 ] && ok "$kind: $injected failures injected" || notok "$kind: only $injected failures injected"
}

lock_test() {
    local kind=$1 d=$T/$kind-lock
    mkdir -p "$d"
    local new; new=$(tree_digest "$T/$kind/ref-new/out")
    cmd_for "$kind" "$SRC" "$d/out"
    [ $have_strace = 1 ] || { echo "skipped: concurrent runs (strace cannot run here)"; return; }
    # the first run is slowed at each sync so that it holds the lock for
    # a while; the second starts once the first's temporaries appear
    "${TRACE[@]}" -o /dev/null -e trace=fsync,fdatasync -e inject=fsync,fdatasync:delay_enter=300000 \
        -- "$REAL" "${CMD[@]}" >"$T/first.out" 2>"$T/first.err" &
    local pid=$! waited=0
    while [ -z "$(ls -A "$d")" ] && [ $waited -lt 200 ]; do sleep 0.05; waited=$((waited + 1)); done
    local t0=$SECONDS
    "$BMPLAN" "${CMD[@]}" --force >"$T/out" 2>"$T/err"
    local rc=$? took=$((SECONDS - t0))
    [ $rc -eq 1 ] && ok "$kind: a second run into the same output fails" || notok "$kind: second run exit $rc"
    [ "$(wc -l <"$T/err")" -eq 1 ] && grep -q -i -e lock -e another "$T/err" &&
        ok "$kind: it says another run holds the lock" || notok "$kind: lock message: $(head -c 200 "$T/err")"
    [ $took -le 5 ] && ok "$kind: it fails at once" || notok "$kind: it waited ${took}s"
    wait $pid
    local rc1=$?
    [ $rc1 -eq 0 ] && ok "$kind: the first run completes" || notok "$kind: first run exit $rc1: $(head -c 200 "$T/first.err")"
    [ "$(tree_digest "$d/out")" = "$new" ] && ok "$kind: its output is intact" || notok "$kind: output corrupted"
    [ "$(ls -A "$d")" = out ] && ok "$kind: no lock or temporary left" || notok "$kind: left $(ls -A "$d" | tr '\n' ' ')"
}

for kind in graph shard offload; do
    if ! built "$kind"; then
        echo "skipped: crash safety of bmplan $kind ($kind not built)"
        continue
    fi
    if [ -n "${BMPLAN_WRAPPER:-}" ]; then
        echo "skipped: SIGKILL points of bmplan $kind (under ${BMPLAN_WRAPPER%% *})"
        mkdir -p "$T/$kind/ref-new" "$T/$kind/ref-old"
        cmd_for "$kind" "$SRC" "$T/$kind/ref-new/out"; "$REAL" "${CMD[@]}" >/dev/null 2>&1
        cmd_for "$kind" "$T/in2/model.safetensors" "$T/$kind/ref-old/out"; "$REAL" "${CMD[@]}" >/dev/null 2>&1
    else
        crash_test "$kind"
    fi
    limits_test "$kind"
    [ "$kind" = graph ] || lock_test "$kind"
done
finish
