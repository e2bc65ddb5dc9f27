/*
 * backend.c - what every backend shares: starting one (the built-in CPU
 * backend, or the CUDA backend dlopen'ed from libbmplan_cuda.so), opening
 * its devices, and per-device memory accounting. Capacity is enforced here
 * rather than in each backend so that "over budget is an error" means the
 * same thing on a virtual device and on a real GPU.
 */
#include "device.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_DEVICES 64

struct bm_dev {
    bm_backend *be;
    int id;
    void *state;
    char name[32];
    pthread_mutex_t lock;
    bm_dev_stats st;
};

struct bm_backend {
    const bm_backend_ops *ops;
    void *state;
    void *dl;                       /* dlopen handle, or NULL */
    bm_dev *cpu;                 /* BM_DEVICE_CPU, when opened */
    bm_dev *devs[MAX_DEVICES];
};

bm_status bm_backend_start(const bm_backend_ops *ops, const bm_backend_config *cfg,
                           bm_backend **out, bm_error *err)
{
    *out = NULL;
    if (!ops || ops->abi != BM_BACKEND_ABI)
        return bm_fail(err, BM_E_UNSUPPORTED, "backend '%s' has ABI %u, bmplan expects %u",
                       ops && ops->name ? ops->name : "?", ops ? ops->abi : 0,
                       (unsigned)BM_BACKEND_ABI);
    bm_backend *be = calloc(1, sizeof *be);
    if (!be)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    be->ops = ops;
    bm_backend_config def = {0};
    bm_status s = ops->init(cfg ? cfg : &def, &be->state, err);
    if (s != BM_OK) {
        free(be);
        return s;
    }
    *out = be;
    return BM_OK;
}

/* The folder of the running executable, for finding libbmplan_cuda.so. */
static char *exe_dir(void)
{
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0)
        return NULL;
    buf[n] = 0;
    char *slash = strrchr(buf, '/');
    if (!slash)
        return NULL;
    *slash = 0;
    return strdup(buf);
}

static bm_status load_cuda(const bm_backend_config *cfg, bm_backend **out, bm_error *err)
{
    const char *env = getenv("BMPLAN_CUDA_LIB");
    char *path = NULL;
    void *dl = NULL;
    char why[512] = "";
    if (env && *env) {
        dl = dlopen(env, RTLD_NOW | RTLD_LOCAL);
        if (!dl)
            return bm_fail(err, BM_E_UNSUPPORTED,
                           "cuda backend: cannot load BMPLAN_CUDA_LIB=%s: %s", env, dlerror());
    } else {
        char *dir = exe_dir();
        if (dir) {
            path = bm_path_join(dir, "libbmplan_cuda.so");
            free(dir);
            if (path && access(path, F_OK) == 0) {
                dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
                if (!dl)
                    snprintf(why, sizeof why, "%s", dlerror());
            }
        }
        if (!dl && !why[0]) {
            dl = dlopen("libbmplan_cuda.so", RTLD_NOW | RTLD_LOCAL);
            if (!dl)
                snprintf(why, sizeof why, "libbmplan_cuda.so not found next to the "
                         "executable nor on the library path (build with CUDA=1 or set BMPLAN_CUDA_LIB)");
        }
        if (!dl) {
            free(path);
            return bm_fail(err, BM_E_UNSUPPORTED, "cuda backend: %s", why);
        }
    }
    free(path);
    bm_backend_entry_fn entry;
    *(void **)&entry = dlsym(dl, BM_BACKEND_ENTRY);
    if (!entry) {
        dlclose(dl);
        return bm_fail(err, BM_E_UNSUPPORTED, "cuda backend: library has no %s symbol",
                       BM_BACKEND_ENTRY);
    }
    const bm_backend_ops *ops = entry(err);
    if (!ops) {
        dlclose(dl);
        if (err && !err->msg[0])
            bm_fail(err, BM_E_UNSUPPORTED, "cuda backend: no usable CUDA driver or device");
        return err ? (err->code ? err->code : BM_E_UNSUPPORTED) : BM_E_UNSUPPORTED;
    }
    bm_status s = bm_backend_start(ops, cfg, out, err);
    if (s != BM_OK) {
        dlclose(dl);
        return s;
    }
    (*out)->dl = dl;
    return BM_OK;
}

bm_status bm_backend_load(const char *name, const bm_backend_config *cfg,
                          bm_backend **out, bm_error *err)
{
    *out = NULL;
    if (!name || strcmp(name, "cpu") == 0)
        return bm_backend_start(bm_backend_cpu_ops(), cfg, out, err);
    if (strcmp(name, "cuda") == 0)
        return load_cuda(cfg, out, err);
    return bm_fail(err, BM_E_INVALID, "unknown backend '%s' (expected cpu or cuda)", name);
}

