/*
 * runtime.c - the model instance that runs: weight sources, tensor slots on
 * devices (set_module_tensor_to_device), activations, module calls through
 * hooks, KV caches, and the prefetcher that fetches the next offloaded
 * weights on a background thread while the current module computes.
 */
#include "runtime.h"
#include "hooks.h"
#include "numeric.h"

#include <errno.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Weight sources
 * ------------------------------------------------------------------------ */

struct bm_wsource {
    const bm_wsource_ops *ops;
    void *ctx;
    bm_wsource_kind kind;
    char *describe;
    int refs;
    pthread_mutex_t lock;
};

bm_wsource *bm_wsource_new(const bm_wsource_ops *ops, void *ctx, bm_wsource_kind kind,
                           const char *describe)
{
    bm_wsource *s = calloc(1, sizeof *s);
    if (!s) {
        if (ops && ops->close)
            ops->close(ctx);
        return NULL;
    }
    s->ops = ops;
    s->ctx = ctx;
    s->kind = kind;
    s->describe = strdup(describe ? describe : "weights");
    s->refs = 1;
    pthread_mutex_init(&s->lock, NULL);
    return s;
}

bm_wsource *bm_wsource_ref(bm_wsource *src)
{
    if (src) {
        pthread_mutex_lock(&src->lock);
        src->refs++;
        pthread_mutex_unlock(&src->lock);
    }
    return src;
}

void bm_wsource_unref(bm_wsource *src)
{
    if (!src)
        return;
    pthread_mutex_lock(&src->lock);
    int left = --src->refs;
    pthread_mutex_unlock(&src->lock);
    if (left > 0)
        return;
    if (src->ops->close)
        src->ops->close(src->ctx);
    pthread_mutex_destroy(&src->lock);
    free(src->describe);
    free(src);
}

bm_wsource_kind bm_wsource_get_kind(const bm_wsource *src) { return src->kind; }
const char *bm_wsource_describe(const bm_wsource *src) { return src->describe; }

bm_status bm_wsource_find(bm_wsource *src, const char *name, bm_wsource_tensor *t,
                          bm_error *err)
{
    memset(t, 0, sizeof *t);
    return src->ops->find(src->ctx, name, t, err);
}

bm_status bm_wsource_read(bm_wsource *src, const char *name, void *dst, uint64_t nbytes,
                          bm_error *err)
{
    return src->ops->read(src->ctx, name, dst, nbytes, err);
}

/* ---- host memory ---- */

typedef struct mem_src {
    bm_wsource_entry *e;
    int n;
} mem_src;

static const bm_wsource_entry *mem_lookup(mem_src *m, const char *name)
{
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->e[i].name, name) == 0)
            return &m->e[i];
    return NULL;
}

static uint64_t entry_bytes(const bm_wsource_entry *e)
{
    uint64_t n = 1;
    for (int d = 0; d < e->ndim; d++)
        n *= (uint64_t)e->shape[d];
    return n * bm_dtype_storage_bits(e->dtype) / 8;
}

static bm_status mem_find(void *ctx, const char *name, bm_wsource_tensor *t, bm_error *err)
{
    const bm_wsource_entry *e = mem_lookup(ctx, name);
    if (!e)
        return bm_fail(err, BM_E_NOTFOUND, "no tensor '%s' in memory", name);
    t->dtype = e->dtype;
    t->ndim = e->ndim;
    memcpy(t->shape, e->shape, sizeof t->shape);
    t->nbytes = entry_bytes(e);
    t->data = e->data;
    return BM_OK;
}

static bm_status mem_read(void *ctx, const char *name, void *dst, uint64_t nbytes, bm_error *err)
{
    const bm_wsource_entry *e = mem_lookup(ctx, name);
    if (!e)
        return bm_fail(err, BM_E_NOTFOUND, "no tensor '%s' in memory", name);
    if (nbytes != entry_bytes(e))
        return bm_fail(err, BM_E_INTERNAL, "tensor '%s': size mismatch", name);
    memcpy(dst, e->data, (size_t)nbytes);
    return BM_OK;
}

static void mem_close(void *ctx)
{
    mem_src *m = ctx;
    for (int i = 0; i < m->n; i++)
        free((char *)m->e[i].name);
    free(m->e);
    free(m);
}

static const bm_wsource_ops mem_ops = {mem_find, mem_read, mem_close};

bm_wsource *bm_wsource_memory(const bm_wsource_entry *entries, int n, bm_error *err)
{
    mem_src *m = calloc(1, sizeof *m);
    if (!m || (n > 0 && !(m->e = calloc((size_t)n, sizeof *m->e)))) {
        free(m);
        bm_fail(err, BM_E_NOMEM, "out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (entries[i].ndim < 0 || entries[i].ndim > BM_MAX_DIMS) {
            m->n = i;
            mem_close(m);
            bm_fail(err, BM_E_INVALID, "tensor '%s': %d dimensions", entries[i].name,
                    entries[i].ndim);
            return NULL;
        }
        m->e[i] = entries[i];
        m->e[i].name = strdup(entries[i].name);
        m->n = i + 1;
        if (!m->e[i].name) {
            mem_close(m);
            bm_fail(err, BM_E_NOMEM, "out of memory");
            return NULL;
        }
    }
    bm_wsource *s = bm_wsource_new(&mem_ops, m, BM_WSOURCE_MEMORY, "host memory");
    if (!s)
        bm_fail(err, BM_E_NOMEM, "out of memory");
    return s;
}

/* ---- chain ---- */

typedef struct chain_src {
    bm_wsource *a, *b;
} chain_src;

static bm_wsource *chain_pick(chain_src *c, const char *name)
{
    bm_wsource_tensor t;
    if (c->a && bm_wsource_find(c->a, name, &t, NULL) == BM_OK)
        return c->a;
    return c->b;
}

static bm_status chain_find(void *ctx, const char *name, bm_wsource_tensor *t, bm_error *err)
{
    bm_wsource *s = chain_pick(ctx, name);
    if (!s)
        return bm_fail(err, BM_E_NOTFOUND, "no tensor '%s'", name);
    return bm_wsource_find(s, name, t, err);
}

static bm_status chain_read(void *ctx, const char *name, void *dst, uint64_t n, bm_error *err)
{
    bm_wsource *s = chain_pick(ctx, name);
    if (!s)
        return bm_fail(err, BM_E_NOTFOUND, "no tensor '%s'", name);
    return bm_wsource_read(s, name, dst, n, err);
}

static void chain_close(void *ctx)
{
    chain_src *c = ctx;
    bm_wsource_unref(c->a);
    bm_wsource_unref(c->b);
    free(c);
}

static const bm_wsource_ops chain_ops = {chain_find, chain_read, chain_close};

bm_wsource *bm_wsource_chain(bm_wsource *first, bm_wsource *second)
{
    chain_src *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->a = bm_wsource_ref(first);
    c->b = bm_wsource_ref(second);
    bool disk = (first && first->kind == BM_WSOURCE_DISK) ||
                (second && second->kind == BM_WSOURCE_DISK);
    return bm_wsource_new(&chain_ops, c, disk ? BM_WSOURCE_DISK : BM_WSOURCE_MEMORY,
                          second ? second->describe : first ? first->describe : "weights");
}

/* ------------------------------------------------------------------------
 * The runtime
 * ------------------------------------------------------------------------ */

typedef struct block {
    bm_dev *dev;
    void *data;
    uint64_t size;
    int refs;
    bm_backend *pinned; /* data is the compute backend's host memory */
    struct block *prev, *next; /* all live blocks, for cleanup */
} block;

typedef struct slot {
    block *b;
    bm_dtype dtype; /* storage dtype on the device */
} slot;

typedef struct value_node {
    bm_value v;
    struct value_node *prev, *next;
} value_node;

typedef struct kv_cache {
    bm_dev *dev;
    float *k, *v;
    int64_t cap, width;
    uint64_t bytes;
} kv_cache;

typedef struct staged {
    int32_t tensor;
    bm_dev *dev;
    block *b;
    bm_dtype dtype;
    int state; /* 0 loading, 1 ready, 2 failed */
    /* a plain copy from mapped bytes is made in pieces: when the compute
     * thread needs the tensor before it is complete, it sets `hurry`, the
     * prefetcher stops after the current piece and the compute thread
     * copies the rest from `src` (with all cores) */
    atomic_bool hurry;
    const void *src;
    uint64_t done;
    struct staged *next;
} staged;

