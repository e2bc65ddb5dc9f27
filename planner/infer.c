/*
 * infer.c - accelerate's infer_auto_device_map, in linear time.
 *
 * accelerate keeps a work list of (name, object) entries (modules,
 * parameters, top-level buffers) and a reservation: the size of the largest
 * "layer" still waiting, kept free on the main devices. This file keeps the
 * same data flow, with indexes instead of list scans:
 *   - the work list is a doubly linked list over one node per module and
 *     tensor, so removing a tied module or splitting one in place is O(1);
 *   - get_max_layer_size over the list is a max over per-entry values
 *     precomputed bottom-up (largest layer below each module and how many
 *     layers share that size), kept in buckets keyed by size;
 *   - the list of names realising the reservation is a count, decremented
 *     when an entry holding some of them is popped;
 *   - tie relevance and tied-module lookups go through hash indexes.
 * Three decision flows: accelerate 0.27.2, 1.x, and bmplan's (0.27's with
 * the defects fixed). Sizes are bits, so fractional byte sizes are exact.
 */
#include "internal.h"
#include "strtab.h"

#include <stdlib.h>
#include <string.h>

enum { LOOKUP_SUBSTRING, LOOKUP_PREFIX, LOOKUP_PREFIX_OR_SELF };

/* Saturation bound for sums of sizes (beyond any budget). */
#define SAT (INT64_C(1) << 62)

/* A number as accelerate holds it: bits, and whether Python has a float. */
typedef struct pynum {
    int64_t b;
    bool f;
} pynum;

static int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return a > 0 ? SAT : -SAT;
    if (r > SAT)
        return SAT;
    if (r < -SAT)
        return -SAT;
    return r;
}

static pynum pn_add(pynum a, pynum b)
{
    return (pynum){sat_add(a.b, b.b), a.f || b.f};
}

static pynum pn_sub(pynum a, pynum b)
{
    return (pynum){sat_add(a.b, -b.b), a.f || b.f};
}

struct node {
    int32_t prev, next;
    int64_t pos;    /* order label (0.27 picks the first matching entry) */
    uint64_t stamp; /* clock value when pushed */
    bool in_q;
};

struct bucket {
    uint64_t key;
    int64_t n;   /* work-list modules whose largest layer has this size */
    int64_t cnt; /* total number of layers of this size below them */
    int32_t layer;
    bool used, in_heap, f;
};

/* hash multimap: substrings of tied names ending before a dot -> member */
struct subentry {
    const char *s;
    uint32_t len;
    uint32_t hash;
    int32_t member; /* tensor index */
    int32_t next;
};

typedef struct planner {
    const bm_tree *tree;
    const bm_plan_opts *opts;
    bm_compat compat;
    bool substring_inside;
    int lookup;
    bool keep_buffers; /* bmplan: a split module's buffers stay with it */
    int32_t nm, nt;
    uint64_t *mbits, *tbits;
    uint8_t *mfloat, *tfloat;
    uint8_t *nosplit;
    uint64_t *lmax, *lcnt;
    int32_t *llayer;
    /* work list: node o < nm is module o, node nm + t is tensor t */
    struct node *nodes;
    int32_t head, tail;
    int64_t qlen;
    uint64_t clock;
    /* reservation (get_max_layer_size) */
    uint64_t R;
    bool R_f;
    int32_t R_layer; /* a node realising R, or BM_NONE */
    int64_t rn;
    uint64_t rc_stamp;
    bool rc_tensors;
    struct bucket *bk;
    uint32_t bkmask;
    uint64_t *heap;
    int32_t nheap;
    /* ties */
    bm_tied tied;
    int32_t *member_group; /* per tensor: group index or BM_NONE */
    int32_t *members;      /* sorted tensor indices of all members */
    int32_t n_members;
    struct subentry *sub;
    int32_t n_sub, *sub_head;
    uint32_t sub_mask;
    uint32_t *tmark, *gmark, gen;
    int32_t *gcount;
    int32_t *inside, n_inside;
    int32_t *rel, n_rel;
    int32_t *outside, n_outside;
    int32_t *T, n_T;
    int32_t *scratch; /* expansion of a module */
    /* the raw map, and the final one (after cleaning; root = "") */
    int32_t *placed_obj, *placed_dev, n_placed;
    int32_t *final_obj, *final_dev, n_final;
    int32_t *slot;
    /* devices */
    int ndev;
    bm_device *dev;
    pynum *budget;
    bool *has_budget, *is_main;
    int64_t *reserved;
    int32_t *reserved_for;
    /* log */
    FILE *vlog;
    bm_sbuf line;
    bm_error *err;
} planner;

static const char *compat_name(bm_compat c)
{
    return c == BM_COMPAT_0_27 ? "accelerate 0.27.2" : "accelerate 1.x";
}

static bm_status nomem(planner *p)
{
    return bm_fail(p->err, BM_E_NOMEM, "out of memory while planning");
}

static bool is_mod(const planner *p, int32_t o)
{
    return o < p->nm;
}

static const char *obj_name(const planner *p, int32_t o)
{
    return o < p->nm ? p->tree->modules[o].name : p->tree->tensors[o - p->nm].name;
}

static pynum obj_size(const planner *p, int32_t o)
{
    if (o < p->nm)
        return (pynum){(int64_t)p->mbits[o], p->mfloat[o]};
    return (pynum){(int64_t)p->tbits[o - p->nm], p->tfloat[o - p->nm]};
}

static const char *dev_str(const planner *p, int k, char *buf, size_t len)
{
    return bm_device_str(p->dev[k], buf, len);
}

/* ------------------------------------------------------------------------
 * The log (verbose=True)
 * ------------------------------------------------------------------------ */

static void log_flush(planner *p)
{
    if (p->line.oom) {
        p->line.oom = false;
        p->line.n = 0;
        return;
    }
    if (p->line.n)
        fwrite(p->line.p, 1, p->line.n, p->vlog);
    fputc('\n', p->vlog);
    p->line.n = 0;
    if (p->line.p)
        p->line.p[0] = 0;
}

static void log_names(planner *p, const int32_t *objs, int32_t n)
{
    bm_sb_str(&p->line, "[");
    for (int32_t i = 0; i < n; i++) {
        if (i)
            bm_sb_str(&p->line, ", ");
        bm_sb_pyrepr(&p->line, obj_name(p, objs[i]));
    }
    bm_sb_str(&p->line, "]");
}

static void log_num(planner *p, pynum v)
{
    bm_sb_pysize(&p->line, v.b, v.f);
}

static void log_dev(planner *p, int k)
{
    char buf[32];
    bm_sb_str(&p->line, dev_str(p, k, buf, sizeof buf));
}

/* ------------------------------------------------------------------------
 * Buckets: get_max_layer_size over the modules of the work list
 * ------------------------------------------------------------------------ */

static struct bucket *bucket_get(planner *p, uint64_t key)
{
    uint32_t h = (uint32_t)((key * UINT64_C(0x9E3779B97F4A7C15)) >> 32) & p->bkmask;
    while (p->bk[h].used && p->bk[h].key != key)
        h = (h + 1) & p->bkmask;
    struct bucket *b = &p->bk[h];
    if (!b->used) {
        b->used = true;
        b->key = key;
    }
    return b;
}

