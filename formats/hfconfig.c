/*
 * hfconfig.c - a Hugging Face config.json turned into the module tree that
 * transformers 4.38 builds from it.
 *
 * Each architecture is a small builder that mirrors the __init__ methods of
 * its modeling file: modules are added in the order the Python code assigns
 * them (that is the order named_modules() walks, and the order decides the
 * device map), with the parameters and buffers each registers. Config values
 * go through typed getters that apply the config class's defaults, accept
 * its older names and range-check everything, so hostile input can neither
 * crash nor produce absurd shapes. The builders do not check for failure
 * after every call: once something fails, every later call is a no-op and
 * the first error is reported.
 */
#include "bmplan.h"

#include <jansson.h>

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Bounds on config values. They are far above any published model and low
 * enough that no product of them overflows a shape (the largest tensor,
 * a causal mask of max_position_embeddings^2, stays below 2^48). */
#define MAX_HIDDEN (INT64_C(1) << 20)
#define MAX_INTER (INT64_C(1) << 22)
#define MAX_VOCAB (INT64_C(1) << 24)
#define MAX_POS (INT64_C(1) << 24)
#define MAX_LAYERS INT64_C(1024)
#define MAX_HEADS (INT64_C(1) << 14)
#define MAX_HEAD_DIM (INT64_C(1) << 16)
#define MAX_EXPERTS INT64_C(1024)
#define MAX_EXPERT_MLPS (INT64_C(1) << 16) /* layers x experts */
#define MAX_SMALL (INT64_C(1) << 16)       /* buckets, token types */

const char *const bm_hfconfig_model_types[] = {
    "llama", "mistral", "mixtral", "qwen2", "gemma", "phi",  "gpt2",
    "gpt_neox", "falcon", "opt",     "bloom", "t5",    "bert", NULL,
};

typedef struct hf {
    const json_t *cfg;  /* the config.json object */
    const char *src;    /* names the input in messages */
    const char *arch0;  /* architectures[0] or NULL */
    json_t *out;        /* resolved hyper-parameters */
    bm_tree *tree;
    const char *arch;   /* tree->arch to set */
    bool base_only;     /* build the AutoModel class */
    bm_status st;       /* first failure */
    bm_error e;
} hf;

/* ------------------------------------------------------------------------
 * Failures
 * ------------------------------------------------------------------------ */

static void fail(hf *h, bm_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(hf *h, bm_status code, const char *fmt, ...)
{
    if (h->st)
        return;
    char msg[BM_ERROR_MSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    h->st = bm_fail(&h->e, code, "%s: %s", h->src, msg);
}

/* A failure reported by the tree builder: keep its message, add the file. */
static void fail_tree(hf *h)
{
    if (h->st)
        return;
    h->st = h->e.code ? h->e.code : BM_E_INTERNAL;
    bm_error_prefix(&h->e, "%s", h->src);
}

static int64_t mul(hf *h, int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r)) {
        fail(h, BM_E_OVERFLOW, "%lld x %lld overflows", (long long)a,
             (long long)b);
        return 1;
    }
    return r;
}

static int64_t add(hf *h, int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r)) {
        fail(h, BM_E_OVERFLOW, "%lld + %lld overflows", (long long)a,
             (long long)b);
        return 1;
    }
    return r;
}

/* ------------------------------------------------------------------------
 * Config getters
 *
 * A key spec is "canonical|alias|...": the value is stored under the
 * canonical name in the resolved config. When an alias is present it wins
 * over the canonical key, as in transformers (attribute_map setters and
 * popped legacy kwargs such as n_embed are applied after the named
 * argument).
 * ------------------------------------------------------------------------ */

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* The value for a spec (NULL when absent); *key gets the name found (or
 * the canonical name), canon the canonical name. */
static const json_t *lookup(hf *h, const char *spec, char *key, size_t cap,
                            char *canon, size_t ccap)
{
    const json_t *found = NULL;
    const char *p = spec;
    bool first = true;
    key[0] = 0;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        char name[64];
        if (n >= sizeof name)
            n = sizeof name - 1;
        memcpy(name, p, n);
        name[n] = 0;
        if (first) {
            snprintf(canon, ccap, "%s", name);
            snprintf(key, cap, "%s", name);
            first = false;
        }
        const json_t *v = json_object_get(h->cfg, name);
        if (v) {
            found = v;
            snprintf(key, cap, "%s", name);
        }
        p += n;
        if (*p == '|')
            p++;
    }
    return found;
}

static void record(hf *h, const char *canon, json_t *v)
{
    if (!v || json_object_set_new(h->out, canon, v) != 0)
        fail(h, BM_E_NOMEM, "out of memory");
}

#define NO_NULL INT64_MIN

/* An integer in [lo, hi]; def when absent, def_null when null (NO_NULL:
 * null is an error, as transformers would fail on None). */
static int64_t get_intx(hf *h, const char *spec, int64_t def, int64_t def_null,
                        int64_t lo, int64_t hi)
{
    char key[64], canon[64];
    const json_t *v = lookup(h, spec, key, sizeof key, canon, sizeof canon);
    int64_t x = def;
    if (v && json_is_null(v) && def_null != NO_NULL) {
        x = def_null;
    } else if (v) {
        if (!json_is_integer(v)) {
            fail(h, BM_E_INVALID, "key '%s' must be an integer, not %s", key,
                 type_name(v));
            return lo;
        }
        x = json_integer_value(v);
    }
    if (x < lo || x > hi) {
        fail(h, BM_E_INVALID,
             "key '%s' is %lld; it must be between %lld and %lld", key,
             (long long)x, (long long)lo, (long long)hi);
        return lo;
    }
    record(h, canon, json_integer(x));
    return x;
}

static int64_t get_int(hf *h, const char *spec, int64_t def, int64_t lo,
                       int64_t hi)
{
    return get_intx(h, spec, def, NO_NULL, lo, hi);
}

/* An integer or null (recorded as is); returns -1 for null. Only for
 * values that do not shape the tree (sliding_window). */
static int64_t get_int_or_null(hf *h, const char *spec, int64_t def)
{
    char key[64], canon[64];
    const json_t *v = lookup(h, spec, key, sizeof key, canon, sizeof canon);
    int64_t x = def;
    if (v && json_is_null(v)) {
        x = -1;
    } else if (v) {
        if (!json_is_integer(v)) {
            fail(h, BM_E_INVALID, "key '%s' must be an integer or null, not %s",
                 key, type_name(v));
            return -1;
        }
        x = json_integer_value(v);
        if (x < 0) {
            fail(h, BM_E_INVALID, "key '%s' must not be negative", key);
            return -1;
        }
    }
    record(h, canon, x < 0 ? json_null() : json_integer(x));
    return x;
}

/* A finite number in [lo, hi] (integers accepted, as Python does). */
static double get_real(hf *h, const char *spec, double def, double lo, double hi)
{
    char key[64], canon[64];
    const json_t *v = lookup(h, spec, key, sizeof key, canon, sizeof canon);
    double x = def;
    if (v) {
        if (!json_is_number(v)) {
            fail(h, BM_E_INVALID, "key '%s' must be a number, not %s", key,
                 type_name(v));
            return lo;
        }
        x = json_number_value(v);
    }
    if (!isfinite(x) || x < lo || x > hi) {
        fail(h, BM_E_INVALID, "key '%s' is %g; it must be between %g and %g",
             key, x, lo, hi);
        return lo;
    }
    record(h, canon, json_real(x));
    return x;
}

static bool get_bool(hf *h, const char *spec, bool def)
{
    char key[64], canon[64];
    const json_t *v = lookup(h, spec, key, sizeof key, canon, sizeof canon);
    bool x = def;
    if (v) {
        if (!json_is_boolean(v)) {
            fail(h, BM_E_INVALID, "key '%s' must be true or false, not %s",
                 key, type_name(v));
            return def;
        }
        x = json_is_true(v);
    }
    record(h, canon, json_boolean(x));
    return x;
}

static const char *get_str(hf *h, const char *spec, const char *def)
{
    char key[64], canon[64];
    const json_t *v = lookup(h, spec, key, sizeof key, canon, sizeof canon);
    const char *x = def;
    if (v) {
        if (!json_is_string(v)) {
            fail(h, BM_E_INVALID, "key '%s' must be a string, not %s", key,
                 type_name(v));
            return def;
        }
        x = json_string_value(v);
    }
    record(h, canon, json_string(x));
    return x;
}

