/*
 * bench_offload_read.c - read back every tensor of an offload folder through
 * the reader the runner uses (bm_offload_read) and print the rate.
 * Usage: bench_offload_read DIR
 */
#include "bmplan.h"

#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    bm_offload *off;
    bm_error err = {0};
    if (bm_offload_open(argv[1], &off, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    uint64_t total = 0, biggest = 0;
    for (int32_t i = 0; i < off->n_tensors; i++)
        if (off->tensors[i].nbytes > biggest)
            biggest = off->tensors[i].nbytes;
    void *buf = malloc(biggest ? biggest : 1);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int32_t i = 0; i < off->n_tensors; i++) {
        if (bm_offload_read(off, i, 0, buf, off->tensors[i].nbytes, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        total += off->tensors[i].nbytes;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double t = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
    printf("%.2f GB/s (%llu bytes in %.2f s, %d tensors)\n", (double)total / t / 1e9,
           (unsigned long long)total, t, (int)off->n_tensors);
    free(buf);
    bm_offload_close(off);
    return 0;
}
