/*
 * estimate.c - memory sizing: weights with the planner's size rule and
 * accelerate's largest layer, accelerate estimate-memory's figures and
 * table, KV-cache rules per architecture, the runner's workspace, the Adam
 * training rule, the GPU table and the fleet search on the planner.
 */
#include "bmplan.h"
#include "estimate.h"
#include "planner.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t bits_to_bytes_u(uint64_t bits)
{
    return bits / 8 + (bits % 8 != 0);
}

static bm_status nomem(bm_error *err)
{
    return bm_fail(err, BM_E_NOMEM, "out of memory");
}

/* ------------------------------------------------------------------------
 * Largest layer
 * ------------------------------------------------------------------------ */

typedef struct layer_ref {
    bool is_tensor;
    int32_t index; /* tensor or module index; BM_NONE when no layer */
} layer_ref;

/* get_max_layer_size: strictly larger replaces, equal adds a tie. */
static void consider(uint64_t size, layer_ref ref, uint64_t *max, layer_ref *first,
                     int32_t *ties)
{
    if (size > *max) {
        *max = size;
        *first = ref;
        *ties = 1;
    } else if (size == *max) {
        if (*ties == 0)
            *first = ref;
        (*ties)++;
    }
}

static void largest_layer_ref(const bm_tree *tree, const uint64_t *module_bits,
                              const uint64_t *tensor_bits, char *const *no_split,
                              int n_no_split, uint64_t *bits, layer_ref *first,
                              int32_t *n_ties)
{
    uint64_t max = 0;
    int32_t ties = 0;
    *first = (layer_ref){false, BM_NONE};
    if (tree->n_modules == 0)
        goto done;
    const bm_module *root = &tree->modules[0];
    /* the root's own parameters first */
    for (int32_t i = 0; i < root->n_params; i++) {
        int32_t t = root->tensor_begin + i;
        consider(tensor_bits[t], (layer_ref){true, t}, &max, first, &ties);
    }
    /* then its children in pre-order; a layer's subtree is skipped, a
     * split module is replaced by its children (pre-order = front insertion
     * of the children into accelerate's work list) */
    for (int32_t m = 1; m < tree->n_modules;) {
        const bm_module *mod = &tree->modules[m];
        if (mod->n_children == 0 || bm_class_in(mod->cls, no_split, n_no_split)) {
            consider(module_bits[m], (layer_ref){false, m}, &max, first, &ties);
            m = mod->subtree_end > m ? mod->subtree_end : m + 1;
        } else {
            m++;
        }
    }
    /* then its buffers */
    for (int32_t i = 0; i < root->n_buffers; i++) {
        int32_t t = root->tensor_begin + root->n_params + i;
        consider(tensor_bits[t], (layer_ref){true, t}, &max, first, &ties);
    }
done:
    *bits = max;
    *n_ties = ties;
}

static const char *layer_name(const bm_tree *tree, layer_ref r)
{
    if (r.index == BM_NONE)
        return "";
    return r.is_tensor ? tree->tensors[r.index].name : tree->modules[r.index].name;
}

void bm_largest_layer(const bm_tree *tree, const uint64_t *module_bits,
                      const uint64_t *tensor_bits, char *const *no_split,
                      int n_no_split, uint64_t *bits, const char **name,
                      int32_t *n_ties)
{
    layer_ref r;
    int32_t ties;
    largest_layer_ref(tree, module_bits, tensor_bits, no_split, n_no_split, bits, &r,
                      &ties);
    if (name)
        *name = layer_name(tree, r);
    if (n_ties)
        *n_ties = ties;
}

/* ------------------------------------------------------------------------
 * Weights
 * ------------------------------------------------------------------------ */

static bm_status tree_size_arrays(const bm_tree *tree, uint64_t **mb, uint64_t **tb,
                                  bm_error *err)
{
    *mb = calloc((size_t)(tree->n_modules ? tree->n_modules : 1), sizeof **mb);
    *tb = calloc((size_t)(tree->n_tensors ? tree->n_tensors : 1), sizeof **tb);
    if (!*mb || !*tb) {
        free(*mb);
        free(*tb);
        *mb = *tb = NULL;
        return nomem(err);
    }
    return BM_OK;
}

bm_status bm_estimate_weights(const bm_tree *tree, bm_dtype dtype,
                              bm_compat compat, bm_weights *out, bm_error *err)
{
    memset(out, 0, sizeof *out);
    out->dtype = dtype;
    out->largest_name = "";
    uint64_t *mb, *tb;
    bm_status st = tree_size_arrays(tree, &mb, &tb, err);
    if (st)
        return st;
    bm_size_opts opts = {.dtype = dtype, .compat = compat};
    if ((st = bm_tree_sizes(tree, &opts, mb, tb, err)))
        goto out;
    for (int32_t i = 0; i < tree->n_tensors; i++) {
        uint64_t *acc = tree->tensors[i].is_buffer ? &out->buffer_bits : &out->param_bits;
        if (__builtin_add_overflow(*acc, tb[i], acc)) {
            st = bm_fail(err, BM_E_OVERFLOW, "model size overflows");
            goto out;
        }
    }
    out->total_bits = tree->n_modules ? mb[0] : 0;
    out->params = bm_tree_param_count(tree);
    bm_largest_layer(tree, mb, tb, tree->no_split, tree->n_no_split, &out->largest_bits,
                     &out->largest_name, &out->n_largest);
out:
    free(mb);
    free(tb);
    return st;
}

/* ------------------------------------------------------------------------
 * accelerate estimate-memory
 * ------------------------------------------------------------------------ */

static bool fractional_dtype(bm_dtype dt)
{
    return dt == BM_BOOL || dt == BM_INT4 || dt == BM_INT2;
}

bm_status bm_accel_sizes_compute(const bm_tree *tree, bm_accel_sizes *out,
                                 bm_error *err)
{
    memset(out, 0, sizeof *out);
    out->largest_name = "";
    uint64_t *mb, *tb;
    bm_status st = tree_size_arrays(tree, &mb, &tb, err);
    if (st)
        return st;
    /* every floating tensor as float32, through special dtypes (which may
     * grow a tensor, unlike the dtype argument) */
    int32_t nt = tree->n_tensors;
    const char **names = malloc((size_t)(nt ? nt : 1) * sizeof *names);
    bm_dtype *dts = malloc((size_t)(nt ? nt : 1) * sizeof *dts);
    int ns = 0;
    if (!names || !dts) {
        st = nomem(err);
        goto out;
    }
    for (int32_t i = 0; i < nt; i++) {
        const bm_tensor *t = &tree->tensors[i];
        if (t->alias_of == BM_NONE && bm_dtype_is_floating(t->dtype) && t->dtype != BM_F32) {
            names[ns] = t->name;
            dts[ns++] = BM_F32;
        }
    }
    bm_size_opts opts = {.dtype = BM_DTYPE_INVALID,
                         .n_special = ns,
                         .special_names = names,
                         .special_dtypes = dts,
                         .compat = BM_COMPAT_LATEST};
    if ((st = bm_tree_sizes(tree, &opts, mb, tb, err)))
        goto out;
    out->total_bits = tree->n_modules ? mb[0] : 0;
    layer_ref r;
    int32_t ties;
    largest_layer_ref(tree, mb, tb, tree->no_split, tree->n_no_split, &out->largest_bits,
                      &r, &ties);
    out->largest_name = layer_name(tree, r);
    /* Python's sums turn into floats as soon as a bool/int4 size is added */
    out->total_is_int = true;
    out->largest_is_int = true;
    for (int32_t i = 0; i < nt; i++) {
        const bm_tensor *t = &tree->tensors[i];
        if (t->alias_of != BM_NONE || !fractional_dtype(t->dtype))
            continue;
        out->total_is_int = false;
        if (r.index == BM_NONE)
            continue;
        if (r.is_tensor ? i == r.index
                        : (i >= tree->modules[r.index].tensor_begin &&
                           i < tree->modules[r.index].subtree_tensor_end))
            out->largest_is_int = false;
    }
out:
    free(names);
    free(dts);
    free(mb);
    free(tb);
    return st;
}

