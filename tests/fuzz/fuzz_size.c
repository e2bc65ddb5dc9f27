/*
 * fuzz_size.c - libFuzzer target for size strings: accelerate's
 * convert_file_size_to_int (bm_size_parse, used by --max-memory values)
 * and the hub's shard-size parser (bm_size_parse_shard, --max-shard-size),
 * plus the table formatter fed with the parsed sizes.
 *
 * The input is one string (cut at the first NUL, as argv would be). Every
 * call must either succeed with a sane value or fail with a one-line
 * message; never read past the string, overflow or trap.
 * Seeds: tests/fuzz/corpus/size/.
 */
#include "bmplan.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_error(bm_status st, const bm_error *err)
{
    if (st == BM_OK)
        return;
    if (!err->msg[0] || strchr(err->msg, '\n') || strlen(err->msg) >= BM_ERROR_MSG)
        abort();
}

static void check_format(uint64_t bytes)
{
    char buf[64];
    memset(buf, 'x', sizeof buf);
    char *s = bm_size_format(bytes, buf, sizeof buf);
    if (s != buf || !memchr(buf, 0, sizeof buf) || !buf[0])
        abort();
    memset(buf, 'x', sizeof buf);
    s = bm_size_format_bits(bytes, buf, sizeof buf);
    if (s != buf || !memchr(buf, 0, sizeof buf) || !buf[0])
        abort();
    /* a buffer that is too small must still end up terminated */
    char tiny[4];
    memset(tiny, 'x', sizeof tiny);
    bm_size_format(bytes, tiny, sizeof tiny);
    if (!memchr(tiny, 0, sizeof tiny))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size heap copy, so ASan sees any read past the end */
    size_t n = strnlen((const char *)data, size);
    char *text = malloc(n + 1);
    if (!text)
        return 0;
    memcpy(text, data, n);
    text[n] = 0;

    for (int allow_zero = 0; allow_zero < 2; allow_zero++) {
        bm_error err = {0};
        int64_t bytes = -12345;
        bm_status st = bm_size_parse(text, allow_zero, &bytes, &err);
        check_error(st, &err);
        if (st == BM_OK) {
            if (bytes < 0 || (!allow_zero && bytes == 0))
                abort();
            check_format((uint64_t)bytes);
        }
    }
    bm_error err = {0};
    uint64_t shard = 0;
    bm_status st = bm_size_parse_shard(text, &shard, &err);
    check_error(st, &err);
    if (st == BM_OK)
        check_format(shard);

    /* the formatter on arbitrary values */
    if (size >= 8) {
        uint64_t v;
        memcpy(&v, data + size - 8, 8);
        check_format(v);
    }
    free(text);
    return 0;
}
