/*
 * cmd_estimate.c - `bmplan estimate`: memory a model needs per dtype
 * (weights, largest layer, parameters; with --context the KV cache and the
 * runner's workspace; with --training adam accelerate's training rule), as
 * a table or JSON, and accelerate estimate-memory's own figures with
 * --like-accelerate.
 */
#include "cli.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define CMD "estimate"

static const char *const usage[] = {
    "MODEL [--dtypes LIST] [--context L] [--batch B] [--kv-dtype D]",
    "MODEL [--training adam] [--json] [-o FILE]",
    "MODEL --like-accelerate [--dtypes LIST] [--json]",
    NULL,
};

static const char *const description =
    "Memory a model needs, per dtype: the weights (exactly what `bmplan plan`\n"
    "places), accelerate's largest layer, the parameter count (tied weights\n"
    "once); with --context, the KV cache (exact; float32 as bmplan run keeps\n"
    "it, or --kv-dtype) and the workspace of bmplan run by its allocation\n"
    "rules (an estimate); with --training adam, accelerate's Adam rule (an\n"
    "estimate). Estimates are marked with '*' in the table and\n"
    "\"estimate\": true in JSON. --like-accelerate prints the figures and\n"
    "table of `accelerate estimate-memory` for the same tree.";

#define DEFAULT_DTYPES "float32,float16,bfloat16,int8,int4"
#define ACCEL_DTYPES "float32,float16,int8,int4"
#define MAX_DTYPES 16

typedef struct row {
    const char *label;  /* as the user wrote it, normalised */
    bm_dtype dtype;     /* BM_DTYPE_INVALID for "auto" (as stored) */
    bm_weights w;
    bool has_kv;
    bm_dtype kv_dtype;
    bool kv_is_run;     /* float32, as bmplan run keeps it (no --kv-dtype) */
    bm_kv_size kv;
    bm_workspace ws;
    bm_adam adam;
    uint64_t total;     /* weights + KV + workspace, bytes */
} row;

static uint64_t bits_to_bytes(uint64_t bits)
{
    return bits / 8 + (bits % 8 != 0);
}

static char *fmt(uint64_t bytes, char *buf)
{
    return bm_size_format(bytes, buf, 32);
}

static int parse_dtypes(const char *text, bool like_accel, const char **labels, bm_dtype *dts,
                        int *n)
{
    char *copy = strdup(text);
    if (!copy)
        return cli_errorf(CMD, "out of memory");
    int k = 0;
    int rc = 0;
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (k == MAX_DTYPES) {
            rc = cli_usage_error(CMD, "--dtypes: at most %d dtypes", MAX_DTYPES);
            break;
        }
        if (like_accel) {
            static const char *const ok[] = {"float32", "float16", "int8", "int4"};
            int f = -1;
            for (int i = 0; i < 4; i++)
                if (strcmp(tok, ok[i]) == 0)
                    f = i;
            if (f < 0) {
                rc = cli_usage_error(CMD,
                                     "--dtypes '%s': accelerate estimate-memory offers "
                                     "float32, float16, int8 and int4",
                                     tok);
                break;
            }
            labels[k] = ok[f];
            dts[k++] = bm_dtype_parse(ok[f]);
            continue;
        }
        if (strcmp(tok, "auto") == 0) {
            labels[k] = "auto";
            dts[k++] = BM_DTYPE_INVALID;
            continue;
        }
        bm_dtype dt = bm_dtype_parse(tok);
        if (dt == BM_DTYPE_INVALID ||
            !(bm_dtype_is_floating(dt) || dt == BM_I8 || dt == BM_U8 || dt == BM_INT4 ||
              dt == BM_INT2)) {
            rc = cli_usage_error(CMD,
                                 "--dtypes '%s': expected floating dtypes, int8, uint8, int4, "
                                 "int2 or auto (as stored)",
                                 tok);
            break;
        }
        labels[k] = bm_dtype_name(dt);
        dts[k++] = dt;
    }
    free(copy);
    if (!rc && k == 0)
        rc = cli_usage_error(CMD, "--dtypes is empty");
    *n = k;
    return rc;
}

static json_t *jint(uint64_t v)
{
    return json_integer(v > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)v);
}

/* ---- --like-accelerate ------------------------------------------------ */

/* A config.json that MODEL names (the file itself, or the one in the
 * folder): accelerate builds AutoModel from it. NULL when MODEL is
 * something else (a graph file, a checkpoint). */
