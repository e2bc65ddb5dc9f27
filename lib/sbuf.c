/*
 * sbuf.c - the growable string of sbuf.h.
 */
#include "sbuf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void bm_sb_add(bm_sbuf *b, const char *s, size_t len)
{
    if (b->oom)
        return;
    if (len > SIZE_MAX - 1 - b->n) {
        b->oom = true;
        return;
    }
    size_t need = b->n + len + 1;
    if (need > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < need) {
            if (nc > SIZE_MAX / 2) {
                nc = need;
                break;
            }
            nc *= 2;
        }
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    if (len)
        memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = 0;
}

void bm_sb_str(bm_sbuf *b, const char *s)
{
    bm_sb_add(b, s, strlen(s));
}

void bm_sb_rep(bm_sbuf *b, const char *s, size_t times)
{
    size_t len = strlen(s);
    for (size_t i = 0; i < times && !b->oom; i++)
        bm_sb_add(b, s, len);
}

void bm_sb_printf(bm_sbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        bm_sb_add(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    bm_sb_add(b, big, (size_t)n);
    free(big);
}

void bm_sb_pyfloat(bm_sbuf *b, double v)
{
    char digits[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(digits, sizeof digits, "%.*e", prec - 1, v);
        if (strtod(digits, NULL) == v)
            break;
    }
    /* digits = "[-]d[.ddd]e[+-]XX"; the shortest form has no trailing 0s */
    char mant[32];
    int mn = 0;
    const char *p = digits;
    bool neg = *p == '-';
    if (neg)
        p++;
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            mant[mn++] = *p;
    mant[mn] = 0;
    int exp10 = atoi(p + 1);
    if (neg)
        bm_sb_add(b, "-", 1);
    if (exp10 >= 16 || exp10 < -4) {
        bm_sb_add(b, mant, 1);
        if (mn > 1) {
            bm_sb_add(b, ".", 1);
            bm_sb_add(b, mant + 1, (size_t)mn - 1);
        }
        bm_sb_printf(b, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
        return;
    }
    if (exp10 < 0) {
        bm_sb_str(b, "0.");
        for (int i = -1; i > exp10; i--)
            bm_sb_add(b, "0", 1);
        bm_sb_add(b, mant, (size_t)mn);
        return;
    }
    /* integer part: mant[0..exp10], padded with zeros */
    for (int i = 0; i <= exp10; i++)
        bm_sb_add(b, i < mn ? &mant[i] : "0", 1);
    bm_sb_add(b, ".", 1);
    if (mn > exp10 + 1)
        bm_sb_add(b, mant + exp10 + 1, (size_t)(mn - exp10 - 1));
    else
        bm_sb_add(b, "0", 1);
}

char *bm_sb_finish(bm_sbuf *b, size_t *len)
{
    bm_sb_add(b, "", 0);
    char *p = b->oom ? NULL : b->p;
    if (len)
        *len = p ? b->n : 0;
    if (!p)
        free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
    b->oom = false;
    return p;
}