static void device_close(bm_dev *d)
{
    if (!d)
        return;
    d->be->ops->device_close(d->state);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

void bm_backend_free(bm_backend *be)
{
    if (!be)
        return;
    device_close(be->cpu);
    for (int i = 0; i < MAX_DEVICES; i++)
        device_close(be->devs[i]);
    be->ops->shutdown(be->state);
    if (be->dl)
        dlclose(be->dl);
    free(be);
}

const bm_backend_ops *bm_backend_get_ops(const bm_backend *be) { return be->ops; }

int bm_backend_device_count(bm_backend *be) { return be->ops->device_count(be->state); }

bm_status bm_backend_mem_info(bm_backend *be, int id, uint64_t *free_bytes,
                              uint64_t *total_bytes, bm_error *err)
{
    *free_bytes = *total_bytes = 0;
    if (!be->ops->mem_info)
        return bm_fail(err, BM_E_UNSUPPORTED, "the %s backend's devices are virtual: no memory "
                       "to read", be->ops->name);
    if (id < 0 || id >= bm_backend_device_count(be))
        return bm_fail(err, BM_E_INVALID, "%s: no device %d", be->ops->name, id);
    return be->ops->mem_info(be->state, id, free_bytes, total_bytes, err);
}
const char *bm_backend_name(const bm_backend *be) { return be->ops->name; }

bm_status bm_dev_open(bm_backend *be, int id, uint64_t capacity, bm_dev **out,
                         bm_error *err)
{
    *out = NULL;
    bm_dev **slot;
    if (id == BM_DEVICE_CPU) {
        slot = &be->cpu;
    } else if (id >= 0 && id < MAX_DEVICES) {
        int n = be->ops->device_count(be->state);
        if (id >= n)
            return bm_fail(err, BM_E_NOTFOUND, "%s backend: device %d does not exist (%d available)",
                           be->ops->name, id, n);
        slot = &be->devs[id];
    } else {
        return bm_fail(err, BM_E_INVALID, "device id %d out of range", id);
    }
    if (*slot) {
        (*slot)->st.capacity = capacity;
        *out = *slot;
        return BM_OK;
    }
    bm_dev *d = calloc(1, sizeof *d);
    if (!d)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    bm_status s = be->ops->device_open(be->state, id, &d->state, err);
    if (s != BM_OK) {
        free(d);
        return s;
    }
    d->be = be;
    d->id = id;
    d->st.capacity = capacity;
    pthread_mutex_init(&d->lock, NULL);
    if (id == BM_DEVICE_CPU)
        snprintf(d->name, sizeof d->name, "cpu");
    else if (strcmp(be->ops->name, "cpu") == 0)
        snprintf(d->name, sizeof d->name, "vgpu:%d", id);
    else
        snprintf(d->name, sizeof d->name, "%s:%d", be->ops->name, id);
    *slot = d;
    *out = d;
    return BM_OK;
}

int bm_dev_id(const bm_dev *dev) { return dev->id; }
bm_backend *bm_dev_backend(const bm_dev *dev) { return dev->be; }
const char *bm_dev_name(const bm_dev *dev) { return dev->name; }
void *bm_dev_state(const bm_dev *dev) { return dev->state; }

void bm_dev_get_stats(bm_dev *dev, bm_dev_stats *st)
{
    pthread_mutex_lock(&dev->lock);
    *st = dev->st;
    pthread_mutex_unlock(&dev->lock);
}

void bm_dev_reset_peak(bm_dev *dev)
{
    pthread_mutex_lock(&dev->lock);
    dev->st.peak = dev->st.in_use;
    pthread_mutex_unlock(&dev->lock);
}

/* Reserve `size` bytes of capacity; false when it would go over. */
static bool reserve(bm_dev *dev, uint64_t size, uint64_t *in_use)
{
    pthread_mutex_lock(&dev->lock);
    bool ok = size <= dev->st.capacity && dev->st.in_use <= dev->st.capacity - size;
    if (ok) {
        dev->st.in_use += size;
        if (dev->st.in_use > dev->st.peak)
            dev->st.peak = dev->st.in_use;
        dev->st.n_allocs++;
    }
    if (in_use)
        *in_use = dev->st.in_use;
    pthread_mutex_unlock(&dev->lock);
    return ok;
}

/* The error of an allocation over the device's budget. */
static bm_status over_budget(const bm_dev *dev, uint64_t size, const char *what,
                             uint64_t in_use, bm_error *err)
{
    char a[32], b[32], c[32];
    return bm_fail(err, BM_E_NOFIT, "%s: out of memory: %s requested for %s, %s in use, budget %s",
                   dev->name, bm_size_format(size, a, sizeof a), what ? what : "a buffer",
                   bm_size_format(in_use, b, sizeof b),
                   bm_size_format(dev->st.capacity, c, sizeof c));
}

static void unreserve(bm_dev *dev, uint64_t size)
{
    pthread_mutex_lock(&dev->lock);
    dev->st.in_use -= size < dev->st.in_use ? size : dev->st.in_use;
    pthread_mutex_unlock(&dev->lock);
}

bm_status bm_dev_alloc(bm_dev *dev, uint64_t size, const char *what, void **ptr,
                          bm_error *err)
{
    *ptr = NULL;
    uint64_t in_use = 0;
    if (!reserve(dev, size, &in_use))
        return over_budget(dev, size, what, in_use, err);
    bm_status s = dev->be->ops->alloc(dev->state, size ? size : 1, ptr, err);
    if (s != BM_OK) {
        unreserve(dev, size);
        bm_error_prefix(err, "%s", dev->name);
        return s;
    }
    return BM_OK;
}

bool bm_dev_try_alloc(bm_dev *dev, uint64_t size, void **ptr)
{
    *ptr = NULL;
    if (!reserve(dev, size, NULL))
        return false;
    if (dev->be->ops->alloc(dev->state, size ? size : 1, ptr, NULL) != BM_OK) {
        unreserve(dev, size);
        *ptr = NULL;
        return false;
    }
    return true;
}

void bm_dev_free(bm_dev *dev, void *ptr, uint64_t size)
{
    if (!ptr)
        return;
    dev->be->ops->free(dev->state, ptr);
    unreserve(dev, size);
}

bool bm_backend_has_host_alloc(const bm_backend *be)
{
    return be && be->ops->host_alloc && be->ops->host_free;
}

char *bm_backend_report_json(bm_backend *be)
{
    return be && be->ops->report_json ? be->ops->report_json(be->state) : NULL;
}

bm_status bm_dev_alloc_pinned(bm_dev *dev, bm_backend *pin_for, uint64_t size,
                              const char *what, void **ptr, bm_error *err)
{
    if (!bm_backend_has_host_alloc(pin_for))
        return bm_dev_alloc(dev, size, what, ptr, err);
    *ptr = NULL;
    if (dev->id != BM_DEVICE_CPU || !dev->be->ops->host_addressable)
        return bm_fail(err, BM_E_INTERNAL, "%s: pinned memory is for the host device", dev->name);
    uint64_t in_use = 0;
    if (!reserve(dev, size, &in_use))
        return over_budget(dev, size, what, in_use, err);
    bm_status s = pin_for->ops->host_alloc(pin_for->state, size ? size : 1, ptr, err);
    if (s != BM_OK) {
        unreserve(dev, size);
        *ptr = NULL;
        bm_error_prefix(err, "%s (%s host memory)", dev->name, pin_for->ops->name);
    }
    return s;
}

void bm_dev_free_pinned(bm_dev *dev, bm_backend *pin_for, void *ptr, uint64_t size)
{
    if (!bm_backend_has_host_alloc(pin_for)) {
        bm_dev_free(dev, ptr, size);
        return;
    }
    if (!ptr)
        return;
    pin_for->ops->host_free(pin_for->state, ptr);
    unreserve(dev, size);
}

static void count(bm_dev *dev, uint64_t *field, uint64_t n)
{
    pthread_mutex_lock(&dev->lock);
    *field += n;
    pthread_mutex_unlock(&dev->lock);
}

bm_status bm_dev_upload(bm_dev *dev, void *dst, const void *src, uint64_t n,
                           bm_error *err)
{
    count(dev, &dev->st.bytes_in, n);
    return dev->be->ops->upload(dev->state, dst, src, n, err);
}

void bm_dev_note_upload(bm_dev *dev, uint64_t n)
{
    count(dev, &dev->st.bytes_in, n);
}

bm_status bm_dev_download(bm_dev *dev, void *dst, const void *src, uint64_t n,
                             bm_error *err)
{
    count(dev, &dev->st.bytes_out, n);
    return dev->be->ops->download(dev->state, dst, src, n, err);
}

bm_status bm_dev_copy(bm_dev *dst_dev, void *dst, bm_dev *src_dev,
                         const void *src, uint64_t n, bm_error *err)
{
    if (dst_dev->be == src_dev->be) {
        if (dst_dev != src_dev)
            count(dst_dev, &dst_dev->st.bytes_peer_in, n);
        return dst_dev->be->ops->copy(dst_dev->state, dst, src_dev->state, src, n, err);
    }
    /* Across backends: the host device of the CPU backend is plain memory,
     * so one side is always a host pointer. */
    if (strcmp(src_dev->be->ops->name, "cpu") == 0 && src_dev->id == BM_DEVICE_CPU)
        return bm_dev_upload(dst_dev, dst, src, n, err);
    if (strcmp(dst_dev->be->ops->name, "cpu") == 0 && dst_dev->id == BM_DEVICE_CPU)
        return bm_dev_download(src_dev, dst, src, n, err);
    void *bounce = malloc(n ? n : 1);
    if (!bounce)
        return bm_fail(err, BM_E_NOMEM, "out of memory for a %llu-byte transfer",
                       (unsigned long long)n);
    bm_status s = bm_dev_download(src_dev, bounce, src, n, err);
    if (s == BM_OK)
        s = bm_dev_upload(dst_dev, dst, bounce, n, err);
    free(bounce);
    return s;
}
