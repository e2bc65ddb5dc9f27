/*
 * budgets.c - accelerate's max_memory: parsing budgets from the command
 * line or a JSON file (get_max_memory's conversions and device order), and
 * get_balanced_memory for the balanced strategies.
 */
#include "planner.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void bm_budgets_init(bm_budgets *b)
{
    memset(b, 0, sizeof *b);
}

void bm_budgets_free(bm_budgets *b)
{
    free(b->e);
    memset(b, 0, sizeof *b);
}

int bm_budgets_find(const bm_budgets *b, bm_device dev)
{
    for (int i = 0; i < b->n; i++)
        if (bm_device_eq(b->e[i].dev, dev))
            return i;
    return -1;
}

static int64_t clamp_bits(int64_t bits)
{
    if (bits > BM_BUDGET_MAX_BITS)
        return BM_BUDGET_MAX_BITS;
    if (bits < -BM_BUDGET_MAX_BITS)
        return -BM_BUDGET_MAX_BITS;
    return bits;
}

/* Bytes to bits, clamped (a budget of 2^58 bytes already exceeds any model). */
static int64_t bytes_to_bits(int64_t bytes)
{
    if (bytes > BM_BUDGET_MAX_BITS / 8)
        return BM_BUDGET_MAX_BITS;
    if (bytes < -BM_BUDGET_MAX_BITS / 8)
        return -BM_BUDGET_MAX_BITS;
    return bytes * 8;
}

bm_status bm_budgets_set(bm_budgets *b, bm_device dev, int64_t bits, bm_error *err)
{
    bits = clamp_bits(bits);
    int i = bm_budgets_find(b, dev);
    if (i >= 0) {
        b->e[i].bits = bits;
        b->e[i].py_float = false;
        return BM_OK;
    }
    if (b->n == b->cap) {
        if (b->cap > (1 << 20))
            return bm_fail(err, BM_E_INVALID, "too many devices in the budgets");
        int nc = b->cap ? b->cap * 2 : 8;
        bm_budget *ne = realloc(b->e, (size_t)nc * sizeof *ne);
        if (!ne)
            return bm_fail(err, BM_E_NOMEM, "out of memory");
        b->e = ne;
        b->cap = nc;
    }
    /* keep accelerate's device order: GPU ids ascending, mps, cpu, disk */
    int pos = b->n;
    while (pos > 0 && bm_device_cmp(b->e[pos - 1].dev, dev) > 0) {
        b->e[pos] = b->e[pos - 1];
        pos--;
    }
    b->e[pos].dev = dev;
    b->e[pos].bits = bits;
    b->e[pos].py_float = false;
    b->n++;
    return BM_OK;
}

bm_status bm_budgets_copy(bm_budgets *dst, const bm_budgets *src, bm_error *err)
{
    bm_budgets_init(dst);
    for (int i = 0; i < src->n; i++) {
        bm_status st = bm_budgets_set(dst, src->e[i].dev, src->e[i].bits, err);
        if (st) {
            bm_budgets_free(dst);
            return st;
        }
        dst->e[i].py_float = src->e[i].py_float;
    }
    return BM_OK;
}

/* A plain decimal integer (bytes, used as is like a Python int). */
static bool plain_integer(const char *s, int64_t *out)
{
    const char *p = s;
    if (*p == '-' || *p == '+')
        p++;
    if (!isdigit((unsigned char)*p))
        return false;
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q))
            return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

static bm_status parse_size_value(const char *text, bm_compat compat,
                                  int64_t *bits, const char *key, bm_error *err)
{
    int64_t bytes;
    if (plain_integer(text, &bytes)) {
        *bits = bytes_to_bits(bytes);
        return BM_OK;
    }
    bm_status st = bm_size_parse(text, compat != BM_COMPAT_0_27, &bytes, err);
    if (st) {
        if (compat == BM_COMPAT_0_27) {
            int64_t z;
            if (bm_size_parse(text, true, &z, NULL) == BM_OK && z == 0)
                return bm_fail(err, BM_E_COMPAT,
                               "budget '%.100s' for %s is 0: accelerate 0.27 "
                               "raises ValueError for zero sizes (later versions "
                               "and --compat bmplan accept them)",
                               text, key);
        }
        bm_error_prefix(err, "budget for %s", key);
        return st;
    }
    *bits = bytes_to_bits(bytes);
    return BM_OK;
}

