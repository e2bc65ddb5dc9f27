/*
 * tree.c - the module tree: a pre-order builder, a frozen flat layout with
 * O(1) name lookups, tied groups, and compute_module_sizes.
 *
 * Everything is linear in the number of modules and tensors: BLOOM-176B has
 * about 100k entries and must load and size in milliseconds.
 */
#include "bmplan.h"
#include "strtab.h"

#include <jansson.h>

#include <stdlib.h>
#include <string.h>

/* numel * 128 bits must fit in 64 bits */
#define MAX_NUMEL (UINT64_C(1) << 56)

struct raw_tensor {
    const char *name;
    int32_t module;
    int32_t seq;
    bm_dtype dtype;
    int ndim;
    int64_t shape[BM_MAX_DIMS];
    uint64_t numel;
    bool is_buffer, persistent;
};

struct raw_tie {
    int n;
    const char **names;
};

struct bm_tree_impl {
    bm_arena arena;
    bm_strtab module_index;  /* full name -> module */
    bm_strtab tensor_index;  /* full name -> tensor (raw index until finish) */
    struct raw_tensor *raw;
    int32_t n_raw, cap_raw;
    int32_t cap_modules;
    int32_t *stack; /* ancestors of the last added module */
    int32_t depth, cap_stack;
    struct raw_tie *raw_ties;
    int32_t n_raw_ties, cap_raw_ties;
    int32_t cap_no_split;
    bool finished;
};

bm_tree *bm_tree_new(void)
{
    bm_tree *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->impl = calloc(1, sizeof *t->impl);
    if (!t->impl) {
        free(t);
        return NULL;
    }
    t->dtype = BM_F32;
    return t;
}

void bm_tree_free(bm_tree *tree)
{
    if (!tree)
        return;
    struct bm_tree_impl *im = tree->impl;
    if (im) {
        bm_arena_free(&im->arena);
        bm_strtab_free(&im->module_index);
        bm_strtab_free(&im->tensor_index);
        free(im->raw);
        free(im->stack);
        for (int32_t i = 0; i < im->n_raw_ties; i++)
            free(im->raw_ties[i].names);
        free(im->raw_ties);
        free(im);
    }
    free(tree->modules);
    free(tree->tensors);
    for (int32_t i = 0; i < tree->n_ties; i++)
        free(tree->ties[i].tensors);
    free(tree->ties);
    free(tree->no_split);
    free(tree->name);
    free(tree->arch);
    if (tree->config)
        json_decref((json_t *)tree->config);
    free(tree);
}

static bool grow(void **p, int32_t *cap, int32_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    int64_t nc = *cap ? (int64_t)*cap * 2 : 64;
    while (nc < need)
        nc *= 2;
    if (nc > INT32_MAX)
        return false;
    void *q = realloc(*p, (size_t)nc * elem);
    if (!q)
        return false;
    *p = q;
    *cap = (int32_t)nc;
    return true;
}

static bm_status nomem(bm_error *err)
{
    return bm_fail(err, BM_E_NOMEM, "out of memory building the module tree");
}

static bool valid_local(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++)
        if (*s == '.')
            return false;
    return true;
}

