/*
 * outdir.c - atomic output folders with a lock, and file copies (see
 * outdir.h).
 */
#include "outdir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static char *sibling(const char *path, const char *fmt, long arg)
{
    char *dir = bm_path_dirname(path), *base = bm_path_basename(path);
    char *out = NULL;
    if (dir && base) {
        size_t n = strlen(dir) + strlen(base) + 64;
        out = malloc(n);
        if (out) {
            int k = snprintf(out, n, "%s/.%s", dir, base);
            snprintf(out + k, n - (size_t)k, fmt, arg);
        }
    }
    free(dir);
    free(base);
    return out;
}

static void unlock(bm_outdir *od)
{
    if (od->lock_fd >= 0) {
        /* unlink while holding the lock: a waiter that opened the old
         * inode notices (see take_lock) and retries on a fresh file */
        unlink(od->lock_path);
        close(od->lock_fd);
        od->lock_fd = -1;
    }
}

static void outdir_free(bm_outdir *od)
{
    unlock(od);
    free(od->path);
    free(od->tmp);
    free(od->lock_path);
    od->path = od->tmp = od->lock_path = NULL;
}

static bm_status take_lock(bm_outdir *od, const char *path, bm_error *err)
{
    memset(od, 0, sizeof *od);
    od->lock_fd = -1;
    od->path = strdup(path);
    od->lock_path = sibling(path, ".bmplan-lock", 0);
    if (!od->path || !od->lock_path) {
        outdir_free(od);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    char *dir = bm_path_dirname(path);
    bool parent_ok = dir && bm_is_dir(dir);
    free(dir);
    if (!parent_ok) {
        outdir_free(od);
        return bm_fail(err, BM_E_NOTFOUND, "%s: the folder it would go in does not exist", path);
    }
    for (int attempt = 0; attempt < 100; attempt++) {
        int fd = open(od->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            bm_status st = bm_fail_errno(err, errno, "cannot create lock file %s", od->lock_path);
            outdir_free(od);
            return st;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;
            close(fd);
            bm_status st = e == EWOULDBLOCK
                ? bm_fail(err, BM_E_BUSY, "%s: another bmplan run is writing it (lock file %s)",
                          path, od->lock_path)
                : bm_fail_errno(err, e, "cannot lock %s", path);
            outdir_free(od);
            return st;
        }
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(od->lock_path, &b) == 0 && a.st_ino == b.st_ino &&
            a.st_dev == b.st_dev) {
            od->lock_fd = fd;
            return BM_OK;
        }
        close(fd); /* the holder removed it between our open and flock */
    }
    outdir_free(od);
    return bm_fail(err, BM_E_BUSY, "%s: cannot take the lock", path);
}

bm_status bm_outdir_lock(bm_outdir *od, const char *path, bm_error *err)
{
    return take_lock(od, path, err);
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)ftw;
    int rc = (flag == FTW_DP || flag == FTW_D) ? rmdir(p) : unlink(p);
    return rc != 0 && errno != ENOENT ? -1 : 0;
}

bm_status bm_remove_tree(const char *path, bm_error *err)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? BM_OK : bm_fail_errno(err, errno, "%s", path);
    if (!S_ISDIR(st.st_mode))
        return unlink(path) == 0 ? BM_OK : bm_fail_errno(err, errno, "cannot remove %s", path);
    if (nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return bm_fail_errno(err, errno, "cannot remove %s", path);
    return BM_OK;
}

/* Stale temporaries: ".<base>.tmp-<pid>" beside the output. We hold the
 * lock, so no live run owns one. */
static void clean_stale(const bm_outdir *od)
{
    char *dir = bm_path_dirname(od->path), *base = bm_path_basename(od->path);
    DIR *d = dir ? opendir(dir) : NULL;
    if (d && base) {
        size_t bl = strlen(base);
        struct dirent *e;
        while ((e = readdir(d))) {
            const char *n = e->d_name;
            if (n[0] != '.' || strncmp(n + 1, base, bl) != 0 || strncmp(n + 1 + bl, ".tmp-", 5) != 0)
                continue;
            const char *p = n + 1 + bl + 5;
            if (!*p || strspn(p, "0123456789") != strlen(p))
                continue;
            char *full = bm_path_join(dir, n);
            if (full)
                bm_remove_tree(full, NULL);
            free(full);
        }
    }
    if (d)
        closedir(d);
    free(dir);
    free(base);
}

