/*
 * test_graph.c - bmplan-graph/1 reader and writer.
 *
 * Expected values are independent of our code: published parameter counts
 * of the reference models (model cards / papers; a tied embedding counted
 * once), sizes worked out by hand from the shapes in the golden graphs, the
 * scalar rules of the YAML 1.2 core schema, and the error cases of the spec
 * (../shared/spec/graph-format.md).
 */
#include "bmplan.h"

#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GOLDEN "tests/fixtures/golden/graphs"
#define FIX "tests/fixtures/graph"

static bm_tree *load_ok(const char *path)
{
    bm_tree *t = NULL;
    bm_error err = {0};
    bm_status st = bm_graph_load(path, &t, &err);
    ck_assert_msg(st == BM_OK, "%s: %s", path, err.msg);
    ck_assert_ptr_nonnull(t);
    return t;
}

/* Every graph file under a folder (not recursive); returns the count. */
static int list_graphs(const char *dir, char names[][256], int max)
{
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "cannot open %s", dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        bool yaml = l > 5 && strcmp(e->d_name + l - 5, ".yaml") == 0;
        bool json = l > 5 && strcmp(e->d_name + l - 5, ".json") == 0;
        if (!yaml && !json)
            continue;
        ck_assert_int_lt(n, max);
        snprintf(names[n++], 256, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    return n;
}

static const char *const golden_dirs[] = {GOLDEN, GOLDEN "/quirks", GOLDEN "/random"};

/* ---------------------------------------------------------------- reader */

START_TEST(test_golden_all_load)
{
    static char names[128][256];
    int total = 0, json = 0;
    for (size_t k = 0; k < sizeof golden_dirs / sizeof *golden_dirs; k++) {
        int n = list_graphs(golden_dirs[k], names, 128);
        for (int i = 0; i < n; i++) {
            bm_tree *t = load_ok(names[i]);
            ck_assert_int_ge(t->n_modules, 1);
            bm_tree_free(t);
            json += strstr(names[i], ".json") != NULL;
        }
        total += n;
    }
    /* 17 reference graphs, 11 quirks, 56 random ones (29 of them JSON) */
    ck_assert_int_ge(total, 84);
    ck_assert_int_ge(json, 29);
}
END_TEST

static const struct {
    const char *file;
    uint64_t params;
} published[] = {
    {"gpt2.yaml", UINT64_C(124439808)},
    {"gpt2-xl.yaml", UINT64_C(1557611200)},
    {"llama-2-7b.yaml", UINT64_C(6738415616)},
    {"llama-2-13b.yaml", UINT64_C(13015864320)},
    {"llama-2-70b.yaml", UINT64_C(68976648192)},
    {"mistral-7b-v0.1.yaml", UINT64_C(7241732096)},
    {"mixtral-8x7b-v0.1.yaml", UINT64_C(46702792704)},
    {"falcon-7b.yaml", UINT64_C(6921720704)},
    {"bloom-7b1.yaml", UINT64_C(7069016064)},
    {"bloom-176b.yaml", UINT64_C(176247271424)},
    {"opt-30b.yaml", UINT64_C(29974540288)},
    {"t5-3b.yaml", UINT64_C(2851598336)},
    {"bert-base-uncased.yaml", UINT64_C(109514298)},
    {"phi-2.yaml", UINT64_C(2779683840)},
};

START_TEST(test_published_param_counts)
{
    char path[512];
    snprintf(path, sizeof path, GOLDEN "/%s", published[_i].file);
    bm_tree *t = load_ok(path);
    ck_assert_msg(bm_tree_param_count(t) == published[_i].params, "%s: %llu != %llu",
                  published[_i].file, (unsigned long long)bm_tree_param_count(t),
                  (unsigned long long)published[_i].params);
    bm_tree_free(t);
}
END_TEST

static uint64_t module_bytes(const bm_tree *t, const char *name, bm_dtype dt)
{
    uint64_t *bits = calloc((size_t)t->n_modules, sizeof *bits);
    ck_assert_ptr_nonnull(bits);
    bm_size_opts o = {.dtype = dt, .compat = BM_COMPAT_0_27};
    bm_error err = {0};
    ck_assert_msg(bm_tree_sizes(t, &o, bits, NULL, &err) == BM_OK, "%s", err.msg);
    int32_t m = bm_tree_find_module(t, name);
    ck_assert_msg(m != BM_NONE, "no module %s", name);
    uint64_t b = bits[m];
    free(bits);
    ck_assert_uint_eq(b % 8, 0);
    return b / 8;
}

START_TEST(test_module_sizes_by_hand)
{
    bm_tree *t = load_ok(GOLDEN "/llama-2-7b.yaml");
    /* one decoder layer, float32: q,k,v,o 4 x 4096^2; gate, up, down
     * 3 x 11008 x 4096; two norms 2 x 4096 = 202,383,360 params; buffers
     * inv_freq 64 + cos/sin caches 2 x 4096 x 128 = 1,048,640 elements.
     * (202,383,360 + 1,048,640) x 4 bytes */
    ck_assert_uint_eq(module_bytes(t, "model.layers.0", BM_DTYPE_INVALID),
                      UINT64_C(813728000));
    ck_assert_uint_eq(module_bytes(t, "model.layers.31", BM_DTYPE_INVALID),
                      UINT64_C(813728000));
    /* lm_head 32000 x 4096 in float16 */
    ck_assert_uint_eq(module_bytes(t, "lm_head", BM_F16), UINT64_C(262144000));
    /* the causal mask is bool (1 bit each for accelerate): 4096^2 / 8 */
    int32_t mask = bm_tree_find_tensor(t, "model.causal_mask");
    ck_assert_int_ne(mask, BM_NONE);
    ck_assert_int_eq(t->tensors[mask].dtype, BM_BOOL);
    ck_assert(t->tensors[mask].is_buffer && !t->tensors[mask].persistent);
    ck_assert_int_eq(t->n_modules, 454);
    ck_assert_str_eq(t->arch, "llama");
    ck_assert_str_eq(t->name, "Llama-2-7b-hf");
    ck_assert(t->has_no_split && t->n_no_split == 1);
    ck_assert_str_eq(t->no_split[0], "LlamaDecoderLayer");
    bm_tree_free(t);

    t = load_ok(GOLDEN "/bloom-176b.yaml");
    /* one BloomBlock: 2 LayerNorms 4 x 14336; qkv 43008 x 14336 + 43008;
     * dense 14336^2 + 14336; h_to_4h 57344 x 14336 + 57344; 4h_to_h
     * 14336 x 57344 + 14336 = 2,466,437,120 params x 4 bytes */
    ck_assert_uint_eq(module_bytes(t, "transformer.h.69", BM_DTYPE_INVALID),
                      UINT64_C(9865748480));
    ck_assert_int_eq(bm_tree_find_module(t, "transformer.h.70"), BM_NONE);
    /* the tied head counts once: under the embedding, met first */
    int32_t head = bm_tree_find_tensor(t, "lm_head.weight");
    int32_t emb = bm_tree_find_tensor(t, "transformer.word_embeddings.weight");
    ck_assert_int_eq(t->tensors[head].alias_of, emb);
    ck_assert_uint_eq(module_bytes(t, "lm_head", BM_DTYPE_INVALID), 0);
    bm_tree_free(t);
}
END_TEST

START_TEST(test_registration_order)
{
    /* keys in file order, repeat children "0".."N-1", params before
     * buffers of the same module, then submodules (pre-order) */
    bm_tree *t = load_ok(GOLDEN "/spec-example-tiny-llama.yaml");
    const char *first[] = {"", "model", "model.embed_tokens", "model.layers",
                           "model.layers.0", "model.layers.0.self_attn",
                           "model.layers.0.self_attn.q_proj"};
    for (int i = 0; i < 7; i++)
        ck_assert_str_eq(t->modules[i].name, first[i]);
    ck_assert_str_eq(t->modules[t->n_modules - 1].name, "lm_head");
    int32_t l1 = bm_tree_find_module(t, "model.layers.1");
    ck_assert_int_eq(t->modules[l1].parent, bm_tree_find_module(t, "model.layers"));
    ck_assert_str_eq(t->modules[l1].cls, "LlamaDecoderLayer");
    int32_t rot = bm_tree_find_tensor(t, "model.layers.1.self_attn.rotary_emb.inv_freq");
    ck_assert_int_ne(rot, BM_NONE);
    ck_assert_int_eq(t->tensors[rot].shape[0], 8);
    ck_assert(!t->tensors[rot].persistent);
    ck_assert_int_eq(t->n_ties, 1);
    bm_tree_free(t);

    /* a module with its own tensors and a repeat; repeat 0 has no child */
    t = load_ok(GOLDEN "/random/rand-1002.json");
    int32_t neck = bm_tree_find_module(t, "neck");
    ck_assert_int_eq(t->modules[neck].n_children, 12);
    ck_assert_int_eq(t->modules[neck].n_buffers, 2);
    ck_assert_int_ne(bm_tree_find_module(t, "neck.11"), BM_NONE);
    bm_tree_free(t);
    t = load_ok(GOLDEN "/quirks/no-tensors.yaml");
    ck_assert_int_eq(t->modules[bm_tree_find_module(t, "list")].n_children, 0);
    ck_assert_int_eq(bm_tree_find_module(t, "list.0"), BM_NONE);
    bm_tree_free(t);
}
END_TEST

START_TEST(test_config_scalars)
{
    bm_tree *t = load_ok(FIX "/good/config-types.yaml");
    json_t *c = t->config;
    ck_assert_ptr_nonnull(c);
    ck_assert(json_is_object(c));
#define INT_IS(k, v)                                                     \
    do {                                                                 \
        json_t *x_ = json_object_get(c, k);                              \
        ck_assert_msg(json_is_integer(x_), "%s is not an integer", k);   \
        ck_assert_int_eq(json_integer_value(x_), v);                     \
    } while (0)
#define REAL_IS(k, v)                                                    \
    do {                                                                 \
        json_t *x_ = json_object_get(c, k);                              \
        ck_assert_msg(json_is_real(x_), "%s is not a real", k);          \
        ck_assert(json_real_value(x_) == (v));                           \
    } while (0)
#define STR_IS(k, v)                                                     \
    do {                                                                 \
        json_t *x_ = json_object_get(c, k);                              \
        ck_assert_msg(json_is_string(x_), "%s is not a string", k);      \
        ck_assert_str_eq(json_string_value(x_), v);                      \
    } while (0)
    INT_IS("an_int", 4096);
    INT_IS("negative", -3);
    INT_IS("plus", 4);
    INT_IS("hex", 16);
    INT_IS("octal", 15);
    REAL_IS("eps", 1.0e-05);
    REAL_IS("eps2", 1e-6);
    REAL_IS("theta", 10000.0);
    REAL_IS("trailing_dot", 1.0);
    REAL_IS("leading_dot", 0.5);
    STR_IS("yes_is_text", "yes");
    STR_IS("quoted_int", "5");
    STR_IS("single_quoted", "true");
    STR_IS("text", "relu");
    ck_assert(json_is_true(json_object_get(c, "flag")));
    ck_assert(json_is_false(json_object_get(c, "off_flag")));
    ck_assert(json_is_null(json_object_get(c, "nothing")));
    ck_assert(json_is_null(json_object_get(c, "tilde")));
    ck_assert(json_is_null(json_object_get(c, "empty")));
    json_t *rs = json_object_get(c, "rope_scaling");
    ck_assert(json_is_object(rs));
    ck_assert(json_real_value(json_object_get(rs, "factor")) == 2.0);
    json_t *layers = json_object_get(c, "layers");
    ck_assert_int_eq(json_array_size(layers), 4);
    ck_assert(json_is_integer(json_array_get(layers, 0)));
    ck_assert(json_is_real(json_array_get(layers, 1)));
    ck_assert(json_is_string(json_array_get(layers, 2)));
    ck_assert(json_is_null(json_array_get(layers, 3)));
    /* key order is the file's */
    void *it = json_object_iter(c);
    ck_assert_str_eq(json_object_iter_key(it), "an_int");
    const char *last = NULL;
    for (; it; it = json_object_iter_next(c, it))
        last = json_object_iter_key(it);
    ck_assert_str_eq(last, "zeta");

    /* default dtype by alias; tensors that name their own dtype keep it */
    ck_assert_int_eq(t->dtype, BM_BF16);
    ck_assert_int_eq(t->tensors[bm_tree_find_tensor(t, "weight")].dtype, BM_BF16);
    const bm_tensor *h = &t->tensors[bm_tree_find_tensor(t, "half")];
    ck_assert_int_eq(h->dtype, BM_F16);
    ck_assert_int_eq(h->ndim, 0);
    ck_assert_uint_eq(h->numel, 1);
    ck_assert_int_eq(t->tensors[bm_tree_find_tensor(t, "steps")].dtype, BM_I64);
    ck_assert(t->tensors[bm_tree_find_tensor(t, "plain")].persistent);
    ck_assert(t->has_no_split);
    ck_assert_int_eq(t->n_no_split, 0);
    bm_tree_free(t);
}
END_TEST

/* The same small graph in both syntaxes gives the same tree. */
START_TEST(test_yaml_json_same)
{
    const char *y = "format: bmplan-graph/1\n"
                    "root:\n"
                    "  class: M\n"
                    "  modules:\n"
                    "    b: {class: L, params: {w: [3, 2]}}\n"
                    "    a:\n"
                    "      class: ModuleList\n"
                    "      repeat: 2\n"
                    "      template: {class: B, buffers: {m: {shape: [2], dtype: bool, persistent: false}}}\n";
    const char *j = "  {\"format\": \"bmplan-graph/1\", \"root\": {\"class\": \"M\", \"modules\": {"
                    "\"b\": {\"class\": \"L\", \"params\": {\"w\": [3, 2]}},"
                    "\"a\": {\"class\": \"ModuleList\", \"repeat\": 2, \"template\": "
                    "{\"class\": \"B\", \"buffers\": {\"m\": {\"shape\": [2], \"dtype\": \"bool\","
                    "\"persistent\": false}}}}}}}";
    bm_tree *a, *b;
    bm_error err = {0};
    ck_assert_msg(bm_graph_parse(y, strlen(y), "y", &a, &err) == BM_OK, "%s", err.msg);
    ck_assert_msg(bm_graph_parse(j, strlen(j), "j", &b, &err) == BM_OK, "%s", err.msg);
    ck_assert_int_eq(a->n_modules, 5);
    ck_assert_int_eq(a->n_modules, b->n_modules);
    ck_assert_int_eq(a->n_tensors, b->n_tensors);
    for (int32_t i = 0; i < a->n_modules; i++) {
        ck_assert_str_eq(a->modules[i].name, b->modules[i].name);
        ck_assert_str_eq(a->modules[i].cls, b->modules[i].cls);
    }
    ck_assert_str_eq(a->modules[1].name, "b");
    ck_assert_str_eq(a->modules[4].name, "a.1");
    for (int32_t i = 0; i < a->n_tensors; i++) {
        ck_assert_str_eq(a->tensors[i].name, b->tensors[i].name);
        ck_assert_int_eq(a->tensors[i].dtype, b->tensors[i].dtype);
        ck_assert_int_eq(a->tensors[i].persistent, b->tensors[i].persistent);
    }
    ck_assert_str_eq(a->tensors[2].name, "a.1.m");
    bm_tree_free(a);
    bm_tree_free(b);
}
END_TEST

/* ---------------------------------------------------------- bad inputs */

static const struct bad_case {
    const char *file;
    bm_status code;
    const char *where; /* "file:line" prefix of the message */
    const char *words;
} bad_cases[] = {
    {"truncated.yaml", BM_E_FORMAT, "truncated.yaml:5:", "YAML syntax error"},
    {"trailing-comma.json", BM_E_FORMAT, "trailing-comma.json:5:", "JSON syntax error"},
    {"unknown-top-key.yaml", BM_E_FORMAT, "unknown-top-key.yaml:4:",
     "unknown key 'models' at the top level"},
    {"unknown-module-key.yaml", BM_E_FORMAT, "unknown-module-key.yaml:7:",
     "unknown key 'param' in module 'a'"},
    {"typo-modles.yaml", BM_E_FORMAT, "typo-modles.yaml:4:", "unknown key 'modles'"},
    {"repeat-and-modules.yaml", BM_E_FORMAT, "repeat-and-modules.yaml:6:",
     "both 'modules' and 'repeat'"},
    {"template-without-repeat.yaml", BM_E_FORMAT, "template-without-repeat.yaml:4:",
     "'template' without 'repeat'"},
    {"repeat-without-template.yaml", BM_E_FORMAT, "repeat-without-template.yaml:4:",
     "'repeat' without 'template'"},
    {"repeat-negative.yaml", BM_E_INVALID, "repeat-negative.yaml:4:",
     "'repeat' must be an integer >= 0"},
    {"shape-not-integer.yaml", BM_E_INVALID, "shape-not-integer.yaml:5:",
     "must be a non-negative integer, not '4.5'"},
    {"shape-quoted.yaml", BM_E_INVALID, "shape-quoted.yaml:5:",
     "must be a non-negative integer, not '8'"},
    {"negative-dim.yaml", BM_E_INVALID, "negative-dim.yaml:5:", "is negative: -2"},
    {"shape-overflow.yaml", BM_E_OVERFLOW, "shape-overflow.yaml:5:", "overflows"},
    {"dim-too-large.yaml", BM_E_OVERFLOW, "dim-too-large.yaml:5:", "too large"},
    {"too-many-dims.yaml", BM_E_UNSUPPORTED, "too-many-dims.yaml:5:", "9 dimensions"},
    {"unknown-dtype.yaml", BM_E_INVALID, "unknown-dtype.yaml:6:",
     "unknown dtype 'float33'"},
    {"unknown-default-dtype.yaml", BM_E_INVALID, "unknown-default-dtype.yaml:2:",
     "unknown dtype 'fp24'"},
    {"tied-missing.yaml", BM_E_INVALID, "tied-missing.yaml:3:",
     "tied name 'lm_head.weight' is not a parameter"},
    {"tied-two-groups.yaml", BM_E_INVALID, "tied-two-groups.yaml:5:",
     "'a.weight' appears in more than one tied group"},
    {"tied-buffer.yaml", BM_E_INVALID, "tied-buffer.yaml:", "is a buffer"},
    {"missing-class.yaml", BM_E_FORMAT, "missing-class.yaml:6:", "module 'a' has no 'class'"},
    {"class-not-string.yaml", BM_E_FORMAT, "class-not-string.yaml:3:",
     "'class' must be a string"},
    {"wrong-format.yaml", BM_E_UNSUPPORTED, "wrong-format.yaml:2:",
     "unsupported format 'bmplan-graph/2'"},
    {"not-a-graph.yaml", BM_E_FORMAT, "not-a-graph.yaml:1:", "unsupported format 'onnx'"},
    {"missing-format.yaml", BM_E_FORMAT, "missing-format.yaml:1:", "missing 'format"},
    {"missing-root.yaml", BM_E_FORMAT, "missing-root.yaml:1:", "missing 'root'"},
    {"duplicate-key.yaml", BM_E_FORMAT, "duplicate-key.yaml:7:", "duplicate key 'weight'"},
    {"duplicate-key-many.yaml", BM_E_FORMAT, "duplicate-key-many.yaml:13:",
     "duplicate key 'k4'"},
    {"duplicate-key.json", BM_E_FORMAT, "duplicate-key.json:3:", "duplicate"},
    {"alias.yaml", BM_E_FORMAT, "alias.yaml:5:", "aliases are not allowed"},
    {"billion-laughs.yaml", BM_E_FORMAT, "billion-laughs.yaml:3:",
     "aliases are not allowed"},
    {"repeat-explosion.yaml", BM_E_FORMAT, "repeat-explosion.yaml:7:",
     "'repeat: 999999999' expands the graph beyond"},
    {"repeat-nested-explosion.yaml", BM_E_FORMAT, "repeat-nested-explosion.yaml:4:",
     "expands the graph beyond"},
    {"non-utf8.yaml", BM_E_FORMAT, "non-utf8.yaml:2:", "UTF-8"},
    {"non-utf8.json", BM_E_FORMAT, "non-utf8.json:2:", "unable to decode byte 0xe9"},
    {"dot-in-name.yaml", BM_E_INVALID, "dot-in-name.yaml:8:",
     "module name 'layer.0' must be non-empty and contain no '.'"},
    {"dot-in-tensor-name.yaml", BM_E_INVALID, "dot-in-tensor-name.yaml:5:",
     "contain no '.'"},
    {"name-collision.yaml", BM_E_INVALID, "name-collision.yaml:",
     "'a' is both a module and a tensor"},
    {"unknown-tensor-key.yaml", BM_E_FORMAT, "unknown-tensor-key.yaml:5:",
     "unknown key 'dtyp' in parameter 'weight'"},
    {"persistent-on-param.yaml", BM_E_FORMAT, "persistent-on-param.yaml:5:",
     "unknown key 'persistent' in parameter"},
    {"tensor-no-shape.yaml", BM_E_FORMAT, "tensor-no-shape.yaml:5:",
     "buffer 'mask' has no 'shape'"},
    {"config-inf.yaml", BM_E_UNSUPPORTED, "config-inf.yaml:3:", "not a finite number"},
    {"two-documents.yaml", BM_E_FORMAT, "two-documents.yaml:3:", "more than one YAML document"},
    {"yaml-tag.yaml", BM_E_FORMAT, "yaml-tag.yaml:5:", "tag"},
    {"empty.yaml", BM_E_FORMAT, "empty.yaml:", "empty graph file"},
    {"scalar-document.yaml", BM_E_FORMAT, "scalar-document.yaml:1:", "must be a mapping"},
    {"json-unknown-module-key.json", BM_E_FORMAT, "json-unknown-module-key.json:8:",
     "unknown key 'parms' in module 'a'"},
    {"json-negative-dim.json", BM_E_INVALID, "json-negative-dim.json:3:", "is negative: -4"},
    {"json-repeat-string.json", BM_E_INVALID, "json-repeat-string.json:5:",
     "'repeat' must be an integer"},
};

START_TEST(test_bad_inputs)
{
    const struct bad_case *c = &bad_cases[_i];
    char path[512];
    snprintf(path, sizeof path, FIX "/bad/%s", c->file);
    char *data;
    size_t len;
    bm_error err = {0};
    ck_assert_int_eq(bm_read_file(path, BM_GRAPH_MAX_BYTES, &data, &len, &err), BM_OK);
    bm_tree *t = (bm_tree *)&err; /* must be reset to NULL */
    bm_status st = bm_graph_parse(data, len, c->file, &t, &err);
    free(data);
    ck_assert_ptr_null(t);
    ck_assert_msg(st == c->code, "%s: status %d, expected %d (%s)", c->file, st,
                  c->code, err.msg);
    ck_assert_int_eq(err.code, c->code);
    ck_assert_msg(strncmp(err.msg, c->where, strlen(c->where)) == 0,
                  "%s: message does not start with '%s': %s", c->file, c->where, err.msg);
    ck_assert_msg(strstr(err.msg, c->words) != NULL, "%s: '%s' not in: %s", c->file,
                  c->words, err.msg);
    ck_assert(strchr(err.msg, '\n') == NULL);
}
END_TEST

static void expect_fail(const char *data, size_t len, bm_status code,
                        const char *where, const char *words)
{
    bm_tree *t = NULL;
    bm_error err = {0};
    bm_status st = bm_graph_parse(data, len, "gen", &t, &err);
    ck_assert_ptr_null(t);
    ck_assert_msg(st == code, "status %d, expected %d: %s", st, code, err.msg);
    ck_assert_msg(strncmp(err.msg, where, strlen(where)) == 0, "'%s' does not start '%s'",
                  err.msg, where);
    ck_assert_msg(strstr(err.msg, words), "'%s' not in '%s'", words, err.msg);
}

START_TEST(test_deep_nesting)
{
    /* 100k levels: fails at level 201 without reading the rest */
    size_t n = 100000;
    const char *head = "format: bmplan-graph/1\nconfig:\n  x: ";
    size_t hl = strlen(head);
    char *y = malloc(hl + 2 * n + 2);
    ck_assert_ptr_nonnull(y);
    memcpy(y, head, hl);
    memset(y + hl, '[', n);
    memset(y + hl + n, ']', n);
    y[hl + 2 * n] = '\n';
    expect_fail(y, hl + 2 * n + 1, BM_E_FORMAT, "gen:3:", "nesting deeper than 200");
    /* block style: a mapping 300 levels deep */
    char *b = malloc(300 * 310 + 100);
    ck_assert_ptr_nonnull(b);
    size_t bl = (size_t)sprintf(b, "format: bmplan-graph/1\nconfig:\n");
    for (int i = 0; i < 300; i++)
        bl += (size_t)sprintf(b + bl, "%*sk:\n", 2 * (i + 1), "");
    expect_fail(b, bl, BM_E_FORMAT, "gen:", "nesting deeper than 200");
    free(b);
    /* JSON: jansson's own depth bound, then ours */
    y[0] = '{';
    size_t jl = (size_t)sprintf(y, "{\"config\": ");
    memset(y + jl, '[', n);
    memset(y + jl + n, ']', n);
    y[jl + 2 * n] = '}';
    expect_fail(y, jl + 2 * n + 1, BM_E_FORMAT, "gen:1:", "depth");
    jl = (size_t)sprintf(y, "{\"format\": \"bmplan-graph/1\",\n\"config\": ");
    memset(y + jl, '[', 300);
    memset(y + jl + 300, ']', 300);
    y[jl + 600] = '}';
    expect_fail(y, jl + 601, BM_E_FORMAT, "gen:2:", "nesting deeper than 200");
    free(y);
}
END_TEST

START_TEST(test_misc_bad)
{
    const char *s;
    /* truncated JSON */
    s = "{\"format\": \"bmplan-graph/1\", \"root\": {\"class\": \"M\"";
    expect_fail(s, strlen(s), BM_E_FORMAT, "gen:1:", "JSON syntax error");
    /* NUL bytes */
    const char nul[] = "format: bmplan-graph/1\nroot: {class: \"M\0\"}\n";
    expect_fail(nul, sizeof nul - 1, BM_E_FORMAT, "gen:2:", "");
    const char nul2[] = "format: bmplan-graph/1\nroot: {class: \"M\\0\"}\n";
    expect_fail(nul2, sizeof nul2 - 1, BM_E_FORMAT, "gen:2:", "NUL");
    /* a tensor that is neither list nor mapping */
    s = "format: bmplan-graph/1\nroot:\n  class: M\n  params: {w: 4}\n";
    expect_fail(s, strlen(s), BM_E_FORMAT, "gen:4:", "must be a shape list");
    /* complex keys */
    s = "format: bmplan-graph/1\n? [a]\n: 1\nroot: {class: M}\n";
    expect_fail(s, strlen(s), BM_E_FORMAT, "gen:2:", "keys must be scalars");
    /* empty tie group, template error in a repeat of 0 */
    s = "format: bmplan-graph/1\ntied: [[]]\nroot: {class: M}\n";
    expect_fail(s, strlen(s), BM_E_INVALID, "gen:2:", "empty tied group");
    s = "format: bmplan-graph/1\nroot:\n  class: L\n  repeat: 0\n  template: {clas: B}\n";
    expect_fail(s, strlen(s), BM_E_FORMAT, "gen:5:", "unknown key 'clas'");
    /* too large */
    expect_fail("", (size_t)BM_GRAPH_MAX_BYTES + 1, BM_E_FORMAT, "gen:", "too large");
    /* a missing file */
    bm_tree *t = NULL;
    bm_error err = {0};
    ck_assert_int_eq(bm_graph_load(FIX "/bad/no-such-file.yaml", &t, &err), BM_E_NOTFOUND);
    ck_assert_ptr_null(t);
}
END_TEST

/* A huge flat value list is bounded before jansson allocates it. */
START_TEST(test_too_many_values)
{
    size_t n = (size_t)BM_GRAPH_MAX_NODES + 10;
    char *j = malloc(2 * n + 64);
    ck_assert_ptr_nonnull(j);
    size_t l = (size_t)sprintf(j, "{\"config\": {\"a\": [");
    for (size_t i = 0; i < n; i++) {
        j[l++] = '0';
        j[l++] = ',';
    }
    j[l - 1] = ']';
    j[l++] = '}';
    j[l++] = '}';
    expect_fail(j, l, BM_E_FORMAT, "gen:", "too many values");
    free(j);
}
END_TEST

static Suite *graph_suite(void)
{
    Suite *s = suite_create("graph");
    TCase *tc = tcase_create("reader");
    tcase_add_test(tc, test_golden_all_load);
    tcase_add_loop_test(tc, test_published_param_counts, 0,
                        (int)(sizeof published / sizeof *published));
    tcase_add_test(tc, test_module_sizes_by_hand);
    tcase_add_test(tc, test_registration_order);
    tcase_add_test(tc, test_config_scalars);
    tcase_add_test(tc, test_yaml_json_same);
    suite_add_tcase(s, tc);
    tc = tcase_create("bad");
    tcase_add_loop_test(tc, test_bad_inputs, 0, (int)(sizeof bad_cases / sizeof *bad_cases));
    tcase_add_test(tc, test_deep_nesting);
    tcase_add_test(tc, test_misc_bad);
    tcase_add_test(tc, test_too_many_values);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(graph_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