static int32_t push_module(bm_tree *tree, int32_t parent, const char *local,
                           const char *cls, bm_error *err)
{
    struct bm_tree_impl *im = tree->impl;
    if (im->finished) {
        bm_fail(err, BM_E_INTERNAL, "module tree is already finished");
        return BM_NONE;
    }
    if (!cls || !*cls) {
        bm_fail(err, BM_E_INVALID, "module '%.200s' has no class name",
                local ? local : "");
        return BM_NONE;
    }
    if (!grow((void **)&tree->modules, &im->cap_modules, tree->n_modules + 1,
              sizeof *tree->modules) ||
        !grow((void **)&im->stack, &im->cap_stack, im->depth + 2,
              sizeof *im->stack)) {
        nomem(err);
        return BM_NONE;
    }
    const char *name;
    const char *loc;
    if (parent == BM_NONE) {
        name = bm_arena_strdup(&im->arena, "");
        loc = name;
    } else {
        const char *pn = tree->modules[parent].name;
        name = *pn ? bm_arena_join(&im->arena, pn, local)
                   : bm_arena_strdup(&im->arena, local);
        if (!name) {
            nomem(err);
            return BM_NONE;
        }
        loc = name + strlen(name) - strlen(local);
    }
    const char *cl = bm_arena_strdup(&im->arena, cls);
    if (!name || !cl) {
        nomem(err);
        return BM_NONE;
    }
    int32_t idx = tree->n_modules;
    int rc = bm_strtab_put(&im->module_index, name, strlen(name), idx);
    if (rc < 0) {
        nomem(err);
        return BM_NONE;
    }
    if (rc == 0) {
        bm_fail(err, BM_E_INVALID, "duplicate module name '%.200s'", name);
        return BM_NONE;
    }
    bm_module *m = &tree->modules[idx];
    memset(m, 0, sizeof *m);
    m->name = name;
    m->local = loc;
    m->cls = cl;
    m->parent = parent;
    m->first_child = m->next_sibling = BM_NONE;
    m->depth = parent == BM_NONE ? 0 : tree->modules[parent].depth + 1;
    tree->n_modules++;
    return idx;
}

int32_t bm_tree_add_root(bm_tree *tree, const char *cls, bm_error *err)
{
    if (tree->n_modules != 0) {
        bm_fail(err, BM_E_INTERNAL, "the root must be added first");
        return BM_NONE;
    }
    int32_t r = push_module(tree, BM_NONE, NULL, cls, err);
    if (r == BM_NONE)
        return r;
    tree->impl->stack[0] = 0;
    tree->impl->depth = 1;
    return r;
}

int32_t bm_tree_add_module(bm_tree *tree, int32_t parent, const char *local,
                           const char *cls, bm_error *err)
{
    struct bm_tree_impl *im = tree->impl;
    if (!valid_local(local)) {
        bm_fail(err, BM_E_INVALID,
                "module name '%.200s' must be non-empty and contain no '.'",
                local ? local : "");
        return BM_NONE;
    }
    /* parent must be on the path to the last added module */
    while (im->depth > 0 && im->stack[im->depth - 1] != parent)
        im->depth--;
    if (im->depth == 0) {
        bm_fail(err, BM_E_INTERNAL, "modules must be added in pre-order");
        return BM_NONE;
    }
    int32_t idx = push_module(tree, parent, local, cls, err);
    if (idx == BM_NONE)
        return idx;
    im->stack[im->depth++] = idx;
    return idx;
}

bm_status bm_tree_add_tensor(bm_tree *tree, int32_t module, const char *local,
                             bm_dtype dtype, int ndim, const int64_t *shape,
                             bool is_buffer, bool persistent, bm_error *err)
{
    struct bm_tree_impl *im = tree->impl;
    if (im->finished)
        return bm_fail(err, BM_E_INTERNAL, "module tree is already finished");
    if (module < 0 || module >= tree->n_modules)
        return bm_fail(err, BM_E_INTERNAL, "bad module index");
    if (!valid_local(local))
        return bm_fail(err, BM_E_INVALID,
                       "tensor name '%.200s' must be non-empty and contain no '.'",
                       local ? local : "");
    if (dtype <= BM_DTYPE_INVALID || dtype >= BM_DTYPE_COUNT_)
        return bm_fail(err, BM_E_INVALID, "tensor '%.200s' has no valid dtype", local);
    if (ndim < 0 || ndim > BM_MAX_DIMS)
        return bm_fail(err, BM_E_INVALID,
                       "tensor '%.200s' has %d dimensions (at most %d)", local,
                       ndim, BM_MAX_DIMS);
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return bm_fail(err, BM_E_INVALID,
                           "tensor '%.200s' has a negative dimension", local);
        if (__builtin_mul_overflow(numel, (uint64_t)shape[i], &numel) ||
            numel > MAX_NUMEL)
            return bm_fail(err, BM_E_OVERFLOW,
                           "tensor '%.200s': shape product overflows", local);
    }
    if (!grow((void **)&im->raw, &im->cap_raw, im->n_raw + 1, sizeof *im->raw))
        return nomem(err);
    const char *mn = tree->modules[module].name;
    const char *name = *mn ? bm_arena_join(&im->arena, mn, local)
                           : bm_arena_strdup(&im->arena, local);
    if (!name)
        return nomem(err);
    int rc = bm_strtab_put(&im->tensor_index, name, strlen(name), im->n_raw);
    if (rc < 0)
        return nomem(err);
    if (rc == 0)
        return bm_fail(err, BM_E_INVALID, "duplicate tensor name '%.200s'", name);
    struct raw_tensor *r = &im->raw[im->n_raw];
    r->name = name;
    r->module = module;
    r->seq = im->n_raw;
    r->dtype = dtype;
    r->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        r->shape[i] = shape[i];
    r->numel = numel;
    r->is_buffer = is_buffer;
    r->persistent = is_buffer ? persistent : true;
    im->n_raw++;
    return BM_OK;
}

