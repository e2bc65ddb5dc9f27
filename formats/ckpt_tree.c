/*
 * ckpt_tree.c - the module tree implied by a checkpoint's tensor names,
 * for models known only by their weights (no graph file, no config.json).
 *
 * bm_tree wants modules in pre-order, but names arrive in checkpoint order
 * ("a.0.x", "b.y", "a.1.x"), so a trie is built first and then walked.
 * Lookups are keyed by (parent node, component) so each name costs time
 * proportional to its length: the whole build is linear.
 */
#include "bmplan.h"
#include "checkpoint.h"
#include "strtab.h"

#include <stdlib.h>
#include <string.h>

typedef struct trie_node {
    int32_t parent;
    const char *local;     /* NUL-terminated copy in the arena */
    int32_t first_child, last_child, next_sibling;
    int32_t first_tensor, last_tensor; /* chained through next_tensor[] */
    int32_t origin;        /* checkpoint tensor whose name created it */
    bool all_numeric;      /* every child's name is a number */
} trie_node;

typedef struct trie {
    trie_node *nodes;
    int32_t n, cap;
    int32_t *next_tensor;
    bm_strtab keys;        /* "m"/"t" + parent id + component -> index */
    bm_arena arena;
} trie;

static bool is_number(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* Key bytes: a tag, the parent id, the component. Binary, so the length
 * travels with it (strtab compares by length and bytes). */
static char *make_key(trie *tr, char tag, int32_t parent, const char *s,
                      size_t n, size_t *klen)
{
    *klen = 1 + sizeof parent + n;
    char *k = bm_arena_alloc(&tr->arena, *klen);
    if (!k)
        return NULL;
    k[0] = tag;
    memcpy(k + 1, &parent, sizeof parent);
    memcpy(k + 1 + sizeof parent, s, n);
    return k;
}

static int32_t lookup(const trie *tr, char tag, int32_t parent, const char *s,
                      size_t n, char *scratch)
{
    scratch[0] = tag;
    memcpy(scratch + 1, &parent, sizeof parent);
    memcpy(scratch + 1 + sizeof parent, s, n);
    return bm_strtab_get(&tr->keys, scratch, 1 + sizeof parent + n);
}

static int32_t add_node(trie *tr, int32_t parent, const char *s, size_t n,
                        int32_t origin)
{
    if (tr->n == tr->cap) {
        int32_t nc = tr->cap ? tr->cap * 2 : 64;
        trie_node *nn = realloc(tr->nodes, (size_t)nc * sizeof *nn);
        if (!nn)
            return BM_NONE;
        tr->nodes = nn;
        tr->cap = nc;
    }
    int32_t id = tr->n;
    trie_node *nd = &tr->nodes[id];
    memset(nd, 0, sizeof *nd);
    nd->parent = parent;
    nd->local = bm_arena_strndup(&tr->arena, s, n);
    nd->first_child = nd->last_child = nd->next_sibling = BM_NONE;
    nd->first_tensor = nd->last_tensor = BM_NONE;
    nd->origin = origin;
    nd->all_numeric = true;
    if (!nd->local)
        return BM_NONE;
    if (parent != BM_NONE) {
        trie_node *p = &tr->nodes[parent];
        if (p->last_child == BM_NONE)
            p->first_child = id;
        else
            tr->nodes[p->last_child].next_sibling = id;
        p->last_child = id;
        p->all_numeric = p->all_numeric && is_number(s, n);
    }
    tr->n++;
    return id;
}

static bm_status nomem(bm_error *err)
{
    return bm_fail(err, BM_E_NOMEM, "out of memory building the module tree");
}

static bm_status build_trie(const bm_checkpoint *ck, trie *tr, bm_error *err)
{
    size_t maxlen = 0;
    for (int32_t ti = 0; ti < ck->n_tensors; ti++) {
        size_t l = strlen(ck->tensors[ti].name);
        maxlen = l > maxlen ? l : maxlen;
    }
    char *scratch = malloc(1 + sizeof(int32_t) + maxlen);
    if (!scratch)
        return nomem(err);
    bm_status st = BM_OK;
    if (add_node(tr, BM_NONE, "", 0, BM_NONE) == BM_NONE) {
        st = nomem(err);
        goto out;
    }
    for (int32_t ti = 0; ti < ck->n_tensors && !st; ti++) {
        const char *name = ck->tensors[ti].name;
        size_t len = strlen(name);
        int32_t parent = 0;
        size_t start = 0;
        for (;;) {
            const char *dot = memchr(name + start, '.', len - start);
            size_t end = dot ? (size_t)(dot - name) : len;
            const char *comp = name + start;
            size_t n = end - start;
            if (n == 0) {
                st = bm_fail_at(err, BM_E_INVALID, ck->path, 0, name, -1,
                                "name has an empty component, it cannot be a module path");
                break;
            }
            if (dot) {
                int32_t m = lookup(tr, 'm', parent, comp, n, scratch);
                if (m == BM_NONE) {
                    int32_t other = lookup(tr, 't', parent, comp, n, scratch);
                    if (other != BM_NONE) {
                        st = bm_fail_at(err, BM_E_INVALID, ck->path, 0, name, -1,
                                        "tensor '%.200s' is also a module prefix of this name",
                                        ck->tensors[other].name);
                        break;
                    }
                    size_t kl;
                    char *k = make_key(tr, 'm', parent, comp, n, &kl);
                    m = k ? add_node(tr, parent, comp, n, ti) : BM_NONE;
                    if (m == BM_NONE || bm_strtab_put(&tr->keys, k, kl, m) < 0) {
                        st = nomem(err);
                        break;
                    }
                }
                parent = m;
                start = end + 1;
                continue;
            }
            int32_t m = lookup(tr, 'm', parent, comp, n, scratch);
            if (m != BM_NONE) {
                st = bm_fail_at(err, BM_E_INVALID, ck->path, 0, name, -1,
                                "is also a module prefix of tensor '%.200s'",
                                ck->tensors[tr->nodes[m].origin].name);
                break;
            }
            size_t kl;
            char *k = make_key(tr, 't', parent, comp, n, &kl);
            if (!k || bm_strtab_put(&tr->keys, k, kl, ti) < 0) {
                st = nomem(err);
                break;
            }
            trie_node *p = &tr->nodes[parent];
            tr->next_tensor[ti] = BM_NONE;
            if (p->last_tensor == BM_NONE)
                p->first_tensor = ti;
            else
                tr->next_tensor[p->last_tensor] = ti;
            p->last_tensor = ti;
            break;
        }
    }
out:
    free(scratch);
    return st;
}

static const char *class_of(const trie_node *nd, int32_t id)
{
    if (id == 0)
        return "Model";
    if (nd->first_child != BM_NONE && nd->all_numeric && nd->first_tensor == BM_NONE)
        return "ModuleList";
    return "Module";
}

static bm_status emit(const bm_checkpoint *ck, trie *tr, bm_tree *tree, bm_error *err)
{
    int32_t *tree_idx = malloc((size_t)tr->n * sizeof *tree_idx);
    int32_t *stack = malloc((size_t)tr->n * sizeof *stack);
    bm_status st = BM_OK;
    if (!tree_idx || !stack) {
        st = nomem(err);
        goto out;
    }
    int32_t sp = 0;
    stack[sp++] = 0;
    while (sp > 0 && !st) {
        int32_t id = stack[--sp];
        trie_node *nd = &tr->nodes[id];
        const char *cls = class_of(nd, id);
        tree_idx[id] = id == 0 ? bm_tree_add_root(tree, cls, err)
                               : bm_tree_add_module(tree, tree_idx[nd->parent],
                                                    nd->local, cls, err);
        if (tree_idx[id] == BM_NONE) {
            st = err ? err->code : BM_E_INVALID;
            break;
        }
        for (int32_t t = nd->first_tensor; t != BM_NONE && !st; t = tr->next_tensor[t]) {
            const bm_ckpt_tensor *ct = &ck->tensors[t];
            const char *local = strrchr(ct->name, '.');
            local = local ? local + 1 : ct->name;
            st = bm_tree_add_tensor(tree, tree_idx[id], local, ct->dtype, ct->ndim,
                                    ct->shape, false, true, err);
        }
        /* push children in reverse so the first child is visited first */
        int32_t first = sp;
        for (int32_t c = nd->first_child; c != BM_NONE; c = tr->nodes[c].next_sibling)
            stack[sp++] = c;
        for (int32_t a = first, b = sp - 1; a < b; a++, b--) {
            int32_t tmp = stack[a];
            stack[a] = stack[b];
            stack[b] = tmp;
        }
    }
out:
    free(tree_idx);
    free(stack);
    return st;
}

bm_status bm_checkpoint_to_tree(const bm_checkpoint *ckpt, bm_tree **out,
                                bm_error *err)
{
    *out = NULL;
    trie tr = {0};
    bm_tree *tree = bm_tree_new();
    tr.next_tensor = malloc((size_t)(ckpt->n_tensors ? ckpt->n_tensors : 1) *
                            sizeof *tr.next_tensor);
    bm_status st = BM_OK;
    if (!tree || !tr.next_tensor)
        st = nomem(err);
    if (!st)
        st = build_trie(ckpt, &tr, err);
    if (!st)
        st = emit(ckpt, &tr, tree, err);
    if (!st)
        st = bm_tree_finish(tree, ckpt->path, err);
    free(tr.nodes);
    free(tr.next_tensor);
    bm_strtab_free(&tr.keys);
    bm_arena_free(&tr.arena);
    if (st) {
        bm_tree_free(tree);
        return st;
    }
    *out = tree;
    return BM_OK;
}
