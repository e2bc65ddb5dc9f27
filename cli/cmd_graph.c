/*
 * cmd_graph.c - `bmplan graph`: write a bmplan-graph/1 file from a Hugging
 * Face config.json or from a checkpoint's tensor names.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static const char *const usage[] = {
    "(--from-config config.json | --from-checkpoint PATH) [-o FILE] [--format yaml|json]",
    NULL,
};

static const char description[] =
    "--from-config builds the module tree transformers builds for the config's\n"
    "model_type; --from-checkpoint follows the dots of the tensor names (file,\n"
    "index.json or folder). The format defaults to JSON when FILE ends in .json,\n"
    "else YAML.";

static bool ends_with(const char *s, const char *x)
{
    size_t a = strlen(s), b = strlen(x);
    return a >= b && strcmp(s + a - b, x) == 0;
}

int cmd_graph(int argc, char **argv)
{
    const char *from_config = NULL, *from_ckpt = NULL, *output = NULL, *format = NULL;
    const cli_option opts[] = {
        {CLI_STRING, 0, "from-config", &from_config, "FILE", "a Hugging Face config.json"},
        {CLI_STRING, 0, "from-checkpoint", &from_ckpt, "PATH",
         "a .safetensors/.bin file, an index.json or a model folder"},
        {CLI_STRING, 'o', "output", &output, "FILE", "write here (atomically) instead of stdout"},
        {CLI_STRING, 0, "format", &format, "yaml|json", "output syntax"},
        {CLI_END},
    };
    char **pos;
    int npos;
    int rc = cli_parse("graph", usage, description, opts, argc, argv, &pos, &npos);
    if (rc)
        return rc;
    free(pos);
    if (npos)
        return cli_usage_error("graph", "unexpected argument");
    if (!!from_config == !!from_ckpt)
        return cli_usage_error("graph", "give exactly one of --from-config and --from-checkpoint");
    bm_graph_format fmt = output && ends_with(output, ".json") ? BM_GRAPH_JSON : BM_GRAPH_YAML;
    if (format) {
        if (strcmp(format, "yaml") == 0)
            fmt = BM_GRAPH_YAML;
        else if (strcmp(format, "json") == 0)
            fmt = BM_GRAPH_JSON;
        else
            return cli_usage_error("graph", "--format must be yaml or json, not '%s'", format);
    }
    bm_error err = {0};
    bm_tree *tree = NULL;
    bm_checkpoint *ckpt = NULL;
    if (from_config) {
        if (bm_hfconfig_load(from_config, &tree, &err))
            return cli_fail("graph", &err);
    } else {
        if (bm_checkpoint_open(from_ckpt, &ckpt, &err))
            return cli_fail("graph", &err);
        bm_status st = bm_checkpoint_to_tree(ckpt, &tree, &err);
        bm_checkpoint_close(ckpt);
        if (st)
            return cli_fail("graph", &err);
    }
    char *text = NULL;
    size_t len = 0;
    if (bm_graph_write(tree, fmt, &text, &len, &err)) {
        bm_tree_free(tree);
        return cli_fail("graph", &err);
    }
    bm_tree_free(tree);
    rc = cli_write_output("graph", output, text, len);
    free(text);
    return rc;
}