/* transformers' ACT2CLS (activations.py): the class each name builds. */
static const struct {
    const char *name, *cls;
} activations[] = {
    {"gelu", "GELUActivation"},
    {"gelu_10", "ClippedGELUActivation"},
    {"gelu_fast", "FastGELUActivation"},
    {"gelu_new", "NewGELUActivation"},
    {"gelu_python", "GELUActivation"},
    {"gelu_pytorch_tanh", "PytorchGELUTanh"},
    {"gelu_accurate", "AccurateGELUActivation"},
    {"laplace", "LaplaceActivation"},
    {"leaky_relu", "LeakyReLU"},
    {"linear", "LinearActivation"},
    {"mish", "MishActivation"},
    {"quick_gelu", "QuickGELUActivation"},
    {"relu", "ReLU"},
    {"relu2", "ReLUSquaredActivation"},
    {"relu6", "ReLU6"},
    {"sigmoid", "Sigmoid"},
    {"silu", "SiLU"},
    {"swish", "SiLU"},
    {"tanh", "Tanh"},
};

static const char *act_class_of(const char *name)
{
    for (size_t i = 0; i < sizeof activations / sizeof *activations; i++)
        if (strcmp(activations[i].name, name) == 0)
            return activations[i].cls;
    return NULL;
}

/* The activation class for a string key (ACT2FN[config.key]). */
static const char *get_act(hf *h, const char *spec, const char *def)
{
    const char *name = get_str(h, spec, def);
    if (h->st)
        return "SiLU";
    const char *cls = act_class_of(name);
    if (!cls) {
        fail(h, BM_E_INVALID, "key '%s' names the activation '%.100s', which "
             "transformers does not know", spec, name);
        return "SiLU";
    }
    return cls;
}

enum rope { ROPE_NONE, ROPE_LINEAR, ROPE_DYNAMIC };

/* rope_scaling as the 4.38 models that honour it read it: null, or
 * {"type": "linear"|"dynamic", "factor": > 1}. ("rope_type" is accepted as
 * the newer spelling of "type".) */
static enum rope get_rope_scaling(hf *h)
{
    const json_t *v = json_object_get(h->cfg, "rope_scaling");
    if (!v || json_is_null(v)) {
        record(h, "rope_scaling", json_null());
        return ROPE_NONE;
    }
    if (!json_is_object(v)) {
        fail(h, BM_E_INVALID, "key 'rope_scaling' must be an object or null, "
             "not %s", type_name(v));
        return ROPE_NONE;
    }
    const json_t *t = json_object_get(v, "type");
    if (!t)
        t = json_object_get(v, "rope_type");
    const json_t *f = json_object_get(v, "factor");
    if (!t || !json_is_string(t)) {
        fail(h, BM_E_INVALID, "key 'rope_scaling' needs a string 'type'");
        return ROPE_NONE;
    }
    const char *type = json_string_value(t);
    enum rope r;
    if (strcmp(type, "linear") == 0)
        r = ROPE_LINEAR;
    else if (strcmp(type, "dynamic") == 0)
        r = ROPE_DYNAMIC;
    else {
        fail(h, BM_E_UNSUPPORTED, "rope_scaling type '%.60s' is not supported "
             "(transformers 4.38 knows 'linear' and 'dynamic')", type);
        return ROPE_NONE;
    }
    if (!f || !json_is_number(f) || !isfinite(json_number_value(f)) ||
        json_number_value(f) <= 1.0) {
        fail(h, BM_E_INVALID, "key 'rope_scaling' needs a 'factor' above 1");
        return ROPE_NONE;
    }
    json_t *o = json_pack("{s:s, s:f}", "type", type, "factor",
                          json_number_value(f));
    record(h, "rope_scaling", o);
    return r;
}

/* "<Prefix>RotaryEmbedding", or its scaled variant. */
static void rotary_class(char *buf, size_t cap, const char *prefix, enum rope r)
{
    static const char *const kind[] = {"", "LinearScaling", "DynamicNTKScaling"};
    snprintf(buf, cap, "%s%sRotaryEmbedding", prefix, kind[r]);
}

/* ------------------------------------------------------------------------
 * Tree helpers (no-ops after a failure)
 * ------------------------------------------------------------------------ */

static int32_t mod(hf *h, int32_t parent, const char *local, const char *cls)
{
    if (h->st)
        return BM_NONE;
    int32_t m = parent == BM_NONE
                    ? bm_tree_add_root(h->tree, cls, &h->e)
                    : bm_tree_add_module(h->tree, parent, local, cls, &h->e);
    if (m == BM_NONE)
        fail_tree(h);
    return m;
}

static int32_t modf_(hf *h, int32_t parent, const char *local,
                     const char *fmt, const char *prefix)
{
    char cls[128];
    snprintf(cls, sizeof cls, fmt, prefix);
    return mod(h, parent, local, cls);
}

/* Child "i" of a ModuleList. */
static int32_t item(hf *h, int32_t list, int64_t i, const char *cls)
{
    char name[24];
    snprintf(name, sizeof name, "%lld", (long long)i);
    return mod(h, list, name, cls);
}

static void tensor(hf *h, int32_t m, const char *local, bm_dtype dt,
                   bool is_buffer, bool persistent, int ndim, const int64_t *shape)
{
    if (h->st)
        return;
    if (bm_tree_add_tensor(h->tree, m, local, dt, ndim, shape, is_buffer,
                           persistent, &h->e) != BM_OK)
        fail_tree(h);
}

static void param1(hf *h, int32_t m, const char *local, int64_t d0)
{
    int64_t s[1] = {d0};
    tensor(h, m, local, BM_F32, false, true, 1, s);
}

static void param2(hf *h, int32_t m, const char *local, int64_t d0, int64_t d1)
{
    int64_t s[2] = {d0, d1};
    tensor(h, m, local, BM_F32, false, true, 2, s);
}

static void buffer(hf *h, int32_t m, const char *local, bm_dtype dt, int ndim,
                   int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    int64_t s[4] = {d0, d1, d2, d3};
    tensor(h, m, local, dt, true, false, ndim, s);
}

static int32_t leaf(hf *h, int32_t parent, const char *local, const char *cls)
{
    return mod(h, parent, local, cls);
}

/* nn.Linear(in, out): weight [out, in], bias [out]. */
static int32_t linear(hf *h, int32_t parent, const char *local, const char *cls,
                      int64_t in, int64_t out, bool bias)
{
    int32_t m = mod(h, parent, local, cls);
    param2(h, m, "weight", out, in);
    if (bias)
        param1(h, m, "bias", out);
    return m;
}

/* transformers' Conv1D(nf, nx): weight [nx, nf], bias [nf]. */
static int32_t conv1d(hf *h, int32_t parent, const char *local, int64_t nx,
                      int64_t nf)
{
    int32_t m = mod(h, parent, local, "Conv1D");
    param2(h, m, "weight", nx, nf);
    param1(h, m, "bias", nf);
    return m;
}

static int32_t embedding(hf *h, int32_t parent, const char *local,
                         const char *cls, int64_t num, int64_t dim)
{
    int32_t m = mod(h, parent, local, cls);
    param2(h, m, "weight", num, dim);
    return m;
}

/* A norm with weight (and bias) [dim]; affine false: no parameters. */
static int32_t norm(hf *h, int32_t parent, const char *local, const char *cls,
                    int64_t dim, bool bias, bool affine)
{
    int32_t m = mod(h, parent, local, cls);
    if (affine) {
        param1(h, m, "weight", dim);
        if (bias)
            param1(h, m, "bias", dim);
    }
    return m;
}

/* A rotary embedding with inv_freq [ceil(dim/2)] and, when cos_name is
 * set, cached tables [max_pos, 2*ceil(dim/2)] (torch.arange(0, dim, 2)
 * gives ceil(dim/2) frequencies; cat((freqs, freqs)) doubles them). */
static int32_t rotary(hf *h, int32_t parent, const char *cls, int64_t dim,
                      int64_t max_pos, const char *cos_name, const char *sin_name)
{
    int32_t m = mod(h, parent, "rotary_emb", cls);
    int64_t half = (dim + 1) / 2;
    buffer(h, m, "inv_freq", BM_F32, 1, half, 0, 0, 0);
    if (cos_name) {
        buffer(h, m, cos_name, BM_F32, 2, max_pos, 2 * half, 0, 0);
        buffer(h, m, sin_name, BM_F32, 2, max_pos, 2 * half, 0, 0);
    }
    return m;
}

static void tie(hf *h, int n, const char *const *names)
{
    if (h->st)
        return;
    if (bm_tree_add_tie(h->tree, n, names, &h->e) != BM_OK)
        fail_tree(h);
}

static void tie2(hf *h, const char *a, const char *b)
{
    const char *names[2] = {a, b};
    tie(h, 2, names);
}