static void heap_push(planner *p, uint64_t key)
{
    int32_t i = p->nheap++;
    p->heap[i] = key;
    while (i > 0) {
        int32_t up = (i - 1) / 2;
        if (p->heap[up] >= p->heap[i])
            break;
        uint64_t t = p->heap[up];
        p->heap[up] = p->heap[i];
        p->heap[i] = t;
        i = up;
    }
}

static void heap_pop(planner *p)
{
    p->heap[0] = p->heap[--p->nheap];
    int32_t i = 0;
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < p->nheap && p->heap[l] > p->heap[m])
            m = l;
        if (r < p->nheap && p->heap[r] > p->heap[m])
            m = r;
        if (m == i)
            break;
        uint64_t t = p->heap[m];
        p->heap[m] = p->heap[i];
        p->heap[i] = t;
        i = m;
    }
}

static void bucket_add(planner *p, int32_t m)
{
    struct bucket *b = bucket_get(p, p->lmax[m]);
    /* report the earliest layer of that size (modules are in pre-order) */
    if (b->n == 0 || p->llayer[m] < b->layer) {
        b->layer = p->llayer[m];
        b->f = p->mfloat[p->llayer[m]];
    }
    b->n++;
    b->cnt += (int64_t)p->lcnt[m];
    if (!b->in_heap) {
        b->in_heap = true;
        heap_push(p, b->key);
    }
}

static void bucket_remove(planner *p, int32_t m)
{
    struct bucket *b = bucket_get(p, p->lmax[m]);
    b->n--;
    b->cnt -= (int64_t)p->lcnt[m];
}

/* (R, RN) = get_max_layer_size(modules of the work list) */
static void recompute(planner *p)
{
    while (p->nheap > 0) {
        struct bucket *b = bucket_get(p, p->heap[0]);
        if (b->n > 0)
            break;
        b->in_heap = false;
        heap_pop(p);
    }
    if (p->nheap == 0) {
        p->R = 0;
        p->R_f = false;
        p->rn = 0;
        p->R_layer = BM_NONE;
    } else {
        struct bucket *b = bucket_get(p, p->heap[0]);
        p->R = b->key;
        p->R_f = b->key ? b->f : false;
        p->rn = b->cnt;
        p->R_layer = b->layer;
    }
    p->rc_stamp = ++p->clock;
    p->rc_tensors = false;
}

/* ------------------------------------------------------------------------
 * The work list
 * ------------------------------------------------------------------------ */

static void q_link_after(planner *p, int32_t after, int32_t o)
{
    struct node *n = &p->nodes[o];
    n->prev = after;
    n->next = after >= 0 ? p->nodes[after].next : p->head;
    if (n->next >= 0)
        p->nodes[n->next].prev = o;
    else
        p->tail = o;
    if (after >= 0)
        p->nodes[after].next = o;
    else
        p->head = o;
    n->in_q = true;
    n->stamp = ++p->clock;
    p->qlen++;
    if (is_mod(p, o))
        bucket_add(p, o);
}

static void q_push_front(planner *p, int32_t o)
{
    int64_t pos = p->head >= 0 ? p->nodes[p->head].pos - 1 : 0;
    q_link_after(p, -1, o);
    p->nodes[o].pos = pos;
}

static void q_push_back(planner *p, int32_t o)
{
    int64_t pos = p->tail >= 0 ? p->nodes[p->tail].pos + 1 : 0;
    q_link_after(p, p->tail, o);
    p->nodes[o].pos = pos;
}

static void q_unlink(planner *p, int32_t o)
{
    struct node *n = &p->nodes[o];
    if (n->prev >= 0)
        p->nodes[n->prev].next = n->next;
    else
        p->head = n->next;
    if (n->next >= 0)
        p->nodes[n->next].prev = n->prev;
    else
        p->tail = n->prev;
    n->prev = n->next = -1;
    n->in_q = false;
    p->qlen--;
    if (is_mod(p, o))
        bucket_remove(p, o);
}

static void q_relabel(planner *p)
{
    int64_t pos = 0;
    for (int32_t o = p->head; o >= 0; o = p->nodes[o].next)
        p->nodes[o].pos = pos++;
}

/* What splitting module m puts in its place: its own parameters, its
 * children, and (bmplan) its own buffers. Returns the count in scratch. */
static int32_t expansion(planner *p, int32_t m)
{
    const bm_module *mod = &p->tree->modules[m];
    int32_t n = 0;
    for (int32_t i = 0; i < mod->n_params; i++)
        p->scratch[n++] = p->nm + mod->tensor_begin + i;
    for (int32_t c = mod->first_child; c != BM_NONE; c = p->tree->modules[c].next_sibling)
        p->scratch[n++] = c;
    if (p->keep_buffers)
        for (int32_t i = 0; i < mod->n_buffers; i++)
            p->scratch[n++] = p->nm + mod->tensor_begin + mod->n_params + i;
    return n;
}

/* accelerate's "can it be split": a module with children whose class is
 * not listed in no_split_module_classes */
static bool splittable(const planner *p, int32_t o)
{
    return is_mod(p, o) && p->tree->modules[o].n_children > 0 && !p->nosplit[o];
}

/* ------------------------------------------------------------------------
 * Ties
 * ------------------------------------------------------------------------ */

static uint32_t hash_str(const char *s, size_t len)
{
    return (uint32_t)bm_hash_bytes(s, len);
}

static bm_status ties_init(planner *p)
{
    const bm_tree *t = p->tree;
    bm_status st = bm_tied_find(t, p->compat, &p->tied, p->err);
    if (st)
        return st;
    p->member_group = malloc((size_t)(p->nt ? p->nt : 1) * sizeof *p->member_group);
    p->tmark = calloc((size_t)(p->nt ? p->nt : 1), sizeof *p->tmark);
    p->gmark = calloc((size_t)(p->tied.n ? p->tied.n : 1), sizeof *p->gmark);
    p->gcount = calloc((size_t)(p->tied.n ? p->tied.n : 1), sizeof *p->gcount);
    if (!p->member_group || !p->tmark || !p->gmark || !p->gcount)
        return nomem(p);
    for (int32_t i = 0; i < p->nt; i++)
        p->member_group[i] = BM_NONE;
    int32_t total = 0;
    for (int32_t g = 0; g < p->tied.n; g++) {
        total += p->tied.groups[g].n;
        for (int32_t i = 0; i < p->tied.groups[g].n; i++)
            p->member_group[p->tied.groups[g].tensors[i]] = g;
    }
    p->n_members = total;
    size_t cap = (size_t)(total ? total : 1);
    p->members = malloc(cap * sizeof *p->members);
    p->inside = malloc(cap * sizeof *p->inside);
    p->outside = malloc(cap * sizeof *p->outside);
    p->T = malloc(cap * sizeof *p->T);
    p->rel = malloc((size_t)(p->tied.n ? p->tied.n : 1) * sizeof *p->rel);
    if (!p->members || !p->inside || !p->outside || !p->T || !p->rel)
        return nomem(p);
    int32_t k = 0;
    for (int32_t i = 0; i < p->nt; i++)
        if (p->member_group[i] != BM_NONE)
            p->members[k++] = i;
    if (!p->substring_inside || total == 0)
        return BM_OK;
    /* every substring of "member." that ends right before a dot */
    size_t nsub = 0;
    for (int32_t i = 0; i < total; i++) {
        const char *s = t->tensors[p->members[i]].name;
        size_t len = strlen(s);
        for (size_t e = 1; e <= len; e++)
            if (e == len || s[e] == '.')
                nsub += e;
        if (nsub > (size_t)INT32_MAX / 4)
            return bm_fail(p->err, BM_E_INVALID, "tied parameter names are too long");
    }
    uint32_t mask = 1;
    while (mask < nsub * 2)
        mask <<= 1;
    p->sub_mask = mask - 1;
    p->sub = malloc((nsub ? nsub : 1) * sizeof *p->sub);
    p->sub_head = malloc((size_t)mask * sizeof *p->sub_head);
    if (!p->sub || !p->sub_head)
        return nomem(p);
    for (uint32_t i = 0; i < mask; i++)
        p->sub_head[i] = -1;
    for (int32_t i = 0; i < total; i++) {
        const char *s = t->tensors[p->members[i]].name;
        size_t len = strlen(s);
        for (size_t e = 1; e <= len; e++) {
            if (e != len && s[e] != '.')
                continue;
            for (size_t b = 0; b < e; b++) {
                struct subentry *se = &p->sub[p->n_sub];
                se->s = s + b;
                se->len = (uint32_t)(e - b);
                se->hash = hash_str(se->s, se->len);
                se->member = p->members[i];
                se->next = p->sub_head[se->hash & p->sub_mask];
                p->sub_head[se->hash & p->sub_mask] = p->n_sub++;
            }
        }
    }
    return BM_OK;
}

