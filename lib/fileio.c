/*
 * fileio.c - small-file reads and atomic writes.
 *
 * Every output bmplan writes goes through a temporary name in the target
 * folder, is fsynced, then renamed: a failed or killed run leaves the
 * previous file intact.
 */
#include "bmplan.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bool bm_is_dir(const char *path)
{
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

bool bm_is_file(const char *path)
{
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

char *bm_path_join(const char *dir, const char *name)
{
    size_t ld = strlen(dir), ln = strlen(name);
    char *p = malloc(ld + ln + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, ld);
    size_t o = ld;
    if (ld && dir[ld - 1] != '/')
        p[o++] = '/';
    memcpy(p + o, name, ln + 1);
    return p;
}

bm_status bm_read_file(const char *path, size_t max_bytes, char **data,
                       size_t *len, bm_error *err)
{
    *data = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return bm_fail_errno(err, errno, "%s", path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return bm_fail_errno(err, e, "%s", path);
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return bm_fail(err, BM_E_IO, "%s: is a folder, expected a file", path);
    }
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > max_bytes) {
        close(fd);
        return bm_fail(err, BM_E_FORMAT, "%s: file is too large (%lld bytes, at most %zu)",
                       path, (long long)st.st_size, max_bytes);
    }
    size_t cap = S_ISREG(st.st_mode) ? (size_t)st.st_size + 1 : 65536;
    size_t n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        close(fd);
        return bm_fail(err, BM_E_NOMEM, "%s: out of memory", path);
    }
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > max_bytes) {
                free(buf);
                close(fd);
                return bm_fail(err, BM_E_FORMAT, "%s: file is too large (at most %zu bytes)",
                               path, max_bytes);
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                close(fd);
                return bm_fail(err, BM_E_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(buf);
            close(fd);
            return bm_fail_errno(err, e, "%s", path);
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    *data = buf;
    if (len)
        *len = n;
    return BM_OK;
}

bm_status bm_fsync_dir(const char *dir, bm_error *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return bm_fail_errno(err, errno, "%s", dir);
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL)
        return bm_fail_errno(err, e, "fsync %s", dir);
    return BM_OK;
}

/* dirname and basename may modify their argument: work on a copy */
static char *path_part(const char *path, char *(*part)(char *))
{
    char *copy = strdup(path);
    if (!copy)
        return NULL;
    char *r = strdup(part(copy));
    free(copy);
    return r;
}

char *bm_path_dirname(const char *path)
{
    return path_part(path, dirname);
}

char *bm_path_basename(const char *path)
{
    return path_part(path, basename);
}

static char *temp_name_for(const char *path)
{
    static unsigned counter;
    char *copy = strdup(path);
    char *dcopy = strdup(path);
    if (!copy || !dcopy) {
        free(copy);
        free(dcopy);
        return NULL;
    }
    const char *base = basename(copy);
    const char *dir = dirname(dcopy);
    size_t n = strlen(dir) + strlen(base) + 64;
    char *tmp = malloc(n);
    if (tmp)
        snprintf(tmp, n, "%s/.%s.tmp.%ld.%u", dir, base, (long)getpid(),
                 __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
    free(copy);
    free(dcopy);
    return tmp;
}

bm_status bm_atomic_open(bm_atomic_file *af, const char *path, bm_error *err)
{
    memset(af, 0, sizeof *af);
    af->path = strdup(path);
    af->tmp_path = temp_name_for(path);
    if (!af->path || !af->tmp_path) {
        free(af->path);
        free(af->tmp_path);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    int fd = open(af->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        bm_status st = bm_fail_errno(err, errno, "cannot create %s", path);
        free(af->path);
        free(af->tmp_path);
        return st;
    }
    af->fp = fdopen(fd, "w");
    if (!af->fp) {
        bm_status st = bm_fail_errno(err, errno, "cannot create %s", path);
        close(fd);
        unlink(af->tmp_path);
        free(af->path);
        free(af->tmp_path);
        return st;
    }
    return BM_OK;
}

void bm_atomic_abort(bm_atomic_file *af)
{
    if (af->fp)
        fclose(af->fp);
    if (af->tmp_path)
        unlink(af->tmp_path);
    free(af->path);
    free(af->tmp_path);
    memset(af, 0, sizeof *af);
}

bm_status bm_atomic_commit(bm_atomic_file *af, bm_error *err)
{
    bm_status st = BM_OK;
    if (fflush(af->fp) != 0 || ferror(af->fp))
        st = bm_fail_errno(err, errno ? errno : EIO, "writing %s", af->path);
    else if (fsync(fileno(af->fp)) != 0)
        st = bm_fail_errno(err, errno, "writing %s", af->path);
    int rc = fclose(af->fp);
    af->fp = NULL;
    if (!st && rc != 0)
        st = bm_fail_errno(err, errno, "writing %s", af->path);
    if (!st && rename(af->tmp_path, af->path) != 0)
        st = bm_fail_errno(err, errno, "cannot write %s", af->path);
    if (st) {
        bm_atomic_abort(af);
        return st;
    }
    char *dir = bm_path_dirname(af->path);
    if (dir) {
        bm_fsync_dir(dir, NULL);
        free(dir);
    }
    free(af->path);
    free(af->tmp_path);
    memset(af, 0, sizeof *af);
    return BM_OK;
}

bm_status bm_write_file_atomic(const char *path, const void *data, size_t len,
                               bm_error *err)
{
    bm_atomic_file af;
    bm_status st = bm_atomic_open(&af, path, err);
    if (st)
        return st;
    if (len && fwrite(data, 1, len, af.fp) != len) {
        st = bm_fail_errno(err, errno ? errno : EIO, "writing %s", path);
        bm_atomic_abort(&af);
        return st;
    }
    return bm_atomic_commit(&af, err);
}