static void no_split(hf *h, const char *cls)
{
    if (h->st)
        return;
    if (bm_tree_add_no_split(h->tree, cls, &h->e) != BM_OK)
        fail_tree(h);
}

/* Is the bare model class wanted (option, or architectures[0] names it)? */
static bool wants_base(hf *h, const char *base_cls)
{
    return h->base_only || (h->arch0 && strcmp(h->arch0, base_cls) == 0);
}

static void check_divisible(hf *h, const char *a, int64_t x, const char *b,
                            int64_t y)
{
    if (y > 0 && x % y != 0)
        fail(h, BM_E_INVALID, "%s (%lld) must be divisible by %s (%lld)", a,
             (long long)x, b, (long long)y);
}

/* ------------------------------------------------------------------------
 * Llama and its relatives: Mistral, Mixtral, Qwen2, Gemma
 * (modeling_llama.py and the files copied from it)
 * ------------------------------------------------------------------------ */

struct llama_kind {
    const char *type, *prefix;
    int64_t vocab, hidden, inter, layers, heads, kv, max_pos;
    double eps, theta;
    bool tie;
    const char *act;
    bool causal_mask;           /* model-level causal_mask buffer */
    const char *cos, *sin;      /* cached-table names; NULL: none */
    bool inv_freq;              /* Gemma registers inv_freq as None */
    bool attention_bias;        /* the attention_bias key applies to q/k/v/o */
    bool qkv_bias;              /* Qwen2: q/k/v always biased, o never */
    bool moe;
    bool head_dim_key;          /* Gemma: head_dim from the config */
    bool rope_scaling;          /* Llama honours rope_scaling */
    int sliding;                /* 0 none, 1 Mistral, 2 Mixtral, 3 Qwen2 */
};

static const struct llama_kind llama_kinds[] = {
    {"llama", "Llama", 32000, 4096, 11008, 32, 32, -1, 2048, 1e-6, 10000.0,
     false, "silu", true, "_cos_cached", "_sin_cached", true, true, false,
     false, false, true, 0},
    {"mistral", "Mistral", 32000, 4096, 14336, 32, 32, 8, 4096 * 32, 1e-6,
     10000.0, false, "silu", false, "cos_cached", "sin_cached", true, false,
     false, false, false, false, 1},
    {"mixtral", "Mixtral", 32000, 4096, 14336, 32, 32, 8, 4096 * 32, 1e-5,
     1e6, false, "silu", false, "cos_cached", "sin_cached", true, false, false,
     true, false, false, 2},
    {"qwen2", "Qwen2", 151936, 4096, 22016, 32, 32, 32, 32768, 1e-6, 10000.0,
     false, "silu", false, "cos_cached", "sin_cached", true, false, true,
     false, false, false, 3},
    {"gemma", "Gemma", 256000, 3072, 24576, 28, 16, 16, 8192, 1e-6, 10000.0,
     true, "gelu", true, NULL, NULL, false, true, false, false, true, false, 0},
};

static void build_llama_kind(hf *h, const struct llama_kind *k)
{
    int64_t vocab = get_int(h, "vocab_size", k->vocab, 1, MAX_VOCAB);
    int64_t hidden = get_int(h, "hidden_size", k->hidden, 1, MAX_HIDDEN);
    int64_t inter = get_int(h, "intermediate_size", k->inter, 1, MAX_INTER);
    int64_t heads = get_int(h, "num_attention_heads", k->heads, 1, MAX_HEADS);
    int64_t kv = get_intx(h, "num_key_value_heads", k->kv > 0 ? k->kv : heads,
                          heads, 1, MAX_HEADS);
    int64_t layers = get_int(h, "num_hidden_layers", k->layers, 1, MAX_LAYERS);
    int64_t max_pos =
        get_int(h, "max_position_embeddings", k->max_pos, 1, MAX_POS);
    get_real(h, "rms_norm_eps", k->eps, 0.0, 1.0);
    get_real(h, "rope_theta", k->theta, 1e-300, 1e300);
    bool tie_emb = get_bool(h, "tie_word_embeddings", k->tie);
    const char *act = get_act(h, "hidden_act", k->act);
    int64_t head_dim;
    if (k->head_dim_key) {
        head_dim = get_int(h, "head_dim", 256, 1, MAX_HEAD_DIM);
    } else {
        check_divisible(h, "hidden_size", hidden, "num_attention_heads", heads);
        head_dim = hidden / heads;
        record(h, "head_dim", json_integer(head_dim));
    }
    check_divisible(h, "num_attention_heads", heads, "num_key_value_heads", kv);
    bool ab = k->attention_bias ? get_bool(h, "attention_bias", false) : false;
    enum rope rope = k->rope_scaling ? get_rope_scaling(h) : ROPE_NONE;
    int64_t experts = 0;
    if (k->moe) {
        experts = get_int(h, "num_local_experts", 8, 1, MAX_EXPERTS);
        int64_t per_tok = get_int(h, "num_experts_per_tok", 2, 1, MAX_EXPERTS);
        if (!h->st && per_tok > experts)
            fail(h, BM_E_INVALID, "num_experts_per_tok (%lld) exceeds "
                 "num_local_experts (%lld)", (long long)per_tok,
                 (long long)experts);
        if (!h->st && mul(h, layers, experts) > MAX_EXPERT_MLPS)
            fail(h, BM_E_INVALID, "%lld layers of %lld experts is too many",
                 (long long)layers, (long long)experts);
    }
    if (k->sliding == 1)
        get_int_or_null(h, "sliding_window", 4096);
    else if (k->sliding == 2)
        get_int_or_null(h, "sliding_window", -1);
    else if (k->sliding == 3) {
        get_bool(h, "use_sliding_window", false);
        get_int_or_null(h, "sliding_window", 4096);
        get_int(h, "max_window_layers", 28, 0, MAX_LAYERS);
    }
    int64_t q_out = mul(h, heads, head_dim);
    int64_t kv_out = mul(h, kv, head_dim);
    if (h->st)
        return;

    const char *p = k->prefix;
    char cls[128], rot_cls[128];
    rotary_class(rot_cls, sizeof rot_cls, p, rope);
    bool base = wants_base(h, (snprintf(cls, sizeof cls, "%sModel", p), cls));
    int32_t root = modf_(h, BM_NONE, NULL, base ? "%sModel" : "%sForCausalLM", p);
    int32_t model = base ? root : modf_(h, root, "model", "%sModel", p);
    if (k->causal_mask)
        buffer(h, model, "causal_mask", BM_BOOL, 2, max_pos, max_pos, 0, 0);
    embedding(h, model, "embed_tokens", "Embedding", vocab, hidden);
    int32_t list = mod(h, model, "layers", "ModuleList");
    for (int64_t i = 0; i < layers && !h->st; i++) {
        int32_t layer = item(h, list, i, (snprintf(cls, sizeof cls,
                                                   "%sDecoderLayer", p), cls));
        int32_t attn = modf_(h, layer, "self_attn", "%sSdpaAttention", p);
        bool qkvb = ab || k->qkv_bias;
        linear(h, attn, "q_proj", "Linear", hidden, q_out, qkvb);
        linear(h, attn, "k_proj", "Linear", hidden, kv_out, qkvb);
        linear(h, attn, "v_proj", "Linear", hidden, kv_out, qkvb);
        linear(h, attn, "o_proj", "Linear", q_out, hidden, ab);
        if (k->inv_freq)
            rotary(h, attn, rot_cls, head_dim, max_pos, k->cos, k->sin);
        else
            leaf(h, attn, "rotary_emb", rot_cls);
        if (k->moe) {
            int32_t moe = modf_(h, layer, "block_sparse_moe",
                                "%sSparseMoeBlock", p);
            linear(h, moe, "gate", "Linear", hidden, experts, false);
            int32_t ex = mod(h, moe, "experts", "ModuleList");
            for (int64_t e = 0; e < experts && !h->st; e++) {
                int32_t mlp = item(h, ex, e, (snprintf(cls, sizeof cls,
                                   "%sBlockSparseTop2MLP", p), cls));
                linear(h, mlp, "w1", "Linear", hidden, inter, false);
                linear(h, mlp, "w2", "Linear", inter, hidden, false);
                linear(h, mlp, "w3", "Linear", hidden, inter, false);
                leaf(h, mlp, "act_fn", act);
            }
        } else {
            int32_t mlp = modf_(h, layer, "mlp", "%sMLP", p);
            linear(h, mlp, "gate_proj", "Linear", hidden, inter, false);
            linear(h, mlp, "up_proj", "Linear", hidden, inter, false);
            linear(h, mlp, "down_proj", "Linear", inter, hidden, false);
            leaf(h, mlp, "act_fn", act);
        }
        snprintf(cls, sizeof cls, "%sRMSNorm", p);
        norm(h, layer, "input_layernorm", cls, hidden, false, true);
        norm(h, layer, "post_attention_layernorm", cls, hidden, false, true);
    }
    snprintf(cls, sizeof cls, "%sRMSNorm", p);
    norm(h, model, "norm", cls, hidden, false, true);
    if (!base) {
        linear(h, root, "lm_head", "Linear", hidden, vocab, false);
        if (tie_emb)
            tie2(h, "model.embed_tokens.weight", "lm_head.weight");
    }
    no_split(h, (snprintf(cls, sizeof cls, "%sDecoderLayer", p), cls));
    h->arch = k->type;
}

