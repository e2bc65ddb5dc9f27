/*
 * torchbin.c - PyTorch .bin checkpoints read without executing pickle code.
 *
 * torch.save(state_dict) writes a zip archive (formats/zip.c) holding
 * <archive>/data.pkl, one stored record <archive>/data/<key> per storage,
 * and small records (version, byteorder, .data/serialization_id). Python
 * loads data.pkl with pickle, which can call any function the file names;
 * here a small pickle machine interprets it instead. It knows the opcodes
 * torch.save emits (protocol 2, plus the few protocol 4 adds), values are
 * plain data (ints, strings, tuples, lists, dicts), and the only globals
 * it accepts are the ones a state dict needs: collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2/_v3, torch._utils._rebuild_parameter,
 * the storage classes and the dtypes. Those are recognised, never called:
 * REDUCE on them builds a tensor description (storage, offset, shape,
 * stride) and checks it. Any other global, or a REDUCE the list does not
 * allow, ends the read with an error naming it.
 *
 * Everything is bounded: pickle size, value count, stack depth, MARK
 * nesting, memo indices (never past the values that exist), integer widths.
 * The machine is a loop with no recursion, and no value is ever walked
 * recursively, so a self-referencing list cannot make it loop.
 */
#include "torchbin.h"
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * Values
 * ------------------------------------------------------------------------ */

enum pk_kind {
    K_NONE,
    K_BOOL,
    K_INT,
    K_FLOAT,
    K_STR,
    K_TUPLE,
    K_LIST,
    K_DICT,
    K_GLOBAL,
    K_STORAGE,
    K_TENSOR,
};

/* With their article, as messages use them ("the value is an int"). */
static const char *const kind_names[] = {
    [K_NONE] = "None",       [K_BOOL] = "a bool",   [K_INT] = "an int",
    [K_FLOAT] = "a float",   [K_STR] = "a string", [K_TUPLE] = "a tuple",
    [K_LIST] = "a list",     [K_DICT] = "a dict",   [K_GLOBAL] = "a global",
    [K_STORAGE] = "a storage", [K_TENSOR] = "a tensor",
};

typedef struct pk_value {
    uint8_t kind;
    uint32_t a; /* STR: offset in data.pkl; TUPLE: first item; LIST/DICT:
                   container; GLOBAL: allow-list row; STORAGE/TENSOR: index */
    uint32_t n; /* STR: length; TUPLE: item count */
    int64_t i;  /* INT, BOOL; GLOBAL: its dtype */
} pk_value;

/* A list or dict: items (dicts: key, value, key, value, ...). */
typedef struct pk_container {
    uint32_t *items;
    uint32_t n, cap;
} pk_container;

/* The globals a state dict needs. Recognised by exact module and name. */
enum pk_global_kind {
    G_ORDERED_DICT,
    G_REBUILD_V2,
    G_REBUILD_V3,
    G_REBUILD_PARAMETER,
    G_STORAGE,         /* a torch.<T>Storage class: typed, dtype given */
    G_UNTYPED_STORAGE, /* torch.UntypedStorage: numel counts bytes */
    G_TYPED_STORAGE,   /* torch.TypedStorage: has no dtype by itself */
    G_DTYPE,           /* torch.float32, ...: dtype given */
};

typedef struct pk_global {
    const char *module, *name;
    enum pk_global_kind kind;
    bm_dtype dtype;
} pk_global;

static const pk_global allowed_globals[] = {
    {"collections", "OrderedDict", G_ORDERED_DICT, BM_DTYPE_INVALID},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_V2, BM_DTYPE_INVALID},
    {"torch._utils", "_rebuild_tensor_v3", G_REBUILD_V3, BM_DTYPE_INVALID},
    {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAMETER, BM_DTYPE_INVALID},
    {"torch", "DoubleStorage", G_STORAGE, BM_F64},
    {"torch", "FloatStorage", G_STORAGE, BM_F32},
    {"torch", "HalfStorage", G_STORAGE, BM_F16},
    {"torch", "BFloat16Storage", G_STORAGE, BM_BF16},
    {"torch", "LongStorage", G_STORAGE, BM_I64},
    {"torch", "IntStorage", G_STORAGE, BM_I32},
    {"torch", "ShortStorage", G_STORAGE, BM_I16},
    {"torch", "CharStorage", G_STORAGE, BM_I8},
    {"torch", "ByteStorage", G_STORAGE, BM_U8},
    {"torch", "BoolStorage", G_STORAGE, BM_BOOL},
    {"torch", "ComplexFloatStorage", G_STORAGE, BM_C64},
    {"torch", "ComplexDoubleStorage", G_STORAGE, BM_C128},
    {"torch", "UntypedStorage", G_UNTYPED_STORAGE, BM_U8},
    {"torch.storage", "UntypedStorage", G_UNTYPED_STORAGE, BM_U8},
    {"torch", "TypedStorage", G_TYPED_STORAGE, BM_DTYPE_INVALID},
    {"torch.storage", "TypedStorage", G_TYPED_STORAGE, BM_DTYPE_INVALID},
};
#define N_ALLOWED (sizeof allowed_globals / sizeof *allowed_globals)

/* dtypes come from bm_dtype_parse_torch; they get rows past the table. */
#define DTYPE_ROW(dt) ((uint32_t)(N_ALLOWED + (unsigned)(dt)))

/* A tensor as _rebuild_tensor_v2/_v3 describes it, checked later (when
 * its name is known) by check_tensor(). */
typedef struct pk_tensor {
    int32_t storage;
    bm_dtype dtype;
    int ndim;
    int64_t shape[BM_MAX_DIMS];
    int64_t stride[BM_MAX_DIMS];
    int64_t offset;
    bool parameter;
} pk_tensor;

typedef struct pk {
    const char *path;   /* the file */
    const char *record; /* data.pkl's record name */
    const unsigned char *p;
    size_t len, pos, op_pos;
    int proto;

    pk_value *values;
    uint32_t n_values, cap_values;
    uint32_t *stack;
    uint32_t sp, cap_stack;
    uint32_t marks[BM_TORCHBIN_MAX_MARKS];
    uint32_t n_marks;
    uint32_t *memo; /* value index + 1; 0 = never stored */
    uint32_t cap_memo, memo_count;
    uint32_t *items; /* tuple items */
    uint32_t n_items, cap_items;
    pk_container *conts;
    uint32_t n_conts, cap_conts;
    uint64_t container_items;

    pk_tensor *tensors;
    uint32_t n_tensors, cap_tensors;

    /* storages, with a hash of their keys */
    const bm_zip *zip;
    const char *archive;
    bm_torchbin_storage *storages;
    uint32_t n_storages, cap_storages;
    int32_t *hash; /* storage index + 1 */
    uint32_t hash_cap;

    bm_error *err;
} pk;