bm_status bm_accel_row_make(const bm_accel_sizes *s, const char *dtype,
                            bm_accel_row *row, bm_error *err)
{
    static const struct {
        const char *name;
        double div;
    } divs[] = {{"float32", 1}, {"float16", 2}, {"int8", 4}, {"int4", 8}};
    memset(row, 0, sizeof *row);
    int k = -1;
    for (int i = 0; i < 4; i++)
        if (dtype && strcmp(dtype, divs[i].name) == 0)
            k = i;
    if (k < 0)
        return bm_fail(err, BM_E_INVALID,
                       "accelerate estimate-memory has no dtype '%.64s' (float32, "
                       "float16, int8, int4)",
                       dtype ? dtype : "");
    double total = (double)s->total_bits / 8, largest = (double)s->largest_bits / 8;
    row->dtype = divs[k].name;
    row->total = total / divs[k].div;
    row->largest = largest / divs[k].div;
    row->total_is_int = k == 0 && s->total_is_int;
    row->largest_is_int = k == 0 && s->largest_is_int;
    /* estimate_training_usage is given the float32 total for every row:
     * float32 peaks at 4x (step), float16 at 2x (optimizer), int rows N/A */
    row->training = k == 0 ? total * 4 : k == 1 ? total * 2 : -1;
    return BM_OK;
}

/* Python's str(round(x, 2)) for a float: the 2-decimal rounding of the
 * exact binary value (glibc rounds exactly, ties to even, like Python),
 * printed as its shortest repr: trailing zeros dropped, one kept. */
static void py_round2(double x, char *buf, size_t len)
{
    snprintf(buf, len, "%.2f", x);
    char *dot = strchr(buf, '.');
    if (!dot)
        return;
    char *end = buf + strlen(buf) - 1;
    while (end > dot + 1 && *end == '0')
        *end-- = 0;
}

char *bm_accel_convert_bytes(double size, bool integral, char *buf, size_t len)
{
    static const char *const units[] = {"bytes", "KB", "MB", "GB", "TB"};
    char num[64];
    for (int i = 0; i < 5; i++) {
        if (size < 1024.0) {
            if (i == 0 && integral)
                snprintf(num, sizeof num, "%.0f", size);
            else
                py_round2(size, num, sizeof num);
            snprintf(buf, len, "%s %s", num, units[i]);
            return buf;
        }
        size /= 1024.0;
    }
    py_round2(size, num, sizeof num);
    snprintf(buf, len, "%s PB", num);
    return buf;
}