static void build_llama(hf *h) { build_llama_kind(h, &llama_kinds[0]); }
static void build_mistral(hf *h) { build_llama_kind(h, &llama_kinds[1]); }
static void build_mixtral(hf *h) { build_llama_kind(h, &llama_kinds[2]); }
static void build_qwen2(hf *h) { build_llama_kind(h, &llama_kinds[3]); }
static void build_gemma(hf *h) { build_llama_kind(h, &llama_kinds[4]); }

/* ------------------------------------------------------------------------
 * Phi (modeling_phi.py)
 * ------------------------------------------------------------------------ */

static void build_phi(hf *h)
{
    int64_t vocab = get_int(h, "vocab_size", 51200, 1, MAX_VOCAB);
    int64_t hidden = get_int(h, "hidden_size", 2048, 1, MAX_HIDDEN);
    int64_t inter = get_int(h, "intermediate_size", 8192, 1, MAX_INTER);
    int64_t layers = get_int(h, "num_hidden_layers", 24, 1, MAX_LAYERS);
    int64_t heads = get_int(h, "num_attention_heads", 32, 1, MAX_HEADS);
    int64_t kv = get_intx(h, "num_key_value_heads", heads, heads, 1, MAX_HEADS);
    int64_t max_pos = get_int(h, "max_position_embeddings", 2048, 1, MAX_POS);
    double prf = get_real(h, "partial_rotary_factor", 0.5, 0.0, 1.0);
    get_real(h, "rope_theta", 10000.0, 1e-300, 1e300);
    get_real(h, "layer_norm_eps", 1e-5, 0.0, 1.0);
    const char *act = get_act(h, "hidden_act", "gelu_new");
    bool tie_emb = get_bool(h, "tie_word_embeddings", false);
    bool qk_ln = get_bool(h, "qk_layernorm", false);
    enum rope rope = get_rope_scaling(h);
    check_divisible(h, "hidden_size", hidden, "num_attention_heads", heads);
    check_divisible(h, "num_attention_heads", heads, "num_key_value_heads", kv);
    if (h->st)
        return;
    int64_t head_dim = hidden / heads;
    record(h, "head_dim", json_integer(head_dim));
    /* int(self.partial_rotary_factor * self.head_dim): a double product,
     * truncated, exactly as Python computes it */
    int64_t rot_dim = (int64_t)(prf * (double)head_dim);
    int64_t kv_out = mul(h, kv, head_dim);
    char rot_cls[128];
    rotary_class(rot_cls, sizeof rot_cls, "Phi", rope);

    bool base = wants_base(h, "PhiModel");
    int32_t root = mod(h, BM_NONE, NULL, base ? "PhiModel" : "PhiForCausalLM");
    int32_t model = base ? root : mod(h, root, "model", "PhiModel");
    embedding(h, model, "embed_tokens", "Embedding", vocab, hidden);
    leaf(h, model, "embed_dropout", "Dropout");
    int32_t list = mod(h, model, "layers", "ModuleList");
    for (int64_t i = 0; i < layers && !h->st; i++) {
        int32_t layer = item(h, list, i, "PhiDecoderLayer");
        int32_t attn = mod(h, layer, "self_attn", "PhiAttention");
        linear(h, attn, "q_proj", "Linear", hidden, hidden, true);
        linear(h, attn, "k_proj", "Linear", hidden, kv_out, true);
        linear(h, attn, "v_proj", "Linear", hidden, kv_out, true);
        linear(h, attn, "dense", "Linear", hidden, hidden, true);
        if (qk_ln) {
            norm(h, attn, "q_layernorm", "LayerNorm", head_dim, true, true);
            norm(h, attn, "k_layernorm", "LayerNorm", head_dim, true, true);
        }
        rotary(h, attn, rot_cls, rot_dim, max_pos, "cos_cached", "sin_cached");
        int32_t mlp = mod(h, layer, "mlp", "PhiMLP");
        leaf(h, mlp, "activation_fn", act);
        linear(h, mlp, "fc1", "Linear", hidden, inter, true);
        linear(h, mlp, "fc2", "Linear", inter, hidden, true);
        norm(h, layer, "input_layernorm", "LayerNorm", hidden, true, true);
        leaf(h, layer, "resid_dropout", "Dropout");
    }
    norm(h, model, "final_layernorm", "LayerNorm", hidden, true, true);
    if (!base) {
        linear(h, root, "lm_head", "Linear", hidden, vocab, true);
        if (tie_emb)
            tie2(h, "model.embed_tokens.weight", "lm_head.weight");
    }
    no_split(h, "PhiDecoderLayer");
    h->arch = "phi";
}

/* ------------------------------------------------------------------------
 * GPT-2 (modeling_gpt2.py)
 * ------------------------------------------------------------------------ */

static void gpt2_attention(hf *h, int32_t parent, const char *local,
                           int64_t d, int64_t npos, bool cross)
{
    int32_t a = mod(h, parent, local, "GPT2Attention");
    buffer(h, a, "bias", BM_BOOL, 4, 1, 1, npos, npos);
    buffer(h, a, "masked_bias", BM_F32, 0, 0, 0, 0, 0);
    if (cross) {
        conv1d(h, a, "c_attn", d, 2 * d);
        conv1d(h, a, "q_attn", d, d);
    } else {
        conv1d(h, a, "c_attn", d, 3 * d);
    }
    conv1d(h, a, "c_proj", d, d);
    leaf(h, a, "attn_dropout", "Dropout");
    leaf(h, a, "resid_dropout", "Dropout");
}

static void build_gpt2(hf *h)
{
    int64_t d = get_int(h, "n_embd|hidden_size", 768, 1, MAX_HIDDEN);
    int64_t layers = get_int(h, "n_layer|num_hidden_layers", 12, 1, MAX_LAYERS);
    int64_t heads = get_int(h, "n_head|num_attention_heads", 12, 1, MAX_HEADS);
    int64_t npos =
        get_int(h, "n_positions|max_position_embeddings", 1024, 1, MAX_POS);
    int64_t vocab = get_int(h, "vocab_size", 50257, 1, MAX_VOCAB);
    const char *act = get_act(h, "activation_function", "gelu_new");
    get_real(h, "layer_norm_epsilon", 1e-5, 0.0, 1.0);
    bool tie_emb = get_bool(h, "tie_word_embeddings", true);
    int64_t inner = get_intx(h, "n_inner", 4 * d, 4 * d, 1, MAX_INTER);
    bool cross = get_bool(h, "add_cross_attention", false);
    check_divisible(h, "n_embd", d, "n_head", heads);
    if (h->st)
        return;

    bool base = wants_base(h, "GPT2Model");
    int32_t root = mod(h, BM_NONE, NULL, base ? "GPT2Model" : "GPT2LMHeadModel");
    int32_t tr = base ? root : mod(h, root, "transformer", "GPT2Model");
    embedding(h, tr, "wte", "Embedding", vocab, d);
    embedding(h, tr, "wpe", "Embedding", npos, d);
    leaf(h, tr, "drop", "Dropout");
    int32_t list = mod(h, tr, "h", "ModuleList");
    for (int64_t i = 0; i < layers && !h->st; i++) {
        int32_t blk = item(h, list, i, "GPT2Block");
        norm(h, blk, "ln_1", "LayerNorm", d, true, true);
        gpt2_attention(h, blk, "attn", d, npos, false);
        norm(h, blk, "ln_2", "LayerNorm", d, true, true);
        if (cross) {
            gpt2_attention(h, blk, "crossattention", d, npos, true);
            norm(h, blk, "ln_cross_attn", "LayerNorm", d, true, true);
        }
        int32_t mlp = mod(h, blk, "mlp", "GPT2MLP");
        conv1d(h, mlp, "c_fc", d, inner);
        conv1d(h, mlp, "c_proj", inner, d);
        leaf(h, mlp, "act", act);
        leaf(h, mlp, "dropout", "Dropout");
    }
    norm(h, tr, "ln_f", "LayerNorm", d, true, true);
    if (!base) {
        linear(h, root, "lm_head", "Linear", d, vocab, false);
        if (tie_emb)
            tie2(h, "transformer.wte.weight", "lm_head.weight");
    }
    no_split(h, "GPT2Block");
    h->arch = "gpt2";
}

