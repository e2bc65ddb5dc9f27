#!/usr/bin/env bash
# Man pages against --help: every command `bmplan --help` lists has
# man/bmplan-CMD.1; the options its --help prints are the ones the page's
# OPTIONS documents (same argument name, same short form) and the other way
# round; SYNOPSIS, the text and EXAMPLES name only options that exist;
# bmplan(1) lists every command; every page renders without a warning
# (groff -ww when installed, else a check of .TH and the macros used).
# Commands are read from `bmplan --help`, so new ones are checked as they
# are added to the command table.
. "$(dirname "$0")/lib.sh"
M=$ROOT/man
facts() { python3 "$ROOT/tests/cli/doc_options.py" "$@"; }
# col KIND FILE: the second column of FILE's KIND lines, sorted, unique
col() { awk -F'\t' -v k="$1" '$1 == k { print $2 }' "$2" | sort -u; }
# rows KIND FILE: the rest of FILE's KIND lines (option, argument, short form)
rows() { awk -F'\t' -v k="$1" 'BEGIN { OFS = "\t" } $1 == k { print $2, $3, $4 }' "$2" | sort -u; }
# only_in A B: lines of A that are not in B, on one line
only_in() { comm -23 "$1" "$2" | tr '\n' ' ' | sed 's/ $//'; }
# same_set WHAT A B: A and B hold the same lines
subset() { # subset WHAT A B: every line of A is in B
    local extra; extra=$(only_in "$2" "$3")
    if [ -z "$extra" ]; then ok "$1"; else notok "$1: $extra"; fi
}

have_groff=0
if command -v groff >/dev/null 2>&1; then have_groff=1; else echo "# groff not installed: man pages checked by the macro check only"; fi
renders() { # renders PAGE FACTS
    local page=$1 f=$2 name; name=$(basename "$page")
    local bad; bad=$(awk -F'\t' '$1 == "badmacro" { printf "line %s .%s; ", $2, $3 } $1 == "notitle" { printf "no .TH first; " }' "$f")
    if grep -q '^title' "$f" && [ -z "$bad" ]; then ok "$name: .TH first, man(7) macros only"; else notok "$name: $bad"; fi
    if [ $have_groff = 1 ]; then
        groff -man -Tutf8 -ww -z "$page" >"$T/groff" 2>&1
        if [ ! -s "$T/groff" ]; then ok "$name renders without warnings"; else notok "$name: $(head -c 300 "$T/groff")"; fi
    fi
}

# help_of CMD: the facts of `bmplan CMD --help` in $T/CMD.help (cached)
help_of() {
    [ -s "$T/$1.help" ] && return 0
    "$BMPLAN" "$1" --help >"$T/$1.txt" 2>"$T/$1.err" || return 1
    facts help <"$T/$1.txt" >"$T/$1.help"
}

# The commands and the main page
expect_rc 0 "bmplan --help" -- "$BMPLAN" --help
facts help <"$T/out" >"$T/main.help"
col command "$T/main.help" >"$T/cmds"
n=$(wc -l <"$T/cmds")
if [ "$n" -ge 7 ]; then ok "bmplan --help lists $n commands"; else notok "bmplan --help lists $n commands: $(cat "$T/cmds")"; fi
facts man "$M/bmplan.1" >"$T/main.man"
renders "$M/bmplan.1" "$T/main.man"
col command "$T/main.man" >"$T/main.cmds"
subset "bmplan.1 COMMANDS lists every command" "$T/cmds" "$T/main.cmds"
sed 's/^/bmplan-/' "$T/cmds" >"$T/pages"
col seealso "$T/main.man" >"$T/main.see"
subset "bmplan.1 SEE ALSO names every command's page" "$T/pages" "$T/main.see"
col synopsis "$T/main.man" >"$T/main.syn"
col usage "$T/main.help" >"$T/main.usage"
subset "bmplan --help usage options are in bmplan.1 SYNOPSIS" "$T/main.usage" "$T/main.syn"
subset "bmplan.1 SYNOPSIS options are in bmplan --help" "$T/main.syn" "$T/main.usage"
# every command's options, for the text of the pages
: >"$T/all.opts"
while read -r cmd; do
    help_of "$cmd" && col option "$T/$cmd.help" >>"$T/all.opts"