bm_status bm_outdir_begin(bm_outdir *od, const char *path, bool force, bm_error *err)
{
    bm_status st = take_lock(od, path, err);
    if (st)
        return st;
    struct stat sb;
    if (lstat(path, &sb) == 0 && !force) {
        outdir_free(od);
        return bm_fail(err, BM_E_EXISTS, "%s already exists (use --force to replace it)", path);
    }
    if (lstat(path, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
        outdir_free(od);
        return bm_fail(err, BM_E_EXISTS, "%s exists and is not a folder", path);
    }
    clean_stale(od);
    od->tmp = sibling(path, ".tmp-%ld", (long)getpid());
    if (!od->tmp) {
        outdir_free(od);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    if (mkdir(od->tmp, 0755) != 0) {
        st = bm_fail_errno(err, errno, "cannot create %s", od->tmp);
        outdir_free(od);
        return st;
    }
    return BM_OK;
}

/* Give the temporary folder every file of the existing output: a hard
 * link (no bytes copied; writers replace files by renaming new ones in, so
 * the old folder's files are never modified), or a copy where links are not
 * possible. Only regular files are taken: anything else is refused rather
 * than followed or dropped. */
static bm_status seed_from_existing(bm_outdir *od, bm_error *err)
{
    DIR *d = opendir(od->path);
    if (!d)
        return bm_fail_errno(err, errno, "cannot read %s", od->path);
    bm_status st = BM_OK;
    struct dirent *e;
    while (!st && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *src = bm_path_join(od->path, e->d_name);
        char *dst = bm_path_join(od->tmp, e->d_name);
        struct stat sb;
        if (!src || !dst) {
            st = bm_fail(err, BM_E_NOMEM, "out of memory");
        } else if (lstat(src, &sb) != 0) {
            st = bm_fail_errno(err, errno, "%s", src);
        } else if (!S_ISREG(sb.st_mode)) {
            st = bm_fail(err, BM_E_INVALID, "%s: '%.200s' is not a regular file; refusing to merge",
                         od->path, e->d_name);
        } else if (link(src, dst) != 0) {
            int in = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            int out = in < 0 ? -1 : open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
            if (in < 0 || out < 0)
                st = bm_fail_errno(err, errno, "cannot copy %s", src);
            else
                st = bm_copy_range(out, 0, in, 0, (uint64_t)sb.st_size, dst, src, err);
            if (!st && fsync(out) != 0)
                st = bm_fail_errno(err, errno, "writing %s", dst);
            if (in >= 0)
                close(in);
            if (out >= 0)
                close(out);
        }
        free(src);
        free(dst);
    }
    closedir(d);
    return st;
}

bm_status bm_outdir_begin_merge(bm_outdir *od, const char *path, bm_error *err)
{
    struct stat sb;
    if (lstat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return bm_fail(err, BM_E_NOTFOUND, "%s: no such folder to merge into", path);
    bm_status st = bm_outdir_begin(od, path, true, err);
    if (st)
        return st;
    if ((st = seed_from_existing(od, err)))
        bm_outdir_abort(od);
    return st;
}

void bm_outdir_abort(bm_outdir *od)
{
    if (od->tmp)
        bm_remove_tree(od->tmp, NULL);
    outdir_free(od);
}

void bm_outdir_fix_message(const bm_outdir *od, bm_error *err)
{
    if (!err || !od->tmp || !od->path)
        return;
    size_t tl = strlen(od->tmp), pl = strlen(od->path);
    char out[BM_ERROR_MSG];
    size_t o = 0;
    for (const char *m = err->msg; *m && o + 1 < sizeof out;) {
        if (strncmp(m, od->tmp, tl) == 0 && o + pl + 1 < sizeof out) {
            memcpy(out + o, od->path, pl);
            o += pl;
            m += tl;
        } else {
            out[o++] = *m++;
        }
    }
    out[o] = 0;
    memcpy(err->msg, out, o + 1);
}

bm_status bm_outdir_commit(bm_outdir *od, bm_error *err)
{
    bm_status st = bm_fsync_dir(od->tmp, err);
    if (st) {
        bm_outdir_abort(od);
        return st;
    }
    struct stat sb;
    bool exists = lstat(od->path, &sb) == 0;
    if (!exists) {
        if (rename(od->tmp, od->path) != 0) {
            st = bm_fail_errno(err, errno, "cannot move the output into %s", od->path);
            bm_outdir_abort(od);
            return st;
        }
    } else if (renameat2(AT_FDCWD, od->tmp, AT_FDCWD, od->path, RENAME_EXCHANGE) != 0) {
        /* no atomic exchange here (old kernel or file system): move the
         * old folder aside first; only this short window is not atomic */
        char *old = sibling(od->path, ".tmp-%ld", (long)getpid() + 0x40000000L);
        if (!old || rename(od->path, old) != 0) {
            st = bm_fail_errno(err, old ? errno : ENOMEM, "cannot replace %s", od->path);
            free(old);
            bm_outdir_abort(od);
            return st;
        }
        if (rename(od->tmp, od->path) != 0) {
            st = bm_fail_errno(err, errno, "cannot replace %s", od->path);
            rename(old, od->path);
            free(old);
            bm_outdir_abort(od);
            return st;
        }
        free(od->tmp);
        od->tmp = old;
    }
    /* od->tmp now names the replaced folder, or nothing */
    char *dir = bm_path_dirname(od->path);
    if (dir)
        bm_fsync_dir(dir, NULL);
    free(dir);
    if (exists)
        bm_remove_tree(od->tmp, NULL);
    outdir_free(od);
    return BM_OK;
}

bm_status bm_write_all(int fd, const void *buf, size_t len, int64_t off, const char *path,
                       bm_error *err)
{
    const char *p = buf;
    while (len) {
        ssize_t w = off >= 0 ? pwrite(fd, p, len, (off_t)off) : write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return bm_fail_errno(err, errno, "writing %s", path);
        if (w == 0)
            return bm_fail(err, BM_E_NOSPACE, "writing %s: no space left", path);
        p += w;
        len -= (size_t)w;
        if (off >= 0)
            off += w;
    }
    return BM_OK;
}

static uint64_t stat_kernel, stat_user;

void bm_copy_stats(uint64_t *kernel_bytes, uint64_t *user_bytes)
{
    *kernel_bytes = __atomic_load_n(&stat_kernel, __ATOMIC_RELAXED);
    *user_bytes = __atomic_load_n(&stat_user, __ATOMIC_RELAXED);
}

bm_status bm_copy_range(int out_fd, int64_t out_off, int in_fd, uint64_t in_off, uint64_t len,
                        const char *out_path, const char *in_path, bm_error *err)
{
    loff_t ioff = (loff_t)in_off, ooff = (loff_t)out_off;
    bool kernel = true;
    while (len && kernel) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : (size_t)len;
        ssize_t n = copy_file_range(in_fd, &ioff, out_fd, out_off >= 0 ? &ooff : NULL, chunk, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
                      errno == EOPNOTSUPP || errno == EBADF || errno == ETXTBSY)) {
            kernel = false;
            break;
        }
        if (n < 0)
            return bm_fail_errno(err, errno, "copying %s to %s", in_path, out_path);
        if (n == 0)
            return bm_fail(err, BM_E_FORMAT, "%s: file ends at byte %lld, before the data it should hold",
                           in_path, (long long)ioff);
        len -= (uint64_t)n;
        __atomic_add_fetch(&stat_kernel, (uint64_t)n, __ATOMIC_RELAXED);
    }
    if (!len)
        return BM_OK;
    enum { BUF = 4 << 20 };
    char *buf = malloc(BUF);
    if (!buf)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    bm_status st = BM_OK;
    while (len && !st) {
        size_t want = len < BUF ? (size_t)len : BUF;
        ssize_t n = pread(in_fd, buf, want, (off_t)ioff);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            st = bm_fail_errno(err, errno, "reading %s", in_path);
            break;
        }
        if (n == 0) {
            st = bm_fail(err, BM_E_FORMAT, "%s: file ends at byte %lld, before the data it should hold",
                         in_path, (long long)ioff);
            break;
        }
        st = bm_write_all(out_fd, buf, (size_t)n, out_off >= 0 ? (int64_t)ooff : -1, out_path, err);
        ioff += n;
        if (out_off >= 0)
            ooff += n;
        len -= (uint64_t)n;
        __atomic_add_fetch(&stat_user, (uint64_t)n, __ATOMIC_RELAXED);
    }
    free(buf);
    return st;
}
