/*
 * zdtm_fds: fds that share open file descriptions, and one that does not, in the
 * manner of CRIU's zdtm (static/dup*, file_shared): a target that checks itself.
 *
 *   zdtm_fds DATAFILE [A,B,OFFSET]
 *
 * Creates DATAFILE (64 KiB, byte i is (i * 7 + 3) & 0xff) and sets up:
 *   - fd 10: DATAFILE O_RDWR at offset 1000; fd 11 = dup(10) moved to 11,
 *     fd 12 = dup2(10, 12), fd 13 = fcntl(10, F_DUPFD_CLOEXEC, 13): one open
 *     file description, and only fd 13 close-on-exec;
 *   - fd 14: DATAFILE opened again, O_RDONLY|O_CLOEXEC, at offset 500: a
 *     description of its own, on the same file;
 *   - fd 15: DATAFILE O_WRONLY|O_APPEND|O_NONBLOCK, fd 16 = dup2(15, 16);
 *   - fd 17: DATAFILE O_PATH (no offset: lseek on it fails with EBADF);
 *   - with A,B,OFFSET: fds A and B, inherited from the parent (fork before
 *     exec) and sharing one description of DATAFILE at OFFSET, are kept.
 * Prints "ready PID" and waits for SIGUSR1 (`while (!go) pause();`), then
 * checks, printing "FAIL: what" for each mismatch and exiting 1, or "PASS"
 * and exiting 0:
 *   - the fd table is exactly 0-2 and these fds, each of them DATAFILE;
 *   - offsets 1000 (10-13), 500 (14), OFFSET (A, B); the access modes and
 *     O_APPEND/O_NONBLOCK, O_PATH on 17; FD_CLOEXEC on 13 and 14 only;
 *   - sharing, by its effects: lseek on 11 moves 10, 12 and 13 but not 14;
 *     lseek on 14 moves none of them; F_SETFL O_NONBLOCK on 12 shows on 10,
 *     11 and 13 and not on 14; F_SETFL without O_NONBLOCK on 16 shows on 15;
 *     lseek on A moves B; a read through 13 reads the bytes at the offset
 *     set through 11.
 * Run straight through (no checkpoint in between) it passes; after a restore
 * it passes only if the restore gave each shared description back as one.
 *
 * Debugging the checks: ZDTM_CORRUPT=share (read after SIGUSR1) replaces fd 11
 * by DATAFILE opened anew with the same flags and offset, which only the
 * sharing checks can tell apart.
 */
#include "zdtm_anon.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DATA_LEN 65536
#define SHARED_OFF 1000
#define OWN_OFF 500

static struct stat data_st;

static unsigned char pattern(long i)
{
	return (unsigned char)((i * 7 + 3) & 0xff);
}

static off_t offset(int fd)
{
	return lseek(fd, 0, SEEK_CUR);
}

static void expect_offset(int fd, off_t want, const char *when)
{
	off_t got = offset(fd);

	if (got != want)
		fail("fd %d offset %lld, expected %lld (%s)", fd, (long long)got, (long long)want, when);
}

static void expect_flags_now(int fd, int want, const char *when)
{
	int got = fcntl(fd, F_GETFL);
	int mask = O_ACCMODE | O_APPEND | O_NONBLOCK;

	if (got < 0 || (got & mask) != want)
		fail("fd %d flags %#o, expected %#o (%s)", fd, got & mask, want, when);
}


