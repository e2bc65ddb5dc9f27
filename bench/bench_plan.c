/*
 * bench_plan.c - how fast the planner is: infer_auto_device_map on large
 * real module trees (Llama-2-70B, Mixtral-8x7B, BLOOM-176B) with 4 GPUs and
 * a CPU budget, in each compat mode; a synthetic mixture-of-experts tree of
 * about 200,000 entries split down to its leaves; and the whole `bmplan
 * plan` process. Prints figures; asserts nothing.
 *
 *   bench_plan [PATH-TO-bmplan]   (run from the repository root)
 */
#include "bmplan.h"

#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Budgets: 4 GPUs of total/6 each and a CPU of total/6, so that the plan
 * fills every GPU, offloads to CPU and spills to disk. */
static void budgets_for(const bm_tree *t, bm_budgets *b)
{
    uint64_t *mb = calloc((size_t)t->n_modules, sizeof *mb);
    bm_tree_sizes(t, NULL, mb, NULL, NULL);
    int64_t each = (int64_t)(mb[0] / 6);
    free(mb);
    bm_budgets_init(b);
    for (int i = 0; i < 4; i++)
        bm_budgets_set(b, (bm_device){BM_DEV_GPU, i}, each, NULL);
    bm_budgets_set(b, (bm_device){BM_DEV_CPU, 0}, each, NULL);
}

/* Median time of `reps` plans, in milliseconds. */
static double time_plan(const bm_tree *t, bm_compat compat, char *const *ns, int nns, int reps,
                        int *keys)
{
    bm_budgets b;
    budgets_for(t, &b);
    bm_plan_opts o = {.compat = compat, .budgets = &b, .no_split = ns, .n_no_split = nns};
    double *ts = calloc((size_t)reps, sizeof *ts);
    for (int r = 0; r < reps; r++) {
        bm_plan *p = NULL;
        bm_error err = {0};
        double t0 = now();
        if (bm_plan_infer(t, &o, &p, &err)) {
            fprintf(stderr, "bench_plan: %s\n", err.msg);
            exit(1);
        }
        ts[r] = (now() - t0) * 1e3;
        *keys = p->map->n;
        bm_plan_free(p);
    }
    for (int i = 1; i < reps; i++)
        for (int j = i; j > 0 && ts[j] < ts[j - 1]; j--) {
            double x = ts[j];
            ts[j] = ts[j - 1];
            ts[j - 1] = x;
        }
    double med = ts[reps / 2];
    free(ts);
    bm_budgets_free(&b);
    return med;
}

/* A mixture-of-experts model: L layers, each with attention (4 Linear) and
 * E experts of 3 Linear, plus embeddings and a head. */
static bm_tree *synthetic_moe(int L, int E, int32_t *entries)
{
    bm_tree *t = bm_tree_new();
    int32_t root = bm_tree_add_root(t, "MoeForCausalLM", NULL);
    int64_t emb[] = {32000, 1024}, sq[] = {1024, 1024}, up[] = {512, 1024}, down[] = {1024, 512};
    int32_t model = bm_tree_add_module(t, root, "model", "MoeModel", NULL);
    int32_t e = bm_tree_add_module(t, model, "embed_tokens", "Embedding", NULL);
    bm_tree_add_tensor(t, e, "weight", BM_BF16, 2, emb, false, true, NULL);
    int32_t layers = bm_tree_add_module(t, model, "layers", "ModuleList", NULL);
    char name[32];
    for (int l = 0; l < L; l++) {
        snprintf(name, sizeof name, "%d", l);
        int32_t layer = bm_tree_add_module(t, layers, name, "MoeDecoderLayer", NULL);
        int32_t attn = bm_tree_add_module(t, layer, "self_attn", "Attention", NULL);
        const char *proj[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
        for (int i = 0; i < 4; i++) {
            int32_t p = bm_tree_add_module(t, attn, proj[i], "Linear", NULL);
            bm_tree_add_tensor(t, p, "weight", BM_BF16, 2, sq, false, true, NULL);
        }
        int32_t moe = bm_tree_add_module(t, layer, "mlp", "SparseMoeBlock", NULL);
        int32_t gate = bm_tree_add_module(t, moe, "gate", "Linear", NULL);
        int64_t g[] = {E, 1024};
        bm_tree_add_tensor(t, gate, "weight", BM_BF16, 2, g, false, true, NULL);
        int32_t experts = bm_tree_add_module(t, moe, "experts", "ModuleList", NULL);
        for (int x = 0; x < E; x++) {
            snprintf(name, sizeof name, "%d", x);
            int32_t ex = bm_tree_add_module(t, experts, name, "Expert", NULL);
            const char *w[] = {"w1", "w2", "w3"};
            for (int i = 0; i < 3; i++) {
                int32_t p = bm_tree_add_module(t, ex, w[i], "Linear", NULL);
                bm_tree_add_tensor(t, p, "weight", BM_BF16, 2, i == 1 ? down : up, false, true,
                                   NULL);
            }
        }
        int32_t n = bm_tree_add_module(t, layer, "norm", "RMSNorm", NULL);
        bm_tree_add_tensor(t, n, "weight", BM_BF16, 1, sq, false, true, NULL);
    }
    int32_t h = bm_tree_add_module(t, root, "lm_head", "Linear", NULL);
    bm_tree_add_tensor(t, h, "weight", BM_BF16, 2, emb, false, true, NULL);
    bm_error err = {0};
    if (bm_tree_finish(t, "moe", &err)) {
        fprintf(stderr, "bench_plan: %s\n", err.msg);
        exit(1);
    }
    *entries = t->n_modules + t->n_tensors;
    return t;
}

static double time_process(const char *bmplan, char *const *args, int reps)
{
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
        pid_t pid;
        double t0 = now();
        if (posix_spawn(&pid, bmplan, &fa, NULL, args, environ) != 0) {
            posix_spawn_file_actions_destroy(&fa);
            return -1;
        }
        int status;
        waitpid(pid, &status, 0);
        double dt = (now() - t0) * 1e3;
        posix_spawn_file_actions_destroy(&fa);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            return -1;
        if (dt < best)
            best = dt;
    }
    return best;
}