/* ------------------------------------------------------------------------
 * GPT-NeoX (modeling_gpt_neox.py)
 * ------------------------------------------------------------------------ */

static void build_gpt_neox(hf *h)
{
    int64_t vocab = get_int(h, "vocab_size", 50432, 1, MAX_VOCAB);
    int64_t hidden = get_int(h, "hidden_size", 6144, 1, MAX_HIDDEN);
    int64_t layers = get_int(h, "num_hidden_layers", 44, 1, MAX_LAYERS);
    int64_t heads = get_int(h, "num_attention_heads", 64, 1, MAX_HEADS);
    int64_t inter = get_int(h, "intermediate_size", 24576, 1, MAX_INTER);
    const char *act = get_act(h, "hidden_act", "gelu");
    double pct = get_real(h, "rotary_pct", 0.25, 0.0, 1.0);
    get_real(h, "rotary_emb_base", 10000.0, 1e-300, 1e300);
    int64_t max_pos = get_int(h, "max_position_embeddings", 2048, 1, MAX_POS);
    get_real(h, "layer_norm_eps", 1e-5, 0.0, 1.0);
    bool tie_emb = get_bool(h, "tie_word_embeddings", false);
    get_bool(h, "use_parallel_residual", true);
    bool bias = get_bool(h, "attention_bias", true);
    enum rope rope = get_rope_scaling(h);
    check_divisible(h, "hidden_size", hidden, "num_attention_heads", heads);
    if (h->st)
        return;
    int64_t head = hidden / heads;
    record(h, "head_dim", json_integer(head));
    int64_t rot_dim = (int64_t)((double)head * pct); /* int(head_size * rotary_pct) */
    char rot_cls[128];
    rotary_class(rot_cls, sizeof rot_cls, "GPTNeoX", rope);

    bool base = wants_base(h, "GPTNeoXModel");
    int32_t root =
        mod(h, BM_NONE, NULL, base ? "GPTNeoXModel" : "GPTNeoXForCausalLM");
    int32_t model = base ? root : mod(h, root, "gpt_neox", "GPTNeoXModel");
    embedding(h, model, "embed_in", "Embedding", vocab, hidden);
    leaf(h, model, "emb_dropout", "Dropout");
    int32_t list = mod(h, model, "layers", "ModuleList");
    for (int64_t i = 0; i < layers && !h->st; i++) {
        int32_t layer = item(h, list, i, "GPTNeoXLayer");
        norm(h, layer, "input_layernorm", "LayerNorm", hidden, true, true);
        norm(h, layer, "post_attention_layernorm", "LayerNorm", hidden, true, true);
        leaf(h, layer, "post_attention_dropout", "Dropout");
        leaf(h, layer, "post_mlp_dropout", "Dropout");
        int32_t attn = mod(h, layer, "attention", "GPTNeoXAttention");
        buffer(h, attn, "bias", BM_BOOL, 4, 1, 1, max_pos, max_pos);
        buffer(h, attn, "masked_bias", BM_F32, 0, 0, 0, 0, 0);
        rotary(h, attn, rot_cls, rot_dim, max_pos, "cos_cached", "sin_cached");
        linear(h, attn, "query_key_value", "Linear", hidden, 3 * hidden, bias);
        linear(h, attn, "dense", "Linear", hidden, hidden, bias);
        leaf(h, attn, "attention_dropout", "Dropout");
        int32_t mlp = mod(h, layer, "mlp", "GPTNeoXMLP");
        linear(h, mlp, "dense_h_to_4h", "Linear", hidden, inter, true);
        linear(h, mlp, "dense_4h_to_h", "Linear", inter, hidden, true);
        leaf(h, mlp, "act", act);
    }
    norm(h, model, "final_layer_norm", "LayerNorm", hidden, true, true);
    if (!base) {
        linear(h, root, "embed_out", "Linear", hidden, vocab, false);
        if (tie_emb)
            tie2(h, "gpt_neox.embed_in.weight", "embed_out.weight");
    }
    no_split(h, "GPTNeoXLayer");
    h->arch = "gpt_neox";
}

/* ------------------------------------------------------------------------
 * Falcon (modeling_falcon.py)
 * ------------------------------------------------------------------------ */

static void build_falcon(hf *h)
{
    int64_t hidden = get_int(h, "hidden_size|n_embed", 4544, 1, MAX_HIDDEN);
    int64_t heads = get_int(h, "num_attention_heads", 71, 1, MAX_HEADS);
    int64_t layers = get_int(h, "num_hidden_layers", 32, 1, MAX_LAYERS);
    int64_t vocab = get_int(h, "vocab_size", 65024, 1, MAX_VOCAB);
    bool multi_query = get_bool(h, "multi_query", true);
    bool parallel = get_bool(h, "parallel_attn", true);
    bool new_arch = get_bool(h, "new_decoder_architecture", false);
    bool alibi = get_bool(h, "alibi", false);
    bool bias = get_bool(h, "bias", false);
    int64_t max_pos = get_int(h, "max_position_embeddings", 2048, 1, MAX_POS);
    get_real(h, "rope_theta", 10000.0, 1e-300, 1e300);
    get_real(h, "layer_norm_epsilon", 1e-5, 0.0, 1.0);
    bool tie_emb = get_bool(h, "tie_word_embeddings", true);
    int64_t kv = get_intx(h, "num_kv_heads", heads, heads, 1, MAX_HEADS);
    enum rope rope = get_rope_scaling(h);
    check_divisible(h, "hidden_size", hidden, "num_attention_heads", heads);
    if (h->st)
        return;
    int64_t hd = hidden / heads;
    record(h, "head_dim", json_integer(hd));
    int64_t qkv_out;
    if (new_arch)
        qkv_out = mul(h, add(h, mul(h, kv, 2), heads), hd);
    else if (multi_query)
        qkv_out = hidden + 2 * hd;
    else
        qkv_out = 3 * hidden;
    int64_t ffn = 4 * hidden;
    char rot_cls[128];
    rotary_class(rot_cls, sizeof rot_cls, "Falcon", rope);

    bool base = wants_base(h, "FalconModel");
    int32_t root = mod(h, BM_NONE, NULL, base ? "FalconModel" : "FalconForCausalLM");
    int32_t tr = base ? root : mod(h, root, "transformer", "FalconModel");
    embedding(h, tr, "word_embeddings", "Embedding", vocab, hidden);
    int32_t list = mod(h, tr, "h", "ModuleList");
    for (int64_t i = 0; i < layers && !h->st; i++) {
        int32_t layer = item(h, list, i, "FalconDecoderLayer");
        int32_t attn = mod(h, layer, "self_attention", "FalconAttention");
        if (!alibi)
            rotary(h, attn, rot_cls, hd, max_pos, "cos_cached", "sin_cached");
        linear(h, attn, "query_key_value", "FalconLinear", hidden, qkv_out, bias);
        linear(h, attn, "dense", "FalconLinear", hidden, hidden, bias);
        leaf(h, attn, "attention_dropout", "Dropout");
        int32_t mlp = mod(h, layer, "mlp", "FalconMLP");
        linear(h, mlp, "dense_h_to_4h", "FalconLinear", hidden, ffn, bias);
        leaf(h, mlp, "act", "GELU");
        linear(h, mlp, "dense_4h_to_h", "FalconLinear", ffn, hidden, bias);
        if (new_arch) {
            norm(h, layer, "ln_attn", "LayerNorm", hidden, true, true);
            norm(h, layer, "ln_mlp", "LayerNorm", hidden, true, true);
        } else {
            norm(h, layer, "input_layernorm", "LayerNorm", hidden, true, true);
            if (!parallel)
                norm(h, layer, "post_attention_layernorm", "LayerNorm", hidden,
                     true, true);
        }
    }
    norm(h, tr, "ln_f", "LayerNorm", hidden, true, true);
    if (!base) {
        linear(h, root, "lm_head", "Linear", hidden, vocab, false);
        if (tie_emb)
            tie2(h, "transformer.word_embeddings.weight", "lm_head.weight");
    }
    no_split(h, "FalconDecoderLayer");
    h->arch = "falcon";
}