done <"$T/cmds"
sort -u -o "$T/all.opts" "$T/all.opts"
col body "$T/main.man" >"$T/main.body"
sort -u "$T/main.usage" "$T/all.opts" >"$T/main.any"
subset "bmplan.1 text names only options bmplan has" "$T/main.body" "$T/main.any"

while read -r cmd; do
    page=$M/bmplan-$cmd.1
    if [ -f "$page" ]; then ok "man/bmplan-$cmd.1 exists"; else notok "man/bmplan-$cmd.1 is missing"; continue; fi
    if help_of "$cmd"; then ok "bmplan $cmd --help exits 0"; else notok "bmplan $cmd --help failed: $(head -c 300 "$T/$cmd.err")"; continue; fi
    "$BMPLAN" help "$cmd" >"$T/$cmd.help2" 2>&1
    if cmp -s "$T/$cmd.txt" "$T/$cmd.help2"; then ok "bmplan help $cmd prints the same"; else notok "bmplan help $cmd differs from bmplan $cmd --help"; fi
    h=$T/$cmd.help f=$T/$cmd.man
    facts man "$page" >"$f"
    renders "$page" "$f"
    want=$(echo "bmplan-$cmd" | tr a-z A-Z)
    if [ "$(col title "$f")" = "$want" ] && [ "$(col name "$f")" = "bmplan-$cmd" ]; then
        ok "bmplan-$cmd.1: .TH $want, NAME bmplan-$cmd"
    else
        notok "bmplan-$cmd.1: .TH '$(col title "$f")', NAME '$(col name "$f")'"
    fi

    col option "$h" >"$T/h.opts"
    col tag "$f" >"$T/m.opts"
    subset "$cmd: every --help option has an OPTIONS entry" "$T/h.opts" "$T/m.opts"
    subset "$cmd: every OPTIONS entry is a --help option" "$T/m.opts" "$T/h.opts"
    # argument name and short form, for the options both document
    rows option "$h" | awk -F'\t' 'NR == FNR { k[$1] = 1; next } $1 in k' "$T/m.opts" - >"$T/h.rows"
    rows tag "$f" | awk -F'\t' 'NR == FNR { k[$1] = 1; next } $1 in k' "$T/h.opts" - >"$T/m.rows"
    if cmp -s "$T/h.rows" "$T/m.rows"; then
        ok "$cmd: OPTIONS gives each option the argument and short form --help gives"
    else
        notok "$cmd: --help has [$(only_in "$T/h.rows" "$T/m.rows" | tr '\t' ' ')], the man page [$(only_in "$T/m.rows" "$T/h.rows" | tr '\t' ' ')]"
    fi
    col usage "$h" >"$T/h.usage"
    col synopsis "$f" >"$T/m.syn"
    subset "$cmd: options of the --help usage lines are in SYNOPSIS" "$T/h.usage" "$T/m.syn"
    subset "$cmd: SYNOPSIS names only options of --help" "$T/m.syn" "$T/h.opts"
    # the text may name another command's option ("the map bmplan plan
    # --strategy balanced gives"), but not one no command has
    col body "$f" >"$T/m.body"
    sort -u "$T/h.opts" "$T/all.opts" >"$T/h.any"
    subset "$cmd: the page's text names only options of --help (or of another command)" "$T/m.body" "$T/h.any"
    # EXAMPLES: each option against the command of its line
    bad=""
    while IFS=$'\t' read -r _ ecmd eopt; do
        if ! grep -qx "$ecmd" "$T/cmds" || ! help_of "$ecmd"; then bad="$bad bmplan $ecmd (no such command);"; continue; fi
        col option "$T/$ecmd.help" | grep -qx -- "$eopt" || bad="$bad bmplan $ecmd $eopt;"
    done < <(grep '^example' "$f")
    if [ -z "$bad" ]; then ok "$cmd: EXAMPLES use existing options"; else notok "$cmd: EXAMPLES use$bad"; fi
done <"$T/cmds"
finish
