/*
 * zdtm_memfd: memfds open, mapped and sealed, in the manner of CRIU's zdtm
 * (static/memfd00-03): a target that checks itself.
 *
 *   zdtm_memfd [-H]
 *
 * Sets up (fd: what):
 *   10      memfd A "zdtm-sealed" (MFD_ALLOW_SEALING | MFD_CLOEXEC), 2 MiB + 100
 *           bytes: pages 0-15 written through the fd, page 300 through a
 *           MAP_SHARED mapping of the whole file (a hole between); sealed
 *           F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE (the mapping, made
 *           before, stays writable); offset 12345; its times set to a fixed past
 *           (atime before mtime: a read would move it, relatime)
 *   11      dup(10), without FD_CLOEXEC: one open file with 10
 *   12      A opened again through /proc/self/fd/10, O_RDONLY, offset 7
 *           also a MAP_PRIVATE mapping of A, page 1 written (a private copy)
 *   13      memfd B "zdtm-noexec" (MFD_NOEXEC_SEAL): 5000 bytes, mode 0666, F_SEAL_EXEC
 *   14      memfd D "zdtm-write-sealed": 3 pages, F_SEAL_WRITE, then mapped
 *           MAP_SHARED read-only (after the seal: no VM_MAYWRITE)
 *   15      (-H) memfd E "zdtm-huge", MFD_HUGETLB of 2 MiB pages: one huge page,
 *           mapped MAP_SHARED, its first bytes written
 *           memfd C "zdtm-mapped-only" (no MFD_ALLOW_SEALING): 16 pages mapped
 *           MAP_SHARED and its fd closed; a forked child writes page 3 (only the
 *           object holds it), the process page 0
 * Prints "ready PID" and waits for SIGUSR1; a SIGUSR2 before (sent between two
 * dumps) writes page 7 of A through its shared mapping and prints "poked".  Then
 * checks, printing "FAIL: what"
 * for each mismatch and exiting 1, or "PASS" and exiting 0:
 *   - names (/proc/self/fd links), sizes, modes, seals, FD_CLOEXEC, access
 *     modes and offsets, sharing (lseek on 11 shows on 10, on 12 not);
 *   - A's times are as set (a dump read nothing through the process's files
 *     or without O_NOATIME);
 *   - contents: every data page, zeros elsewhere, A's hole still a hole
 *     (SEEK_DATA from page 16 lands on page 300), the private page, C's page
 *     written by the child;
 *   - page 7 of A, through fd 10, holds what the poke wrote (when it came:
 *     "page 7 written after a dump" is printed);
 *   - one object: the inode of each mapping (/proc/self/maps) is its fd's,
 *     and a write through A's shared mapping reads back through fd 10; the
 *     private mapping does not see it where it has its own copy;
 *   - the seals work: write() to A fails (EPERM), growing and shrinking it
 *     fail, chmod +x of B fails, D's mapping cannot be made writable
 *     (mprotect: EACCES), a write to D fails, C takes no seal.
 * Run straight through it passes; after a restore it passes only if each
 * memfd came back as one object with its content, seals and open files.
 *
 * Debugging the checks: -c (after SIGUSR1) writes a byte into C's mapping
 * before checking, which must then fail.
 */
#include "zdtm_mapped.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif

#define A_SIZE ((2L << 20) + 100)
#define A_MAP ((2L << 20) + PAGE)
#define A_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE)
#define B_SIZE 5000
#define C_PAGES 16
#define D_PAGES 3
#define HUGE (2L << 20)
#define ATIME 1000000000L
#define MTIME 1000000100L

static void check_fd(int fd, int access, int cloexec, long offset)
{
	off_t pos = lseek(fd, 0, SEEK_CUR);

	expect_flags(fd, access);
	expect_cloexec(fd, cloexec);
	if (pos != offset)
		fail("fd %d: offset %ld, expected %ld", fd, (long)pos, offset);
}