typedef struct prefetcher {
    pthread_t thread;
    bool running;
    pthread_mutex_t mu;
    pthread_cond_t wake, changed;
    bool stop, paused;
    /* written by the compute thread without the lock (it must never wait
     * for the prefetcher to note progress) */
    atomic_int cursor;        /* position in exec order of the running module */
    atomic_ullong generation; /* bumps on every change worth re-planning for */
    atomic_bool sleeping;     /* the prefetcher waits for a generation change */
    staged *list;
    uint64_t bytes;
    /* per device (index id + 1): bytes staged there, and the most the
     * compute thread has needed there besides staging (learned when an
     * allocation had to evict staged weights); staging keeps out of it */
    uint64_t staged_on[65];
    uint64_t main_demand[65];
} prefetcher;

struct bm_rt {
    const bm_tree *tree;
    bm_rt_opts opts;
    bm_dtype dtype;
    bm_dev *devs[65]; /* [0] = host, [1 + id] = GPU id */
    slot *slots;
    pthread_mutex_t slot_mu; /* slots and blocks (the prefetcher reads them) */
    block *blocks;
    value_node *values;
    bm_hook **hooks;
    bm_forward_fn *fwd;
    int32_t *exec_order, n_exec;
    int32_t *exec_pos; /* module -> position in exec order, or -1 */
    kv_cache *kv;
    int64_t max_tokens, pos;
    bool all_logits;
    int main_device;
    void *arch;
    void (*arch_free)(void *);
    bm_rt_stats stats;
    pthread_mutex_t stats_mu;
    prefetcher pf;
};

static uint64_t elem_bytes(bm_dtype dt) { return bm_dtype_storage_bits(dt) / 8; }

static bool is_float(bm_dtype dt)
{
    return dt == BM_F32 || dt == BM_BF16 || dt == BM_F16 || dt == BM_F64;
}

static void prefetch_stop(bm_rt *rt);

bm_status bm_rt_new(const bm_tree *tree, const bm_rt_opts *opts, bm_rt **out, bm_error *err)
{
    *out = NULL;
    if (!opts || !opts->backend)
        return bm_fail(err, BM_E_INVALID, "runtime: no backend");
    if (opts->dtype != BM_DTYPE_INVALID && opts->dtype != BM_F32 && opts->dtype != BM_BF16 &&
        opts->dtype != BM_F16)
        return bm_fail(err, BM_E_UNSUPPORTED, "runtime: cannot compute in %s (float32, "
                       "bfloat16 or float16)", bm_dtype_name(opts->dtype));
    bm_rt *rt = calloc(1, sizeof *rt);
    if (!rt)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    rt->tree = tree;
    rt->opts = *opts;
    if (!rt->opts.host)
        rt->opts.host = opts->backend;
    if (strcmp(bm_backend_name(rt->opts.host), "cpu") != 0) {
        free(rt);
        return bm_fail(err, BM_E_INVALID, "runtime: the host backend must be the CPU backend");
    }
    if (!rt->opts.staging_bytes)
        rt->opts.staging_bytes = 1ull << 30;
    if (rt->opts.lookahead <= 0)
        rt->opts.lookahead = 4;
    rt->dtype = opts->dtype;
    rt->main_device = BM_DEVICE_CPU;
    size_t nt = (size_t)(tree->n_tensors > 0 ? tree->n_tensors : 1);
    size_t nm = (size_t)(tree->n_modules > 0 ? tree->n_modules : 1);
    rt->slots = calloc(nt, sizeof *rt->slots);
    rt->hooks = calloc(nm, sizeof *rt->hooks);
    rt->fwd = calloc(nm, sizeof *rt->fwd);
    rt->kv = calloc(nm, sizeof *rt->kv);
    rt->exec_pos = malloc(nm * sizeof *rt->exec_pos);
    pthread_mutex_init(&rt->slot_mu, NULL);
    pthread_mutex_init(&rt->stats_mu, NULL);
    pthread_mutex_init(&rt->pf.mu, NULL);
    pthread_cond_init(&rt->pf.wake, NULL);
    pthread_cond_init(&rt->pf.changed, NULL);
    atomic_init(&rt->pf.cursor, -1);
    atomic_init(&rt->pf.generation, 0);
    atomic_init(&rt->pf.sleeping, false);
    if (!rt->slots || !rt->hooks || !rt->fwd || !rt->kv || !rt->exec_pos) {
        bm_rt_free(rt);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < nm; i++)
        rt->exec_pos[i] = -1;
    for (int32_t i = 0; i < tree->n_tensors; i++) {
        bm_dtype dt = tree->tensors[i].dtype;
        rt->slots[i].dtype = (is_float(dt) && rt->dtype != BM_DTYPE_INVALID) ? rt->dtype : dt;
    }
    bm_status s = bm_rt_device(rt, BM_DEVICE_CPU, &rt->devs[0], err);
    if (s != BM_OK) {
        bm_rt_free(rt);
        return s;
    }
    *out = rt;
    return BM_OK;
}

static void block_release(bm_rt *rt, block *b);

static void block_mem_free(block *b)
{
    if (b->pinned)
        bm_dev_free_pinned(b->dev, b->pinned, b->data, b->size);
    else
        bm_dev_free(b->dev, b->data, b->size);
}

void bm_rt_free(bm_rt *rt)
{
    if (!rt)
        return;
    prefetch_stop(rt);
    if (rt->hooks)
        for (int32_t m = 0; m < rt->tree->n_modules; m++)
            if (rt->hooks[m]) {
                bm_hook_destroy(rt->hooks[m]);
                rt->hooks[m] = NULL;
            }
    while (rt->values) {
        value_node *n = rt->values;
        rt->values = n->next;
        bm_dev_free(n->v.dev, n->v.data, n->v.nbytes);
        free(n);
    }
    if (rt->kv)
        for (int32_t m = 0; m < rt->tree->n_modules; m++)
            if (rt->kv[m].dev) {
                bm_dev_free(rt->kv[m].dev, rt->kv[m].k, rt->kv[m].bytes);
                bm_dev_free(rt->kv[m].dev, rt->kv[m].v, rt->kv[m].bytes);
            }
    while (rt->blocks) {
        block *b = rt->blocks;
        rt->blocks = b->next;
        block_mem_free(b);
        free(b);
    }
    if (rt->arch_free)
        rt->arch_free(rt->arch);
    pthread_mutex_destroy(&rt->slot_mu);
    pthread_mutex_destroy(&rt->stats_mu);
    pthread_mutex_destroy(&rt->pf.mu);
    pthread_cond_destroy(&rt->pf.wake);
    pthread_cond_destroy(&rt->pf.changed);
    free(rt->slots);
    free(rt->hooks);
    free(rt->fwd);
    free(rt->kv);
    free(rt->exec_order);
    free(rt->exec_pos);
    free(rt);
}

const bm_tree *bm_rt_tree(const bm_rt *rt) { return rt->tree; }
bm_dtype bm_rt_dtype(const bm_rt *rt) { return rt->dtype; }
void *bm_rt_arch_data(const bm_rt *rt) { return rt->arch; }

void bm_rt_set_arch_data(bm_rt *rt, void *data, void (*free_fn)(void *))
{
    if (rt->arch_free)
        rt->arch_free(rt->arch);
    rt->arch = data;
    rt->arch_free = free_fn;
}

bool bm_rt_all_logits(const bm_rt *rt) { return rt->all_logits; }
bm_rt_stats *bm_rt_stats_ptr(bm_rt *rt) { return &rt->stats; }

void bm_rt_stats_add(bm_rt *rt, uint64_t *field, uint64_t n)
{
    pthread_mutex_lock(&rt->stats_mu);
    *field += n;
    pthread_mutex_unlock(&rt->stats_mu);
}

void bm_rt_get_stats(const bm_rt *rt, bm_rt_stats *st)
{
    pthread_mutex_lock((pthread_mutex_t *)&rt->stats_mu);
    *st = rt->stats;
    pthread_mutex_unlock((pthread_mutex_t *)&rt->stats_mu);
}

bm_status bm_rt_device(bm_rt *rt, int id, bm_dev **out, bm_error *err)
{
    if (id < BM_DEVICE_CPU || id >= 64)
        return bm_fail(err, BM_E_INVALID, "device %d is not a device a module can run on", id);
    bm_dev **slot = &rt->devs[id + 1];
    if (!*slot) {
        bm_backend *be = id == BM_DEVICE_CPU ? rt->opts.host : rt->opts.backend;
        bm_status s = bm_dev_open(be, id, UINT64_MAX, slot, err);
        if (s != BM_OK)
            return s;
    }
    *out = *slot;
    return BM_OK;
}

