/*
 * test_planner_golden.c - every case of the golden corpus
 * (tests/fixtures/golden/cases: device maps computed by accelerate 0.27.2
 * itself, each with the answer of accelerate 1.x) through the planner, in
 * process: --compat 0.27 must give `expected` (or fail where accelerate
 * raised), --compat latest the `latest` record, balanced cases must
 * reproduce `balanced_max_memory`, and --compat bmplan must return a valid
 * map (every tensor placed, no device over budget, tied groups together)
 * wherever either version returns one, equal to 0.27.2's when no defect of
 * accelerate is involved.
 */
#include "bmplan.h"

#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define GOLDEN "tests/fixtures/golden"

static bm_tree *load_graph(const char *rel, bm_error *err)
{
    char path[1024];
    snprintf(path, sizeof path, GOLDEN "/%s", rel);
    bm_tree *t = NULL;
    if (bm_graph_load(path, &t, err))
        return NULL;
    return t;
}

/* graphs are shared by many cases: load each once */
typedef struct graph_cache {
    char *rel[128];
    bm_tree *tree[128];
    int n;
} graph_cache;
static graph_cache cache;

static bm_tree *graph(const char *rel)
{
    for (int i = 0; i < cache.n; i++)
        if (strcmp(cache.rel[i], rel) == 0)
            return cache.tree[i];
    bm_error err = {0};
    bm_tree *t = load_graph(rel, &err);
    ck_assert_msg(t, "%s: %s", rel, err.msg);
    ck_assert_int_lt(cache.n, 128);
    cache.rel[cache.n] = strdup(rel);
    cache.tree[cache.n++] = t;
    return t;
}

typedef struct outcome {
    bm_status st;
    bm_error err;
    bm_plan *plan;
} outcome;

typedef struct case_input {
    json_t *c;
    bm_tree *tree;
    bm_budgets budgets;
    char *no_split[64];
    int n_no_split;
    bool have_dtype, dtype_ok;
    bm_dtype dtype;
    const char *special_names[4096];
    bm_dtype special[4096];
    int n_special;
    bool special_ok;
} case_input;

static bm_status run_case(const case_input *in, bm_compat compat, bm_budgets *budgets,
                          outcome *o)
{
    memset(o, 0, sizeof *o);
    json_t *c = in->c;
    bm_budgets_init(budgets);
    char *mm = json_dumps(json_object_get(c, "max_memory"), JSON_PRESERVE_ORDER);
    o->st = bm_budgets_parse_json(budgets, mm, strlen(mm), "max_memory", compat, &o->err);
    free(mm);
    if (o->st)
        return o->st;
    bm_dtype dtype = BM_DTYPE_INVALID;
    const char *ds = json_string_value(json_object_get(c, "dtype"));
    if (ds) {
        dtype = compat == BM_COMPAT_BMPLAN ? bm_dtype_parse(ds) : bm_dtype_parse_torch(ds);
        if (dtype == BM_DTYPE_INVALID)
            return o->st = bm_fail(&o->err, BM_E_INVALID, "bad dtype %s", ds);
    }
    const char *names[4096];
    bm_dtype dts[4096];
    int ns = 0;
    json_t *sd = json_object_get(c, "special_dtypes");
    if (json_is_object(sd)) {
        const char *k;
        json_t *v;
        json_object_foreach(sd, k, v)
        {
            const char *s = json_string_value(v);
            bm_dtype d = compat == BM_COMPAT_BMPLAN ? bm_dtype_parse(s) : bm_dtype_parse_torch(s);
            if (d == BM_DTYPE_INVALID)
                return o->st = bm_fail(&o->err, BM_E_INVALID, "bad dtype %s", s);
            ck_assert_int_lt(ns, 4096);
            names[ns] = k;
            dts[ns++] = d;
        }
    }
    const char *bal = json_string_value(json_object_get(c, "balanced"));
    bm_plan_opts opts = {
        .compat = compat,
        .budgets = budgets,
        .no_split = (char *const *)in->no_split,
        .n_no_split = in->n_no_split,
        .dtype = dtype,
        .n_special = ns,
        .special_names = names,
        .special_dtypes = dts,
        .strategy = !bal                               ? BM_STRATEGY_SEQUENTIAL
                    : strcmp(bal, "balanced_low_0") == 0 ? BM_STRATEGY_BALANCED_LOW_0
                                                         : BM_STRATEGY_BALANCED,
        .no_clean = !json_is_true(json_object_get(c, "clean")),
    };
    o->st = bm_plan_infer(in->tree, &opts, &o->plan, &o->err);
    return o->st;
}

