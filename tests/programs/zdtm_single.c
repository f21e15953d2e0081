/*
 * zdtm_single: a single-threaded restore target in the manner of CRIU's zdtm.
 *
 *   zdtm_single [-p] MAPFILE DATAFILE CWD
 *
 * Sets up, then prints "ready PID" and waits with `while (!go) pause();` until
 * SIGUSR1.  It then checks that every piece of its state is still what it set
 * up (recomputing each pattern), prints "FAIL: what" for each mismatch and
 * exits 1, or prints "PASS" and exits 0.  Run straight through (no checkpoint
 * in between) it must pass; after a restore it passes only if the restore
 * recreated all of it:
 *
 *   - heap: a 1 MiB malloc'd buffer (mmap'd by glibc) and 64 small malloc'd
 *     blocks on the brk heap, each with its own pattern; the program break
 *     (sbrk(0)) is unchanged and malloc/free still work afterwards;
 *   - a 32 KiB array on main's stack;
 *   - 4 MiB of private anonymous memory: 2 MiB written, 1 MiB never touched,
 *     1 MiB only read (zero pages) -- the last 2 MiB must read as zeros;
 *   - MAPFILE (created here, 16 pages of a pattern) mapped MAP_PRIVATE rw, with
 *     pages 1, 5, 6 and 15 written (COW copies), the others still the file's;
 *     and its pages 8..15 mapped a second time read-only at file offset 8 pages;
 *     /proc/self/maps must show both as private mappings of MAPFILE;
 *   - 1 MiB MAP_SHARED|MAP_ANONYMOUS with a pattern; still shared ('s');
 *   - DATAFILE (created here, 20000 bytes) open at fd 10 O_RDWR at offset 12345
 *     and at fd 11 O_RDONLY|O_CLOEXEC at offset 100: same file, same flags,
 *     same offsets, reading the right bytes; no other fd than 0, 1, 2, 10, 11;
 *   - handlers: SIGUSR2 (SA_SIGINFO|SA_RESTART, sa_mask {SIGTERM}; it is also
 *     raised and must run), SIGUSR1, SIGPIPE ignored;
 *   - blocked mask {SIGHUP, SIGRTMIN+3} (and not SIGUSR1/SIGUSR2/SIGTERM);
 *   - with -p: a SIGHUP sent to itself while blocked is still pending;
 *   - umask 027; cwd CWD; a __thread scalar and a __thread array.
 *
 * Debugging the checks themselves: ZDTM_CORRUPT=NAME (read after SIGUSR1)
 * damages one piece of state before the checks, which must then fail.  NAME is
 * one of: heap brkheap stack anon zero filecow fileclean fileoff shared fd
 * fdflags cloexec handler sigign sigmask pending umask cwd tls brk.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGE 4096UL
#define HEAP_LEN (1UL << 20)
#define SMALL_BLOCKS 64
#define SMALL_LEN 1000
#define STACK_WORDS 4096              /* 32 KiB */
#define ANON_LEN (4UL << 20)
#define ANON_WRITTEN (2UL << 20)
#define FILE_PAGES 16
#define FILE_OFF_PAGE 8
#define SHARED_LEN (1UL << 20)
#define DATA_LEN 20000
#define FD_RW 10
#define FD_RO 11
#define RW_OFFSET 12345
#define RO_OFFSET 100
#define TLS_WORDS 64

#define SEED_HEAP 1
#define SEED_STACK 2
#define SEED_ANON 3
#define SEED_FILE 4
#define SEED_COW 50
#define SEED_SHARED 6
#define SEED_DATA 7
#define SEED_TLS 9
#define SEED_SMALL 100

static volatile sig_atomic_t go;
static volatile sig_atomic_t usr2_count;
static __thread uint64_t tls_value;
static __thread uint64_t tls_array[TLS_WORDS];
static int failures;

static const int cow_pages[] = { 1, 5, 6, 15 };

static void on_usr1(int sig)
{
	(void)sig;
	go = 1;
}

static void on_usr2(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	usr2_count++;
}

