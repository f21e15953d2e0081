/*
 * zdtm_ghost: files deleted while open and mapped, in the manner of CRIU's zdtm
 * (static/unlink_fstat00-03, unlink_mmap00-02): a target that checks itself.
 *
 *   zdtm_ghost DIR [-b] [-n]
 *
 * Sets up, in DIR (fd: what):
 *   10      DIR/g1 (mode 0640): pages 0-2 written, page 40 and 123 bytes after it
 *           (a hole between), mapped MAP_SHARED, unlinked; O_RDWR, offset 4321;
 *           its times set to a fixed past (atime before mtime: a read would move it)
 *   11      DIR/g1 opened again before the unlink, O_RDONLY | O_APPEND, offset 99
 *           DIR/g2 (not with -n): 2 pages, mapped MAP_PRIVATE, page 0 written (a
 *           private copy), its fd closed, unlinked -- a dump without
 *           CAP_CHECKPOINT_RESTORE cannot read it (no fd, no /proc/PID/map_files)
 *   12      (-b) DIR/big: 2 MiB of data, unlinked: more than ckpt keeps by
 *           default (dump --ghost-limit)
 * Prints "ready PID" and waits for SIGUSR1; a SIGUSR2 before (sent between two dumps)
 * writes page 2 of g1 through its mapping (and sets its times again) and prints
 * "poked".  Then checks, printing "FAIL: what"
 * for each mismatch and exiting 1, or "PASS" and exiting 0:
 *   - fds 10 and 11 are "DIR/g1 (deleted)", st_nlink 0, mode 0640, the size,
 *     access modes, O_APPEND, offsets; they are two open files;
 *   - g1's times are as set (a dump read nothing through the process's files,
 *     nor without O_NOATIME);
 *   - contents: g1's pages through fd 10 and the mapping, zeros elsewhere, the
 *     hole still a hole (SEEK_DATA from page 3 lands on page 40); g2's private
 *     page and its file page;
 *   - page 2 of g1, through fd 10, holds what the poke wrote (when it came:
 *     "page 2 written after a dump" is printed);
 *   - one object: the inode of each mapping (/proc/self/maps) is g1's (fd 10),
 *     and a write through g1's mapping reads back through fds 10 and 11;
 *   - DIR holds no g1 nor g2 (a restore made them and unlinked them).
 * Run straight through it passes; after a restore it passes only if each
 * deleted file came back as one unlinked file with its content and open files.
 *
 * Debugging the checks: -c (after SIGUSR1) writes a byte into g1 through its
 * mapping before checking, which must then fail.
 */
#include "zdtm_mapped.h"

#include <sys/mman.h>
#include <sys/stat.h>

#define G1_SIZE (40 * PAGE + 123)
#define G1_MAP (41 * PAGE)
#define ATIME 1000000000L
#define MTIME 1000000100L
#define BIG (2L << 20)

static unsigned char *g1_map;
static const struct timespec times[2] = { { ATIME, 0 }, { MTIME, 0 } };

static void write_page_2(void)
{
	fill(g1_map + 2 * PAGE, 8, 2, PAGE);
	/* A write fault on a shared mapping moves mtime (ext4_page_mkwrite: file_update_time). */
	if (futimens(10, times))
		die("futimens g1");
}

