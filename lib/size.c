/*
 * size.c - size strings as accelerate and the Hugging Face hub parse them,
 * and human-readable sizes for tables.
 */
#include "bmplan.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/*
 * Python's float() grammar, minus what no size string needs (non-ASCII
 * digits): surrounding whitespace, sign, digits with single underscores
 * between digits, optional fraction and exponent, or inf/infinity/nan.
 * Writes a plain C numeral to out (underscores removed). Hex is rejected,
 * unlike strtod.
 */
static bool python_float(const char *s, size_t len, double *value)
{
    while (len && isspace((unsigned char)*s))
        s++, len--;
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    if (len == 0 || len > 200)
        return false;
    char buf[256];
    size_t o = 0, i = 0;
    if (s[i] == '+' || s[i] == '-')
        buf[o++] = s[i++];
    const char *rest = s + i;
    size_t rl = len - i;
    static const char *const specials[] = {"inf", "infinity", "nan"};
    for (int k = 0; k < 3; k++)
        if (rl == strlen(specials[k]) && strncasecmp(rest, specials[k], rl) == 0) {
            memcpy(buf + o, rest, rl);
            buf[o + rl] = 0;
            *value = strtod(buf, NULL);
            return true;
        }
    /* digits (with underscores) [. digits] [e [sign] digits] */
    int ndig = 0;
    bool prev_digit = false;
    int state = 0; /* 0 int part, 1 fraction, 2 exponent */
    int exp_digits = 0;
    for (; i < len; i++) {
        char c = s[i];
        if (isdigit((unsigned char)c)) {
            buf[o++] = c;
            prev_digit = true;
            if (state == 2)
                exp_digits++;
            else
                ndig++;
        } else if (c == '_') {
            if (!prev_digit || i + 1 >= len || !isdigit((unsigned char)s[i + 1]))
                return false;
            prev_digit = false;
        } else if (c == '.' && state == 0) {
            buf[o++] = c;
            state = 1;
            prev_digit = false;
        } else if ((c == 'e' || c == 'E') && state < 2 && ndig > 0) {
            buf[o++] = 'e';
            state = 2;
            prev_digit = false;
            if (i + 1 < len && (s[i + 1] == '+' || s[i + 1] == '-'))
                buf[o++] = s[++i];
        } else {
            return false;
        }
    }
    if (ndig == 0 || (state == 2 && exp_digits == 0))
        return false;
    buf[o] = 0;
    *value = strtod(buf, NULL);
    return true;
}

static bool ends_with_ci(const char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && strncasecmp(s + len - n, suffix, n) == 0;
}

bm_status bm_size_parse(const char *text, bool allow_zero, int64_t *bytes,
                        bm_error *err)
{
    static const struct {
        const char *suffix;
        double mult;
        bool decimal;
    } units[] = {
        {"GIB", 1073741824.0, false}, {"MIB", 1048576.0, false},
        {"KIB", 1024.0, false},       {"GB", 1e9, true},
        {"MB", 1e6, true},            {"KB", 1e3, true},
    };
    if (!text)
        return bm_fail(err, BM_E_INVALID, "missing size");
    size_t len = strlen(text);
    for (size_t u = 0; u < sizeof units / sizeof *units; u++) {
        if (!ends_with_ci(text, len, units[u].suffix))
            continue;
        double v;
        if (!python_float(text, len - strlen(units[u].suffix), &v) || isnan(v))
            break;
        double product = v * units[u].mult;
        if (isinf(product) || product >= 9.2233720368547758e18 ||
            product <= -9.2233720368547758e18)
            return bm_fail(err, BM_E_INVALID,
                           "size '%.100s' is out of range", text);
        int64_t n = (int64_t)product; /* truncation, as Python's int() */
        if (units[u].decimal && text[len - 1] == 'b')
            n = n >= 0 ? n / 8 : -((-n + 7) / 8); /* Python // floors */
        if (n < 0 || (n == 0 && !allow_zero))
            return bm_fail(err, BM_E_INVALID,
                           "size '%.100s' must be %s", text,
                           allow_zero ? "at least 0" : "greater than 0");
        *bytes = n;
        return BM_OK;
    }
    return bm_fail(err, BM_E_INVALID,
                   "size '%.100s' is not in a valid format: use an integer "
                   "for bytes, or a number with a unit (GiB, MiB, KiB, GB, "
                   "MB, KB; e.g. '5.0GB')",
                   text);
}

bm_status bm_size_parse_shard(const char *text, uint64_t *bytes, bm_error *err)
{
    static const struct {
        const char *suffix;
        double mult;
    } units[] = {
        {"TIB", 1099511627776.0}, {"GIB", 1073741824.0}, {"MIB", 1048576.0},
        {"KIB", 1024.0},          {"TB", 1e12},          {"GB", 1e9},
        {"MB", 1e6},              {"KB", 1e3},
    };
    if (!text || !*text)
        return bm_fail(err, BM_E_INVALID, "missing size");
    size_t len = strlen(text);
    double v;
    double mult = 1;
    size_t numlen = len;
    for (size_t u = 0; u < sizeof units / sizeof *units; u++)
        if (ends_with_ci(text, len, units[u].suffix)) {
            mult = units[u].mult;
            numlen = len - strlen(units[u].suffix);
            break;
        }
    if (!python_float(text, numlen, &v) || isnan(v) || v < 0 ||
        (mult == 1 && v != floor(v)))
        return bm_fail(err, BM_E_INVALID,
                       "size '%.100s' is not valid: use bytes or a number "
                       "with GB, GiB, MB, MiB, KB, KiB or TB",
                       text);
    double product = v * mult;
    if (!(product < 1.8446744073709552e19))
        return bm_fail(err, BM_E_INVALID, "size '%.100s' is out of range", text);
    *bytes = (uint64_t)product;
    if (*bytes == 0)
        return bm_fail(err, BM_E_INVALID, "size '%.100s' must be greater than 0",
                       text);
    return BM_OK;
}

char *bm_size_format(uint64_t bytes, char *buf, size_t len)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (bytes < 1024) {
        snprintf(buf, len, "%llu B", (unsigned long long)bytes);
        return buf;
    }
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 6) {
        v /= 1024;
        u++;
    }
    snprintf(buf, len, "%.2f %s", v, unit[u]);
    return buf;
}

char *bm_size_format_bits(uint64_t bits, char *buf, size_t len)
{
    if (bits % 8 == 0 || bits >= 8 * 1024)
        return bm_size_format(bits / 8, buf, len);
    snprintf(buf, len, "%.3f B", (double)bits / 8);
    return buf;
}

char *bm_count_format(uint64_t n, char *buf, size_t len)
{
    char tmp[32];
    int nd = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)n);
    size_t o = 0;
    if (!len)
        return buf;
    for (int i = 0; i < nd && o + 2 < len; i++) {
        if (i && (nd - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    buf[o] = 0;
    return buf;
}
