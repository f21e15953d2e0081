/*
 * mm_state: address-space state besides memory content, checked by the process
 * itself (a zdtm-style target; CRIU's zdtm maps02 covers the madvise part).
 *
 *   mm_state flags|future|futureonfault|novdso|vdsoonly|membarrier
 *
 *   flags          one small anonymous region per VmFlags bit a process can set
 *                  with madvise/mlock/mseal/mmap (rr sr dc dd wf hg nh mg lo
 *                  lo+lf gu sl dp), each filled with its own pattern, kept apart
 *                  by PROT_NONE pages so that none merges with another; the
 *                  guard region holds two guard pages (MADV_GUARD_INSTALL) and
 *                  one more region had a guard installed and removed again (the
 *                  "gu" flag stays); the mlock2(MLOCK_ONFAULT) region has one
 *                  page of four faulted in
 *   future         mlockall(MCL_CURRENT | MCL_FUTURE)
 *   futureonfault  mlockall(MCL_FUTURE | MCL_ONFAULT)
 *   novdso         munmap of [vdso], [vvar] and [vvar_vclock]
 *   vdsoonly       munmap of [vdso] alone
 *   membarrier     membarrier REGISTER_PRIVATE_EXPEDITED, REGISTER_GLOBAL_EXPEDITED
 *                  and REGISTER_PRIVATE_EXPEDITED_RSEQ
 *
 * The checks read /proc/self/smaps (VmFlags, Locked), /proc/self/pagemap (bit
 * 58: a guard page), /proc/self/maps, the regions' bytes, and ask the kernel
 * (mprotect of a sealed region fails with EPERM; a new mapping is locked under
 * MCL_FUTURE; membarrier GET_REGISTRATIONS and PRIVATE_EXPEDITED).  After the
 * vDSO is gone nothing here calls a vDSO function (clock_gettime and friends).
 *
 * Prints "ready PID", then answers commands on stdin, one per line:
 *   check  -> "ok", or "err what"
 * At EOF on stdin (a restored copy gets ckpt's /dev/null) it waits for
 * SIGUSR1, then checks and prints "PASS" (exit 0) or "FAIL: what" (exit 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/membarrier.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif
#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif
#ifndef MCL_ONFAULT
#define MCL_ONFAULT 4
#endif
#define NR_MSEAL 462
#define GET_REGISTRATIONS (1 << 9)
#define PAGE 4096UL
#define PAGES 4
#define PM_GUARD_REGION (1ULL << 58)

/* The flags the checks care about; any other VmFlags letter is ignored. */
static const char *const WATCHED[] = { "rr", "sr", "dc", "dd", "wf", "hg", "nh", "mg",
				       "lo", "lf", "gu", "sl", "dp", NULL };

struct region {
	const char *name;
	const char *flags;      /* space-separated: exactly these of WATCHED */
	char *addr;
	unsigned long pages;
	int seed;               /* content pattern; -1: do not check the content */
};

static struct region regions[] = {
	{ "random", "rr", 0, PAGES, 1 },
	{ "sequential", "sr", 0, PAGES, 2 },
	{ "dontfork", "dc", 0, PAGES, 3 },
	{ "dontdump", "dd", 0, PAGES, 4 },
	{ "wipeonfork", "wf", 0, PAGES, 5 },
	{ "hugepage", "hg", 0, PAGES, 6 },
	{ "nohugepage", "nh", 0, PAGES, 7 },
	{ "mergeable", "mg", 0, PAGES, 8 },
	{ "mlock", "lo", 0, PAGES, 9 },
	{ "mlock2-onfault", "lo lf", 0, PAGES, -1 },
	{ "guard", "gu", 0, 8, 11 },
	{ "guard-removed", "gu", 0, PAGES, 12 },
	{ "sealed", "sl", 0, PAGES, 13 },
	{ "droppable", "wf dd dp", 0, PAGES, -1 },   /* MAP_DROPPABLE implies wf and dd */
	{ NULL, NULL, 0, 0, 0 },
};

