/*
 * lazy_target: a self-checking target for lazy restores (tests/test_lazy.py).
 *
 *   lazy_target MIB
 *
 * Maps MIB MiB of private anonymous memory in 64 KiB blocks of varied content (random
 * words, zeros, text, random with another seed), then a 1 MiB read-only mapping and a
 * separate 4 MiB mapping, prints "ready PID" and "base ADDRESS" (of the big mapping) and waits for signals (pause()):
 *
 *   SIGUSR1  prints "sum HEX": a 64-bit FNV-1a over every byte of its memory
 *   SIGUSR2  mutation step k (k = 1, 2, ...): rewrites every (k+6)th page of the big
 *            mapping and prints "mutated k"
 *   SIGWINCH forks a child that prints "child sum HEX" (as SIGUSR1) and exits; the parent
 *            waits for it
 *   SIGPWR   moves its 4 MiB mapping elsewhere (mremap) and drops the first 64 KiB block of
 *            the big one (MADV_DONTNEED: zeros from then on), then prints "moved"
 *   SIGHUP   write(2)s the last page of the big mapping to stdout straight from its memory
 *            (a fault the kernel takes on its behalf when the page is not there yet),
 *            then prints "\nemitted N" (N: what write() returned, -errno on failure)
 *
 * Lines go to stdout (a file after a restore), flushed each.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define BLOCK (64UL << 10)
#define PAGE 4096UL

static volatile sig_atomic_t want_sum, want_mutate, want_emit, want_fork, want_move;
static unsigned char *big, *ro, *far;
static size_t big_len;
static int step;

static uint64_t mix(uint64_t seed, uint64_t index)
{
	uint64_t z = seed * 0x9E3779B97F4A7C15ULL + index + 0x632BE59BD9B4E019ULL;

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static void fill_random(unsigned char *p, size_t len, uint64_t seed, uint64_t first)
{
	uint64_t *w = (uint64_t *)p;

	for (size_t i = 0; i < len / 8; i++)
		w[i] = mix(seed, first + i);
}

static void fill_text(unsigned char *p, size_t len, size_t block)
{
	size_t at = 0;

	while (at < len) {
		char line[80];
		int n = snprintf(line, sizeof(line), "line %zu of block %zu: the quick brown fox\n", at, block);

		if ((size_t)n > len - at)
			n = (int)(len - at);
		memcpy(p + at, line, (size_t)n);
		at += (size_t)n;
	}
}

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001B3ULL;
	}
	return h;
}

static uint64_t sum(void)
{
	uint64_t h = 0xCBF29CE484222325ULL;

	h = fnv(h, big, big_len);
	h = fnv(h, ro, 1UL << 20);
	return fnv(h, far, 4UL << 20);
}

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		want_sum = 1;
	else if (sig == SIGUSR2)
		want_mutate = 1;
	else if (sig == SIGPWR)
		want_move = 1;
	else if (sig == SIGWINCH)
		want_fork = 1;
	else
		want_emit = 1;
}

static void *map(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return p;
}

int main(int argc, char **argv)
{
	sigset_t none;
	struct sigaction sa;

	if (argc != 2)
		return 2;
	big_len = strtoul(argv[1], NULL, 0) << 20;
	big = map(big_len);
	for (size_t b = 0; b < big_len / BLOCK; b++) {
		unsigned char *p = big + b * BLOCK;

		switch (b % 4) {
		case 0: fill_random(p, BLOCK, 1, b * BLOCK / 8); break;
		case 1: break;   /* zeros, never touched */
		case 2: fill_text(p, BLOCK, b); break;
		default: fill_random(p, BLOCK, 7, b); break;
		}
	}
	ro = map(1UL << 20);
	fill_random(ro, 1UL << 20, 3, 0);
	mprotect(ro, 1UL << 20, PROT_READ);
	far = map(4UL << 20);
	fill_text(far, 4UL << 20, 99);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGWINCH, &sa, NULL);
	sigaction(SIGPWR, &sa, NULL);
	printf("ready %d\nbase %p\n", getpid(), (void *)big);
	fflush(stdout);
	sigemptyset(&none);
	for (;;) {
		sigset_t all, old;

		sigfillset(&all);
		sigprocmask(SIG_BLOCK, &all, &old);
		while (!want_sum && !want_mutate && !want_emit && !want_fork && !want_move)
			sigsuspend(&none);
		sigprocmask(SIG_SETMASK, &old, NULL);
		if (want_emit) {
			ssize_t n;

			want_emit = 0;
			n = write(1, big + big_len - PAGE, PAGE);
			printf("\nemitted %zd\n", n < 0 ? (ssize_t)-errno : n);
			fflush(stdout);
		}
		if (want_mutate) {
			want_mutate = 0;
			step++;
			for (size_t off = 0; off < big_len; off += (size_t)(step + 6) * PAGE)
				fill_random(big + off, PAGE, 100 + (uint64_t)step, off);
			printf("mutated %d\n", step);
			fflush(stdout);
		}
		if (want_move) {
			void *spot = mmap(NULL, 8UL << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			want_move = 0;
			far = mremap(far, 4UL << 20, 4UL << 20, MREMAP_MAYMOVE | MREMAP_FIXED, (char *)spot + (2UL << 20));
			if (far == MAP_FAILED || madvise(big, BLOCK, MADV_DONTNEED)) {
				perror("move");
				exit(3);
			}
			printf("moved\n");
			fflush(stdout);
		}
		if (want_fork) {
			pid_t child;

			want_fork = 0;
			child = fork();
			if (child == 0) {
				printf("child sum %016" PRIx64 "\n", sum());
				fflush(stdout);
				_exit(0);
			}
			if (child > 0)
				waitpid(child, NULL, 0);
		}
		if (want_sum) {
			want_sum = 0;
			printf("sum %016" PRIx64 "\n", sum());
			fflush(stdout);
		}
	}
}