bm_status bm_tree_add_tie(bm_tree *tree, int n, const char *const *names,
                          bm_error *err)
{
    struct bm_tree_impl *im = tree->impl;
    if (n < 1)
        return bm_fail(err, BM_E_INVALID, "empty tied group");
    if (!grow((void **)&im->raw_ties, &im->cap_raw_ties, im->n_raw_ties + 1,
              sizeof *im->raw_ties))
        return nomem(err);
    struct raw_tie *t = &im->raw_ties[im->n_raw_ties];
    t->names = calloc((size_t)n, sizeof *t->names);
    if (!t->names)
        return nomem(err);
    for (int i = 0; i < n; i++) {
        t->names[i] = bm_arena_strdup(&im->arena, names[i] ? names[i] : "");
        if (!t->names[i]) {
            free(t->names);
            return nomem(err);
        }
    }
    t->n = n;
    im->n_raw_ties++;
    return BM_OK;
}

bm_status bm_tree_set_meta(bm_tree *tree, const char *name, const char *arch,
                           bm_error *err)
{
    if (name) {
        free(tree->name);
        if (!(tree->name = strdup(name)))
            return nomem(err);
    }
    if (arch) {
        free(tree->arch);
        if (!(tree->arch = strdup(arch)))
            return nomem(err);
    }
    return BM_OK;
}

bm_status bm_tree_add_no_split(bm_tree *tree, const char *cls, bm_error *err)
{
    struct bm_tree_impl *im = tree->impl;
    tree->has_no_split = true;
    if (!cls)
        return BM_OK;
    if (!grow((void **)&tree->no_split, &im->cap_no_split, tree->n_no_split + 1,
              sizeof *tree->no_split))
        return nomem(err);
    char *c = bm_arena_strdup(&im->arena, cls);
    if (!c)
        return nomem(err);
    tree->no_split[tree->n_no_split++] = c;
    return BM_OK;
}

