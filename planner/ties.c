/*
 * ties.c - accelerate's find_tied_parameters over a module tree.
 *
 * A graph's `tied` group is one Parameter object under several names. Which
 * of those names accelerate reports depends on the version:
 *
 * 0.27 walks named_children() recursively; at every non-root module A it
 * lists A's own recursive named_parameters() (deduplicated inside A) and
 * records each full name that is not a counted name as an alias. So alias X
 * is found at the shallowest ancestor A of its owner (depth >= 1) whose
 * subtree holds no earlier name of the same tensor: never when X's owner is
 * the root or when an earlier name lives on X's own module. Groups come out
 * in the order their first alias is discovered (module visit order, then
 * parameter order inside the visited module).
 *
 * 1.x lists every alias (named_parameters(remove_duplicate=False)); its group
 * order follows the iteration order of a Python set of the alias names, so
 * it depends on PYTHONHASHSEED: the 1.x mode reproduces PYTHONHASHSEED=0
 * (pyhash.c). bmplan orders groups by their counted (first) name.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

void bm_tied_free(bm_tied *t)
{
    if (!t)
        return;
    for (int32_t i = 0; i < t->n; i++)
        free(t->groups[i].tensors);
    free(t->groups);
    t->groups = NULL;
    t->n = 0;
}

static int cmp_by_name(const void *a, const void *b, void *ctx)
{
    const bm_tree *tree = ctx;
    const char *x = tree->tensors[*(const int32_t *)a].name;
    const char *y = tree->tensors[*(const int32_t *)b].name;
    return strcmp(x, y); /* byte order of UTF-8 = code point order */
}

static int32_t lca_depth(const bm_tree *tree, int32_t a, int32_t b)
{
    while (tree->modules[a].depth > tree->modules[b].depth)
        a = tree->modules[a].parent;
    while (tree->modules[b].depth > tree->modules[a].depth)
        b = tree->modules[b].parent;
    while (a != b) {
        a = tree->modules[a].parent;
        b = tree->modules[b].parent;
    }
    return tree->modules[a].depth;
}

struct found_group {
    int32_t n;
    int32_t *tensors;
    int64_t key_module, key_tensor; /* first discovery (0.27) */
};

static int cmp_found(const void *a, const void *b)
{
    const struct found_group *x = a, *y = b;
    if (x->key_module != y->key_module)
        return x->key_module < y->key_module ? -1 : 1;
    if (x->key_tensor != y->key_tensor)
        return x->key_tensor < y->key_tensor ? -1 : 1;
    return 0;
}

/*
 * 1.x: tied_param_names = set(all names) - set(unique names); iterating it,
 * each alias appends to the group of its counted name (dict order). The key
 * of each group is the position of its first alias in that iteration.
 */
static bm_status latest_order(const bm_tree *tree, int64_t *rank, bm_error *err)
{
    int32_t nt = tree->n_tensors;
    int64_t *hash = malloc((size_t)(nt ? nt : 1) * sizeof *hash);
    if (!hash)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    bm_pyset all, diff;
    bm_status st = bm_pyset_init(&all, err);
    if (st) {
        free(hash);
        return st;
    }
    memset(&diff, 0, sizeof diff);
    int32_t n_params = 0, n_unique = 0;
    for (int32_t ti = 0; ti < nt && !st; ti++) {
        const bm_tensor *t = &tree->tensors[ti];
        if (t->is_buffer)
            continue;
        hash[ti] = bm_py_str_hash(t->name);
        n_params++;
        n_unique += t->alias_of == BM_NONE;
        st = bm_pyset_add(&all, ti, hash[ti], err);
    }
    /* set_difference: iterate `all` adding the aliases to a new set, unless
     * len(all) >> 2 > len(unique): then copy `all` and delete the unique
     * names (the copy keeps `all`'s slot order when its size matches) */
    bool copy_path = (n_params >> 2) > n_unique;
    const int32_t *order = NULL;
    size_t nslots = 0;
    if (!st && copy_path) {
        /* set_merge into an empty set: one resize up front when needed */
        size_t newsize = 8;
        if ((size_t)all.used * 5 >= 7 * 3)
            while (newsize <= (size_t)all.used * 2)
                newsize <<= 1;
        if (newsize == all.mask + 1) {
            order = all.slots; /* pointers copied slot by slot */
            nslots = newsize;
        } else if (!(st = bm_pyset_init_size(&diff, newsize, true, err))) {
            for (size_t i = 0; i <= all.mask && !st; i++)
                if (all.slots[i] >= 0)
                    st = bm_pyset_add(&diff, all.slots[i], hash[all.slots[i]], err);
            order = diff.slots;
            nslots = newsize;
        }
    } else if (!st && !(st = bm_pyset_init(&diff, err))) {
        for (size_t i = 0; i <= all.mask && !st; i++) {
            int32_t ti = all.slots[i];
            if (ti >= 0 && tree->tensors[ti].alias_of != BM_NONE)
                st = bm_pyset_add(&diff, ti, hash[ti], err);
        }
        order = diff.slots;
        nslots = diff.mask + 1;
    }
    int64_t pos = 0;
    for (size_t i = 0; !st && i < nslots; i++) {
        int32_t ti = order[i];
        if (ti < 0 || tree->tensors[ti].alias_of == BM_NONE)
            continue;
        int32_t g = tree->tensors[ti].tie_group;
        if (g != BM_NONE && rank[g] == INT64_MAX)
            rank[g] = pos;
        pos++;
    }
    bm_pyset_free(&all);
    bm_pyset_free(&diff);
    free(hash);
    return st;
}