bm_status bm_rt_set_capacity(bm_rt *rt, int id, uint64_t capacity, bm_error *err)
{
    bm_dev *d;
    bm_status s = bm_rt_device(rt, id, &d, err);
    if (s != BM_OK)
        return s;
    bm_backend *be = bm_dev_backend(d);
    return bm_dev_open(be, id, capacity, &d, err);
}

void bm_rt_set_main_device(bm_rt *rt, int id) { rt->main_device = id; }
int bm_rt_main_device(const bm_rt *rt) { return rt->main_device; }
int64_t bm_rt_position(const bm_rt *rt) { return rt->pos; }

/* ---- prefetch staging: memory pressure ---- */

static void prefetch_evict(bm_rt *rt, bm_dev *dev, uint64_t need);

/* Allocate on the compute thread: when the device is full because of
 * prefetched weights, drop them and retry, so prefetch can never make a run
 * fail that would succeed without it. */
static bm_status rt_alloc(bm_rt *rt, bm_dev *dev, uint64_t size, const char *what,
                          void **ptr, bm_error *err)
{
    if (bm_dev_try_alloc(dev, size, ptr))
        return BM_OK;
    if (rt->pf.running)
        prefetch_evict(rt, dev, size);
    return bm_dev_alloc(dev, size, what, ptr, err);
}

static bm_status block_new(bm_rt *rt, bm_dev *dev, uint64_t size, const char *what,
                           block **out, bm_error *err)
{
    block *b = calloc(1, sizeof *b);
    if (!b)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    bm_status s = BM_E_UNSUPPORTED;
    /* tensors kept in host memory while another backend computes are
     * uploaded from there (cpu offload): in that backend's host memory,
     * which it transfers from without a staging copy. When it has none
     * left (pinned memory is scarce), plain memory does. */
    bm_backend *pin = rt->opts.backend;
    if (dev == rt->devs[0] && pin != rt->opts.host && bm_backend_has_host_alloc(pin)) {
        s = bm_dev_alloc_pinned(dev, pin, size, what, &b->data, err);
        if (s == BM_OK)
            b->pinned = pin;
        else if (s == BM_E_NOFIT) {
            free(b);
            return s;
        }
    }
    if (s != BM_OK)
        s = rt_alloc(rt, dev, size, what, &b->data, err);
    if (s != BM_OK) {
        free(b);
        return s;
    }
    b->dev = dev;
    b->size = size;
    b->refs = 1;
    pthread_mutex_lock(&rt->slot_mu);
    b->next = rt->blocks;
    if (rt->blocks)
        rt->blocks->prev = b;
    rt->blocks = b;
    pthread_mutex_unlock(&rt->slot_mu);
    *out = b;
    return BM_OK;
}

/* Drop one reference; caller holds slot_mu when `locked`. */
static void block_unref_locked(bm_rt *rt, block *b)
{
    if (!b || --b->refs > 0)
        return;
    if (b->prev)
        b->prev->next = b->next;
    else
        rt->blocks = b->next;
    if (b->next)
        b->next->prev = b->prev;
    block_mem_free(b);
    free(b);
}

static void block_release(bm_rt *rt, block *b)
{
    pthread_mutex_lock(&rt->slot_mu);
    block_unref_locked(rt, b);
    pthread_mutex_unlock(&rt->slot_mu);
}

/* ---- slots ---- */

bm_dev *bm_rt_tensor_device(const bm_rt *rt, int32_t ti)
{
    if (ti < 0 || ti >= rt->tree->n_tensors)
        return NULL;
    block *b = rt->slots[ti].b;
    return b ? b->dev : NULL;
}

static void slot_set(bm_rt *rt, int32_t ti, block *b)
{
    pthread_mutex_lock(&rt->slot_mu);
    block *old = rt->slots[ti].b;
    rt->slots[ti].b = b;
    block_unref_locked(rt, old);
    pthread_mutex_unlock(&rt->slot_mu);
}

void bm_rt_tensor_to_meta(bm_rt *rt, int32_t ti)
{
    if (ti >= 0 && ti < rt->tree->n_tensors)
        slot_set(rt, ti, NULL);
}

/* A tied partner of ti materialized on dev (its block gets a reference). */
static block *tied_on(bm_rt *rt, int32_t ti, bm_dev *dev)
{
    const bm_tensor *t = &rt->tree->tensors[ti];
    if (t->tie_group == BM_NONE)
        return NULL;
    const bm_tie *g = &rt->tree->ties[t->tie_group];
    block *found = NULL;
    pthread_mutex_lock(&rt->slot_mu);
    for (int32_t i = 0; i < g->n && !found; i++) {
        block *b = rt->slots[g->tensors[i]].b;
        if (g->tensors[i] != ti && b && b->dev == dev) {
            b->refs++;
            found = b;
        }
    }
    pthread_mutex_unlock(&rt->slot_mu);
    return found;
}

static bool same_shape(const bm_tensor *t, const bm_wsource_tensor *w)
{
    if (t->ndim != w->ndim)
        return false;
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] != w->shape[d])
            return false;
    return true;
}