/* Python's len(): code points of a UTF-8 string. */
static size_t py_len(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

/* Python's str.center(width) */
static void sb_center(bm_sbuf *b, const char *s, size_t width)
{
    size_t n = py_len(s);
    if (n >= width) {
        bm_sb_str(b, s);
        return;
    }
    size_t marg = width - n;
    size_t left = marg / 2 + (marg & width & 1);
    bm_sb_rep(b, " ", left);
    bm_sb_str(b, s);
    bm_sb_rep(b, " ", marg - left);
}

#define BOX_V "\xe2\x94\x82"  /* │ */
#define BOX_H "\xe2\x94\x80"  /* ─ */
#define BOX_TL "\xe2\x94\x8c" /* ┌ */
#define BOX_TR "\xe2\x94\x90" /* ┐ */
#define BOX_ML "\xe2\x94\x9c" /* ├ */
#define BOX_MR "\xe2\x94\xa4" /* ┤ */
#define BOX_MM "\xe2\x94\xbc" /* ┼ */
#define BOX_TM "\xe2\x94\xac" /* ┬ */
#define BOX_BL "\xe2\x94\x94" /* └ */
#define BOX_BR "\xe2\x94\x98" /* ┘ */
#define BOX_BM "\xe2\x94\xb4" /* ┴ */

#define ACCEL_COLS 4

/* create_ascii_table's make_row: left, runs of ─ joined by middle, diff
 * more ─, right */
static void make_row(bm_sbuf *b, const char *l, const char *mid, const char *r,
                     const size_t *w, size_t diff)
{
    bm_sb_str(b, l);
    for (int i = 0; i < ACCEL_COLS; i++) {
        if (i)
            bm_sb_str(b, mid);
        bm_sb_rep(b, BOX_H, w[i]);
    }
    bm_sb_rep(b, BOX_H, diff);
    bm_sb_str(b, r);
}

static void table_line(bm_sbuf *b, char cells[][64], const size_t *w)
{
    bm_sb_str(b, BOX_V);
    for (int i = 0; i < ACCEL_COLS; i++) {
        if (i)
            bm_sb_str(b, BOX_V);
        sb_center(b, cells[i], w[i]);
    }
    bm_sb_str(b, BOX_V);
    bm_sb_str(b, "\n");
}

char *bm_accel_table(const char *model, const bm_accel_row *rows, int n)
{
    static const char *const headers[ACCEL_COLS] = {"dtype", "Largest Layer", "Total Size",
                                                    "Training using Adam"};
    if (n < 1)
        return NULL;
    char(*cells)[ACCEL_COLS][64] = calloc((size_t)n, sizeof *cells);
    bm_sbuf title = {0}, b = {0};
    if (!cells)
        return NULL;
    for (int r = 0; r < n; r++) {
        snprintf(cells[r][0], 64, "%s", rows[r].dtype);
        bm_accel_convert_bytes(rows[r].largest, rows[r].largest_is_int, cells[r][1], 64);
        bm_accel_convert_bytes(rows[r].total, rows[r].total_is_int, cells[r][2], 64);
        if (rows[r].training < 0)
            snprintf(cells[r][3], 64, "N/A");
        else
            bm_accel_convert_bytes(rows[r].training, rows[r].total_is_int, cells[r][3], 64);
    }
    size_t w[ACCEL_COLS];
    for (int c = 0; c < ACCEL_COLS; c++) {
        w[c] = py_len(headers[c]);
        for (int r = 0; r < n; r++)
            if (py_len(cells[r][c]) > w[c])
                w[c] = py_len(cells[r][c]);
    }
    bm_sb_str(&title, "Memory Usage for loading `");
    bm_sb_str(&title, model ? model : "");
    bm_sb_str(&title, "`");
    if (title.oom) {
        free(cells);
        free(title.p);
        return NULL;
    }
    size_t sum = 0;
    for (int c = 0; c < ACCEL_COLS; c++)
        sum += w[c];
    size_t tlen = py_len(title.p);
    size_t diff = 0;
    /* the separator's length before any widening: corners, runs, joints */
    size_t sep_len = sum + (ACCEL_COLS - 1) + 2;
    if (tlen > sum) {
        diff = tlen > sep_len ? tlen - sep_len : sep_len - tlen;
        w[ACCEL_COLS - 1] += diff;
    }
    size_t sep_now = sum + diff + (ACCEL_COLS - 1) + diff + 2;
    make_row(&b, BOX_TL, BOX_H, BOX_TR, w, diff);
    bm_sb_str(&b, "\n" BOX_V);
    sb_center(&b, title.p, sep_now - 2);
    bm_sb_str(&b, BOX_V "\n");
    make_row(&b, BOX_ML, BOX_TM, BOX_MR, w, diff);
    bm_sb_str(&b, "\n");
    /* accelerate widens the last column a second time here; the rows and
     * the separator then have the same length */
    size_t wsep[ACCEL_COLS];
    memcpy(wsep, w, sizeof w);
    w[ACCEL_COLS - 1] += diff;
    char head[1][ACCEL_COLS][64];
    for (int c = 0; c < ACCEL_COLS; c++)
        snprintf(head[0][c], 64, "%s", headers[c]);
    table_line(&b, head[0], w);
    make_row(&b, BOX_ML, BOX_MM, BOX_MR, wsep, diff);
    bm_sb_str(&b, "\n");
    for (int r = 0; r < n; r++)
        table_line(&b, cells[r], w);
    bm_sb_str(&b, BOX_BL);
    for (int c = 0; c < ACCEL_COLS; c++) {
        if (c)
            bm_sb_str(&b, BOX_BM);
        bm_sb_rep(&b, BOX_H, w[c]);
    }
    bm_sb_str(&b, BOX_BR);
    free(cells);
    free(title.p);
    return bm_sb_finish(&b, NULL);
}

/* ------------------------------------------------------------------------
 * Hyper-parameters
 * ------------------------------------------------------------------------ */

#define DIM_MAX ((int64_t)1 << 40)

typedef struct cfg {
    const json_t *obj;
    const char *source;
    bm_error *err;
} cfg;

/* The first key present (null counts as absent). 1: found, 0: absent,
 * -1: present but not a positive integer (err set). */
static int cfg_int(const cfg *c, const char *const *keys, int64_t *out)
{
    for (int i = 0; keys[i]; i++) {
        const json_t *v = json_object_get(c->obj, keys[i]);
        if (!v || json_is_null(v))
            continue;
        double d;
        if (json_is_integer(v)) {
            json_int_t x = json_integer_value(v);
            if (x >= 1 && x <= DIM_MAX) {
                *out = (int64_t)x;
                return 1;
            }
        } else if (json_is_real(v) && (d = json_real_value(v)) >= 1 && d <= (double)DIM_MAX &&
                   d == floor(d)) {
            *out = (int64_t)d;
            return 1;
        }
        bm_fail(c->err, BM_E_FORMAT, "%s: '%s' must be a positive integer (at most 2^40)",
                c->source, keys[i]);
        return -1;
    }
    return 0;
}

static bm_status cfg_need(const cfg *c, const char *const *keys, int64_t *out)
{
    int r = cfg_int(c, keys, out);
    if (r > 0)
        return BM_OK;
    if (r < 0)
        return c->err ? c->err->code : BM_E_FORMAT;
    return bm_fail(c->err, BM_E_FORMAT, "%s: the configuration has no '%s'", c->source,
                   keys[0]);
}

/* A boolean key: absent or null gives `dflt`. */
static int cfg_bool(const cfg *c, const char *key, bool dflt, bool *out)
{
    const json_t *v = json_object_get(c->obj, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_boolean(v)) {
        bm_fail(c->err, BM_E_FORMAT, "%s: '%s' must be true or false", c->source, key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

/* "GPT-NeoX", "bert-mlm" -> "gpt_neox", "bert" */
static void normalise_arch(const char *in, char *out, size_t len)
{
    size_t o = 0;
    for (; *in && o + 1 < len; in++)
        out[o++] = *in == '-' ? '_' : (char)tolower((unsigned char)*in);
    out[o] = 0;
    static const char *const families[] = {"bert", "roberta", "distilbert", "gpt_neox"};
    for (size_t i = 0; i < sizeof families / sizeof *families; i++) {
        size_t fl = strlen(families[i]);
        if (strncmp(out, families[i], fl) == 0 && (out[fl] == 0 || out[fl] == '_')) {
            snprintf(out, len, "%s", families[i][0] == 'r' || families[i][0] == 'd' ? "bert"
                                                                                   : families[i]);
            return;
        }
    }
}

static const char *const K_LAYERS[] = {"num_hidden_layers", "n_layer", "num_layers", NULL};
static const char *const K_HEADS[] = {"num_attention_heads", "n_head", "num_heads", NULL};
static const char *const K_HIDDEN[] = {"hidden_size", "n_embd", "n_embed", "d_model", NULL};
static const char *const K_INTER[] = {"intermediate_size", "n_inner", "ffn_dim", "d_ff",
                                      "ffn_hidden_size", NULL};
static const char *const K_VOCAB[] = {"vocab_size", NULL};
static const char *const K_POS[] = {"max_position_embeddings", "n_positions", NULL};
static const char *const K_KV[] = {"num_key_value_heads", NULL};
static const char *const K_HEAD_DIM[] = {"head_dim", NULL};

enum arch_kind { ARCH_GQA, ARCH_MHA, ARCH_FALCON, ARCH_T5, ARCH_ENCODER };

static const struct {
    const char *name;
    enum arch_kind kind;
} arches[] = {
    {"llama", ARCH_GQA},  {"mistral", ARCH_GQA},   {"mixtral", ARCH_GQA},
    {"qwen2", ARCH_GQA},  {"gemma", ARCH_GQA},     {"phi", ARCH_GQA},
    {"gpt2", ARCH_MHA},   {"gpt_neox", ARCH_MHA},  {"opt", ARCH_MHA},
    {"bloom", ARCH_MHA},  {"falcon", ARCH_FALCON}, {"t5", ARCH_T5},
    {"bert", ARCH_ENCODER},
};

bm_status bm_model_dims_from_config(const char *arch, const void *config,
                                    const char *source, bm_model_dims *out,
                                    bm_error *err)
{
    memset(out, 0, sizeof *out);
    if (!source)
        source = "config";
    const json_t *obj = config;
    char a[32] = "";
    if (arch && *arch)
        normalise_arch(arch, a, sizeof a);
    else if (obj && json_is_object(obj) && json_is_string(json_object_get(obj, "model_type")))
        normalise_arch(json_string_value(json_object_get(obj, "model_type")), a, sizeof a);
    int kind = -1;
    for (size_t i = 0; i < sizeof arches / sizeof *arches; i++)
        if (strcmp(a, arches[i].name) == 0)
            kind = (int)arches[i].kind;
    if (kind < 0)
        return bm_fail(err, BM_E_UNSUPPORTED,
                       "%s: no memory rules for architecture '%s' (known: llama, mistral, "
                       "mixtral, qwen2, gemma, phi, gpt2, gpt_neox, opt, bloom, falcon, t5, bert)",
                       source, a[0] ? a : "(none)");
    if (!obj || !json_is_object(obj))
        return bm_fail(err, BM_E_FORMAT, "%s: no hyper-parameters (config) to size the %s "
                       "model from", source, a);
    snprintf(out->arch, sizeof out->arch, "%s", a);
    cfg c = {obj, source, err};
    bm_status st;
    out->has_cache = kind != ARCH_ENCODER;
    if (kind == ARCH_T5) {
        /* T5: num_layers encoder blocks, num_decoder_layers (default
         * num_layers) decoder blocks; d_kv is the head size */
        static const char *const k_enc[] = {"num_layers", NULL};
        static const char *const k_dec[] = {"num_decoder_layers", "num_layers", NULL};
        static const char *const k_dkv[] = {"d_kv", NULL};
        if ((st = cfg_need(&c, k_enc, &out->layers)) || (st = cfg_need(&c, k_dec, &out->layers)) ||
            (st = cfg_need(&c, K_HEADS, &out->heads)) || (st = cfg_need(&c, k_dkv, &out->head_dim)))
            return st;
        out->kv_heads = out->heads;
        out->cross_layers = out->layers;
    } else {
        if ((st = cfg_need(&c, K_LAYERS, &out->layers)) || (st = cfg_need(&c, K_HEADS, &out->heads)))
            return st;
    }
    if ((st = cfg_need(&c, K_HIDDEN, &out->hidden)) || (st = cfg_need(&c, K_VOCAB, &out->vocab)))
        return st;
    int r = cfg_int(&c, K_INTER, &out->intermediate);
    if (r < 0)
        return err ? err->code : BM_E_FORMAT;
    if (r == 0)
        out->intermediate = 4 * out->hidden; /* gpt2, bloom, falcon: 4 x hidden */
    if (cfg_int(&c, K_POS, &out->max_positions) < 0)
        return err ? err->code : BM_E_FORMAT;
    if (kind != ARCH_T5) {
        r = cfg_int(&c, K_HEAD_DIM, &out->head_dim);
        if (r < 0)
            return err ? err->code : BM_E_FORMAT;
        if (r == 0) {
            if (out->hidden % out->heads)
                return bm_fail(err, BM_E_FORMAT,
                               "%s: hidden size %lld is not a multiple of %lld heads", source,
                               (long long)out->hidden, (long long)out->heads);
            out->head_dim = out->hidden / out->heads;
        }
    }
    const char *extra = "";
    switch ((enum arch_kind)kind) {
    case ARCH_GQA:
        r = cfg_int(&c, K_KV, &out->kv_heads);
        if (r < 0)
            return err ? err->code : BM_E_FORMAT;
        if (r == 0)
            out->kv_heads = out->heads;
        if (cfg_int(&c, (const char *const[]){"sliding_window", NULL}, &out->sliding_window) < 0)
            return err ? err->code : BM_E_FORMAT;
        if (out->sliding_window)
            extra = "; every context token is counted, as transformers' default cache keeps "
                    "them (a rolling cache would keep sliding_window tokens)";
        break;
    case ARCH_MHA:
        out->kv_heads = out->heads;
        if (strcmp(a, "bloom") == 0)
            extra = "; bloom keeps K as [batch x heads, head_dim, tokens] and V as "
                    "[batch x heads, tokens, head_dim], the same bytes";
        break;
    case ARCH_FALCON: {
        /* transformers' FalconAttention: num_kv_heads when
         * new_decoder_architecture or not multi_query, else 1 */
        bool new_arch, mq;
        if (cfg_bool(&c, "new_decoder_architecture", false, &new_arch) < 0 ||
            cfg_bool(&c, "multi_query", true, &mq) < 0)
            return err ? err->code : BM_E_FORMAT;
        if (new_arch || !mq) {
            r = cfg_int(&c, (const char *const[]){"num_kv_heads", NULL}, &out->kv_heads);
            if (r < 0)
                return err ? err->code : BM_E_FORMAT;
            if (r == 0)
                out->kv_heads = out->heads;
            extra = new_arch ? "; new decoder architecture: num_kv_heads K/V heads" : "";
        } else {
            out->kv_heads = 1;
            extra = "; multi-query: one K/V head shared by every query head";
        }
        break;
    }
    case ARCH_T5:
        break;
    case ARCH_ENCODER:
        out->kv_heads = out->heads;
        break;
    }
    if (out->kv_heads > out->heads || out->heads % out->kv_heads)
        return bm_fail(err, BM_E_FORMAT, "%s: %lld key/value heads do not divide %lld heads",
                       source, (long long)out->kv_heads, (long long)out->heads);
    if (kind == ARCH_ENCODER)
        snprintf(out->cache_note, sizeof out->cache_note,
                 "encoder-only model: no KV cache");
    else if (kind == ARCH_T5)
        snprintf(out->cache_note, sizeof out->cache_note,
                 "decoder self-attention K/V of every decoder token plus cross-attention K/V "
                 "of every encoder token, the encoder input taken as long as the context "
                 "(%lld decoder layers x %lld heads x %lld x 2 each)",
                 (long long)out->layers, (long long)out->heads, (long long)out->head_dim);
    else
        snprintf(out->cache_note, sizeof out->cache_note,
                 "K and V of every layer: %lld layers x %lld kv heads x %lld head dim x 2 per "
                 "token%s",
                 (long long)out->layers, (long long)out->kv_heads, (long long)out->head_dim,
                 extra);
    return BM_OK;
}

bm_status bm_model_dims_for_tree(const bm_tree *tree, bm_model_dims *out, bm_error *err)
{
    return bm_model_dims_from_config(tree->arch, tree->config,
                                     tree->name ? tree->name : "model", out, err);
}

/* ------------------------------------------------------------------------
 * KV cache
 * ------------------------------------------------------------------------ */

/* a x b x ... with overflow reported */
static bool mul_u64(uint64_t *acc, uint64_t x)
{
    return !__builtin_mul_overflow(*acc, x, acc);
}

bm_status bm_kv_size_compute(const bm_model_dims *d, bm_dtype dtype, uint64_t context,
                             uint64_t batch, bm_kv_size *out, bm_error *err)
{
    memset(out, 0, sizeof *out);
    unsigned bits = bm_dtype_storage_bits(dtype);
    if (dtype == BM_BOOL || bits == 0)
        return bm_fail(err, BM_E_INVALID, "the KV cache cannot be held in %s",
                       bm_dtype_name(dtype) ? bm_dtype_name(dtype) : "that dtype");
    if (!d->has_cache)
        return BM_OK;
    uint64_t lt = (uint64_t)d->kv_heads;
    bool ok = mul_u64(&lt, (uint64_t)d->head_dim) && mul_u64(&lt, 2) && mul_u64(&lt, bits);
    out->layer_token_bits = lt;
    uint64_t self = lt, cross = lt;
    ok = ok && mul_u64(&self, (uint64_t)d->layers) && mul_u64(&cross, (uint64_t)d->cross_layers);
    /* per token in whole bytes; sub-byte dtypes pack K and V of a layer */
    uint64_t self_tok = (self + 7) / 8, cross_tok = (cross + 7) / 8;
    ok = ok && !__builtin_add_overflow(self_tok, cross_tok, &out->token_bytes);
    uint64_t sb = self, cb = cross;
    ok = ok && mul_u64(&sb, context) && mul_u64(&sb, batch) && mul_u64(&cb, context) &&
         mul_u64(&cb, batch);
    if (!ok)
        return bm_fail(err, BM_E_OVERFLOW, "the KV cache size overflows 64 bits");
    out->self_bytes = (sb + 7) / 8;
    out->cross_bytes = (cb + 7) / 8;
    if (__builtin_add_overflow(out->self_bytes, out->cross_bytes, &out->total_bytes))
        return bm_fail(err, BM_E_OVERFLOW, "the KV cache size overflows 64 bits");
    return BM_OK;
}

bm_status bm_kv_layer_modules(const bm_tree *tree, const bm_model_dims *d, int32_t **mods,
                              int32_t *n, bm_error *err)
{
    *mods = NULL;
    *n = 0;
    if (!d->has_cache || tree->n_modules == 0)
        return BM_OK;
    int32_t *v = malloc((size_t)tree->n_modules * sizeof *v);
    if (!v)
        return nomem(err);
    bool t5 = strcmp(d->arch, "t5") == 0;
    int32_t k = 0;
    for (int32_t m = 1; m < tree->n_modules;) {
        const bm_module *mod = &tree->modules[m];
        if (bm_class_in(mod->cls, tree->no_split, tree->n_no_split)) {
            /* T5's encoder blocks keep no cache */
            if (!t5 || strncmp(mod->name, "decoder.", 8) == 0)
                v[k++] = m;
            m = mod->subtree_end > m ? mod->subtree_end : m + 1;
        } else {
            m++;
        }
    }
    *mods = v;
    *n = k;
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * Workspace
 * ------------------------------------------------------------------------ */

/* bm_model_dims as the runner's rules take them */
static bm_run_dims run_dims_of(const bm_model_dims *d)
{
    bm_run_dims r = {.gpt2 = strcmp(d->arch, "gpt2") == 0, .hidden = d->hidden,
                     .layers = d->layers, .heads = d->heads, .kv_heads = d->kv_heads,
                     .head_dim = d->head_dim, .intermediate = d->intermediate,
                     .vocab = d->vocab};
    return r;
}

static bm_status run_rules_of(const bm_model_dims *d, uint64_t context, bm_run_rules *r,
                              bm_error *err)
{
    if (context == 0 || context > ((uint64_t)1 << 32))
        return bm_fail(err, BM_E_INVALID, "a context of %llu tokens is out of range",
                       (unsigned long long)context);
    bm_run_dims rd = run_dims_of(d);
    return bm_run_rules_compute(&rd, (int64_t)context, (int64_t)context, false, r, err);
}

bm_status bm_workspace_compute(const bm_model_dims *d, uint64_t context, uint64_t batch,
                               uint64_t staging_bytes, bm_workspace *out, bm_error *err)
{
    memset(out, 0, sizeof *out);
    out->estimate = true;
    bm_run_rules r;
    bm_status st = run_rules_of(d, context, &r, err);
    if (st)
        return st;
    uint64_t total;
    bool ok = !__builtin_mul_overflow(r.layer_act, batch, &out->layer_bytes) &&
              !__builtin_mul_overflow(r.embed_act, batch, &out->ids_bytes) &&
              !__builtin_mul_overflow(r.head_act, batch, &out->head_bytes) &&
              !__builtin_mul_overflow(r.device_act, batch, &total) &&
              !__builtin_add_overflow(total, staging_bytes, &total);
    if (!ok)
        return bm_fail(err, BM_E_OVERFLOW, "the workspace size overflows 64 bits");
    out->staging_bytes = staging_bytes;
    out->total_bytes = total;
    return BM_OK;
}

bm_status bm_run_layer_kv(const bm_model_dims *d, uint64_t context, uint64_t batch,
                          uint64_t *bytes, bm_error *err)
{
    *bytes = 0;
    bm_run_rules r;
    bm_status st = run_rules_of(d, context, &r, err);
    if (st)
        return st;
    if (__builtin_mul_overflow(r.layer_kv, batch, bytes))
        return bm_fail(err, BM_E_OVERFLOW, "the KV cache size overflows 64 bits");
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * Adam
 * ------------------------------------------------------------------------ */

bm_status bm_adam_estimate(uint64_t fp32_bytes, bm_dtype precision, bm_adam *out,
                           bm_error *err)
{
    memset(out, 0, sizeof *out);
    if (precision != BM_F32 && precision != BM_F16 && precision != BM_BF16)
        return BM_OK; /* accelerate: N/A */
    uint64_t two, four;
    if (__builtin_mul_overflow(fp32_bytes, 2, &two) ||
        __builtin_mul_overflow(fp32_bytes, 4, &four))
        return bm_fail(err, BM_E_OVERFLOW, "the training size overflows 64 bits");
    out->available = true;
    out->model = fp32_bytes;
    out->optimizer = two;
    if (precision == BM_F32) {
        out->gradients = fp32_bytes;
        out->step = four;
    } else {
        /* mixed precision: float32 master weights, float32 + float16
         * gradients, two float32 states; the step is the optimizer's */
        out->gradients = fp32_bytes + fp32_bytes / 2;
        out->step = two;
    }
    out->peak = out->model;
    if (out->gradients > out->peak)
        out->peak = out->gradients;
    if (out->optimizer > out->peak)
        out->peak = out->optimizer;
    if (out->step > out->peak)
        out->peak = out->step;
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * GPUs
 * ------------------------------------------------------------------------ */

#define MIB ((uint64_t)1 << 20)

/* memory.total as nvidia-smi reports it for each board */
const bm_gpu_type bm_gpu_types[] = {
    {"a10", "a10-24gb", "NVIDIA A10 24GB", 23028 * MIB},
    {"l4", "l4-24gb", "NVIDIA L4 24GB", 23034 * MIB},
    {"rtx4090", "4090 geforce-rtx-4090", "NVIDIA GeForce RTX 4090 24GB", 24564 * MIB},
    {"a100-40gb", "a100-40", "NVIDIA A100 40GB", 40960 * MIB},
    {"l40s", "l40s-48gb", "NVIDIA L40S 48GB", 46068 * MIB},
    {"a100-80gb", "a100 a100-80", "NVIDIA A100 80GB", 81920 * MIB},
    {"h100", "h100-80gb h100-sxm h100-pcie", "NVIDIA H100 80GB", 81559 * MIB},
    {"h200", "h200-141gb", "NVIDIA H200 141GB", 143771 * MIB},
    {"b200", "b200-180gb b200-192gb", "NVIDIA B200 180GB", 183359 * MIB},
    {NULL, NULL, NULL, 0},
};

/* lower case without '-', '_' and spaces */
static void squash(const char *in, size_t n, char *out, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < n && in[i] && o + 1 < len; i++)
        if (in[i] != '-' && in[i] != '_' && in[i] != ' ')
            out[o++] = (char)tolower((unsigned char)in[i]);
    out[o] = 0;
}

static const bm_gpu_type *gpu_find(const char *name, size_t n)
{
    char want[64], cand[64];
    squash(name, n, want, sizeof want);
    for (const bm_gpu_type *g = bm_gpu_types; g->name; g++) {
        squash(g->name, strlen(g->name), cand, sizeof cand);
        if (strcmp(want, cand) == 0)
            return g;
        for (const char *a = g->aliases; *a;) {
            size_t l = strcspn(a, " ");
            squash(a, l, cand, sizeof cand);
            if (strcmp(want, cand) == 0)
                return g;
            a += l;
            while (*a == ' ')
                a++;
        }
    }
    return NULL;
}

bm_status bm_gpu_spec_parse(const char *text, bm_gpu_spec *out, bm_error *err)
{
    memset(out, 0, sizeof *out);
    if (!text || !*text)
        return bm_fail(err, BM_E_INVALID, "empty GPU type");
    const char *colon = strrchr(text, ':');
    size_t n = colon ? (size_t)(colon - text) : strlen(text);
    if (n == 0 || n >= sizeof out->name)
        return bm_fail(err, BM_E_INVALID, "GPU type '%.80s': expected TYPE or TYPE:COUNT", text);
    if (colon) {
        char *end;
        errno = 0;
        long c = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end || errno || c < 1 || c > 4096)
            return bm_fail(err, BM_E_INVALID,
                           "GPU count '%.40s' in '%.80s' is not an integer from 1 to 4096",
                           colon + 1, text);
        out->count = c;
    }
    memcpy(out->name, text, n);
    out->name[n] = 0;
    const bm_gpu_type *g = gpu_find(out->name, n);
    if (g) {
        snprintf(out->name, sizeof out->name, "%s", g->name);
        snprintf(out->label, sizeof out->label, "%s", g->label);
        out->bytes = g->bytes;
        return BM_OK;
    }
    int64_t bytes;
    bm_error sub = {0};
    if (bm_size_parse(out->name, false, &bytes, &sub) != BM_OK) {
        char names[512] = "";
        size_t o = 0;
        for (const bm_gpu_type *t = bm_gpu_types; t->name && o < sizeof names; t++)
            o += (size_t)snprintf(names + o, sizeof names - o, "%s%s", o ? ", " : "", t->name);
        return bm_fail(err, BM_E_INVALID,
                       "unknown GPU type '%.60s' (known: %s; or a memory size such as 80GiB)",
                       out->name, names);
    }
    out->bytes = (uint64_t)bytes;
    snprintf(out->label, sizeof out->label, "%s GPU", out->name);
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * Fleet
 * ------------------------------------------------------------------------ */

#define FLEET_MAX_GPUS_DEFAULT 4096
#define FLEET_MAX_ROUNDS 64
#define KIB ((uint64_t)1 << 10)

typedef struct fleet_ctx {
    const bm_tree *tree;
    const bm_fleet_opts *o;
    bm_model_dims dims;
    bool has_dims;
    int32_t *kv_mods;     /* modules holding one layer's cache each */
    int32_t n_kv;
    bool kv_everywhere;   /* the tree's layers do not match the config:
                           * every GPU is charged the whole cache */
    bm_dtype kv_dtype;
    uint64_t weights_bits;
    uint64_t largest_bytes; /* staging for a streamed layer */
    /* for the current context and batch */
    uint64_t kv_layer_bits; /* one layer's cache */
    bm_kv_size kv;
    bm_workspace ws;
} fleet_ctx;

void bm_fleet_fit_free(bm_fleet_fit *fit)
{
    if (!fit)
        return;
    free(fit->gpu);
    free(fit->max_memory);
    free(fit->device_map);
    memset(fit, 0, sizeof *fit);
}

static void fleet_ctx_free(fleet_ctx *c)
{
    free(c->kv_mods);
}

static bm_status fleet_ctx_init(fleet_ctx *c, const bm_tree *tree, const bm_fleet_opts *o,
                                bm_error *err)
{
    memset(c, 0, sizeof *c);
    c->tree = tree;
    c->o = o;
    if (o->gpu_bytes == 0)
        return bm_fail(err, BM_E_INVALID, "a GPU needs some memory");
    if (o->context == 0 || o->batch == 0)
        return bm_fail(err, BM_E_INVALID, "context and batch must be at least 1");
    bm_status st = bm_model_dims_for_tree(tree, &c->dims, err);
    if (st)
        return st;
    c->has_dims = true;
    /* bmplan run keeps its caches in float32 */
    c->kv_dtype = o->kv_dtype != BM_DTYPE_INVALID ? o->kv_dtype : BM_F32;
    if ((st = bm_kv_layer_modules(tree, &c->dims, &c->kv_mods, &c->n_kv, err)))
        return st;
    c->kv_everywhere = c->dims.has_cache && c->n_kv != c->dims.layers;
    bm_weights w;
    if ((st = bm_estimate_weights(tree, o->dtype, BM_COMPAT_BMPLAN, &w, err)))
        return st;
    c->weights_bits = w.total_bits;
    c->largest_bytes = bits_to_bytes_u(w.largest_bits);
    return BM_OK;
}

/* KV and workspace for a context and batch */
static bm_status fleet_ctx_size(fleet_ctx *c, uint64_t context, uint64_t batch, bm_error *err)
{
    bm_status st = bm_kv_size_compute(&c->dims, c->kv_dtype, context, batch, &c->kv, err);
    if (st)
        return st;
    if ((st = bm_workspace_compute(&c->dims, context, batch, 0, &c->ws, err)))
        return st;
    if (c->o->kv_dtype == BM_DTYPE_INVALID && c->dims.has_cache && !c->dims.cross_layers) {
        /* the runner's cache of one layer */
        uint64_t b;
        if ((st = bm_run_layer_kv(&c->dims, context, batch, &b, err)))
            return st;
        c->kv_layer_bits = b * 8;
        if (c->kv_layer_bits / 8 != b)
            return bm_fail(err, BM_E_OVERFLOW, "the KV cache size overflows 64 bits");
        return BM_OK;
    }
    /* a cache in kv_dtype: one decoder layer's self-attention cache, and
     * for t5 its cross-attention cache as well */
    uint64_t lb = c->kv.layer_token_bits;
    if (!mul_u64(&lb, context) || !mul_u64(&lb, batch) ||
        (c->dims.cross_layers && !mul_u64(&lb, 2)))
        return bm_fail(err, BM_E_OVERFLOW, "the KV cache size overflows 64 bits");
    c->kv_layer_bits = c->dims.has_cache ? lb : 0;
    return BM_OK;
}

/* The KV cache of `layers` layers (all of them when the tree's layers
 * could not be matched to the configuration). */
static uint64_t fleet_kv_of(const fleet_ctx *c, int32_t layers)
{
    if (c->kv_everywhere)
        return c->kv.total_bytes;
    uint64_t bits;
    if (__builtin_mul_overflow(c->kv_layer_bits, (uint64_t)layers, &bits))
        return UINT64_MAX;
    return bits_to_bytes_u(bits);
}

static uint64_t sub_sat(uint64_t a, uint64_t b)
{
    return a > b ? a - b : 0;
}

static uint64_t add_sat(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_add_overflow(a, b, &r) ? UINT64_MAX : r;
}

/* The CPU's budget when offloading: --cpu, else twice the model (room for
 * everything and for the largest-layer reserve the planner keeps there:
 * unlimited in effect, and a size `bmplan plan` accepts). */
static uint64_t fleet_cpu_budget(const fleet_ctx *c)
{
    if (c->o->has_cpu)
        return c->o->cpu_bytes / KIB * KIB;
    uint64_t w = bits_to_bytes_u(c->weights_bits);
    return add_sat(w, w) / KIB * KIB + KIB;
}

/* One planner run with budgets[i] bytes on GPU i (and the CPU when
 * offloading): what each GPU got, which layers run where. */
static bm_status fleet_plan_once(fleet_ctx *c, int64_t gpus, const uint64_t *budgets,
                                 bool allow_offload, bm_plan **plan, int32_t *layers,
                                 bm_error *err)
{
    bm_budgets b;
    bm_budgets_init(&b);
    bm_status st = BM_OK;
    for (int64_t i = 0; i < gpus && !st; i++)
        st = bm_budgets_set(&b, (bm_device){BM_DEV_GPU, i},
                            (int64_t)(budgets[i] > (uint64_t)(BM_BUDGET_MAX_BITS / 8)
                                          ? BM_BUDGET_MAX_BITS
                                          : budgets[i] * 8),
                            err);
    if (!st && allow_offload) {
        uint64_t cpu = fleet_cpu_budget(c);
        st = bm_budgets_set(&b, (bm_device){BM_DEV_CPU, 0},
                            cpu < (uint64_t)(BM_BUDGET_MAX_BITS / 8) ? (int64_t)(cpu * 8)
                                                                    : BM_BUDGET_MAX_BITS,
                            err);
    }
    if (st) {
        bm_budgets_free(&b);
        return st;
    }
    bm_plan_opts po = {.compat = BM_COMPAT_BMPLAN,
                       .budgets = &b,
                       .no_split = c->tree->no_split,
                       .n_no_split = c->tree->n_no_split,
                       .dtype = c->o->dtype};
    st = bm_plan_infer(c->tree, &po, plan, err);
    bm_budgets_free(&b);
    if (st)
        return st;
    memset(layers, 0, (size_t)gpus * sizeof *layers);
    /* a layer runs where its first tensor is; layers offloaded to the CPU
     * or disk run on the first GPU (accelerate's execution device) */
    for (int32_t k = 0; k < c->n_kv; k++) {
        const bm_module *m = &c->tree->modules[c->kv_mods[k]];
        if (m->tensor_begin >= m->subtree_tensor_end)
            continue;
        int32_t e = bm_devmap_lookup((*plan)->map, c->tree->tensors[m->tensor_begin].name);
        int64_t g = 0;
        if (e != BM_NONE && (*plan)->map->e[e].dev.kind == BM_DEV_GPU &&
            (*plan)->map->e[e].dev.id >= 0 && (*plan)->map->e[e].dev.id < gpus)
            g = (*plan)->map->e[e].dev.id;
        layers[g]++;
    }
    return BM_OK;
}

static uint64_t plan_placed(const bm_plan *p, bm_device_kind kind, int64_t id)
{
    for (int i = 0; i < p->n_devices; i++)
        if (p->devices[i].dev.kind == kind && (kind != BM_DEV_GPU || p->devices[i].dev.id == id))
            return bits_to_bytes_u(p->devices[i].placed_bits);
    return 0;
}

/* Plan on `gpus` GPUs for the context and batch already sized in c. */
static bm_status fleet_run(fleet_ctx *c, int64_t gpus, bool allow_offload, bm_fleet_fit *fit,
                           bm_error *err)
{
    memset(fit, 0, sizeof *fit);
    fit->gpus = gpus;
    fit->kv = c->kv;
    fit->ws = c->ws;
    fit->weights_bytes = bits_to_bytes_u(c->weights_bits);
    uint64_t *budgets = calloc((size_t)gpus, sizeof *budgets);
    uint64_t *work = calloc((size_t)gpus, sizeof *work);
    int32_t *layers = calloc((size_t)gpus, sizeof *layers);
    fit->gpu = calloc((size_t)gpus, sizeof *fit->gpu);
    bm_plan *plan = NULL;
    bm_status st = BM_OK;
    if (!budgets || !work || !layers || !fit->gpu) {
        st = nomem(err);
        goto out;
    }
    uint64_t usable = sub_sat(c->o->gpu_bytes, c->o->reserve_bytes);
    for (int64_t i = 0; i < gpus; i++) {
        work[i] = c->ws.total_bytes;
        /* whole KiB, so that the budgets print exactly as size strings */
        budgets[i] = sub_sat(usable, work[i]) / KIB * KIB;
    }
    bool settled = false;
    for (int round = 0; round < FLEET_MAX_ROUNDS && !settled; round++) {
        bm_plan_free(plan);
        plan = NULL;
        if ((st = fleet_plan_once(c, gpus, budgets, allow_offload, &plan, layers, err)))
            goto out;
        uint64_t offloaded = plan_placed(plan, BM_DEV_CPU, 0) + plan_placed(plan, BM_DEV_DISK, 0);
        settled = true;
        for (int64_t i = 0; i < gpus; i++) {
            /* streaming offloaded weights needs a staging buffer on the
             * execution device */
            work[i] = c->ws.total_bytes + (i == 0 && offloaded ? c->largest_bytes : 0);
            uint64_t kv = fleet_kv_of(c, layers[i]);
            uint64_t need = add_sat(add_sat(plan_placed(plan, BM_DEV_GPU, i), kv), work[i]);
            if (need > usable) {
                uint64_t nb = sub_sat(sub_sat(usable, work[i]), kv) / KIB * KIB;
                if (nb < budgets[i]) {
                    budgets[i] = nb;
                    settled = false;
                }
            }
        }
    }
    /* the outcome of the last plan, settled or not */
    fit->fits = true;
    for (int64_t i = 0; i < gpus; i++) {
        bm_fleet_gpu *g = &fit->gpu[i];
        g->budget = budgets[i];
        g->weights = plan_placed(plan, BM_DEV_GPU, i);
        g->layers = layers[i];
        g->kv = fleet_kv_of(c, layers[i]);
        g->workspace = work[i];
        if (add_sat(add_sat(g->weights, g->kv), g->workspace) > usable)
            fit->fits = false;
    }
    fit->cpu_bytes = plan_placed(plan, BM_DEV_CPU, 0);
    fit->disk_bytes = plan_placed(plan, BM_DEV_DISK, 0);
    fit->stream_per_token = fit->cpu_bytes + fit->disk_bytes;
    if (fit->stream_per_token)
        fit->fits = false;
    for (int32_t i = 0; i < plan->map->n; i++)
        if (plan->map->e[i].dev.kind == BM_DEV_CPU || plan->map->e[i].dev.kind == BM_DEV_DISK)
            fit->n_offloaded++;
    /* the budgets to give `bmplan plan --max-memory` for the same map */
    size_t cap = (size_t)gpus * 32 + 64, o = 0;
    fit->max_memory = malloc(cap);
    if (!fit->max_memory) {
        st = nomem(err);
        goto out;
    }
    fit->max_memory[0] = 0;
    for (int64_t i = 0; i < gpus; i++)
        o += (size_t)snprintf(fit->max_memory + o, cap - o, "%s%lld=%lluKiB", i ? "," : "",
                              (long long)i, (unsigned long long)(budgets[i] / KIB));
    if (allow_offload)
        snprintf(fit->max_memory + o, cap - o, ",cpu=%lluKiB",
                 (unsigned long long)(fleet_cpu_budget(c) / KIB));
    size_t jl;
    if ((st = bm_devmap_to_json(plan->map, &fit->device_map, &jl, err)))
        goto out;
out:
    bm_plan_free(plan);
    free(budgets);
    free(work);
    free(layers);
    if (st)
        bm_fleet_fit_free(fit);
    return st;
}

bm_status bm_fleet_plan(const bm_tree *tree, const bm_fleet_opts *opts, int64_t gpus,
                        bool allow_offload, bm_fleet_fit *fit, bm_error *err)
{
    memset(fit, 0, sizeof *fit);
    if (gpus < 1 || gpus > FLEET_MAX_GPUS_DEFAULT)
        return bm_fail(err, BM_E_INVALID, "GPU count %lld is not from 1 to %d", (long long)gpus,
                       FLEET_MAX_GPUS_DEFAULT);
    fleet_ctx c;
    bm_status st = fleet_ctx_init(&c, tree, opts, err);
    if (!st)
        st = fleet_ctx_size(&c, opts->context, opts->batch, err);
    if (!st)
        st = fleet_run(&c, gpus, allow_offload, fit, err);
    fleet_ctx_free(&c);
    return st;
}

bm_status bm_fleet_min_gpus(const bm_tree *tree, const bm_fleet_opts *opts, bm_fleet_fit *fit,
                            bm_error *err)
{
    memset(fit, 0, sizeof *fit);
    int64_t max = opts->max_gpus > 0 ? opts->max_gpus : FLEET_MAX_GPUS_DEFAULT;
    if (max > FLEET_MAX_GPUS_DEFAULT)
        max = FLEET_MAX_GPUS_DEFAULT;
    fleet_ctx c;
    bm_status st = fleet_ctx_init(&c, tree, opts, err);
    if (!st)
        st = fleet_ctx_size(&c, opts->context, opts->batch, err);
    if (st)
        goto out;
    char a[32], b[32];
    uint64_t usable = sub_sat(sub_sat(opts->gpu_bytes, opts->reserve_bytes), c.ws.total_bytes);
    /* a layer, its cache and the workspace must fit one GPU */
    uint64_t one = add_sat(c.largest_bytes, fleet_kv_of(&c, c.n_kv ? 1 : 0));
    if (usable == 0 || one > usable) {
        st = bm_fail(err, BM_E_NOFIT,
                     "one GPU of %s cannot run the largest layer: %s of memory left after the "
                     "reserve and a workspace of %s (estimate), the layer and its KV cache "
                     "need %s",
                     bm_size_format(opts->gpu_bytes, a, sizeof a),
                     bm_size_format(usable, b, sizeof b),
                     bm_size_format(c.ws.total_bytes, (char[32]){0}, 32),
                     bm_size_format(one, (char[32]){0}, 32));
        goto out;
    }
    /* no fewer than the weights and caches divided by what a GPU holds */
    uint64_t all = add_sat(bits_to_bytes_u(c.weights_bits), c.kv.total_bytes);
    int64_t n = (int64_t)(all / usable + (all % usable != 0));
    if (n < 1)
        n = 1;
    for (; n <= max; n++) {
        if ((st = fleet_run(&c, n, false, fit, err)))
            goto out;
        if (fit->fits)
            goto out;
        bm_fleet_fit_free(fit);
    }
    st = bm_fail(err, BM_E_NOFIT, "%lld GPUs of %s do not hold the model", (long long)max,
                 bm_size_format(opts->gpu_bytes, a, sizeof a));
out:
    fleet_ctx_free(&c);
    return st;
}

/* Does the model stay resident on `gpus` GPUs at this context and batch? */
static bm_status fleet_fits(fleet_ctx *c, int64_t gpus, uint64_t context, uint64_t batch,
                            bool *fits, bm_error *err)
{
    bm_error sub = {0};
    if (fleet_ctx_size(c, context, batch, &sub)) {
        *fits = false; /* sizes past 64 bits do not fit anywhere */
        return BM_OK;
    }
    bm_fleet_fit fit;
    bm_status st = fleet_run(c, gpus, false, &fit, err);
    if (st)
        return st;
    *fits = fit.fits;
    bm_fleet_fit_free(&fit);
    return BM_OK;
}

/* The largest x in [1, hi] with fits(x), by bisection (fits is monotone:
 * more tokens or sequences never need less memory); 0 when x = 1 fails. */
static bm_status fleet_bisect(fleet_ctx *c, int64_t gpus, bool over_context, uint64_t hi,
                              uint64_t *out, bm_error *err)
{
    uint64_t lo = 0;
    bool ok;
    bm_status st;
    const bm_fleet_opts *o = c->o;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo + 1) / 2;
        st = fleet_fits(c, gpus, over_context ? mid : o->context, over_context ? o->batch : mid,
                        &ok, err);
        if (st)
            return st;
        if (ok)
            lo = mid;
        else
            hi = mid - 1;
    }
    *out = lo;
    return BM_OK;
}

bm_status bm_fleet_max_context(const bm_tree *tree, const bm_fleet_opts *opts, int64_t gpus,
                               uint64_t limit, uint64_t *context, bm_error *err)
{
    *context = 0;
    fleet_ctx c;
    bm_status st = fleet_ctx_init(&c, tree, opts, err);
    if (!st)
        st = fleet_bisect(&c, gpus, true, limit ? limit : (uint64_t)1 << 20, context, err);
    fleet_ctx_free(&c);
    return st;
}

bm_status bm_fleet_max_batch(const bm_tree *tree, const bm_fleet_opts *opts, int64_t gpus,
                             uint64_t *batch, bm_error *err)
{
    *batch = 0;
    fleet_ctx c;
    bm_status st = fleet_ctx_init(&c, tree, opts, err);
    if (!st)
        st = fleet_bisect(&c, gpus, false, (uint64_t)1 << 20, batch, err);
    fleet_ctx_free(&c);
    return st;
}