static bm_status pk_fail(pk *m, bm_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bm_status pk_fail(pk *m, bm_status code, const char *fmt, ...)
{
    char what[BM_ERROR_MSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return bm_fail(m->err, code, "%s: %s, byte %zu: %s", m->path, m->record, m->op_pos, what);
}

static bm_status nomem(pk *m)
{
    return bm_fail(m->err, BM_E_NOMEM, "%s: out of memory reading %s", m->path, m->record);
}

/* Grow an array to hold at least `need` elements. */
static bool grow(void **arr, uint32_t *cap, uint32_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    uint64_t nc = *cap ? (uint64_t)*cap * 2 : 16;
    while (nc < need)
        nc *= 2;
    if (nc > UINT32_MAX)
        nc = UINT32_MAX;
    void *p = realloc(*arr, (size_t)nc * elem);
    if (!p)
        return false;
    *arr = p;
    *cap = (uint32_t)nc;
    return true;
}

static bm_status new_value(pk *m, uint8_t kind, uint32_t *id)
{
    if (m->n_values >= BM_TORCHBIN_MAX_OBJECTS)
        return pk_fail(m, BM_E_UNSUPPORTED, "the pickle creates more than %u values",
                       BM_TORCHBIN_MAX_OBJECTS);
    if (!grow((void **)&m->values, &m->cap_values, m->n_values + 1, sizeof *m->values))
        return nomem(m);
    *id = m->n_values++;
    m->values[*id] = (pk_value){.kind = kind};
    return BM_OK;
}

static bm_status push(pk *m, uint32_t id)
{
    if (m->sp >= BM_TORCHBIN_MAX_STACK)
        return pk_fail(m, BM_E_UNSUPPORTED, "the pickle stack grows past %u values",
                       BM_TORCHBIN_MAX_STACK);
    if (!grow((void **)&m->stack, &m->cap_stack, m->sp + 1, sizeof *m->stack))
        return nomem(m);
    m->stack[m->sp++] = id;
    return BM_OK;
}

static bm_status push_new(pk *m, uint8_t kind, int64_t i, uint32_t *id)
{
    uint32_t v = 0;
    bm_status st = new_value(m, kind, &v);
    if (st != BM_OK)
        return st;
    m->values[v].i = i;
    if (id)
        *id = v;
    return push(m, v);
}

/* The lowest stack slot the current MARK frame may use: values below the
 * last MARK belong to the enclosing frame (as in Python's unpickler). */
static uint32_t frame_base(const pk *m)
{
    return m->n_marks ? m->marks[m->n_marks - 1] : 0;
}

static bm_status pop(pk *m, const char *op, uint32_t *id)
{
    if (m->sp <= frame_base(m))
        return pk_fail(m, BM_E_FORMAT, "stack underflow at %s", op);
    *id = m->stack[--m->sp];
    return BM_OK;
}

static bm_status top(pk *m, const char *op, uint32_t *id)
{
    if (m->sp <= frame_base(m))
        return pk_fail(m, BM_E_FORMAT, "stack underflow at %s", op);
    *id = m->stack[m->sp - 1];
    return BM_OK;
}

/* End the current MARK frame: its values are stack[*start .. sp). */
static bm_status pop_mark(pk *m, const char *op, uint32_t *start)
{
    if (m->n_marks == 0)
        return pk_fail(m, BM_E_FORMAT, "%s without a MARK", op);
    *start = m->marks[--m->n_marks];
    return BM_OK;
}

static bm_status need(pk *m, size_t n, const char *op)
{
    if (m->len - m->pos < n)
        return pk_fail(m, BM_E_FORMAT, "truncated: %s needs %zu more bytes, %zu are left",
                       op, n, m->len - m->pos);
    return BM_OK;
}

static uint32_t rd_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static const pk_value *val(const pk *m, uint32_t id)
{
    return &m->values[id];
}

static const char *kind_of(const pk *m, uint32_t id)
{
    return kind_names[m->values[id].kind];
}

/* A tuple from stack[start .. sp). */
static bm_status make_tuple(pk *m, uint32_t start)
{
    uint32_t n = m->sp - start;
    if ((uint64_t)m->n_items + n > BM_TORCHBIN_MAX_OBJECTS)
        return pk_fail(m, BM_E_UNSUPPORTED, "the pickle's tuples hold more than %u items",
                       BM_TORCHBIN_MAX_OBJECTS);
    if (!grow((void **)&m->items, &m->cap_items, m->n_items + n, sizeof *m->items))
        return nomem(m);
    uint32_t first = m->n_items;
    if (n)
        memcpy(m->items + first, m->stack + start, (size_t)n * sizeof *m->items);
    m->n_items += n;
    m->sp = start;
    uint32_t id = 0;
    bm_status st = new_value(m, K_TUPLE, &id);
    if (st != BM_OK)
        return st;
    m->values[id].a = first;
    m->values[id].n = n;
    return push(m, id);
}

static bm_status new_container(pk *m, uint8_t kind)
{
    if (!grow((void **)&m->conts, &m->cap_conts, m->n_conts + 1, sizeof *m->conts))
        return nomem(m);
    uint32_t id = 0;
    bm_status st = new_value(m, kind, &id);
    if (st != BM_OK)
        return st;
    m->values[id].a = m->n_conts;
    m->conts[m->n_conts++] = (pk_container){0};
    return push(m, id);
}

static bm_status container_add(pk *m, uint32_t cont, const uint32_t *ids, uint32_t n)
{
    if (m->container_items + n > BM_TORCHBIN_MAX_OBJECTS)
        return pk_fail(m, BM_E_UNSUPPORTED, "the pickle's lists and dicts hold more than %u items",
                       BM_TORCHBIN_MAX_OBJECTS);
    pk_container *c = &m->conts[m->values[cont].a];
    if (n == 0)
        return BM_OK;
    if (!grow((void **)&c->items, &c->cap, c->n + n, sizeof *c->items))
        return nomem(m);
    memcpy(c->items + c->n, ids, (size_t)n * sizeof *ids);
    c->n += n;
    m->container_items += n;
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * Globals
 * ------------------------------------------------------------------------ */

static const char *global_module(uint32_t row)
{
    return row < N_ALLOWED ? allowed_globals[row].module : "torch";
}

static const char *global_name(uint32_t row)
{
    return row < N_ALLOWED ? allowed_globals[row].name
                           : bm_dtype_name((bm_dtype)(row - N_ALLOWED));
}

static enum pk_global_kind global_kind(uint32_t row)
{
    return row < N_ALLOWED ? allowed_globals[row].kind : G_DTYPE;
}

static bm_status push_global(pk *m, const char *mod, size_t ml, const char *name, size_t nl)
{
    for (uint32_t r = 0; r < N_ALLOWED; r++) {
        const pk_global *g = &allowed_globals[r];
        if (strlen(g->module) == ml && memcmp(g->module, mod, ml) == 0 &&
            strlen(g->name) == nl && memcmp(g->name, name, nl) == 0) {
            uint32_t id = 0;
            bm_status st = push_new(m, K_GLOBAL, g->dtype, &id);
            m->values[id].a = r;
            return st;
        }
    }
    if (ml == 5 && memcmp(mod, "torch", 5) == 0 && nl < 32) {
        char buf[32];
        memcpy(buf, name, nl);
        buf[nl] = '\0';
        bm_dtype dt = bm_dtype_parse_torch(buf);
        if (dt != BM_DTYPE_INVALID && strchr(buf, '.') == NULL) {
            uint32_t id = 0;
            bm_status st = push_new(m, K_GLOBAL, dt, &id);
            m->values[id].a = DTYPE_ROW(dt);
            return st;
        }
    }
    return pk_fail(m, BM_E_UNSUPPORTED,
                   "pickle global '%.*s.%.*s' is not allowed: bmplan reads state dicts of "
                   "tensors only and never runs code from the file",
                   (int)(ml > 100 ? 100 : ml), mod, (int)(nl > 100 ? 100 : nl), name);
}

/* GLOBAL's argument: "module\nname\n". */
static bm_status read_line(pk *m, const char **s, size_t *n)
{
    const unsigned char *start = m->p + m->pos;
    const unsigned char *nl = memchr(start, '\n', m->len - m->pos);
    if (!nl)
        return pk_fail(m, BM_E_FORMAT, "truncated: GLOBAL's name has no end of line");
    *s = (const char *)start;
    *n = (size_t)(nl - start);
    if (*n == 0 || *n > 256)
        return pk_fail(m, BM_E_FORMAT, "GLOBAL names a module or attribute of %zu bytes", *n);
    m->pos += *n + 1;
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * Storages (persistent ids)
 * ------------------------------------------------------------------------ */

static uint32_t key_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static bool rehash(pk *m)
{
    uint32_t cap = m->hash_cap ? m->hash_cap * 2 : 64;
    int32_t *h = calloc(cap, sizeof *h);
    if (!h)
        return false;
    for (uint32_t s = 0; s < m->n_storages; s++) {
        const char *k = m->storages[s].key;
        uint32_t i = key_hash(k, strlen(k)) & (cap - 1);
        while (h[i])
            i = (i + 1) & (cap - 1);
        h[i] = (int32_t)s + 1;
    }
    free(m->hash);
    m->hash = h;
    m->hash_cap = cap;
    return true;
}

static int32_t find_storage(const pk *m, const char *key, size_t n)
{
    if (!m->hash_cap)
        return BM_NONE;
    uint32_t i = key_hash(key, n) & (m->hash_cap - 1);
    while (m->hash[i]) {
        int32_t s = m->hash[i] - 1;
        if (strlen(m->storages[s].key) == n && memcmp(m->storages[s].key, key, n) == 0)
            return s;
        i = (i + 1) & (m->hash_cap - 1);
    }
    return BM_NONE;
}

static bool plain_key(const char *s, size_t n)
{
    if (n == 0 || n > 64 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

static bool printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

static size_t dtype_size(bm_dtype dt)
{
    return bm_dtype_storage_bits(dt) / 8;
}

/* ('storage', storage_type, key, location, numel) -> a storage, the same
 * one each time its key comes back. */
static bm_status persistent_load(pk *m)
{
    uint32_t pid = 0;
    bm_status st = pop(m, "BINPERSID", &pid);
    if (st != BM_OK)
        return st;
    const pk_value *t = val(m, pid);
    const uint32_t *it = t->kind == K_TUPLE && t->n == 5 ? m->items + t->a : NULL;
    if (!it || val(m, it[0])->kind != K_STR ||
        val(m, it[0])->n != 7 || memcmp(m->p + val(m, it[0])->a, "storage", 7) != 0)
        return pk_fail(m, BM_E_FORMAT,
                       "persistent id is not ('storage', type, key, location, numel)");
    const pk_value *type = val(m, it[1]), *key = val(m, it[2]), *loc = val(m, it[3]),
                   *numel = val(m, it[4]);
    if (type->kind != K_GLOBAL || (global_kind(type->a) != G_STORAGE &&
                                   global_kind(type->a) != G_UNTYPED_STORAGE &&
                                   global_kind(type->a) != G_TYPED_STORAGE))
        return pk_fail(m, BM_E_FORMAT, "persistent id's storage type is %s, not a storage class",
                       kind_of(m, it[1]));
    if (global_kind(type->a) == G_TYPED_STORAGE)
        return pk_fail(m, BM_E_UNSUPPORTED,
                       "persistent id names %s.%s, which has no dtype of its own",
                       global_module(type->a), global_name(type->a));
    if (key->kind != K_STR || !plain_key((const char *)m->p + key->a, key->n))
        return pk_fail(m, BM_E_FORMAT, "storage key is not a plain record name");
    if (loc->kind != K_STR || loc->n == 0 || loc->n > 64 ||
        !printable((const char *)m->p + loc->a, loc->n))
        return pk_fail(m, BM_E_FORMAT, "storage location is not a short device name");
    if (numel->kind != K_INT || numel->i < 0)
        return pk_fail(m, BM_E_FORMAT, "storage size is not a non-negative int");

    const char *k = (const char *)m->p + key->a;
    bm_dtype dt = (bm_dtype)type->i;
    bool untyped = global_kind(type->a) == G_UNTYPED_STORAGE;
    int32_t s = find_storage(m, k, key->n);
    if (s != BM_NONE) {
        const bm_torchbin_storage *old = &m->storages[s];
        if (old->dtype != dt || old->untyped != untyped)
            return pk_fail(m, BM_E_FORMAT,
                           "storage '%s' is referenced with two dtypes (%s and %s)", old->key,
                           old->untyped ? "untyped" : bm_dtype_name(old->dtype),
                           untyped ? "untyped" : bm_dtype_name(dt));
        if (old->numel != (uint64_t)numel->i)
            return pk_fail(m, BM_E_FORMAT, "storage '%s' is referenced with two sizes (%llu and %lld)",
                           old->key, (unsigned long long)old->numel, (long long)numel->i);
    } else {
        if (m->n_storages >= (uint32_t)INT32_MAX / 2)
            return pk_fail(m, BM_E_UNSUPPORTED, "too many storages");
        if (!grow((void **)&m->storages, &m->cap_storages, m->n_storages + 1,
                  sizeof *m->storages))
            return nomem(m);
        if ((m->n_storages + 1) * 2 > m->hash_cap && !rehash(m))
            return nomem(m);
        bm_torchbin_storage *ns = &m->storages[m->n_storages];
        memset(ns, 0, sizeof *ns);
        ns->key = strndup(k, key->n);
        ns->location = strndup((const char *)m->p + loc->a, loc->n);
        s = (int32_t)m->n_storages++;
        if (!ns->key || !ns->location)
            return nomem(m);
        uint32_t h = key_hash(k, key->n) & (m->hash_cap - 1);
        while (m->hash[h])
            h = (h + 1) & (m->hash_cap - 1);
        m->hash[h] = s + 1;
        ns->dtype = dt;
        ns->untyped = untyped;
        ns->numel = (uint64_t)numel->i;
        if (__builtin_mul_overflow(ns->numel, (uint64_t)dtype_size(dt), &ns->nbytes))
            return pk_fail(m, BM_E_OVERFLOW, "storage '%s' of %llu elements: size overflow",
                           ns->key, (unsigned long long)ns->numel);
        char rec[BM_ZIP_MAX_NAME + 80];
        snprintf(rec, sizeof rec, "%s/data/%s", m->archive, ns->key);
        const bm_zip_entry *e = bm_zip_find(m->zip, rec);
        if (!e)
            return pk_fail(m, BM_E_FORMAT, "storage '%s': its record '%s' is missing",
                           ns->key, rec);
        if (e->size != ns->nbytes)
            return pk_fail(m, BM_E_FORMAT,
                           "storage '%s' declares %llu bytes but its record '%s' holds %llu",
                           ns->key, (unsigned long long)ns->nbytes, rec,
                           (unsigned long long)e->size);
        ns->file_offset = e->data_offset;
    }
    uint32_t id = 0;
    st = push_new(m, K_STORAGE, 0, &id);
    if (st == BM_OK)
        m->values[id].a = (uint32_t)s;
    return st;
}

/* ------------------------------------------------------------------------
 * REDUCE: the only calls a state dict makes
 * ------------------------------------------------------------------------ */

static bm_status int_tuple(pk *m, uint32_t id, const char *what, int *n, int64_t *out)
{
    const pk_value *t = val(m, id);
    if (t->kind != K_TUPLE)
        return pk_fail(m, BM_E_FORMAT, "the tensor's %s is %s, not a tuple", what,
                       kind_of(m, id));
    if (t->n > BM_MAX_DIMS)
        return pk_fail(m, BM_E_UNSUPPORTED, "the tensor's %s has %u dimensions, at most %d",
                       what, t->n, BM_MAX_DIMS);
    for (uint32_t i = 0; i < t->n; i++) {
        const pk_value *v = val(m, m->items[t->a + i]);
        if (v->kind != K_INT)
            return pk_fail(m, BM_E_FORMAT, "the tensor's %s holds %s, not an int", what,
                           kind_of(m, m->items[t->a + i]));
        out[i] = v->i;
    }
    *n = (int)t->n;
    return BM_OK;
}

static bool empty_dict(const pk *m, uint32_t id)
{
    return val(m, id)->kind == K_DICT && m->conts[val(m, id)->a].n == 0;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
 *                    backward_hooks[, metadata])
 * _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
 *                    backward_hooks, dtype[, metadata]) */
static bm_status rebuild_tensor(pk *m, bool v3, const uint32_t *a, uint32_t n)
{
    const char *fn = v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2";
    uint32_t fixed = v3 ? 7 : 6;
    if (n != fixed && n != fixed + 1)
        return pk_fail(m, BM_E_FORMAT, "%s called with %u arguments", fn, n);
    if (val(m, a[0])->kind != K_STORAGE)
        return pk_fail(m, BM_E_FORMAT, "%s's storage is %s", fn, kind_of(m, a[0]));
    const bm_torchbin_storage *s = &m->storages[val(m, a[0])->a];
    pk_tensor t = {.storage = (int32_t)val(m, a[0])->a, .dtype = s->dtype};
    if (val(m, a[1])->kind != K_INT)
        return pk_fail(m, BM_E_FORMAT, "%s's storage offset is %s", fn, kind_of(m, a[1]));
    t.offset = val(m, a[1])->i;
    int nstride;
    bm_status st = int_tuple(m, a[2], "shape", &t.ndim, t.shape);
    if (st == BM_OK)
        st = int_tuple(m, a[3], "stride", &nstride, t.stride);
    if (st != BM_OK)
        return st;
    if (nstride != t.ndim)
        return pk_fail(m, BM_E_FORMAT, "the tensor has %d dimensions but %d strides", t.ndim,
                       nstride);
    if (val(m, a[4])->kind != K_BOOL)
        return pk_fail(m, BM_E_FORMAT, "%s's requires_grad is %s", fn, kind_of(m, a[4]));
    /* backward hooks are never saved (torch warns and drops them): an
     * OrderedDict, empty; None from hand-written files is harmless */
    if (val(m, a[5])->kind != K_NONE && !empty_dict(m, a[5]))
        return pk_fail(m, BM_E_UNSUPPORTED, "%s's backward hooks are not an empty dict", fn);
    if (v3) {
        const pk_value *d = val(m, a[6]);
        if (d->kind != K_GLOBAL || global_kind(d->a) != G_DTYPE)
            return pk_fail(m, BM_E_FORMAT, "%s's dtype is %s", fn, kind_of(m, a[6]));
        if (!s->untyped)
            return pk_fail(m, BM_E_FORMAT, "%s on a typed storage ('%s')", fn, s->key);
        t.dtype = (bm_dtype)d->i;
    } else if (s->untyped) {
        return pk_fail(m, BM_E_FORMAT, "%s on an untyped storage ('%s') without a dtype", fn,
                       s->key);
    }
    /* torch writes metadata only for conjugate or negative views */
    if (n == fixed + 1 && !empty_dict(m, a[fixed]))
        return pk_fail(m, BM_E_UNSUPPORTED,
                       "tensor metadata (conjugate or negative bit) is not supported");
    if (!grow((void **)&m->tensors, &m->cap_tensors, m->n_tensors + 1, sizeof *m->tensors))
        return nomem(m);
    uint32_t id = 0;
    st = push_new(m, K_TENSOR, 0, &id);
    if (st != BM_OK)
        return st;
    m->values[id].a = m->n_tensors;
    m->tensors[m->n_tensors++] = t;
    return BM_OK;
}

static bm_status reduce(pk *m)
{
    uint32_t args = 0, fn = 0;
    bm_status st = pop(m, "REDUCE", &args);
    if (st == BM_OK)
        st = pop(m, "REDUCE", &fn);
    if (st != BM_OK)
        return st;
    const pk_value *f = val(m, fn), *t = val(m, args);
    if (f->kind != K_GLOBAL)
        return pk_fail(m, BM_E_UNSUPPORTED, "REDUCE on %s is not allowed", kind_of(m, fn));
    if (t->kind != K_TUPLE)
        return pk_fail(m, BM_E_FORMAT, "REDUCE's arguments are %s, not a tuple",
                       kind_of(m, args));
    const uint32_t *a = t->n ? m->items + t->a : NULL;
    switch (global_kind(f->a)) {
    case G_ORDERED_DICT:
        if (t->n != 0)
            return pk_fail(m, BM_E_UNSUPPORTED,
                           "collections.OrderedDict called with arguments is not supported");
        return new_container(m, K_DICT);
    case G_REBUILD_V2:
        return rebuild_tensor(m, false, a, t->n);
    case G_REBUILD_V3:
        return rebuild_tensor(m, true, a, t->n);
    case G_REBUILD_PARAMETER:
        /* _rebuild_parameter(data, requires_grad, backward_hooks) */
        if (t->n != 3 || val(m, a[0])->kind != K_TENSOR || val(m, a[1])->kind != K_BOOL ||
            (val(m, a[2])->kind != K_NONE && !empty_dict(m, a[2])))
            return pk_fail(m, BM_E_FORMAT,
                           "_rebuild_parameter's arguments are not (tensor, bool, hooks)");
        m->tensors[val(m, a[0])->a].parameter = true;
        return push(m, a[0]);
    default:
        return pk_fail(m, BM_E_UNSUPPORTED, "REDUCE on '%s.%s' is not allowed",
                       global_module(f->a), global_name(f->a));
    }
}

/* ------------------------------------------------------------------------
 * The machine
 * ------------------------------------------------------------------------ */

static bm_status memo_put(pk *m, uint64_t idx)
{
    uint32_t v = 0;
    bm_status st = top(m, "a memo store", &v);
    if (st != BM_OK)
        return st;
    /* pickle numbers memo entries 0, 1, 2, ... as values are created, so a
     * real index never exceeds the number of values that exist */
    if (idx > m->n_values)
        return pk_fail(m, BM_E_FORMAT, "memo index %llu out of range (%u values exist)",
                       (unsigned long long)idx, m->n_values);
    if (!grow((void **)&m->memo, &m->cap_memo, (uint32_t)idx + 1, sizeof *m->memo))
        return nomem(m);
    if (idx >= m->memo_count) {
        memset(m->memo + m->memo_count, 0, (size_t)(idx + 1 - m->memo_count) * sizeof *m->memo);
        m->memo_count = (uint32_t)idx + 1;
    }
    m->memo[idx] = v + 1;
    return BM_OK;
}

static bm_status memo_get(pk *m, uint64_t idx)
{
    if (idx >= m->memo_count || m->memo[idx] == 0)
        return pk_fail(m, BM_E_FORMAT, "memo index %llu was never stored",
                       (unsigned long long)idx);
    return push(m, m->memo[idx] - 1);
}

static bm_status push_string(pk *m, size_t lenbytes, bool is_signed)
{
    bm_status st = need(m, lenbytes, "a string length");
    if (st != BM_OK)
        return st;
    uint64_t n = lenbytes == 1 ? m->p[m->pos] : rd_u32(m->p + m->pos);
    if (is_signed && n > INT32_MAX)
        return pk_fail(m, BM_E_FORMAT, "negative string length");
    m->pos += lenbytes;
    if (n > m->len - m->pos)
        return pk_fail(m, BM_E_FORMAT, "truncated: a string of %llu bytes, %zu are left",
                       (unsigned long long)n, m->len - m->pos);
    uint32_t id = 0;
    st = push_new(m, K_STR, 0, &id);
    if (st == BM_OK) {
        m->values[id].a = (uint32_t)m->pos;
        m->values[id].n = (uint32_t)n;
    }
    m->pos += (size_t)n;
    return st;
}

static bm_status setitems(pk *m, uint32_t start, const char *op)
{
    uint32_t n = m->sp - start;
    if (n % 2)
        return pk_fail(m, BM_E_FORMAT, "%s with an odd number of values", op);
    if (start <= frame_base(m))
        return pk_fail(m, BM_E_FORMAT, "stack underflow at %s", op);
    uint32_t d = m->stack[start - 1];
    if (val(m, d)->kind != K_DICT)
        return pk_fail(m, BM_E_UNSUPPORTED, "%s on %s is not allowed", op, kind_of(m, d));
    bm_status st = container_add(m, d, m->stack + start, n);
    m->sp = start;
    return st;
}

static bm_status appends(pk *m, uint32_t start, const char *op)
{
    if (start <= frame_base(m))
        return pk_fail(m, BM_E_FORMAT, "stack underflow at %s", op);
    uint32_t l = m->stack[start - 1];
    if (val(m, l)->kind != K_LIST)
        return pk_fail(m, BM_E_UNSUPPORTED, "%s on %s is not allowed", op, kind_of(m, l));
    bm_status st = container_add(m, l, m->stack + start, m->sp - start);
    m->sp = start;
    return st;
}

/* Run data.pkl to its STOP; the result is left in *result. */
static bm_status run(pk *m, uint32_t *result)
{
    bm_status st = BM_OK;
    while (st == BM_OK) {
        if (m->pos >= m->len) {
            m->op_pos = m->pos;
            return pk_fail(m, BM_E_FORMAT, "truncated: data.pkl ends without a STOP opcode");
        }
        m->op_pos = m->pos;
        unsigned char op = m->p[m->pos++];
        uint32_t a = 0, b = 0, start = 0;
        switch (op) {
        case 0x80: /* PROTO */
            if ((st = need(m, 1, "PROTO")) != BM_OK)
                break;
            m->proto = m->p[m->pos++];
            if (m->proto < 2 || m->proto > 5)
                st = pk_fail(m, BM_E_UNSUPPORTED,
                             "pickle protocol %d is not supported (torch.save writes 2)",
                             m->proto);
            break;
        case 0x95: /* FRAME: a length hint; frames change nothing here */
            if ((st = need(m, 8, "FRAME")) == BM_OK)
                m->pos += 8;
            break;
        case '.': /* STOP */
            if ((st = pop(m, "STOP", result)) != BM_OK)
                break;
            if (m->sp != 0 || m->n_marks != 0)
                return pk_fail(m, BM_E_FORMAT, "values left on the stack at STOP (%u)",
                               m->sp + m->n_marks);
            if (m->pos != m->len)
                return pk_fail(m, BM_E_FORMAT, "%zu bytes after STOP", m->len - m->pos);
            return BM_OK;
        case '(': /* MARK */
            if (m->n_marks >= BM_TORCHBIN_MAX_MARKS)
                st = pk_fail(m, BM_E_UNSUPPORTED, "MARKs nest deeper than %u",
                             BM_TORCHBIN_MAX_MARKS);
            else
                m->marks[m->n_marks++] = m->sp;
            break;
        case '}': /* EMPTY_DICT */
            st = new_container(m, K_DICT);
            break;
        case ']': /* EMPTY_LIST */
            st = new_container(m, K_LIST);
            break;
        case ')': /* EMPTY_TUPLE */
            st = make_tuple(m, m->sp);
            break;
        case 't': /* TUPLE */
            if ((st = pop_mark(m, "TUPLE", &start)) == BM_OK)
                st = make_tuple(m, start);
            break;
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: /* TUPLE3 */
        {
            uint32_t k = op - 0x84u;
            if (m->sp - frame_base(m) < k)
                st = pk_fail(m, BM_E_FORMAT, "stack underflow at TUPLE%u", k);
            else
                st = make_tuple(m, m->sp - k);
            break;
        }
        case 'X': /* BINUNICODE */
            st = push_string(m, 4, false);
            break;
        case 0x8c: /* SHORT_BINUNICODE */
        case 'U':  /* SHORT_BINSTRING */
            st = push_string(m, 1, false);
            break;
        case 'T': /* BINSTRING */
            st = push_string(m, 4, true);
            break;
        case 'J': /* BININT */
            if ((st = need(m, 4, "BININT")) == BM_OK) {
                st = push_new(m, K_INT, (int32_t)rd_u32(m->p + m->pos), NULL);
                m->pos += 4;
            }
            break;
        case 'K': /* BININT1 */
            if ((st = need(m, 1, "BININT1")) == BM_OK)
                st = push_new(m, K_INT, m->p[m->pos++], NULL);
            break;
        case 'M': /* BININT2 */
            if ((st = need(m, 2, "BININT2")) == BM_OK) {
                st = push_new(m, K_INT, m->p[m->pos] | m->p[m->pos + 1] << 8, NULL);
                m->pos += 2;
            }
            break;
        case 0x8a: /* LONG1: little-endian two's complement */
        {
            if ((st = need(m, 1, "LONG1")) != BM_OK)
                break;
            unsigned n = m->p[m->pos++];
            if (n > 8) {
                st = pk_fail(m, BM_E_UNSUPPORTED, "an integer of %u bytes is too large", n);
                break;
            }
            if ((st = need(m, n, "LONG1")) != BM_OK)
                break;
            uint64_t u = 0;
            for (unsigned i = 0; i < n; i++)
                u |= (uint64_t)m->p[m->pos + i] << (8 * i);
            if (n > 0 && n < 8 && (m->p[m->pos + n - 1] & 0x80))
                u |= ~(uint64_t)0 << (8 * n);
            m->pos += n;
            st = push_new(m, K_INT, (int64_t)u, NULL);
            break;
        }
        case 'G': /* BINFLOAT: big-endian double, kept as bits */
        {
            if ((st = need(m, 8, "BINFLOAT")) != BM_OK)
                break;
            uint64_t u = 0;
            for (int i = 0; i < 8; i++)
                u = u << 8 | m->p[m->pos + i];
            m->pos += 8;
            st = push_new(m, K_FLOAT, (int64_t)u, NULL);
            break;
        }
        case 'N': /* NONE */
            st = push_new(m, K_NONE, 0, NULL);
            break;
        case 0x88: /* NEWTRUE */
        case 0x89: /* NEWFALSE */
            st = push_new(m, K_BOOL, op == 0x88, NULL);
            break;
        case 'q': /* BINPUT */
            if ((st = need(m, 1, "BINPUT")) == BM_OK)
                st = memo_put(m, m->p[m->pos++]);
            break;
        case 'r': /* LONG_BINPUT */
            if ((st = need(m, 4, "LONG_BINPUT")) == BM_OK) {
                uint64_t idx = rd_u32(m->p + m->pos);
                m->pos += 4;
                st = memo_put(m, idx);
            }
            break;
        case 0x94: /* MEMOIZE */
            st = memo_put(m, m->memo_count);
            break;
        case 'h': /* BINGET */
            if ((st = need(m, 1, "BINGET")) == BM_OK)
                st = memo_get(m, m->p[m->pos++]);
            break;
        case 'j': /* LONG_BINGET */
            if ((st = need(m, 4, "LONG_BINGET")) == BM_OK) {
                uint64_t idx = rd_u32(m->p + m->pos);
                m->pos += 4;
                st = memo_get(m, idx);
            }
            break;
        case 'c': /* GLOBAL */
        {
            const char *mod, *name;
            size_t ml, nl;
            if ((st = read_line(m, &mod, &ml)) == BM_OK &&
                (st = read_line(m, &name, &nl)) == BM_OK)
                st = push_global(m, mod, ml, name, nl);
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            if ((st = pop(m, "STACK_GLOBAL", &b)) != BM_OK ||
                (st = pop(m, "STACK_GLOBAL", &a)) != BM_OK)
                break;
            if (val(m, a)->kind != K_STR || val(m, b)->kind != K_STR)
                st = pk_fail(m, BM_E_FORMAT, "STACK_GLOBAL's module and name are not strings");
            else
                st = push_global(m, (const char *)m->p + val(m, a)->a, val(m, a)->n,
                                 (const char *)m->p + val(m, b)->a, val(m, b)->n);
            break;
        case 'Q': /* BINPERSID */
            st = persistent_load(m);
            break;
        case 'R': /* REDUCE */
            st = reduce(m);
            break;
        case 'b': /* BUILD: only an OrderedDict's attributes (_metadata) */
            if ((st = pop(m, "BUILD", &b)) != BM_OK || (st = top(m, "BUILD", &a)) != BM_OK)
                break;
            if (val(m, a)->kind != K_DICT || val(m, b)->kind != K_DICT)
                st = pk_fail(m, BM_E_UNSUPPORTED, "BUILD on %s with %s is not allowed",
                             kind_of(m, a), kind_of(m, b));
            break;
        case 's': /* SETITEM */
            if (m->sp - frame_base(m) < 3) {
                st = pk_fail(m, BM_E_FORMAT, "stack underflow at SETITEM");
                break;
            }
            st = setitems(m, m->sp - 2, "SETITEM");
            break;
        case 'u': /* SETITEMS */
            if ((st = pop_mark(m, "SETITEMS", &start)) == BM_OK)
                st = setitems(m, start, "SETITEMS");
            break;
        case 'a': /* APPEND */
            if (m->sp - frame_base(m) < 2) {
                st = pk_fail(m, BM_E_FORMAT, "stack underflow at APPEND");
                break;
            }
            st = appends(m, m->sp - 1, "APPEND");
            break;
        case 'e': /* APPENDS */
            if ((st = pop_mark(m, "APPENDS", &start)) == BM_OK)
                st = appends(m, start, "APPENDS");
            break;
        default:
            if (op >= 0x21 && op < 0x7f)
                st = pk_fail(m, BM_E_UNSUPPORTED,
                             "unsupported pickle opcode '%c' (0x%02x): not one torch.save "
                             "writes for a state dict", op, op);
            else
                st = pk_fail(m, BM_E_UNSUPPORTED,
                             "unsupported pickle opcode 0x%02x: not one torch.save writes for "
                             "a state dict", op);
        }
    }
    return st;
}

static void pk_free(pk *m)
{
    free(m->values);
    free(m->stack);
    free(m->memo);
    free(m->items);
    for (uint32_t i = 0; i < m->n_conts; i++)
        free(m->conts[i].items);
    free(m->conts);
    free(m->tensors);
    free(m->hash);
    /* storages move to the result; on failure the caller frees them */
}

/* ------------------------------------------------------------------------
 * From the pickle's result to the tensor list
 * ------------------------------------------------------------------------ */

/* Check a tensor against its storage and fill the public description. */
static bm_status check_tensor(const bm_torchbin *tb, const pk_tensor *t, const char *name,
                              bm_torchbin_tensor *out, bm_error *err)
{
    const bm_torchbin_storage *s = &tb->storages[t->storage];
    const char *path = tb->path;
    size_t elem = dtype_size(t->dtype);
    out->dtype = t->dtype;
    out->ndim = t->ndim;
    out->storage = t->storage;
    out->parameter = t->parameter;
    if (elem == 0)
        return bm_fail_at(err, BM_E_UNSUPPORTED, path, 0, name, -1, "dtype %s is not supported",
                          bm_dtype_name(t->dtype));
    if (t->offset < 0)
        return bm_fail_at(err, BM_E_FORMAT, path, 0, name, -1, "negative storage offset %lld",
                          (long long)t->offset);
    uint64_t numel = 1, last = (uint64_t)t->offset;
    bool contiguous = true;
    int64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        out->shape[d] = t->shape[d];
        out->stride[d] = t->stride[d];
        if (t->shape[d] < 0)
            return bm_fail_at(err, BM_E_FORMAT, path, 0, name, -1,
                              "negative size %lld in dimension %d", (long long)t->shape[d], d);
        if (t->stride[d] < 0)
            return bm_fail_at(err, BM_E_UNSUPPORTED, path, 0, name, -1,
                              "negative stride %lld in dimension %d", (long long)t->stride[d], d);
        if (__builtin_mul_overflow(numel, (uint64_t)t->shape[d], &numel))
            return bm_fail_at(err, BM_E_OVERFLOW, path, 0, name, -1,
                              "element count overflow");
        if (t->shape[d] != 1 && t->stride[d] != expect)
            contiguous = false;
        if (__builtin_mul_overflow(expect, t->shape[d], &expect))
            expect = INT64_MAX; /* only compared with strides from here on */
    }
    out->numel = numel;
    out->contiguous = contiguous || numel == 0;
    if (__builtin_mul_overflow(numel, (uint64_t)elem, &out->nbytes))
        return bm_fail_at(err, BM_E_OVERFLOW, path, 0, name, -1, "byte size overflow");
    /* the highest element the view touches, then its end in bytes */
    uint64_t end;
    if (numel == 0) {
        if (__builtin_mul_overflow(last, (uint64_t)elem, &end))
            return bm_fail_at(err, BM_E_OVERFLOW, path, 0, name, -1,
                              "storage offset overflow");
    } else {
        for (int d = 0; d < t->ndim; d++) {
            uint64_t span;
            if (__builtin_mul_overflow((uint64_t)(t->shape[d] - 1), (uint64_t)t->stride[d], &span) ||
                __builtin_add_overflow(last, span, &last))
                return bm_fail_at(err, BM_E_OVERFLOW, path, 0, name, -1,
                                  "offset and strides overflow");
        }
        if (__builtin_add_overflow(last, 1, &end) ||
            __builtin_mul_overflow(end, (uint64_t)elem, &end))
            return bm_fail_at(err, BM_E_OVERFLOW, path, 0, name, -1,
                              "offset and strides overflow");
    }
    if (end > s->nbytes)
        return bm_fail_at(err, BM_E_FORMAT, path, 0, name, -1,
                          "needs %llu bytes of storage '%s', which holds %llu",
                          (unsigned long long)end, s->key, (unsigned long long)s->nbytes);
    out->storage_offset = (uint64_t)t->offset;
    out->file_offset = s->file_offset + (uint64_t)t->offset * elem;
    return BM_OK;
}

static _Thread_local const bm_torchbin_tensor *sort_tensors;

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(sort_tensors[*(const int32_t *)a].name, sort_tensors[*(const int32_t *)b].name);
}

static bm_status collect(pk *m, uint32_t result, bm_torchbin *tb, bm_error *err)
{
    const pk_value *d = val(m, result);
    if (d->kind != K_DICT)
        return bm_fail(err, BM_E_UNSUPPORTED,
                       "%s: the pickle holds %s, not a dict of tensors (a state dict)",
                       tb->path, kind_of(m, result));
    const pk_container *c = &m->conts[d->a];
    uint32_t n = c->n / 2;
    if (n > (uint32_t)INT32_MAX)
        return bm_fail(err, BM_E_UNSUPPORTED, "%s: too many tensors", tb->path);
    tb->tensors = calloc(n ? n : 1, sizeof *tb->tensors);
    if (!tb->tensors)
        return bm_fail(err, BM_E_NOMEM, "%s: out of memory", tb->path);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t k = c->items[2 * i], v = c->items[2 * i + 1];
        const pk_value *kv = val(m, k);
        if (kv->kind != K_STR)
            return bm_fail(err, BM_E_FORMAT, "%s: a key of the state dict is %s, not a string",
                           tb->path, kind_of(m, k));
        /* names end up in JSON and index files: the same rule as there */
        if (kv->n == 0 || kv->n > BM_ST_MAX_NAME || memchr(m->p + kv->a, 0, kv->n) ||
            !bm_utf8_valid(m->p + kv->a, kv->n, NULL))
            return bm_fail(err, BM_E_FORMAT,
                           "%s: a key of the state dict is not a UTF-8 name of 1 to %u bytes "
                           "without NUL", tb->path, BM_ST_MAX_NAME);
        bm_torchbin_tensor *t = &tb->tensors[i];
        t->name = strndup((const char *)m->p + kv->a, kv->n);
        if (!t->name)
            return bm_fail(err, BM_E_NOMEM, "%s: out of memory", tb->path);
        tb->n_tensors = (int32_t)i + 1;
        if (val(m, v)->kind != K_TENSOR)
            return bm_fail_at(err, BM_E_UNSUPPORTED, tb->path, 0, t->name, -1,
                              "the value is %s, not a tensor: bmplan reads state dicts",
                              kind_of(m, v));
        bm_status st = check_tensor(tb, &m->tensors[val(m, v)->a], t->name, t, err);
        if (st != BM_OK)
            return st;
    }
    /* a pickled dict may repeat a key (Python keeps the last value): a
     * checkpoint that does is ambiguous, refuse it */
    int32_t *order = malloc((n ? n : 1) * sizeof *order);
    if (!order)
        return bm_fail(err, BM_E_NOMEM, "%s: out of memory", tb->path);
    for (uint32_t i = 0; i < n; i++)
        order[i] = (int32_t)i;
    sort_tensors = tb->tensors;
    qsort(order, n, sizeof *order, cmp_tensor_name);
    sort_tensors = NULL;
    bm_status st = BM_OK;
    for (uint32_t i = 1; i < n && st == BM_OK; i++)
        if (strcmp(tb->tensors[order[i]].name, tb->tensors[order[i - 1]].name) == 0)
            st = bm_fail_at(err, BM_E_FORMAT, tb->path, 0, tb->tensors[order[i]].name, -1,
                            "appears twice in the state dict");
    free(order);
    return st;
}

/* ------------------------------------------------------------------------
 * The archive around the pickle
 * ------------------------------------------------------------------------ */

/* data.pkl must be the one record "<folder>/data.pkl", and every record
 * must live under that folder. */
static bm_status find_archive(const bm_zip *z, const char *path, char **archive,
                              const bm_zip_entry **pkl, bm_error *err)
{
    size_t found = 0;
    for (size_t i = 0; i < z->n_entries; i++) {
        const char *name = z->entries[i].name;
        const char *slash = strchr(name, '/');
        if (slash && strcmp(slash, "/data.pkl") == 0) {
            if (found++ == 0)
                *pkl = &z->entries[i];
        }
    }
    if (found == 0)
        return bm_fail(err, BM_E_FORMAT,
                       "%s: no <folder>/data.pkl record: not a torch.save checkpoint", path);
    if (found > 1)
        return bm_fail(err, BM_E_FORMAT, "%s: %zu data.pkl records: not a torch.save checkpoint",
                       path, found);
    size_t len = strlen((*pkl)->name) - strlen("/data.pkl");
    *archive = strndup((*pkl)->name, len);
    if (!*archive)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    for (size_t i = 0; i < z->n_entries; i++) {
        const char *name = z->entries[i].name;
        if (strncmp(name, *archive, len) != 0 || name[len] != '/')
            return bm_fail(err, BM_E_FORMAT,
                           "%s: record '%.200s' is outside the archive's folder '%s'", path,
                           name, *archive);
    }
    return BM_OK;
}

static const bm_zip_entry *find_record(const bm_zip *z, const char *archive, const char *rel)
{
    char name[BM_ZIP_MAX_NAME + 64];
    snprintf(name, sizeof name, "%s/%s", archive, rel);
    return bm_zip_find(z, name);
}

/* The small records besides data.pkl: format version, byte order and
 * serialization id. */
static bm_status read_markers(const bm_zip *z, bm_torchbin *tb, bm_error *err)
{
    const bm_zip_entry *e = find_record(z, tb->archive, ".data/version");
    if (!e)
        e = find_record(z, tb->archive, "version");
    if (!e)
        return bm_fail(err, BM_E_FORMAT, "%s: no version record in the archive", tb->path);
    unsigned char *data;
    bm_status st = bm_zip_read(z, e, 64, &data, err);
    if (st != BM_OK)
        return st;
    char *end;
    errno = 0;
    long v = strtol((char *)data, &end, 10);
    bool ok = end != (char *)data && errno == 0 && (*end == '\0' || strcmp(end, "\n") == 0);
    free(data);
    /* caffe2/serialize/versions.h: kMin/kMaxSupportedFileFormatVersion */
    if (!ok || v < 1 || v > 10)
        return bm_fail(err, BM_E_UNSUPPORTED,
                       "%s: archive format version record '%s' is not a version bmplan reads "
                       "(1 to 10)", tb->path, e->name);
    tb->version = (int)v;

    e = find_record(z, tb->archive, "byteorder");
    if (e) {
        if ((st = bm_zip_read(z, e, 16, &data, err)) != BM_OK)
            return st;
        bool little = e->size == 6 && memcmp(data, "little", 6) == 0;
        bool big = e->size == 3 && memcmp(data, "big", 3) == 0;
        free(data);
        if (big)
            return bm_fail(err, BM_E_UNSUPPORTED,
                           "%s: big-endian checkpoint (byteorder record says 'big'): bmplan "
                           "reads little-endian checkpoints only", tb->path);
        if (!little)
            return bm_fail(err, BM_E_FORMAT,
                           "%s: byteorder record is neither 'little' nor 'big'", tb->path);
    }
    /* files without the record (PyTorch < 2.1) were written little-endian:
     * PyTorch itself assumes so when loading them */

    e = find_record(z, tb->archive, ".data/serialization_id");
    if (e) {
        if ((st = bm_zip_read(z, e, 256, &data, err)) != BM_OK)
            return st;
        if (printable((char *)data, (size_t)e->size))
            tb->serialization_id = (char *)data;
        else
            free(data);
    }
    return BM_OK;
}

void bm_torchbin_free(bm_torchbin *tb)
{
    if (!tb)
        return;
    for (int32_t i = 0; i < tb->n_tensors; i++)
        free(tb->tensors[i].name);
    free(tb->tensors);
    for (int32_t i = 0; i < tb->n_storages; i++) {
        free(tb->storages[i].key);
        free(tb->storages[i].location);
    }
    free(tb->storages);
    free(tb->serialization_id);
    free(tb->archive);
    free(tb->path);
    if (tb->src.fd >= 0 && tb->owns_fd)
        close(tb->src.fd);
    free(tb);
}

bool bm_torchbin_probe(const bm_byte_source *src)
{
    unsigned char h[4];
    if (bm_source_read(src, 0, h, sizeof h, "", NULL) != BM_OK)
        return false;
    return memcmp(h, "PK\3\4", 4) == 0 || (h[0] == 0x80 && h[1] >= 2 && h[1] <= 5);
}

/* Say what a file that is not a torch zip is, when we can tell. */
static bm_status not_a_zip(const bm_byte_source *src, const char *path, bm_error *err)
{
    unsigned char h[262];
    size_t n = src->size < sizeof h ? (size_t)src->size : sizeof h;
    if (n == 0)
        return bm_fail(err, BM_E_FORMAT, "%s: not a PyTorch checkpoint: the file is empty", path);
    bm_status st = bm_source_read(src, 0, h, n, path, err);
    if (st != BM_OK)
        return st;
    if ((h[0] == 0x80 && n > 1 && h[1] >= 2 && h[1] <= 5) ||
        (n >= 262 && memcmp(h + 257, "ustar", 5) == 0))
        return bm_fail(err, BM_E_UNSUPPORTED,
                       "%s: legacy torch format not supported (saved by PyTorch before 1.6 or "
                       "with _use_new_zipfile_serialization=False); re-save it with torch.save "
                       "in a newer PyTorch, on a machine where loading it is safe", path);
    return bm_fail(err, BM_E_FORMAT, "%s: not a PyTorch checkpoint (not a zip archive)", path);
}

bm_status bm_torchbin_load(const bm_byte_source *src, const char *path, bm_torchbin **out,
                           bm_error *err)
{
    *out = NULL;
    if (!path)
        path = "checkpoint";
    unsigned char magic[4];
    if (src->size < 4 || bm_source_read(src, 0, magic, 4, path, NULL) != BM_OK ||
        memcmp(magic, "PK\3\4", 4) != 0)
        return not_a_zip(src, path, err);

    bm_torchbin *tb = calloc(1, sizeof *tb);
    if (!tb || !(tb->path = strdup(path))) {
        free(tb);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    tb->src = *src;
    tb->owns_fd = false;
    bm_zip *z = NULL;
    const bm_zip_entry *pkl = NULL;
    unsigned char *data = NULL;
    pk m = {.path = tb->path, .err = err};
    bm_status st = bm_zip_open(src, path, &z, err);
    if (st == BM_OK)
        st = find_archive(z, path, &tb->archive, &pkl, err);
    if (st == BM_OK)
        st = read_markers(z, tb, err);
    if (st == BM_OK)
        st = bm_zip_read(z, pkl, BM_TORCHBIN_MAX_PICKLE, &data, err);
    uint32_t result = 0;
    if (st == BM_OK) {
        m.record = pkl->name;
        m.p = data;
        m.len = (size_t)pkl->size;
        m.zip = z;
        m.archive = tb->archive;
        st = run(&m, &result);
        /* storages belong to the result from here on, also on failure */
        tb->storages = m.storages;
        tb->n_storages = (int32_t)m.n_storages;
        tb->pickle_protocol = m.proto;
    }
    if (st == BM_OK)
        st = collect(&m, result, tb, err);
    pk_free(&m);
    free(data);
    bm_zip_close(z);
    if (st != BM_OK) {
        bm_torchbin_free(tb);
        return st;
    }
    *out = tb;
    return BM_OK;
}

bm_status bm_torchbin_load_file(const char *path, bm_torchbin **out, bm_error *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return bm_fail_errno(err, errno, "%s", path);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return bm_fail_errno(err, e, "%s", path);
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return bm_fail(err, BM_E_IO, "%s: not a regular file", path);
    }
    bm_byte_source src = {.map = NULL, .fd = fd, .size = (uint64_t)sb.st_size};
    bm_status st = bm_torchbin_load(&src, path, out, err);
    if (st != BM_OK) {
        close(fd);
        return st;
    }
    (*out)->owns_fd = true;
    return BM_OK;
}

int32_t bm_torchbin_find(const bm_torchbin *tb, const char *name)
{
    for (int32_t i = 0; i < tb->n_tensors; i++)
        if (strcmp(tb->tensors[i].name, name) == 0)
            return i;
    return BM_NONE;
}

/* ------------------------------------------------------------------------
 * Reading tensor bytes
 * ------------------------------------------------------------------------ */

/* A small read-through window for pread sources, so that gathering a
 * transposed tensor does not cost one system call per element when the
 * elements are near each other. */
typedef struct window {
    unsigned char buf[64 << 10];
    uint64_t off;
    size_t len;
} window;

static bm_status window_read(const bm_byte_source *src, const char *path, window *w,
                             uint64_t off, void *dst, size_t len, bm_error *err)
{
    if (src->map || len > sizeof w->buf / 4)
        return bm_source_read(src, off, dst, len, path, err);
    if (!(w->len && off >= w->off && off - w->off <= w->len && len <= w->len - (off - w->off))) {
        size_t n = sizeof w->buf;
        if (off > src->size)
            return bm_source_read(src, off, dst, len, path, err);
        if (src->size - off < n)
            n = (size_t)(src->size - off);
        bm_status st = bm_source_read(src, off, w->buf, n, path, err);
        if (st != BM_OK)
            return st;
        w->off = off;
        w->len = n;
        if (len > n)
            return bm_source_read(src, off, dst, len, path, err);
    }
    memcpy(dst, w->buf + (off - w->off), len);
    return BM_OK;
}

bm_status bm_strided_read(const bm_byte_source *src, const char *path, uint64_t base,
                          size_t elem, int ndim, const int64_t *shape, const int64_t *stride,
                          uint64_t off, void *dst, size_t len, bm_error *err)
{
    if (ndim < 0 || ndim > BM_MAX_DIMS || elem == 0)
        return bm_fail(err, BM_E_INTERNAL, "%s: bad tensor geometry", path);
    uint64_t numel = 1, total, end;
    bool contiguous = true;
    int64_t expect = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        if (shape[d] < 0 || stride[d] < 0 ||
            __builtin_mul_overflow(numel, (uint64_t)shape[d], &numel))
            return bm_fail(err, BM_E_INTERNAL, "%s: bad tensor geometry", path);
        if (shape[d] != 1 && stride[d] != expect)
            contiguous = false;
        if (__builtin_mul_overflow(expect, shape[d], &expect))
            expect = INT64_MAX;
    }
    if (__builtin_mul_overflow(numel, (uint64_t)elem, &total) ||
        __builtin_add_overflow(off, (uint64_t)len, &end) || end > total)
        return bm_fail(err, BM_E_INVALID,
                       "%s: read of %zu bytes at %llu is past the tensor's %llu bytes", path,
                       len, (unsigned long long)off, (unsigned long long)total);
    if (len == 0)
        return BM_OK;
    if (contiguous)
        return bm_source_read(src, base + off, dst, len, path, err);

    /* C-order walk from element off/elem; each step copies one run of
     * elements that are adjacent in the file (the last dimension when its
     * stride is 1, else a single element). */
    window *w = src->map ? NULL : malloc(sizeof *w);
    if (!src->map && !w)
        return bm_fail(err, BM_E_NOMEM, "%s: out of memory", path);
    if (w)
        w->len = 0;
    int64_t idx[BM_MAX_DIMS] = {0};
    uint64_t e = off / elem, rem = e;
    size_t skip = (size_t)(off % elem);
    for (int d = ndim - 1; d >= 0; d--) {
        idx[d] = (int64_t)(rem % (uint64_t)shape[d]);
        rem /= (uint64_t)shape[d];
    }
    unsigned char *out = dst;
    size_t done = 0;
    bm_status st = BM_OK;
    int last = ndim - 1;
    while (done < len && st == BM_OK) {
        uint64_t pos = 0;
        for (int d = 0; d < ndim; d++)
            pos += (uint64_t)idx[d] * (uint64_t)stride[d];
        uint64_t run = (ndim > 0 && stride[last] == 1) ? (uint64_t)(shape[last] - idx[last]) : 1;
        uint64_t bytes = run * elem - skip;
        size_t take = bytes < len - done ? (size_t)bytes : len - done;
        st = window_read(src, path, w, base + pos * elem + skip, out + done, take, err);
        done += take;
        skip = 0;
        /* advance the index by `run` elements */
        if (ndim > 0) {
            idx[last] += (int64_t)run;
            for (int d = last; d > 0 && idx[d] >= shape[d]; d--) {
                idx[d] = 0;
                idx[d - 1]++;
            }
        }
    }
    free(w);
    return st;
}

bm_status bm_torchbin_read(const bm_torchbin *tb, const bm_byte_source *src, int32_t ti,
                           uint64_t off, void *dst, size_t len, bm_error *err)
{
    if (ti < 0 || ti >= tb->n_tensors)
        return bm_fail(err, BM_E_INVALID, "%s: no tensor %d", tb->path, ti);
    const bm_torchbin_tensor *t = &tb->tensors[ti];
    if (!src)
        src = &tb->src;
    return bm_strided_read(src, tb->path, t->file_offset, dtype_size(t->dtype), t->ndim,
                           t->shape, t->stride, off, dst, len, err);
}