bm_status bm_tree_finish(bm_tree *tree, const char *source, bm_error *err)
{
    struct bm_tree_impl *im = tree->impl;
    if (im->finished)
        return BM_OK;
    if (tree->n_modules == 0)
        return bm_fail_at(err, BM_E_INVALID, source, 0, NULL, -1,
                          "the model has no root module");
    int32_t nm = tree->n_modules, nt = im->n_raw;

    /* children links and subtree ends, from the pre-order depths */
    int32_t *last_child = malloc((size_t)nm * sizeof *last_child);
    int32_t *stack = malloc((size_t)(nm + 1) * sizeof *stack);
    if (!last_child || !stack) {
        free(last_child);
        free(stack);
        return nomem(err);
    }
    int32_t sp = 0;
    for (int32_t i = 0; i < nm; i++) {
        bm_module *m = &tree->modules[i];
        last_child[i] = BM_NONE;
        while (sp > 0 && tree->modules[stack[sp - 1]].depth >= m->depth)
            tree->modules[stack[--sp]].subtree_end = i;
        stack[sp++] = i;
        if (m->parent != BM_NONE) {
            bm_module *p = &tree->modules[m->parent];
            if (last_child[m->parent] == BM_NONE)
                p->first_child = i;
            else
                tree->modules[last_child[m->parent]].next_sibling = i;
            last_child[m->parent] = i;
            p->n_children++;
        }
    }
    while (sp > 0)
        tree->modules[stack[--sp]].subtree_end = nm;
    free(stack);
    free(last_child);

    /* tensors grouped by module (pre-order), params before buffers,
     * insertion order kept: a counting sort on (module, kind) */
    int32_t *count = calloc((size_t)nm * 2 + 1, sizeof *count);
    int32_t *newpos = malloc((size_t)(nt ? nt : 1) * sizeof *newpos);
    tree->tensors = calloc((size_t)(nt ? nt : 1), sizeof *tree->tensors);
    if (!count || !newpos || !tree->tensors) {
        free(count);
        free(newpos);
        return nomem(err);
    }
    for (int32_t i = 0; i < nt; i++)
        count[im->raw[i].module * 2 + im->raw[i].is_buffer + 1]++;
    for (int32_t k = 0; k < nm * 2; k++)
        count[k + 1] += count[k];
    for (int32_t i = 0; i < nm; i++) {
        bm_module *m = &tree->modules[i];
        m->tensor_begin = count[i * 2];
        m->n_params = count[i * 2 + 1] - count[i * 2];
        m->n_buffers = count[i * 2 + 2] - count[i * 2 + 1];
    }
    for (int32_t i = 0; i < nt; i++) {
        struct raw_tensor *r = &im->raw[i];
        int32_t pos = count[r->module * 2 + r->is_buffer]++;
        newpos[i] = pos;
        bm_tensor *t = &tree->tensors[pos];
        t->name = r->name;
        t->local = r->name + strlen(r->name);
        while (t->local > r->name && t->local[-1] != '.')
            t->local--;
        t->module = r->module;
        t->dtype = r->dtype;
        t->ndim = r->ndim;
        memcpy(t->shape, r->shape, sizeof t->shape);
        t->numel = r->numel;
        t->is_buffer = r->is_buffer;
        t->persistent = r->persistent;
        t->tie_group = BM_NONE;
        t->alias_of = BM_NONE;
    }
    free(count);
    tree->n_tensors = nt;
    for (int32_t i = 0; i < nm; i++) {
        bm_module *m = &tree->modules[i];
        int32_t e = m->subtree_end;
        m->subtree_tensor_end = e < nm ? tree->modules[e].tensor_begin : nt;
    }
    bm_strtab_remap(&im->tensor_index, newpos);
    free(newpos);

    /* a tensor and a module must not share a full name */
    for (int32_t i = 0; i < nt; i++) {
        const char *n = tree->tensors[i].name;
        if (bm_strtab_get(&im->module_index, n, strlen(n)) != BM_NONE)
            return bm_fail_at(err, BM_E_INVALID, source, 0, NULL, -1,
                              "'%.200s' is both a module and a tensor", n);
    }

    /* ties */
    if (im->n_raw_ties) {
        tree->ties = calloc((size_t)im->n_raw_ties, sizeof *tree->ties);
        if (!tree->ties)
            return nomem(err);
    }
    for (int32_t g = 0; g < im->n_raw_ties; g++) {
        struct raw_tie *rt = &im->raw_ties[g];
        bm_tie *tie = &tree->ties[g];
        tie->tensors = malloc((size_t)rt->n * sizeof *tie->tensors);
        if (!tie->tensors)
            return nomem(err);
        tree->n_ties = g + 1;
        tie->n = rt->n;
        tie->counted = BM_NONE;
        for (int i = 0; i < rt->n; i++) {
            const char *n = rt->names[i];
            int32_t ti = bm_strtab_get(&im->tensor_index, n, strlen(n));
            if (ti == BM_NONE)
                return bm_fail_at(err, BM_E_INVALID, source, 0, NULL, -1,
                                  "tied name '%.200s' is not a parameter of "
                                  "the model", n);
            bm_tensor *t = &tree->tensors[ti];
            if (t->is_buffer)
                return bm_fail_at(err, BM_E_INVALID, source, 0, NULL, -1,
                                  "tied name '%.200s' is a buffer; only "
                                  "parameters can be tied", n);
            if (t->tie_group != BM_NONE)
                return bm_fail_at(err, BM_E_INVALID, source, 0, NULL, -1,
                                  "'%.200s' appears in more than one tied "
                                  "group (or twice in one)", n);
            t->tie_group = g;
            tie->tensors[i] = ti;
            if (tie->counted == BM_NONE || ti < tie->counted)
                tie->counted = ti;
        }
        for (int i = 0; i < rt->n; i++) {
            bm_tensor *t = &tree->tensors[tie->tensors[i]];
            const bm_tensor *c = &tree->tensors[tie->counted];
            if (tie->tensors[i] != tie->counted) {
                t->alias_of = tie->counted;
                if (t->ndim != c->ndim || t->dtype != c->dtype ||
                    memcmp(t->shape, c->shape, sizeof(int64_t) * (size_t)t->ndim))
                    return bm_fail_at(err, BM_E_INVALID, source, 0, NULL, -1,
                                      "tied names '%.200s' and '%.200s' differ "
                                      "in shape or dtype", c->name, t->name);
            }
        }
    }
    im->finished = true;
    return BM_OK;
}