static void shape_str(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int d = 0; d < ndim && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

/* Find tensor ti in src: by its own name, else (a tied alias the source
 * does not hold) by a partner's name. */
static bm_status source_find(bm_rt *rt, bm_wsource *src, int32_t ti, const char **name,
                             bm_wsource_tensor *wt, bm_error *err)
{
    const bm_tensor *t = &rt->tree->tensors[ti];
    *name = t->name;
    bm_status s = bm_wsource_find(src, t->name, wt, NULL);
    if (s == BM_OK)
        return BM_OK;
    if (t->tie_group != BM_NONE) {
        const bm_tie *g = &rt->tree->ties[t->tie_group];
        for (int32_t i = 0; i < g->n; i++) {
            const char *other = rt->tree->tensors[g->tensors[i]].name;
            if (g->tensors[i] != ti && bm_wsource_find(src, other, wt, NULL) == BM_OK) {
                *name = other;
                return BM_OK;
            }
        }
    }
    return bm_fail(err, BM_E_NOTFOUND, "%s: tensor '%s' is missing",
                   bm_wsource_describe(src), t->name);
}

static bm_status check_source_tensor(bm_rt *rt, bm_wsource *src, int32_t ti,
                                     const bm_wsource_tensor *wt, bm_error *err)
{
    const bm_tensor *t = &rt->tree->tensors[ti];
    if (!same_shape(t, wt)) {
        char a[128], b[128];
        shape_str(wt->ndim, wt->shape, a, sizeof a);
        shape_str(t->ndim, t->shape, b, sizeof b);
        return bm_fail(err, BM_E_INVALID, "%s: tensor '%s' has shape %s, the model expects %s",
                       bm_wsource_describe(src), t->name, a, b);
    }
    if (is_float(wt->dtype) != is_float(t->dtype) && wt->dtype != t->dtype)
        return bm_fail(err, BM_E_INVALID, "%s: tensor '%s' is %s, the model expects %s",
                       bm_wsource_describe(src), t->name, bm_dtype_name(wt->dtype),
                       bm_dtype_name(t->dtype));
    if (wt->nbytes != t->numel * elem_bytes(wt->dtype))
        return bm_fail(err, BM_E_FORMAT, "%s: tensor '%s' holds %llu bytes for %llu elements",
                       bm_wsource_describe(src), t->name, (unsigned long long)wt->nbytes,
                       (unsigned long long)t->numel);
    return BM_OK;
}

/* Where tensor `name` of src really comes from (a chain: the member that
 * holds it), for counting disk reads apart from host copies. */
static bm_wsource_kind source_kind(bm_wsource *src, const char *name)
{
    if (src->ops == &chain_ops) {
        bm_wsource *s = chain_pick(src->ctx, name);
        return s ? source_kind(s, name) : src->kind;
    }
    return src->kind;
}

/* Convert n elements between float32, bfloat16 and float16; float64
 * sources go through float32. */
static bm_status convert_elems(void *dst, bm_dtype ddt, const void *src, bm_dtype sdt,
                               uint64_t n, bm_error *err)
{
    if (sdt != BM_F64) /* PyTorch's rounding and NaN rules (lib/convert.h) */
        return bm_convert(ddt, dst, sdt, src, (size_t)n, NULL, err);
    bool ok_s = sdt == BM_F64;
    bool ok_d = ddt == BM_F32 || ddt == BM_BF16 || ddt == BM_F16;
    if (!ok_s || !ok_d)
        return bm_fail(err, BM_E_UNSUPPORTED, "cannot convert %s to %s", bm_dtype_name(sdt),
                       bm_dtype_name(ddt));
    for (uint64_t i = 0; i < n; i++) {
        float v;
        switch (sdt) {
        case BM_F32: v = ((const float *)src)[i]; break;
        case BM_BF16: v = num_bf16_to_f32(((const uint16_t *)src)[i]); break;
        case BM_F16: v = num_f16_to_f32(((const uint16_t *)src)[i]); break;
        default: v = (float)((const double *)src)[i]; break;
        }
        switch (ddt) {
        case BM_F32: ((float *)dst)[i] = v; break;
        case BM_BF16: ((uint16_t *)dst)[i] = num_f32_to_bf16(v); break;
        default: ((uint16_t *)dst)[i] = num_f32_to_f16(v); break;
        }
    }
    return BM_OK;
}

/* Fill `dst` (device memory of dev, `dt` elements) from the source tensor. */
static bm_status fill_from_source(bm_rt *rt, bm_dev *dev, void *dst, bm_dtype dt,
                                  bm_wsource *src, const char *name,
                                  const bm_wsource_tensor *wt, uint64_t numel, bm_error *err)
{
    bool direct = bm_backend_get_ops(bm_dev_backend(dev))->host_addressable;
    uint64_t out_bytes = numel * elem_bytes(dt);
    bm_status s = BM_OK;
    if (source_kind(src, name) == BM_WSOURCE_DISK)
        bm_rt_stats_add(rt, &rt->stats.bytes_disk_read, wt->nbytes);
    else if (bm_dev_id(dev) != BM_DEVICE_CPU)
        bm_rt_stats_add(rt, &rt->stats.bytes_host_to_device, wt->nbytes);
    if (wt->dtype == dt) {
        if (wt->data) {
            /* the backend's upload: the CPU backend copies large tensors
             * with its thread pool when that is idle */
            return bm_dev_upload(dev, dst, wt->data, out_bytes, err);
        }
        if (direct) {
            s = bm_wsource_read(src, name, dst, out_bytes, err);
            if (s == BM_OK)
                bm_dev_note_upload(dev, out_bytes);
            return s;
        }
        void *tmp = malloc((size_t)out_bytes ? (size_t)out_bytes : 1);
        if (!tmp)
            return bm_fail(err, BM_E_NOMEM, "out of memory reading '%s'", name);
        s = bm_wsource_read(src, name, tmp, out_bytes, err);
        if (s == BM_OK)
            s = bm_dev_upload(dev, dst, tmp, out_bytes, err);
        free(tmp);
        return s;
    }
    /* dtype conversion (checkpoint dtype -> compute dtype) on the host */
    const void *in = wt->data;
    void *in_tmp = NULL;
    if (!in) {
        in_tmp = malloc((size_t)wt->nbytes ? (size_t)wt->nbytes : 1);
        if (!in_tmp)
            return bm_fail(err, BM_E_NOMEM, "out of memory reading '%s'", name);
        s = bm_wsource_read(src, name, in_tmp, wt->nbytes, err);
        in = in_tmp;
    }
    if (s == BM_OK) {
        if (direct) {
            s = convert_elems(dst, dt, in, wt->dtype, numel, err);
            if (s == BM_OK)
                bm_dev_note_upload(dev, out_bytes);
        } else {
            void *conv = malloc((size_t)out_bytes ? (size_t)out_bytes : 1);
            if (!conv)
                s = bm_fail(err, BM_E_NOMEM, "out of memory converting '%s'", name);
            else
                s = convert_elems(conv, dt, in, wt->dtype, numel, err);
            if (s == BM_OK)
                s = bm_dev_upload(dev, dst, conv, out_bytes, err);
            free(conv);
        }
        if (s != BM_OK)
            bm_error_prefix(err, "tensor '%s'", name);
    }
    free(in_tmp);
    return s;
}

/* Storage dtype of tensor ti when read from a source holding `src_dt`. */
static bm_dtype target_dtype(bm_rt *rt, int32_t ti, bm_dtype src_dt)
{
    (void)ti;
    if (is_float(src_dt))
        return rt->dtype != BM_DTYPE_INVALID ? rt->dtype : (src_dt == BM_F64 ? BM_F32 : src_dt);
    return src_dt;
}

/* A new block on dev holding tensor ti read from src. */
static bm_status load_block(bm_rt *rt, int32_t ti, bm_dev *dev, bm_wsource *src,
                            const char *name, const bm_wsource_tensor *wt, block **out,
                            bm_dtype *dt_out, bm_error *err)
{
    const bm_tensor *t = &rt->tree->tensors[ti];
    bm_dtype dt = target_dtype(rt, ti, wt->dtype);
    uint64_t size = t->numel * elem_bytes(dt);
    block *b;
    bm_status s = block_new(rt, dev, size, t->name, &b, err);
    if (s != BM_OK)
        return s;
    s = fill_from_source(rt, dev, b->data, dt, src, name, wt, t->numel, err);
    if (s != BM_OK) {
        block_release(rt, b);
        return s;
    }
    *out = b;
    *dt_out = dt;
    return BM_OK;
}

bm_status bm_rt_tensor_to(bm_rt *rt, int32_t ti, bm_dev *dev, bm_wsource *src,
                          bool share_ties, bm_error *err)
{
    if (ti < 0 || ti >= rt->tree->n_tensors)
        return bm_fail(err, BM_E_INVALID, "tensor index %d out of range", ti);
    const bm_tensor *t = &rt->tree->tensors[ti];
    slot *sl = &rt->slots[ti];
    if (share_ties) {
        block *b = tied_on(rt, ti, dev);
        if (b) {
            pthread_mutex_lock(&rt->slot_mu);
            int32_t g = t->tie_group;
            /* the partner's dtype is the slot dtype */
            for (int32_t i = 0; i < rt->tree->ties[g].n; i++)
                if (rt->slots[rt->tree->ties[g].tensors[i]].b == b)
                    sl->dtype = rt->slots[rt->tree->ties[g].tensors[i]].dtype;
            pthread_mutex_unlock(&rt->slot_mu);
            slot_set(rt, ti, b);
            return BM_OK;
        }
    }
    if (src) {
        const char *name;
        bm_wsource_tensor wt;
        bm_status s = source_find(rt, src, ti, &name, &wt, err);
        if (s == BM_OK)
            s = check_source_tensor(rt, src, ti, &wt, err);
        block *b;
        bm_dtype dt;
        if (s == BM_OK)
            s = load_block(rt, ti, dev, src, name, &wt, &b, &dt, err);
        if (s != BM_OK)
            return s;
        sl->dtype = dt;
        slot_set(rt, ti, b);
        return BM_OK;
    }
    block *cur = sl->b;
    if (!cur)
        return bm_fail(err, BM_E_INVALID, "%s is on the meta device, we need a value to put "
                       "in on %s", t->name, bm_dev_name(dev));
    if (cur->dev == dev)
        return BM_OK;
    block *b;
    bm_status s = block_new(rt, dev, cur->size, t->name, &b, err);
    if (s != BM_OK)
        return s;
    s = bm_dev_copy(dev, b->data, cur->dev, cur->data, cur->size, err);
    if (s != BM_OK) {
        block_release(rt, b);
        return s;
    }
    /* every name sharing the old block follows it (a tied group moves as
     * one object in PyTorch) */
    pthread_mutex_lock(&rt->slot_mu);
    for (int32_t i = 0; i < rt->tree->n_tensors; i++)
        if (i != ti && rt->slots[i].b == cur && t->tie_group != BM_NONE &&
            rt->tree->tensors[i].tie_group == t->tie_group) {
            rt->slots[i].b = b;
            b->refs++;
            block_unref_locked(rt, cur);
        }
    pthread_mutex_unlock(&rt->slot_mu);
    slot_set(rt, ti, b);
    return BM_OK;
}

bm_status bm_rt_module_to(bm_rt *rt, int32_t m, bm_dev *dev, bool buffers, bm_error *err)
{
    const bm_module *mod = &rt->tree->modules[m];
    for (int32_t ti = mod->tensor_begin; ti < mod->subtree_tensor_end; ti++) {
        const bm_tensor *t = &rt->tree->tensors[ti];
        if (!rt->slots[ti].b || (t->is_buffer && !buffers))
            continue;
        bm_status s = bm_rt_tensor_to(rt, ti, dev, NULL, false, err);
        if (s != BM_OK)
            return s;
    }
    return BM_OK;
}

static int32_t find_local(const bm_tree *tree, int32_t module, const char *local)
{
    const bm_module *m = &tree->modules[module];
    for (int32_t i = 0; i < m->n_params + m->n_buffers; i++) {
        int32_t ti = m->tensor_begin + i;
        if (strcmp(tree->tensors[ti].local, local) == 0)
            return ti;
    }
    return BM_NONE;
}

bm_status bm_rt_weight(bm_rt *rt, int32_t module, const char *local, bm_dev *dev,
                       bm_weight *w, bm_error *err)
{
    memset(w, 0, sizeof *w);
    int32_t ti = find_local(rt->tree, module, local);
    if (ti == BM_NONE)
        return bm_fail(err, BM_E_NOTFOUND, "module '%s' has no tensor '%s'",
                       rt->tree->modules[module].name, local);
    const bm_tensor *t = &rt->tree->tensors[ti];
    block *b = rt->slots[ti].b;
    if (!b)
        return bm_fail(err, BM_E_INVALID, "%s is on the meta device: the device map does not "
                       "place it and no hook brings it in", t->name);
    w->dtype = rt->slots[ti].dtype;
    w->ndim = t->ndim;
    memcpy(w->shape, t->shape, sizeof w->shape);
    if (b->dev == dev) {
        w->data = b->data;
        return BM_OK;
    }
    /* a tensor placed apart from its module (a parameter-level map entry):
     * bring a copy for this call */
    bm_status s = rt_alloc(rt, dev, b->size, t->name, &w->tmp, err);
    if (s != BM_OK)
        return s;
    w->tmp_dev = dev;
    w->tmp_size = b->size;
    s = bm_dev_copy(dev, w->tmp, b->dev, b->data, b->size, err);
    if (s != BM_OK) {
        bm_rt_weight_release(rt, w);
        return s;
    }
    w->data = w->tmp;
    return BM_OK;
}

void bm_rt_weight_release(bm_rt *rt, bm_weight *w)
{
    (void)rt;
    if (w->tmp)
        bm_dev_free(w->tmp_dev, w->tmp, w->tmp_size);
    w->tmp = NULL;
}

bm_status bm_rt_load(bm_rt *rt, bm_wsource *src, const int *device_of, bm_error *err)
{
    const bm_tree *tree = rt->tree;
    /* everything checked before anything is loaded */
    for (int32_t ti = 0; ti < tree->n_tensors; ti++) {
        const bm_tensor *t = &tree->tensors[ti];
        if (t->is_buffer && !t->persistent)
            continue;
        int d = device_of[ti];
        if (d == BM_DEVICE_DISK || d == BM_DEVICE_NONE)
            continue;
        if (d < BM_DEVICE_CPU || d >= 64)
            return bm_fail(err, BM_E_INVALID, "tensor '%s': bad device %d", t->name, d);
        const char *name;
        bm_wsource_tensor wt;
        bm_status s = source_find(rt, src, ti, &name, &wt, err);
        if (s == BM_OK)
            s = check_source_tensor(rt, src, ti, &wt, err);
        if (s != BM_OK)
            return s;
        bm_dev *dev;
        if ((s = bm_rt_device(rt, d, &dev, err)) != BM_OK)
            return s;
    }
    for (int32_t ti = 0; ti < tree->n_tensors; ti++) {
        const bm_tensor *t = &tree->tensors[ti];
        int d = device_of[ti];
        if ((t->is_buffer && !t->persistent) || d == BM_DEVICE_DISK || d == BM_DEVICE_NONE)
            continue;
        bm_dev *dev;
        bm_status s = bm_rt_device(rt, d, &dev, err);
        if (s == BM_OK)
            s = bm_rt_tensor_to(rt, ti, dev, src, true, err);
        if (s != BM_OK)
            return s;
    }
    return BM_OK;
}

/* ---- activations ---- */

bm_status bm_value_new(bm_rt *rt, bm_dev *dev, bm_dtype dtype, int64_t rows, int64_t cols,
                       const char *what, bm_value **out, bm_error *err)
{
    *out = NULL;
    uint64_t n;
    if (rows < 0 || cols < 0 || __builtin_mul_overflow((uint64_t)rows, (uint64_t)cols, &n) ||
        __builtin_mul_overflow(n, (uint64_t)4, &n))
        return bm_fail(err, BM_E_OVERFLOW, "activation %s: [%lld, %lld] is too large",
                       what ? what : "", (long long)rows, (long long)cols);
    value_node *node = calloc(1, sizeof *node);
    if (!node)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    bm_status s = rt_alloc(rt, dev, n, what, &node->v.data, err);
    if (s != BM_OK) {
        free(node);
        return s;
    }
    node->v.dev = dev;
    node->v.dtype = dtype;
    node->v.rows = rows;
    node->v.cols = cols;
    node->v.nbytes = n;
    node->next = rt->values;
    if (rt->values)
        rt->values->prev = node;
    rt->values = node;
    *out = &node->v;
    return BM_OK;
}

void bm_value_free(bm_rt *rt, bm_value *v)
{
    if (!v)
        return;
    value_node *node = (value_node *)v;
    if (node->prev)
        node->prev->next = node->next;
    else
        rt->values = node->next;
    if (node->next)
        node->next->prev = node->prev;
    bm_dev_free(v->dev, v->data, v->nbytes);
    free(node);
}

bm_status bm_value_copy_to(bm_rt *rt, const bm_value *v, bm_dev *dev, bm_value **out,
                           bm_error *err)
{
    bm_status s = bm_value_new(rt, dev, v->dtype, v->rows, v->cols, "activation", out, err);
    if (s != BM_OK)
        return s;
    if (v->dev != dev)
        bm_rt_stats_add(rt, &rt->stats.bytes_activations_moved, v->nbytes);
    (*out)->id_end = v->id_end;
    s = bm_dev_copy(dev, (*out)->data, v->dev, v->data, v->nbytes, err);
    if (s != BM_OK) {
        bm_value_free(rt, *out);
        *out = NULL;
    }
    return s;
}

bm_status bm_value_rows(bm_rt *rt, const bm_value *v, int64_t r0, int64_t n, bm_value **out,
                        bm_error *err)
{
    if (r0 < 0 || n < 0 || r0 + n > v->rows)
        return bm_fail(err, BM_E_INTERNAL, "rows %lld..%lld of a %lld-row activation",
                       (long long)r0, (long long)(r0 + n), (long long)v->rows);
    bm_status s = bm_value_new(rt, v->dev, v->dtype, n, v->cols, "activation", out, err);
    if (s != BM_OK)
        return s;
    (*out)->id_end = v->id_end;
    uint64_t row = (uint64_t)v->cols * 4;
    s = bm_dev_copy(v->dev, (*out)->data, v->dev, (const char *)v->data + (uint64_t)r0 * row,
                       (uint64_t)n * row, err);
    if (s != BM_OK) {
        bm_value_free(rt, *out);
        *out = NULL;
    }
    return s;
}

/* ---- modules ---- */

void bm_rt_set_forward(bm_rt *rt, int32_t module, bm_forward_fn fn) { rt->fwd[module] = fn; }
bm_hook *bm_rt_hook(const bm_rt *rt, int32_t module) { return rt->hooks[module]; }
void bm_rt_set_hook(bm_rt *rt, int32_t module, bm_hook *hook) { rt->hooks[module] = hook; }

bm_status bm_rt_set_exec_order(bm_rt *rt, const int32_t *modules, int32_t n, bm_error *err)
{
    int32_t *o = malloc((size_t)(n > 0 ? n : 1) * sizeof *o);
    if (!o)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    for (int32_t m = 0; m < rt->tree->n_modules; m++)
        rt->exec_pos[m] = -1;
    for (int32_t i = 0; i < n; i++) {
        if (modules[i] < 0 || modules[i] >= rt->tree->n_modules) {
            free(o);
            return bm_fail(err, BM_E_INTERNAL, "execution order names module %d", modules[i]);
        }
        o[i] = modules[i];
        rt->exec_pos[modules[i]] = i;
    }
    free(rt->exec_order);
    rt->exec_order = o;
    rt->n_exec = n;
    return BM_OK;
}

static void prefetch_note(bm_rt *rt, int32_t module);

bm_status bm_module_call(bm_rt *rt, int32_t module, bm_call *call, bm_error *err)
{
    if (module < 0 || module >= rt->tree->n_modules)
        return bm_fail(err, BM_E_INTERNAL, "call of module %d", module);
    bm_hook *h = rt->hooks[module];
    if (rt->pf.running)
        prefetch_note(rt, module);
    bm_status s;
    if (h && h->ops->pre_forward && (s = h->ops->pre_forward(h, rt, module, call, err)) != BM_OK)
        return s;
    bm_forward_fn fn = rt->fwd[module];
    if (!fn) {
        const bm_module *m = &rt->tree->modules[module];
        return bm_fail(err, BM_E_UNSUPPORTED, "module '%s' (class %s) has no forward",
                       m->name, m->cls);
    }
    if ((s = fn(rt, module, call, err)) != BM_OK)
        return s;
    if (h && h->ops->post_forward && (s = h->ops->post_forward(h, rt, module, call, err)) != BM_OK)
        return s;
    return BM_OK;
}

/* ---- KV caches and running ---- */

bm_status bm_rt_kv(bm_rt *rt, int32_t module, bm_dev *dev, int64_t width, float **k,
                   float **v, bm_error *err)
{
    kv_cache *c = &rt->kv[module];
    if (c->dev && (c->dev != dev || c->width != width || c->cap < rt->max_tokens)) {
        if (rt->pos > 0 && c->dev != dev)
            return bm_fail(err, BM_E_INTERNAL, "%s: KV cache is on %s, the layer now runs on %s",
                           rt->tree->modules[module].name, bm_dev_name(c->dev),
                           bm_dev_name(dev));
        bm_dev_free(c->dev, c->k, c->bytes);
        bm_dev_free(c->dev, c->v, c->bytes);
        memset(c, 0, sizeof *c);
    }
    if (!c->dev) {
        uint64_t bytes;
        if (rt->max_tokens <= 0)
            return bm_fail(err, BM_E_INTERNAL, "KV cache used before bm_rt_begin");
        if (__builtin_mul_overflow((uint64_t)rt->max_tokens, (uint64_t)width * 4, &bytes))
            return bm_fail(err, BM_E_OVERFLOW, "KV cache too large");
        char what[256];
        snprintf(what, sizeof what, "the KV cache of %s", rt->tree->modules[module].name);
        void *kp = NULL, *vp = NULL;
        bm_status s = rt_alloc(rt, dev, bytes, what, &kp, err);
        if (s != BM_OK)
            return s;
        s = rt_alloc(rt, dev, bytes, what, &vp, err);
        if (s != BM_OK) {
            bm_dev_free(dev, kp, bytes);
            return s;
        }
        c->dev = dev;
        c->k = kp;
        c->v = vp;
        c->cap = rt->max_tokens;
        c->width = width;
        c->bytes = bytes;
    }
    *k = c->k;
    *v = c->v;
    return BM_OK;
}

bm_status bm_rt_begin(bm_rt *rt, int64_t max_tokens, bm_error *err)
{
    if (max_tokens <= 0)
        return bm_fail(err, BM_E_INVALID, "a sequence needs at least one token");
    rt->max_tokens = max_tokens;
    rt->pos = 0;
    return BM_OK;
}

int32_t bm_argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best] || (x[i] != x[i] && x[best] == x[best]))
            best = i;
    return (int32_t)best;
}

