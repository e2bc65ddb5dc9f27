/*
 * test_checkpoint.c - opening checkpoints as accelerate finds them (file,
 * index, folder; spec §10.1), index/shard cross-checks, reads (mapped,
 * pread, strided), and the module tree implied by tensor names.
 *
 * The sharded fixture under tests/fixtures/safetensors/sharded/ was written
 * by safetensors.torch.save_file with a transformers-style index
 * (make_fixtures.py); the malformed indexes are written here.
 */
#include "bmplan.h"

#include <check.h>
#include <ftw.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIX "tests/fixtures/safetensors/"
#define SHARDED FIX "sharded"

static char tmpdir[64];

static void make_tmpdir(void)
{
    strcpy(tmpdir, "/tmp/bmplan-ck-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void remove_tmpdir(void)
{
    nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* tmpdir/rel, in one of a few rotating buffers */
static const char *tp(const char *rel)
{
    static char bufs[4][512];
    static int i;
    char *b = bufs[i++ % 4];
    snprintf(b, 512, "%s/%s", tmpdir, rel);
    return b;
}

static void put(const char *rel, const char *text)
{
    bm_error err = {0};
    ck_assert_msg(bm_write_file_atomic(tp(rel), text, strlen(text), &err) == BM_OK, "%s",
                  err.msg);
}

static unsigned char *pattern(int k, bm_dtype dt, uint64_t nbytes)
{
    unsigned char *p = malloc(nbytes ? nbytes : 1);
    for (uint64_t j = 0; j < nbytes; j++)
        p[j] = dt == BM_BOOL ? (unsigned char)((j * 7 + (uint64_t)k) % 2)
                             : (unsigned char)((j * 31 + (uint64_t)k * 17 + 7) & 0xff);
    return p;
}

/* A safetensors file of U8 tensors named `names` (NULL-terminated), each
 * of 2 bytes, in the given order. */
static void write_u8(const char *rel, const char *const *names)
{
    bm_st_spec specs[32];
    const void *data[32];
    static const unsigned char two[2] = {1, 2};
    int n = 0;
    for (; names[n]; n++) {
        specs[n] = (bm_st_spec){names[n], BM_U8, 1, {2}};
        data[n] = two;
    }
    const char *k[] = {"format"}, *v[] = {"pt"};
    bm_st_write_opts o = {.n_meta = 1, .meta_keys = k, .meta_values = v};
    bm_error err = {0};
    ck_assert_msg(bm_st_write_file(tp(rel), specs, data, n, &o, &err) == BM_OK, "%s", err.msg);
}

static bm_checkpoint *open_ok(const char *path, bool no_mmap)
{
    bm_checkpoint *ck = NULL;
    bm_error err = {0};
    bm_ckpt_open_opts o = {.no_mmap = no_mmap};
    ck_assert_msg(bm_checkpoint_open_ex(path, &o, &ck, &err) == BM_OK, "%s: %s", path,
                  err.msg);
    return ck;
}

static void open_bad(const char *path, bm_status code, const char *needle)
{
    bm_checkpoint *ck = NULL;
    bm_error err = {0};
    ck_assert_int_eq(bm_checkpoint_open(path, &ck, &err), code);
    ck_assert_ptr_null(ck);
    ck_assert_msg(strstr(err.msg, needle), "'%s' lacks '%s'", err.msg, needle);
}

/* ------------------------------------------------------------------------
 * The reference sharded checkpoint
 * ------------------------------------------------------------------------ */

static void check_sharded(const char *path, bool no_mmap)
{
    bm_checkpoint *ck = open_ok(path, no_mmap);
    ck_assert_int_eq(ck->n_files, 2);
    ck_assert_str_eq(ck->files[0].name, "model-00001-of-00002.safetensors");
    ck_assert_str_eq(ck->files[1].name, "model-00002-of-00002.safetensors");
    ck_assert_int_eq(ck->files[0].kind, BM_CKPT_SAFETENSORS);
    ck_assert_ptr_nonnull(ck->index_path);
    ck_assert(strstr(ck->index_path, "model.safetensors.index.json"));
    ck_assert_str_eq(ck->folder, SHARDED);
    ck_assert(ck->has_total_size);
    ck_assert_uint_eq(ck->total_size, 128);
    /* source order: shards by name, each in header order (the reference
     * writer sorted each shard's tensors by name within F32) */
    static const char *const order[] = {"model.embed.weight", "model.layers.0.w",
                                        "lm_head.weight", "model.layers.1.w"};
    /* k: position in make_fixtures.py's list of that shard */
    static const int kpos[] = {0, 1, 1, 0};
    static const int64_t rows[] = {4, 2, 4, 2}, cols[] = {3, 2, 3, 2};
    ck_assert_int_eq(ck->n_tensors, 4);
    for (int i = 0; i < 4; i++) {
        const bm_ckpt_tensor *t = &ck->tensors[i];
        ck_assert_str_eq(t->name, order[i]);
        ck_assert_int_eq(bm_checkpoint_find(ck, order[i]), i);
        ck_assert_int_eq(t->file, i < 2 ? 0 : 1);
        ck_assert_int_eq(t->dtype, BM_F32);
        ck_assert_int_eq(t->ndim, 2);
        ck_assert_int_eq(t->shape[0], rows[i]);
        ck_assert_int_eq(t->shape[1], cols[i]);
        ck_assert_int_eq(t->stride[0], cols[i]);
        ck_assert_int_eq(t->stride[1], 1);
        ck_assert(t->contiguous);
        ck_assert_uint_eq(t->nbytes, (uint64_t)(rows[i] * cols[i] * 4));
        unsigned char *want = pattern(kpos[i], BM_F32, t->nbytes);
        unsigned char got[64];
        bm_error err = {0};
        ck_assert_int_eq(bm_checkpoint_read(ck, i, 0, got, t->nbytes, &err), BM_OK);
        ck_assert(memcmp(got, want, t->nbytes) == 0);
        ck_assert_int_eq(bm_checkpoint_read(ck, i, 3, got, 5, &err), BM_OK);
        ck_assert(memcmp(got, want + 3, 5) == 0);
        ck_assert_int_eq(bm_checkpoint_read(ck, i, t->nbytes - 1, got, 2, &err), BM_E_INVALID);
        const void *p = bm_checkpoint_data(ck, i);
        if (no_mmap)
            ck_assert_ptr_null(p);
        else
            ck_assert(memcmp(p, want, t->nbytes) == 0);
        free(want);
    }
    ck_assert_int_eq(bm_checkpoint_find(ck, "nope"), BM_NONE);
    ck_assert_ptr_nonnull(ck->files[1].metadata);
    json_t *fmt = json_object_get(ck->files[1].metadata, "format");
    ck_assert_str_eq(json_string_value(fmt), "pt");
    bm_checkpoint_close(ck);
}

START_TEST(test_sharded_folder) { check_sharded(SHARDED, false); }
END_TEST

START_TEST(test_sharded_index_pread)
{
    check_sharded(SHARDED "/model.safetensors.index.json", true);
}
END_TEST

START_TEST(test_single_file)
{
    bm_checkpoint *ck = open_ok(FIX "dtypes.safetensors", false);
    ck_assert_int_eq(ck->n_files, 1);
    ck_assert_ptr_null(ck->index_path);
    ck_assert_str_eq(ck->files[0].name, "dtypes.safetensors");
    ck_assert_int_eq(ck->n_tensors, 14);
    ck_assert(!ck->has_total_size);
    /* sum of the tensors' bytes as make_fixtures.py lists them */
    ck_assert_uint_eq(ck->total_size, 48 + 12 + 12 + 24 + 40 + 8 + 6 + 3 + 4 + 4 + 4 + 0 + 16 + 4);
    int32_t s = bm_checkpoint_find(ck, "scalar");
    ck_assert_int_eq(ck->tensors[s].ndim, 0);
    ck_assert_uint_eq(ck->tensors[s].numel, 1);
    int32_t e = bm_checkpoint_find(ck, "empty");
    ck_assert_uint_eq(ck->tensors[e].numel, 0);
    bm_error err = {0};
    ck_assert_int_eq(bm_checkpoint_read(ck, e, 0, NULL, 0, &err), BM_OK);
    ck_assert_int_eq(bm_checkpoint_read(ck, 99, 0, NULL, 0, &err), BM_E_INTERNAL);
    bm_checkpoint_close(ck);

    /* a folder with model.safetensors; safetensors content under another
     * suffix is recognised as well */
    make_tmpdir();
    mkdir(tp("m"), 0755);
    const char *const names[] = {"w", NULL};
    write_u8("m/model.safetensors", names);
    ck = open_ok(tp("m"), false);
    ck_assert_int_eq(ck->n_tensors, 1);
    ck_assert_str_eq(ck->files[0].name, "model.safetensors");
    bm_checkpoint_close(ck);
    write_u8("weights.dat", names);
    ck = open_ok(tp("weights.dat"), false);
    ck_assert_int_eq(ck->files[0].kind, BM_CKPT_SAFETENSORS);
    bm_checkpoint_close(ck);
    remove_tmpdir();
}
END_TEST

/* ------------------------------------------------------------------------
 * Folder rules and index errors
 * ------------------------------------------------------------------------ */

START_TEST(test_folder_rules)
{
    make_tmpdir();
    const char *const names[] = {"w", NULL};
    /* pytorch_model.bin wins over model.safetensors (accelerate's order) */
    mkdir(tp("both"), 0755);
    put("both/pytorch_model.bin", "PK\x03\x04 not really a zip");
    write_u8("both/model.safetensors", names);
    open_bad(tp("both"), BM_E_FORMAT, "pytorch_model.bin: end of central directory not found");
    open_bad(tp("both/pytorch_model.bin"), BM_E_FORMAT, "end of central directory not found");
    /* two index files */
    mkdir(tp("two"), 0755);
    put("two/model.safetensors.index.json", "{\"weight_map\":{}}");
    put("two/pytorch_model.bin.index.json", "{\"weight_map\":{}}");
    open_bad(tp("two"), BM_E_INVALID,
             "containing more than one `.index.json` file, delete the irrelevant ones.");
    /* nothing usable */
    mkdir(tp("none"), 0755);
    put("none/config.json", "{}");
    open_bad(tp("none"), BM_E_NOTFOUND,
             "is not a folder containing a `.index.json` file or a pytorch_model.bin or a "
             "model.safetensors file");
    /* a path that is neither */
    open_bad(tp("missing"), BM_E_NOTFOUND,
             "`checkpoint` should be the path to a file containing a whole state dict");
    /* one index in a folder: used, whatever its prefix */
    mkdir(tp("one"), 0755);
    write_u8("one/s1.safetensors", names);
    put("one/custom.index.json", "{\"weight_map\":{\"w\":\"s1.safetensors\"}}");
    bm_checkpoint *ck = open_ok(tp("one"), false);
    ck_assert_int_eq(ck->n_tensors, 1);
    ck_assert(!ck->has_total_size);
    ck_assert_uint_eq(ck->total_size, 2);
    bm_checkpoint_close(ck);
    /* any .json file given directly is an index */
    put("one/weights.json", "{\"w\":\"s1.safetensors\"}");
    ck = open_ok(tp("one/weights.json"), false);
    ck_assert_int_eq(ck->n_tensors, 1);
    bm_checkpoint_close(ck);
    remove_tmpdir();
}
END_TEST

START_TEST(test_index_errors)
{
    make_tmpdir();
    const char *const a[] = {"x", "y", NULL}, *const b[] = {"z", NULL};
    write_u8("a.safetensors", a);
    write_u8("b.safetensors", b);
    mkdir(tp("dir.safetensors"), 0755);
    static const char corrupt[] = "\x10\0\0\0\0\0\0\0{\"bad\": json}   ";
    bm_error werr = {0};
    ck_assert_int_eq(bm_write_file_atomic(tp("corrupt.safetensors"), corrupt,
                                          sizeof corrupt - 1, &werr), BM_OK);
    static const struct {
        const char *json;
        bm_status code;
        const char *needle;
    } cases[] = {
        {"{\"weight_map\": {", BM_E_FORMAT, "not valid JSON"},
        {"[1, 2]", BM_E_FORMAT, "an index must be a JSON object"},
        {"{\"weight_map\": [\"a.safetensors\"]}", BM_E_FORMAT, "weight_map is not an object"},
        {"{\"weight_map\": {\"x\": \"../x\"}}", BM_E_FORMAT,
         "shard name '../x' is not a plain file name"},
        {"{\"weight_map\": {\"x\": \"sub/a.safetensors\"}}", BM_E_FORMAT,
         "not a plain file name"},
        {"{\"weight_map\": {\"x\": \"sub\\\\a.safetensors\"}}", BM_E_FORMAT,
         "not a plain file name"},
        {"{\"weight_map\": {\"x\": \"..\"}}", BM_E_FORMAT, "shard name '..' is not a file name"},
        {"{\"weight_map\": {\"x\": \"\"}}", BM_E_FORMAT, "shard name '' is empty"},
        {"{\"weight_map\": {\"x\": 3}}", BM_E_FORMAT, "not a file name string"},
        {"{\"weight_map\": {\"\": \"a.safetensors\"}}", BM_E_FORMAT, "tensor name of 0 bytes"},
        {"{\"weight_map\": {\"x\": \"a.safetensors\", \"x\": \"a.safetensors\"}}", BM_E_FORMAT,
         "duplicate"},
        {"{\"weight_map\": {\"x\": \"gone.safetensors\"}}", BM_E_NOTFOUND,
         "shard 'gone.safetensors' does not exist"},
        {"{\"weight_map\": {\"x\": \"dir.safetensors\"}}", BM_E_FORMAT,
         "shard 'dir.safetensors' is not a regular file"},
        {"{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": \"a.safetensors\", "
         "\"z\": \"b.safetensors\", \"w\": \"b.safetensors\"}}",
         BM_E_FORMAT, "tensor 'w': is mapped to shard 'b.safetensors' but that shard has no such tensor"},
        {"{\"weight_map\": {\"x\": \"a.safetensors\", \"z\": \"b.safetensors\"}}", BM_E_FORMAT,
         "tensor 'y': is not listed in the index's weight_map"},
        {"{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": \"b.safetensors\", "
         "\"z\": \"b.safetensors\"}}",
         BM_E_FORMAT, "tensor 'y': is in this shard but"},
        {"{\"metadata\": {\"total_size\": -1}, \"weight_map\": {}}", BM_E_FORMAT,
         "metadata.total_size must be a non-negative integer"},
        {"{\"metadata\": {\"total_size\": 1.5}, \"weight_map\": {}}", BM_E_FORMAT,
         "metadata.total_size must be a non-negative integer"},
        {"{\"metadata\": {\"total_size\": \"12\"}, \"weight_map\": {}}", BM_E_FORMAT,
         "metadata.total_size must be a non-negative integer"},
        {"{\"metadata\": [], \"weight_map\": {}}", BM_E_FORMAT, "metadata is not an object"},
        {"{\"metadata\": {\"total_size\": 4}, \"x\": \"a.safetensors\"}", BM_E_FORMAT,
         "tensor 'metadata': weight_map value is not a file name string"},
        {"{\"weight_map\": {\"bad\": \"corrupt.safetensors\"}}", BM_E_FORMAT,
         "corrupt.safetensors: at byte 20: header is not valid JSON"},
        {"{\"weight_map\": {\"x\": \"c.bin\"}}", BM_E_NOTFOUND, "shard 'c.bin' does not exist"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        put("t.index.json", cases[i].json);
        bm_checkpoint *ck = NULL;
        bm_error err = {0};
        ck_assert_msg(bm_checkpoint_open(tp("t.index.json"), &ck, &err) == cases[i].code,
                      "case %zu: got %d (%s)", i, err.code, err.msg);
        ck_assert_msg(strstr(err.msg, cases[i].needle), "case %zu: '%s' lacks '%s'", i,
                      err.msg, cases[i].needle);
        ck_assert_ptr_null(ck);
    }
    /* a .bin shard is read as a torch.save zip (torch.load in accelerate) */
    put("c.bin", "PK\x03\x04");
    put("t.index.json", "{\"weight_map\": {\"x\": \"c.bin\"}}");
    open_bad(tp("t.index.json"), BM_E_FORMAT, "c.bin: end of central directory not found");
    /* the good index, with an integral real total_size */
    put("t.index.json", "{\"metadata\": {\"total_size\": 6.0}, \"weight_map\": "
                        "{\"z\": \"b.safetensors\", \"x\": \"a.safetensors\", "
                        "\"y\": \"a.safetensors\"}}");
    bm_checkpoint *ck = open_ok(tp("t.index.json"), false);
    ck_assert_int_eq(ck->n_tensors, 3);
    ck_assert_str_eq(ck->tensors[0].name, "x");
    ck_assert_str_eq(ck->tensors[2].name, "z");
    ck_assert(ck->has_total_size);
    ck_assert_uint_eq(ck->total_size, 6);
    bm_checkpoint_close(ck);
    remove_tmpdir();
}
END_TEST

START_TEST(test_index_parse)
{
    /* no weight_map: the whole object is the map (accelerate) */
    const char *t = "{\"b.w\": \"s2.safetensors\", \"a.w\": \"s1.safetensors\", "
                    "\"c.w\": \"s2.safetensors\"}";
    bm_ckpt_index *idx;
    bm_error err = {0};
    ck_assert_int_eq(bm_ckpt_index_parse("i.json", t, strlen(t), &idx, &err), BM_OK);
    ck_assert(!idx->has_weight_map);
    ck_assert(!idx->has_total_size);
    ck_assert_int_eq(idx->n_shards, 2);
    ck_assert_str_eq(idx->shards[0], "s1.safetensors");
    ck_assert_str_eq(idx->shards[1], "s2.safetensors");
    ck_assert_int_eq(idx->n_names, 3);
    ck_assert_str_eq(idx->names[0], "b.w");
    ck_assert_int_eq(idx->shard_of[0], 1);
    ck_assert_int_eq(idx->shard_of[1], 0);
    ck_assert_int_eq(idx->shard_of[2], 1);
    bm_ckpt_index_free(idx);
    const char *bad = "{\"weight_map\": {\"a\": \"x.safetensors\"}, \"metadata\": "
                      "{\"total_size\": 1e300}}";
    ck_assert_int_eq(bm_ckpt_index_parse("i.json", bad, strlen(bad), &idx, &err), BM_E_FORMAT);
    ck_assert(strstr(err.msg, "i.json: metadata.total_size"));
    const char *syntax = "{\n  \"weight_map\": {\n    \"a\": \"x\",\n  }\n}";
    ck_assert_int_eq(bm_ckpt_index_parse("i.json", syntax, strlen(syntax), &idx, &err),
                     BM_E_FORMAT);
    ck_assert_msg(strstr(err.msg, "i.json:4: not valid JSON"), "%s", err.msg);
}
END_TEST

/* ------------------------------------------------------------------------
 * Strided reads (what a .bin reader's views need)
 * ------------------------------------------------------------------------ */

START_TEST(test_strided_read)
{
    make_tmpdir();
    float w[12];
    for (int i = 0; i < 12; i++)
        w[i] = (float)i;
    bm_st_spec s = {"w", BM_F32, 2, {4, 3}};
    const void *data[] = {w};
    bm_error err = {0};
    ck_assert_int_eq(bm_st_write_file(tp("w.safetensors"), &s, data, 1, NULL, &err), BM_OK);
    for (int mode = 0; mode < 2; mode++) {
        bm_checkpoint *ck = open_ok(tp("w.safetensors"), mode == 1);
        bm_ckpt_tensor t = ck->tensors[0];
        /* the transpose: shape [3, 4], strides [1, 3] */
        t.name = "wt";
        t.contiguous = false;
        t.shape[0] = 3, t.shape[1] = 4;
        t.stride[0] = 1, t.stride[1] = 3;
        t.storage_key = ck->tensors[0].storage_key;
        ck_assert_int_eq(bm_checkpoint_add_tensor(ck, &t, &err), BM_OK);
        int32_t ti = bm_checkpoint_find(ck, "wt");
        ck_assert_int_eq(ti, 1);
        ck_assert_ptr_null(bm_checkpoint_data(ck, ti));
        float got[12];
        ck_assert_int_eq(bm_checkpoint_read(ck, ti, 0, got, 48, &err), BM_OK);
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 4; c++)
                ck_assert_float_eq(got[r * 4 + c], w[c * 3 + r]);
        /* a byte range that starts and ends inside elements */
        unsigned char part[23], full[48];
        memcpy(full, got, 48);
        ck_assert_int_eq(bm_checkpoint_read(ck, ti, 5, part, 23, &err), BM_OK);
        ck_assert(memcmp(part, full + 5, 23) == 0);
        /* rows 1..3 of w as a view with a dense last dimension */
        t.name = "rows";
        t.shape[0] = 3, t.shape[1] = 2;
        t.stride[0] = 3, t.stride[1] = 1;
        t.offset = ck->tensors[0].offset + 4 * 1; /* starts at column 1 */
        t.numel = 6;
        t.nbytes = 24;
        ck_assert_int_eq(bm_checkpoint_add_tensor(ck, &t, &err), BM_OK);
        float rows[6];
        ck_assert_int_eq(bm_checkpoint_read(ck, 2, 0, rows, 24, &err), BM_OK);
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 2; c++)
                ck_assert_float_eq(rows[r * 2 + c], w[r * 3 + 1 + c]);
        /* a view reaching past the file, a repeated name */
        t.name = "far";
        t.shape[0] = 100;
        ck_assert_int_eq(bm_checkpoint_add_tensor(ck, &t, &err), BM_E_FORMAT);
        ck_assert(strstr(err.msg, "past the end of the file"));
        t.name = "w";
        t.shape[0] = 3;
        ck_assert_int_eq(bm_checkpoint_add_tensor(ck, &t, &err), BM_E_FORMAT);
        ck_assert(strstr(err.msg, "appears twice"));
        bm_checkpoint_close(ck);
    }
    remove_tmpdir();
}
END_TEST

/* ------------------------------------------------------------------------
 * Checkpoint -> module tree
 * ------------------------------------------------------------------------ */

START_TEST(test_tree_from_sharded)
{
    bm_checkpoint *ck = open_ok(SHARDED, false);
    bm_tree *tree;
    bm_error err = {0};
    ck_assert_msg(bm_checkpoint_to_tree(ck, &tree, &err) == BM_OK, "%s", err.msg);
    static const char *const mods[] = {"", "model", "model.embed", "model.layers",
                                       "model.layers.0", "model.layers.1", "lm_head"};
    static const char *const cls[] = {"Model", "Module", "Module", "ModuleList",
                                      "Module", "Module", "Module"};
    ck_assert_int_eq(tree->n_modules, 7);
    for (int i = 0; i < 7; i++) {
        ck_assert_str_eq(tree->modules[i].name, mods[i]);
        ck_assert_str_eq(tree->modules[i].cls, cls[i]);
    }
    ck_assert_int_eq(tree->n_tensors, 4);
    int32_t t = bm_tree_find_tensor(tree, "lm_head.weight");
    ck_assert_int_ge(t, 0);
    ck_assert_int_eq(tree->tensors[t].module, 6);
    ck_assert(!tree->tensors[t].is_buffer);
    ck_assert_int_eq(tree->tensors[t].shape[0], 4);
    ck_assert_int_eq(tree->tensors[t].dtype, BM_F32);
    bm_tree_free(tree);
    bm_checkpoint_close(ck);
}
END_TEST

static bm_status tree_of(const char *const *names, bm_tree **tree, bm_error *err)
{
    write_u8("t.safetensors", names);
    bm_checkpoint *ck = open_ok(tp("t.safetensors"), false);
    bm_status st = bm_checkpoint_to_tree(ck, tree, err);
    bm_checkpoint_close(ck);
    return st;
}

START_TEST(test_tree_order_and_errors)
{
    make_tmpdir();
    /* modules in order of first appearance, emitted in pre-order */
    const char *const names[] = {"a.0.b.w", "c.w", "a.1.b.w", "a.0.b.bias", "top",
                                 "a.10.x", "d.0.w", "d.x.w", NULL};
    bm_tree *tree;
    bm_error err = {0};
    ck_assert_msg(tree_of(names, &tree, &err) == BM_OK, "%s", err.msg);
    static const char *const mods[] = {"", "a", "a.0", "a.0.b", "a.1", "a.1.b", "a.10",
                                       "c", "d", "d.0", "d.x"};
    static const char *const cls[] = {"Model", "ModuleList", "Module", "Module", "Module",
                                      "Module", "Module", "Module", "Module", "Module",
                                      "Module"};
    ck_assert_int_eq(tree->n_modules, 11);
    for (int i = 0; i < 11; i++) {
        ck_assert_str_eq(tree->modules[i].name, mods[i]);
        ck_assert_str_eq(tree->modules[i].cls, cls[i]);
    }
    /* tensors in checkpoint order within their module */
    const bm_module *m = &tree->modules[3];
    ck_assert_int_eq(m->n_params, 2);
    ck_assert_str_eq(tree->tensors[m->tensor_begin].name, "a.0.b.w");
    ck_assert_str_eq(tree->tensors[m->tensor_begin + 1].name, "a.0.b.bias");
    ck_assert_int_eq(tree->modules[0].n_params, 1);
    ck_assert_str_eq(tree->tensors[tree->modules[0].tensor_begin].name, "top");
    ck_assert_int_eq(tree->n_tensors, 8);
    bm_tree_free(tree);

    static const struct {
        const char *names[4];
        const char *needle;
    } bad[] = {
        {{"a.b", "a.b.c", NULL}, "tensor 'a.b.c': tensor 'a.b' is also a module prefix"},
        {{"a.b.c", "a.b", NULL}, "tensor 'a.b': is also a module prefix of tensor 'a.b.c'"},
        {{"x", "x.y.z", NULL}, "tensor 'x' is also a module prefix"},
        {{"a..b", NULL}, "empty component"},
        {{".a", NULL}, "empty component"},
        {{"a.", NULL}, "empty component"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        tree = NULL;
        ck_assert_int_eq(tree_of(bad[i].names, &tree, &err), BM_E_INVALID);
        ck_assert_ptr_null(tree);
        ck_assert_msg(strstr(err.msg, bad[i].needle), "'%s' lacks '%s'", err.msg, bad[i].needle);
        ck_assert_msg(strstr(err.msg, "t.safetensors"), "%s", err.msg);
    }
    remove_tmpdir();
}
END_TEST

START_TEST(test_probe)
{
    ck_assert(bm_checkpoint_probe(SHARDED));
    ck_assert(bm_checkpoint_probe(SHARDED "/model.safetensors.index.json"));
    ck_assert(bm_checkpoint_probe(FIX "dtypes.safetensors"));
    ck_assert(!bm_checkpoint_probe(FIX "make_fixtures.py"));
    ck_assert(!bm_checkpoint_probe(FIX));
    ck_assert(!bm_checkpoint_probe(FIX "missing.safetensors"));
    make_tmpdir();
    put("graph.yaml", "name: x\nmodules: []\n");
    put("graph.json", "{\"modules\": []}");
    ck_assert(!bm_checkpoint_probe(tp("graph.yaml")));
    ck_assert(!bm_checkpoint_probe(tp("graph.json")));
    const char *const names[] = {"w", NULL};
    write_u8("weights.dat", names);
    ck_assert(bm_checkpoint_probe(tp("weights.dat")));
    /* JSON whitespace before the '{' (the reference accepts it) */
    static const char spaced[] = "\x08\0\0\0\0\0\0\0 \n{ }   ";
    bm_error err = {0};
    ck_assert_int_eq(bm_write_file_atomic(tp("spaced.dat"), spaced, sizeof spaced - 1, &err),
                     BM_OK);
    ck_assert(bm_checkpoint_probe(tp("spaced.dat")));
    bm_checkpoint *ck = open_ok(tp("spaced.dat"), false);
    ck_assert_int_eq(ck->n_tensors, 0);
    bm_checkpoint_close(ck);
    ck_assert_int_eq(unlink(tp("spaced.dat")), 0);
    ck_assert_int_eq(unlink(tp("weights.dat")), 0);
    ck_assert(!bm_checkpoint_probe(tmpdir));
    put("x.index.json", "{}");
    put("y.index.json", "{}");
    ck_assert(bm_checkpoint_probe(tmpdir)); /* opening it will explain */
    remove_tmpdir();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("checkpoint");
    tcase_add_test(tc, test_sharded_folder);
    tcase_add_test(tc, test_sharded_index_pread);
    tcase_add_test(tc, test_single_file);
    tcase_add_test(tc, test_folder_rules);
    tcase_add_test(tc, test_index_errors);
    tcase_add_test(tc, test_index_parse);
    tcase_add_test(tc, test_strided_read);
    tcase_add_test(tc, test_tree_from_sharded);
    tcase_add_test(tc, test_tree_order_and_errors);
    tcase_add_test(tc, test_probe);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
