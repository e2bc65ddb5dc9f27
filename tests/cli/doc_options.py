#!/usr/bin/env python3
"""doc_options.py - what a --help text or a man page documents, one fact a
line, for tests/cli/test_manpages.sh to compare (standard library only).

  doc_options.py help < HELP_TEXT
      option<TAB>--long<TAB>ARG<TAB>-s    each entry of the "options:" list
      usage<TAB>--long                    options named in the usage lines
      command<TAB>NAME                    each entry of the "commands:" list

  doc_options.py man FILE
      title<TAB>TITLE  /  name<TAB>NAME   the .TH title and the NAME entry
      tag<TAB>--long<TAB>ARG<TAB>-s       each .TP tag of OPTIONS
      synopsis<TAB>--long                 options in SYNOPSIS
      body<TAB>--long                     options named anywhere else, except
      example<TAB>COMMAND<TAB>--long      EXAMPLES, where each option goes with
                                          the `bmplan COMMAND` line it is on
      command<TAB>NAME                    .TP tags of COMMANDS (bmplan(1))
      seealso<TAB>NAME                    pages named in SEE ALSO
      badmacro<TAB>LINE<TAB>MACRO         a request man(7) does not define
      notitle                             no .TH before the first section

ARG is "-" for a flag, the short option "-" when there is none.
"""
import re
import sys

LONG = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)")

# man(7) macros and the few roff requests man pages commonly use.
KNOWN = set("""TH SH SS TP TQ IP HP LP P PP RS RE B I R SB SM BI BR IB IR RB RI
    nf fi br sp in ti ad na ne ft ce hy nh UR UE MT ME EX EE OP SY YS ie if el
    ds de mso so""".split())

SPECIAL = {"dq": '"', "aq": "'", "em": "--", "en": "-", "bu": "*", "co": "(c)",
           "lq": '"', "rq": '"', "oq": "'", "cq": "'", "ti": "~", "ha": "^"}


def unescape(s):
    """Roff text as it reads: fonts dropped, \\- as -, named glyphs."""
    s = re.sub(r"\\f(\[[^]]*\]|\(..|.)", "", s)
    s = re.sub(r"\\\((..)", lambda m: SPECIAL.get(m.group(1), "?"), s)
    s = re.sub(r"\\\[(\w+)\]", lambda m: SPECIAL.get(m.group(1), "?"), s)
    s = s.replace("\\-", "-").replace("\\&", "").replace("\\c", "")
    s = s.replace("\\ ", " ").replace("\\e", "\\").replace("\\|", "").replace("\\^", "")
    return s


def roff_args(rest):
    """Arguments of a macro line: blank-separated, "..." groups, "" in quotes is "."""
    args, i, n = [], 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t":
            i += 1
        if i >= n:
            break
        if rest[i] == '"':
            i += 1
            cur = []
            while i < n:
                if rest[i] == '"':
                    if i + 1 < n and rest[i + 1] == '"':
                        cur.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                cur.append(rest[i])
                i += 1
            args.append("".join(cur))
        else:
            j = i
            while j < n and rest[j] not in " \t":
                j += 1
            args.append(rest[i:j])
            i = j
    return args


def line_text(line):
    """The text a line puts on the page (macro lines: their arguments)."""
    if not line.startswith((".", "'")):
        return unescape(line)
    m = re.match(r"[.'](\S+)\s*(.*)", line)
    if not m:
        return ""
    macro, rest = m.group(1), m.group(2)
    args = roff_args(rest)
    if macro in ("BI", "BR", "IB", "IR", "RB", "RI"):
        return unescape("".join(args))
    if macro in ("B", "I", "SB", "SM", "TP", "IP", "HP", "SH", "SS", "TH"):
        return unescape(" ".join(args))
    return ""