static void fail(const char *fmt, ...)
{
	va_list ap;

	printf("FAIL: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	failures++;
}

static void die(const char *what)
{
	printf("FAIL: setup: %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(2);
}

/* splitmix64: word i of a pattern with seed s is mix(s, i). */
static uint64_t mix(uint64_t seed, uint64_t index)
{
	uint64_t z = seed * 0x9E3779B97F4A7C15ULL + index + 0x632BE59BD9B4E019ULL;

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* Pattern bytes: byte k of a pattern is byte k%8 of word k/8 (any length, any start). */
static unsigned char pattern_byte(uint64_t seed, uint64_t k)
{
	return (unsigned char)(mix(seed, k / 8) >> (8 * (k % 8)));
}

static void fill(void *p, size_t len, uint64_t seed, uint64_t first_byte)
{
	unsigned char *b = p;
	size_t i;

	for (i = 0; i < len; i++)
		b[i] = pattern_byte(seed, first_byte + i);
}

/* Offset of the first byte that differs from the pattern, or -1. */
static long check(const void *p, size_t len, uint64_t seed, uint64_t first_byte)
{
	const unsigned char *b = p;
	size_t i;

	for (i = 0; i < len; i++)
		if (b[i] != pattern_byte(seed, first_byte + i))
			return (long)i;
	return -1;
}

static void expect_pattern(const char *what, const void *p, size_t len, uint64_t seed,
			   uint64_t first_byte)
{
	long bad = check(p, len, seed, first_byte);

	if (bad >= 0)
		fail("%s: byte %ld of %zu differs from its pattern (at %p)", what, bad, len,
		     (const char *)p + bad);
}

static void expect_zero(const char *what, const unsigned char *p, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (p[i]) {
			fail("%s: byte %zu of %zu is %#x, not zero", what, i, len, p[i]);
			return;
		}
}

static int is_cow_page(int page)
{
	size_t i;

	for (i = 0; i < sizeof(cow_pages) / sizeof(cow_pages[0]); i++)
		if (cow_pages[i] == page)
			return 1;
	return 0;
}

/* The /proc/self/maps line of the mapping containing addr: perms, offset, path. */
static int find_mapping(const void *addr, char perms[5], unsigned long *offset, char *path,
			size_t pathlen)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[PATH_MAX + 256];
	int found = 0;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long start, end, off;
		char p[5];
		int pos = 0;

		if (sscanf(line, "%lx-%lx %4s %lx %*s %*s%n", &start, &end, p, &off, &pos) < 4)
			continue;
		if ((uintptr_t)addr < start || (uintptr_t)addr >= end)
			continue;
		memcpy(perms, p, 5);
		*offset = off;
		while (line[pos] == ' ')
			pos++;
		line[strcspn(line, "\n")] = 0;
		snprintf(path, pathlen, "%s", line + pos);
		found = 1;
		break;
	}
	fclose(f);
	return found ? 0 : -1;
}

struct state {
	const char *mapfile, *datafile, *cwd;
	char mapfile_real[PATH_MAX], datafile_real[PATH_MAX], cwd_real[PATH_MAX];
	unsigned char *heap;
	unsigned char *small[SMALL_BLOCKS];
	void *brk_at_setup;
	unsigned char *anon;
	unsigned char *file;
	unsigned char *file_off;
	unsigned char *shared;
	dev_t data_dev;
	ino_t data_ino;
	int pending;
};

static void setup(struct state *s, uint64_t *stack_buf)
{
	struct sigaction sa;
	sigset_t block;
	int fd, i;
	size_t k;
	unsigned char data[DATA_LEN];
	unsigned char filebuf[FILE_PAGES * PAGE];
	struct stat st;
	volatile unsigned char sink = 0;

	umask(027);

	/* Handlers and mask first: a test may send SIGUSR1 as soon as "ready" is out. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;   /* pause() and nanosleep() return EINTR all the same */
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL))
		die("sigaction SIGUSR1");
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_usr2;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGTERM);
	if (sigaction(SIGUSR2, &sa, NULL))
		die("sigaction SIGUSR2");
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&block);
	sigaddset(&block, SIGHUP);
	sigaddset(&block, SIGRTMIN + 3);
	if (sigprocmask(SIG_BLOCK, &block, NULL))
		die("sigprocmask");
	if (s->pending && kill(getpid(), SIGHUP))
		die("kill SIGHUP");

	/* Heap: one big block (mmap'd by malloc) and small ones on the brk heap. */
	s->heap = malloc(HEAP_LEN);
	if (!s->heap)
		die("malloc heap");
	fill(s->heap, HEAP_LEN, SEED_HEAP, 0);
	for (i = 0; i < SMALL_BLOCKS; i++) {
		s->small[i] = malloc(SMALL_LEN);
		if (!s->small[i])
			die("malloc small");
		fill(s->small[i], SMALL_LEN, SEED_SMALL + i, 0);
	}

	fill(stack_buf, STACK_WORDS * sizeof(uint64_t), SEED_STACK, 0);

	s->anon = mmap(NULL, ANON_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->anon == MAP_FAILED)
		die("mmap anon");
	fill(s->anon, ANON_WRITTEN, SEED_ANON, 0);
	for (k = 3 * (ANON_LEN / 4); k < ANON_LEN; k += PAGE)
		sink += s->anon[k];   /* read faults only: the zero page */

	/* MAPFILE: write the pattern, map it privately, write a few pages (COW). */
	fd = open(s->mapfile, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open MAPFILE");
	fill(filebuf, sizeof(filebuf), SEED_FILE, 0);
	if (write(fd, filebuf, sizeof(filebuf)) != (ssize_t)sizeof(filebuf))
		die("write MAPFILE");
	s->file = mmap(NULL, FILE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (s->file == MAP_FAILED)
		die("mmap MAPFILE");
	s->file_off = mmap(NULL, (FILE_PAGES - FILE_OFF_PAGE) * PAGE, PROT_READ, MAP_PRIVATE, fd,
			   FILE_OFF_PAGE * PAGE);
	if (s->file_off == MAP_FAILED)
		die("mmap MAPFILE at an offset");
	close(fd);
	for (i = 0; i < FILE_PAGES; i++) {
		if (is_cow_page(i))
			fill(s->file + i * PAGE, PAGE, SEED_COW + i, 0);
		else
			sink += s->file[i * PAGE];
	}
	for (i = 0; i < FILE_PAGES - FILE_OFF_PAGE; i++)
		sink += s->file_off[i * PAGE];
	(void)sink;

	s->shared = mmap(NULL, SHARED_LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (s->shared == MAP_FAILED)
		die("mmap shared");
	fill(s->shared, SHARED_LEN, SEED_SHARED, 0);

	/* DATAFILE at fd 10 (rw, offset 12345) and fd 11 (ro, cloexec, offset 100). */
	fd = open(s->datafile, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open DATAFILE");
	fill(data, DATA_LEN, SEED_DATA, 0);
	if (write(fd, data, DATA_LEN) != DATA_LEN)
		die("write DATAFILE");
	if (dup2(fd, FD_RW) != FD_RW)
		die("dup2 fd 10");
	close(fd);
	if (lseek(FD_RW, RW_OFFSET, SEEK_SET) != RW_OFFSET)
		die("lseek fd 10");
	fd = open(s->datafile, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open DATAFILE read-only");
	if (dup3(fd, FD_RO, O_CLOEXEC) != FD_RO)
		die("dup3 fd 11");
	close(fd);
	if (lseek(FD_RO, RO_OFFSET, SEEK_SET) != RO_OFFSET)
		die("lseek fd 11");
	if (fstat(FD_RW, &st))
		die("fstat fd 10");
	s->data_dev = st.st_dev;
	s->data_ino = st.st_ino;
	if (!realpath(s->mapfile, s->mapfile_real) || !realpath(s->datafile, s->datafile_real))
		die("realpath");

	if (chdir(s->cwd))
		die("chdir CWD");
	if (!getcwd(s->cwd_real, sizeof(s->cwd_real)))
		die("getcwd");

	tls_value = mix(8, 0);
	fill(tls_array, sizeof(tls_array), SEED_TLS, 0);
	s->brk_at_setup = sbrk(0);
}

static void corrupt(struct state *s, uint64_t *stack_buf, const char *what)
{
	struct sigaction sa;
	sigset_t set;
	struct timespec zero = { 0, 0 };

	if (!strcmp(what, "heap"))
		s->heap[HEAP_LEN / 2] ^= 1;
	else if (!strcmp(what, "brkheap"))
		s->small[SMALL_BLOCKS - 1][7] ^= 1;
	else if (!strcmp(what, "stack"))
		stack_buf[STACK_WORDS - 1] ^= 1;
	else if (!strcmp(what, "anon"))
		s->anon[ANON_WRITTEN - 1] ^= 1;
	else if (!strcmp(what, "zero"))
		s->anon[ANON_LEN - 1] = 1;
	else if (!strcmp(what, "filecow"))
		s->file[5 * PAGE + 100] ^= 1;
	else if (!strcmp(what, "fileclean"))
		s->file[2 * PAGE + 100] ^= 1;
	else if (!strcmp(what, "fileoff"))
		mprotect(s->file_off, PAGE, PROT_READ | PROT_WRITE);
	else if (!strcmp(what, "shared"))
		s->shared[12345] ^= 1;
	else if (!strcmp(what, "fd"))
		lseek(FD_RW, 1, SEEK_CUR);
	else if (!strcmp(what, "fdflags"))
		fcntl(FD_RW, F_SETFL, O_APPEND);
	else if (!strcmp(what, "cloexec"))
		fcntl(FD_RO, F_SETFD, 0);
	else if (!strcmp(what, "handler")) {
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = SIG_IGN;
		sigaction(SIGUSR2, &sa, NULL);
	} else if (!strcmp(what, "sigign"))
		signal(SIGPIPE, SIG_DFL);
	else if (!strcmp(what, "sigmask")) {
		sigemptyset(&set);
		sigaddset(&set, SIGRTMIN + 3);
		sigprocmask(SIG_UNBLOCK, &set, NULL);
	} else if (!strcmp(what, "pending")) {
		sigemptyset(&set);
		sigaddset(&set, SIGHUP);
		sigtimedwait(&set, NULL, &zero);
	} else if (!strcmp(what, "umask"))
		umask(022);
	else if (!strcmp(what, "cwd")) {
		if (chdir("/"))
			perror("chdir");
	} else if (!strcmp(what, "tls"))
		tls_array[3] ^= 1;
	else if (!strcmp(what, "brk"))
		sbrk(PAGE);
	else
		fail("unknown ZDTM_CORRUPT value %s", what);
}

static void verify_fd(struct state *s, int fd, int accmode, int cloexec, off_t offset)
{
	unsigned char buf[100], expect[100];
	struct stat st;
	int fl, fdfl;
	off_t pos;
	char name[32];

	snprintf(name, sizeof(name), "fd %d", fd);
	fl = fcntl(fd, F_GETFL);
	if (fl < 0) {
		fail("%s: not open (%s)", name, strerror(errno));
		return;
	}
	if ((fl & (O_ACCMODE | O_APPEND)) != accmode)
		fail("%s: F_GETFL is %#o, wanted access mode %#o and no O_APPEND", name, fl, accmode);
	fdfl = fcntl(fd, F_GETFD);
	if (!!(fdfl & FD_CLOEXEC) != cloexec)
		fail("%s: FD_CLOEXEC is %s, wanted %s", name, fdfl & FD_CLOEXEC ? "set" : "clear",
		     cloexec ? "set" : "clear");
	if (fstat(fd, &st))
		fail("%s: fstat: %s", name, strerror(errno));
	else if (st.st_dev != s->data_dev || st.st_ino != s->data_ino)
		fail("%s: not DATAFILE %s any more (inode %lu, wanted %lu)", name, s->datafile_real,
		     (unsigned long)st.st_ino, (unsigned long)s->data_ino);
	pos = lseek(fd, 0, SEEK_CUR);
	if (pos != offset) {
		fail("%s: offset is %lld, wanted %lld", name, (long long)pos, (long long)offset);
		return;
	}
	if (read(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf)) {
		fail("%s: read at %lld: %s", name, (long long)offset, strerror(errno));
		return;
	}
	fill(expect, sizeof(expect), SEED_DATA, offset);
	if (memcmp(buf, expect, sizeof(buf)))
		fail("%s: read at offset %lld did not return DATAFILE's bytes", name, (long long)offset);
	lseek(fd, offset, SEEK_SET);
}

static void verify_fd_table(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	char link[PATH_MAX], target[PATH_MAX];

	if (!d) {
		fail("opendir /proc/self/fd: %s", strerror(errno));
		return;
	}
	while ((e = readdir(d))) {
		int fd;
		ssize_t n;

		if (e->d_name[0] == '.')
			continue;
		fd = atoi(e->d_name);
		if (fd <= 2 || fd == FD_RW || fd == FD_RO || fd == dirfd(d))
			continue;
		snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
		n = readlink(link, target, sizeof(target) - 1);
		target[n > 0 ? n : 0] = 0;
		fail("unexpected fd %d open (%s)", fd, target);
	}
	closedir(d);
}

static void verify_file_mapping(const char *what, struct state *s, const void *addr,
				const char *perms_want, unsigned long offset_want)
{
	char perms[5], path[PATH_MAX];
	unsigned long offset;

	if (find_mapping(addr, perms, &offset, path, sizeof(path))) {
		fail("%s: no mapping at %p in /proc/self/maps", what, addr);
		return;
	}
	if (strcmp(perms, perms_want) || offset != offset_want || strcmp(path, s->mapfile_real))
		fail("%s: /proc/self/maps says %s offset %#lx %s, wanted %s offset %#lx %s", what,
		     perms, offset, path, perms_want, offset_want, s->mapfile_real);
}

static void verify(struct state *s, uint64_t *stack_buf)
{
	struct sigaction sa;
	sigset_t cur, pend;
	char cwd[PATH_MAX], perms[5], path[PATH_MAX], name[64];
	unsigned char filebuf[FILE_PAGES * PAGE];
	unsigned long offset;
	mode_t mask;
	void *p;
	int i, fd;

	/* Memory. */
	expect_pattern("heap buffer", s->heap, HEAP_LEN, SEED_HEAP, 0);
	for (i = 0; i < SMALL_BLOCKS; i++) {
		snprintf(name, sizeof(name), "small heap block %d", i);
		expect_pattern(name, s->small[i], SMALL_LEN, SEED_SMALL + i, 0);
	}
	expect_pattern("stack array", stack_buf, STACK_WORDS * sizeof(uint64_t), SEED_STACK, 0);
	expect_pattern("anonymous mapping (written part)", s->anon, ANON_WRITTEN, SEED_ANON, 0);
	expect_zero("anonymous mapping (never written part)", s->anon + ANON_WRITTEN,
		    ANON_LEN - ANON_WRITTEN);
	for (i = 0; i < FILE_PAGES; i++) {
		snprintf(name, sizeof(name), "MAP_PRIVATE file page %d (%s)", i,
			 is_cow_page(i) ? "written, COW" : "clean");
		if (is_cow_page(i))
			expect_pattern(name, s->file + i * PAGE, PAGE, SEED_COW + i, 0);
		else
			expect_pattern(name, s->file + i * PAGE, PAGE, SEED_FILE, i * PAGE);
	}
	for (i = 0; i < FILE_PAGES - FILE_OFF_PAGE; i++) {
		snprintf(name, sizeof(name), "read-only file mapping at offset, page %d", i);
		expect_pattern(name, s->file_off + i * PAGE, PAGE, SEED_FILE,
			       (FILE_OFF_PAGE + i) * PAGE);
	}
	/* The file itself is unchanged (the COW writes never reached it). */
	fd = open(s->mapfile_real, O_RDONLY);
	if (fd < 0 || pread(fd, filebuf, sizeof(filebuf), 0) != (ssize_t)sizeof(filebuf))
		fail("cannot read MAPFILE %s back: %s", s->mapfile_real, strerror(errno));
	else
		expect_pattern("MAPFILE content on disk", filebuf, sizeof(filebuf), SEED_FILE, 0);
	if (fd >= 0)
		close(fd);
	verify_file_mapping("MAP_PRIVATE file mapping", s, s->file, "rw-p", 0);
	verify_file_mapping("read-only file mapping at offset", s, s->file_off, "r--p",
			    FILE_OFF_PAGE * PAGE);
	expect_pattern("MAP_SHARED|MAP_ANONYMOUS region", s->shared, SHARED_LEN, SEED_SHARED, 0);
	if (find_mapping(s->shared, perms, &offset, path, sizeof(path)))
		fail("shared region: no mapping at %p", (void *)s->shared);
	else if (perms[3] != 's')
		fail("shared region: mapped %s, not shared", perms);
	if (tls_value != mix(8, 0))
		fail("TLS scalar is %#llx, wanted %#llx", (unsigned long long)tls_value,
		     (unsigned long long)mix(8, 0));
	expect_pattern("TLS array", tls_array, sizeof(tls_array), SEED_TLS, 0);

	/* The program break, then malloc still works (brk heap and mmap'd chunks). */
	p = sbrk(0);
	if (p != s->brk_at_setup)
		fail("program break is %p, wanted %p", p, s->brk_at_setup);
	for (i = 0; i < 8; i++) {
		unsigned char *q = malloc(100000);
		unsigned char *big = malloc(8UL << 20);

		if (!q || !big) {
			fail("malloc after restore failed");
			break;
		}
		memset(q, 0xA5, 100000);
		memset(big, 0x5A, 8UL << 20);
		free(big);
		free(q);
	}

	/* File descriptors. */
	verify_fd(s, FD_RW, O_RDWR, 0, RW_OFFSET);
	verify_fd(s, FD_RO, O_RDONLY, 1, RO_OFFSET);
	verify_fd_table();

	/* Signals. */
	if (sigaction(SIGUSR2, NULL, &sa))
		fail("sigaction(SIGUSR2): %s", strerror(errno));
	else {
		if (!(sa.sa_flags & SA_SIGINFO) || sa.sa_sigaction != on_usr2)
			fail("SIGUSR2 handler is %p (flags %#x), wanted %p with SA_SIGINFO",
			     (void *)sa.sa_sigaction, sa.sa_flags, (void *)on_usr2);
		if (!(sa.sa_flags & SA_RESTART))
			fail("SIGUSR2 lost SA_RESTART (flags %#x)", sa.sa_flags);
		if (!sigismember(&sa.sa_mask, SIGTERM) || sigismember(&sa.sa_mask, SIGINT))
			fail("SIGUSR2 sa_mask is wrong (wanted exactly SIGTERM among TERM/INT)");
	}
	if (sigaction(SIGUSR1, NULL, &sa) || sa.sa_handler != on_usr1)
		fail("SIGUSR1 handler is %p, wanted %p", (void *)sa.sa_handler, (void *)on_usr1);
	if (sigaction(SIGPIPE, NULL, &sa) || sa.sa_handler != SIG_IGN)
		fail("SIGPIPE is not ignored any more");
	if (usr2_count != 0)
		fail("SIGUSR2 handler ran %d times before it was raised", (int)usr2_count);
	raise(SIGUSR2);
	if (usr2_count != 1)
		fail("raise(SIGUSR2) ran the handler %d times, wanted once", (int)usr2_count);
	sigprocmask(SIG_BLOCK, NULL, &cur);
	if (!sigismember(&cur, SIGHUP) || !sigismember(&cur, SIGRTMIN + 3))
		fail("blocked mask lost SIGHUP or SIGRTMIN+3 (SIGHUP %d, SIGRTMIN+3 %d)",
		     sigismember(&cur, SIGHUP), sigismember(&cur, SIGRTMIN + 3));
	if (sigismember(&cur, SIGUSR1) || sigismember(&cur, SIGUSR2) || sigismember(&cur, SIGTERM))
		fail("blocked mask gained SIGUSR1, SIGUSR2 or SIGTERM");
	if (s->pending) {
		sigpending(&pend);
		if (!sigismember(&pend, SIGHUP))
			fail("the blocked SIGHUP is no longer pending");
	}

	/* Process attributes. */
	mask = umask(0);
	umask(mask);
	if (mask != 027)
		fail("umask is %03o, wanted 027", (unsigned)mask);
	if (!getcwd(cwd, sizeof(cwd)))
		fail("getcwd: %s", strerror(errno));
	else if (strcmp(cwd, s->cwd_real))
		fail("cwd is %s, wanted %s", cwd, s->cwd_real);
}

int main(int argc, char **argv)
{
	static struct state s;
	uint64_t stack_buf[STACK_WORDS];
	const char *what;
	int argi = 1;

	if (argc > 1 && !strcmp(argv[1], "-p")) {
		s.pending = 1;
		argi++;
	}
	if (argc - argi != 3) {
		fprintf(stderr, "usage: zdtm_single [-p] MAPFILE DATAFILE CWD\n");
		return 2;
	}
	s.mapfile = argv[argi];
	s.datafile = argv[argi + 1];
	s.cwd = argv[argi + 2];
	setup(&s, stack_buf);

	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	while (!go)
		pause();

	what = getenv("ZDTM_CORRUPT");
	if (what)
		corrupt(&s, stack_buf, what);
	verify(&s, stack_buf);
	if (failures)
		return 1;
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
