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

static bm_tree *parse_ok(const char *text, size_t len, const char *what)
{
    bm_tree *t = NULL;
    bm_error err = {0};
    ck_assert_msg(bm_graph_parse(text, len, what, &t, &err) == BM_OK, "%s\n%s", err.msg,
                  text);
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

START_TEST(test_input_variants)
{
    /* a UTF-8 byte order mark, CRLF line ends: lines still right */
    const char *s = "\xef\xbb\xbf" "format: bmplan-graph/1\r\nroot:\r\n  class: M\r\n"
                    "  params: {w: [2, 3]}\r\n";
    bm_tree *t = parse_ok(s, strlen(s), "bom");
    ck_assert_uint_eq(bm_tree_param_count(t), 6);
    bm_tree_free(t);
    s = "\xef\xbb\xbf{\"format\": \"bmplan-graph/1\", \"root\": {\"class\": \"M\"}}";
    t = parse_ok(s, strlen(s), "bom");
    bm_tree_free(t);
    s = "format: bmplan-graph/1\r\nroot:\r\n  class: M\r\n  parms: {}\r\n";
    expect_fail(s, strlen(s), BM_E_FORMAT, "gen:4:", "unknown key 'parms'");
    s = "\r\n\t {\"format\": \"bmplan-graph/1\",\r\n\"root\": {\"class\": \"M\",\r\n"
        "\"parms\": {}}}";
    expect_fail(s, strlen(s), BM_E_FORMAT, "gen:4:", "unknown key 'parms'");
    /* JSON strings with escapes keep the line cursor in step */
    s = "{\"format\": \"bmplan-graph/1\", \"name\": \"a\\\"b\\\\\",\n\"root\": {\"class\": "
        "\"M\\n\\u00e9\", \"params\": {\"w\": [2]}},\n\"tied\": [[\"x\"]]}";
    expect_fail(s, strlen(s), BM_E_INVALID, "gen:3:", "tied name 'x'");
    /* JSON without line ends: line 1 */
    s = "{\"format\": \"bmplan-graph/1\", \"root\": {\"class\": \"M\", \"repeat\": 1.5, "
        "\"template\": {\"class\": \"B\"}}}";
    expect_fail(s, strlen(s), BM_E_INVALID, "gen:1:", "'repeat' must be an integer");

    /* repeat 0 of a huge nested repeat: nothing to build, checked once */
    s = "format: bmplan-graph/1\nroot:\n  class: L\n  repeat: 0\n  template:\n"
        "    class: L\n    repeat: 1000000000\n    template:\n      class: L\n"
        "      repeat: 1000000000\n      template: {class: B, params: {w: [1]}}\n";
    t = parse_ok(s, strlen(s), "zero");
    ck_assert_int_eq(t->n_modules, 1);
    bm_tree_free(t);
    s = "format: bmplan-graph/1\nroot:\n  class: L\n  repeat: 0\n  template:\n"
        "    class: L\n    repeat: 1000000000\n    template:\n      class: L\n"
        "      repeat: 1000000000\n      template: {class: B, params: {w: [-1]}}\n";
    expect_fail(s, strlen(s), BM_E_INVALID, "gen:11:", "negative");
}
END_TEST

START_TEST(test_entry_cap)
{
    /* llama-2-7b expands to 454 modules + 388 tensors = 842 entries */
    char *data;
    size_t len;
    bm_error err = {0};
    ck_assert_int_eq(bm_read_file(GOLDEN "/llama-2-7b.yaml", BM_GRAPH_MAX_BYTES, &data,
                                  &len, &err), BM_OK);
    bm_tree *t = NULL;
    ck_assert_int_eq(bm_graph_parse_capped(data, len, "l", 842, &t, &err), BM_OK);
    bm_tree_free(t);
    ck_assert_int_eq(bm_graph_parse_capped(data, len, "l", 841, &t, &err), BM_E_FORMAT);
    ck_assert_ptr_null(t);
    /* no single repeat goes over (32 layers of 26 entries), the sum does */
    ck_assert_str_eq(err.msg, "l:21: the graph has more than 841 modules and tensors");
    ck_assert_int_eq(bm_graph_parse_capped(data, len, "l", 831, &t, &err), BM_E_FORMAT);
    ck_assert_str_eq(err.msg, "l:31: 'repeat: 32' expands the graph beyond 831 modules "
                              "and tensors");
    ck_assert_int_eq(bm_graph_parse_capped(data, len, "l", 0, &t, &err), BM_OK);
    bm_tree_free(t);
    free(data);
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

/* ---------------------------------------------------------------- writer */

static char *write_ok(const bm_tree *t, bm_graph_format f, size_t *len)
{
    char *out = NULL;
    size_t n = 0;
    bm_error err = {0};
    ck_assert_msg(bm_graph_write(t, f, &out, &n, &err) == BM_OK, "%s", err.msg);
    ck_assert_ptr_nonnull(out);
    ck_assert_uint_eq(strlen(out), n);
    if (len)
        *len = n;
    return out;
}

/* Two trees describe the same model. */
static void assert_same_tree(const bm_tree *a, const bm_tree *b)
{
    ck_assert_int_eq(a->n_modules, b->n_modules);
    ck_assert_int_eq(a->n_tensors, b->n_tensors);
    ck_assert_int_eq(a->n_ties, b->n_ties);
    for (int32_t i = 0; i < a->n_modules; i++) {
        ck_assert_str_eq(a->modules[i].name, b->modules[i].name);
        ck_assert_str_eq(a->modules[i].cls, b->modules[i].cls);
        ck_assert_int_eq(a->modules[i].parent, b->modules[i].parent);
    }
    for (int32_t i = 0; i < a->n_tensors; i++) {
        const bm_tensor *x = &a->tensors[i], *y = &b->tensors[i];
        ck_assert_str_eq(x->name, y->name);
        ck_assert_int_eq(x->dtype, y->dtype);
        ck_assert_int_eq(x->ndim, y->ndim);
        for (int d = 0; d < x->ndim; d++)
            ck_assert_int_eq(x->shape[d], y->shape[d]);
        ck_assert_int_eq(x->is_buffer, y->is_buffer);
        ck_assert_int_eq(x->persistent, y->persistent);
        ck_assert_int_eq(x->alias_of, y->alias_of);
    }
    for (int32_t g = 0; g < a->n_ties; g++) {
        ck_assert_int_eq(a->ties[g].n, b->ties[g].n);
        for (int32_t i = 0; i < a->ties[g].n; i++)
            ck_assert_int_eq(a->ties[g].tensors[i], b->ties[g].tensors[i]);
    }
    ck_assert_int_eq(a->dtype, b->dtype);
    ck_assert_int_eq(a->has_no_split, b->has_no_split);
    ck_assert_int_eq(a->n_no_split, b->n_no_split);
    for (int32_t i = 0; i < a->n_no_split; i++)
        ck_assert_str_eq(a->no_split[i], b->no_split[i]);
    ck_assert((a->name == NULL) == (b->name == NULL));
    if (a->name)
        ck_assert_str_eq(a->name, b->name);
    ck_assert((a->arch == NULL) == (b->arch == NULL));
    if (a->arch)
        ck_assert_str_eq(a->arch, b->arch);
    ck_assert((a->config == NULL) == (b->config == NULL));
    if (a->config) {
        ck_assert(json_equal(a->config, b->config));
        /* json_equal ignores order and int/real; check both */
        char *ja = json_dumps(a->config, JSON_COMPACT | JSON_REAL_PRECISION(17));
        char *jb = json_dumps(b->config, JSON_COMPACT | JSON_REAL_PRECISION(17));
        ck_assert_str_eq(ja, jb);
        free(ja);
        free(jb);
    }
}

/* tree -> YAML and JSON; each parsed back gives the same tree, and writing
 * that tree in the other syntax gives the same bytes as writing the
 * original (both directions). */
static void round_trip(const bm_tree *t, const char *what)
{
    size_t yl, jl;
    char *y = write_ok(t, BM_GRAPH_YAML, &yl);
    char *j = write_ok(t, BM_GRAPH_JSON, &jl);
    ck_assert_int_eq(j[0], '{');
    bm_tree *from_j = parse_ok(j, jl, what);
    bm_tree *from_y = parse_ok(y, yl, what);
    assert_same_tree(t, from_j);
    assert_same_tree(t, from_y);
    char *y2 = write_ok(from_j, BM_GRAPH_YAML, NULL);
    char *j2 = write_ok(from_y, BM_GRAPH_JSON, NULL);
    ck_assert_msg(strcmp(y, y2) == 0, "%s: YAML differs after a JSON round trip", what);
    ck_assert_msg(strcmp(j, j2) == 0, "%s: JSON differs after a YAML round trip", what);
    /* the explicit parsers agree with the sniffing one */
    bm_tree *t3 = NULL;
    bm_error err = {0};
    ck_assert_int_eq(bm_graph_parse_json(j, jl, what, &t3, &err), BM_OK);
    bm_tree_free(t3);
    ck_assert_int_eq(bm_graph_parse_yaml(y, yl, what, &t3, &err), BM_OK);
    bm_tree_free(t3);
    free(y);
    free(j);
    free(y2);
    free(j2);
    bm_tree_free(from_j);
    bm_tree_free(from_y);
}

START_TEST(test_round_trip_golden)
{
    static char names[128][256];
    int total = 0;
    for (size_t k = 0; k < sizeof golden_dirs / sizeof *golden_dirs; k++) {
        int n = list_graphs(golden_dirs[k], names, 128);
        for (int i = 0; i < n; i++) {
            bm_tree *t = load_ok(names[i]);
            round_trip(t, names[i]);
            bm_tree_free(t);
        }
        total += n;
    }
    ck_assert_int_ge(total, 84);
}
END_TEST

START_TEST(test_write_repeat)
{
    /* the reference graphs come back as repeat/template where the file had
     * it, and as modules where the children differ (T5's first block has
     * the relative attention bias) */
    bm_tree *t = load_ok(GOLDEN "/llama-2-70b.yaml");
    char *y = write_ok(t, BM_GRAPH_YAML, NULL);
    ck_assert_ptr_nonnull(strstr(y, "\n          repeat: 80\n          template:\n"));
    ck_assert_ptr_null(strstr(y, "\"0\""));
    free(y);
    char *j = write_ok(t, BM_GRAPH_JSON, NULL);
    ck_assert_ptr_nonnull(strstr(j, "\"repeat\": 80,"));
    free(j);
    bm_tree_free(t);

    t = load_ok(GOLDEN "/t5-3b.yaml");
    y = write_ok(t, BM_GRAPH_YAML, NULL);
    ck_assert_ptr_nonnull(strstr(y, "\n            \"0\":\n              class: T5Block\n"));
    /* blocks 1..23 are alike but block 0 is not: all of them are written */
    ck_assert_ptr_nonnull(strstr(y, "\n            \"23\":\n"));
    ck_assert_ptr_null(strstr(y, "repeat:"));
    free(y);
    bm_tree_free(t);

    t = load_ok(GOLDEN "/random/rand-1009.yaml"); /* repeat of a repeat */
    y = write_ok(t, BM_GRAPH_YAML, NULL);
    const char *p = strstr(y, "repeat: 8\n");
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(strstr(p + 1, "repeat: 8\n"));
    free(y);
    bm_tree_free(t);
}
END_TEST

static bm_tree *small_tree(const char *c0, const char *c1, bm_dtype d1)
{
    bm_error err = {0};
    bm_tree *t = bm_tree_new();
    int64_t sh[2] = {3, 4};
    ck_assert_int_eq(bm_tree_add_root(t, "Root", &err), 0);
    int32_t l = bm_tree_add_module(t, 0, "layers", "ModuleList", &err);
    int32_t a = bm_tree_add_module(t, l, c0, "Block", &err);
    ck_assert_int_eq(bm_tree_add_tensor(t, a, "w", BM_F32, 2, sh, false, true, &err), BM_OK);
    int32_t b = bm_tree_add_module(t, l, c1, "Block", &err);
    ck_assert_int_eq(bm_tree_add_tensor(t, b, "w", d1, 2, sh, false, true, &err), BM_OK);
    ck_assert_int_eq(bm_tree_finish(t, "small", &err), BM_OK);
    return t;
}

START_TEST(test_write_repeat_rules)
{
    struct {
        const char *c0, *c1;
        bm_dtype d1;
        bool repeat;
    } cases[] = {
        {"0", "1", BM_F32, true},
        {"1", "0", BM_F32, false},  /* not in order */
        {"0", "2", BM_F32, false},  /* a gap */
        {"0", "01", BM_F32, false}, /* not exactly the index */
        {"0", "1", BM_F16, false},  /* dtypes differ */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        bm_tree *t = small_tree(cases[i].c0, cases[i].c1, cases[i].d1);
        char *y = write_ok(t, BM_GRAPH_YAML, NULL);
        ck_assert_msg((strstr(y, "repeat: 2") != NULL) == cases[i].repeat, "case %zu:\n%s",
                      i, y);
        free(y);
        round_trip(t, "small");
        bm_tree_free(t);
    }
}
END_TEST

START_TEST(test_write_exact_text)
{
    /* the writer's layout, spelled out */
    bm_error err = {0};
    bm_tree *t = bm_tree_new();
    int64_t sh[2] = {8, 4};
    ck_assert_int_eq(bm_tree_add_root(t, "Net", &err), 0);
    int32_t e = bm_tree_add_module(t, 0, "emb", "Embedding", &err);
    ck_assert_int_eq(bm_tree_add_tensor(t, e, "weight", BM_F16, 2, sh, false, true, &err), 0);
    int32_t h = bm_tree_add_module(t, 0, "head", "Linear", &err);
    ck_assert_int_eq(bm_tree_add_tensor(t, h, "weight", BM_F16, 2, sh, false, true, &err), 0);
    ck_assert_int_eq(bm_tree_add_tensor(t, h, "steps", BM_I64, 0, sh, true, true, &err), 0);
    ck_assert_int_eq(bm_tree_add_tensor(t, h, "cache", BM_F16, 1, sh, true, false, &err), 0);
    const char *tie[] = {"emb.weight", "head.weight"};
    ck_assert_int_eq(bm_tree_add_tie(t, 2, tie, &err), 0);
    ck_assert_int_eq(bm_tree_set_meta(t, "tiny net", "gpt2", &err), 0);
    ck_assert_int_eq(bm_tree_add_no_split(t, "Block", &err), 0);
    t->dtype = BM_F16;
    ck_assert_int_eq(bm_tree_finish(t, "t", &err), 0);
    t->config = json_pack("{s:i, s:f, s:s, s:b, s:n, s:[i, s], s:{}, s:[{s:i}]}", "n_embd", 4,
                          "eps", 1e-5, "act", "gelu_new", "tie", 1, "none", "ids", 1,
                          "yes", "empty", "list", "k", 2);
    ck_assert_ptr_nonnull(t->config);
    char *y = write_ok(t, BM_GRAPH_YAML, NULL);
    ck_assert_str_eq(y, "format: bmplan-graph/1\n"
                        "name: \"tiny net\"\n"
                        "arch: gpt2\n"
                        "config:\n"
                        "  n_embd: 4\n"
                        "  eps: 1.0e-05\n"
                        "  act: gelu_new\n"
                        "  tie: true\n"
                        "  none: null\n"
                        "  ids: [1, \"yes\"]\n"
                        "  empty: {}\n"
                        "  list:\n"
                        "    -\n"
                        "      k: 2\n"
                        "dtype: float16\n"
                        "no_split_modules: [Block]\n"
                        "tied:\n"
                        "  - [emb.weight, head.weight]\n"
                        "root:\n"
                        "  class: Net\n"
                        "  modules:\n"
                        "    emb: {class: Embedding, params: {weight: [8, 4]}}\n"
                        "    head:\n"
                        "      class: Linear\n"
                        "      params:\n"
                        "        weight: [8, 4]\n"
                        "      buffers:\n"
                        "        steps: {shape: [], dtype: int64}\n"
                        "        cache: {shape: [8], dtype: float16, persistent: false}\n");
    free(y);
    char *j = write_ok(t, BM_GRAPH_JSON, NULL);
    ck_assert_str_eq(j, "{\n"
                        "  \"format\": \"bmplan-graph/1\",\n"
                        "  \"name\": \"tiny net\",\n"
                        "  \"arch\": \"gpt2\",\n"
                        "  \"config\": {\n"
                        "    \"n_embd\": 4,\n"
                        "    \"eps\": 1.0e-05,\n"
                        "    \"act\": \"gelu_new\",\n"
                        "    \"tie\": true,\n"
                        "    \"none\": null,\n"
                        "    \"ids\": [1, \"yes\"],\n"
                        "    \"empty\": {},\n"
                        "    \"list\": [\n"
                        "      {\n"
                        "        \"k\": 2\n"
                        "      }\n"
                        "    ]\n"
                        "  },\n"
                        "  \"dtype\": \"float16\",\n"
                        "  \"no_split_modules\": [\"Block\"],\n"
                        "  \"tied\": [\n"
                        "    [\"emb.weight\", \"head.weight\"]\n"
                        "  ],\n"
                        "  \"root\": {\n"
                        "    \"class\": \"Net\",\n"
                        "    \"modules\": {\n"
                        "      \"emb\": {\"class\": \"Embedding\", \"params\": {\"weight\": [8, 4]}},\n"
                        "      \"head\": {\n"
                        "        \"class\": \"Linear\",\n"
                        "        \"params\": {\n"
                        "          \"weight\": [8, 4]\n"
                        "        },\n"
                        "        \"buffers\": {\n"
                        "          \"steps\": {\"shape\": [], \"dtype\": \"int64\"},\n"
                        "          \"cache\": {\"shape\": [8], \"dtype\": \"float16\", "
                        "\"persistent\": false}\n"
                        "        }\n"
                        "      }\n"
                        "    }\n"
                        "  }\n"
                        "}\n");
    free(j);
    round_trip(t, "exact");
    bm_tree_free(t);
}
END_TEST

START_TEST(test_write_quoting)
{
    /* names and values that YAML would otherwise read as something else,
     * or that need escapes, survive both syntaxes */
    static const char *const names[] = {
        "0", "1", "yes", "No", "on", "true", "null", "~", "1e5", "0x1F", "-1", "+2", "-",
        "- a", "a: b", "a #b", "#c", "[x]", "{y}", "a,b", "*star", "&amp", "!tag", "%p",
        "@at", "`tick", "'single'", "\"double\"", "back\\slash", "tab\there",
        "new\nline", "caf\xc3\xa9", "line\xe2\x80\xa8sep", "nel\xc2\x85", "bom\xef\xbb\xbf",
        "bell\x07", "del\x7f", " lead", "trail ", "?q", "|pipe", ">gt", "x:", "=",
        "\xe4\xb8\xad\xe6\x96\x87", "emoji\xf0\x9f\x98\x80"};
    size_t n = sizeof names / sizeof *names;
    bm_error err = {0};
    bm_tree *t = bm_tree_new();
    int64_t sh[1] = {2};
    ck_assert_int_eq(bm_tree_add_root(t, "Root Class: odd", &err), 0);
    for (size_t i = 0; i < n; i++) {
        int32_t m = bm_tree_add_module(t, 0, names[i], names[n - 1 - i], &err);
        ck_assert_msg(m != BM_NONE, "%s", err.msg);
        ck_assert_int_eq(bm_tree_add_tensor(t, m, names[i], BM_F32, 1, sh, false, true, &err),
                         BM_OK);
    }
    /* a name too long for an implicit YAML key */
    char longname[3000];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    int32_t m = bm_tree_add_module(t, 0, longname, "Long", &err);
    ck_assert_int_eq(bm_tree_add_tensor(t, m, longname, BM_F32, 1, sh, true, false, &err), 0);
    int32_t m2 = bm_tree_add_module(t, m, "inner", "Inner", &err);
    ck_assert_int_ne(m2, BM_NONE);
    ck_assert_int_eq(bm_tree_set_meta(t, "name: with \"quotes\"", "yes", &err), 0);
    ck_assert_int_eq(bm_tree_finish(t, "q", &err), BM_OK);
    json_t *cfg = json_object();
    for (size_t i = 0; i < n; i++)
        json_object_set_new(cfg, names[i], json_string(names[(i + 3) % n]));
    json_object_set_new(cfg, longname, json_pack("{s:[s, {s:s}]}", longname, longname,
                                                 longname, "v"));
    json_object_set_new(cfg, "", json_string(""));
    t->config = cfg;
    round_trip(t, "quoting");
    bm_tree_free(t);
}
END_TEST

START_TEST(test_write_numbers)
{
    /* config numbers come back as the same double / integer and keep
     * their type */
    static const double reals[] = {0.1, 1e-5, 1e-6, 10000.0, 1e16, 1e300, -0.0, 5e-324,
                                   123456789.123, 2.5, -1.0, 1.7976931348623157e308,
                                   0.30000000000000004, 1e15, 123456789012345678.0};
    static const char *const texts[] = {"0.1", "1.0e-05", "1.0e-06", "10000.0", "1.0e+16",
                                        "1.0e+300", "-0.0", "5.0e-324", "123456789.123",
                                        "2.5", "-1.0", "1.7976931348623157e+308",
                                        "0.30000000000000004", "1000000000000000.0",
                                        "1.2345678901234568e+17"};
    bm_tree *t = load_ok(GOLDEN "/quirks/empty-root.yaml");
    json_t *cfg = json_object();
    char key[16];
    for (size_t i = 0; i < sizeof reals / sizeof *reals; i++) {
        snprintf(key, sizeof key, "r%zu", i);
        json_object_set_new(cfg, key, json_real(reals[i]));
    }
    json_object_set_new(cfg, "min", json_integer(INT64_MIN));
    json_object_set_new(cfg, "max", json_integer(INT64_MAX));
    json_object_set_new(cfg, "zero", json_integer(0));
    t->config = cfg;
    round_trip(t, "numbers");
    char *y = write_ok(t, BM_GRAPH_YAML, NULL);
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        char line[64];
        snprintf(line, sizeof line, "  r%zu: %s\n", i, texts[i]);
        ck_assert_msg(strstr(y, line), "missing '%s' in\n%s", line, y);
    }
    ck_assert_ptr_nonnull(strstr(y, "  min: -9223372036854775808\n"));
    free(y);
    /* -0.0 keeps its sign */
    size_t jl;
    char *j = write_ok(t, BM_GRAPH_JSON, &jl);
    bm_tree *b = parse_ok(j, jl, "numbers");
    ck_assert(signbit(json_real_value(json_object_get(b->config, "r6"))));
    free(j);
    bm_tree_free(b);
    bm_tree_free(t);
}
END_TEST

static bm_tree *chain_tree(int depth)
{
    bm_error err = {0};
    bm_tree *t = bm_tree_new();
    int32_t m = bm_tree_add_root(t, "C", &err);
    int64_t sh[1] = {1};
    for (int i = 0; i < depth; i++)
        m = bm_tree_add_module(t, m, "c", "C", &err);
    ck_assert_int_eq(bm_tree_add_tensor(t, m, "b", BM_U8, 1, sh, true, false, &err), 0);
    ck_assert_int_eq(bm_tree_finish(t, "chain", &err), BM_OK);
    return t;
}

START_TEST(test_write_limits)
{
    /* the deepest tree the reader takes back is written; one deeper is not */
    bm_tree *t = chain_tree((BM_GRAPH_MAX_DEPTH - 5) / 2);
    round_trip(t, "deep");
    bm_tree_free(t);
    t = chain_tree((BM_GRAPH_MAX_DEPTH - 5) / 2 + 1);
    char *out = (char *)"x";
    bm_error err = {0};
    ck_assert_int_eq(bm_graph_write(t, BM_GRAPH_YAML, &out, NULL, &err), BM_E_UNSUPPORTED);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(strstr(err.msg, "levels deep"));
    bm_tree_free(t);

    /* names that are not UTF-8 cannot be written */
    t = bm_tree_new();
    ck_assert_int_eq(bm_tree_add_root(t, "Bad\xff", &err), 0);
    ck_assert_int_eq(bm_tree_finish(t, "u", &err), BM_OK);
    ck_assert_int_eq(bm_graph_write(t, BM_GRAPH_YAML, &out, NULL, &err), BM_E_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "UTF-8"));
    ck_assert_int_eq(bm_graph_write(t, BM_GRAPH_JSON, &out, NULL, &err), BM_E_INVALID);
    ck_assert_ptr_null(out);
    bm_tree_free(t);
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
    tcase_add_test(tc, test_input_variants);
    tcase_add_test(tc, test_entry_cap);
    suite_add_tcase(s, tc);
    tc = tcase_create("writer");
    tcase_add_test(tc, test_round_trip_golden);
    tcase_add_test(tc, test_write_repeat);
    tcase_add_test(tc, test_write_repeat_rules);
    tcase_add_test(tc, test_write_exact_text);
    tcase_add_test(tc, test_write_quoting);
    tcase_add_test(tc, test_write_numbers);
    tcase_add_test(tc, test_write_limits);
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
