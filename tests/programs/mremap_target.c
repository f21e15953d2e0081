/*
 * mremap_target: a program that grows its mappings by mapping next to them and
 * then mremap()s the pair as one (issue 7, item 7a: checkpointing must not
 * change how the target's mappings merge).
 *
 * Prints "ready PID", then serves one command per line on stdin, answering
 * one line ("ok ..." or "err ..."):
 *
 *   map PAGES           a fresh private anonymous rw mapping, every page
 *                       written -> ok ADDR
 *   grow ADDR PAGES EXTRA
 *                       map EXTRA pages right before [ADDR, ADDR + PAGES)
 *                       (MAP_FIXED_NOREPLACE; where the kernel's top-down
 *                       allocator would put the next mapping anyway), write
 *                       them, then mremap(ADDR - EXTRA pages, PAGES + EXTRA,
 *                       2 * (PAGES + EXTRA), MREMAP_MAYMOVE), which works only
 *                       if the two mappings merged into one VMA -> ok NEWADDR,
 *                       or "err mremap ERRNO-NAME" (both stay mapped: no
 *                       MREMAP_FIXED, so a failure never unmaps anything) or
 *                       "err mmap ERRNO-NAME" (the pages before were taken)
 *   below ADDR EXTRA [nowrite]
 *                       only the first half of grow: map EXTRA pages right
 *                       before ADDR (and write them, unless nowrite) -> ok ADDR
 *   remap ADDR PAGES    only the second half: mremap(ADDR, PAGES, 2 * PAGES,
 *                       MREMAP_MAYMOVE) -> ok NEWADDR / err mremap ERRNO-NAME
 *   check ADDR PAGES    every page still holds its pattern -> ok / err
 *   unmap ADDR PAGES    munmap -> ok
 *   loop N SLEEP_US     N times: map 16 pages, sleep, grow by 16, check,
 *                       unmap; -> ok N FAILED (mremap failures)
 *
 * Every page written holds a marker in its first word; "check" verifies it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL

#define MARKER 0x6d72656d6170ULL    /* "mremap" */

static void write_pages(unsigned char *p, unsigned long n)
{
	for (unsigned long i = 0; i < n; i++)
		*(uint64_t *)(p + i * PAGE) = MARKER;
}

static int check_pages(const unsigned char *p, unsigned long n)
{
	for (unsigned long i = 0; i < n; i++)
		if (*(const uint64_t *)(p + i * PAGE) != MARKER)
			return -1;
	return 0;
}

static void *map_pages(unsigned long pages)
{
	void *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p != MAP_FAILED)
		write_pages(p, pages);
	return p;
}

/*
 * Map EXTRA pages before [addr, addr + pages) and mremap the pair; NULL on
 * failure, with *step naming the call that failed and errno set.
 */
static void *grow(unsigned char *addr, unsigned long pages, unsigned long extra, const char **step)
{
	unsigned char *below = addr - extra * PAGE;
	void *p = mmap(below, extra * PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

	*step = "mmap";
	if (p == MAP_FAILED)
		return NULL;
	write_pages(below, extra);
	*step = "mremap";
	p = mremap(below, (pages + extra) * PAGE, 2 * (pages + extra) * PAGE, MREMAP_MAYMOVE);
	return p == MAP_FAILED ? NULL : p;
}

int main(void)
{
	char line[256];

	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		unsigned long a, n, m;
		const char *step;
		void *p;

		if (sscanf(line, "map %lu", &n) == 1) {
			p = map_pages(n);
			if (p == MAP_FAILED)
				printf("err mmap %s\n", strerrorname_np(errno));
			else
				printf("ok %p\n", p);
		} else if (sscanf(line, "grow %lx %lu %lu", &a, &n, &m) == 3) {
			p = grow((unsigned char *)a, n, m, &step);
			if (!p)
				printf("err %s %s\n", step, strerrorname_np(errno));
			else
				printf("ok %p\n", p);
		} else if (sscanf(line, "below %lx %lu", &a, &n) == 2) {
			p = mmap((unsigned char *)a - n * PAGE, n * PAGE, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			if (p == MAP_FAILED) {
				printf("err mmap %s\n", strerrorname_np(errno));
			} else {
				if (!strstr(line, "nowrite"))
					write_pages(p, n);
				printf("ok %p\n", p);
			}
		} else if (sscanf(line, "remap %lx %lu", &a, &n) == 2) {
			p = mremap((void *)a, n * PAGE, 2 * n * PAGE, MREMAP_MAYMOVE);
			if (p == MAP_FAILED)
				printf("err mremap %s\n", strerrorname_np(errno));
			else
				printf("ok %p\n", p);
		} else if (sscanf(line, "check %lx %lu", &a, &n) == 2) {
			printf(check_pages((unsigned char *)a, n) ? "err pattern\n" : "ok\n");
		} else if (sscanf(line, "unmap %lx %lu", &a, &n) == 2) {
			printf(munmap((void *)a, n * PAGE) ? "err munmap\n" : "ok\n");
		} else if (sscanf(line, "loop %lu %lu", &n, &m) == 2) {
			unsigned long failed = 0;

			for (unsigned long i = 0; i < n; i++) {
				unsigned char *first = map_pages(16);

				if (first == MAP_FAILED)
					break;
				usleep(m);
				p = grow(first, 16, 16, &step);
				if (!p) {
					/* mmap: the pages before were taken (nothing to undo). */
					int moved = !strcmp(step, "mremap");

					failed += moved;
					munmap(first - (moved ? 16 : 0) * PAGE, (moved ? 32 : 16) * PAGE);
					continue;
				}
				if (check_pages(p, 32)) {
					printf("err pattern after mremap\n");
					fflush(stdout);
					return 1;
				}
				munmap(p, 64 * PAGE);
			}
			printf("ok %lu %lu\n", n, failed);
		} else {
			printf("err unknown command\n");
		}
		fflush(stdout);
	}
	return 0;
}