def parse_tag(text):
    """'-o, --output DIR' -> (--output, DIR, -o); '-o FILE, --output FILE' too."""
    longs = LONG.findall(text)
    if not longs:
        return None
    long_opt = longs[0]
    after = text.split(long_opt, 1)[1].split()
    arg = after[0].rstrip(",") if after else "-"
    short = re.search(r"(?<![\w-])(-[A-Za-z])(?![\w-])", text.split(long_opt, 1)[0])
    return long_opt, arg, short.group(1) if short else "-"


def cmd_help(text):
    section = "usage"
    for line in text.splitlines():
        if line in ("options:", "commands:"):
            section = line[:-1]
            continue
        if section == "usage" and line.strip() == "":
            section = "description"
        if section == "usage":
            for o in LONG.findall(line):
                print("usage\t" + o)
        elif section == "options":
            m = re.match(r"^  (?:(-[A-Za-z]), )?\s*(--[a-z0-9][a-z0-9-]*)(?: (\S+))?", line)
            if m:
                print("option\t%s\t%s\t%s" % (m.group(2), m.group(3) or "-", m.group(1) or "-"))
        elif section == "commands":
            m = re.match(r"^  ([a-z][a-z0-9-]*)\s", line)
            if m:
                print("command\t" + m.group(1))
            elif line.strip() == "":
                section = "end"


def cmd_man(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    # Join \c continuations so that a tag split over lines reads as one.
    joined, cur = [], None
    for line in lines:
        if cur is not None:
            cur = (cur[0], cur[1] + " " + line)
        else:
            cur = (len(joined) + 1, line)
        if line.rstrip().endswith("\\c"):
            continue
        joined.append(cur)
        cur = None
    if cur is not None:
        joined.append(cur)

    section, seen_th, tag_next, example_cmd = None, False, False, None
    for lineno, line in joined:
        if line.startswith(".\\\"") or line.startswith("'\\\"") or line in (".", ""):
            continue
        if line.startswith((".", "'")):
            m = re.match(r"[.'](\S+)", line)
            macro = m.group(1) if m else ""
            if macro not in KNOWN:
                print("badmacro\t%d\t%s" % (lineno, macro))
            if macro == "TH":
                seen_th = True
                args = roff_args(line[3:])
                print("title\t" + (unescape(args[0]) if args else ""))
                continue
            if macro == "SH":
                if not seen_th:
                    print("notitle")
                    seen_th = True
                section = " ".join(roff_args(line[3:])).upper()
                tag_next = False
                continue
            if macro == "TP":
                tag_next = True
                continue
        text = line_text(line)
        if section == "NAME":
            m = re.match(r"\s*(\S+?),?\s", text)
            if m:
                print("name\t" + m.group(1))
            section = "NAME-done"
        elif section == "SYNOPSIS":
            for o in LONG.findall(text):
                print("synopsis\t" + o)
        elif section == "OPTIONS" and tag_next:
            tag = parse_tag(text)
            if tag:
                print("tag\t%s\t%s\t%s" % tag)
        elif section == "COMMANDS" and tag_next:
            w = text.split()
            if w:
                print("command\t" + w[0])
        elif section == "SEE ALSO":
            for name in re.findall(r"([a-z][a-z0-9-]*)\s*\(\d\)", text):
                print("seealso\t" + name)
        elif section == "EXAMPLES":
            m = re.search(r"(?:^|\s)bmplan\s+([a-z][a-z0-9-]*)", text)
            if m:
                example_cmd = m.group(1)
            if example_cmd:
                for o in LONG.findall(text):
                    print("example\t%s\t%s" % (example_cmd, o))
            if not text.rstrip().endswith("\\"):
                example_cmd = None
        elif section is not None:
            for o in LONG.findall(text):
                print("body\t" + o)
        if section == "OPTIONS" and tag_next:
            # the tag's own options are not body text; the next lines are
            tag_next = False
            continue
        tag_next = False
    if not seen_th:
        print("notitle")


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "help":
        cmd_help(sys.stdin.read())
    elif len(sys.argv) == 3 and sys.argv[1] == "man":
        cmd_man(sys.argv[2])
    else:
        sys.stderr.write("usage: doc_options.py help < TEXT | doc_options.py man FILE\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