int main(int argc, char **argv)
{
	static unsigned char data[DATA_LEN];
	int inherited[2] = { -1, -1 };
	long inherited_off = 0;
	int expected[32], nexpected = 0;
	int fd, i;

	if (argc < 2) {
		fprintf(stderr, "usage: zdtm_fds DATAFILE [A,B,OFFSET]\n");
		return 2;
	}
	if (argc > 2 && sscanf(argv[2], "%d,%d,%ld", &inherited[0], &inherited[1], &inherited_off) != 3) {
		fprintf(stderr, "zdtm_fds: bad inherited fds %s\n", argv[2]);
		return 2;
	}
	signal(SIGUSR1, on_go);
	for (i = 0; i < DATA_LEN; i++)
		data[i] = pattern(i);
	fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, data, DATA_LEN) != DATA_LEN || fstat(fd, &data_st))
		die("DATAFILE");
	close(fd);

	fd = open(argv[1], O_RDWR);
	if (fd < 0)
		die("open O_RDWR");
	at(fd, 10);
	if (lseek(10, SHARED_OFF, SEEK_SET) != SHARED_OFF)
		die("lseek");
	at(dup(10), 11);
	if (dup2(10, 12) != 12 || fcntl(10, F_DUPFD_CLOEXEC, 13) != 13)
		die("dup2/F_DUPFD_CLOEXEC");
	fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open O_RDONLY");
	if (fd != 14) {
		if (dup3(fd, 14, O_CLOEXEC) != 14)
			die("dup3");
		close(fd);
	}
	if (lseek(14, OWN_OFF, SEEK_SET) != OWN_OFF)
		die("lseek 14");
	fd = open(argv[1], O_WRONLY | O_APPEND | O_NONBLOCK);
	if (fd < 0)
		die("open O_APPEND");
	at(fd, 15);
	if (dup2(15, 16) != 16)
		die("dup2 16");
	fd = open(argv[1], O_PATH);
	if (fd < 0)
		die("open O_PATH");
	at(fd, 17);
	for (i = 10; i <= 17; i++)
		expected[nexpected++] = i;
	for (i = 0; i < 2; i++)
		if (inherited[i] >= 0)
			expected[nexpected++] = inherited[i];

	printf("ready %d\n", getpid());
	fflush(stdout);
	while (!go)
		pause();

	if (getenv("ZDTM_CORRUPT") && !strcmp(getenv("ZDTM_CORRUPT"), "share")) {
		fd = open(argv[1], O_RDWR);
		lseek(fd, offset(11), SEEK_SET);
		at(fd, 11);
	}

	/* The fd table: exactly these fds (and 0-2), each of them DATAFILE. */
	{
		DIR *dir = opendir("/proc/self/fd");
		struct dirent *e;

		if (!dir)
			die("opendir");
		while ((e = readdir(dir))) {
			int n = atoi(e->d_name), known = n <= 2 || n == dirfd(dir);

			if (e->d_name[0] == '.')
				continue;
			for (i = 0; i < nexpected; i++)
				known |= expected[i] == n;
			if (!known)
				fail("fd %d is open, and should not be", n);
		}
		closedir(dir);
	}
	for (i = 0; i < nexpected; i++) {
		struct stat st;

		if (fstat(expected[i], &st))
			fail("fd %d is not open", expected[i]);
		else if (st.st_dev != data_st.st_dev || st.st_ino != data_st.st_ino)
			fail("fd %d is not DATAFILE", expected[i]);
	}

	/* As set up. */
	for (i = 10; i <= 13; i++)
		expect_offset(i, SHARED_OFF, "as set up");
	expect_offset(14, OWN_OFF, "as set up");
	for (i = 10; i <= 13; i++)
		expect_flags_now(i, O_RDWR, "as set up");
	expect_flags_now(14, O_RDONLY, "as set up");
	expect_flags_now(15, O_WRONLY | O_APPEND | O_NONBLOCK, "as set up");
	expect_flags_now(16, O_WRONLY | O_APPEND | O_NONBLOCK, "as set up");
	if (!(fcntl(17, F_GETFL) & O_PATH))
		fail("fd 17 is not O_PATH (flags %#o)", fcntl(17, F_GETFL));
	for (i = 10; i <= 17; i++)
		expect_cloexec(i, i == 13 || i == 14);
	if (inherited[0] >= 0) {
		expect_offset(inherited[0], inherited_off, "inherited, as set up");
		expect_offset(inherited[1], inherited_off, "inherited, as set up");
	}

	/* Sharing, by its effects. */
	if (lseek(11, 4321, SEEK_SET) != 4321)
		fail("lseek fd 11: %s", strerror(errno));
	for (i = 10; i <= 13; i++)
		expect_offset(i, 4321, "after lseek on fd 11");
	expect_offset(14, OWN_OFF, "after lseek on fd 11");
	lseek(14, 77, SEEK_SET);
	for (i = 10; i <= 13; i++)
		expect_offset(i, 4321, "after lseek on fd 14");
	if (fcntl(12, F_SETFL, fcntl(12, F_GETFL) | O_NONBLOCK))
		fail("F_SETFL fd 12: %s", strerror(errno));
	for (i = 10; i <= 13; i++)
		expect_flags_now(i, O_RDWR | O_NONBLOCK, "after F_SETFL O_NONBLOCK on fd 12");
	expect_flags_now(14, O_RDONLY, "after F_SETFL O_NONBLOCK on fd 12");
	if (fcntl(16, F_SETFL, fcntl(16, F_GETFL) & ~O_NONBLOCK))
		fail("F_SETFL fd 16: %s", strerror(errno));
	expect_flags_now(15, O_WRONLY | O_APPEND, "after clearing O_NONBLOCK on fd 16");
	{
		unsigned char got[16];

		if (read(13, got, sizeof(got)) != sizeof(got))
			fail("read fd 13: %s", strerror(errno));
		else
			for (i = 0; i < (int)sizeof(got); i++)
				if (got[i] != pattern(4321 + i)) {
					fail("fd 13 read byte %d of offset 4321 wrong", i);
					break;
				}
		expect_offset(10, 4321 + sizeof(got), "after reading 16 bytes through fd 13");
	}
	if (inherited[0] >= 0) {
		lseek(inherited[0], inherited_off + 10, SEEK_SET);
		expect_offset(inherited[1], inherited_off + 10, "after lseek on the other inherited fd");
	}

	if (failures)
		return 1;
	printf("PASS\n");
	return 0;
}
