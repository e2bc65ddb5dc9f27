/*
 * pyjson.c - Python json.dumps formatting (see pyjson.h). The rules are
 * those of CPython's Lib/json/encoder.py and float_repr_style 'short'.
 */
#include "pyjson.h"
#include "sbuf.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void put_u16(bm_sbuf *b, unsigned cp)
{
    char t[8];
    snprintf(t, sizeof t, "\\u%04x", cp);
    bm_sb_add(b, t, 6);
}

/* Decode one UTF-8 sequence (strict: no overlongs, no surrogates). */
static int utf8_next(const unsigned char *s, size_t n, unsigned *cp)
{
    unsigned c = s[0];
    int len;
    unsigned min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        len = 2, min = 0x80, c &= 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, min = 0x800, c &= 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4, min = 0x10000, c &= 0x07;
    } else {
        return -1;
    }
    if ((size_t)len > n)
        return -1;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return -1;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return -1;
    *cp = c;
    return len;
}

static bool put_string(bm_sbuf *b, const char *s, size_t n)
{
    bm_sb_add(b, "\"", 1);
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = u[i];
        if (c >= 0x20 && c <= 0x7E && c != '"' && c != '\\') {
            size_t j = i;
            while (j < n && u[j] >= 0x20 && u[j] <= 0x7E && u[j] != '"' && u[j] != '\\')
                j++;
            bm_sb_add(b, s + i, j - i);
            i = j;
            continue;
        }
        switch (c) {
        case '"': bm_sb_str(b, "\\\""); i++; continue;
        case '\\': bm_sb_str(b, "\\\\"); i++; continue;
        case '\n': bm_sb_str(b, "\\n"); i++; continue;
        case '\r': bm_sb_str(b, "\\r"); i++; continue;
        case '\t': bm_sb_str(b, "\\t"); i++; continue;
        case '\b': bm_sb_str(b, "\\b"); i++; continue;
        case '\f': bm_sb_str(b, "\\f"); i++; continue;
        default: break;
        }
        unsigned cp;
        int len = utf8_next(u + i, n - i, &cp);
        if (len < 0)
            return false;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            put_u16(b, 0xD800 | (cp >> 10));
            put_u16(b, 0xDC00 | (cp & 0x3FF));
        } else {
            put_u16(b, cp);
        }
        i += (size_t)len;
    }
    bm_sb_add(b, "\"", 1);
    return true;
}

/* Python's json.dumps of a float: repr(), with JavaScript's names for the
 * values JSON has none for. */
static void put_float(bm_sbuf *b, double v)
{
    if (isnan(v))
        bm_sb_str(b, "NaN");
    else if (isinf(v))
        bm_sb_str(b, v < 0 ? "-Infinity" : "Infinity");
    else
        bm_sb_pyfloat(b, v);
}

static void newline(bm_sbuf *b, int indent, int level)
{
    bm_sb_add(b, "\n", 1);
    for (int i = 0; i < indent * level; i++)
        bm_sb_add(b, " ", 1);
}

static int key_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool dump(bm_sbuf *b, json_t *v, int indent, bool sort, int level, bm_error *err);

static bool dump_object(bm_sbuf *b, json_t *v, int indent, bool sort, int level, bm_error *err)
{
    size_t n = json_object_size(v);
    if (n == 0) {
        bm_sb_str(b, "{}");
        return true;
    }
    const char **keys = malloc(n * sizeof *keys);
    if (!keys) {
        b->oom = true;
        return true;
    }
    size_t k = 0;
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) keys[k++] = key;
    if (sort)
        qsort(keys, n, sizeof *keys, key_cmp);
    bm_sb_add(b, "{", 1);
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        if (i)
            bm_sb_str(b, indent >= 0 ? "," : ", ");
        if (indent >= 0)
            newline(b, indent, level + 1);
        if (!put_string(b, keys[i], strlen(keys[i]))) {
            bm_fail(err, BM_E_FORMAT, "key is not valid UTF-8");
            ok = false;
            break;
        }
        bm_sb_str(b, ": ");
        ok = dump(b, json_object_get(v, keys[i]), indent, sort, level + 1, err);
    }
    free(keys);
    if (!ok)
        return false;
    if (indent >= 0)
        newline(b, indent, level);
    bm_sb_add(b, "}", 1);
    return true;
}

static bool dump(bm_sbuf *b, json_t *v, int indent, bool sort, int level, bm_error *err)
{
    if (level > 256) {
        bm_fail(err, BM_E_FORMAT, "JSON nested more than 256 levels");
        return false;
    }
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return dump_object(b, v, indent, sort, level, err);
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        if (n == 0) {
            bm_sb_str(b, "[]");
            return true;
        }
        bm_sb_add(b, "[", 1);
        for (size_t i = 0; i < n; i++) {
            if (i)
                bm_sb_str(b, indent >= 0 ? "," : ", ");
            if (indent >= 0)
                newline(b, indent, level + 1);
            if (!dump(b, json_array_get(v, i), indent, sort, level + 1, err))
                return false;
        }
        if (indent >= 0)
            newline(b, indent, level);
        bm_sb_add(b, "]", 1);
        return true;
    }
    case JSON_STRING:
        if (!put_string(b, json_string_value(v), json_string_length(v))) {
            bm_fail(err, BM_E_FORMAT, "string is not valid UTF-8");
            return false;
        }
        return true;
    case JSON_INTEGER: {
        char t[32];
        snprintf(t, sizeof t, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        bm_sb_str(b, t);
        return true;
    }
    case JSON_REAL:
        put_float(b, json_real_value(v));
        return true;
    case JSON_TRUE:
        bm_sb_str(b, "true");
        return true;
    case JSON_FALSE:
        bm_sb_str(b, "false");
        return true;
    case JSON_NULL:
        bm_sb_str(b, "null");
        return true;
    }
    return true;
}

bm_status bm_pyjson_dump(const void *json, int indent, bool sort_keys,
                         char **out, size_t *len, bm_error *err)
{
    bm_sbuf b = {0};
    *out = NULL;
    if (!dump(&b, (json_t *)json, indent, sort_keys, 0, err)) {
        free(b.p);
        return err ? err->code : BM_E_FORMAT;
    }
    *out = bm_sb_finish(&b, len);
    if (!*out)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    return BM_OK;
}
