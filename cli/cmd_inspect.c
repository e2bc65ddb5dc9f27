/*
 * cmd_inspect.c - `bmplan inspect`: what is in a model, for people sizing
 * hardware: the module tree with sizes per level, totals by dtype, the
 * parameter count, the largest layer and the checkpoint's shards.
 */
#include "cli.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const usage[] = {
    "PATH [--json] [--depth N]",
    NULL,
};

static const char description[] =
    "PATH is a graph file, a Hugging Face config.json, a .safetensors or .bin\n"
    "file, an index.json, or a Hugging Face model folder. Sizes follow\n"
    "accelerate's compute_module_sizes (non-persistent buffers included, tied\n"
    "names counted once).";

struct dtype_total {
    uint64_t tensors, elements, bits;
};

static uint64_t module_params(const bm_tree *t, int32_t m)
{
    uint64_t n = 0;
    const bm_module *mod = &t->modules[m];
    for (int32_t i = mod->tensor_begin; i < mod->subtree_tensor_end; i++) {
        const bm_tensor *x = &t->tensors[i];
        if (!x->is_buffer && x->alias_of == BM_NONE)
            n += x->numel;
    }
    return n;
}

static uint64_t module_params(const bm_tree *t, int32_t m);

/* Children named "0".."N-1" with the same class, size and parameter count
 * are summarised in one row. */
static bool uniform_list(const bm_tree *t, const uint64_t *mb, int32_t m)
{
    const bm_module *mod = &t->modules[m];
    if (mod->n_children < 2)
        return false;
    int32_t first = mod->first_child;
    int k = 0;
    for (int32_t c = first; c != BM_NONE; c = t->modules[c].next_sibling, k++) {
        char want[16];
        snprintf(want, sizeof want, "%d", k);
        if (strcmp(t->modules[c].local, want) || strcmp(t->modules[c].cls, t->modules[first].cls) ||
            mb[c] != mb[first] || module_params(t, c) != module_params(t, first))
            return false;
    }
    return true;
}

static void print_rows(const bm_tree *t, const uint64_t *mb, int32_t m, int depth, int max_depth)
{
    const bm_module *mod = &t->modules[m];
    char size[32], params[32], label[300];
    bm_size_format_bits(mb[m], size, sizeof size);
    bm_count_format(module_params(t, m), params, sizeof params);
    snprintf(label, sizeof label, "%*s%s", depth * 2, "", m == 0 ? "(model)" : mod->local);
    printf("  %-44s %-28.28s %15s %12s\n", label, mod->cls, params, size);
    if (depth >= max_depth)
        return;
    if (uniform_list(t, mb, m)) {
        int32_t c = mod->first_child;
        char each[32], lab[300], cls[64];
        bm_size_format_bits(mb[c], each, sizeof each);
        bm_count_format(module_params(t, c), params, sizeof params);
        snprintf(lab, sizeof lab, "%*s0..%d", (depth + 1) * 2, "", mod->n_children - 1);
        snprintf(cls, sizeof cls, "%d x %s", mod->n_children, t->modules[c].cls);
        printf("  %-44s %-28.28s %15s %12s each\n", lab, cls, params, each);
        return;
    }
    for (int32_t c = mod->first_child; c != BM_NONE; c = t->modules[c].next_sibling)
        print_rows(t, mb, c, depth + 1, max_depth);
}

static json_t *module_rows_json(const bm_tree *t, const uint64_t *mb, int max_depth)
{
    json_t *arr = json_array();
    for (int32_t m = 0; m < t->n_modules; m++) {
        if (t->modules[m].depth > max_depth)
            continue;
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(t->modules[m].name));
        json_object_set_new(o, "class", json_string(t->modules[m].cls));
        json_object_set_new(o, "depth", json_integer(t->modules[m].depth));
        json_object_set_new(o, "parameters", json_integer((json_int_t)module_params(t, m)));
        json_object_set_new(o, "bytes", mb[m] % 8 ? json_real((double)mb[m] / 8)
                                                  : json_integer((json_int_t)(mb[m] / 8)));
        json_array_append_new(arr, o);
    }
    return arr;
}

static json_t *bytes_json(uint64_t bits)
{
    return bits % 8 ? json_real((double)bits / 8) : json_integer((json_int_t)(bits / 8));
}

