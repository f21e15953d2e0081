/*
 * zdtm_shmem: shared memory written by another process, in the manner of
 * CRIU's zdtm (a target that checks itself after the restore).
 *
 *   zdtm_shmem [-c] [-n]
 *
 * Sets up three shared regions of 16 MiB (4096 pages) each:
 *
 *   - anon:  mmap(MAP_SHARED | MAP_ANONYMOUS)
 *   - memfd: memfd_create() + ftruncate() + mmap(MAP_SHARED); the fd is closed
 *   - sysv:  shmget(IPC_PRIVATE) + shmat(), marked IPC_RMID at once
 *
 * The process itself writes page 0 of each; a forked child writes 4,000 other
 * pages of each (pages 1 + (i * 1031) mod 4095 for i < 4000, all distinct) and
 * exits; the parent reaps it.  So the parent's own page tables map one page of
 * each region, and the other 4,000 exist only in the shared objects.  Then it
 * prints "ready PID" and waits with `while (!go) pause();` until SIGUSR1, and
 * checks that every page of every region holds its pattern (written pages) or
 * zeros (the others): "FAIL: what" per region that differs (exit 1) or "PASS"
 * (exit 0).  Run straight through it passes; after a restore it passes only if
 * the restore brought back the pages the child wrote.
 *
 * -c damages one page written by the child in each region (zeroes it) after
 * SIGUSR1, before the checks, which must then fail.
 *
 * -n leaves the SysV region out: ckpt refuses a SysV segment by name (it would
 * come back as shared memory of the process alone, no longer a segment), so a
 * target that is to be restored has only the other two.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096UL
#define PAGES 4096UL
#define LEN (PAGES * PAGE)
#define CHILD_PAGES 4000UL
#define STRIDE 1031UL            /* prime, coprime with 4095: i -> 1 + i*STRIDE mod 4095 is 1:1 */
#define REGIONS 3

static const char *const names[REGIONS] = { "anon", "memfd", "sysv" };
static volatile sig_atomic_t go;

static void on_usr1(int sig)
{
	(void)sig;
	go = 1;
}

static void die(const char *what)
{
	printf("FAIL: setup: %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(2);
}

/* splitmix64: word w of page p of region r holds mix(r * 65536 + p, w). */
static uint64_t mix(uint64_t seed, uint64_t index)
{
	uint64_t z = seed * 0x9E3779B97F4A7C15ULL + index + 0x632BE59BD9B4E019ULL;

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static void fill_page(unsigned char *base, int region, unsigned long page)
{
	uint64_t *w = (uint64_t *)(base + page * PAGE);

	for (unsigned long i = 0; i < PAGE / 8; i++)
		w[i] = mix((uint64_t)region * 65536 + page, i);
}

static unsigned long child_page(unsigned long i)
{
	return 1 + (i * STRIDE) % (PAGES - 1);
}

static unsigned char *map_region(int region)
{
	void *p;

	if (region == 0) {
		p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	} else if (region == 1) {
		int fd = memfd_create("zdtm_shmem", MFD_CLOEXEC);

		if (fd < 0)
			die("memfd_create");
		if (ftruncate(fd, LEN) < 0)
			die("ftruncate");
		p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		close(fd);
	} else {
		int id = shmget(IPC_PRIVATE, LEN, IPC_CREAT | 0600);

		if (id < 0)
			die("shmget");
		p = shmat(id, NULL, 0);
		if (p == (void *)-1)
			die("shmat");
		/* Freed when the last process detaches: nothing is left behind. */
		shmctl(id, IPC_RMID, NULL);
		return p;
	}
	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

/* Number of pages of region r that differ from what they should hold. */
static unsigned long check_region(unsigned char *base, int region, unsigned long *first)
{
	static unsigned char written[PAGES];
	static unsigned char expected[PAGE];
	unsigned long bad = 0;

	memset(written, 0, sizeof(written));
	written[0] = 1;
	for (unsigned long i = 0; i < CHILD_PAGES; i++)
		written[child_page(i)] = 1;
	for (unsigned long p = 0; p < PAGES; p++) {
		if (written[p]) {
			uint64_t *w = (uint64_t *)expected;

			for (unsigned long i = 0; i < PAGE / 8; i++)
				w[i] = mix((uint64_t)region * 65536 + p, i);
		} else {
			memset(expected, 0, PAGE);
		}
		if (memcmp(base + p * PAGE, expected, PAGE)) {
			if (!bad)
				*first = p;
			bad++;
		}
	}
	return bad;
}

int main(int argc, char **argv)
{
	unsigned char *region[REGIONS];
	int corrupt = 0, regions = REGIONS;
	int failures = 0;
	pid_t child;
	int status;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-c"))
			corrupt = 1;
		else if (!strcmp(argv[i], "-n"))
			regions = REGIONS - 1;   /* the SysV region is the last */
	}
	signal(SIGUSR1, on_usr1);
	for (int r = 0; r < regions; r++) {
		region[r] = map_region(r);
		fill_page(region[r], r, 0);
	}
	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		for (int r = 0; r < regions; r++)
			for (unsigned long i = 0; i < CHILD_PAGES; i++)
				fill_page(region[r], r, child_page(i));
		_exit(0);
	}
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
		die("the child writing the shared regions");

	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	while (!go)
		pause();

	if (corrupt)
		for (int r = 0; r < regions; r++)
			memset(region[r] + child_page(17) * PAGE, 0, PAGE);
	for (int r = 0; r < regions; r++) {
		unsigned long first = 0;
		unsigned long bad = check_region(region[r], r, &first);

		if (bad) {
			printf("FAIL: %s: %lu of %lu pages differ, the first is page %lu\n", names[r], bad,
			       PAGES, first);
			failures++;
		}
	}
	fflush(stdout);
	if (failures)
		return 1;
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