/* ------------------------------------------------------------------------
 * OPT (modeling_opt.py)
 * ------------------------------------------------------------------------ */

static void build_opt(hf *h)
{
    int64_t hidden = get_int(h, "hidden_size", 768, 1, MAX_HIDDEN);
    int64_t ffn = get_int(h, "ffn_dim", 3072, 1, MAX_INTER);
    int64_t layers = get_int(h, "num_hidden_layers", 12, 1, MAX_LAYERS);
    int64_t heads = get_int(h, "num_attention_heads", 12, 1, MAX_HEADS);
    int64_t vocab = get_int(h, "vocab_size", 50272, 1, MAX_VOCAB);
    int64_t max_pos = get_int(h, "max_position_embeddings", 2048, 1, MAX_POS);
    int64_t proj = get_intx(h, "word_embed_proj_dim", hidden, hidden, 1, MAX_HIDDEN);
    bool ln_before = get_bool(h, "do_layer_norm_before", true);
    const char *act = get_act(h, "activation_function", "relu");
    bool tie_emb = get_bool(h, "tie_word_embeddings", true);
    bool remove_final = get_bool(h, "_remove_final_layer_norm", false);
    bool bias = get_bool(h, "enable_bias", true);
    bool affine = get_bool(h, "layer_norm_elementwise_affine", true);
    check_divisible(h, "hidden_size", hidden, "num_attention_heads", heads);
    if (h->st)
        return;

    bool base = wants_base(h, "OPTModel");
    int32_t root = mod(h, BM_NONE, NULL, base ? "OPTModel" : "OPTForCausalLM");
    int32_t model = base ? root : mod(h, root, "model", "OPTModel");
    int32_t dec = mod(h, model, "decoder", "OPTDecoder");
    embedding(h, dec, "embed_tokens", "Embedding", vocab, proj);
    /* OPTLearnedPositionalEmbedding keeps an offset of 2 rows */
    embedding(h, dec, "embed_positions", "OPTLearnedPositionalEmbedding",
              max_pos + 2, hidden);
    if (proj != hidden) {
        linear(h, dec, "project_out", "Linear", hidden, proj, false);
        linear(h, dec, "project_in", "Linear", proj, hidden, false);
    }
    if (ln_before && !remove_final)
        norm(h, dec, "final_layer_norm", "LayerNorm", hidden, true, affine);
    int32_t list = mod(h, dec, "layers", "ModuleList");
    for (int64_t i = 0; i < layers && !h->st; i++) {
        int32_t layer = item(h, list, i, "OPTDecoderLayer");
        int32_t attn = mod(h, layer, "self_attn", "OPTAttention");
        linear(h, attn, "k_proj", "Linear", hidden, hidden, bias);
        linear(h, attn, "v_proj", "Linear", hidden, hidden, bias);
        linear(h, attn, "q_proj", "Linear", hidden, hidden, bias);
        linear(h, attn, "out_proj", "Linear", hidden, hidden, bias);
        leaf(h, layer, "activation_fn", act);
        norm(h, layer, "self_attn_layer_norm", "LayerNorm", hidden, true, affine);
        linear(h, layer, "fc1", "Linear", hidden, ffn, bias);
        linear(h, layer, "fc2", "Linear", ffn, hidden, bias);
        norm(h, layer, "final_layer_norm", "LayerNorm", hidden, true, affine);
    }
    if (!base) {
        linear(h, root, "lm_head", "Linear", proj, vocab, false);
        if (tie_emb)
            tie2(h, "model.decoder.embed_tokens.weight", "lm_head.weight");
    }
    no_split(h, "OPTDecoderLayer");
    h->arch = "opt";
}

/* ------------------------------------------------------------------------
 * BLOOM (modeling_bloom.py)
 * ------------------------------------------------------------------------ */

static void build_bloom(hf *h)
{
    int64_t hidden = get_int(h, "hidden_size|n_embed", 64, 1, MAX_HIDDEN);
    int64_t layers = get_int(h, "n_layer|num_hidden_layers", 2, 1, MAX_LAYERS);
    int64_t heads = get_int(h, "n_head|num_attention_heads", 8, 1, MAX_HEADS);
    int64_t vocab = get_int(h, "vocab_size", 250880, 1, MAX_VOCAB);
    get_real(h, "layer_norm_epsilon", 1e-5, 0.0, 1.0);
    bool tie_emb = get_bool(h, "tie_word_embeddings", true);
    get_bool(h, "apply_residual_connection_post_layernorm", false);
    check_divisible(h, "hidden_size", hidden, "n_head", heads);
    if (h->st)
        return;

    bool base = wants_base(h, "BloomModel");
    int32_t root = mod(h, BM_NONE, NULL, base ? "BloomModel" : "BloomForCausalLM");
    int32_t tr = base ? root : mod(h, root, "transformer", "BloomModel");
    embedding(h, tr, "word_embeddings", "Embedding", vocab, hidden);
    norm(h, tr, "word_embeddings_layernorm", "LayerNorm", hidden, true, true);
    int32_t list = mod(h, tr, "h", "ModuleList");
    for (int64_t i = 0; i < layers && !h->st; i++) {
        int32_t blk = item(h, list, i, "BloomBlock");
        norm(h, blk, "input_layernorm", "LayerNorm", hidden, true, true);
        int32_t attn = mod(h, blk, "self_attention", "BloomAttention");
        linear(h, attn, "query_key_value", "Linear", hidden, 3 * hidden, true);
        linear(h, attn, "dense", "Linear", hidden, hidden, true);
        leaf(h, attn, "attention_dropout", "Dropout");
        norm(h, blk, "post_attention_layernorm", "LayerNorm", hidden, true, true);
        int32_t mlp = mod(h, blk, "mlp", "BloomMLP");
        linear(h, mlp, "dense_h_to_4h", "Linear", hidden, 4 * hidden, true);
        leaf(h, mlp, "gelu_impl", "BloomGelu");
        linear(h, mlp, "dense_4h_to_h", "Linear", 4 * hidden, hidden, true);
    }
    norm(h, tr, "ln_f", "LayerNorm", hidden, true, true);
    if (!base) {
        linear(h, root, "lm_head", "Linear", hidden, vocab, false);
        if (tie_emb)
            tie2(h, "transformer.word_embeddings.weight", "lm_head.weight");
    }
    no_split(h, "BloomBlock");
    h->arch = "bloom";
}

/* ------------------------------------------------------------------------
 * T5 (modeling_t5.py)
 * ------------------------------------------------------------------------ */

struct t5 {
    int64_t d_model, d_kv, d_ff, heads, buckets, vocab;
    bool gated;
    const char *act;
};

static void t5_attention(hf *h, int32_t parent, const char *local,
                         const struct t5 *t, bool rel_bias)
{
    int32_t a = mod(h, parent, local, "T5Attention");
    int64_t inner = t->heads * t->d_kv;
    linear(h, a, "q", "Linear", t->d_model, inner, false);
    linear(h, a, "k", "Linear", t->d_model, inner, false);
    linear(h, a, "v", "Linear", t->d_model, inner, false);
    linear(h, a, "o", "Linear", inner, t->d_model, false);
    if (rel_bias)
        embedding(h, a, "relative_attention_bias", "Embedding", t->buckets,
                  t->heads);
}

static void t5_stack(hf *h, int32_t parent, const char *local,
                     const struct t5 *t, int64_t n_layers, bool decoder)
{
    int32_t st = mod(h, parent, local, "T5Stack");
    embedding(h, st, "embed_tokens", "Embedding", t->vocab, t->d_model);
    int32_t blocks = mod(h, st, "block", "ModuleList");
    for (int64_t i = 0; i < n_layers && !h->st; i++) {
        int32_t blk = item(h, blocks, i, "T5Block");
        int32_t layer = mod(h, blk, "layer", "ModuleList");
        int64_t n = 0;
        int32_t sa = item(h, layer, n++, "T5LayerSelfAttention");
        t5_attention(h, sa, "SelfAttention", t, i == 0);
        norm(h, sa, "layer_norm", "T5LayerNorm", t->d_model, false, true);
        leaf(h, sa, "dropout", "Dropout");
        if (decoder) {
            int32_t ca = item(h, layer, n++, "T5LayerCrossAttention");
            t5_attention(h, ca, "EncDecAttention", t, false);
            norm(h, ca, "layer_norm", "T5LayerNorm", t->d_model, false, true);
            leaf(h, ca, "dropout", "Dropout");
        }
        int32_t ff = item(h, layer, n++, "T5LayerFF");
        int32_t dense = mod(h, ff, "DenseReluDense",
                            t->gated ? "T5DenseGatedActDense" : "T5DenseActDense");
        if (t->gated) {
            linear(h, dense, "wi_0", "Linear", t->d_model, t->d_ff, false);
            linear(h, dense, "wi_1", "Linear", t->d_model, t->d_ff, false);
        } else {
            linear(h, dense, "wi", "Linear", t->d_model, t->d_ff, false);
        }
        linear(h, dense, "wo", "Linear", t->d_ff, t->d_model, false);
        leaf(h, dense, "dropout", "Dropout");
        leaf(h, dense, "act", t->act);
        norm(h, ff, "layer_norm", "T5LayerNorm", t->d_model, false, true);
        leaf(h, ff, "dropout", "Dropout");
    }
    norm(h, st, "final_layer_norm", "T5LayerNorm", t->d_model, false, true);
    leaf(h, st, "dropout", "Dropout");
}