int main(int argc, char **argv)
{
	static unsigned char buf[PAGE], back[PAGE];
	char g1[PATH_MAX], g2[PATH_MAX], big[PATH_MAX], want[PATH_MAX + 16];
	unsigned char *g2_map = NULL;
	int with_big = 0, corrupt = 0, with_g2 = 1, fd;
	struct stat st;

	if (argc < 2) {
		fprintf(stderr, "usage: zdtm_ghost DIR [-b] [-c]\n");
		return 2;
	}
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "-b"))
			with_big = 1;
		else if (!strcmp(argv[i], "-c"))
			corrupt = 1;
		else if (!strcmp(argv[i], "-n"))
			with_g2 = 0;
	}
	snprintf(g1, sizeof(g1), "%s/g1", argv[1]);
	snprintf(g2, sizeof(g2), "%s/g2", argv[1]);
	snprintf(big, sizeof(big), "%s/big", argv[1]);
	umask(0);

	/* g1: data, a hole, more data; mapped shared; two open files; unlinked. */
	at(open(g1, O_RDWR | O_CREAT | O_EXCL, 0640), 10);
	for (long p = 0; p < 3; p++) {
		fill(buf, 1, p, PAGE);
		if (pwrite(10, buf, PAGE, p * PAGE) != PAGE)
			die("write g1");
	}
	fill(buf, 1, 40, 123);
	if (pwrite(10, buf, 123, 40 * PAGE) != 123)
		die("write g1");
	g1_map = mmap(NULL, G1_MAP, PROT_READ | PROT_WRITE, MAP_SHARED, 10, 0);
	if (g1_map == MAP_FAILED)
		die("mmap g1");
	at(open(g1, O_RDONLY | O_APPEND), 11);
	if (lseek(10, 4321, SEEK_SET) != 4321 || lseek(11, 99, SEEK_SET) != 99 || unlink(g1))
		die("g1");
	if (fdatasync(10) || futimens(10, times))
		die("g1 times");

	/* g2: mapped private, a private copy of page 0; no fd; unlinked. */
	if (with_g2) {
		fd = open(g2, O_RDWR | O_CREAT | O_EXCL, 0600);
		if (fd < 0)
			die("open g2");
		for (long p = 0; p < 2; p++) {
			fill(buf, 2, p, PAGE);
			if (write(fd, buf, PAGE) != PAGE)
				die("write g2");
		}
		g2_map = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
		if (g2_map == MAP_FAILED)
			die("mmap g2");
		close(fd);
		memset(g2_map, 0x5A, PAGE);
		if (unlink(g2))
			die("unlink g2");
	}

	if (with_big) {
		static unsigned char data[BIG];

		memset(data, 'b', sizeof(data));
		at(open(big, O_RDWR | O_CREAT | O_EXCL, 0600), 12);
		if (write(12, data, BIG) != BIG || unlink(big))
			die("big");
	}

	ready_then_wait_poked(write_page_2);
	if (corrupt)
		g1_map[PAGE + 5] ^= 1;

	snprintf(want, sizeof(want), "%s (deleted)", g1);
	expect_link(10, want);
	expect_link(11, want);
	if (fstat(10, &st))
		die("fstat g1");
	if (st.st_nlink || (st.st_mode & 07777) != 0640 || st.st_size != G1_SIZE)
		fail("g1: links %ld mode %o size %ld", (long)st.st_nlink, st.st_mode & 07777, (long)st.st_size);
	if (st.st_atim.tv_sec != ATIME || st.st_mtim.tv_sec != MTIME)
		fail("g1: atime %ld mtime %ld, expected %ld %ld", (long)st.st_atim.tv_sec, (long)st.st_mtim.tv_sec,
		     ATIME, MTIME);
	expect_flags(10, O_RDWR);
	expect_flags(11, O_RDONLY | O_APPEND);
	expect_cloexec(10, 0);
	expect_cloexec(11, 0);
	if (lseek(10, 0, SEEK_CUR) != 4321 || lseek(11, 0, SEEK_CUR) != 99)
		fail("g1: offsets %ld, %ld", (long)lseek(10, 0, SEEK_CUR), (long)lseek(11, 0, SEEK_CUR));
	if (lseek(11, 7, SEEK_SET) != 7 || lseek(10, 0, SEEK_CUR) != 4321)
		fail("g1: fds 10 and 11 share one open file");
	if (lseek(11, 3 * PAGE, SEEK_DATA) != 40 * PAGE)
		fail("g1: SEEK_DATA from page 3 gives %ld, not page 40", (long)lseek(11, 3 * PAGE, SEEK_DATA));
	for (long p = 0; p < 41; p++) {
		long len = p == 40 ? 123 : PAGE;
		int data = p < 3 || p == 40;

		if (pread(10, back, PAGE, p * PAGE) != len)
			fail("g1: pread of page %ld", p);
		else if (data ? !page_is(back, poke && p == 2 ? 8 : 1, p, len) : !zeros(back, len))
			fail("g1: page %ld differs through fd 10", p);
		else if (memcmp(back, g1_map + p * PAGE, len) || !zeros(g1_map + p * PAGE + len, PAGE - len))
			fail("g1: page %ld differs through its mapping", p);
	}
	if (poke && pread(10, back, PAGE, 2 * PAGE) == PAGE && page_is(back, 8, 2, PAGE))
		printf("page 2 written after a dump\n");
	if (fstat(10, &st) || mapped_inode(g1_map) != st.st_ino || (g2_map && mapped_inode(g2_map) == st.st_ino))
		fail("g1: its mapping is not the file of fd 10");
	fill(buf, 7, 1, PAGE);
	memcpy(g1_map + PAGE, buf, PAGE);
	if (pread(10, back, PAGE, PAGE) != PAGE || memcmp(back, buf, PAGE) ||
	    pread(11, back, PAGE, PAGE) != PAGE || memcmp(back, buf, PAGE))
		fail("g1: a write through its mapping does not show through fds 10 and 11");

	if (g2_map && (g2_map[0] != 0x5A || g2_map[PAGE - 1] != 0x5A || !page_is(g2_map + PAGE, 2, 1, PAGE)))
		fail("g2: its private mapping differs");
	if (!access(g1, F_OK) || !access(g2, F_OK))
		fail("%s or %s exists", g1, g2);

	return finish();
}
