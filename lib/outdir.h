/*
 * outdir.h - output folders built atomically, and the file-copy helpers
 * the writers share.
 *
 * A folder output (a sharded model, an offload folder) is built in a
 * temporary folder beside its final path, every file fsynced, then moved
 * into place with one rename (an existing folder under --force is swapped
 * with renameat2(RENAME_EXCHANGE), then removed): readers see the old
 * folder or the complete new one, never a mix. A lock file beside the
 * output makes a second run into the same path fail at once instead of
 * interleaving; temporaries left by killed runs are removed by the next.
 */
#ifndef BM_OUTDIR_H
#define BM_OUTDIR_H

#include "bmplan.h"

typedef struct bm_outdir {
    char *path;      /* the final folder */
    char *tmp;       /* where the output is built (NULL in lock-only mode) */
    char *lock_path; /* "<parent>/.<base>.bmplan-lock" */
    int lock_fd;     /* -1 when not held */
} bm_outdir;

/* Take the lock (BM_E_BUSY if another process holds it), refuse an
 * existing `path` unless `force` (BM_E_EXISTS), remove stale temporaries
 * ("<parent>/.<base>.tmp-<pid>") and create an empty temporary folder. */
bm_status bm_outdir_begin(bm_outdir *od, const char *path, bool force, bm_error *err);
/* Like bm_outdir_begin(force) for updating an existing folder: the
 * temporary starts as a copy of `path` made of hard links (copies where
 * links are impossible), so a merge writes new files beside the old ones
 * and bm_outdir_commit swaps the whole folder in at once. */
bm_status bm_outdir_begin_merge(bm_outdir *od, const char *path, bm_error *err);
/* Take the lock only, to update an existing folder in place. */
bm_status bm_outdir_lock(bm_outdir *od, const char *path, bm_error *err);
/* fsync the temporary folder, move it to `path`, fsync the parent, remove
 * the replaced folder, release the lock. On failure `path` is untouched
 * and everything is cleaned up as by bm_outdir_abort. */
bm_status bm_outdir_commit(bm_outdir *od, bm_error *err);
/* Remove the temporary folder (if any) and release the lock. */
void bm_outdir_abort(bm_outdir *od);
/* Rewrite mentions of the temporary folder in err's message as the final
 * path, so that messages name what the user asked for. */
void bm_outdir_fix_message(const bm_outdir *od, bm_error *err);

/* Remove a file tree (no symlink is followed). */
bm_status bm_remove_tree(const char *path, bm_error *err);

/* write() all of buf to fd at its position (pwrite at `off` when off >= 0).
 * ENOSPC/EFBIG/EDQUOT give BM_E_NOSPACE; `path` names the file. */
bm_status bm_write_all(int fd, const void *buf, size_t len, int64_t off, const char *path,
                       bm_error *err);
/* Copy len bytes of in_fd at in_off to out_fd at its position (out_off <
 * 0) or at out_off, with copy_file_range where the kernel can (the data
 * does not pass through user space), else pread/write. */
bm_status bm_copy_range(int out_fd, int64_t out_off, int in_fd, uint64_t in_off, uint64_t len,
                        const char *out_path, const char *in_path, bm_error *err);

/* Bytes bm_copy_range has copied in this process so far: in the kernel
 * (copy_file_range) and through user memory (fallback). For tests and
 * benchmarks. */
void bm_copy_stats(uint64_t *kernel_bytes, uint64_t *user_bytes);

#endif