static void build_t5(hf *h)
{
    struct t5 t;
    t.d_model = get_int(h, "d_model|hidden_size", 512, 1, MAX_HIDDEN);
    t.d_kv = get_int(h, "d_kv", 64, 1, MAX_HEAD_DIM);
    t.d_ff = get_int(h, "d_ff", 2048, 1, MAX_INTER);
    t.heads = get_int(h, "num_heads|num_attention_heads", 8, 1, MAX_HEADS);
    int64_t enc_layers =
        get_int(h, "num_layers|num_hidden_layers", 6, 1, MAX_LAYERS);
    int64_t dec_layers = get_intx(h, "num_decoder_layers", enc_layers,
                                  enc_layers, 1, MAX_LAYERS);
    t.vocab = get_int(h, "vocab_size", 32128, 1, MAX_VOCAB);
    t.buckets = get_int(h, "relative_attention_num_buckets", 32, 1, MAX_SMALL);
    get_int(h, "relative_attention_max_distance", 128, 1, MAX_POS);
    const char *ffp = get_str(h, "feed_forward_proj", "relu");
    get_bool(h, "is_encoder_decoder", true);
    bool tie_emb = get_bool(h, "tie_word_embeddings", true);
    get_real(h, "layer_norm_epsilon", 1e-6, 0.0, 1.0);
    if (h->st)
        return;
    /* T5Config: "ACT" or "gated-ACT"; "gated-gelu" means gelu_new */
    const char *dash = strchr(ffp, '-');
    t.gated = dash && (size_t)(dash - ffp) == 5 && strncmp(ffp, "gated", 5) == 0;
    if ((dash && !t.gated) || (dash && strchr(dash + 1, '-'))) {
        fail(h, BM_E_INVALID, "key 'feed_forward_proj' is '%.60s'; it must be "
             "'ACT' or 'gated-ACT'", ffp);
        return;
    }
    const char *act_name = dash ? dash + 1 : ffp;
    if (strcmp(ffp, "gated-gelu") == 0)
        act_name = "gelu_new";
    t.act = act_class_of(act_name);
    if (!t.act) {
        fail(h, BM_E_INVALID, "key 'feed_forward_proj' names the activation "
             "'%.60s', which transformers does not know", act_name);
        return;
    }
    record(h, "dense_act_fn", json_string(act_name));
    record(h, "is_gated_act", json_boolean(t.gated));
    mul(h, t.heads, t.d_kv);
    if (h->st)
        return;

    bool encoder_only = !h->base_only && h->arch0 &&
                        strcmp(h->arch0, "T5EncoderModel") == 0;
    bool base = !encoder_only && wants_base(h, "T5Model");
    int32_t root = mod(h, BM_NONE, NULL,
                       encoder_only ? "T5EncoderModel"
                       : base       ? "T5Model"
                                    : "T5ForConditionalGeneration");
    embedding(h, root, "shared", "Embedding", t.vocab, t.d_model);
    t5_stack(h, root, "encoder", &t, enc_layers, false);
    if (!encoder_only)
        t5_stack(h, root, "decoder", &t, dec_layers, true);
    if (!base && !encoder_only)
        linear(h, root, "lm_head", "Linear", t.d_model, t.vocab, false);
    /* the stacks' embed_tokens are the shared module itself */
    const char *names[4] = {"shared.weight", "encoder.embed_tokens.weight",
                            "decoder.embed_tokens.weight", "lm_head.weight"};
    int n = encoder_only ? 2 : (base || !tie_emb) ? 3 : 4;
    tie(h, n, names);
    no_split(h, "T5Block");
    h->arch = "t5";
}

/* ------------------------------------------------------------------------
 * BERT (modeling_bert.py)
 * ------------------------------------------------------------------------ */

struct bert {
    int64_t hidden, inter, heads, max_pos;
    bool relative;
    const char *act;
};

static void bert_attention(hf *h, int32_t parent, const char *local,
                           const struct bert *b, bool relative)
{
    int32_t att = mod(h, parent, local, "BertAttention");
    int32_t self = mod(h, att, "self", "BertSelfAttention");
    linear(h, self, "query", "Linear", b->hidden, b->hidden, true);
    linear(h, self, "key", "Linear", b->hidden, b->hidden, true);
    linear(h, self, "value", "Linear", b->hidden, b->hidden, true);
    leaf(h, self, "dropout", "Dropout");
    if (relative)
        embedding(h, self, "distance_embedding", "Embedding",
                  2 * b->max_pos - 1, b->hidden / b->heads);
    int32_t out = mod(h, att, "output", "BertSelfOutput");
    linear(h, out, "dense", "Linear", b->hidden, b->hidden, true);
    norm(h, out, "LayerNorm", "LayerNorm", b->hidden, true, true);
    leaf(h, out, "dropout", "Dropout");
}

static void build_bert(hf *h)
{
    struct bert b;
    int64_t vocab = get_int(h, "vocab_size", 30522, 1, MAX_VOCAB);
    b.hidden = get_int(h, "hidden_size", 768, 1, MAX_HIDDEN);
    int64_t layers = get_int(h, "num_hidden_layers", 12, 1, MAX_LAYERS);
    b.heads = get_int(h, "num_attention_heads", 12, 1, MAX_HEADS);
    b.inter = get_int(h, "intermediate_size", 3072, 1, MAX_INTER);
    b.act = get_act(h, "hidden_act", "gelu");
    b.max_pos = get_int(h, "max_position_embeddings", 512, 1, MAX_POS);
    int64_t types = get_int(h, "type_vocab_size", 2, 1, MAX_SMALL);
    get_real(h, "layer_norm_eps", 1e-12, 0.0, 1.0);
    bool tie_emb = get_bool(h, "tie_word_embeddings", true);
    const char *pet = get_str(h, "position_embedding_type", "absolute");
    bool is_decoder = get_bool(h, "is_decoder", false);
    bool cross = get_bool(h, "add_cross_attention", false);
    check_divisible(h, "hidden_size", b.hidden, "num_attention_heads", b.heads);
    if (h->st)
        return;
    b.relative = strcmp(pet, "relative_key") == 0 ||
                 strcmp(pet, "relative_key_query") == 0;
    if (cross && !is_decoder) {
        fail(h, BM_E_INVALID, "add_cross_attention needs is_decoder");
        return;
    }

    /* architectures[0] picks the head; BertForMaskedLM by default */
    enum { MLM, BASE, PRETRAIN } kind = MLM;
    if (wants_base(h, "BertModel"))
        kind = BASE;
    else if (h->arch0 && strcmp(h->arch0, "BertForPreTraining") == 0)
        kind = PRETRAIN;
    static const char *const root_cls[] = {"BertForMaskedLM", "BertModel",
                                           "BertForPreTraining"};
    int32_t root = mod(h, BM_NONE, NULL, root_cls[kind]);
    int32_t bert = kind == BASE ? root : mod(h, root, "bert", "BertModel");

    int32_t emb = mod(h, bert, "embeddings", "BertEmbeddings");
    embedding(h, emb, "word_embeddings", "Embedding", vocab, b.hidden);
    embedding(h, emb, "position_embeddings", "Embedding", b.max_pos, b.hidden);
    embedding(h, emb, "token_type_embeddings", "Embedding", types, b.hidden);
    norm(h, emb, "LayerNorm", "LayerNorm", b.hidden, true, true);
    leaf(h, emb, "dropout", "Dropout");
    buffer(h, emb, "position_ids", BM_I64, 2, 1, b.max_pos, 0, 0);
    buffer(h, emb, "token_type_ids", BM_I64, 2, 1, b.max_pos, 0, 0);

    int32_t enc = mod(h, bert, "encoder", "BertEncoder");
    int32_t list = mod(h, enc, "layer", "ModuleList");
    for (int64_t i = 0; i < layers && !h->st; i++) {
        int32_t layer = item(h, list, i, "BertLayer");
        bert_attention(h, layer, "attention", &b, b.relative);
        if (cross)
            bert_attention(h, layer, "crossattention", &b, false);
        int32_t im = mod(h, layer, "intermediate", "BertIntermediate");
        linear(h, im, "dense", "Linear", b.hidden, b.inter, true);
        leaf(h, im, "intermediate_act_fn", b.act);
        int32_t out = mod(h, layer, "output", "BertOutput");
        linear(h, out, "dense", "Linear", b.inter, b.hidden, true);
        norm(h, out, "LayerNorm", "LayerNorm", b.hidden, true, true);
        leaf(h, out, "dropout", "Dropout");
    }
    /* BertForMaskedLM builds BertModel(add_pooling_layer=False) */
    if (kind != MLM) {
        int32_t pool = mod(h, bert, "pooler", "BertPooler");
        linear(h, pool, "dense", "Linear", b.hidden, b.hidden, true);
        leaf(h, pool, "activation", "Tanh");
    }
    if (kind != BASE) {
        int32_t cls = mod(h, root, "cls", kind == MLM ? "BertOnlyMLMHead"
                                                      : "BertPreTrainingHeads");
        int32_t pred = mod(h, cls, "predictions", "BertLMPredictionHead");
        param1(h, pred, "bias", vocab);
        int32_t tr = mod(h, pred, "transform", "BertPredictionHeadTransform");
        linear(h, tr, "dense", "Linear", b.hidden, b.hidden, true);
        leaf(h, tr, "transform_act_fn", b.act);
        norm(h, tr, "LayerNorm", "LayerNorm", b.hidden, true, true);
        /* decoder.bias is the head's own bias (self.decoder.bias = self.bias) */
        linear(h, pred, "decoder", "Linear", b.hidden, vocab, true);
        if (kind == PRETRAIN)
            linear(h, cls, "seq_relationship", "Linear", b.hidden, 2, true);
        if (tie_emb)
            tie2(h, "bert.embeddings.word_embeddings.weight",
                 "cls.predictions.decoder.weight");
        tie2(h, "cls.predictions.bias", "cls.predictions.decoder.bias");
    }
    /* the reference graphs give BertLayer (transformers 4.38 itself gives
     * none, which makes device_map="auto" refuse BERT) */
    no_split(h, "BertLayer");
    h->arch = kind == MLM ? "bert-mlm" : kind == BASE ? "bert" : "bert-pretraining";
}

