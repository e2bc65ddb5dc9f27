/*
 * progress.h - a progress line for long writes (bytes done of total, rate,
 * time left), redrawn a few times a second by a background thread from a
 * counter the workers update atomically. The caller decides whether to
 * show one at all (only when stderr is a terminal, never with --quiet).
 */
#ifndef BM_PROGRESS_H
#define BM_PROGRESS_H

#include "bmplan.h"

#include <pthread.h>

typedef struct bm_progress {
    FILE *out;
    const char *label;
    uint64_t total;
    const uint64_t *done;   /* read atomically */
    double t0;
    pthread_t thread;
    bool running;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
} bm_progress;

/* Start printing to `out` ("LABEL  1.20 GiB / 4.00 GiB  30%  512.0 MiB/s  ETA 0:06"). */
void bm_progress_print_start(bm_progress *p, FILE *out, const char *label, uint64_t total,
                             const uint64_t *done);
/* Draw the last state, end the line, stop the thread. No-op if not started. */
void bm_progress_print_stop(bm_progress *p);

/* The line itself, for a given state (also used by tests). */
void bm_progress_format(char *buf, size_t len, const char *label, uint64_t done,
                        uint64_t total, double seconds);

#endif