/* Compare a plan's map with an expected JSON object; NULL when equal. */
static const char *compare(const bm_devmap *map, json_t *expected, json_t *order)
{
    static char why[512];
    if ((size_t)map->n != json_object_size(expected)) {
        snprintf(why, sizeof why, "%d keys, expected %zu", map->n, json_object_size(expected));
        return why;
    }
    for (int32_t i = 0; i < map->n; i++) {
        json_t *v = json_object_get(expected, map->e[i].name);
        char d[32];
        const char *ds = bm_device_str(map->e[i].dev, d, sizeof d);
        bool ok = v && (map->e[i].dev.kind == BM_DEV_GPU
                            ? json_is_integer(v) && json_integer_value(v) == map->e[i].dev.id
                            : json_is_string(v) && strcmp(json_string_value(v), ds) == 0);
        if (!ok) {
            snprintf(why, sizeof why, "key '%s' -> %s differs", map->e[i].name, ds);
            return why;
        }
    }
    if (order) {
        for (int32_t i = 0; i < map->n; i++)
            if (strcmp(json_string_value(json_array_get(order, (size_t)i)), map->e[i].name)) {
                snprintf(why, sizeof why, "key order differs at %d ('%s')", i, map->e[i].name);
                return why;
            }
    } else {
        int32_t i = 0;
        const char *k;
        json_t *v;
        json_object_foreach(expected, k, v)
        {
            if (strcmp(k, map->e[i].name)) {
                snprintf(why, sizeof why, "key order differs at %d ('%s', expected '%s')", i,
                         map->e[i].name, k);
                return why;
            }
            i++;
        }
    }
    return NULL;
}

static int n_cases, pass_027, pass_latest, pass_bal, n_bal, pass_bm, n_bm, n_bm_same, pass_bm_same;
static char failures[1 << 16];

static void note(const char *fmt, const char *id, const char *what)
{
    size_t n = strlen(failures);
    if (n < sizeof failures - 1300)
        snprintf(failures + n, sizeof failures - n, fmt, id, what);
}

/* The record a version answers with: `expected`/`expected_error` etc. */
static json_t *record(json_t *c, bool latest)
{
    json_t *l = json_object_get(c, "latest");
    if (latest && l && !json_is_true(json_object_get(l, "same_as_0.27.2")))
        return l;
    return c;
}

static bool check_version(case_input *in, bm_compat compat, json_t *rec, const char *id,
                          const char *label)
{
    bm_budgets b;
    outcome o;
    run_case(in, compat, &b, &o);
    bool ok;
    json_t *exp = json_object_get(rec, "expected");
    char what[1200];
    if (!exp) {
        ok = o.st != BM_OK;
        if (!ok)
            snprintf(what, sizeof what, "%s: expected an error (%s), got a map", label,
                     json_string_value(json_object_get(rec, "expected_error_type")));
    } else if (o.st) {
        ok = false;
        snprintf(what, sizeof what, "%s: unexpected error: %s", label, o.err.msg);
    } else {
        /* accelerate's own order (PYTHONHASHSEED=0), even where it is
         * hash-dependent: the compat modes reproduce it */
        const char *why = compare(o.plan->map, exp, NULL);
        ok = !why;
        if (!ok)
            snprintf(what, sizeof what, "%s: %s", label, why);
    }
    if (!ok)
        note("%s: %s\n", id, what);
    bm_plan_free(o.plan);
    bm_budgets_free(&b);
    return ok;
}

