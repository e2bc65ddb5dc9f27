/*
 * opts.c - declarative option parsing and --help generation, after git's
 * parse-options: each subcommand's option table is the single source of its
 * parser and its help text.
 */
#include "cli.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void cli_list_free(cli_list *l)
{
    free(l->items);
    l->items = NULL;
    l->n = l->cap = 0;
}

static int list_push(cli_list *l, const char *s)
{
    if (l->n == l->cap) {
        int nc = l->cap ? l->cap * 2 : 8;
        const char **ni = realloc(l->items, (size_t)nc * sizeof *ni);
        if (!ni)
            return -1;
        l->items = ni;
        l->cap = nc;
    }
    l->items[l->n++] = s;
    return 0;
}

int cli_errorf(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "bmplan %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return CLI_EXIT_FAIL;
}

void cli_warn(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "bmplan %s: warning: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int cli_fail(const char *cmd, const bm_error *err)
{
    fprintf(stderr, "bmplan %s: %s\n", cmd,
            err && err->msg[0] ? err->msg : bm_strerror(err ? err->code : BM_E_INTERNAL));
    return CLI_EXIT_FAIL;
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "bmplan %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'bmplan %s --help'.\n", cmd);
    return CLI_EXIT_USAGE;
}

void cli_print_help(FILE *out, const char *cmd, const char *const *usage,
                    const char *description, const cli_option *opts)
{
    for (int i = 0; usage && usage[i]; i++)
        fprintf(out, "%s bmplan %s %s\n", i == 0 ? "usage:" : "      ", cmd, usage[i]);
    if (description)
        fprintf(out, "\n%s\n", description);
    fprintf(out, "\noptions:\n");
    for (const cli_option *o = opts; o && o->kind != CLI_END; o++) {
        char left[128];
        int n = 0;
        if (o->short_name)
            n = snprintf(left, sizeof left, "-%c, ", o->short_name);
        else
            n = snprintf(left, sizeof left, "    ");
        snprintf(left + n, sizeof left - (size_t)n, "--%s%s%s", o->long_name,
                 o->arg ? " " : "", o->arg ? o->arg : "");
        if (strlen(left) > 26)
            fprintf(out, "  %s\n  %-26s  %s\n", left, "", o->help);
        else
            fprintf(out, "  %-26s  %s\n", left, o->help);
    }
    fprintf(out, "  %-26s  %s\n", "-h, --help", "show this help and exit");
}

static const cli_option *find_long(const cli_option *opts, const char *name, size_t len)
{
    for (const cli_option *o = opts; o && o->kind != CLI_END; o++)
        if (strlen(o->long_name) == len && strncmp(o->long_name, name, len) == 0)
            return o;
    return NULL;
}

static const cli_option *find_short(const cli_option *opts, char c)
{
    for (const cli_option *o = opts; o && o->kind != CLI_END; o++)
        if (o->short_name == c)
            return o;
    return NULL;
}

static int apply(const char *cmd, const cli_option *o, const char *val)
{
    switch (o->kind) {
    case CLI_FLAG:
        *(bool *)o->value = true;
        return 0;
    case CLI_STRING:
        *(const char **)o->value = val;
        return 0;
    case CLI_INT: {
        char *end;
        errno = 0;
        long v = strtol(val, &end, 10);
        if (errno || end == val || *end)
            return cli_usage_error(cmd, "--%s expects an integer, got '%s'", o->long_name, val);
        *(long *)o->value = v;
        return 0;
    }
    case CLI_LIST:
        if (list_push((cli_list *)o->value, val) < 0)
            return cli_errorf(cmd, "out of memory");
        return 0;
    default:
        return 0;
    }
}

int cli_parse(const char *cmd, const char *const *usage, const char *description,
              const cli_option *opts, int argc, char **argv, char ***pos, int *npos)
{
    char **p = calloc((size_t)argc + 1, sizeof *p);
    if (!p)
        return cli_errorf(cmd, "out of memory");
    int np = 0;
    bool only_pos = false;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (only_pos || a[0] != '-' || a[1] == 0) {
            p[np++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_pos = true;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            cli_print_help(stdout, cmd, usage, description, opts);
            free(p);
            return -1;
        }
        const cli_option *o;
        const char *val = NULL;
        if (a[1] == '-') {
            const char *name = a + 2;
            const char *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            o = find_long(opts, name, len);
            if (!o) {
                free(p);
                return cli_usage_error(cmd, "unknown option '%.*s'", (int)len + 2, a);
            }
            if (eq) {
                if (o->kind == CLI_FLAG) {
                    free(p);
                    return cli_usage_error(cmd, "option '--%s' takes no value", o->long_name);
                }
                val = eq + 1;
            }
        } else {
            o = find_short(opts, a[1]);
            if (!o) {
                free(p);
                return cli_usage_error(cmd, "unknown option '-%c'", a[1]);
            }
            if (a[2]) {
                if (o->kind == CLI_FLAG) {
                    free(p);
                    return cli_usage_error(cmd, "unknown option '%s'", a);
                }
                val = a + 2;
            }
        }
        if (o->kind != CLI_FLAG && !val) {
            if (i + 1 >= argc) {
                free(p);
                return cli_usage_error(cmd, "option '--%s' needs a value (%s)",
                                       o->long_name, o->arg ? o->arg : "VALUE");
            }
            val = argv[++i];
        }
        int rc = apply(cmd, o, val);
        if (rc) {
            free(p);
            return rc;
        }
    }
    p[np] = NULL;
    *pos = p;
    *npos = np;
    return 0;
}

int cli_write_output(const char *cmd, const char *path, const char *text, size_t len)
{
    if (!path || strcmp(path, "-") == 0) {
        if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0)
            return cli_errorf(cmd, "writing to standard output: %s", strerror(errno));
        return CLI_EXIT_OK;
    }
    bm_error err = {0};
    if (bm_write_file_atomic(path, text, len, &err))
        return cli_fail(cmd, &err);
    return CLI_EXIT_OK;
}

char *cli_text_line(char *text)
{
    if (!text)
        return NULL;
    size_t len = strlen(text);
    char *t2 = realloc(text, len + 2);
    if (!t2) {
        free(text);
        return NULL;
    }
    memcpy(t2 + len, "\n", 2);
    return t2;
}

char *cli_json_text(const void *json, size_t flags)
{
    return cli_text_line(json_dumps((const json_t *)json, flags));
}