static char *config_path_for(const char *model)
{
    if (bm_is_dir(model)) {
        char *p = bm_path_join(model, "config.json");
        if (p && bm_is_file(p))
            return p;
        free(p);
        return NULL;
    }
    if (!bm_is_file(model))
        return NULL;
    char *data = NULL;
    size_t len;
    bm_error err = {0};
    if (bm_read_file(model, BM_HFCONFIG_MAX_BYTES, &data, &len, &err))
        return NULL;
    json_t *j = json_loadb(data, len, 0, NULL);
    free(data);
    bool is_config = j && json_is_object(j) && json_is_string(json_object_get(j, "model_type")) &&
                     !json_object_get(j, "format");
    json_decref(j);
    return is_config ? strdup(model) : NULL;
}

static int like_accelerate(const bm_tree *tree, const char *shown, const char **labels, int n,
                           bool as_json, const char *out_path)
{
    bm_error err = {0};
    const char *root_cls = tree->n_modules ? tree->modules[0].cls : "";
    /* transformers' task classes: XForCausalLM, GPT2LMHeadModel, ... */
    if (!as_json && (strstr(root_cls, "For") || strstr(root_cls, "LMHead")))
        cli_warn(CMD,
                 "accelerate estimate-memory builds AutoModel (the base model, without a "
                 "task head); this tree's root is %s, so its head is counted too",
                 root_cls);
    bm_accel_sizes s;
    if (bm_accel_sizes_compute(tree, &s, &err))
        return cli_fail(CMD, &err);
    bm_accel_row rows[MAX_DTYPES];
    for (int i = 0; i < n; i++)
        if (bm_accel_row_make(&s, labels[i], &rows[i], &err))
            return cli_fail(CMD, &err);
    char *text;
    if (as_json) {
        json_t *o = json_object(), *arr = json_array();
        json_object_set_new(o, "format", json_string("bmplan-estimate/1"));
        json_object_set_new(o, "like_accelerate", json_true());
        json_object_set_new(o, "model", json_string(shown));
        json_object_set_new(o, "total_bytes", json_real((double)s.total_bits / 8));
        json_object_set_new(o, "largest_layer_bytes", json_real((double)s.largest_bits / 8));
        json_object_set_new(o, "largest_layer", json_string(s.largest_name));
        for (int i = 0; i < n; i++) {
            char a[64], b[64], c[64];
            json_t *r = json_object();
            json_object_set_new(r, "dtype", json_string(rows[i].dtype));
            json_object_set_new(r, "largest_layer",
                                json_string(bm_accel_convert_bytes(rows[i].largest,
                                                                   rows[i].largest_is_int, a, 64)));
            json_object_set_new(r, "total_size",
                                json_string(bm_accel_convert_bytes(rows[i].total,
                                                                   rows[i].total_is_int, b, 64)));
            json_object_set_new(
                r, "training_using_adam",
                json_string(rows[i].training < 0
                                ? "N/A"
                                : bm_accel_convert_bytes(rows[i].training, rows[i].total_is_int,
                                                         c, 64)));
            json_object_set_new(r, "largest_layer_bytes", json_real(rows[i].largest));
            json_object_set_new(r, "total_size_bytes", json_real(rows[i].total));
            json_object_set_new(r, "training_bytes",
                                rows[i].training < 0 ? json_null() : json_real(rows[i].training));
            json_array_append_new(arr, r);
        }
        json_object_set_new(o, "rows", arr);
        text = cli_json_text(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
        json_decref(o);
        if (!text)
            return cli_errorf(CMD, "out of memory");
    } else {
        char *table = bm_accel_table(shown, rows, n);
        if (!table)
            return cli_errorf(CMD, "out of memory");
        size_t len = strlen(table);
        text = malloc(len + 2);
        if (!text) {
            free(table);
            return cli_errorf(CMD, "out of memory");
        }
        memcpy(text, table, len);
        memcpy(text + len, "\n", 2);
        free(table);
    }
    int rc = cli_write_output(CMD, out_path, text, strlen(text));
    free(text);
    return rc;
}

/* ---- the table for people --------------------------------------------- */

static char *people_table(const bm_model *model, const char *shown, const bm_model_dims *dims,
                          bool have_dims, const row *rows, int n, long context, long batch,
                          bool training)
{
    const bm_tree *tree = model->tree;
    bm_sbuf b = {0};
    char s1[32], s2[32], s3[32], s4[32], s5[32], s6[32], s7[32];
    uint64_t params = rows[0].w.params;
    char pbuf[32];
    bm_count_format(params, pbuf, sizeof pbuf);
    bm_sb_printf(&b, "%s: %s parameters (tied weights counted once)%s%s%s\n", shown, pbuf,
        have_dims ? ", " : "", have_dims ? dims->arch : "", have_dims ? " architecture" : "");
    if (tree->n_no_split) {
        bm_sb_printf(&b, "largest layer: accelerate's rule, no-split classes:");
        for (int i = 0; i < tree->n_no_split; i++)
            bm_sb_printf(&b, "%s %s", i ? "," : "", tree->no_split[i]);
        bm_sb_printf(&b, "\n");
    } else {
        bm_sb_printf(&b, "largest layer: accelerate's rule, no no-split classes\n");
    }
    if (context > 0)
        bm_sb_printf(&b, "KV cache: %ld tokens x %ld sequence%s in %s%s; %s\n", context, batch,
            batch == 1 ? "" : "s", bm_dtype_name(rows[0].kv_dtype),
            rows[0].kv_is_run ? " (as bmplan run keeps it)" : "", dims->cache_note);
    /* the largest-layer column: size, name, "(+N)" when N more tie */
    char(*largest)[160] = calloc((size_t)n, sizeof *largest);
    if (!largest) {
        free(b.p);
        return NULL;
    }
    int lw = (int)strlen("largest layer");
    bool ties = false;
    for (int i = 0; i < n; i++) {
        const row *r = &rows[i];
        int l = snprintf(largest[i], sizeof largest[i], "%s %.100s",
                         fmt(bits_to_bytes(r->w.largest_bits), s3),
                         r->w.largest_name[0] ? r->w.largest_name : "-");
        if (r->w.n_largest > 1) {
            l += snprintf(largest[i] + l, sizeof largest[i] - (size_t)l, " (+%d)",
                          r->w.n_largest - 1);
            ties = true;
        }
        if (l > lw)
            lw = l;
    }
    if (context <= 0 && !training)
        lw = 0; /* the last column: no trailing blanks */
    bm_sb_printf(&b, "\n%-10s %12s %12s  %-*s", "dtype", "weights", "params", lw,
        "largest layer");
    if (context > 0)
        bm_sb_printf(&b, " %12s %12s %12s %12s", "KV/token", "KV cache", "workspace*",
            "total*");
    if (training)
        bm_sb_printf(&b, " %13s", "Adam peak*");
    bm_sb_printf(&b, "\n");
    for (int i = 0; i < n; i++) {
        const row *r = &rows[i];
        bm_sb_printf(&b, "%-10s %12s %12s  %-*s", r->label,
            fmt(bits_to_bytes(r->w.total_bits), s1), fmt(bits_to_bytes(r->w.param_bits), s2), lw,
            largest[i]);
        if (context > 0)
            bm_sb_printf(&b, " %12s %12s %12s %12s", fmt(r->kv.token_bytes, s4),
                fmt(r->kv.total_bytes, s5), fmt(r->ws.total_bytes, s6), fmt(r->total, s7));
        if (training)
            bm_sb_printf(&b, " %13s", r->adam.available ? fmt(r->adam.peak, s1) : "N/A");
        bm_sb_printf(&b, "\n");
    }
    free(largest);
    if (ties)
        bm_sb_printf(&b, "(+N: N more layers of the same size)\n");
    if (context > 0 || training) {
        bm_sb_printf(&b, "\n* estimate.");
        if (context > 0)
            bm_sb_printf(&b,
                " workspace: bmplan run's float32 activations (its allocation rules) for a\n"
                "  prompt as long as the context on one device: the largest live set of a\n"
                "  layer plus the token ids, or the head's; weights and KV cache are exact.");
        if (training)
            bm_sb_printf(&b,
                "%s Adam: accelerate's rule from the float32 size (float32: weights, gradients,\n"
                "  two states; float16/bfloat16: mixed precision); activations not counted.",
                context > 0 ? "\n " : "");
        bm_sb_printf(&b, "\n");
    }
    return bm_sb_finish(&b, NULL);
}

static json_t *row_json(const row *r, long context, bool training)
{
    json_t *o = json_object();
    json_object_set_new(o, "dtype", json_string(r->label));
    json_object_set_new(o, "weights_bytes", jint(bits_to_bytes(r->w.total_bits)));
    json_object_set_new(o, "weights_bits", jint(r->w.total_bits));
    json_object_set_new(o, "parameter_bytes", jint(bits_to_bytes(r->w.param_bits)));
    json_object_set_new(o, "buffer_bytes", jint(bits_to_bytes(r->w.buffer_bits)));
    json_t *ll = json_object();
    json_object_set_new(ll, "name", json_string(r->w.largest_name));
    json_object_set_new(ll, "bytes", jint(bits_to_bytes(r->w.largest_bits)));
    json_object_set_new(ll, "count", json_integer(r->w.n_largest));
    json_object_set_new(o, "largest_layer", ll);
    if (context > 0) {
        json_t *kv = json_object();
        json_object_set_new(kv, "dtype", json_string(bm_dtype_name(r->kv_dtype)));
        json_object_set_new(kv, "rule", json_string(r->kv_is_run ? "bmplan run" : "pytorch"));
        json_object_set_new(kv, "bytes_per_token", jint(r->kv.token_bytes));
        json_object_set_new(kv, "self_attention_bytes", jint(r->kv.self_bytes));
        json_object_set_new(kv, "cross_attention_bytes", jint(r->kv.cross_bytes));
        json_object_set_new(kv, "bytes", jint(r->kv.total_bytes));
        json_object_set_new(kv, "estimate", json_false());
        json_object_set_new(o, "kv_cache", kv);
        json_t *ws = json_object();
        json_object_set_new(ws, "bytes", jint(r->ws.total_bytes));
        json_object_set_new(ws, "layer_bytes", jint(r->ws.layer_bytes));
        json_object_set_new(ws, "ids_bytes", jint(r->ws.ids_bytes));
        json_object_set_new(ws, "head_bytes", jint(r->ws.head_bytes));
        json_object_set_new(ws, "rule", json_string("bmplan run"));
        json_object_set_new(ws, "estimate", json_boolean(r->ws.estimate));
        json_object_set_new(o, "workspace", ws);
        json_object_set_new(o, "total_bytes", jint(r->total));
        json_object_set_new(o, "total_is_estimate", json_boolean(r->ws.estimate));
    }
    if (training) {
        json_t *t = json_object();
        json_object_set_new(t, "rule", json_string("adam"));
        json_object_set_new(t, "available", json_boolean(r->adam.available));
        if (r->adam.available) {
            json_object_set_new(t, "model_bytes", jint(r->adam.model));
            json_object_set_new(t, "gradients_bytes", jint(r->adam.gradients));
            json_object_set_new(t, "optimizer_bytes", jint(r->adam.optimizer));
            json_object_set_new(t, "step_bytes", jint(r->adam.step));
            json_object_set_new(t, "peak_bytes", jint(r->adam.peak));
        }
        json_object_set_new(t, "estimate", json_true());
        json_object_set_new(o, "training", t);
    }
    return o;
}

/* --device-map: what each device of the map needs for `bmplan run` with a
 * prompt of `prompt` tokens and a context of `context`, by the runner's own
 * allocation rules (bm_runner_device_needs). */
static int run_needs(const bm_model *model, const char *map_path, long prompt, long context,
                     bm_dtype dtype, bool prefetch, bool as_json, const char *out_path)
{
    bm_error err = {0};
    bm_devmap *map = NULL;
    if (bm_devmap_load(map_path, &map, &err) != BM_OK)
        return cli_fail(CMD, &err);
    int rc = CLI_EXIT_FAIL;
    bm_map_entry *entries = calloc((size_t)map->n + 1, sizeof *entries);
    if (!entries) {
        bm_devmap_free(map);
        return cli_errorf(CMD, "out of memory");
    }
    for (int32_t i = 0; i < map->n; i++) {
        bm_device dv = map->e[i].dev;
        entries[i].name = map->e[i].name;
        if (dv.kind == BM_DEV_GPU && dv.id >= 0 && dv.id < 64)
            entries[i].device = (int)dv.id;
        else if (dv.kind == BM_DEV_CPU)
            entries[i].device = BM_DEVICE_CPU;
        else if (dv.kind == BM_DEV_DISK)
            entries[i].device = BM_DEVICE_DISK;
        else {
            cli_errorf(CMD, "%s: entry '%s' names a device bmplan run cannot use", map_path,
                       map->e[i].name);
            goto done;
        }
    }
    bm_device_needs_opts no = {.map = entries, .n_map = map->n, .main_device = BM_DEVICE_NONE,
                               .dtype = dtype, .prompt_tokens = prompt, .max_tokens = context,
                               .prefetch = prefetch};
    bm_device_need needs[65];
    int nn = 0;
    if (bm_runner_device_needs(model->tree, &no, needs, &nn, &err) != BM_OK) {
        cli_fail(CMD, &err);
        goto done;
    }
    char *text = NULL;
    if (as_json) {
        json_t *o = json_object();
        json_object_set_new(o, "format", json_string("bmplan-estimate-run/1"));
        json_object_set_new(o, "prompt_tokens", json_integer(prompt));
        json_object_set_new(o, "context", json_integer(context));
        json_object_set_new(o, "prefetch", json_boolean(prefetch));
        json_t *devs = json_object();
        for (int i = 0; i < nn; i++) {
            char key[16];
            if (needs[i].device == BM_DEVICE_CPU)
                snprintf(key, sizeof key, "cpu");
            else
                snprintf(key, sizeof key, "%d", needs[i].device);
            json_t *d = json_object();
            json_object_set_new(d, "weights_bytes", jint(needs[i].weights));
            json_object_set_new(d, "kv_bytes", jint(needs[i].kv));
            json_object_set_new(d, "activations_bytes", jint(needs[i].activations));
            json_object_set_new(d, "staging_bytes", jint(needs[i].staging));
            json_object_set_new(d, "peak_bytes", jint(needs[i].peak));
            json_object_set_new(devs, key, d);
        }
        json_object_set_new(o, "devices", devs);
        text = cli_json_text(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(o);
    } else {
        bm_sbuf b = {0};
        bm_sb_printf(&b,
                     "bmplan run, %ld prompt tokens, context %ld%s:\n"
                     "%-8s %14s %14s %14s %14s %14s\n",
                     prompt, context, prefetch ? "" : ", no prefetch", "device", "weights",
                     "kv cache", "activations", "staging", "peak");
        for (int i = 0; i < nn; i++) {
            char key[16];
            if (needs[i].device == BM_DEVICE_CPU)
                snprintf(key, sizeof key, "cpu");
            else
                snprintf(key, sizeof key, "%d", needs[i].device);
            bm_sb_printf(&b, "%-8s %14llu %14llu %14llu %14llu %14llu\n", key,
                         (unsigned long long)needs[i].weights, (unsigned long long)needs[i].kv,
                         (unsigned long long)needs[i].activations,
                         (unsigned long long)needs[i].staging, (unsigned long long)needs[i].peak);
        }
        text = bm_sb_finish(&b, NULL);
    }
    if (!text) {
        cli_errorf(CMD, "out of memory");
        goto done;
    }
    rc = cli_write_output(CMD, out_path, text, strlen(text)) ? CLI_EXIT_FAIL : CLI_EXIT_OK;
    free(text);
done:
    free(entries);
    bm_devmap_free(map);
    return rc;
}

int cmd_estimate(int argc, char **argv)
{
    const char *dtypes_text = NULL, *kv_text = NULL, *training = NULL, *out_path = NULL;
    const char *graph = NULL, *checkpoint = NULL;
    long context = 0, batch = 0, prompt = 0;
    bool as_json = false, like_accel = false, no_prefetch = false;
    const char *map_path = NULL;
    const cli_option opts[] = {
        {CLI_STRING, 0, "dtypes", &dtypes_text, "LIST",
         "comma-separated dtypes (default " DEFAULT_DTYPES "; auto = as stored)"},
        {CLI_INT, 0, "context", &context, "L", "tokens of context for the KV cache and workspace"},
        {CLI_INT, 0, "batch", &batch, "B", "sequences (default 1; needs --context)"},
        {CLI_STRING, 0, "kv-dtype", &kv_text, "D",
         "dtype of the KV cache (default float32, as bmplan run keeps it)"},
        {CLI_STRING, 0, "device-map", &map_path, "FILE",
         "per device of this map, what bmplan run needs (needs --context)"},
        {CLI_INT, 0, "prompt", &prompt, "N", "with --device-map: prompt tokens (default: --context)"},
        {CLI_FLAG, 0, "no-prefetch", &no_prefetch, NULL, "with --device-map: as bmplan run --no-prefetch"},
        {CLI_STRING, 0, "training", &training, "adam", "add accelerate's Adam training rule"},
        {CLI_FLAG, 0, "like-accelerate", &like_accel, NULL,
         "print accelerate estimate-memory's figures and table"},
        {CLI_FLAG, 0, "json", &as_json, NULL, "write JSON (schema in bmplan-estimate(1))"},
        {CLI_STRING, 'o', "output", &out_path, "FILE", "write to FILE (atomically), not stdout"},
        {CLI_STRING, 0, "graph", &graph, "FILE", "the module tree from this graph file"},
        {CLI_STRING, 0, "checkpoint", &checkpoint, "PATH", "the checkpoint (real dtypes)"},
        {CLI_END, 0, NULL, NULL, NULL, NULL},
    };
    char **pos = NULL;
    int npos = 0;
    int rc = cli_parse(CMD, usage, description, opts, argc, argv, &pos, &npos);
    if (rc)
        return rc;
    const char *model_arg = npos > 0 ? pos[0] : NULL;
    if (npos > 1) {
        free(pos);
        return cli_usage_error(CMD, "one MODEL expected, got %d", npos);
    }
    free(pos);
    if (!model_arg && !graph && !checkpoint)
        return cli_usage_error(CMD, "MODEL is missing");
    if (context < 0 || context > (1L << 32))
        return cli_usage_error(CMD, "--context must be from 1 to 2^32 tokens");
    if (batch < 0 || batch > (1L << 24))
        return cli_usage_error(CMD, "--batch must be from 1 to 2^24");
    if (batch && !context)
        return cli_usage_error(CMD, "--batch needs --context");
    if (context && !batch)
        batch = 1;
    if (kv_text && !context)
        return cli_usage_error(CMD, "--kv-dtype needs --context");
    if (training && strcmp(training, "adam") != 0)
        return cli_usage_error(CMD, "--training: only 'adam' is known");
    if (like_accel && (context || training || kv_text))
        return cli_usage_error(CMD,
                               "--like-accelerate prints accelerate's figures only (no "
                               "--context, --kv-dtype or --training)");
    if (map_path && (!context || batch > 1 || training || like_accel || kv_text))
        return cli_usage_error(CMD, "--device-map needs --context, and takes no --batch, "
                               "--kv-dtype, --training or --like-accelerate");
    if ((prompt || no_prefetch) && !map_path)
        return cli_usage_error(CMD, "--prompt and --no-prefetch go with --device-map");
    if (prompt < 0 || (map_path && prompt > context))
        return cli_usage_error(CMD, "--prompt must be from 1 to --context");
    if (map_path && dtypes_text && strchr(dtypes_text, ','))
        return cli_usage_error(CMD, "--device-map takes one --dtypes value (the compute dtype)");
    bm_dtype kv_dtype = BM_DTYPE_INVALID;
    if (kv_text) {
        kv_dtype = bm_dtype_parse(kv_text);
        if (kv_dtype == BM_DTYPE_INVALID || kv_dtype == BM_BOOL)
            return cli_usage_error(CMD, "--kv-dtype '%s' is not a dtype for a KV cache", kv_text);
    }
    const char *labels[MAX_DTYPES];
    bm_dtype dts[MAX_DTYPES];
    int n = 0;
    if ((rc = parse_dtypes(dtypes_text ? dtypes_text : like_accel ? ACCEL_DTYPES : DEFAULT_DTYPES,
                           like_accel, labels, dts, &n)))
        return rc;

    bm_error err = {0};
    const char *shown = model_arg ? model_arg : graph ? graph : checkpoint;
    char *config_path = like_accel && model_arg && !graph && !checkpoint
                            ? config_path_for(model_arg)
                            : NULL;
    if (config_path) {
        /* accelerate's AutoModel: the base model, no task head */
        bm_tree *base = NULL;
        bm_hfconfig_opts ho = {.base_model_only = true};
        if (bm_hfconfig_load_opts(config_path, &ho, &base, &err)) {
            free(config_path);
            return cli_fail(CMD, &err);
        }
        free(config_path);
        rc = like_accelerate(base, shown, labels, n, as_json, out_path);
        bm_tree_free(base);
        return rc;
    }
    bm_model *model = NULL;
    bm_model_opts mo = {.model = model_arg, .graph = graph, .checkpoint = checkpoint};
    if (bm_model_open(&mo, &model, &err))
        return cli_fail(CMD, &err);
    if (like_accel) {
        rc = like_accelerate(model->tree, shown, labels, n, as_json, out_path);
        bm_model_close(model);
        return rc;
    }
    if (map_path) {
        rc = run_needs(model, map_path, prompt ? prompt : context, context,
                       dtypes_text ? dts[0] : BM_DTYPE_INVALID, !no_prefetch, as_json, out_path);
        bm_model_close(model);
        return rc;
    }

    bm_model_dims dims;
    bool have_dims = bm_model_dims_for_tree(model->tree, &dims, &err) == BM_OK;
    if (!have_dims && context) {
        bm_model_close(model);
        return cli_fail(CMD, &err);
    }
    row rows[MAX_DTYPES];
    memset(rows, 0, sizeof rows);
    uint64_t fp32_bytes = 0;
    if (training) {
        bm_accel_sizes as;
        if (bm_accel_sizes_compute(model->tree, &as, &err))
            goto fail;
        fp32_bytes = bits_to_bytes(as.total_bits);
    }
    for (int i = 0; i < n; i++) {
        row *r = &rows[i];
        r->label = labels[i];
        r->dtype = dts[i];
        if (bm_estimate_weights(model->tree, dts[i], BM_COMPAT_BMPLAN, &r->w, &err))
            goto fail;
        r->total = bits_to_bytes(r->w.total_bits);
        if (context) {
            /* bmplan run keeps its caches in float32; --kv-dtype asks what
             * a cache of that dtype (PyTorch's) would take */
            r->kv_is_run = kv_dtype == BM_DTYPE_INVALID;
            r->kv_dtype = r->kv_is_run ? BM_F32 : kv_dtype;
            if (bm_kv_size_compute(&dims, r->kv_dtype, (uint64_t)context, (uint64_t)batch, &r->kv,
                                   &err) ||
                bm_workspace_compute(&dims, (uint64_t)context, (uint64_t)batch, 0, &r->ws, &err))
                goto fail;
            if (__builtin_add_overflow(r->total, r->kv.total_bytes, &r->total) ||
                __builtin_add_overflow(r->total, r->ws.total_bytes, &r->total)) {
                bm_fail(&err, BM_E_OVERFLOW, "the total overflows 64 bits");
                goto fail;
            }
        }
        if (training) {
            /* the row's dtype is the precision trained in; "auto" trains
             * in float32 */
            bm_dtype p = dts[i] == BM_DTYPE_INVALID ? BM_F32 : dts[i];
            if (bm_adam_estimate(fp32_bytes, p, &r->adam, &err))
                goto fail;
        }
    }

    char *text = NULL;
    if (as_json) {
        json_t *o = json_object();
        json_object_set_new(o, "format", json_string("bmplan-estimate/1"));
        json_object_set_new(o, "model", json_string(shown));
        json_object_set_new(o, "source", json_string(model->graph_source ? model->graph_source
                                                                         : shown));
        json_object_set_new(o, "arch", have_dims ? json_string(dims.arch) : json_null());
        json_object_set_new(o, "parameters", jint(rows[0].w.params));
        json_t *ns = json_array();
        for (int i = 0; i < model->tree->n_no_split; i++)
            json_array_append_new(ns, json_string(model->tree->no_split[i]));
        json_object_set_new(o, "no_split_modules", ns);
        json_object_set_new(o, "context", context ? json_integer(context) : json_null());
        json_object_set_new(o, "batch", context ? json_integer(batch) : json_null());
        json_object_set_new(o, "kv_rule", context ? json_string(dims.cache_note) : json_null());
        json_t *arr = json_array();
        for (int i = 0; i < n; i++)
            json_array_append_new(arr, row_json(&rows[i], context, training != NULL));
        json_object_set_new(o, "dtypes", arr);
        text = cli_json_text(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(o);
    } else {
        text = people_table(model, shown, &dims, have_dims, rows, n, context, batch,
                            training != NULL);
    }
    bm_model_close(model);
    if (!text)
        return cli_errorf(CMD, "out of memory");
    rc = cli_write_output(CMD, out_path, text, strlen(text));
    free(text);
    return rc;
fail:
    bm_model_close(model);
    return cli_fail(CMD, &err);
}