bm_status bm_budgets_parse_json(bm_budgets *b, const char *text, size_t len,
                                const char *source, bm_compat compat,
                                bm_error *err)
{
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    if (!root)
        return bm_fail(err, BM_E_FORMAT, "%s:%d: %s", source, je.line, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return bm_fail(err, BM_E_FORMAT,
                       "%s: budgets must be a JSON object {device: size}", source);
    }
    const char *key;
    json_t *v;
    bm_status st = BM_OK;
    json_object_foreach(root, key, v)
    {
        bm_device dev;
        int64_t bits = 0;
        if ((st = bm_device_parse_key(key, &dev, err))) {
            bm_error_prefix(err, "%s", source);
            break;
        }
        if (json_is_integer(v)) {
            bits = bytes_to_bits((int64_t)json_integer_value(v));
        } else if (json_is_real(v)) {
            /* a float budget (what get_balanced_memory may return): exact
             * when it is a multiple of 1/8 byte, as every size is */
            double d = json_real_value(v) * 8;
            if (!(fabs(d) < 9.0e18) || d != floor(d)) {
                st = bm_fail(err, BM_E_INVALID,
                             "%s: budget for '%.60s' must be a whole number of "
                             "bytes (or eighths of a byte)",
                             source, key);
                break;
            }
            bits = clamp_bits((int64_t)d);
        } else if (json_is_string(v)) {
            if ((st = parse_size_value(json_string_value(v), compat, &bits, key, err))) {
                bm_error_prefix(err, "%s", source);
                break;
            }
        } else {
            st = bm_fail(err, BM_E_INVALID,
                         "%s: budget for '%.60s' must be an integer (bytes) or "
                         "a size string like \"10GiB\"",
                         source, key);
            break;
        }
        if ((st = bm_budgets_set(b, dev, bits, err)))
            break;
        b->e[bm_budgets_find(b, dev)].py_float = json_is_real(v);
    }
    json_decref(root);
    return st;
}

bm_status bm_budgets_parse(bm_budgets *b, const char *spec, bm_compat compat,
                           bm_error *err)
{
    if (!spec)
        return bm_fail(err, BM_E_INVALID, "missing budgets");
    if (spec[0] == '@') {
        char *data;
        size_t len;
        bm_status st = bm_read_file(spec + 1, 1u << 20, &data, &len, err);
        if (st)
            return st;
        st = bm_budgets_parse_json(b, data, len, spec + 1, compat, err);
        free(data);
        return st;
    }
    const char *p = spec;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        char item[256];
        if (n == 0 || n >= sizeof item)
            return bm_fail(err, BM_E_INVALID,
                           "budgets '%.100s': expected DEVICE=SIZE items "
                           "separated by commas, e.g. 0=10GiB,cpu=30GiB",
                           spec);
        memcpy(item, p, n);
        item[n] = 0;
        char *eq = strchr(item, '=');
        if (!eq || eq == item || !eq[1])
            return bm_fail(err, BM_E_INVALID,
                           "budget '%.100s': expected DEVICE=SIZE, e.g. "
                           "0=10GiB or cpu=30GiB",
                           item);
        *eq = 0;
        bm_device dev;
        int64_t bits;
        bm_status st;
        if ((st = bm_device_parse_key(item, &dev, err)) ||
            (st = parse_size_value(eq + 1, compat, &bits, item, err)) ||
            (st = bm_budgets_set(b, dev, bits, err)))
            return st;
        p += n;
        if (*p == ',')
            p++;
        if (comma && !*p)
            return bm_fail(err, BM_E_INVALID,
                           "budgets '%.100s' end with a comma", spec);
    }
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * get_balanced_memory
 * ------------------------------------------------------------------------ */

/*
 * The no-split allowance: walking compute_module_sizes' keys in insertion
 * order (counted parameters then counted buffers, each with its dotted
 * prefixes from the top), the size of the first object of each listed
 * class; their maximum. Tensor keys have class "Parameter" or "Tensor".
 */