static void check_seals(int fd, const char *name, int want)
{
	int seals = fcntl(fd, F_GET_SEALS);

	if (seals != want)
		fail("%s: seals %#x, expected %#x", name, seals, want);
}

static void check_same_object(int fd, void *map, const char *name)
{
	struct stat st;

	if (fstat(fd, &st) || mapped_inode(map) != st.st_ino)
		fail("%s: its mapping (inode %lu) is not the file of fd %d (inode %lu)", name, mapped_inode(map), fd,
		     (unsigned long)st.st_ino);
}

static unsigned char *a_map;
static const struct timespec times[2] = { { ATIME, 0 }, { MTIME, 0 } };

static void write_page_7(void)
{
	fill(a_map + 7 * PAGE, 8, 7, PAGE);
	/* A write fault on a shared mapping moves mtime (mm/memory.c fault_dirty_shared_page). */
	if (futimens(10, times))
		die("futimens A");
}

int main(int argc, char **argv)
{
	static unsigned char buf[PAGE];
	int huge = 0, corrupt = 0;
	unsigned char *a_priv, *c_map, *d_map, *e_map = NULL;
	struct stat st;
	pid_t child;
	int status;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-H"))
			huge = 1;
		else if (!strcmp(argv[i], "-c"))
			corrupt = 1;
	}

	/* A: written through the fd and a shared mapping, a hole between, sealed. */
	at(memfd_create("zdtm-sealed", MFD_ALLOW_SEALING | MFD_CLOEXEC), 10);
	if (ftruncate(10, A_SIZE))
		die("ftruncate A");
	for (long p = 0; p < 16; p++) {
		fill(buf, 1, p, PAGE);
		if (pwrite(10, buf, PAGE, p * PAGE) != PAGE)
			die("pwrite A");
	}
	a_map = mmap(NULL, A_MAP, PROT_READ | PROT_WRITE, MAP_SHARED, 10, 0);
	a_priv = mmap(NULL, A_MAP, PROT_READ | PROT_WRITE, MAP_PRIVATE, 10, 0);
	if (a_map == MAP_FAILED || a_priv == MAP_FAILED)
		die("mmap A");
	fill(a_map + 300 * PAGE, 1, 300, PAGE);
	memset(a_priv + PAGE, 0xA5, PAGE);              /* a private copy of page 1 */
	if (fcntl(10, F_ADD_SEALS, A_SEALS))
		die("F_ADD_SEALS A");
	if (dup2(10, 11) != 11 || lseek(10, 12345, SEEK_SET) != 12345)
		die("dup2 A");
	at(open("/proc/self/fd/10", O_RDONLY | O_CLOEXEC), 12);
	if (lseek(12, 7, SEEK_SET) != 7 || futimens(10, times))
		die("A: offset, times");

	/* B: not executable, sealed so. */
	at(memfd_create("zdtm-noexec", MFD_NOEXEC_SEAL | MFD_CLOEXEC), 13);
	for (long i = 0; i < B_SIZE; i++)
		buf[i % PAGE] = pattern(2, 0, i % PAGE);
	if (write(13, buf, PAGE) != PAGE || write(13, buf, B_SIZE - PAGE) != B_SIZE - PAGE)
		die("write B");

	/* D: sealed against writes, then mapped read-only. */
	at(memfd_create("zdtm-write-sealed", MFD_ALLOW_SEALING | MFD_CLOEXEC), 14);
	for (long p = 0; p < D_PAGES; p++) {
		fill(buf, 4, p, PAGE);
		if (write(14, buf, PAGE) != PAGE)
			die("write D");
	}
	if (fcntl(14, F_ADD_SEALS, F_SEAL_WRITE))
		die("F_ADD_SEALS D");
	d_map = mmap(NULL, D_PAGES * PAGE, PROT_READ, MAP_SHARED, 14, 0);
	if (d_map == MAP_FAILED)
		die("mmap D");

	/* E: hugetlbfs. */
	if (huge) {
		at(memfd_create("zdtm-huge", MFD_HUGETLB | MFD_HUGE_2MB | MFD_CLOEXEC), 15);
		if (ftruncate(15, HUGE))
			die("ftruncate E");
		e_map = mmap(NULL, HUGE, PROT_READ | PROT_WRITE, MAP_SHARED, 15, 0);
		if (e_map == MAP_FAILED)
			die("mmap E (no huge pages reserved?)");
		fill(e_map, 5, 0, PAGE);
	}

	/* C: mapped only; a child writes page 3, which only the object holds then. */
	{
		int fd = memfd_create("zdtm-mapped-only", MFD_CLOEXEC);

		if (fd < 0 || ftruncate(fd, C_PAGES * PAGE))
			die("memfd C");
		c_map = mmap(NULL, C_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (c_map == MAP_FAILED)
			die("mmap C");
		close(fd);
	}
	fill(c_map, 3, 0, PAGE);
	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		fill(c_map + 3 * PAGE, 3, 3, PAGE);
		_exit(0);
	}
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
		die("the child writing C");

	ready_then_wait_poked(write_page_7);
	if (corrupt)
		c_map[3 * PAGE + 17] ^= 1;

	/* The open files. */
	expect_link(10, "/memfd:zdtm-sealed (deleted)");
	expect_link(11, "/memfd:zdtm-sealed (deleted)");
	expect_link(12, "/memfd:zdtm-sealed (deleted)");
	expect_link(13, "/memfd:zdtm-noexec (deleted)");
	expect_link(14, "/memfd:zdtm-write-sealed (deleted)");
	check_fd(10, O_RDWR, 1, 12345);
	check_fd(11, O_RDWR, 0, 12345);
	check_fd(12, O_RDONLY, 1, 7);
	check_fd(13, O_RDWR, 1, B_SIZE);
	check_fd(14, O_RDWR, 1, D_PAGES * PAGE);
	if (lseek(11, 999, SEEK_SET) != 999 || lseek(10, 0, SEEK_CUR) != 999)
		fail("fds 10 and 11 no longer share an open file");
	if (lseek(12, 5, SEEK_SET) != 5 || lseek(10, 0, SEEK_CUR) != 999)
		fail("fd 12 shares fd 10's open file");

	/* A: attributes, content, the hole, one object. */
	if (fstat(10, &st))
		die("fstat A");
	if (st.st_size != A_SIZE || (st.st_mode & 07777) != 0777 || st.st_nlink)
		fail("A: size %ld mode %o links %ld", (long)st.st_size, st.st_mode & 07777, (long)st.st_nlink);
	if (st.st_atim.tv_sec != ATIME || st.st_mtim.tv_sec != MTIME)
		fail("A: atime %ld mtime %ld, expected %ld %ld", (long)st.st_atim.tv_sec, (long)st.st_mtim.tv_sec,
		     ATIME, MTIME);
	check_seals(10, "A", A_SEALS);
	/* Before any read through the shared mapping: one of a hole allocates a page. */
	if (lseek(12, 16 * PAGE, SEEK_DATA) != 300 * PAGE)
		fail("A: SEEK_DATA from page 16 gives %ld, not page 300", (long)lseek(12, 16 * PAGE, SEEK_DATA));
	if (pread(10, buf, PAGE, 7 * PAGE) != PAGE || !page_is(buf, poke ? 8 : 1, 7, PAGE))
		fail("A: page 7 through fd 10 is not what was written %s", poke ? "through its mapping" : "");
	else if (poke)
		printf("page 7 written after a dump\n");
	for (long p = 0; p < A_MAP / PAGE; p++) {
		int data = p < 16 || p == 300;

		if (pread(10, buf, PAGE, p * PAGE) != (p * PAGE + PAGE <= A_SIZE ? PAGE : A_SIZE - p * PAGE))
			fail("A: pread of page %ld", p);
		else if (data ? !page_is(a_map + p * PAGE, poke && p == 7 ? 8 : 1, p, PAGE) :
			 !zeros(a_map + p * PAGE, PAGE))
			fail("A: page %ld differs", p);
	}
	if (a_priv[PAGE] != 0xA5 || a_priv[2 * PAGE - 1] != 0xA5 || !page_is(a_priv, 1, 0, PAGE) ||
	    !page_is(a_priv + 2 * PAGE, 1, 2, PAGE))
		fail("A: the private mapping differs");
	check_same_object(10, a_map, "A");
	check_same_object(10, a_priv, "A (private)");
	fill(buf, 9, 5, PAGE);
	memcpy(a_map + 5 * PAGE, buf, PAGE);           /* through the mapping, read through the fd */
	{
		unsigned char back[PAGE];

		if (pread(10, back, PAGE, 5 * PAGE) != PAGE || memcmp(back, buf, PAGE))
			fail("A: a write through its mapping does not show through fd 10");
		if (pread(11, back, PAGE, 5 * PAGE) != PAGE || memcmp(back, buf, PAGE) ||
		    !page_is(a_priv + 5 * PAGE, 9, 5, PAGE))
			fail("A: a write through its mapping does not show through fd 11 or the private mapping");
	}
	memset(a_map + PAGE, 0x11, 16);
	if (a_priv[PAGE] != 0xA5)
		fail("A: the private copy of page 1 follows the shared mapping");
	/* The seals work. */
	if (write(10, "x", 1) != -1 || errno != EPERM)
		fail("A: write() through the fd is not refused by F_SEAL_FUTURE_WRITE");
	if (ftruncate(10, A_SIZE + PAGE) != -1 || errno != EPERM)
		fail("A: it grows despite F_SEAL_GROW");
	if (ftruncate(10, PAGE) != -1 || errno != EPERM)
		fail("A: it shrinks despite F_SEAL_SHRINK");

	/* B */
	if (fstat(13, &st) || st.st_size != B_SIZE || (st.st_mode & 07777) != 0666)
		fail("B: size %ld mode %o", (long)st.st_size, st.st_mode & 07777);
	check_seals(13, "B", F_SEAL_EXEC);
	if (fchmod(13, 0777) != -1 || errno != EPERM)
		fail("B: chmod +x is not refused by F_SEAL_EXEC");
	if (pread(13, buf, PAGE, 0) != PAGE)
		fail("B: pread");
	for (long i = 0; i < PAGE; i++)
		if (buf[i] != pattern(2, 0, i)) {
			fail("B: byte %ld differs", i);
			break;
		}

	/* C */
	for (long p = 0; p < C_PAGES; p++)
		if (p == 0 || p == 3 ? !page_is(c_map + p * PAGE, 3, p, PAGE) : !zeros(c_map + p * PAGE, PAGE))
			fail("C: page %ld differs", p);

	/* D */
	check_seals(14, "D", F_SEAL_WRITE);
	check_same_object(14, d_map, "D");
	for (long p = 0; p < D_PAGES; p++)
		if (!page_is(d_map + p * PAGE, 4, p, PAGE))
			fail("D: page %ld differs", p);
	if (mprotect(d_map, PAGE, PROT_READ | PROT_WRITE) != -1 || errno != EACCES)
		fail("D: its read-only mapping can be made writable");
	if (pwrite(14, "x", 1, 0) != -1 || errno != EPERM)
		fail("D: a write is not refused by F_SEAL_WRITE");

	/* E */
	if (huge) {
		expect_link(15, "/memfd:zdtm-huge (deleted)");
		if (fstat(15, &st) || st.st_size != HUGE || st.st_blksize != HUGE)
			fail("E: size %ld, block size %ld", (long)st.st_size, (long)st.st_blksize);
		if (!page_is(e_map, 5, 0, PAGE) || !zeros(e_map + PAGE, PAGE))
			fail("E: its content differs");
		check_same_object(15, e_map, "E");
	}

	return finish();
}
