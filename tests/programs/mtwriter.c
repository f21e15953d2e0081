/*
 * mtwriter: N threads writing pseudo-random data while being checkpointed.
 *
 *   mtwriter [NTHREADS=4] [MIB_PER_THREAD=16]
 *
 * Each thread owns a private anonymous region of MIB_PER_THREAD MiB and keeps
 * writing words into random pages of it (throttled with short sleeps so that a
 * 2-core machine stays usable).  All threads also bump their own slot in a
 * shared counter page, and keep per-thread state in TLS.
 *
 * Output, all before any thread starts writing:
 *   ready PID
 *   region TID ADDR LEN        (one line per thread)
 *   shared ADDR LEN            (the counter page: one uint64_t per thread)
 * Runs until killed.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 64
#define WRITES_PER_BURST 32

struct worker {
	pthread_t thread;
	int index;
	pid_t tid;
	unsigned char *region;
	size_t len;
};

static struct worker workers[MAX_THREADS];
static volatile uint64_t *counters;
static pthread_barrier_t started, go;

/* Per-thread state kept in TLS, so a checkpoint has to get fs_base right. */
static __thread uint64_t tls_rng;
static __thread uint64_t tls_writes;

static uint64_t next_random(void)
{
	/* xorshift64 */
	tls_rng ^= tls_rng << 13;
	tls_rng ^= tls_rng >> 7;
	tls_rng ^= tls_rng << 17;
	return tls_rng;
}

static void *writer(void *arg)
{
	struct worker *w = arg;
	size_t words = w->len / sizeof(uint64_t);
	uint64_t *base = (uint64_t *)w->region;
	struct timespec pause = { 0, 500 * 1000 };
	int i;

	w->tid = gettid();
	tls_rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(w->index + 1);
	/* Fill the region once so that every page has content. */
	for (size_t k = 0; k < words; k++)
		base[k] = next_random();
	pthread_barrier_wait(&started);
	pthread_barrier_wait(&go);

	for (;;) {
		for (i = 0; i < WRITES_PER_BURST; i++) {
			base[next_random() % words] = next_random();
			tls_writes++;
		}
		__atomic_store_n(&counters[w->index], tls_writes, __ATOMIC_RELAXED);
		nanosleep(&pause, NULL);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int nthreads = argc > 1 ? atoi(argv[1]) : 4;
	long mib = argc > 2 ? atol(argv[2]) : 16;
	long page = sysconf(_SC_PAGESIZE);
	int i;

	if (nthreads < 1 || nthreads > MAX_THREADS || mib < 1) {
		fprintf(stderr, "usage: mtwriter [NTHREADS 1..%d] [MIB_PER_THREAD >= 1]\n", MAX_THREADS);
		return 2;
	}
	counters = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (counters == MAP_FAILED) {
		perror("mmap counters");
		return 1;
	}
	pthread_barrier_init(&started, NULL, nthreads + 1);
	pthread_barrier_init(&go, NULL, nthreads + 1);
	for (i = 0; i < nthreads; i++) {
		struct worker *w = &workers[i];

		w->index = i;
		w->len = (size_t)mib << 20;
		w->region = mmap(NULL, w->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				 -1, 0);
		if (w->region == MAP_FAILED) {
			perror("mmap region");
			return 1;
		}
		/* Keep the accounting per 4 KiB page, whatever the THP setting. */
		madvise(w->region, w->len, MADV_NOHUGEPAGE);
		if (pthread_create(&w->thread, NULL, writer, w)) {
			fprintf(stderr, "pthread_create failed\n");
			return 1;
		}
	}
	pthread_barrier_wait(&started);

	printf("ready %d\n", (int)getpid());
	for (i = 0; i < nthreads; i++)
		printf("region %d %p %zu\n", (int)workers[i].tid, (void *)workers[i].region,
		       workers[i].len);
	printf("shared %p %ld\n", (void *)counters, page);
	fflush(stdout);

	pthread_barrier_wait(&go);
	for (;;)
		pause();
}