/* get_balanced_memory against the recorded budgets */
static void check_balanced(case_input *in, bm_compat compat, json_t *rec, const char *id)
{
    json_t *bmm = json_object_get(rec, "balanced_max_memory");
    if (!bmm)
        return;
    n_bal++;
    bm_budgets given, out;
    bm_budgets_init(&given);
    bm_error err = {0};
    char *mm = json_dumps(json_object_get(in->c, "max_memory"), 0);
    ck_assert_int_eq(bm_budgets_parse_json(&given, mm, strlen(mm), "mm", compat, &err), BM_OK);
    free(mm);
    uint64_t *mb = malloc((size_t)in->tree->n_modules * 8);
    uint64_t *tb = malloc((size_t)(in->tree->n_tensors + 1) * 8);
    const char *ds = json_string_value(json_object_get(in->c, "dtype"));
    const char *names[4096];
    bm_dtype dts[4096];
    int ns = 0;
    json_t *sd = json_object_get(in->c, "special_dtypes");
    const char *k;
    json_t *v;
    json_object_foreach(sd, k, v)
    {
        names[ns] = k;
        dts[ns++] = bm_dtype_parse_torch(json_string_value(v));
    }
    bm_size_opts so = {.dtype = ds ? bm_dtype_parse_torch(ds) : BM_DTYPE_INVALID,
                       .n_special = ns, .special_names = names, .special_dtypes = dts,
                       .compat = compat};
    ck_assert_int_eq(bm_tree_sizes(in->tree, &so, mb, tb, &err), BM_OK);
    const char *bal = json_string_value(json_object_get(in->c, "balanced"));
    bm_status st = bm_balanced_budgets(in->tree, mb, tb, &given, in->no_split, in->n_no_split,
                                       strcmp(bal, "balanced_low_0") == 0, compat, &out, &err);
    bool ok = st == BM_OK && (size_t)out.n == json_object_size(bmm);
    for (int i = 0; ok && i < out.n; i++) {
        char d[32];
        json_t *e = json_object_get(bmm, bm_device_str(out.e[i].dev, d, sizeof d));
        ok = e && json_number_value(e) * 8 == (double)out.e[i].bits;
    }
    if (ok)
        pass_bal++;
    else
        note("%s: %s\n", id, st ? err.msg : "balanced budgets differ");
    if (st == BM_OK)
        bm_budgets_free(&out);
    bm_budgets_free(&given);
    free(mb);
    free(tb);
}

/* Does the model involve one of accelerate's defects bmplan fixes? */
static bool involves_defect(const bm_tree *t, json_t *c)
{
    if (t->n_ties > 0)
        return true;
    for (int32_t m = 1; m < t->n_modules; m++)
        if (t->modules[m].n_buffers > 0 && t->modules[m].n_children > 0)
            return true;
    json_t *tags = json_object_get(c, "tags");
    size_t i;
    json_t *v;
    json_array_foreach(tags, i, v) if (strcmp(json_string_value(v), "quirk") == 0) return true;
    return false;
}

/* bmplan mode: a valid map wherever accelerate returns one */
static void check_bmplan(case_input *in, const char *id)
{
    json_t *c = in->c;
    json_t *lat = record(c, true);
    bool some_map = json_object_get(c, "expected") || json_object_get(lat, "expected");
    bm_budgets b;
    outcome o;
    run_case(in, BM_COMPAT_BMPLAN, &b, &o);
    if (!some_map) {
        bm_plan_free(o.plan);
        bm_budgets_free(&b);
        return;
    }
    n_bm++;
    char what[1200] = "";
    if (o.st) {
        snprintf(what, sizeof what, "bmplan: error: %s", o.err.msg);
    } else {
        /* invariants, from the map alone */
        bm_check_result r;
        bm_error err = {0};
        const char *ds = json_string_value(json_object_get(c, "dtype"));
        bm_size_opts so = {.dtype = ds ? bm_dtype_parse(ds) : BM_DTYPE_INVALID,
                           .compat = BM_COMPAT_BMPLAN};
        const char *names[4096];
        bm_dtype dts[4096];
        int ns = 0;
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(c, "special_dtypes"), k, v)
        {
            names[ns] = k;
            dts[ns++] = bm_dtype_parse(json_string_value(v));
        }
        so.n_special = ns;
        so.special_names = names;
        so.special_dtypes = dts;
        /* the budgets planned against (balanced ones for balanced cases) */
        bm_budgets planned;
        bm_budgets_init(&planned);
        for (int i = 0; i < o.plan->n_devices; i++)
            if (o.plan->devices[i].has_budget)
                bm_budgets_set(&planned, o.plan->devices[i].dev, o.plan->devices[i].budget_bits,
                               NULL);
        ck_assert_int_eq(bm_devmap_check(in->tree, o.plan->map, &planned, &so, &r, &err), BM_OK);
        if (r.n_problems)
            snprintf(what, sizeof what, "bmplan: invalid map: %s", r.problems[0]);
        /* non-persistent buffers too: bmplan never drops a tensor */
        for (int32_t ti = 0; ti < in->tree->n_tensors && !what[0]; ti++)
            if (bm_devmap_lookup(o.plan->map, in->tree->tensors[ti].name) == BM_NONE)
                snprintf(what, sizeof what, "bmplan: '%s' has no device",
                         in->tree->tensors[ti].name);
        bm_check_result_free(&r);
        bm_budgets_free(&planned);
        if (!what[0] && json_object_get(c, "expected") &&
            json_is_true(json_object_get(json_object_get(c, "latest"), "same_as_0.27.2")) &&
            !involves_defect(in->tree, c)) {
            n_bm_same++;
            json_t *order = json_is_true(json_object_get(c, "key_order_stable"))
                                ? NULL
                                : json_object_get(c, "expected_canonical_order");
            const char *why = compare(o.plan->map, json_object_get(c, "expected"), order);
            if (why)
                snprintf(what, sizeof what, "bmplan differs from 0.27.2: %s", why);
            else
                pass_bm_same++;
        }
    }
    if (what[0])
        note("%s: %s\n", id, what);
    else
        pass_bm++;
    bm_plan_free(o.plan);
    bm_budgets_free(&b);
}

