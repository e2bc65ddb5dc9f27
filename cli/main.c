/*
 * main.c - the bmplan program: the command table and dispatch.
 * Invoked as "bmrun" it behaves as "bmplan run".
 */
#include "cli.h"

#include <libgen.h>
#include <signal.h>
#include <string.h>

/* One line per subcommand; `bmplan --help` lists them in this order. */
const cli_command cli_commands[] = {
    {"inspect", cmd_inspect, "show a model's module tree, sizes, largest layer and shards"},
    {"graph", cmd_graph, "write a model graph file from a config.json or a checkpoint"},
    {"plan", cmd_plan, "compute a device map (accelerate's infer_auto_device_map)"},
    {"check", cmd_check, "validate a device map against a model and budgets"},
    {"shard", cmd_shard, "re-shard a checkpoint into a model folder, converting dtypes"},
    {"offload", cmd_offload, "write accelerate's disk-offload folder from a checkpoint"},
    {"verify", cmd_verify, "check a model folder or offload folder against its digests"},
    {"run", cmd_run, "run a model dispatched by its device map (also: bmrun)"},
    {"estimate", cmd_estimate, "memory for weights, KV cache and workspace"},
    {"fleet", cmd_fleet, "how many GPUs of a type a model needs"},
    {NULL, NULL, NULL},
};

const cli_command *cli_find_command(const char *name)
{
    for (const cli_command *c = cli_commands; c->name; c++)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

static void main_help(FILE *out)
{
    fprintf(out,
            "usage: bmplan COMMAND [ARGS...]\n"
            "       bmplan help COMMAND | bmplan COMMAND --help\n"
            "       bmplan --version\n"
            "\n"
            "Plan, shard, offload and run models larger than one GPU, the way\n"
            "Hugging Face accelerate's big-model features do.\n"
            "\n"
            "commands:\n");
    for (const cli_command *c = cli_commands; c->name; c++)
        fprintf(out, "  %-10s %s\n", c->name, c->summary);
    fprintf(out,
            "\n"
            "exit status: 0 success, 1 bad input or environment, 2 usage error.\n"
            "See bmplan(1) and bmplan-COMMAND(1).\n");
}

static int run_command(const cli_command *c, int argc, char **argv)
{
    int rc = c->fn(argc, argv);
    return rc < 0 ? CLI_EXIT_OK : rc;
}

int main(int argc, char **argv)
{
    /* Past a file-size limit (ulimit -f) a write must fail with EFBIG, which
     * the writers report and clean up after, rather than kill the process
     * half-way through an output. */
    signal(SIGXFSZ, SIG_IGN);
    const char *prog = argc > 0 ? basename(argv[0]) : "bmplan";
    if (strcmp(prog, "bmrun") == 0) {
        const cli_command *run = cli_find_command("run");
        if (!run) {
            fprintf(stderr, "bmrun: this build has no runner\n");
            return CLI_EXIT_FAIL;
        }
        argv[0] = (char *)"run";
        return run_command(run, argc, argv);
    }
    if (argc < 2) {
        main_help(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        main_help(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("bmplan %s\n", BMPLAN_VERSION);
        return CLI_EXIT_OK;
    }
    if (strcmp(cmd, "help") == 0) {
        if (argc < 3) {
            main_help(stdout);
            return CLI_EXIT_OK;
        }
        const cli_command *c = cli_find_command(argv[2]);
        if (!c) {
            fprintf(stderr, "bmplan: unknown command '%s'\nTry 'bmplan --help'.\n", argv[2]);
            return CLI_EXIT_USAGE;
        }
        char *hargv[] = {(char *)c->name, (char *)"--help", NULL};
        return run_command(c, 2, hargv);
    }
    if (cmd[0] == '-') {
        fprintf(stderr, "bmplan: unknown option '%s'\nTry 'bmplan --help'.\n", cmd);
        return CLI_EXIT_USAGE;
    }
    const cli_command *c = cli_find_command(cmd);
    if (!c) {
        fprintf(stderr, "bmplan: unknown command '%s'\nTry 'bmplan --help'.\n", cmd);
        return CLI_EXIT_USAGE;
    }
    return run_command(c, argc - 1, argv + 1);
}
