/*
 * devmap.c - devices and device maps: accelerate's device order, the map
 * type with O(1) key lookup and longest-prefix lookup, and its JSON form
 * (read with hostile-input checks, written the way accelerate's maps load:
 * GPU ids as integers, "cpu"/"disk"/"mps" as strings).
 */
#include "internal.h"
#include "strtab.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Devices
 * ------------------------------------------------------------------------ */

int bm_device_cmp(bm_device a, bm_device b)
{
    if (a.kind != b.kind)
        return a.kind < b.kind ? -1 : 1;
    if (a.kind == BM_DEV_GPU && a.id != b.id)
        return a.id < b.id ? -1 : 1;
    return 0;
}

bool bm_device_eq(bm_device a, bm_device b)
{
    return bm_device_cmp(a, b) == 0;
}

const char *bm_device_str(bm_device d, char *buf, size_t len)
{
    switch (d.kind) {
    case BM_DEV_GPU:
        snprintf(buf, len, "%lld", (long long)d.id);
        return buf;
    case BM_DEV_MPS:
        return "mps";
    case BM_DEV_CPU:
        return "cpu";
    default:
        return "disk";
    }
}

/* A decimal integer with an optional sign, as Python's int() reads a key
 * the budgets file spells as a string. */
static bool parse_int_key(const char *s, int64_t *out)
{
    const char *p = s;
    bool neg = false;
    if (*p == '-' || *p == '+')
        neg = *p++ == '-';
    if (!*p)
        return false;
    int64_t v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        if (v > (INT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (*p - '0');
    }
    *out = neg ? -v : v;
    return true;
}

bm_status bm_device_parse_key(const char *key, bm_device *out, bm_error *err)
{
    int64_t id;
    if (!key)
        key = "";
    if (strcmp(key, "cpu") == 0)
        *out = (bm_device){BM_DEV_CPU, 0};
    else if (strcmp(key, "disk") == 0)
        *out = (bm_device){BM_DEV_DISK, 0};
    else if (strcmp(key, "mps") == 0)
        *out = (bm_device){BM_DEV_MPS, 0};
    else if (parse_int_key(key, &id))
        *out = (bm_device){BM_DEV_GPU, id};
    else
        return bm_fail(err, BM_E_INVALID,
                       "device '%.100s' is not recognized: use integers (GPU "
                       "ids), 'mps', 'cpu' and 'disk' (accelerate raises "
                       "ValueError for it)",
                       key);
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * The map
 * ------------------------------------------------------------------------ */

struct bm_devmap_impl {
    bm_arena arena;
    bm_strtab index; /* name -> entry */
    int32_t cap;
};

bm_devmap *bm_devmap_new(void)
{
    bm_devmap *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->impl = calloc(1, sizeof *m->impl);
    if (!m->impl) {
        free(m);
        return NULL;
    }
    return m;
}

void bm_devmap_free(bm_devmap *map)
{
    if (!map)
        return;
    if (map->impl) {
        bm_arena_free(&map->impl->arena);
        bm_strtab_free(&map->impl->index);
        free(map->impl);
    }
    free(map->e);
    free(map);
}

int32_t bm_devmap_find(const bm_devmap *map, const char *name)
{
    return bm_strtab_get(&map->impl->index, name, strlen(name));
}

bm_status bm_devmap_set(bm_devmap *map, const char *name, bm_device dev,
                        bm_error *err)
{
    struct bm_devmap_impl *im = map->impl;
    size_t len = strlen(name);
    if (len > UINT32_MAX / 2)
        return bm_fail(err, BM_E_INVALID, "device map key is too long");
    int32_t i = bm_strtab_get(&im->index, name, len);
    if (i != BM_NONE) {
        map->e[i].dev = dev;
        return BM_OK;
    }
    if (map->n == im->cap) {
        if (im->cap > INT32_MAX / 2)
            return bm_fail(err, BM_E_NOMEM, "device map is too large");
        int32_t nc = im->cap ? im->cap * 2 : 16;
        bm_devmap_entry *ne = realloc(map->e, (size_t)nc * sizeof *ne);
        if (!ne)
            return bm_fail(err, BM_E_NOMEM, "out of memory building a device map");
        map->e = ne;
        im->cap = nc;
    }
    char *copy = bm_arena_strndup(&im->arena, name, len);
    if (!copy || bm_strtab_put(&im->index, copy, len, map->n) < 0)
        return bm_fail(err, BM_E_NOMEM, "out of memory building a device map");
    map->e[map->n].name = copy;
    map->e[map->n].dev = dev;
    map->n++;
    return BM_OK;
}

int32_t bm_devmap_lookup(const bm_devmap *map, const char *name)
{
    const bm_strtab *ix = &map->impl->index;
    size_t len = strlen(name);
    for (;;) {
        int32_t i = bm_strtab_get(ix, name, len);
        if (i != BM_NONE)
            return i;
        if (len == 0)
            return BM_NONE;
        while (len > 0 && name[len - 1] != '.')
            len--;
        if (len > 0)
            len--; /* drop the dot: "a.b.c" -> "a.b" -> "a" -> "" */
    }
}

/* ------------------------------------------------------------------------
 * JSON
 * ------------------------------------------------------------------------ */

static bm_status parse_value(json_t *v, const char *source, const char *key,
                             bm_device *dev, bm_error *err)
{
    if (json_is_integer(v)) {
        json_int_t id = json_integer_value(v);
        *dev = (bm_device){BM_DEV_GPU, (int64_t)id};
        return BM_OK;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        int64_t id;
        if (strcmp(s, "cpu") == 0)
            *dev = (bm_device){BM_DEV_CPU, 0};
        else if (strcmp(s, "disk") == 0)
            *dev = (bm_device){BM_DEV_DISK, 0};
        else if (strcmp(s, "mps") == 0)
            *dev = (bm_device){BM_DEV_MPS, 0};
        else if (strcmp(s, "cuda") == 0)
            *dev = (bm_device){BM_DEV_GPU, 0};
        else if (strncmp(s, "cuda:", 5) == 0 && s[5] != '-' && s[5] != '+' &&
                 parse_int_key(s + 5, &id))
            *dev = (bm_device){BM_DEV_GPU, id};
        else
            return bm_fail(err, BM_E_FORMAT,
                           "%s: device '%.60s' of '%.200s' is not a GPU id, "
                           "\"cpu\", \"disk\" or \"mps\"",
                           source, s, key);
        return BM_OK;
    }
    return bm_fail(err, BM_E_FORMAT,
                   "%s: device of '%.200s' must be an integer or a string",
                   source, key);
}

bm_status bm_devmap_parse(const char *text, size_t len, const char *source,
                          bm_devmap **out, bm_error *err)
{
    *out = NULL;
    if (!source)
        source = "device map";
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return bm_fail(err, BM_E_FORMAT, "%s:%d: %s", source, je.line, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return bm_fail(err, BM_E_FORMAT,
                       "%s: a device map must be a JSON object {name: device}",
                       source);
    }
    bm_devmap *map = bm_devmap_new();
    if (!map) {
        json_decref(root);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    const char *key;
    json_t *v;
    bm_status st = BM_OK;
    json_object_foreach(root, key, v)
    {
        bm_device dev;
        if ((st = parse_value(v, source, key, &dev, err)))
            break;
        if ((st = bm_devmap_set(map, key, dev, err)))
            break;
    }
    json_decref(root);
    if (st) {
        bm_devmap_free(map);
        return st;
    }
    *out = map;
    return BM_OK;
}

bm_status bm_devmap_load(const char *path, bm_devmap **out, bm_error *err)
{
    char *data;
    size_t len;
    bm_status st = bm_read_file(path, BM_DEVMAP_MAX_BYTES, &data, &len, err);
    if (st)
        return st;
    st = bm_devmap_parse(data, len, path, out, err);
    free(data);
    return st;
}

/* A JSON string literal; bytes >= 0x80 pass through (names are UTF-8). */
static void sb_json_string(bm_sbuf *b, const char *s)
{
    bm_sb_add(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"':
            bm_sb_add(b, "\\\"", 2);
            break;
        case '\\':
            bm_sb_add(b, "\\\\", 2);
            break;
        case '\n':
            bm_sb_add(b, "\\n", 2);
            break;
        case '\t':
            bm_sb_add(b, "\\t", 2);
            break;
        case '\r':
            bm_sb_add(b, "\\r", 2);
            break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                bm_sb_str(b, esc);
            } else {
                bm_sb_add(b, (const char *)p, 1);
            }
        }
    }
    bm_sb_add(b, "\"", 1);
}

bm_status bm_devmap_to_json(const bm_devmap *map, char **out, size_t *len,
                            bm_error *err)
{
    bm_sbuf b = {0};
    if (map->n == 0) {
        bm_sb_str(&b, "{}\n");
    } else {
        bm_sb_str(&b, "{\n");
        for (int32_t i = 0; i < map->n; i++) {
            char dev[32];
            bm_sb_str(&b, "  ");
            sb_json_string(&b, map->e[i].name);
            bm_sb_str(&b, ": ");
            if (map->e[i].dev.kind == BM_DEV_GPU) {
                bm_sb_str(&b, bm_device_str(map->e[i].dev, dev, sizeof dev));
            } else {
                sb_json_string(&b, bm_device_str(map->e[i].dev, dev, sizeof dev));
            }
            bm_sb_str(&b, i + 1 < map->n ? ",\n" : "\n");
        }
        bm_sb_str(&b, "}\n");
    }
    if (b.oom) {
        free(b.p);
        return bm_fail(err, BM_E_NOMEM, "out of memory writing a device map");
    }
    *out = b.p;
    *len = b.n;
    return BM_OK;
}