static const char *mode;
static volatile sig_atomic_t go;
static char failure[512];
static int expected_registrations;

static void on_usr1(int sig)
{
	(void)sig;
	go = 1;
}

static int fail(const char *fmt, ...)
{
	va_list ap;

	if (!failure[0]) {
		va_start(ap, fmt);
		vsnprintf(failure, sizeof(failure), fmt, ap);
		va_end(ap);
	}
	return -1;
}

static unsigned char pattern(int seed, unsigned long i)
{
	return (unsigned char)(seed * 37 + i * 13 + i / PAGE);
}

/* The VmFlags line and Locked (kB) of the VMA holding ``addr``; -1 when there is none. */
static int smaps_of(void *addr, char *flags, size_t size, long *locked)
{
	char line[512];
	unsigned long start, end;
	int inside = 0, found = -1;
	FILE *f = fopen("/proc/self/smaps", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			inside = start <= (unsigned long)addr && (unsigned long)addr < end;
		} else if (inside && !strncmp(line, "Locked:", 7)) {
			*locked = atol(line + 7);
		} else if (inside && !strncmp(line, "VmFlags:", 8)) {
			snprintf(flags, size, "%s", line + 8);
			found = 0;
		}
	}
	fclose(f);
	return found;
}

static int has_flag(const char *flags, const char *flag)
{
	char padded[8];

	snprintf(padded, sizeof(padded), " %s ", flag);
	return strstr(flags, padded) != NULL;
}

static int check_flags(const char *what, void *addr, const char *wanted)
{
	char flags[512], padded_wanted[64];
	long locked = 0;
	int i;

	if (smaps_of(addr, flags + 1, sizeof(flags) - 2, &locked))
		return fail("%s: no VMA at its address %p", what, addr);
	flags[0] = ' ';
	flags[strcspn(flags, "\n")] = ' ';
	snprintf(padded_wanted, sizeof(padded_wanted), " %s ", wanted);
	for (i = 0; WATCHED[i]; i++)
		if (has_flag(flags, WATCHED[i]) != has_flag(padded_wanted, WATCHED[i]))
			return fail("%s: VmFlags %s %s \"%s\" (wanted: %s)", what,
				    has_flag(flags, WATCHED[i]) ? "have" : "lack", WATCHED[i], flags, wanted);
	return 0;
}

static long locked_kb(void *addr)
{
	char flags[512];
	long locked = -1;

	smaps_of(addr, flags, sizeof(flags), &locked);
	return locked;
}

static uint64_t pagemap(void *addr)
{
	uint64_t entry = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd >= 0) {
		if (pread(fd, &entry, 8, (off_t)((uintptr_t)addr / PAGE * 8)) != 8)
			entry = 0;
		close(fd);
	}
	return entry;
}

