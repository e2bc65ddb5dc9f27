/*
 * cli.h - the command table and declarative option parsing shared by every
 * subcommand. A subcommand declares its options once, as a table; the same
 * table parses argv and prints --help.
 */
#ifndef BM_CLI_H
#define BM_CLI_H

#include "bmplan.h"

typedef enum cli_opt_kind {
    CLI_END = 0,
    CLI_FLAG,   /* bool *                      */
    CLI_STRING, /* const char ** (last wins)   */
    CLI_INT,    /* long *                      */
    CLI_LIST,   /* cli_list * (repeatable)     */
} cli_opt_kind;

typedef struct cli_list {
    const char **items;
    int n, cap;
} cli_list;

typedef struct cli_option {
    cli_opt_kind kind;
    char short_name;       /* 0 = none */
    const char *long_name; /* without "--" */
    void *value;
    const char *arg;       /* name of the argument in help, e.g. "FILE" */
    const char *help;
} cli_option;

typedef struct cli_command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} cli_command;

/* Exit codes */
enum { CLI_EXIT_OK = 0, CLI_EXIT_FAIL = 1, CLI_EXIT_USAGE = 2 };

/* Parse argv[1..] against opts. Positional arguments are collected into
 * *pos (argv pointers, NULL-terminated array owned by the caller: free()).
 * Returns 0 on success, CLI_EXIT_USAGE after printing a usage error,
 * or -1 when --help was printed (the caller exits 0).
 * `usage` lines are printed by --help before the option list. */
int cli_parse(const char *cmd, const char *const *usage, const char *description,
              const cli_option *opts, int argc, char **argv, char ***pos, int *npos);

void cli_print_help(FILE *out, const char *cmd, const char *const *usage,
                    const char *description, const cli_option *opts);

/* "bmplan CMD: message" on stderr; returns CLI_EXIT_FAIL. */
int cli_fail(const char *cmd, const bm_error *err);
int cli_errorf(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* usage error: message, then "Try 'bmplan CMD --help'."; returns 2 */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cli_warn(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void cli_list_free(cli_list *l);

/* Write text to -o FILE atomically, or to stdout when path is NULL or "-". */
int cli_write_output(const char *cmd, const char *path, const char *text, size_t len);
/* json_dumps(json, flags) (json is a json_t *) plus a final newline, the
 * way every --json output ends; NULL when out of memory. */
char *cli_json_text(const void *json, size_t flags);
/* text (malloc'ed, taken over) with a newline added; NULL when out of
 * memory (text freed) or when text is NULL. */
char *cli_text_line(char *text);

/* Add the budgets of one --max-memory SPEC to b: "auto" reads this
 * machine as accelerate's get_max_memory() does (every GPU's free bytes,
 * then "cpu" = available RAM; without `gpus`, the RAM alone) and says on
 * stderr what it found; anything else is bm_budgets_parse. *auto_used is
 * set for "auto". */
bm_status cli_budgets_add(const char *cmd, bm_budgets *b, const char *spec, bm_compat compat,
                          bool gpus, bool *auto_used, bm_error *err);
/* With budgets from "auto" alone and a balanced strategy, accelerate's
 * get_balanced_memory (max_memory=None) keeps 10% of a single GPU free:
 * that GPU's budget x 0.9. Nothing otherwise. */
void cli_budgets_auto_reserve(const char *cmd, bm_budgets *b, bool auto_only, bool balanced);

/* The command table (main.c). */
extern const cli_command cli_commands[];
const cli_command *cli_find_command(const char *name);

/* Subcommands */
int cmd_inspect(int argc, char **argv);
int cmd_graph(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_shard(int argc, char **argv);
int cmd_offload(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_estimate(int argc, char **argv);
int cmd_fleet(int argc, char **argv);

#endif