int32_t bm_tree_find_module_n(const bm_tree *tree, const char *name, size_t len)
{
    return bm_strtab_get(&tree->impl->module_index, name, len);
}

int32_t bm_tree_find_tensor_n(const bm_tree *tree, const char *name, size_t len)
{
    return bm_strtab_get(&tree->impl->tensor_index, name, len);
}

int32_t bm_tree_find_module(const bm_tree *tree, const char *name)
{
    return name ? bm_tree_find_module_n(tree, name, strlen(name)) : BM_NONE;
}

int32_t bm_tree_find_tensor(const bm_tree *tree, const char *name)
{
    return name ? bm_tree_find_tensor_n(tree, name, strlen(name)) : BM_NONE;
}

uint64_t bm_tree_param_count(const bm_tree *tree)
{
    uint64_t n = 0;
    for (int32_t i = 0; i < tree->n_tensors; i++) {
        const bm_tensor *t = &tree->tensors[i];
        if (!t->is_buffer && t->alias_of == BM_NONE)
            n += t->numel;
    }
    return n;
}

uint64_t bm_tensor_storage_bytes(const bm_tensor *t)
{
    if (t->alias_of != BM_NONE)
        return 0;
    return (t->numel * bm_dtype_storage_bits(t->dtype) + 7) / 8;
}

bool bm_class_in(const char *cls, char *const *list, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(cls, list[i]) == 0)
            return true;
    return false;
}

bm_status bm_tree_sizes(const bm_tree *tree, const bm_size_opts *opts,
                        uint64_t *module_bits, uint64_t *tensor_bits,
                        bm_error *err)
{
    bm_size_opts none = {.dtype = BM_DTYPE_INVALID};
    if (!opts)
        opts = &none;
    bm_status st;
    unsigned target_bits = 0;
    if (opts->dtype != BM_DTYPE_INVALID &&
        (st = bm_dtype_accel_bits(opts->dtype, opts->compat, &target_bits, err)))
        return st;
    int32_t nt = tree->n_tensors;
    /* special dtypes by tensor index; unknown names are ignored, as
     * compute_module_sizes ignores them */
    bm_dtype *special = NULL;
    if (opts->n_special > 0) {
        special = calloc((size_t)(nt ? nt : 1), sizeof *special);
        if (!special)
            return nomem(err);
        for (int i = 0; i < opts->n_special; i++) {
            int32_t ti = bm_tree_find_tensor(tree, opts->special_names[i]);
            if (ti != BM_NONE)
                special[ti] = opts->special_dtypes[i];
        }
    }
    if (module_bits)
        memset(module_bits, 0, (size_t)tree->n_modules * sizeof *module_bits);
    st = BM_OK;
    for (int32_t i = 0; i < nt; i++) {
        const bm_tensor *t = &tree->tensors[i];
        uint64_t bits = 0;
        if (t->alias_of == BM_NONE) {
            unsigned eb, own;
            if (special && special[i] != BM_DTYPE_INVALID) {
                if ((st = bm_dtype_accel_bits(special[i], opts->compat, &eb, err)))
                    break;
            } else {
                if ((st = bm_dtype_accel_bits(t->dtype, opts->compat, &own, err))) {
                    bm_error_prefix(err, "tensor '%.200s'", t->name);
                    break;
                }
                eb = own;
                if (opts->dtype != BM_DTYPE_INVALID && bm_dtype_is_floating(t->dtype) &&
                    target_bits < own)
                    eb = target_bits;
            }
            if (__builtin_mul_overflow(t->numel, (uint64_t)eb, &bits)) {
                st = bm_fail(err, BM_E_OVERFLOW, "tensor '%.200s' is too large",
                             t->name);
                break;
            }
        }
        if (tensor_bits)
            tensor_bits[i] = bits;
        if (module_bits &&
            __builtin_add_overflow(module_bits[t->module], bits,
                                   &module_bits[t->module])) {
            st = bm_fail(err, BM_E_OVERFLOW, "model size overflows");
            break;
        }
    }
    free(special);
    if (st)
        return st;
    if (module_bits)
        for (int32_t m = tree->n_modules - 1; m > 0; m--) {
            int32_t p = tree->modules[m].parent;
            if (__builtin_add_overflow(module_bits[p], module_bits[m], &module_bits[p]))
                return bm_fail(err, BM_E_OVERFLOW, "model size overflows");
        }
    return BM_OK;
}