/* ------------------------------------------------------------------------
 * Entry points
 * ------------------------------------------------------------------------ */

static const struct family {
    const char *model_type;
    void (*build)(hf *h);
} families[] = {
    {"llama", build_llama},   {"mistral", build_mistral},
    {"mixtral", build_mixtral}, {"qwen2", build_qwen2},
    {"gemma", build_gemma},   {"phi", build_phi},
    {"gpt2", build_gpt2},     {"gpt_neox", build_gpt_neox},
    {"falcon", build_falcon}, {"opt", build_opt},
    {"bloom", build_bloom},   {"t5", build_t5},
    {"bert", build_bert},
};

/* The model name: _name_or_path, else the folder of a "config.json", else
 * the file name without ".json". */
static char *model_name(const json_t *cfg, const char *source)
{
    const json_t *n = json_object_get(cfg, "_name_or_path");
    if (n && json_is_string(n) && json_string_length(n) > 0)
        return strdup(json_string_value(n));
    if (!source || !*source)
        return NULL;
    size_t len = strlen(source);
    while (len > 1 && source[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && source[start - 1] != '/')
        start--;
    const char *base = source + start;
    size_t blen = len - start;
    if (blen == 11 && strncmp(base, "config.json", 11) == 0) {
        size_t end = start;
        while (end > 0 && source[end - 1] == '/')
            end--;
        size_t s = end;
        while (s > 0 && source[s - 1] != '/')
            s--;
        if (end > s)
            return strndup(source + s, end - s);
        return NULL;
    }
    if (blen > 5 && strncmp(base + blen - 5, ".json", 5) == 0)
        blen -= 5;
    return blen ? strndup(base, blen) : NULL;
}

bm_status bm_hfconfig_build_opts(const void *config_json, const char *source,
                                 const bm_hfconfig_opts *opts, bm_tree **out,
                                 bm_error *err)
{
    *out = NULL;
    hf h = {0};
    h.src = source && *source ? source : "config";
    h.cfg = config_json;
    h.base_only = opts && opts->base_model_only;
    if (!h.cfg || !json_is_object(h.cfg))
        return bm_fail(err, BM_E_FORMAT, "%s: the config is not a JSON object",
                       h.src);

    const json_t *mt = json_object_get(h.cfg, "model_type");
    if (!mt)
        return bm_fail(err, BM_E_INVALID, "%s: missing key 'model_type'", h.src);
    if (!json_is_string(mt))
        return bm_fail(err, BM_E_INVALID,
                       "%s: key 'model_type' must be a string, not %s", h.src,
                       type_name(mt));
    const json_t *archs = json_object_get(h.cfg, "architectures");
    if (archs && !json_is_null(archs)) {
        if (!json_is_array(archs))
            return bm_fail(err, BM_E_INVALID,
                           "%s: key 'architectures' must be a list, not %s",
                           h.src, type_name(archs));
        const json_t *a0 = json_array_get(archs, 0);
        if (a0 && !json_is_string(a0))
            return bm_fail(err, BM_E_INVALID,
                           "%s: key 'architectures' must list strings", h.src);
        h.arch0 = a0 ? json_string_value(a0) : NULL;
    }

    const char *type = json_string_value(mt);
    const struct family *fam = NULL;
    for (size_t i = 0; i < sizeof families / sizeof *families; i++)
        if (strcmp(families[i].model_type, type) == 0)
            fam = &families[i];
    if (!fam) {
        char list[256] = "";
        for (size_t i = 0; bm_hfconfig_model_types[i]; i++) {
            if (i)
                strncat(list, ", ", sizeof list - strlen(list) - 1);
            strncat(list, bm_hfconfig_model_types[i],
                    sizeof list - strlen(list) - 1);
        }
        return bm_fail(err, BM_E_UNSUPPORTED,
                       "%s: model_type '%.100s' is not supported (supported: %s)",
                       h.src, type, list);
    }

    h.tree = bm_tree_new();
    h.out = json_object();
    if (!h.tree || !h.out) {
        bm_tree_free(h.tree);
        json_decref(h.out);
        return bm_fail(err, BM_E_NOMEM, "%s: out of memory", h.src);
    }
    h.tree->dtype = BM_F32; /* torch_dtype does not change the built tree */
    record(&h, "model_type", json_string(fam->model_type));
    fam->build(&h);

    if (!h.st) {
        char *name = model_name(h.cfg, source);
        if (bm_tree_set_meta(h.tree, name, h.arch, &h.e) != BM_OK)
            fail_tree(&h);
        free(name);
    }
    if (!h.st) {
        h.tree->config = h.out;
        h.out = NULL;
        if (bm_tree_finish(h.tree, h.src, &h.e) != BM_OK)
            h.st = h.e.code ? h.e.code : BM_E_INTERNAL;
    }
    json_decref(h.out);
    if (h.st) {
        bm_tree_free(h.tree);
        if (err)
            *err = h.e;
        return h.st;
    }
    *out = h.tree;
    return BM_OK;
}

bm_status bm_hfconfig_build(const void *config_json, const char *source,
                            bm_tree **out, bm_error *err)
{
    return bm_hfconfig_build_opts(config_json, source, NULL, out, err);
}

bm_status bm_hfconfig_load_opts(const char *path, const bm_hfconfig_opts *opts,
                                bm_tree **out, bm_error *err)
{
    *out = NULL;
    char *data = NULL;
    size_t len = 0;
    bm_status st = bm_read_file(path, BM_HFCONFIG_MAX_BYTES, &data, &len, err);
    if (st != BM_OK)
        return st;
    json_error_t je;
    json_t *cfg = json_loadb(data, len, 0, &je);
    free(data);
    if (!cfg)
        return bm_fail_at(err, BM_E_FORMAT, path, je.line > 0 ? je.line : 0,
                          NULL, -1, "not valid JSON: %s", je.text);
    st = bm_hfconfig_build_opts(cfg, path, opts, out, err);
    json_decref(cfg);
    return st;
}

bm_status bm_hfconfig_load(const char *path, bm_tree **out, bm_error *err)
{
    return bm_hfconfig_load_opts(path, NULL, out, err);
}
