/*
 * cmd_verify.c - `bmplan verify`: check a model folder, checkpoint or
 * offload folder (formats/verify.c) and list every problem found.
 */
#include "cli.h"
#include "verify.h"

#include <stdlib.h>

static const char *const usage[] = {
    "PATH [--quiet]",
    NULL,
};

static const char description[] =
    "PATH is a model folder, a checkpoint (.safetensors, .bin, index) or an\n"
    "offload folder (index.json / bmplan.json). Checks its structure (headers,\n"
    "index against files, every tensor's span, offload entries against their\n"
    "files) and recomputes the content digests `bmplan shard` and `bmplan\n"
    "offload` recorded. Prints one line per problem on stderr and exits 1 if\n"
    "there is any; prints a summary on stdout otherwise.";

static void print_problem(void *ctx, const char *msg)
{
    (void)ctx;
    fprintf(stderr, "bmplan verify: %s\n", msg);
}

int cmd_verify(int argc, char **argv)
{
    bool quiet = false;
    const cli_option opts[] = {
        {CLI_FLAG, 'q', "quiet", &quiet, NULL, "print nothing when all is well"},
        {CLI_END},
    };
    char **pos;
    int npos;
    int rc = cli_parse("verify", usage, description, opts, argc, argv, &pos, &npos);
    if (rc)
        return rc;
    if (npos != 1) {
        free(pos);
        return cli_usage_error("verify", npos ? "expected one PATH, got %d" : "missing PATH", npos);
    }
    const char *path = pos[0];
    free(pos);
    bm_verify_summary s;
    int n = bm_verify(path, print_problem, NULL, &s);
    if (n) {
        fprintf(stderr, "bmplan verify: %s: %d problem%s\n", path, n, n == 1 ? "" : "s");
        return CLI_EXIT_FAIL;
    }
    if (!quiet) {
        printf("%s: OK: %s, %d tensor%s", path, s.offload ? "offload folder" : "checkpoint",
               (int)s.n_tensors, s.n_tensors == 1 ? "" : "s");
        if (!s.offload)
            printf(" in %d file%s", (int)s.n_files, s.n_files == 1 ? "" : "s");
        printf(", %d digest%s verified", (int)s.n_verified, s.n_verified == 1 ? "" : "s");
        if (s.n_unrecorded)
            printf(", %d without a recorded digest (structure checked only)", (int)s.n_unrecorded);
        printf("\n");
    }
    return CLI_EXIT_OK;
}