static bm_status no_split_allowance(const bm_tree *tree, const uint64_t *mbits,
                                    const uint64_t *tbits, char *const *ns,
                                    int nns, uint64_t *allow, bm_error *err)
{
    *allow = 0;
    if (nns == 0)
        return BM_OK;
    bool *seen = calloc((size_t)tree->n_modules, sizeof *seen);
    bool *found = calloc((size_t)nns, sizeof *found);
    int32_t *chain = malloc(((size_t)tree->n_modules + 1) * sizeof *chain);
    if (!seen || !found || !chain) {
        free(seen);
        free(found);
        free(chain);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    seen[0] = true;
    int nfound = 0;
    for (int pass = 0; pass < 2 && nfound < nns; pass++) {
        for (int32_t ti = 0; ti < tree->n_tensors && nfound < nns; ti++) {
            const bm_tensor *t = &tree->tensors[ti];
            if (t->alias_of != BM_NONE || t->is_buffer != (pass == 1))
                continue;
            int nc = 0;
            for (int32_t m = t->module; m != BM_NONE && !seen[m]; m = tree->modules[m].parent)
                chain[nc++] = m;
            for (int c = nc - 1; c >= 0; c--) {
                int32_t m = chain[c];
                seen[m] = true;
                for (int k = 0; k < nns; k++)
                    if (!found[k] && strcmp(tree->modules[m].cls, ns[k]) == 0) {
                        found[k] = true;
                        nfound++;
                        if (mbits[m] > *allow)
                            *allow = mbits[m];
                    }
            }
            const char *cls = t->is_buffer ? "Tensor" : "Parameter";
            for (int k = 0; k < nns; k++)
                if (!found[k] && strcmp(cls, ns[k]) == 0) {
                    found[k] = true;
                    nfound++;
                    if (tbits[ti] > *allow)
                        *allow = tbits[ti];
                }
        }
    }
    free(seen);
    free(found);
    free(chain);
    return BM_OK;
}

/* Mean size of the "final modules": modules holding counted tensors none
 * of whose child modules holds any (int(sum / count) in Python floats). */
static bm_status final_module_mean(const bm_tree *tree, const uint64_t *mbits,
                                   int64_t *mean_bytes, bm_error *err)
{
    int32_t nm = tree->n_modules;
    uint8_t *has = calloc((size_t)nm, 1);  /* subtree holds a counted tensor */
    uint8_t *child = calloc((size_t)nm, 1); /* some child module does */
    if (!has || !child) {
        free(has);
        free(child);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    for (int32_t ti = 0; ti < tree->n_tensors; ti++)
        if (tree->tensors[ti].alias_of == BM_NONE)
            has[tree->tensors[ti].module] = 1;
    for (int32_t m = nm - 1; m > 0; m--)
        if (has[m]) {
            int32_t p = tree->modules[m].parent;
            has[p] = 1;
            child[p] = 1;
        }
    uint64_t sum = 0, count = 0;
    for (int32_t m = 1; m < nm; m++)
        if (has[m] && !child[m]) {
            sum += mbits[m];
            count++;
        }
    free(has);
    free(child);
    double q = ((double)sum / 8.0) / (double)(count ? count : 1);
    *mean_bytes = (int64_t)q;
    return BM_OK;
}

bm_status bm_balanced_budgets(const bm_tree *tree, const uint64_t *module_bits,
                              const uint64_t *tensor_bits,
                              const bm_budgets *in, char *const *no_split,
                              int n_no_split, bool low_zero, bm_compat compat,
                              bm_budgets *out, bm_error *err)
{
    bool emulate = compat != BM_COMPAT_BMPLAN;
    const char *who = compat == BM_COMPAT_0_27 ? "accelerate 0.27" : "accelerate 1.x";
    bm_status st = bm_budgets_copy(out, in, err);
    if (st)
        return st;
    int n = 0;
    for (int i = 0; i < out->n; i++) {
        bm_device d = out->e[i].dev;
        if (emulate && d.kind == BM_DEV_DISK) {
            bm_budgets_free(out);
            return bm_fail(err, BM_E_COMPAT,
                           "%s's get_balanced_memory raises RuntimeError on a "
                           "\"disk\" budget (torch.device(\"disk\") is not a "
                           "device); drop the disk budget, or use --compat bmplan",
                           who);
        }
        if (emulate && d.kind == BM_DEV_GPU && d.id < 0) {
            bm_budgets_free(out);
            return bm_fail(err, BM_E_COMPAT,
                           "%s's get_balanced_memory raises RuntimeError on GPU "
                           "id %lld (a device index must not be negative); use "
                           "--compat bmplan",
                           who, (long long)d.id);
        }
        if (d.kind == BM_DEV_GPU && out->e[i].bits > 0)
            n++;
    }
    if (n == 0)
        return BM_OK;
    if (n == 1)
        low_zero = false;

    uint64_t total = module_bits[0];
    /* Python holds S[""] as a float when a tensor weighs a fractional number
     * of bytes per element; only the log's number formatting depends on it */
    bool total_f = false;
    for (int32_t i = 0; i < tree->n_tensors && !total_f; i++) {
        const bm_tensor *t = &tree->tensors[i];
        total_f = t->alias_of == BM_NONE && t->numel > 0 && (tensor_bits[i] / t->numel) % 8;
    }
    uint64_t div = (uint64_t)(low_zero ? n - 1 : n) * 8;
    int64_t per_gpu = (int64_t)(total / div) * 8; /* S[""] // n, in bits */
    uint64_t allow = 0;
    int64_t mean = 0;
    if ((st = no_split_allowance(tree, module_bits, tensor_bits, no_split,
                                 n_no_split, &allow, err)) ||
        (st = final_module_mean(tree, module_bits, &mean, err))) {
        bm_budgets_free(out);
        return st;
    }
    /* int(1.25 * max(allowance, mean)), in Python floats */
    double x = (double)allow / 8.0;
    if ((double)mean > x)
        x = (double)mean;
    int64_t buffer = (int64_t)(1.25 * x);
    if (buffer > BM_BUDGET_MAX_BITS / 8)
        buffer = BM_BUDGET_MAX_BITS / 8;
    per_gpu += buffer * 8;

    /* every GPU with a positive budget but the last: min(per_gpu, budget);
     * with low_zero, GPU 0 keeps its budget here */
    int last = -1;
    for (int i = 0; i < out->n; i++)
        if (out->e[i].dev.kind == BM_DEV_GPU && out->e[i].bits > 0)
            last = i;
    for (int i = 0; i < last; i++) {
        bm_budget *e = &out->e[i];
        if (e->dev.kind != BM_DEV_GPU || e->bits <= 0)
            continue;
        if (low_zero && e->dev.id == 0)
            continue;
        if (per_gpu <= e->bits) {
            e->bits = per_gpu;
            e->py_float = total_f;
        }
    }
    if (low_zero) {
        /* min(max(0, S[""] - sum(budget[i] for i in 1..n-1)), budget[0]):
         * accelerate indexes GPUs 1..n-1 and 0 by number (KeyError when
         * absent); bmplan uses the GPUs it counted */
        int64_t sum = 0;
        int zero = -1;
        if (emulate) {
            for (int64_t id = 1; id < n; id++) {
                int k = bm_budgets_find(out, (bm_device){BM_DEV_GPU, id});
                if (k < 0) {
                    bm_budgets_free(out);
                    return bm_fail(err, BM_E_COMPAT,
                                   "%s's get_balanced_memory(low_zero=True) raises "
                                   "KeyError: %lld (it expects GPU ids 0..%d); use "
                                   "--compat bmplan",
                                   who, (long long)id, n - 1);
                }
                sum += out->e[k].bits;
            }
            zero = bm_budgets_find(out, (bm_device){BM_DEV_GPU, 0});
            if (zero < 0) {
                bm_budgets_free(out);
                return bm_fail(err, BM_E_COMPAT,
                               "%s's get_balanced_memory(low_zero=True) raises "
                               "KeyError: 0 (there is no GPU 0); use --compat bmplan",
                               who);
            }
        } else {
            bool first = true;
            for (int i = 0; i < out->n; i++) {
                if (out->e[i].dev.kind != BM_DEV_GPU || out->e[i].bits <= 0)
                    continue;
                if (first) {
                    zero = i;
                    first = false;
                } else {
                    sum += out->e[i].bits;
                }
            }
        }
        int64_t min_zero = (int64_t)total - sum;
        bool min_zero_f = total_f;
        if (min_zero <= 0) {
            min_zero = 0;
            min_zero_f = false;
        }
        if (min_zero <= out->e[zero].bits) {
            out->e[zero].bits = min_zero;
            out->e[zero].py_float = min_zero_f;
        }
    }
    return BM_OK;
}