/* get_max_layer_size (spec §2.3) on the initial queue. Depth-first with an
 * explicit stack; children are visited in order, the module's own direct
 * tensors are not examined when descending (accelerate's quirk). */
bm_status bm_tree_largest_layer(const bm_tree *tree, const uint64_t *module_bits,
                                const uint64_t *tensor_bits, char *const *no_split,
                                int n_no_split, uint64_t *bits, int32_t *names,
                                int32_t *n, int32_t cap, bm_error *err)
{
    *bits = 0;
    *n = 0;
    if (tree->n_modules == 0)
        return BM_OK;
    int32_t *stack = malloc((size_t)tree->n_modules * sizeof *stack);
    if (!stack)
        return nomem(err);
    uint64_t best = 0;
    int32_t count = 0;
#define CONSIDER(size, code)                                                  \
    do {                                                                      \
        if ((size) > best || count == 0) {                                    \
            best = (size);                                                    \
            count = 0;                                                        \
        }                                                                     \
        if ((size) == best) {                                                 \
            if (names && count < cap)                                         \
                names[count] = (code);                                        \
            count++;                                                          \
        }                                                                     \
    } while (0)
    const bm_module *root = &tree->modules[0];
    for (int32_t k = 0; k < root->n_params; k++)
        CONSIDER(tensor_bits[root->tensor_begin + k], -2 - (root->tensor_begin + k));
    /* children of the root, each explored depth-first in order */
    for (int32_t c = root->first_child; c != BM_NONE; c = tree->modules[c].next_sibling) {
        int32_t sp = 0;
        stack[sp++] = c;
        while (sp > 0) {
            int32_t m = stack[--sp];
            const bm_module *mod = &tree->modules[m];
            if (mod->n_children == 0 || bm_class_in(mod->cls, no_split, n_no_split)) {
                CONSIDER(module_bits[m], m);
                continue;
            }
            /* push children in reverse so the first is visited first */
            int32_t first = sp;
            for (int32_t ch = mod->first_child; ch != BM_NONE; ch = tree->modules[ch].next_sibling)
                stack[sp++] = ch;
            for (int32_t a = first, b = sp - 1; a < b; a++, b--) {
                int32_t tmp = stack[a];
                stack[a] = stack[b];
                stack[b] = tmp;
            }
        }
    }
    for (int32_t k = 0; k < root->n_buffers; k++) {
        int32_t ti = root->tensor_begin + root->n_params + k;
        CONSIDER(tensor_bits[ti], -2 - ti);
    }
#undef CONSIDER
    free(stack);
    *bits = best;
    *n = count;
    return BM_OK;
}
