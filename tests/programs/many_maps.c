/*
 * many_maps: a target with many small separate mappings (like CRIU's zdtm maps06).
 *
 * Usage: many_maps N [FILE]
 * Maps N one-page regions back to back inside one reservation, alternating
 * private anonymous read-write pages and pages that do not merge with their
 * neighbours: PROT_READ anonymous pages, or (with FILE) private read-write
 * mappings of FILE's first page, like maps06.  Each page gets a distinct
 * word, so the process has about N VMAs.  Prints "ready PID", then answers one
 * line per command on stdin:
 *
 *   write K SEED   write one word into K read-write pages spread over the
 *                  regions (SEED varies the value) -> ok
 *   sum            -> ok HEX   (a hash of every region's first 64 bytes)
 *   count          -> ok N     (the number of regions)
 *   base           -> ok HEX   (the address of the first region)
 *   remap I SEED   unmap region I (a read-write one) and map it again, same place and
 *                  protection, same first word, then write as "write" does -> ok
 *   detach         -> ok, then fds 0-2 become /dev/null and it sleeps until
 *                  killed (so that a checkpoint holds no pipe of its caller)
 *   exit           exits 0
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL

static unsigned char *base;
static long n;

int main(int argc, char **argv)
{
	char line[256];
	int fd = -1;

	if (argc < 2)
		return 2;
	n = atol(argv[1]);
	if (argc > 2) {
		fd = open(argv[2], O_RDWR | O_CREAT, 0600);
		if (fd < 0 || ftruncate(fd, PAGE) < 0)
			return 3;
	}
	/* One reservation, then MAP_FIXED pieces inside it: adjacent, never merged. */
	base = mmap(NULL, n * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED)
		return 4;
	for (long i = 0; i < n; i++) {
		unsigned char *p = base + i * PAGE;
		void *got;
		if (fd >= 0 && i % 2 == 1)
			got = mmap(p, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, 0);
		else
			got = mmap(p, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		if (got == MAP_FAILED)
			return 5;
		*(uint64_t *)p = 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1);
		if (fd < 0 && i % 2 == 1 && mprotect(p, PAGE, PROT_READ) < 0)
			return 6;
	}
	if (fd >= 0)
		close(fd);
	printf("ready %d\n", getpid());
	fflush(stdout);
	while (fgets(line, sizeof line, stdin)) {
		long k;
		unsigned long seed;
		if (sscanf(line, "write %ld %lu", &k, &seed) == 2) {
			/* k writable pages spread evenly over the regions */
			long w = fd >= 0 ? n : (n + 1) / 2;
			for (long j = 0; j < k && j < w; j++) {
				long slot = (j * w) / k;
				long i = fd >= 0 ? slot : slot * 2;
				((uint64_t *)(base + i * PAGE))[1] = seed * 1000003ULL + (uint64_t)i;
			}
			printf("ok\n");
		} else if (strncmp(line, "sum", 3) == 0) {
			uint64_t h = 1469598103934665603ULL;
			for (long i = 0; i < n; i++)
				for (int b = 0; b < 64; b++)
					h = (h ^ base[i * PAGE + b]) * 1099511628211ULL;
			printf("ok %016" PRIx64 "\n", h);
		} else if (sscanf(line, "remap %ld %lu", &k, &seed) == 2) {
			unsigned char *p = base + k * PAGE;
			if (k < 0 || k >= n || munmap(p, PAGE) < 0 ||
			    mmap(p, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != p) {
				printf("err remap\n");
			} else {
				*(uint64_t *)p = 0x9e3779b97f4a7c15ULL * (uint64_t)(k + 1);
				((uint64_t *)p)[1] = seed * 1000003ULL + (uint64_t)k;
				printf("ok\n");
			}
		} else if (strncmp(line, "detach", 6) == 0) {
			int null = open("/dev/null", O_RDWR);
			printf("ok\n");
			fflush(stdout);
			if (null < 0)
				return 7;
			dup2(null, 0);
			dup2(null, 1);
			dup2(null, 2);
			close(null);
			for (;;)
				pause();
		} else if (strncmp(line, "base", 4) == 0) {
			printf("ok %lx\n", (unsigned long)base);
		} else if (strncmp(line, "count", 5) == 0) {
			printf("ok %ld\n", n);
		} else if (strncmp(line, "exit", 4) == 0) {
			return 0;
		} else {
			printf("err %s", line);
		}
		fflush(stdout);
	}
	return 0;
}
