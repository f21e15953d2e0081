/*
 * zdtm_threads: a multi-threaded restore target in the manner of CRIU's zdtm.
 *
 *   zdtm_threads
 *
 * Starts 8 threads.  Each keeps state in TLS (__thread counter, tag, index),
 * in locals of its thread function (a counter and a tag that the compiler
 * keeps in callee-saved registers or on the stack across calls) and in an
 * array on its own stack.  Even-numbered threads poll the go flag with
 * nanosleep(10 ms), counting every round in both the TLS and the local
 * counter; odd-numbered ones block in pthread_cond_wait (a futex wait) until
 * main broadcasts.  The workers block SIGUSR1, so it is always main that takes
 * it.  When every thread has started, main prints "ready PID" and waits with
 * `while (!go) pause();`.
 *
 * After SIGUSR1 main broadcasts the condition; every thread runs five more
 * rounds, then checks that its TLS and local state are what they must be (the
 * two counters equal, the tags derived from its index, &tls_counter and
 * pthread_self() unchanged, its stack array intact) and reports in a shared
 * results array.  Main joins all threads (5 s deadline) and prints "PASS" and
 * exits 0, or prints one "FAIL: what" line per problem and exits 1.
 *
 * Debugging the checks: ZDTM_CORRUPT=tls|local|stack|main|hang (read after
 * SIGUSR1) damages one thread's state (hang: thread 6 never returns).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NTHREADS 8
#define STACK_WORDS 256
#define EXTRA_ROUNDS 5

struct result {
	int done;
	int ok;
	char msg[256];
};

static volatile sig_atomic_t go;
static int go2;                       /* under lock: main saw go */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t started;
static pthread_t threads[NTHREADS];
static void *tls_addr[NTHREADS];
static struct result results[NTHREADS];
static const char *corrupt;

static __thread uint64_t tls_counter;
static __thread uint64_t tls_tag;
static __thread int tls_index = -2;

static void on_usr1(int sig)
{
	(void)sig;
	go = 1;
}

static uint64_t mix(uint64_t seed, uint64_t index)
{
	uint64_t z = seed * 0x9E3779B97F4A7C15ULL + index + 0x632BE59BD9B4E019ULL;

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static int is(const char *what)
{
	return corrupt && !strcmp(corrupt, what);
}

static void report(int i, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void report(int i, const char *fmt, ...)
{
	va_list ap;
	size_t used = strlen(results[i].msg);

	if (used)
		used += snprintf(results[i].msg + used, sizeof(results[i].msg) - used, "; ");
	va_start(ap, fmt);
	if (used < sizeof(results[i].msg))
		vsnprintf(results[i].msg + used, sizeof(results[i].msg) - used, fmt, ap);
	va_end(ap);
	results[i].ok = 0;
}

static void *worker(void *arg)
{
	int i = (int)(intptr_t)arg;
	uint64_t local_counter = 0;
	uint64_t local_tag = mix(200 + i, 0);
	volatile uint64_t stackpat[STACK_WORDS];
	struct timespec tick = { 0, 10 * 1000 * 1000 }, short_tick = { 0, 1000 * 1000 };
	sigset_t usr1;
	int k;

	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);

	tls_index = i;
	tls_tag = mix(100 + i, 0);
	tls_addr[i] = (void *)&tls_counter;
	for (k = 0; k < STACK_WORDS; k++)
		stackpat[k] = mix(300 + i, k);
	tls_counter++;
	local_counter++;
	pthread_barrier_wait(&started);

	if (i % 2 == 0) {
		while (!go) {
			nanosleep(&tick, NULL);
			tls_counter++;
			local_counter++;
		}
	} else {
		pthread_mutex_lock(&lock);
		while (!go2)
			pthread_cond_wait(&cond, &lock);
		pthread_mutex_unlock(&lock);
	}

	/* Still alive and scheduled after the restore: a few more rounds. */
	for (k = 0; k < EXTRA_ROUNDS; k++) {
		nanosleep(&short_tick, NULL);
		tls_counter++;
		local_counter++;
	}

	if (is("tls") && i == 3)
		tls_counter++;
	if (is("local") && i == 4)
		local_tag ^= 1;
	if (is("stack") && i == 5)
		stackpat[7] ^= 1;
	if (is("hang") && i == 6)
		for (;;)
			pause();

	results[i].ok = 1;
	if (tls_counter != local_counter)
		report(i, "TLS counter %llu != local counter %llu", (unsigned long long)tls_counter,
		       (unsigned long long)local_counter);
	if (local_counter < 1 + EXTRA_ROUNDS)
		report(i, "local counter %llu too small", (unsigned long long)local_counter);
	if (tls_index != i)
		report(i, "TLS index is %d", tls_index);
	if (tls_tag != mix(100 + i, 0))
		report(i, "TLS tag is %#llx, wanted %#llx", (unsigned long long)tls_tag,
		       (unsigned long long)mix(100 + i, 0));
	if (local_tag != mix(200 + i, 0))
		report(i, "local tag is %#llx, wanted %#llx", (unsigned long long)local_tag,
		       (unsigned long long)mix(200 + i, 0));
	if ((void *)&tls_counter != tls_addr[i])
		report(i, "&tls_counter moved from %p to %p", tls_addr[i], (void *)&tls_counter);
	if (!pthread_equal(pthread_self(), threads[i]))
		report(i, "pthread_self() changed");
	for (k = 0; k < STACK_WORDS; k++)
		if (stackpat[k] != mix(300 + i, k)) {
			report(i, "stack array word %d damaged", k);
			break;
		}
	__atomic_store_n(&results[i].done, 1, __ATOMIC_RELEASE);
	return NULL;
}

int main(void)
{
	struct sigaction sa;
	struct timespec deadline;
	int i, failures = 0;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;   /* pause() and nanosleep() return EINTR all the same */
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL)) {
		printf("FAIL: setup: sigaction: %s\n", strerror(errno));
		return 2;
	}
	tls_index = -1;
	tls_tag = mix(99, 0);
	pthread_barrier_init(&started, NULL, NTHREADS + 1);
	for (i = 0; i < NTHREADS; i++) {
		int err = pthread_create(&threads[i], NULL, worker, (void *)(intptr_t)i);

		if (err) {
			printf("FAIL: setup: pthread_create: %s\n", strerror(err));
			return 2;
		}
	}
	pthread_barrier_wait(&started);

	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	while (!go)
		pause();

	corrupt = getenv("ZDTM_CORRUPT");
	if (is("main"))
		tls_tag ^= 1;
	pthread_mutex_lock(&lock);
	go2 = 1;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 5;
	for (i = 0; i < NTHREADS; i++) {
		int err = pthread_timedjoin_np(threads[i], NULL, &deadline);

		if (err) {
			printf("FAIL: thread %d did not finish within 5 s after go (%s)\n", i,
			       strerror(err));
			failures++;
		} else if (!__atomic_load_n(&results[i].done, __ATOMIC_ACQUIRE) || !results[i].ok) {
			printf("FAIL: thread %d: %s\n", i, results[i].msg);
			failures++;
		}
	}
	if (tls_index != -1 || tls_tag != mix(99, 0)) {
		printf("FAIL: main thread TLS changed (index %d, tag %#llx)\n", tls_index,
		       (unsigned long long)tls_tag);
		failures++;
	}
	if (failures) {
		fflush(stdout);
		return 1;
	}
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