static void mark_inside(planner *p, int32_t ti)
{
    if (p->tmark[ti] == p->gen)
        return;
    p->tmark[ti] = p->gen;
    p->inside[p->n_inside++] = ti;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The tied groups relevant to entry o (some member inside, some not) and
 * the members outside it, in group order (accelerate's tied_params). */
static void tie_outside(planner *p, int32_t o)
{
    p->n_inside = p->n_rel = p->n_outside = 0;
    if (p->tied.n == 0)
        return;
    p->gen++;
    if (p->gen == 0) {
        memset(p->tmark, 0, (size_t)p->nt * sizeof *p->tmark);
        memset(p->gmark, 0, (size_t)p->tied.n * sizeof *p->gmark);
        p->gen = 1;
    }
    if (p->substring_inside) {
        /* name + "." occurs in member + "." */
        const char *name = obj_name(p, o);
        size_t len = strlen(name);
        uint32_t h = hash_str(name, len);
        for (int32_t i = p->sub_head[h & p->sub_mask]; i >= 0; i = p->sub[i].next) {
            const struct subentry *se = &p->sub[i];
            if (se->hash == h && se->len == len && memcmp(se->s, name, len) == 0)
                mark_inside(p, se->member);
        }
    } else if (is_mod(p, o)) {
        /* members in the module's subtree: a range of tensor indices */
        const bm_module *m = &p->tree->modules[o];
        int32_t lo = 0, hi = p->n_members;
        while (lo < hi) {
            int32_t mid = (lo + hi) / 2;
            if (p->members[mid] < m->tensor_begin)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (int32_t i = lo; i < p->n_members && p->members[i] < m->subtree_tensor_end; i++)
            mark_inside(p, p->members[i]);
    } else if (p->member_group[o - p->nm] != BM_NONE) {
        mark_inside(p, o - p->nm);
    }
    for (int32_t i = 0; i < p->n_inside; i++) {
        int32_t g = p->member_group[p->inside[i]];
        if (p->gmark[g] != p->gen) {
            p->gmark[g] = p->gen;
            p->gcount[g] = 0;
            p->rel[p->n_rel++] = g;
        }
        p->gcount[g]++;
    }
    int32_t k = 0;
    for (int32_t i = 0; i < p->n_rel; i++)
        if (p->gcount[p->rel[i]] < p->tied.groups[p->rel[i]].n)
            p->rel[k++] = p->rel[i];
    p->n_rel = k;
    qsort(p->rel, (size_t)p->n_rel, sizeof *p->rel, cmp_i32);
    for (int32_t i = 0; i < p->n_rel; i++) {
        const bm_tied_group *g = &p->tied.groups[p->rel[i]];
        for (int32_t j = 0; j < g->n; j++)
            if (p->tmark[g->tensors[j]] != p->gen)
                p->outside[p->n_outside++] = g->tensors[j];
    }
}

/* The node of a module or tensor named s[0..len) that is in the work list. */
static int32_t queued_named(const planner *p, const char *s, size_t len)
{
    int32_t m = bm_tree_find_module_n(p->tree, s, len);
    if (m != BM_NONE && p->nodes[m].in_q)
        return m;
    int32_t t = bm_tree_find_tensor_n(p->tree, s, len);
    if (t != BM_NONE && p->nodes[p->nm + t].in_q)
        return p->nm + t;
    return BM_NONE;
}

/* The entry of the work list that accelerate takes as the module holding
 * tied parameter ti, or BM_NONE (accelerate: IndexError). */
static int32_t tied_holder(planner *p, int32_t ti)
{
    const char *t = p->tree->tensors[ti].name;
    size_t len = strlen(t);
    if (p->lookup == LOOKUP_SUBSTRING) {
        /* 0.27: the first entry whose name is a substring of t */
        if (len * (len + 1) / 2 > (size_t)p->qlen) {
            for (int32_t o = p->head; o >= 0; o = p->nodes[o].next)
                if (memmem(t, len, obj_name(p, o), strlen(obj_name(p, o))))
                    return o;
            return BM_NONE;
        }
        int32_t best = BM_NONE;
        for (size_t b = 0; b < len; b++)
            for (size_t e = b + 1; e <= len; e++) {
                int32_t o = queued_named(p, t + b, e - b);
                if (o != BM_NONE && (best == BM_NONE || p->nodes[o].pos < p->nodes[best].pos))
                    best = o;
            }
        return best;
    }
    /* 1.x: the entry that is a proper dotted prefix (at most one: entries
     * are disjoint); bmplan: or the tensor itself */
    for (size_t e = 1; e < len; e++)
        if (t[e] == '.') {
            int32_t m = bm_tree_find_module_n(p->tree, t, e);
            if (m != BM_NONE && p->nodes[m].in_q)
                return m;
        }
    if (p->lookup == LOOKUP_PREFIX_OR_SELF && p->nodes[p->nm + ti].in_q)
        return p->nm + ti;
    return BM_NONE;
}

/* ------------------------------------------------------------------------
 * Placement
 * ------------------------------------------------------------------------ */

static void place(planner *p, int32_t o, int k)
{
    if (p->slot[o] >= 0) {
        p->placed_dev[p->slot[o]] = k; /* an OrderedDict update keeps the position */
        return;
    }
    p->slot[o] = p->n_placed;
    p->placed_obj[p->n_placed] = o;
    p->placed_dev[p->n_placed] = k;
    p->n_placed++;
}

/* Replace tied module x of the work list by its expansion, in place, and put
 * entry e back in front (accelerate: [e] + Q[:i] + children + Q[i+1:]). */
static void tie_split(planner *p, int32_t e, int32_t x)
{
    int32_t n = expansion(p, x);
    int32_t after = p->nodes[x].prev;
    q_unlink(p, x);
    for (int32_t i = 0; i < n; i++) {
        q_link_after(p, after, p->scratch[i]);
        after = p->scratch[i];
    }
    q_push_front(p, e);
    if (p->lookup == LOOKUP_SUBSTRING)
        q_relabel(p);
    recompute(p);
}

static void split_entry(planner *p, int32_t e)
{
    int32_t n = expansion(p, e);
    for (int32_t i = n - 1; i >= 0; i--)
        q_push_front(p, p->scratch[i]);
    recompute(p);
}

static bm_status crash_index(planner *p, int32_t e, int32_t ti)
{
    return bm_fail(p->err, BM_E_COMPAT,
                   "%s raises IndexError (list index out of range) in "
                   "infer_auto_device_map: no entry left to place holds tied "
                   "parameter '%.200s' (tied to '%.200s', %s); use --compat bmplan",
                   compat_name(p->compat), p->tree->tensors[ti].name, obj_name(p, e),
                   p->lookup == LOOKUP_SUBSTRING
                       ? "accelerate 0.27 matches names by substring"
                       : "it was already placed or split below its holder");
}

static bm_status crash_tensor_split(planner *p, int32_t o, bool tied)
{
    bool buffer = !is_mod(p, o) && p->tree->tensors[o - p->nm].is_buffer;
    return bm_fail(p->err, BM_E_COMPAT,
                   "%s raises AttributeError ('%s' object has no attribute "
                   "'named_children') in infer_auto_device_map: %s '%.200s' "
                   "%s; use --compat bmplan",
                   compat_name(p->compat), buffer ? "Tensor" : "Parameter",
                   buffer ? "buffer" : "parameter", obj_name(p, o),
                   tied ? "is a tied partner that would have to be split"
                        : "does not fit on the current device");
}

/* Resolve the tied modules of the outside names; W = size with ties. */
static bm_status resolve_ties(planner *p, int32_t e, pynum size, pynum *W)
{
    *W = size;
    p->n_T = 0;
    for (int32_t i = 0; i < p->n_outside; i++) {
        int32_t ti = p->outside[i];
        int32_t h = tied_holder(p, ti);
        if (h == BM_NONE) {
            if (p->compat != BM_COMPAT_BMPLAN)
                return crash_index(p, e, ti);
            continue; /* already placed with it: nothing more to count */
        }
        if (p->compat == BM_COMPAT_BMPLAN) {
            bool dup = false;
            for (int32_t j = 0; j < p->n_T; j++)
                dup |= p->T[j] == h;
            if (dup)
                continue;
            p->T[p->n_T++] = h;
            *W = pn_add(*W, obj_size(p, h)); /* each tensor counted once */
        } else {
            p->T[p->n_T++] = h;
            /* S[tied module] - S[tied param], once per tied param */
            *W = pn_add(*W, pn_sub(obj_size(p, h), obj_size(p, p->nm + ti)));
        }
    }
    return BM_OK;
}

static void place_with_ties(planner *p, int32_t e, int k)
{
    place(p, e, k);
    for (int32_t i = 0; i < p->n_T; i++) {
        if (p->nodes[p->T[i]].in_q)
            q_unlink(p, p->T[i]);
        place(p, p->T[i], k);
    }
}

/* Try to split one of the tied modules (first splittable in order). */
static bm_status try_tie_split(planner *p, int32_t e, bool *split)
{
    *split = false;
    for (int32_t i = 0; i < p->n_T; i++) {
        int32_t x = p->T[i];
        if (!is_mod(p, x)) {
            if (p->compat != BM_COMPAT_BMPLAN)
                return crash_tensor_split(p, x, true);
            continue;
        }
        if (!splittable(p, x))
            continue;
        if (p->vlog) {
            bm_sb_printf(&p->line, "Splitting %s.", obj_name(p, x));
            log_flush(p);
        }
        tie_split(p, e, x);
        *split = true;
        return BM_OK;
    }
    if (p->vlog) {
        bm_sb_str(&p->line, "None of the tied module can be split, going to the next device.");
        log_flush(p);
    }
    return BM_OK;
}

static void next_device(planner *p, int32_t e, int *k, pynum *used)
{
    (*k)++;
    q_push_front(p, e);
    *used = (pynum){0, false};
}

static void log_not_enough(planner *p, int k, int32_t e, pynum avail, pynum size)
{
    bm_sb_str(&p->line, "Not enough space on ");
    log_dev(p, k);
    bm_sb_printf(&p->line, " to put %s (space available ", obj_name(p, e));
    log_num(p, avail);
    bm_sb_str(&p->line, ", module size ");
    log_num(p, size);
    bm_sb_str(&p->line, ").");
    log_flush(p);
}

static void log_not_enough_ties(planner *p, int k, int32_t e, pynum avail, pynum W)
{
    bm_sb_str(&p->line, "Not enough space on ");
    log_dev(p, k);
    bm_sb_printf(&p->line, " to put %s and ", obj_name(p, e));
    log_names(p, p->T, p->n_T);
    bm_sb_str(&p->line, " (space available ");
    log_num(p, avail);
    bm_sb_str(&p->line, ", needed size ");
    log_num(p, W);
    bm_sb_str(&p->line, ").");
    log_flush(p);
}

/* A layer of size R still waiting in the work list, for the report: the
 * first one, looked for within a bounded number of steps. */
static int32_t waiting_layer(planner *p)
{
    int steps = 0;
    for (int32_t o = p->head; o >= 0 && steps < 4096; o = p->nodes[o].next, steps++)
        if (is_mod(p, o) && p->lmax[o] == p->R)
            return p->llayer[o];
    return p->R_layer;
}

/* One decision: entry e on device k. */
typedef struct step {
    int32_t e;
    int k;
    pynum size;
    bool has_cap; /* false on disk: no limit */
    pynum cap;    /* budget, minus the reservation on main devices */
    pynum avail;  /* cap - used, for the log */
} step;

static void log_putting(planner *p, const step *s, bool with_ties_027)
{
    if (with_ties_027) {
        /* 0.27: "Putting x and [...] on d." */
        bm_sb_printf(&p->line, "Putting %s and ", obj_name(p, s->e));
        log_names(p, p->T, p->n_T);
        bm_sb_str(&p->line, " on ");
        log_dev(p, s->k);
    } else if (p->compat == BM_COMPAT_LATEST) {
        bm_sb_printf(&p->line, "Putting %s", obj_name(p, s->e));
        if (p->n_T) {
            bm_sb_str(&p->line, " and ");
            log_names(p, p->T, p->n_T);
        } else {
            bm_sb_str(&p->line, " (size=");
            log_num(p, s->size);
            bm_sb_str(&p->line, ")");
        }
        if (s->has_cap) {
            bm_sb_str(&p->line, " (available=");
            log_num(p, s->avail);
            bm_sb_str(&p->line, ")");
        }
        bm_sb_str(&p->line, " on ");
        log_dev(p, s->k);
    } else {
        bm_sb_printf(&p->line, "Putting %s (size=", obj_name(p, s->e));
        log_num(p, s->size);
        bm_sb_str(&p->line, ") on ");
        log_dev(p, s->k);
        if (s->has_cap) {
            bm_sb_str(&p->line, " (available=");
            log_num(p, s->avail);
            bm_sb_str(&p->line, ")");
        }
    }
    bm_sb_str(&p->line, ".");
    log_flush(p);
}

static void log_ties(planner *p)
{
    const bm_tree *tree = p->tree;
    if (p->n_rel > 0) {
        bm_sb_str(&p->line, "  Found the relevant tied param groups [");
        for (int32_t i = 0; i < p->n_rel; i++) {
            const bm_tied_group *g = &p->tied.groups[p->rel[i]];
            bm_sb_str(&p->line, i ? ", [" : "[");
            for (int32_t j = 0; j < g->n; j++) {
                if (j)
                    bm_sb_str(&p->line, ", ");
                bm_sb_pyrepr(&p->line, tree->tensors[g->tensors[j]].name);
            }
            bm_sb_str(&p->line, "]");
        }
        bm_sb_str(&p->line, "]");
        log_flush(p);
    }
    if (p->n_outside > 0) {
        bm_sb_str(&p->line, "  So those parameters need to be taken into account [");
        for (int32_t i = 0; i < p->n_outside; i++) {
            if (i)
                bm_sb_str(&p->line, ", ");
            bm_sb_pyrepr(&p->line, tree->tensors[p->outside[i]].name);
        }
        bm_sb_str(&p->line, "]");
        log_flush(p);
    }
}

/* Split entry e (a module that does not fit) or move to the next device. */
static void split_or_move(planner *p, const step *s, int *k, pynum *used)
{
    if (splittable(p, s->e)) {
        if (p->vlog) {
            bm_sb_printf(&p->line, "Splitting %s.", obj_name(p, s->e));
            log_flush(p);
        }
        split_entry(p, s->e);
        return;
    }
    if (p->vlog) {
        bm_sb_str(&p->line, "This module cannot be split, going to the next device.");
        log_flush(p);
    }
    next_device(p, s->e, k, used);
}

/* accelerate 1.x (1.2+): sizes with ties first; fit; else split a tied
 * module; else split e when used + size >= cap; else next device. */
static bm_status step_latest(planner *p, const step *s, int *k, pynum *used)
{
    pynum W;
    bm_status st = resolve_ties(p, s->e, s->size, &W);
    if (st)
        return st;
    if (!s->has_cap || pn_add(*used, W).b <= s->cap.b) {
        if (p->vlog)
            log_putting(p, s, false);
        *used = pn_add(*used, W);
        place_with_ties(p, s->e, s->k);
        return BM_OK;
    }
    if (p->n_outside > 0 && pn_add(*used, s->size).b <= s->cap.b) {
        if (p->vlog)
            log_not_enough_ties(p, s->k, s->e, s->avail, W);
        bool split;
        if ((st = try_tie_split(p, s->e, &split)) || split)
            return st;
    }
    if (pn_add(*used, s->size).b >= s->cap.b) {
        if (p->vlog)
            log_not_enough(p, s->k, s->e, s->avail, s->size);
        split_or_move(p, s, k, used);
        return BM_OK;
    }
    next_device(p, s->e, k, used);
    return BM_OK;
}

/* accelerate 0.27.2, and bmplan: too big -> split or next device; fits with
 * tied partners -> place them together, else split a tied module or move
 * on; fits -> place. */
static bm_status step_027(planner *p, const step *s, int *k, pynum *used)
{
    const bm_tree *tree = p->tree;
    bm_status st;
    if (s->has_cap && pn_add(*used, s->size).b > s->cap.b) {
        if (p->compat == BM_COMPAT_0_27 && !is_mod(p, s->e) &&
            tree->tensors[s->e - p->nm].is_buffer)
            return crash_tensor_split(p, s->e, false);
        if (p->vlog)
            log_not_enough(p, s->k, s->e, s->avail, s->size);
        split_or_move(p, s, k, used);
        return BM_OK;
    }
    if (p->n_outside == 0) {
        if (p->vlog)
            log_putting(p, s, false);
        *used = pn_add(*used, s->size);
        place(p, s->e, s->k);
        return BM_OK;
    }
    pynum W;
    if ((st = resolve_ties(p, s->e, s->size, &W)))
        return st;
    if (p->vlog) {
        bm_sb_printf(&p->line, "  It looks like %s is going to fit on ", obj_name(p, s->e));
        log_dev(p, s->k);
        bm_sb_str(&p->line, " but we have tied parameters to account for.\n  - Names [");
        for (int32_t i = 0; i < p->n_outside; i++) {
            if (i)
                bm_sb_str(&p->line, ", ");
            bm_sb_pyrepr(&p->line, tree->tensors[p->outside[i]].name);
        }
        bm_sb_str(&p->line, "]\n  - Module names ");
        log_names(p, p->T, p->n_T);
        log_flush(p);
    }
    if (!s->has_cap || pn_add(*used, W).b <= s->cap.b) {
        if (p->vlog)
            log_putting(p, s, true);
        *used = pn_add(*used, W);
        place_with_ties(p, s->e, s->k);
        return BM_OK;
    }
    if (p->vlog)
        log_not_enough_ties(p, s->k, s->e, s->avail, W);
    bool split;
    if ((st = try_tie_split(p, s->e, &split)))
        return st;
    if (!split)
        next_device(p, s->e, k, used);
    return BM_OK;
}

/* The first reservation: over the initial entries, top-level tensors
 * counting as layers. */
static void first_reservation(planner *p)
{
    p->R = 0;
    p->R_f = false;
    p->rn = 0;
    p->R_layer = BM_NONE;
    for (int32_t o = p->head; o >= 0; o = p->nodes[o].next) {
        uint64_t v = is_mod(p, o) ? p->lmax[o] : p->tbits[o - p->nm];
        int64_t c = is_mod(p, o) ? (int64_t)p->lcnt[o] : 1;
        int32_t layer = is_mod(p, o) ? p->llayer[o] : o;
        if (v > p->R) {
            p->R = v;
            p->rn = c;
            p->R_layer = layer;
            p->R_f = obj_size(p, layer).f;
        } else if (v == p->R) {
            p->rn += c;
            if (p->R_layer == BM_NONE)
                p->R_layer = layer;
        }
    }
    p->rc_stamp = ++p->clock;
    p->rc_tensors = true;
}

static bm_status run(planner *p)
{
    const bm_tree *tree = p->tree;
    const bm_module *root = &tree->modules[0];
    /* the root's parameters, children, then all its buffers */
    for (int32_t i = 0; i < root->n_params; i++)
        q_push_back(p, p->nm + root->tensor_begin + i);
    for (int32_t c = root->first_child; c != BM_NONE; c = tree->modules[c].next_sibling)
        q_push_back(p, c);
    for (int32_t i = 0; i < root->n_buffers; i++)
        q_push_back(p, p->nm + root->tensor_begin + root->n_params + i);
    first_reservation(p);

    int k = 0;
    pynum used = {0, false};
    while (p->head >= 0) {
        int32_t e = p->head;
        bool counted = p->nodes[e].stamp < p->rc_stamp;
        q_unlink(p, e);
        if (p->vlog) {
            bm_sb_printf(&p->line, "\nTreating module %s.", obj_name(p, e));
            log_flush(p);
        }
        /* the reservation's layers below e leave it; when none is left,
         * it is recomputed over the modules still waiting */
        if (counted) {
            if (is_mod(p, e)) {
                if (p->lmax[e] == p->R)
                    p->rn -= (int64_t)p->lcnt[e];
            } else if (p->rc_tensors && p->tbits[e - p->nm] == p->R) {
                p->rn -= 1;
            }
        }
        if (p->rn <= 0)
            recompute(p);
        tie_outside(p, e);
        if (p->vlog)
            log_ties(p);
        if (k >= p->ndev)
            return bm_fail(p->err, BM_E_INTERNAL, "planner ran past the last device");
        if (p->is_main[k] && (int64_t)p->R > p->reserved[k]) {
            /* the most room this device kept, and for what (report) */
            p->reserved[k] = (int64_t)p->R;
            p->reserved_for[k] = waiting_layer(p);
        }
        step s = {.e = e, .k = k, .size = obj_size(p, e), .has_cap = p->has_budget[k],
                  .cap = p->budget[k]};
        if (s.has_cap && p->is_main[k])
            s.cap = pn_sub(s.cap, (pynum){(int64_t)p->R, p->R_f});
        s.avail = pn_sub(s.cap, used);
        bm_status st = p->compat == BM_COMPAT_LATEST ? step_latest(p, &s, &k, &used)
                                                     : step_027(p, &s, &k, &used);
        if (st)
            return st;
    }
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * clean_device_map
 * ------------------------------------------------------------------------ */

/*
 * accelerate merges, top-down from "", every module whose keys (two or more)
 * all have one device, and re-appends the merged key at the end. The keys
 * under a module are untouched until it is visited, so a module merges iff
 * no ancestor merged and its ORIGINAL keys qualify. Merged keys are appended
 * in visit order: depth first, over the children of each module (the
 * distinct one-level-deeper prefixes of its keys), which accelerate iterates
 * as a Python set. The compat modes reproduce that set's order under
 * PYTHONHASHSEED=0 (how the reference maps were made); bmplan iterates
 * children in order of first appearance (the corpus' canonical order).
 */
static bm_status final_key(planner *p, bm_devmap *out, int32_t o, int32_t k)
{
    p->final_obj[p->n_final] = o;
    p->final_dev[p->n_final++] = k;
    return bm_devmap_set(out, obj_name(p, o), p->dev[k], p->err);
}

static bm_status clean_map(planner *p, bm_devmap *out)
{
    int32_t nm = p->nm;
    size_t nobj = (size_t)nm + (size_t)p->nt;
    bool python_order = p->compat != BM_COMPAT_BMPLAN;
    int32_t *cnt = calloc((size_t)nm, sizeof *cnt);
    int32_t *val = malloc((size_t)nm * sizeof *val); /* -1 none, -2 mixed */
    uint8_t *seen = calloc(nobj, 1);
    int32_t *kid_head = malloc((size_t)nm * sizeof *kid_head);
    int32_t *kid_tail = malloc((size_t)nm * sizeof *kid_tail);
    int32_t *kid_next = malloc(nobj * sizeof *kid_next);
    uint8_t *merged = calloc((size_t)nm, 1);
    uint8_t *blocked = calloc((size_t)nm, 1);
    int32_t *stack = malloc((size_t)(nm + 1) * sizeof *stack);
    int32_t *kids = malloc(nobj * sizeof *kids);
    bm_pyset set;
    memset(&set, 0, sizeof set);
    bm_status st = BM_OK;
    if (!cnt || !val || !seen || !kid_head || !kid_tail || !kid_next || !merged ||
        !blocked || !stack || !kids) {
        st = nomem(p);
        goto done;
    }
    for (int32_t m = 0; m < nm; m++) {
        val[m] = -1;
        kid_head[m] = kid_tail[m] = -1;
    }
    /* keys strictly below each module: count and common device */
    for (int32_t i = 0; i < p->n_placed; i++) {
        int32_t o = p->placed_obj[i];
        int32_t at = is_mod(p, o) ? p->tree->modules[o].parent : p->tree->tensors[o - nm].module;
        if (at == BM_NONE)
            continue;
        cnt[at]++;
        int32_t d = p->placed_dev[i];
        val[at] = val[at] == -1 ? d : (val[at] == d ? d : -2);
    }
    for (int32_t m = nm - 1; m > 0; m--) {
        int32_t par = p->tree->modules[m].parent;
        cnt[par] += cnt[m];
        if (val[m] != -1)
            val[par] = val[par] == -1 ? val[m] : (val[par] == val[m] ? val[m] : -2);
    }
    for (int32_t m = 0; m < nm; m++) {
        if (m > 0) {
            int32_t par = p->tree->modules[m].parent;
            blocked[m] = blocked[par] || merged[par];
        }
        merged[m] = !blocked[m] && cnt[m] >= 2 && val[m] >= 0;
    }
    /* children (modules and tensor keys) in order of first appearance */
    for (int32_t i = 0; i < p->n_placed; i++) {
        int32_t x = p->placed_obj[i];
        while (x != 0 && !seen[x]) {
            seen[x] = 1;
            int32_t par = is_mod(p, x) ? p->tree->modules[x].parent : p->tree->tensors[x - nm].module;
            kid_next[x] = -1;
            if (kid_tail[par] < 0)
                kid_head[par] = x;
            else
                kid_next[kid_tail[par]] = x;
            kid_tail[par] = x;
            x = par;
        }
    }
    /* keys that stay, in their order */
    for (int32_t i = 0; i < p->n_placed && !st; i++) {
        int32_t o = p->placed_obj[i];
        bool under = is_mod(p, o) ? blocked[o]
                                  : (blocked[p->tree->tensors[o - nm].module] ||
                                     merged[p->tree->tensors[o - nm].module]);
        if (!under)
            st = final_key(p, out, o, p->placed_dev[i]);
    }
    /* merged modules, in visit order */
    int32_t sp = 0;
    if (!st && p->n_placed > 0)
        stack[sp++] = 0;
    while (sp > 0 && !st) {
        int32_t m = stack[--sp];
        if (merged[m]) {
            st = final_key(p, out, m, val[m]);
            continue;
        }
        int32_t nk = 0;
        if (python_order && kid_head[m] >= 0) {
            bm_pyset_free(&set);
            if ((st = bm_pyset_init(&set, p->err)))
                break;
            for (int32_t c = kid_head[m]; c >= 0 && !st; c = kid_next[c])
                st = bm_pyset_add(&set, c, bm_py_str_hash(obj_name(p, c)), p->err);
            for (size_t i = 0; i <= set.mask; i++)
                if (set.slots[i] >= 0)
                    kids[nk++] = set.slots[i];
        } else {
            for (int32_t c = kid_head[m]; c >= 0; c = kid_next[c])
                kids[nk++] = c;
        }
        /* push module children in reverse so they pop in order */
        for (int32_t j = nk - 1; j >= 0; j--)
            if (is_mod(p, kids[j]))
                stack[sp++] = kids[j];
    }
done:
    bm_pyset_free(&set);
    free(cnt);
    free(val);
    free(seen);
    free(kid_head);
    free(kid_tail);
    free(kid_next);
    free(merged);
    free(blocked);
    free(stack);
    free(kids);
    return st;
}

/* ------------------------------------------------------------------------
 * Setup
 * ------------------------------------------------------------------------ */

static void planner_free(planner *p)
{
    free(p->mbits);
    free(p->tbits);
    free(p->mfloat);
    free(p->tfloat);
    free(p->nosplit);
    free(p->lmax);
    free(p->lcnt);
    free(p->llayer);
    free(p->nodes);
    free(p->bk);
    free(p->heap);
    bm_tied_free(&p->tied);
    free(p->member_group);
    free(p->members);
    free(p->sub);
    free(p->sub_head);
    free(p->tmark);
    free(p->gmark);
    free(p->gcount);
    free(p->inside);
    free(p->rel);
    free(p->outside);
    free(p->T);
    free(p->scratch);
    free(p->placed_obj);
    free(p->placed_dev);
    free(p->final_obj);
    free(p->final_dev);
    free(p->slot);
    free(p->dev);
    free(p->budget);
    free(p->has_budget);
    free(p->is_main);
    free(p->reserved);
    free(p->reserved_for);
    free(p->line.p);
}

/* Python-float flags of sizes: accelerate's sizes are floats when a tensor
 * weighs a fractional number of bytes per element (bool, int4, int2). */
static void size_flags(planner *p, const bm_size_opts *so)
{
    const bm_tree *t = p->tree;
    for (int32_t i = 0; i < p->nt; i++) {
        const bm_tensor *x = &t->tensors[i];
        bool f = false;
        if (x->alias_of == BM_NONE) {
            if (x->numel > 0)
                f = (p->tbits[i] / x->numel) % 8 != 0;
            else {
                unsigned b = 8;
                bm_dtype d = x->dtype;
                for (int s = 0; s < so->n_special; s++)
                    if (strcmp(so->special_names[s], x->name) == 0)
                        d = so->special_dtypes[s];
                if (bm_dtype_accel_bits(d, so->compat, &b, NULL) == BM_OK)
                    f = b % 8 != 0;
            }
        }
        p->tfloat[i] = f;
        if (f)
            p->mfloat[x->module] = 1;
    }
    for (int32_t m = p->nm - 1; m > 0; m--)
        if (p->mfloat[m])
            p->mfloat[t->modules[m].parent] = 1;
}

bm_status bm_plan_infer(const bm_tree *tree, const bm_plan_opts *opts,
                        bm_plan **out, bm_error *err)
{
    *out = NULL;
    if (!tree || !opts || !opts->budgets)
        return bm_fail(err, BM_E_INTERNAL, "bm_plan_infer: missing arguments");
    if (tree->n_modules < 1)
        return bm_fail(err, BM_E_INVALID, "the model has no root module");
    planner P;
    memset(&P, 0, sizeof P);
    planner *p = &P;
    p->tree = tree;
    p->opts = opts;
    p->compat = opts->compat;
    p->err = err;
    p->vlog = opts->verbose;
    p->substring_inside = opts->compat != BM_COMPAT_BMPLAN;
    p->lookup = opts->compat == BM_COMPAT_0_27   ? LOOKUP_SUBSTRING
                : opts->compat == BM_COMPAT_LATEST ? LOOKUP_PREFIX
                                                   : LOOKUP_PREFIX_OR_SELF;
    p->keep_buffers = opts->compat == BM_COMPAT_BMPLAN;
    p->nm = tree->n_modules;
    p->nt = tree->n_tensors;
    p->head = p->tail = -1;
    int32_t nm = p->nm, nt = p->nt;
    size_t nobj = (size_t)nm + (size_t)nt;
    bm_plan *plan = NULL;
    bm_budgets balanced;
    bm_budgets_init(&balanced);
    bm_status st = BM_OK;

    p->mbits = malloc((size_t)nm * sizeof *p->mbits);
    p->tbits = malloc((size_t)(nt ? nt : 1) * sizeof *p->tbits);
    p->mfloat = calloc((size_t)nm, 1);
    p->tfloat = calloc((size_t)(nt ? nt : 1), 1);
    p->nosplit = calloc((size_t)nm, 1);
    p->lmax = malloc((size_t)nm * sizeof *p->lmax);
    p->lcnt = malloc((size_t)nm * sizeof *p->lcnt);
    p->llayer = malloc((size_t)nm * sizeof *p->llayer);
    p->nodes = calloc(nobj, sizeof *p->nodes);
    p->scratch = malloc(nobj * sizeof *p->scratch);
    p->placed_obj = malloc(nobj * sizeof *p->placed_obj);
    p->placed_dev = malloc(nobj * sizeof *p->placed_dev);
    p->final_obj = malloc((nobj + 1) * sizeof *p->final_obj);
    p->final_dev = malloc((nobj + 1) * sizeof *p->final_dev);
    p->slot = malloc(nobj * sizeof *p->slot);
    uint32_t bcap = 4;
    while (bcap < (uint32_t)nm * 2 + 2)
        bcap <<= 1;
    p->bk = calloc(bcap, sizeof *p->bk);
    p->bkmask = bcap - 1;
    p->heap = malloc(((size_t)nm + 1) * sizeof *p->heap);
    if (!p->mbits || !p->tbits || !p->mfloat || !p->tfloat || !p->nosplit || !p->lmax ||
        !p->lcnt || !p->llayer || !p->nodes || !p->scratch || !p->placed_obj ||
        !p->placed_dev || !p->final_obj || !p->final_dev || !p->slot || !p->bk || !p->heap) {
        st = nomem(p);
        goto fail;
    }
    for (size_t i = 0; i < nobj; i++) {
        p->nodes[i].prev = p->nodes[i].next = -1;
        p->slot[i] = -1;
    }

    /* sizes */
    bm_size_opts so = {
        .dtype = opts->dtype,
        .n_special = opts->n_special,
        .special_names = opts->special_names,
        .special_dtypes = opts->special_dtypes,
        .compat = opts->compat,
    };
    if ((st = bm_tree_sizes(tree, &so, p->mbits, p->tbits, err)))
        goto fail;
    if (p->mbits[0] > (UINT64_C(1) << 60)) {
        st = bm_fail(err, BM_E_OVERFLOW, "the model is too large to plan (%llu bytes)",
                     (unsigned long long)(p->mbits[0] / 8));
        goto fail;
    }
    size_flags(p, &so);
    for (int32_t m = 0; m < nm; m++)
        p->nosplit[m] = bm_class_in(tree->modules[m].cls, opts->no_split, opts->n_no_split);
    /* largest layer below each module, how many share it, and the first */
    for (int32_t m = nm - 1; m >= 0; m--) {
        const bm_module *mod = &tree->modules[m];
        if (mod->n_children == 0 || p->nosplit[m]) {
            p->lmax[m] = p->mbits[m];
            p->lcnt[m] = 1;
            p->llayer[m] = m;
            continue;
        }
        p->lmax[m] = 0;
        p->lcnt[m] = 0;
        p->llayer[m] = BM_NONE;
        for (int32_t c = mod->first_child; c != BM_NONE; c = tree->modules[c].next_sibling) {
            if (p->llayer[m] == BM_NONE || p->lmax[c] > p->lmax[m]) {
                p->lmax[m] = p->lmax[c];
                p->lcnt[m] = p->lcnt[c];
                p->llayer[m] = p->llayer[c];
            } else if (p->lmax[c] == p->lmax[m]) {
                p->lcnt[m] += p->lcnt[c];
            }
        }
    }

    /* budgets: balanced first, then the device list */
    const bm_budgets *bud = opts->budgets;
    if (opts->strategy != BM_STRATEGY_SEQUENTIAL) {
        if ((st = bm_balanced_budgets(tree, p->mbits, p->tbits, opts->budgets, opts->no_split,
                                      opts->n_no_split,
                                      opts->strategy == BM_STRATEGY_BALANCED_LOW_0,
                                      opts->compat, &balanced, err)))
            goto fail;
        bud = &balanced;
    }
    int ndev = bud->n + (bm_budgets_find(bud, (bm_device){BM_DEV_DISK, 0}) < 0);
    p->ndev = ndev;
    p->dev = calloc((size_t)ndev, sizeof *p->dev);
    p->budget = calloc((size_t)ndev, sizeof *p->budget);
    p->has_budget = calloc((size_t)ndev, sizeof *p->has_budget);
    p->is_main = calloc((size_t)ndev, sizeof *p->is_main);
    p->reserved = calloc((size_t)ndev, sizeof *p->reserved);
    p->reserved_for = malloc((size_t)ndev * sizeof *p->reserved_for);
    if (!p->dev || !p->budget || !p->has_budget || !p->is_main || !p->reserved ||
        !p->reserved_for) {
        st = nomem(p);
        goto fail;
    }
    bool has_mps = false;
    int first_gpu = -1;
    for (int i = 0; i < bud->n; i++) {
        p->dev[i] = bud->e[i].dev;
        p->budget[i] = (pynum){bud->e[i].bits, bud->e[i].py_float};
        p->has_budget[i] = bud->e[i].dev.kind != BM_DEV_DISK;
        if (bud->e[i].dev.kind == BM_DEV_MPS)
            has_mps = true;
        if ((bud->e[i].dev.kind == BM_DEV_GPU || bud->e[i].dev.kind == BM_DEV_MPS) &&
            first_gpu < 0)
            first_gpu = i;
    }
    if (ndev > bud->n)
        p->dev[ndev - 1] = (bm_device){BM_DEV_DISK, 0};
    for (int i = 0; i < ndev; i++) {
        p->reserved_for[i] = BM_NONE;
        bm_device_kind kd = p->dev[i].kind;
        if (has_mps)
            p->is_main[i] = kd == BM_DEV_MPS;
        else if (first_gpu >= 0)
            p->is_main[i] = i == first_gpu || kd == BM_DEV_CPU;
        else
            p->is_main[i] = kd == BM_DEV_CPU;
    }

    if ((st = ties_init(p)))
        goto fail;
    if ((st = run(p)))
        goto fail;

    plan = calloc(1, sizeof *plan);
    if (!plan || !(plan->map = bm_devmap_new())) {
        st = nomem(p);
        goto fail;
    }
    if (opts->no_clean) {
        for (int32_t i = 0; i < p->n_placed && !st; i++)
            st = final_key(p, plan->map, p->placed_obj[i], p->placed_dev[i]);
    } else {
        st = clean_map(p, plan->map);
    }
    if (st)
        goto fail;

    /* what each device receives, from the map itself */
    plan->devices = calloc((size_t)ndev, sizeof *plan->devices);
    if (!plan->devices) {
        st = nomem(p);
        goto fail;
    }
    plan->n_devices = ndev;
    plan->total_bits = p->mbits[0];
    /* each tensor's device: its own key, else its nearest module key */
    int32_t *own = malloc(nobj * sizeof *own);
    if (!own) {
        st = nomem(p);
        goto fail;
    }
    for (size_t i = 0; i < nobj; i++)
        own[i] = -1;
    for (int32_t i = 0; i < p->n_final; i++)
        own[p->final_obj[i]] = p->final_dev[i];
    for (int32_t m = 1; m < nm; m++)
        if (own[m] < 0)
            own[m] = own[tree->modules[m].parent];
    for (int32_t ti = 0; ti < nt; ti++) {
        int32_t k = own[nm + ti] >= 0 ? own[nm + ti] : own[tree->tensors[ti].module];
        if (k >= 0)
            plan->devices[k].placed_bits += p->tbits[ti];
    }
    free(own);
    for (int i = 0; i < ndev; i++) {
        bm_plan_device *d = &plan->devices[i];
        d->dev = p->dev[i];
        d->has_budget = p->has_budget[i];
        d->budget_bits = p->budget[i].b;
        int gi = bm_budgets_find(opts->budgets, p->dev[i]);
        d->given_bits = gi >= 0 ? opts->budgets->e[gi].bits : 0;
        d->main_device = p->is_main[i];
        d->reserved_bits = p->reserved[i];
        d->reserved_for = p->reserved_for[i] == BM_NONE ? NULL : obj_name(p, p->reserved_for[i]);
    }
    plan->tied = p->tied;
    p->tied.groups = NULL;
    p->tied.n = 0;
    bm_budgets_free(&balanced);
    planner_free(p);
    *out = plan;
    return BM_OK;
fail:
    bm_budgets_free(&balanced);
    bm_plan_free(plan);
    planner_free(p);
    return st;
}

void bm_plan_free(bm_plan *plan)
{
    if (!plan)
        return;
    bm_devmap_free(plan->map);
    free(plan->devices);
    bm_tied_free(&plan->tied);
    free(plan);
}

void bm_plan_print_report(const bm_plan *plan, FILE *out)
{
    char dev[32], a[32], b[32], c[32];
    fprintf(out, "%-8s %14s %14s %14s  %s\n", "device", "placed", "budget", "kept free",
            "for the largest layer left");
    for (int i = 0; i < plan->n_devices; i++) {
        const bm_plan_device *d = &plan->devices[i];
        bm_size_format_bits(d->placed_bits, a, sizeof a);
        if (d->has_budget) {
            if (d->budget_bits < 0)
                snprintf(b, sizeof b, "-%s",
                         bm_size_format_bits((uint64_t)(-d->budget_bits), c, sizeof c));
            else
                bm_size_format_bits((uint64_t)d->budget_bits, b, sizeof b);
        } else {
            snprintf(b, sizeof b, "unlimited");
        }
        if (d->main_device && d->reserved_bits > 0)
            bm_size_format_bits((uint64_t)d->reserved_bits, c, sizeof c);
        else
            snprintf(c, sizeof c, "-");
        fprintf(out, "%-8s %14s %14s %14s  %s\n", bm_device_str(d->dev, dev, sizeof dev), a,
                b, c,
                d->main_device && d->reserved_bits > 0 && d->reserved_for
                    ? d->reserved_for
                    : "");
    }
    bm_size_format_bits(plan->total_bits, a, sizeof a);
    fprintf(out, "model: %s. Main devices keep room for the largest layer still to place, so\n"
                 "that an offloaded layer can be brought back to them.\n",
            a);
}