static int setup_flags(void)
{
	static const int advice[] = { MADV_RANDOM, MADV_SEQUENTIAL, MADV_DONTFORK, MADV_DONTDUMP,
				      MADV_WIPEONFORK, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_MERGEABLE };
	unsigned long total = 0, i;
	struct region *r;
	char *base, *at;

	for (r = regions; r->name; r++)
		total += r->pages + 1;
	base = mmap(NULL, (total + 1) * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED)
		return fail("reservation: mmap: %s", strerror(errno));
	at = base + PAGE;
	for (r = regions; r->name; r++, at += (r - 1)->pages * PAGE + PAGE) {
		int flags = MAP_FIXED | MAP_ANONYMOUS | (strcmp(r->name, "droppable") ? MAP_PRIVATE : MAP_DROPPABLE);

		r->addr = mmap(at, r->pages * PAGE, PROT_READ | PROT_WRITE, flags, -1, 0);
		if (r->addr != at)
			return fail("%s: mmap: %s", r->name, strerror(errno));
		if (r - regions < 8 && madvise(r->addr, r->pages * PAGE, advice[r - regions]))
			return fail("%s: madvise: %s", r->name, strerror(errno));
		if (r->seed >= 0)
			for (i = 0; i < r->pages * PAGE; i++)
				r->addr[i] = pattern(r->seed, i);
		if (!strcmp(r->name, "mlock") && mlock(r->addr, r->pages * PAGE))
			return fail("%s: mlock: %s", r->name, strerror(errno));
		if (!strcmp(r->name, "mlock2-onfault")) {
			if (syscall(SYS_mlock2, r->addr, r->pages * PAGE, MLOCK_ONFAULT))
				return fail("%s: mlock2: %s", r->name, strerror(errno));
			r->addr[PAGE + 5] = 42;   /* one page of four faulted in */
		}
		if (!strcmp(r->name, "guard") && madvise(r->addr + 2 * PAGE, 2 * PAGE, MADV_GUARD_INSTALL))
			return fail("%s: MADV_GUARD_INSTALL: %s", r->name, strerror(errno));
		if (!strcmp(r->name, "guard-removed") &&
		    (madvise(r->addr, PAGE, MADV_GUARD_INSTALL) || madvise(r->addr, PAGE, MADV_GUARD_REMOVE)))
			return fail("%s: MADV_GUARD_INSTALL/REMOVE: %s", r->name, strerror(errno));
		if (!strcmp(r->name, "sealed") && syscall(NR_MSEAL, r->addr, r->pages * PAGE, 0))
			return fail("%s: mseal: %s", r->name, strerror(errno));
	}
	/* The one page of guard-removed that was zapped: its pattern again, whole. */
	for (i = 0; i < PAGE; i++)
		regions[11].addr[i] = pattern(regions[11].seed, i);
	return 0;
}

static int check_region_content(struct region *r)
{
	unsigned long i;

	for (i = 0; i < r->pages * PAGE; i++) {
		if (!strcmp(r->name, "guard") && i >= 2 * PAGE && i < 4 * PAGE)
			continue;
		if (r->addr[i] != (char)pattern(r->seed, i))
			return fail("%s: byte %lu differs", r->name, i);
	}
	return 0;
}

static int check_flags_mode(void)
{
	struct region *r;
	unsigned long i;

	for (r = regions; r->name; r++) {
		if (check_flags(r->name, r->addr, r->flags))
			return -1;
		if (r->seed >= 0 && check_region_content(r))
			return -1;
	}
	if (locked_kb(regions[8].addr) != (long)(PAGES * PAGE / 1024))
		return fail("mlock: Locked: %ld kB, expected all of it", locked_kb(regions[8].addr));
	if (locked_kb(regions[9].addr) != (long)(PAGE / 1024) || regions[9].addr[PAGE + 5] != 42)
		return fail("mlock2-onfault: Locked: %ld kB, expected the one page faulted in",
			    locked_kb(regions[9].addr));
	for (i = 0; i < regions[10].pages; i++) {
		int guard = !!(pagemap(regions[10].addr + i * PAGE) & PM_GUARD_REGION);

		if (guard != (i == 2 || i == 3))
			return fail("guard: page %lu is %sa guard page", i, guard ? "" : "not ");
	}
	for (i = 0; i < regions[11].pages; i++)
		if (pagemap(regions[11].addr + i * PAGE) & PM_GUARD_REGION)
			return fail("guard-removed: page %lu is a guard page", i);
	if (mprotect(regions[12].addr, regions[12].pages * PAGE, PROT_READ | PROT_WRITE) != -1 || errno != EPERM)
		return fail("sealed: mprotect did not fail with EPERM (%s): not sealed", strerror(errno));
	return 0;
}

static int check_future(int onfault)
{
	char *probe = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int rc;

	if (probe == MAP_FAILED)
		return fail("probe mapping: %s", strerror(errno));
	rc = check_flags("a new mapping", probe, onfault ? "lo lf" : "lo");
	munmap(probe, PAGE);
	if (rc)
		return rc;
	/* MCL_CURRENT locked the stack; under MCL_ONFAULT alone it is not locked. */
	return check_flags("the data of this program", regions, onfault ? "" : "lo");
}

