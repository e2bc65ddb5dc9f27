/*
 * check.c - validating a device map against a model: accelerate's
 * check_device_map (every state-dict tensor has a device), stricter checks
 * of our own (no key names something the model lacks, no tensor is covered
 * by two keys), tied groups on one device, and per-device totals against
 * budgets.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* At most this many individual lines per kind of problem. */
#define MAX_LINES 20

void bm_check_result_free(bm_check_result *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n_problems; i++)
        free(r->problems[i]);
    free(r->problems);
    free(r->devices);
    memset(r, 0, sizeof *r);
}

static bm_status problem(bm_check_result *r, bm_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bm_status problem(bm_check_result *r, bm_error *err, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    /* one printable line each, whatever the map's keys hold (a key with a
     * newline must not print as a line of its own), as bm_fail does */
    for (char *c = buf; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = ' ';
    char **np = realloc(r->problems, (size_t)(r->n_problems + 1) * sizeof *np);
    if (!np)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    r->problems = np;
    if (!(np[r->n_problems] = strdup(buf)))
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    r->n_problems++;
    return BM_OK;
}

/* The longest proper dotted prefix of name[0..len) that is a map key. */
static int32_t key_above(const bm_devmap *map, const char *name)
{
    size_t len = strlen(name);
    char *tmp = strdup(name);
    if (!tmp)
        return BM_NONE;
    int32_t found = BM_NONE;
    while (len > 0) {
        while (len > 0 && tmp[len - 1] != '.')
            len--;
        if (len > 0)
            len--;
        tmp[len] = 0;
        int32_t k = bm_devmap_find(map, tmp);
        if (k != BM_NONE) {
            found = k;
            break;
        }
    }
    free(tmp);
    return found;
}

bm_status bm_devmap_check(const bm_tree *tree, const bm_devmap *map,
                          const bm_budgets *budgets, const bm_size_opts *sizes,
                          bm_check_result *out, bm_error *err)
{
    memset(out, 0, sizeof *out);
    bm_status st = BM_OK;
    char dev[32];
    uint64_t *tbits = malloc((size_t)(tree->n_tensors ? tree->n_tensors : 1) * sizeof *tbits);
    if (!tbits)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    bm_size_opts none = {.dtype = BM_DTYPE_INVALID, .compat = BM_COMPAT_BMPLAN};
    if ((st = bm_tree_sizes(tree, sizes ? sizes : &none, NULL, tbits, err)))
        goto done;

    /* keys: known names, and no key inside another */
    int unknown = 0, nested = 0;
    for (int32_t i = 0; i < map->n && !st; i++) {
        const char *k = map->e[i].name;
        if (*k && bm_tree_find_module(tree, k) == BM_NONE &&
            bm_tree_find_tensor(tree, k) == BM_NONE) {
            if (unknown++ < MAX_LINES)
                st = problem(out, err, "key '%.300s' is not a module, parameter or buffer "
                                       "of the model", k);
            continue;
        }
        int32_t above = *k ? key_above(map, k) : BM_NONE;
        if (above != BM_NONE && nested++ < MAX_LINES)
            st = problem(out, err, "key '%.300s' is inside key '%.300s': its tensors would "
                                   "have two devices",
                         k, map->e[above].name);
    }
    if (!st && unknown > MAX_LINES)
        st = problem(out, err, "... and %d more unknown keys", unknown - MAX_LINES);
    if (!st && nested > MAX_LINES)
        st = problem(out, err, "... and %d more nested keys", nested - MAX_LINES);

    /* coverage: every state-dict tensor (parameters, tied names, persistent
     * buffers) needs a device */
    int missing = 0;
    for (int32_t ti = 0; ti < tree->n_tensors && !st; ti++) {
        const bm_tensor *t = &tree->tensors[ti];
        if (t->is_buffer && !t->persistent)
            continue;
        if (bm_devmap_lookup(map, t->name) != BM_NONE)
            continue;
        if (missing++ < MAX_LINES)
            st = problem(out, err, "%s '%.300s' has no device", t->is_buffer ? "buffer" : "parameter",
                         t->name);
    }
    if (!st && missing > MAX_LINES)
        st = problem(out, err, "... and %d more tensors without a device", missing - MAX_LINES);

    /* tied groups on one device */
    bm_tied tied = {0};
    if (!st)
        st = bm_tied_find(tree, BM_COMPAT_BMPLAN, &tied, err);
    for (int32_t g = 0; g < tied.n && !st; g++) {
        const bm_tied_group *gr = &tied.groups[g];
        int32_t k0 = bm_devmap_lookup(map, tree->tensors[gr->tensors[0]].name);
        bool split = false;
        for (int32_t i = 1; i < gr->n; i++) {
            int32_t k = bm_devmap_lookup(map, tree->tensors[gr->tensors[i]].name);
            if (k0 != BM_NONE && k != BM_NONE && !bm_device_eq(map->e[k].dev, map->e[k0].dev))
                split = true;
        }
        if (!split)
            continue;
        bm_sbuf b = {0};
        bm_sb_str(&b, "tied parameters are on different devices:");
        for (int32_t i = 0; i < gr->n; i++) {
            int32_t k = bm_devmap_lookup(map, tree->tensors[gr->tensors[i]].name);
            bm_sb_printf(&b, " %s -> %s", tree->tensors[gr->tensors[i]].name,
                         k == BM_NONE ? "none" : bm_device_str(map->e[k].dev, dev, sizeof dev));
        }
        st = b.oom ? bm_fail(err, BM_E_NOMEM, "out of memory") : problem(out, err, "%s", b.p);
        free(b.p);
    }
    bm_tied_free(&tied);

    /* per-device totals, against the budgets */
    bm_device *devs = NULL;
    uint64_t *bits = NULL;
    int nd = 0;
    if (!st)
        st = bm_devmap_device_totals(tree, map, tbits, &devs, &bits, &nd, err);
    if (!st) {
        out->devices = calloc((size_t)(nd ? nd : 1), sizeof *out->devices);
        if (!out->devices)
            st = bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    for (int i = 0; i < nd && !st; i++) {
        bm_check_device *d = &out->devices[out->n_devices++];
        d->dev = devs[i];
        d->bits = bits[i];
        if (!budgets || devs[i].kind == BM_DEV_DISK)
            continue;
        int bi = bm_budgets_find(budgets, devs[i]);
        if (bi < 0) {
            st = problem(out, err, "device %s receives tensors but has no budget",
                         bm_device_str(devs[i], dev, sizeof dev));
            continue;
        }
        d->has_budget = true;
        d->budget_bits = budgets->e[bi].bits;
        if (bits[i] > 0 && (d->budget_bits < 0 || bits[i] > (uint64_t)d->budget_bits)) {
            char a[32], b[32];
            st = problem(out, err, "device %s receives %s, over its budget of %s%s",
                         bm_device_str(devs[i], dev, sizeof dev),
                         bm_size_format_bits(bits[i], a, sizeof a),
                         d->budget_bits < 0 ? "-" : "",
                         bm_size_format_bits((uint64_t)(d->budget_bits < 0 ? -d->budget_bits
                                                                           : d->budget_bits),
                                             b, sizeof b));
        }
    }
    free(devs);
    free(bits);
done:
    free(tbits);
    if (st)
        bm_check_result_free(out);
    return st;
}
