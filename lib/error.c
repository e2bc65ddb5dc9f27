/*
 * error.c - error codes and one-line messages with context.
 *
 * Every failure in libbmplan ends up here: the message is formatted once,
 * with the file, line, tensor and byte offset that locate the problem, and
 * flattened to a single line so that the CLI can print it as is.
 */
#include "bmplan.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

static const char *const status_names[BM_E_COUNT_] = {
    [BM_OK] = "success",
    [BM_E_IO] = "input/output error",
    [BM_E_FORMAT] = "malformed input",
    [BM_E_INVALID] = "invalid value",
    [BM_E_UNSUPPORTED] = "not supported",
    [BM_E_NOMEM] = "out of memory",
    [BM_E_OVERFLOW] = "size overflow",
    [BM_E_NOSPACE] = "no space left on device",
    [BM_E_EXISTS] = "output exists",
    [BM_E_NOTFOUND] = "not found",
    [BM_E_NOFIT] = "does not fit",
    [BM_E_COMPAT] = "the emulated accelerate version fails here",
    [BM_E_BUSY] = "output is locked by another process",
    [BM_E_INTERNAL] = "internal error",
};

const char *bm_strerror(bm_status code)
{
    if ((int)code < 0 || code >= BM_E_COUNT_ || !status_names[code])
        return "unknown error";
    return status_names[code];
}

/* Replace control characters so the message stays one printable line. */
static void flatten(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = ' ';
}

bm_status bm_fail(bm_error *err, bm_status code, const char *fmt, ...)
{
    if (!err)
        return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    flatten(err->msg);
    err->code = code;
    return code;
}

bm_status bm_fail_at(bm_error *err, bm_status code, const char *file,
                     long line, const char *tensor, int64_t offset,
                     const char *fmt, ...)
{
    if (!err)
        return code;
    char what[BM_ERROR_MSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);

    size_t n = 0;
    char *m = err->msg;
    size_t cap = sizeof err->msg;
#define ADD(...)                                                          \
    do {                                                                  \
        if (n < cap) {                                                    \
            int w_ = snprintf(m + n, cap - n, __VA_ARGS__);               \
            if (w_ > 0)                                                   \
                n += (size_t)w_;                                          \
        }                                                                 \
    } while (0)
    if (file && *file) {
        ADD("%s", file);
        if (line > 0)
            ADD(":%ld", line);
        ADD(": ");
    }
    if (tensor) {
        /* tensor names come from hostile files: cap what we echo */
        ADD("tensor '%.200s%s'", tensor, strlen(tensor) > 200 ? "..." : "");
        if (offset >= 0)
            ADD(" at byte %lld", (long long)offset);
        ADD(": ");
    } else if (offset >= 0) {
        ADD("at byte %lld: ", (long long)offset);
    }
    ADD("%s", what);
#undef ADD
    flatten(err->msg);
    err->code = code;
    return code;
}

void bm_error_prefix(bm_error *err, const char *fmt, ...)
{
    if (!err)
        return;
    char pre[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    char old[BM_ERROR_MSG];
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s: %s", pre, old);
    flatten(err->msg);
}

bm_status bm_fail_errno(bm_error *err, int errnum, const char *fmt, ...)
{
    bm_status code = BM_E_IO;
    if (errnum == ENOSPC || errnum == EFBIG
#ifdef EDQUOT
        || errnum == EDQUOT
#endif
    )
        code = BM_E_NOSPACE;
    else if (errnum == ENOENT)
        code = BM_E_NOTFOUND;
    else if (errnum == ENOMEM)
        code = BM_E_NOMEM;
    if (!err)
        return code;
    char what[BM_ERROR_MSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return bm_fail(err, code, "%s: %s", what, strerror(errnum));
}
