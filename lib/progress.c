/*
 * progress.c - the progress line of long writes (see progress.h).
 */
#include "progress.h"

#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void bm_progress_format(char *buf, size_t len, const char *label, uint64_t done,
                        uint64_t total, double seconds)
{
    char d[32], t[32], r[32], eta[32] = "--:--";
    bm_size_format(done, d, sizeof d);
    bm_size_format(total, t, sizeof t);
    double rate = seconds > 0 ? (double)done / seconds : 0;
    bm_size_format((uint64_t)rate, r, sizeof r);
    if (rate > 0 && total >= done) {
        unsigned long s = (unsigned long)((double)(total - done) / rate + 0.5);
        if (s >= 3600)
            snprintf(eta, sizeof eta, "%lu:%02lu:%02lu", s / 3600, s / 60 % 60, s % 60);
        else
            snprintf(eta, sizeof eta, "%lu:%02lu", s / 60, s % 60);
    }
    unsigned pct = total ? (unsigned)(done * 100 / total) : 100;
    snprintf(buf, len, "%s  %s / %s  %3u%%  %s/s  ETA %s", label, d, t, pct, r, eta);
}

static void draw(bm_progress *p)
{
    char line[256];
    uint64_t done = __atomic_load_n(p->done, __ATOMIC_RELAXED);
    bm_progress_format(line, sizeof line, p->label, done, p->total, now() - p->t0);
    /* \r and clear to the end of the line: the text only gets redrawn */
    fprintf(p->out, "\r%s\033[K", line);
    fflush(p->out);
}

static void *loop(void *arg)
{
    bm_progress *p = arg;
    pthread_mutex_lock(&p->mu);
    while (!p->stop) {
        draw(p);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 250000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

void bm_progress_print_start(bm_progress *p, FILE *out, const char *label, uint64_t total,
                             const uint64_t *done)
{
    memset(p, 0, sizeof *p);
    p->out = out;
    p->label = label;
    p->total = total;
    p->done = done;
    p->t0 = now();
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->running = pthread_create(&p->thread, NULL, loop, p) == 0;
    if (!p->running) {
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
    }
}

void bm_progress_print_stop(bm_progress *p)
{
    if (!p->running)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    draw(p);
    fputc('\n', p->out);
    fflush(p->out);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    p->running = false;
}
