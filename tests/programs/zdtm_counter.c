/*
 * zdtm_counter: a target whose memory changes all the time, and which can
 * verify its own memory against its own counter.
 *
 *   zdtm_counter [-s STOPFILE] [-f pipe|socket]
 *
 * Prints
 *   ready PID
 *   state COUNTER_ADDR BUFFER_ADDR BUFFER_LEN
 * then counts: every 10 ms one step, step n (1, 2, ...) rewrites 8 pages of a
 * 16 MiB buffer, then sets the counter (a uint64_t at COUNTER_ADDR) to n.
 * Write w (0, 1, ...) goes to page (w * 1367) mod 4096 and fills it with the
 * pattern of version w + 1; a page never written holds version 0.  So the
 * whole buffer is a function of the counter, and a process restored from any
 * checkpoint can check that its buffer is exactly what its counter says.
 *
 * With -s, it stops counting (and waits with pause()) from the first step at
 * which STOPFILE exists: a process restored after the test created STOPFILE
 * keeps the counter of its checkpoint (or one more, if the checkpoint caught
 * it in the middle of a step, which it then completes).
 *
 * With -f pipe / -f socket, it also holds one end of a pipe (the write end)
 * / of a Unix socket pair at fd 5 (the other end is closed).
 *
 * On SIGUSR1 it finishes the current step, checks every page of the buffer
 * against the counter and prints "PASS counter=N crc=HEX" (HEX: the CRC-32 of
 * the buffer, as zlib.crc32 computes it) and exits 0, or prints
 * "FAIL: what" and exits 1.
 *
 * Debugging the checks: ZDTM_CORRUPT=buffer|counter (read after SIGUSR1)
 * flips one byte of the buffer, or bumps the counter without writing.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define NPAGES 4096UL
#define BUF_LEN (NPAGES * PAGE)
#define WRITES_PER_STEP 8
#define STRIDE 1367UL                 /* odd: w -> w * STRIDE mod NPAGES is a bijection */

static volatile sig_atomic_t go;
static volatile uint64_t counter;
static unsigned char *buf;
static uint64_t stride_inverse;
static uint32_t crc_table[256];

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

static uint64_t seed_of(uint64_t page, uint64_t version)
{
	return version * NPAGES + page + 1;
}

static void write_page(uint64_t page, uint64_t version)
{
	uint64_t *words = (uint64_t *)(buf + page * PAGE);
	uint64_t i, seed = seed_of(page, version);

	for (i = 0; i < PAGE / 8; i++)
		words[i] = mix(seed, i);
}

/* The version page `page` must hold after `writes` writes. */
static uint64_t version_after(uint64_t page, uint64_t writes)
{
	uint64_t r = page * stride_inverse % NPAGES;   /* first write that hits the page */

	if (writes == 0 || r > writes - 1)
		return 0;
	return r + NPAGES * ((writes - 1 - r) / NPAGES) + 1;
}

static void step(uint64_t n)
{
	uint64_t w;

	for (w = (n - 1) * WRITES_PER_STEP; w < n * WRITES_PER_STEP; w++)
		write_page(w * STRIDE % NPAGES, w + 1);
}

static uint32_t crc32_of(const unsigned char *p, size_t len)
{
	uint32_t c = 0xFFFFFFFFu;
	size_t i;

	for (i = 0; i < len; i++)
		c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
	return c ^ 0xFFFFFFFFu;
}

static int hold_fd5(const char *kind)
{
	int fds[2];

	if (!strcmp(kind, "pipe")) {
		if (pipe(fds))
			return -1;
	} else if (!strcmp(kind, "socket")) {
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds))
			return -1;
	} else {
		errno = EINVAL;
		return -1;
	}
	if (dup2(fds[1], 5) != 5)
		return -1;
	close(fds[0]);
	if (fds[1] != 5)
		close(fds[1]);
	return 0;
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	const char *stopfile = NULL, *fdkind = NULL, *corrupt;
	uint64_t page, writes;
	int opt, stopped = 0;
	uint32_t c, k;

	while ((opt = getopt(argc, argv, "s:f:")) != -1) {
		if (opt == 's')
			stopfile = optarg;
		else if (opt == 'f')
			fdkind = optarg;
		else {
			fprintf(stderr, "usage: zdtm_counter [-s STOPFILE] [-f pipe|socket]\n");
			return 2;
		}
	}
	for (k = 0; k < 256; k++) {
		c = k;
		for (opt = 0; opt < 8; opt++)
			c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		crc_table[k] = c;
	}
	for (stride_inverse = 1; stride_inverse * STRIDE % NPAGES != 1; stride_inverse += 2)
		;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;   /* pause() and nanosleep() return EINTR all the same */
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL)) {
		printf("FAIL: setup: sigaction: %s\n", strerror(errno));
		return 2;
	}
	if (fdkind && hold_fd5(fdkind)) {
		printf("FAIL: setup: fd 5 as %s: %s\n", fdkind, strerror(errno));
		return 2;
	}
	buf = mmap(NULL, BUF_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		printf("FAIL: setup: mmap: %s\n", strerror(errno));
		return 2;
	}
	for (page = 0; page < NPAGES; page++)
		write_page(page, 0);

	printf("ready %d\n", (int)getpid());
	printf("state %p %p %lu\n", (void *)&counter, (void *)buf, BUF_LEN);
	fflush(stdout);

	while (!go) {
		if (stopfile && !stopped && access(stopfile, F_OK) == 0)
			stopped = 1;
		if (stopped) {
			pause();
			continue;
		}
		step(counter + 1);
		counter = counter + 1;
		nanosleep(&tick, NULL);
	}

	corrupt = getenv("ZDTM_CORRUPT");
	if (corrupt && !strcmp(corrupt, "buffer"))
		buf[BUF_LEN / 3] ^= 1;
	if (corrupt && !strcmp(corrupt, "counter"))
		counter = counter + 1;

	writes = counter * WRITES_PER_STEP;
	for (page = 0; page < NPAGES; page++) {
		uint64_t version = version_after(page, writes), seed = seed_of(page, version);
		const uint64_t *words = (const uint64_t *)(buf + page * PAGE);
		uint64_t i;

		for (i = 0; i < PAGE / 8; i++)
			if (words[i] != mix(seed, i)) {
				printf("FAIL: counter %llu: page %llu word %llu is not version %llu "
				       "of the page\n", (unsigned long long)counter,
				       (unsigned long long)page, (unsigned long long)i,
				       (unsigned long long)version);
				fflush(stdout);
				return 1;
			}
	}
	printf("PASS counter=%llu crc=%08x\n", (unsigned long long)counter, crc32_of(buf, BUF_LEN));
	fflush(stdout);
	return 0;
}
