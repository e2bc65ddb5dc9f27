/*
 * dtype.c - PyTorch dtypes: names, aliases, safetensors codes, byte sizes,
 * and accelerate's dtype_byte_size rules for each emulated version.
 */
#include "bmplan.h"

#include <string.h>

struct dtype_info {
    const char *torch;   /* PyTorch name without "torch." */
    const char *st;      /* safetensors code, NULL if none */
    unsigned bits;       /* storage bits per element */
    bool floating;       /* not torch.int*, torch.uint*, torch.bool */
};

static const struct dtype_info info[BM_DTYPE_COUNT_] = {
    [BM_F64] = {"float64", "F64", 64, true},
    [BM_F32] = {"float32", "F32", 32, true},
    [BM_F16] = {"float16", "F16", 16, true},
    [BM_BF16] = {"bfloat16", "BF16", 16, true},
    [BM_F8_E4M3FN] = {"float8_e4m3fn", "F8_E4M3", 8, true},
    [BM_F8_E5M2] = {"float8_e5m2", "F8_E5M2", 8, true},
    [BM_F8_E4M3FNUZ] = {"float8_e4m3fnuz", "F8_E4M3FNUZ", 8, true},
    [BM_F8_E5M2FNUZ] = {"float8_e5m2fnuz", "F8_E5M2FNUZ", 8, true},
    [BM_C64] = {"complex64", "C64", 64, true},
    [BM_C128] = {"complex128", NULL, 128, true},
    [BM_I64] = {"int64", "I64", 64, false},
    [BM_I32] = {"int32", "I32", 32, false},
    [BM_I16] = {"int16", "I16", 16, false},
    [BM_I8] = {"int8", "I8", 8, false},
    [BM_U64] = {"uint64", "U64", 64, false},
    [BM_U32] = {"uint32", "U32", 32, false},
    [BM_U16] = {"uint16", "U16", 16, false},
    [BM_U8] = {"uint8", "U8", 8, false},
    [BM_BOOL] = {"bool", "BOOL", 8, false},
    [BM_INT4] = {"int4", NULL, 4, false},
    [BM_INT2] = {"int2", NULL, 2, false},
};

static const struct {
    const char *alias;
    bm_dtype dt;
} aliases[] = {
    {"fp64", BM_F64},  {"double", BM_F64}, {"fp32", BM_F32},
    {"float", BM_F32}, {"fp16", BM_F16},   {"half", BM_F16},
    {"bf16", BM_BF16}, {"long", BM_I64},   {"int", BM_I32},
    {"short", BM_I16}, {"cfloat", BM_C64}, {"cdouble", BM_C128},
    {"fp8", BM_F8_E4M3FN},
};

/* Names torch itself has as attributes besides the canonical ones. */
static const struct {
    const char *alias;
    bm_dtype dt;
} torch_aliases[] = {
    {"double", BM_F64}, {"float", BM_F32}, {"half", BM_F16},
    {"long", BM_I64},   {"int", BM_I32},   {"short", BM_I16},
    {"cfloat", BM_C64}, {"cdouble", BM_C128},
};

bm_dtype bm_dtype_parse_torch(const char *name)
{
    if (!name)
        return BM_DTYPE_INVALID;
    if (strncmp(name, "torch.", 6) == 0)
        name += 6;
    for (int d = 1; d < BM_DTYPE_COUNT_; d++)
        if (d != BM_INT4 && d != BM_INT2 && strcmp(info[d].torch, name) == 0)
            return (bm_dtype)d;
    for (size_t i = 0; i < sizeof torch_aliases / sizeof *torch_aliases; i++)
        if (strcmp(torch_aliases[i].alias, name) == 0)
            return torch_aliases[i].dt;
    return BM_DTYPE_INVALID;
}

bm_dtype bm_dtype_parse(const char *name)
{
    if (!name)
        return BM_DTYPE_INVALID;
    bm_dtype d = bm_dtype_parse_torch(name);
    if (d != BM_DTYPE_INVALID)
        return d;
    if (strcmp(name, "int4") == 0)
        return BM_INT4;
    if (strcmp(name, "int2") == 0)
        return BM_INT2;
    for (size_t i = 0; i < sizeof aliases / sizeof *aliases; i++)
        if (strcmp(aliases[i].alias, name) == 0)
            return aliases[i].dt;
    return BM_DTYPE_INVALID;
}

const char *bm_dtype_name(bm_dtype dt)
{
    if (dt <= BM_DTYPE_INVALID || dt >= BM_DTYPE_COUNT_)
        return "invalid";
    return info[dt].torch;
}

const char *bm_dtype_st_name(bm_dtype dt)
{
    if (dt <= BM_DTYPE_INVALID || dt >= BM_DTYPE_COUNT_)
        return NULL;
    return info[dt].st;
}

bm_dtype bm_dtype_from_st(const char *name)
{
    if (!name)
        return BM_DTYPE_INVALID;
    for (int d = 1; d < BM_DTYPE_COUNT_; d++)
        if (info[d].st && strcmp(info[d].st, name) == 0)
            return (bm_dtype)d;
    return BM_DTYPE_INVALID;
}

unsigned bm_dtype_storage_bits(bm_dtype dt)
{
    if (dt <= BM_DTYPE_INVALID || dt >= BM_DTYPE_COUNT_)
        return 0;
    return info[dt].bits;
}

bool bm_dtype_is_floating(bm_dtype dt)
{
    if (dt <= BM_DTYPE_INVALID || dt >= BM_DTYPE_COUNT_)
        return false;
    return info[dt].floating;
}

/*
 * accelerate's dtype_byte_size. 0.27 special-cases bool, int4 and fp8 and
 * otherwise takes the trailing digits of str(dtype) // 8: "float8_e5m2"
 * gives 2 // 8 = 0 and "float8_e4m3fn" has no trailing digits (raises).
 * 1.x knows all float8 types as 1 byte and adds int2.
 */
bm_status bm_dtype_accel_bits(bm_dtype dt, bm_compat compat, unsigned *bits,
                              bm_error *err)
{
    bool old = compat == BM_COMPAT_0_27;
    switch (dt) {
    case BM_BOOL:
        *bits = 1;
        return BM_OK;
    case BM_INT4:
        *bits = 4;
        return BM_OK;
    case BM_INT2:
        if (old)
            return bm_fail(err, BM_E_COMPAT,
                           "dtype int2 does not exist in accelerate 0.27");
        *bits = 2;
        return BM_OK;
    case BM_F8_E5M2:
    case BM_F8_E5M2FNUZ:
        /* 0.27: str(dtype) ends in "2" -> 2 // 8 = 0 bytes */
        *bits = old ? 0 : 8;
        return BM_OK;
    case BM_F8_E4M3FN:
    case BM_F8_E4M3FNUZ:
        if (old)
            return bm_fail(err, BM_E_COMPAT,
                           "accelerate 0.27 raises ValueError: `dtype` is "
                           "not a valid dtype: torch.%s",
                           bm_dtype_name(dt));
        *bits = 8;
        return BM_OK;
    default:
        if (dt <= BM_DTYPE_INVALID || dt >= BM_DTYPE_COUNT_)
            return bm_fail(err, BM_E_INVALID, "invalid dtype");
        *bits = info[dt].bits;
        return BM_OK;
    }
}