bm_status bm_tied_find(const bm_tree *tree, bm_compat compat, bm_tied *out,
                       bm_error *err)
{
    memset(out, 0, sizeof *out);
    if (tree->n_ties == 0)
        return BM_OK;
    struct found_group *fg = calloc((size_t)tree->n_ties, sizeof *fg);
    int64_t *rank = malloc((size_t)tree->n_ties * sizeof *rank);
    if (!fg || !rank) {
        free(fg);
        free(rank);
        return bm_fail(err, BM_E_NOMEM, "out of memory finding tied parameters");
    }
    for (int32_t g = 0; g < tree->n_ties; g++)
        rank[g] = INT64_MAX;
    bm_status st = BM_OK;
    /* the order only matters between two or more groups */
    int32_t with_alias = 0;
    for (int32_t g = 0; g < tree->n_ties; g++)
        with_alias += tree->ties[g].n > 1;
    if (compat == BM_COMPAT_LATEST && with_alias > 1 && (st = latest_order(tree, rank, err))) {
        free(fg);
        free(rank);
        return st;
    }
    int32_t nfg = 0;
    for (int32_t g = 0; g < tree->n_ties; g++) {
        const bm_tie *tie = &tree->ties[g];
        struct found_group *f = &fg[nfg];
        f->tensors = malloc((size_t)tie->n * sizeof *f->tensors);
        if (!f->tensors) {
            st = bm_fail(err, BM_E_NOMEM, "out of memory finding tied parameters");
            break;
        }
        f->tensors[f->n++] = tie->counted;
        f->key_module = INT64_MAX;
        f->key_tensor = tie->counted;
        for (int32_t i = 0; i < tie->n; i++) {
            int32_t x = tie->tensors[i];
            if (x == tie->counted)
                continue;
            if (compat != BM_COMPAT_0_27) {
                f->tensors[f->n++] = x;
                continue;
            }
            int32_t owner = tree->tensors[x].module;
            int32_t need = 1;
            for (int32_t j = 0; j < tie->n; j++) {
                int32_t y = tie->tensors[j];
                if (y >= x)
                    continue;
                int32_t d = lca_depth(tree, owner, tree->tensors[y].module) + 1;
                if (d > need)
                    need = d;
            }
            if (need > tree->modules[owner].depth)
                continue; /* 0.27 never sees this name as an alias */
            int32_t a = owner;
            while (tree->modules[a].depth > need)
                a = tree->modules[a].parent;
            f->tensors[f->n++] = x;
            if (a < f->key_module || (a == f->key_module && x < f->key_tensor)) {
                f->key_module = a;
                f->key_tensor = x;
            }
        }
        if (f->n < 2) {
            free(f->tensors);
            memset(f, 0, sizeof *f);
            continue;
        }
        if (compat == BM_COMPAT_LATEST)
            f->key_module = f->key_tensor = rank[g];
        else if (compat == BM_COMPAT_BMPLAN)
            f->key_module = f->key_tensor = tie->counted;
        nfg++;
    }
    free(rank);
    if (st) {
        for (int32_t i = 0; i <= nfg && i < tree->n_ties; i++)
            free(fg[i].tensors);
        free(fg);
        return st;
    }
    qsort(fg, (size_t)nfg, sizeof *fg, cmp_found);
    out->groups = calloc((size_t)(nfg ? nfg : 1), sizeof *out->groups);
    if (!out->groups) {
        for (int32_t i = 0; i < nfg; i++)
            free(fg[i].tensors);
        free(fg);
        return bm_fail(err, BM_E_NOMEM, "out of memory finding tied parameters");
    }
    for (int32_t i = 0; i < nfg; i++) {
        qsort_r(fg[i].tensors, (size_t)fg[i].n, sizeof(int32_t), cmp_by_name,
                (void *)tree);
        out->groups[i].n = fg[i].n;
        out->groups[i].tensors = fg[i].tensors;
    }
    out->n = nfg;
    free(fg);
    return BM_OK;
}