int main(int argc, char **argv)
{
    const char *bmplan = argc > 1 ? argv[1] : "build/bmplan";
    static const struct {
        const char *label, *path, *no_split;
    } models[] = {
        {"Llama-2-70B", "tests/fixtures/golden/graphs/llama-2-70b.yaml", "LlamaDecoderLayer"},
        {"Mixtral-8x7B", "tests/fixtures/golden/graphs/mixtral-8x7b-v0.1.yaml",
         "MixtralDecoderLayer"},
        {"BLOOM-176B", "tests/fixtures/golden/graphs/bloom-176b.yaml", "BloomBlock"},
    };
    static const struct {
        bm_compat c;
        const char *name;
    } modes[] = {{BM_COMPAT_0_27, "0.27"}, {BM_COMPAT_LATEST, "latest"}, {BM_COMPAT_BMPLAN, "bmplan"}};
    printf("planning (median of 51 runs; 4 GPUs of total/6, cpu total/6):\n");
    for (size_t m = 0; m < sizeof models / sizeof *models; m++) {
        bm_tree *t = NULL;
        bm_error err = {0};
        if (bm_graph_load(models[m].path, &t, &err)) {
            fprintf(stderr, "bench_plan: %s\n", err.msg);
            return 1;
        }
        char *ns[] = {(char *)models[m].no_split};
        for (size_t k = 0; k < sizeof modes / sizeof *modes; k++) {
            int keys = 0;
            double ms = time_plan(t, modes[k].c, ns, 1, 51, &keys);
            printf("  %-13s %-7s %7d entries  %8.3f ms  (%d keys)\n", models[m].label, modes[k].name,
                   t->n_modules + t->n_tensors, ms, keys);
        }
        bm_tree_free(t);
    }

    int32_t entries;
    bm_tree *moe = synthetic_moe(48, 1024, &entries);
    printf("synthetic MoE, split down to its leaves (median of 5 runs):\n");
    for (size_t k = 0; k < sizeof modes / sizeof *modes; k++) {
        int keys = 0;
        double ms = time_plan(moe, modes[k].c, NULL, 0, 5, &keys);
        printf("  %-13s %-7s %7d entries  %8.3f ms  (%d keys)\n", "MoE 48x1024", modes[k].name,
               entries, ms, keys);
    }
    bm_tree_free(moe);

    char *args[] = {(char *)bmplan,
                    "plan",
                    "tests/fixtures/golden/graphs/llama-2-70b.yaml",
                    "--max-memory",
                    "0=40GiB,1=40GiB,cpu=64GiB",
                    NULL};
    double ms = time_process(bmplan, args, 21);
    if (ms < 0)
        printf("whole process: could not run %s\n", bmplan);
    else
        printf("whole `bmplan plan` process (Llama-2-70B, 2 GPUs + cpu, best of 21): %.2f ms\n", ms);
    return 0;
}