static void prefetch_start(bm_rt *rt);

bm_status bm_rt_forward(bm_rt *rt, const int32_t *ids, int64_t n, bool all_logits,
                        float **logits, int64_t *rows, int64_t *vocab, bm_error *err)
{
    *logits = NULL;
    if (n <= 0)
        return bm_fail(err, BM_E_INVALID, "no input tokens");
    if (rt->pos + n > rt->max_tokens)
        return bm_fail(err, BM_E_INVALID, "%lld tokens at position %lld exceed the sequence "
                       "length %lld", (long long)n, (long long)rt->pos, (long long)rt->max_tokens);
    if (!rt->fwd[0])
        return bm_fail(err, BM_E_INVALID, "no architecture bound to the model");
    if (rt->opts.prefetch && !rt->pf.running)
        prefetch_start(rt);
    rt->all_logits = all_logits;
    bm_dev *host = rt->devs[0];
    bm_value *in;
    bm_status s = bm_value_new(rt, host, BM_I32, n, 1, "input ids", &in, err);
    if (s != BM_OK)
        return s;
    memcpy(in->data, ids, (size_t)n * sizeof *ids);
    /* checked here, on the host, so that no backend has to read ids back
     * from its device: the embedding compares id_end with its rows */
    int32_t top = 0;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0) {
            bm_value_free(rt, in);
            return bm_fail(err, BM_E_INVALID, "token id %d out of range (negative)", ids[i]);
        }
        if (ids[i] > top)
            top = ids[i];
    }
    in->id_end = (int64_t)top + 1;
    /* the caller puts its inputs on the main device, as a user of a
     * dispatched model does; the root hook (if any) moves them further */
    bm_dev *main_dev;
    s = bm_rt_device(rt, rt->main_device, &main_dev, err);
    bm_value *arg = in;
    if (s == BM_OK && main_dev != host) {
        s = bm_value_copy_to(rt, in, main_dev, &arg, err);
        bm_value_free(rt, in);
        in = NULL;
    }
    if (s != BM_OK) {
        bm_value_free(rt, in);
        return s;
    }
    bm_call call = {.args = {arg}, .nargs = 1};
    s = bm_module_call(rt, 0, &call, err);
    bm_value_free(rt, arg);
    if (s != BM_OK) {
        bm_value_free(rt, call.out);
        return s;
    }
    bm_value *out = call.out;
    if (!out || out->dtype != BM_F32)
        return bm_fail(err, BM_E_INTERNAL, "the model returned no logits");
    float *host_logits = malloc((size_t)out->nbytes ? (size_t)out->nbytes : 1);
    if (!host_logits) {
        bm_value_free(rt, out);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    if (out->dev == host)
        memcpy(host_logits, out->data, (size_t)out->nbytes);
    else
        s = bm_dev_download(out->dev, host_logits, out->data, out->nbytes, err);
    *rows = out->rows;
    *vocab = out->cols;
    bm_value_free(rt, out);
    if (s != BM_OK) {
        free(host_logits);
        return s;
    }
    rt->pos += n;
    *logits = host_logits;
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * Prefetcher. Walks the execution order ahead of the running module and
 * asks each upcoming module's hook what it will fetch; loads those tensors
 * into device memory (never over budget: try_alloc) so the hook finds them
 * ready. Entries are keyed by (tensor, device).
 * ------------------------------------------------------------------------ */

#define MAX_TARGETS 64

static staged *staged_find(prefetcher *pf, int32_t ti, bm_dev *dev, staged ***link)
{
    for (staged **p = &pf->list; *p; p = &(*p)->next)
        if ((*p)->tensor == ti && (*p)->dev == dev) {
            if (link)
                *link = p;
            return *p;
        }
    return NULL;
}

static bool resident_on(bm_rt *rt, int32_t ti, bm_dev *dev)
{
    pthread_mutex_lock(&rt->slot_mu);
    bool yes = rt->slots[ti].b && rt->slots[ti].b->dev == dev;
    const bm_tensor *t = &rt->tree->tensors[ti];
    if (!yes && t->tie_group != BM_NONE) {
        const bm_tie *g = &rt->tree->ties[t->tie_group];
        for (int32_t i = 0; i < g->n; i++) {
            block *b = rt->slots[g->tensors[i]].b;
            if (b && b->dev == dev)
                yes = true;
        }
    }
    pthread_mutex_unlock(&rt->slot_mu);
    return yes;
}

/* The next thing to fetch, or false. Called with pf->mu held. */
static bool next_target(bm_rt *rt, bm_fetch_target *out, uint64_t *size)
{
    prefetcher *pf = &rt->pf;
    if (rt->n_exec == 0 || pf->paused)
        return false;
    int32_t cur = atomic_load(&pf->cursor);
    int32_t start = cur < 0 ? 0 : cur + 1;
    int modules_seen = 0;
    for (int32_t k = 0; k < rt->n_exec && modules_seen < rt->opts.lookahead; k++) {
        int32_t m = rt->exec_order[(start + k) % rt->n_exec];
        bm_hook *h = rt->hooks[m];
        if (!h || !h->ops->fetch_targets)
            continue;
        bm_fetch_target tg[MAX_TARGETS];
        int n = h->ops->fetch_targets(h, rt, m, tg, MAX_TARGETS);
        if (n <= 0)
            continue;
        modules_seen++;
        for (int i = 0; i < n; i++) {
            if (staged_find(pf, tg[i].tensor, tg[i].dev, NULL))
                continue;
            if (resident_on(rt, tg[i].tensor, tg[i].dev))
                continue;
            bm_wsource_tensor wt;
            if (bm_wsource_find(tg[i].src, tg[i].name, &wt, NULL) != BM_OK &&
                source_find(rt, tg[i].src, tg[i].tensor, &tg[i].name, &wt, NULL) != BM_OK)
                continue; /* the hook will report it */
            const bm_tensor *t = &rt->tree->tensors[tg[i].tensor];
            uint64_t sz = t->numel * elem_bytes(target_dtype(rt, tg[i].tensor, wt.dtype));
            int di = bm_dev_id(tg[i].dev) + 1;
            bm_dev_stats st;
            bm_dev_get_stats(tg[i].dev, &st);
            if (pf->bytes + sz > rt->opts.staging_bytes ||
                (st.capacity != UINT64_MAX &&
                 pf->staged_on[di] + sz + pf->main_demand[di] > st.capacity))
                return false;
            *out = tg[i];
            *size = sz;
            return true;
        }
    }
    return false;
}

/* Wait (pf->mu held) until the generation moves on from `gen`. The
 * compute thread bumps it without the lock and signals only a sleeper:
 * both sides use sequentially consistent atomics, so one of them sees the
 * other's write and no wake-up is lost. */
static void prefetch_sleep(prefetcher *pf, uint64_t gen)
{
    atomic_store(&pf->sleeping, true);
    while (!pf->stop && gen == atomic_load(&pf->generation))
        pthread_cond_wait(&pf->wake, &pf->mu);
    atomic_store(&pf->sleeping, false);
}

static void *prefetch_main(void *arg)
{
    bm_rt *rt = arg;
    prefetcher *pf = &rt->pf;
    /* lowest priority: with as many compute threads as cores it must not
     * preempt them (a preempted worker stalls every operation waiting for
     * all of its tasks); it gets the cores when the compute thread waits */
    (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
    pthread_mutex_lock(&pf->mu);
    while (!pf->stop) {
        bm_fetch_target tg;
        uint64_t size;
        uint64_t gen = atomic_load(&pf->generation);
        if (!next_target(rt, &tg, &size)) {
            prefetch_sleep(pf, gen);
            continue;
        }
        staged *e = calloc(1, sizeof *e);
        if (!e)
            break;
        e->tensor = tg.tensor;
        e->dev = tg.dev;
        e->b = calloc(1, sizeof *e->b);
        if (!e->b || !bm_dev_try_alloc(tg.dev, size, &e->b->data)) {
            /* no room now: wait until something is released */
            free(e->b);
            free(e);
            prefetch_sleep(pf, gen);
            continue;
        }
        e->b->dev = tg.dev;
        e->b->size = size;
        e->b->refs = 1;
        e->next = pf->list;
        pf->list = e;
        pf->bytes += size;
        pf->staged_on[bm_dev_id(tg.dev) + 1] += size;
        pthread_mutex_unlock(&pf->mu);

        bm_wsource_tensor wt;
        bm_error err = {0};
        bm_status s = bm_wsource_find(tg.src, tg.name, &wt, &err);
        if (s == BM_OK)
            s = check_source_tensor(rt, tg.src, tg.tensor, &wt, &err);
        bm_dtype dt = BM_DTYPE_INVALID;
        if (s == BM_OK)
            dt = target_dtype(rt, tg.tensor, wt.dtype);
        bool direct = bm_backend_get_ops(bm_dev_backend(tg.dev))->host_addressable;
        if (s == BM_OK && direct && wt.data && dt == wt.dtype) {
            const uint64_t piece = 1u << 20;
            e->src = wt.data;
            if (source_kind(tg.src, tg.name) == BM_WSOURCE_DISK)
                bm_rt_stats_add(rt, &rt->stats.bytes_disk_read, wt.nbytes);
            else if (bm_dev_id(tg.dev) != BM_DEVICE_CPU)
                bm_rt_stats_add(rt, &rt->stats.bytes_host_to_device, wt.nbytes);
            while (e->done < size && !atomic_load(&e->hurry)) {
                uint64_t n = size - e->done < piece ? size - e->done : piece;
                memcpy((char *)e->b->data + e->done, (const char *)wt.data + e->done, (size_t)n);
                bm_dev_note_upload(tg.dev, n);
                e->done += n;
            }
        } else if (s == BM_OK) {
            s = fill_from_source(rt, tg.dev, e->b->data, dt, tg.src, tg.name, &wt,
                                 rt->tree->tensors[tg.tensor].numel, &err);
            e->done = size;
        }
        pthread_mutex_lock(&pf->mu);
        e->dtype = dt;
        e->state = s == BM_OK ? 1 : 2;
        pthread_cond_broadcast(&pf->changed);
    }
    pthread_mutex_unlock(&pf->mu);
    return NULL;
}

static void prefetch_start(bm_rt *rt)
{
    bool any = false;
    for (int32_t m = 0; m < rt->tree->n_modules && !any; m++)
        any = rt->hooks[m] && rt->hooks[m]->ops->fetch_targets;
    if (!any || rt->n_exec == 0)
        return;
    rt->pf.stop = false;
    int rc = pthread_create(&rt->pf.thread, NULL, prefetch_main, rt);
    if (rc == 0)
        rt->pf.running = true;
}

static void staged_free(staged *e)
{
    block_mem_free(e->b);
    free(e->b);
    free(e);
}

static void prefetch_stop(bm_rt *rt)
{
    prefetcher *pf = &rt->pf;
    if (pf->running) {
        pthread_mutex_lock(&pf->mu);
        pf->stop = true;
        pthread_cond_broadcast(&pf->wake);
        pthread_mutex_unlock(&pf->mu);
        pthread_join(pf->thread, NULL);
        pf->running = false;
    }
    while (pf->list) {
        staged *e = pf->list;
        pf->list = e->next;
        staged_free(e);
    }
    pf->bytes = 0;
    memset(pf->staged_on, 0, sizeof pf->staged_on);
}

static void prefetch_wake(prefetcher *pf)
{
    atomic_fetch_add(&pf->generation, 1);
    if (atomic_load(&pf->sleeping)) {
        pthread_mutex_lock(&pf->mu);
        pthread_cond_broadcast(&pf->wake);
        pthread_mutex_unlock(&pf->mu);
    }
}

static void prefetch_note(bm_rt *rt, int32_t module)
{
    int32_t p = rt->exec_pos[module];
    if (p < 0)
        return;
    atomic_store(&rt->pf.cursor, p);
    prefetch_wake(&rt->pf);
}

/* Wake the prefetcher: memory was released. */
static void prefetch_kick(bm_rt *rt)
{
    if (rt->pf.running)
        prefetch_wake(&rt->pf);
}

/* The compute thread needs `need` bytes on dev and the device is full:
 * drop prefetched weights there, those needed last first, until it fits,
 * and remember how much the compute thread needs so that staging keeps
 * out of that room from now on. */
static void prefetch_evict(bm_rt *rt, bm_dev *dev, uint64_t need)
{
    prefetcher *pf = &rt->pf;
    int di = bm_dev_id(dev) + 1;
    pthread_mutex_lock(&pf->mu);
    pf->paused = true;
    for (;;) {
        bool loading = false;
        for (staged *e = pf->list; e; e = e->next)
            if (e->dev == dev && e->state == 0)
                loading = true;
        if (!loading)
            break;
        pthread_cond_wait(&pf->changed, &pf->mu);
    }
    bm_dev_stats st;
    bm_dev_get_stats(dev, &st);
    uint64_t main_use = st.in_use - (pf->staged_on[di] < st.in_use ? pf->staged_on[di] : st.in_use);
    if (main_use + need > pf->main_demand[di])
        pf->main_demand[di] = main_use + need;
    /* the list holds the newest (furthest ahead) entries first */
    for (staged **p = &pf->list; *p;) {
        bm_dev_get_stats(dev, &st);
        if (st.in_use + need <= st.capacity)
            break;
        staged *e = *p;
        if (e->dev == dev) {
            *p = e->next;
            pf->bytes -= e->b->size;
            pf->staged_on[di] -= e->b->size;
            staged_free(e);
        } else {
            p = &e->next;
        }
    }
    pf->paused = false;
    pthread_mutex_unlock(&pf->mu);
}

/* A tied partner of ti that is loaded on some device, copied to dev for
 * this call (the offload source does not hold ti under any name). */
static bm_status copy_tied_partner(bm_rt *rt, int32_t ti, bm_dev *dev)
{
    const bm_tensor *t = &rt->tree->tensors[ti];
    if (t->tie_group == BM_NONE)
        return BM_E_NOTFOUND;
    const bm_tie *g = &rt->tree->ties[t->tie_group];
    block *from = NULL;
    bm_dtype dt = BM_DTYPE_INVALID;
    pthread_mutex_lock(&rt->slot_mu);
    for (int32_t i = 0; i < g->n && !from; i++)
        if (rt->slots[g->tensors[i]].b) {
            from = rt->slots[g->tensors[i]].b;
            from->refs++;
            dt = rt->slots[g->tensors[i]].dtype;
        }
    pthread_mutex_unlock(&rt->slot_mu);
    if (!from)
        return BM_E_NOTFOUND;
    block *b = NULL;
    bm_status s = block_new(rt, dev, from->size, t->name, &b, NULL);
    if (s == BM_OK) {
        s = bm_dev_copy(dev, b->data, from->dev, from->data, from->size, NULL);
        if (s != BM_OK)
            block_release(rt, b);
    }
    block_release(rt, from);
    if (s != BM_OK)
        return s;
    bm_rt_stats_add(rt, &rt->stats.offload_fetch_bytes, b->size);
    rt->slots[ti].dtype = dt;
    slot_set(rt, ti, b);
    return BM_OK;
}

/* Bring offloaded tensor ti onto dev for a module call: a tied partner
 * already there, a prefetched copy, or a load from src now. */
bm_status bm_rt_fetch(bm_rt *rt, int32_t ti, bm_dev *dev, bm_wsource *src, const char *name,
                      bool share_ties, bm_error *err)
{
    if (share_ties) {
        block *b = tied_on(rt, ti, dev);
        if (b) {
            slot_set(rt, ti, b);
            return BM_OK;
        }
    }
    bm_rt_stats_add(rt, &rt->stats.offload_fetches, 1);
    if (rt->pf.running) {
        prefetcher *pf = &rt->pf;
        pthread_mutex_lock(&pf->mu);
        staged **link;
        staged *e = staged_find(pf, ti, dev, &link);
        if (e) {
            bool waited = false;
            atomic_store(&e->hurry, true);
            while (e->state == 0) {
                waited = true;
                pthread_cond_wait(&pf->changed, &pf->mu);
                e = staged_find(pf, ti, dev, &link);
                if (!e)
                    break;
            }
            if (e) {
                *link = e->next;
                pf->bytes -= e->b->size;
                pf->staged_on[bm_dev_id(e->dev) + 1] -= e->b->size;
            }
            pthread_mutex_unlock(&pf->mu);
            if (e && e->state == 1) {
                if (e->done < e->b->size) {
                    /* the rest of a copy the prefetcher was told to leave */
                    bm_status cs = bm_dev_upload(dev, (char *)e->b->data + e->done,
                                                 (const char *)e->src + e->done,
                                                 e->b->size - e->done, err);
                    if (cs != BM_OK) {
                        staged_free(e);
                        return cs;
                    }
                    waited = true;
                }
                bm_rt_stats_add(rt, waited ? &rt->stats.prefetch_waits : &rt->stats.prefetch_hits, 1);
                bm_rt_stats_add(rt, &rt->stats.offload_fetch_bytes, e->b->size);
                block *b = e->b;
                pthread_mutex_lock(&rt->slot_mu);
                b->next = rt->blocks;
                b->prev = NULL;
                if (rt->blocks)
                    rt->blocks->prev = b;
                rt->blocks = b;
                rt->slots[ti].dtype = e->dtype;
                pthread_mutex_unlock(&rt->slot_mu);
                free(e);
                slot_set(rt, ti, b);
                return BM_OK;
            }
            if (e)
                staged_free(e); /* failed: load now and report the error */
        } else {
            pthread_mutex_unlock(&pf->mu);
        }
        bm_rt_stats_add(rt, &rt->stats.prefetch_misses, 1);
    }
    bm_wsource_tensor wt;
    const char *nm = name;
    bm_status s = bm_wsource_find(src, nm, &wt, NULL);
    if (s != BM_OK) /* a tied alias the source does not hold: its partner */
        s = source_find(rt, src, ti, &nm, &wt, err);
    if (s != BM_OK && copy_tied_partner(rt, ti, dev) == BM_OK) {
        if (err)
            memset(err, 0, sizeof *err);
        return BM_OK;
    }
    if (s == BM_OK)
        s = check_source_tensor(rt, src, ti, &wt, err);
    block *b;
    bm_dtype dt;
    if (s == BM_OK)
        s = load_block(rt, ti, dev, src, nm, &wt, &b, &dt, err);
    if (s != BM_OK)
        return s;
    bm_rt_stats_add(rt, &rt->stats.offload_fetch_bytes, b->size);
    rt->slots[ti].dtype = dt;
    slot_set(rt, ti, b);
    return BM_OK;
}

/* Release an offloaded tensor after its call. */
void bm_rt_unfetch(bm_rt *rt, int32_t ti)
{
    slot_set(rt, ti, NULL);
    prefetch_kick(rt);
}

/* ---- snapshots of host tensors (accelerate's in-RAM state dict) ---- */

typedef struct snap_entry {
    int32_t ti;
    char *name;
    bm_dtype dtype;
    int ndim;
    int64_t shape[BM_MAX_DIMS];
    block *b;       /* a host block referenced */
    void *own;      /* or a host copy */
    uint64_t nbytes;
} snap_entry;

typedef struct snap_src {
    bm_rt *rt;
    snap_entry *e;
    int32_t n;
} snap_src;

static snap_entry *snap_lookup(snap_src *s, const char *name)
{
    /* entries are in tensor order: the tree's name index, then bisect */
    int32_t ti = bm_tree_find_tensor(s->rt->tree, name);
    if (ti == BM_NONE)
        return NULL;
    int32_t lo = 0, hi = s->n;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        int32_t mt = s->e[mid].ti;
        if (mt == ti)
            return &s->e[mid];
        if (mt < ti)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static bm_status snap_find(void *ctx, const char *name, bm_wsource_tensor *t, bm_error *err)
{
    snap_entry *e = snap_lookup(ctx, name);
    if (!e)
        return bm_fail(err, BM_E_NOTFOUND, "no tensor '%s' in host memory", name);
    t->dtype = e->dtype;
    t->ndim = e->ndim;
    memcpy(t->shape, e->shape, sizeof t->shape);
    t->nbytes = e->nbytes;
    t->data = e->b ? e->b->data : e->own;
    return BM_OK;
}

static bm_status snap_read(void *ctx, const char *name, void *dst, uint64_t n, bm_error *err)
{
    snap_entry *e = snap_lookup(ctx, name);
    if (!e || n != e->nbytes)
        return bm_fail(err, BM_E_NOTFOUND, "no tensor '%s' of %llu bytes in host memory", name,
                       (unsigned long long)n);
    memcpy(dst, e->b ? e->b->data : e->own, (size_t)n);
    return BM_OK;
}

static void snap_close(void *ctx)
{
    snap_src *s = ctx;
    for (int32_t i = 0; i < s->n; i++) {
        free(s->e[i].name);
        free(s->e[i].own);
        if (s->e[i].b)
            block_release(s->rt, s->e[i].b);
    }
    free(s->e);
    free(s);
}

static const bm_wsource_ops snap_ops = {snap_find, snap_read, snap_close};

bm_wsource *bm_rt_snapshot(bm_rt *rt, const bool *which, bm_error *err)
{
    snap_src *s = calloc(1, sizeof *s);
    if (!s || !(s->e = calloc((size_t)(rt->tree->n_tensors + 1), sizeof *s->e))) {
        free(s);
        bm_fail(err, BM_E_NOMEM, "out of memory");
        return NULL;
    }
    s->rt = rt;
    for (int32_t ti = 0; ti < rt->tree->n_tensors; ti++) {
        block *b = rt->slots[ti].b;
        if (!which[ti] || !b)
            continue;
        const bm_tensor *t = &rt->tree->tensors[ti];
        snap_entry *e = &s->e[s->n];
        e->ti = ti;
        e->name = strdup(t->name);
        e->dtype = rt->slots[ti].dtype;
        e->ndim = t->ndim;
        memcpy(e->shape, t->shape, sizeof e->shape);
        e->nbytes = b->size;
        s->n++;
        if (!e->name) {
            snap_close(s);
            bm_fail(err, BM_E_NOMEM, "out of memory");
            return NULL;
        }
        if (bm_dev_id(b->dev) == BM_DEVICE_CPU &&
            strcmp(bm_backend_name(bm_dev_backend(b->dev)), "cpu") == 0) {
            pthread_mutex_lock(&rt->slot_mu);
            b->refs++;
            pthread_mutex_unlock(&rt->slot_mu);
            e->b = b;
        } else {
            e->own = malloc((size_t)b->size ? (size_t)b->size : 1);
            if (!e->own || bm_dev_download(b->dev, e->own, b->data, b->size, err) != BM_OK) {
                if (!e->own)
                    bm_fail(err, BM_E_NOMEM, "out of memory");
                snap_close(s);
                return NULL;
            }
        }
    }
    bm_wsource *src = bm_wsource_new(&snap_ops, s, BM_WSOURCE_MEMORY, "host memory");
    if (!src)
        bm_fail(err, BM_E_NOMEM, "out of memory");
    return src;
}