START_TEST(test_golden_corpus)
{
    DIR *d = opendir(GOLDEN "/cases");
    ck_assert_msg(d != NULL, "cannot open " GOLDEN "/cases");
    char **files = NULL;
    int nf = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l > 5 && strcmp(de->d_name + l - 5, ".json") == 0) {
            files = realloc(files, (size_t)(nf + 1) * sizeof *files);
            files[nf++] = strdup(de->d_name);
        }
    }
    closedir(d);
    for (int f = 0; f < nf; f++) {
        char path[1024];
        snprintf(path, sizeof path, GOLDEN "/cases/%s", files[f]);
        json_error_t je;
        json_t *c = json_load_file(path, JSON_PRESERVE_ORDER, &je);
        ck_assert_msg(c, "%s: %s", path, je.text);
        const char *id = json_string_value(json_object_get(c, "id"));
        case_input in = {.c = c};
        in.tree = graph(json_string_value(json_object_get(c, "graph")));
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(c, "no_split"), i, v)
        {
            ck_assert_int_lt(in.n_no_split, 64);
            in.no_split[in.n_no_split++] = (char *)json_string_value(v);
        }
        n_cases++;
        if (check_version(&in, BM_COMPAT_0_27, c, id, "0.27"))
            pass_027++;
        if (check_version(&in, BM_COMPAT_LATEST, record(c, true), id, "latest"))
            pass_latest++;
        if (json_string_value(json_object_get(c, "balanced"))) {
            check_balanced(&in, BM_COMPAT_0_27, c, id);
            check_balanced(&in, BM_COMPAT_LATEST, record(c, true), id);
        }
        check_bmplan(&in, id);
        json_decref(c);
        free(files[f]);
    }
    free(files);
    fprintf(stderr,
            "golden: %d cases; 0.27: %d pass; latest: %d pass; balanced budgets: %d/%d; "
            "bmplan valid: %d/%d; bmplan == 0.27.2 where no defect: %d/%d\n",
            n_cases, pass_027, pass_latest, pass_bal, n_bal, pass_bm, n_bm, pass_bm_same,
            n_bm_same);
    if (failures[0])
        fprintf(stderr, "%s", failures);
    ck_assert_int_ge(n_cases, 714);
    ck_assert_int_eq(pass_027, n_cases);
    ck_assert_int_eq(pass_latest, n_cases);
    ck_assert_int_eq(pass_bal, n_bal);
    ck_assert_int_eq(pass_bm, n_bm);
    ck_assert_int_eq(pass_bm_same, n_bm_same);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("planner_golden");
    TCase *tc = tcase_create("golden");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_golden_corpus);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    for (int i = 0; i < cache.n; i++) {
        free(cache.rel[i]);
        bm_tree_free(cache.tree[i]);
    }
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
