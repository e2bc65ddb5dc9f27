/*
 * hooks.h - accelerate's module hooks (hooks.py and big_modeling.py) for
 * the C runtime: a hook runs before and after a module's forward; hooks are
 * attached, chained and removed per module; AlignDevicesHook moves inputs
 * to the module's execution device and brings offloaded weights in for the
 * call; CpuOffload keeps a whole model on the host until it runs. The
 * runner's dispatch (bm_dispatch_model) is built from these, so a device
 * map runs through exactly the mechanism a user program would use.
 */
/* Included before the guard: bmplan.h includes this header at its end. */
#include "runtime.h"

#ifndef BM_HOOKS_H
#define BM_HOOKS_H


#ifdef __cplusplus
extern "C" {
#endif

/* What an offloading hook would bring in for its module: the prefetcher asks
 * this to fetch ahead of the call. */
typedef struct bm_fetch_target {
    int32_t tensor;      /* tree tensor index */
    bm_dev *dev;      /* where it will be needed */
    bm_wsource *src;     /* where it comes from */
    const char *name;    /* the name to look up in src */
} bm_fetch_target;

typedef struct bm_hook_ops {
    const char *name;
    /* On attach. */
    bm_status (*init)(bm_hook *h, bm_rt *rt, int32_t module, bm_error *err);
    bm_status (*pre_forward)(bm_hook *h, bm_rt *rt, int32_t module, bm_call *call,
                             bm_error *err);
    bm_status (*post_forward)(bm_hook *h, bm_rt *rt, int32_t module, bm_call *call,
                              bm_error *err);
    /* On removal (not called when a hook is replaced). */
    void (*detach)(bm_hook *h, bm_rt *rt, int32_t module);
    void (*destroy)(bm_hook *h);
    /* repr, e.g. "AlignDevicesHook(execution_device=0, offload=True, ...)" */
    void (*describe)(const bm_hook *h, char *buf, size_t len);
    /* Optional: list what pre_forward will fetch (at most max targets);
     * returns how many. */
    int (*fetch_targets)(const bm_hook *h, bm_rt *rt, int32_t module, bm_fetch_target *out,
                         int max);
} bm_hook_ops;

struct bm_hook {
    const bm_hook_ops *ops;
    void *state;
};

/* A hook from a table and its state (destroy frees the state). */
bm_hook *bm_hook_new(const bm_hook_ops *ops, void *state);
void bm_hook_destroy(bm_hook *h);
void bm_hook_describe(const bm_hook *h, char *buf, size_t len);

/* SequentialHook(h[0], ..., h[n-1]): each event on each hook in order. Takes
 * ownership of the hooks. */
bm_hook *bm_hook_sequential(bm_hook *const *hooks, int n);
/* The hooks of a SequentialHook (n = 1 and the hook itself otherwise). */
int bm_hook_children(const bm_hook *h, bm_hook *const **out);

/* add_hook_to_module (§14.2). append with an existing hook: the old one is
 * detached and the module gets Sequential(old, new) (old's init runs again);
 * otherwise the old one is dropped without detach. init runs on the module.
 * Takes ownership of `hook` (also on failure). */
bm_status bm_hook_attach(bm_rt *rt, int32_t module, bm_hook *hook, bool append,
                         bm_error *err);
/* remove_hook_from_module: detach and drop; recurse into descendants. */
void bm_hook_remove(bm_rt *rt, int32_t module, bool recurse);

/* ---- AlignDevicesHook (§14.3) ---- */

typedef struct bm_align_opts {
    int execution_device;  /* a map value, or BM_DEVICE_NONE (io only) */
    bool offload;
    bool io_same_device;
    bool offload_buffers;
    bool place_submodules;
    bm_wsource *weights_map; /* offloaded weights come from here (may be NULL) */
    const char *prefix;    /* weights_map names are prefix + local names */
    bool tied_params;      /* share tied partners per device */
} bm_align_opts;

/* The hook (weights_map is referenced, prefix copied). */
bm_hook *bm_hook_align_devices(const bm_align_opts *o);
bool bm_hook_is_align(const bm_hook *h);
const bm_align_opts *bm_hook_align_get(const bm_hook *h);

/* ---- attaching (§14.4) ---- */

/* attach_execution_device_hook: an AlignDevicesHook(device) on every module
 * of the subtree that has no hook and has tensors; stops at preload classes. */
bm_status bm_attach_execution_device_hook(bm_rt *rt, int32_t module, int device,
                                          char *const *preload, int n_preload,
                                          bm_error *err);
/* attach_align_device_hook: offload hooks on every module of the subtree
 * that directly owns tensors (or is of a preload class: whole subtree). */
bm_status bm_attach_align_device_hook(bm_rt *rt, int32_t module, int device, bool offload,
                                      bm_wsource *weights_map, bool offload_buffers,
                                      char *const *preload, int n_preload, bm_error *err);

/* One entry of a device map: a module or tensor name and its value. */
typedef struct bm_map_entry {
    const char *name;
    int device;  /* GPU id, BM_DEVICE_CPU or BM_DEVICE_DISK */
} bm_map_entry;

/* Longest dotted prefix of `name` among the entries ("" covers all);
 * the entry index, or -1. */
int bm_map_lookup(const bm_map_entry *map, int n, const char *name);

/* attach_align_device_hook_on_blocks for a device map: execution devices
 * per entry (cpu/disk entries run on `main_device`), offloaded entries get
 * offload hooks reading from weights_map. */
bm_status bm_attach_align_device_hook_on_blocks(bm_rt *rt, const bm_map_entry *map, int n,
                                                int main_device, const bool *offloaded,
                                                bm_wsource *weights_map,
                                                bool offload_buffers, char *const *preload,
                                                int n_preload, bm_error *err);

/* ---- top-level APIs (§15) ---- */

/* dispatch_model: checks that the map covers every module and names only
 * existing ones, picks the main device (the first GPU of the map in map
 * order, else cpu) unless main_device is given (>= BM_DEVICE_CPU), keeps
 * cpu entries' weights in host RAM as the offload source when main is a
 * GPU, reads disk entries from `offload` (required when the map has disk
 * entries), and attaches the hooks. Weights must already be loaded for
 * GPU/cpu entries (bm_rt_load). Sets the runtime's main device. */
typedef struct bm_dispatch_opts {
    int main_device;           /* BM_DEVICE_NONE: choose as accelerate 0.27 */
    bm_wsource *offload;       /* the offload folder / index (disk entries) */
    bool offload_buffers;
    char *const *preload;      /* preload_module_classes */
    int n_preload;
} bm_dispatch_opts;
bm_status bm_dispatch_model(bm_rt *rt, const bm_map_entry *map, int n,
                            const bm_dispatch_opts *o, bm_error *err);

/* cpu_offload: the whole model's weights live in host RAM (state, or a copy
 * of the current weights when NULL) and each tensor-owning module brings
 * its own onto execution_device for its call. */
bm_status bm_cpu_offload(bm_rt *rt, int execution_device, bool offload_buffers,
                         bm_wsource *state, bm_error *err);
/* disk_offload: the same with weights read from an offload folder source. */
bm_status bm_disk_offload(bm_rt *rt, bm_wsource *folder, int execution_device,
                          bool offload_buffers, bm_error *err);

/* cpu_offload_with_hook: the whole model moves to execution_device when it
 * runs and stays there until `prev`'s owner... i.e. model k's call moves
 * model k-1 back to the host first. */
typedef struct bm_user_offload_hook bm_user_offload_hook;
bm_status bm_cpu_offload_with_hook(bm_rt *rt, int execution_device,
                                   bm_user_offload_hook *prev,
                                   bm_user_offload_hook **out, bm_error *err);
/* UserCpuOffloadHook.offload(): the model back to the host now. */
bm_status bm_user_offload_hook_offload(bm_user_offload_hook *h, bm_error *err);
/* UserCpuOffloadHook.remove(): remove the hook from the model. */
void bm_user_offload_hook_remove(bm_user_offload_hook *h);
void bm_user_offload_hook_free(bm_user_offload_hook *h);

#ifdef __cplusplus
}
#endif

#endif
