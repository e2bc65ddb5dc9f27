/*
 * pyjson.c - Python json.dumps formatting (see pyjson.h). The rules are
 * those of CPython's Lib/json/encoder.py and float_repr_style 'short'.
 */
#include "pyjson.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void puts_(sbuf *b, const char *s)
{
    put(b, s, strlen(s));
}

static void put_u16(sbuf *b, unsigned cp)
{
    char t[8];
    snprintf(t, sizeof t, "\\u%04x", cp);
    put(b, t, 6);
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

static bool put_string(sbuf *b, const char *s, size_t n)
{
    put(b, "\"", 1);
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = u[i];
        if (c >= 0x20 && c <= 0x7E && c != '"' && c != '\\') {
            size_t j = i;
            while (j < n && u[j] >= 0x20 && u[j] <= 0x7E && u[j] != '"' && u[j] != '\\')
                j++;
            put(b, s + i, j - i);
            i = j;
            continue;
        }
        switch (c) {
        case '"': puts_(b, "\\\""); i++; continue;
        case '\\': puts_(b, "\\\\"); i++; continue;
        case '\n': puts_(b, "\\n"); i++; continue;
        case '\r': puts_(b, "\\r"); i++; continue;
        case '\t': puts_(b, "\\t"); i++; continue;
        case '\b': puts_(b, "\\b"); i++; continue;
        case '\f': puts_(b, "\\f"); i++; continue;
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
    put(b, "\"", 1);
    return true;
}

/* Python's repr(float): the shortest digits that round-trip, fixed
 * notation when the decimal point position is in (-4, 16], else
 * exponent notation with a sign and at least two exponent digits. */
static void put_float(sbuf *b, double v)
{
    if (isnan(v)) {
        puts_(b, "NaN");
        return;
    }
    if (isinf(v)) {
        puts_(b, v < 0 ? "-Infinity" : "Infinity");
        return;
    }
    char e[64];
    for (int prec = 0; prec < 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec, v);
        if (strtod(e, NULL) == v)
            break;
    }
    /* e = "[-]d[.ddd]e[+-]XX" */
    const char *p = e;
    bool neg = *p == '-';
    if (neg)
        p++;
    char digits[32];
    int nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            digits[nd++] = *p;
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = 0;
    int decpt = exp10 + 1;
    char out[64];
    int o = 0;
    if (neg)
        out[o++] = '-';
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            out[o++] = '0';
            out[o++] = '.';
            for (int i = 0; i < -decpt; i++)
                out[o++] = '0';
            memcpy(out + o, digits, (size_t)nd);
            o += nd;
        } else if (decpt >= nd) {
            memcpy(out + o, digits, (size_t)nd);
            o += nd;
            for (int i = nd; i < decpt; i++)
                out[o++] = '0';
            out[o++] = '.';
            out[o++] = '0';
        } else {
            memcpy(out + o, digits, (size_t)decpt);
            o += decpt;
            out[o++] = '.';
            memcpy(out + o, digits + decpt, (size_t)(nd - decpt));
            o += nd - decpt;
        }
        out[o] = 0;
    } else {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            memcpy(out + o, digits + 1, (size_t)(nd - 1));
            o += nd - 1;
        }
        snprintf(out + o, sizeof out - (size_t)o, "e%c%02d", decpt - 1 < 0 ? '-' : '+',
                 abs(decpt - 1));
    }
    puts_(b, out);
}

static void newline(sbuf *b, int indent, int level)
{
    put(b, "\n", 1);
    for (int i = 0; i < indent * level; i++)
        put(b, " ", 1);
}

static int key_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool dump(sbuf *b, json_t *v, int indent, bool sort, int level, bm_error *err);

static bool dump_object(sbuf *b, json_t *v, int indent, bool sort, int level, bm_error *err)
{
    size_t n = json_object_size(v);
    if (n == 0) {
        puts_(b, "{}");
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
    put(b, "{", 1);
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        if (i)
            puts_(b, indent >= 0 ? "," : ", ");
        if (indent >= 0)
            newline(b, indent, level + 1);
        if (!put_string(b, keys[i], strlen(keys[i]))) {
            bm_fail(err, BM_E_FORMAT, "key is not valid UTF-8");
            ok = false;
            break;
        }
        puts_(b, ": ");
        ok = dump(b, json_object_get(v, keys[i]), indent, sort, level + 1, err);
    }
    free(keys);
    if (!ok)
        return false;
    if (indent >= 0)
        newline(b, indent, level);
    put(b, "}", 1);
    return true;
}

static bool dump(sbuf *b, json_t *v, int indent, bool sort, int level, bm_error *err)
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
            puts_(b, "[]");
            return true;
        }
        put(b, "[", 1);
        for (size_t i = 0; i < n; i++) {
            if (i)
                puts_(b, indent >= 0 ? "," : ", ");
            if (indent >= 0)
                newline(b, indent, level + 1);
            if (!dump(b, json_array_get(v, i), indent, sort, level + 1, err))
                return false;
        }
        if (indent >= 0)
            newline(b, indent, level);
        put(b, "]", 1);
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
        puts_(b, t);
        return true;
    }
    case JSON_REAL:
        put_float(b, json_real_value(v));
        return true;
    case JSON_TRUE:
        puts_(b, "true");
        return true;
    case JSON_FALSE:
        puts_(b, "false");
        return true;
    case JSON_NULL:
        puts_(b, "null");
        return true;
    }
    return true;
}

bm_status bm_pyjson_dump(const void *json, int indent, bool sort_keys,
                         char **out, size_t *len, bm_error *err)
{
    sbuf b = {0};
    *out = NULL;
    put(&b, "", 0);
    if (!dump(&b, (json_t *)json, indent, sort_keys, 0, err)) {
        free(b.p);
        return err ? err->code : BM_E_FORMAT;
    }
    if (b.oom) {
        free(b.p);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    *out = b.p;
    if (len)
        *len = b.n;
    return BM_OK;
}