int cmd_inspect(int argc, char **argv)
{
    bool as_json = false;
    long depth = 2;
    const cli_option opts[] = {
        {CLI_FLAG, 0, "json", &as_json, NULL, "print JSON for scripts instead of tables"},
        {CLI_INT, 0, "depth", &depth, "N", "module tree levels to show (default 2)"},
        {CLI_END},
    };
    char **pos;
    int npos;
    int rc = cli_parse("inspect", usage, description, opts, argc, argv, &pos, &npos);
    if (rc)
        return rc;
    if (npos != 1) {
        free(pos);
        return cli_usage_error("inspect", npos ? "expected one PATH, got %d" : "missing PATH", npos);
    }
    if (depth < 0) {
        free(pos);
        return cli_usage_error("inspect", "--depth must be >= 0");
    }
    bm_error err = {0};
    bm_model *model = NULL;
    bm_model_opts mo = {.model = pos[0]};
    free(pos);
    if (bm_model_open(&mo, &model, &err))
        return cli_fail("inspect", &err);
    const bm_tree *t = model->tree;
    uint64_t *mb = calloc((size_t)t->n_modules, sizeof *mb);
    uint64_t *tb = calloc((size_t)(t->n_tensors ? t->n_tensors : 1), sizeof *tb);
    int32_t names[64], nnames = 0;
    uint64_t layer_bits = 0;
    if (!mb || !tb) {
        bm_fail(&err, BM_E_NOMEM, "out of memory");
        goto fail;
    }
    bm_size_opts so = {.compat = BM_COMPAT_BMPLAN};
    if (bm_tree_sizes(t, &so, mb, tb, &err) ||
        bm_tree_largest_layer(t, mb, tb, t->no_split, t->n_no_split, &layer_bits, names,
                              &nnames, 64, &err))
        goto fail;

    struct dtype_total totals[BM_DTYPE_COUNT_] = {{0}};
    for (int32_t i = 0; i < t->n_tensors; i++) {
        const bm_tensor *x = &t->tensors[i];
        if (x->alias_of != BM_NONE)
            continue;
        totals[x->dtype].tensors++;
        totals[x->dtype].elements += x->numel;
        totals[x->dtype].bits += tb[i];
    }
    uint64_t nparams = bm_tree_param_count(t);

    if (as_json) {
        json_t *o = json_object();
        json_object_set_new(o, "source", json_string(model->graph_source));
        json_object_set_new(o, "name", t->name ? json_string(t->name) : json_null());
        json_object_set_new(o, "arch", t->arch ? json_string(t->arch) : json_null());
        json_object_set_new(o, "parameters", json_integer((json_int_t)nparams));
        json_object_set_new(o, "bytes", bytes_json(mb[0]));
        json_object_set_new(o, "modules_count", json_integer(t->n_modules));
        json_object_set_new(o, "tensors_count", json_integer(t->n_tensors));
        json_t *dt = json_object();
        for (int d = 1; d < BM_DTYPE_COUNT_; d++) {
            if (!totals[d].tensors)
                continue;
            json_t *e = json_object();
            json_object_set_new(e, "tensors", json_integer((json_int_t)totals[d].tensors));
            json_object_set_new(e, "elements", json_integer((json_int_t)totals[d].elements));
            json_object_set_new(e, "bytes", bytes_json(totals[d].bits));
            json_object_set_new(dt, bm_dtype_name((bm_dtype)d), e);
        }
        json_object_set_new(o, "dtypes", dt);
        json_t *ns = json_array();
        for (int i = 0; i < t->n_no_split; i++)
            json_array_append_new(ns, json_string(t->no_split[i]));
        json_object_set_new(o, "no_split_modules", ns);
        json_t *ll = json_object();
        json_object_set_new(ll, "bytes", bytes_json(layer_bits));
        json_t *ln = json_array();
        for (int32_t i = 0; i < nnames && i < 64; i++)
            json_array_append_new(ln, json_string(names[i] >= 0 ? t->modules[names[i]].name
                                                                 : t->tensors[-2 - names[i]].name));
        json_object_set_new(ll, "names", ln);
        json_object_set_new(ll, "count", json_integer(nnames));
        json_object_set_new(o, "largest_layer", ll);
        json_t *ties = json_array();
        for (int32_t g = 0; g < t->n_ties; g++) {
            json_t *grp = json_array();
            for (int32_t k = 0; k < t->ties[g].n; k++)
                json_array_append_new(grp, json_string(t->tensors[t->ties[g].tensors[k]].name));
            json_array_append_new(ties, grp);
        }
        json_object_set_new(o, "tied", ties);
        json_object_set_new(o, "modules", module_rows_json(t, mb, (int)depth));
        if (model->ckpt) {
            const bm_checkpoint *c = model->ckpt;
            json_t *co = json_object();
            json_object_set_new(co, "path", json_string(c->path));
            json_object_set_new(co, "tensors", json_integer(c->n_tensors));
            uint64_t sum = 0;
            json_t *files = json_array();
            for (int32_t f = 0; f < c->n_files; f++) {
                uint64_t bytes = 0;
                int32_t nt = 0;
                for (int32_t k = 0; k < c->n_tensors; k++)
                    if (c->tensors[k].file == f) {
                        bytes += c->tensors[k].nbytes;
                        nt++;
                    }
                sum += bytes;
                json_t *fo = json_object();
                json_object_set_new(fo, "name", json_string(c->files[f].name));
                json_object_set_new(fo, "file_bytes", json_integer((json_int_t)c->files[f].size));
                json_object_set_new(fo, "tensor_bytes", json_integer((json_int_t)bytes));
                json_object_set_new(fo, "tensors", json_integer(nt));
                json_array_append_new(files, fo);
            }
            json_object_set_new(co, "files", files);
            json_object_set_new(co, "tensor_bytes", json_integer((json_int_t)sum));
            if (c->has_total_size)
                json_object_set_new(co, "index_total_size", json_integer((json_int_t)c->total_size));
            json_object_set_new(o, "checkpoint", co);
        }
        char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (!text) {
            bm_fail(&err, BM_E_NOMEM, "out of memory");
            goto fail;
        }
        printf("%s\n", text);
        free(text);
    } else {
        char buf[64], buf2[64];
        printf("model:       %s%s%s\n", t->name ? t->name : "(unnamed)",
               t->arch ? "  arch: " : "", t->arch ? t->arch : "");
        printf("source:      %s\n", model->graph_source);
        bm_count_format(nparams, buf, sizeof buf);
        printf("parameters:  %s\n", buf);
        printf("size:        %s (%d modules, %d tensors)\n", bm_size_format_bits(mb[0], buf2, sizeof buf2),
               t->n_modules, t->n_tensors);
        for (int d = 1; d < BM_DTYPE_COUNT_; d++) {
            if (!totals[d].tensors)
                continue;
            bm_count_format(totals[d].elements, buf, sizeof buf);
            printf("  %-13s %6llu tensors %18s elements %12s\n", bm_dtype_name((bm_dtype)d),
                   (unsigned long long)totals[d].tensors, buf,
                   bm_size_format_bits(totals[d].bits, buf2, sizeof buf2));
        }
        printf("no_split:    ");
        for (int i = 0; i < t->n_no_split; i++)
            printf("%s%s", i ? ", " : "", t->no_split[i]);
        printf("%s\n", t->n_no_split ? "" : "(none)");
        if (nnames > 0) {
            int32_t f = names[0];
            printf("largest layer: %s (%s) %s", f >= 0 ? t->modules[f].name : t->tensors[-2 - f].name,
                   f >= 0 ? t->modules[f].cls : "tensor",
                   bm_size_format_bits(layer_bits, buf2, sizeof buf2));
            if (nnames > 1)
                printf(", %d layers of this size", nnames);
            printf("\n");
        }
        if (t->n_ties) {
            printf("tied:        ");
            for (int32_t g = 0; g < t->n_ties; g++) {
                printf("%s[", g ? "; " : "");
                for (int32_t k = 0; k < t->ties[g].n; k++)
                    printf("%s%s", k ? ", " : "", t->tensors[t->ties[g].tensors[k]].name);
                printf("]");
            }
            printf("\n");
        }
        printf("\n  %-44s %-28s %15s %12s\n", "MODULE", "CLASS", "PARAMETERS", "SIZE");
        print_rows(t, mb, 0, 0, (int)depth);
        if (model->ckpt) {
            const bm_checkpoint *c = model->ckpt;
            printf("\ncheckpoint:  %s (%d file%s, %d tensors)\n", c->path, c->n_files,
                   c->n_files == 1 ? "" : "s", c->n_tensors);
            for (int32_t f = 0; f < c->n_files; f++) {
                int32_t nt = 0;
                for (int32_t k = 0; k < c->n_tensors; k++)
                    nt += c->tensors[k].file == f;
                printf("  %-44s %12s %6d tensors\n", c->files[f].name,
                       bm_size_format(c->files[f].size, buf2, sizeof buf2), nt);
            }
            if (model->n_unexpected)
                printf("  note: %d checkpoint tensor%s not in the model (first: %s)\n",
                       model->n_unexpected, model->n_unexpected == 1 ? " is" : "s are",
                       model->first_unexpected);
        }
    }
    free(mb);
    free(tb);
    bm_model_close(model);
    return CLI_EXIT_OK;
fail:
    free(mb);
    free(tb);
    bm_model_close(model);
    return cli_fail("inspect", &err);
}