static int check_vdso(int all)
{
	char line[512];
	int vdso = 0, vvar = 0;
	FILE *f = fopen("/proc/self/maps", "r");

	if (!f)
		return fail("/proc/self/maps: %s", strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		vdso |= strstr(line, "[vdso]") != NULL;
		vvar |= strstr(line, "[vvar") != NULL;
	}
	fclose(f);
	if (vdso)
		return fail("[vdso] is mapped again");
	if (vvar == all)
		return fail("[vvar] %s", all ? "is mapped again" : "is gone");
	return 0;
}

static int check_membarrier(void)
{
	long got = syscall(SYS_membarrier, GET_REGISTRATIONS, 0, 0);

	if (got != expected_registrations)
		return fail("membarrier: GET_REGISTRATIONS gave %#lx, expected %#x", got, expected_registrations);
	if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0))
		return fail("membarrier: PRIVATE_EXPEDITED failed: %s", strerror(errno));
	return 0;
}

static int unmap_vdso(int all)
{
	char line[512], *names[8];
	unsigned long starts[8], ends[8];
	int n = 0, i;
	FILE *f = fopen("/proc/self/maps", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f) && n < 8) {
		if (!strstr(line, "[vdso]") && !(all && strstr(line, "[vvar")))
			continue;
		sscanf(line, "%lx-%lx", &starts[n], &ends[n]);
		names[n++] = strstr(line, "[");
	}
	fclose(f);
	for (i = 0; i < n; i++)
		if (munmap((void *)starts[i], ends[i] - starts[i]))
			return fail("munmap %s: %s", names[i], strerror(errno));
	return n ? 0 : fail("no [vdso] to unmap");
}

static int setup(void)
{
	if (!strcmp(mode, "flags"))
		return setup_flags();
	regions[0].addr = (char *)&regions;   /* the program's data, for check_future */
	if (!strcmp(mode, "future"))
		return mlockall(MCL_CURRENT | MCL_FUTURE) ? fail("mlockall: %s", strerror(errno)) : 0;
	if (!strcmp(mode, "futureonfault"))
		return mlockall(MCL_FUTURE | MCL_ONFAULT) ? fail("mlockall: %s", strerror(errno)) : 0;
	if (!strcmp(mode, "novdso") || !strcmp(mode, "vdsoonly"))
		return unmap_vdso(!strcmp(mode, "novdso"));
	if (!strcmp(mode, "membarrier")) {
		static const int cmds[] = { MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
					    MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED,
					    MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ };
		int i;

		for (i = 0; i < 3; i++) {
			if (syscall(SYS_membarrier, cmds[i], 0, 0))
				return fail("membarrier register %#x: %s", cmds[i], strerror(errno));
			expected_registrations |= cmds[i];
		}
		return 0;
	}
	return fail("unknown mode %s", mode);
}

static int check(void)
{
	failure[0] = '\0';
	if (!strcmp(mode, "flags"))
		return check_flags_mode();
	if (!strcmp(mode, "future") || !strcmp(mode, "futureonfault"))
		return check_future(!strcmp(mode, "futureonfault"));
	if (!strcmp(mode, "novdso") || !strcmp(mode, "vdsoonly"))
		return check_vdso(!strcmp(mode, "novdso"));
	return check_membarrier();
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	char line[64];

	if (argc != 2) {
		fprintf(stderr, "usage: mm_state flags|future|futureonfault|novdso|vdsoonly|membarrier\n");
		return 2;
	}
	mode = argv[1];
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	if (setup() || check()) {
		fprintf(stderr, "setup: %s\n", failure);
		return 2;
	}
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		if (!strcmp(line, "check\n"))
			printf(check() ? "err %s\n" : "ok\n", failure);
		else
			printf("err unknown command\n");
		fflush(stdout);
	}
	while (!go)
		pause();
	if (check()) {
		printf("FAIL: %s\n", failure);
		fflush(stdout);
		return 1;
	}
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
