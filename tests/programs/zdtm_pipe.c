/*
 * zdtm_pipe: pipes and a FIFO with both ends in the process and bytes in flight,
 * in the manner of CRIU's zdtm (static/pipe00-02, fifo*, packet_sock): a target
 * that checks itself.
 *
 *   zdtm_pipe FIFOPATH
 *
 * Sets up (fd: what):
 *   10, 11  pipe A: read end O_NONBLOCK, write end; 3000 bytes written, the
 *           first 100 read back (the head buffer is part-read)
 *   12, 13  pipe B, the other way: read end close-on-exec, write end
 *           O_NONBLOCK; 5000 bytes in it
 *   14      dup(11): one open file with 11
 *   15, 16  pipe C of 1 MiB (F_SETPIPE_SZ), written full, 100 bytes read back
 *   17, 18  pipe D in packet mode (pipe2 O_DIRECT: the write end writes
 *           packets): writes of 10, 20 and 5000 bytes, 4 packets (10, 20,
 *           4096, 904)
 *   19, 20  FIFOPATH (mkfifo'd here): a read end O_NONBLOCK, a write end; 700
 *           bytes in it
 *   21      FIFOPATH opened O_RDWR
 *   22      read end of pipe E whose write end is closed: 50 bytes, then EOF
 *   23      write end of pipe F whose read end is closed: EPIPE
 *   24      pipe A's read end opened again through /proc/self/fd/10: an open
 *           file of its own (no O_NONBLOCK, O_LARGEFILE as every open)
 * Prints "ready PID" and waits for SIGUSR1, then checks, printing "FAIL: what"
 * for each mismatch and exiting 1, or "PASS" and exiting 0:
 *   - the fd table is exactly 0-2 and these fds, each a pipe or the FIFO; the
 *     ends of one pipe are one pipe (same inode), the FIFO is FIFOPATH;
 *   - F_GETFL (access mode, O_NONBLOCK, O_DIRECT, O_LARGEFILE), FD_CLOEXEC,
 *     F_GETPIPE_SZ and FIONREAD of every fd as set up;
 *   - sharing: F_SETFL on 14 shows on 11; on 24 not on 10;
 *   - pipe C is full: a 4096-byte write fails with EAGAIN;
 *   - contents, read back to the last byte: pattern bytes at the right
 *     offsets, pipe D in reads of 10, 20, 4096 and 904 bytes, pipe E then at
 *     its end (read returns 0), pipe F's write fails with EPIPE;
 *   - the ends are connected: a byte written through 11, 13, 18, 20 and 21
 *     comes out of 10, 12, 17, 19 and 19 (a packet through 18).
 * Run straight through it passes; after a restore it passes only if every
 * pipe came back with its ends, flags, size and bytes.
 *
 * Debugging the checks: ZDTM_CORRUPT=data (read after SIGUSR1) reads one more
 * byte of pipe A before checking, ZDTM_CORRUPT=packets reads pipe D's first
 * packet one byte short (dropping the rest of it).
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
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIRST_FD 10
#define LAST_FD 24
#define NFDS (LAST_FD - FIRST_FD + 1)
#define BIG (1 << 20)

static int flags_at[NFDS], cloexec_at[NFDS], size_at[NFDS], queued_at[NFDS];
static const char *fifo;

/* Byte i of stream s: every pipe has its own pattern. */
static unsigned char pattern(int s, long i)
{
	return (unsigned char)((i * 7 + s * 31 + (i >> 8)) & 0xff);
}

static void pipe_at(int r, int w, int flags)
{
	int fds[2];

	if (pipe2(fds, flags))
		die("pipe2");
	/* Out of the way first: the new fds may be r or w themselves. */
	at(fds[0], 100);
	at(fds[1], 101);
	at(100, r);
	at(101, w);
}

static void put(int fd, int s, long from, long len)
{
	static unsigned char buf[BIG];
	long i;

	for (i = 0; i < len; i++)
		buf[i] = pattern(s, from + i);
	if (write(fd, buf, len) != len)
		die("write");
}

static int queued(int fd)
{
	int n = -1;

	ioctl(fd, FIONREAD, &n);
	return n;
}

/* Read what fd holds (non-blocking), expecting len bytes of stream s from offset from. */
static void expect_bytes(int fd, int s, long from, long len, const char *what)
{
	static unsigned char buf[BIG + 4096];
	long got = 0, i;
	ssize_t n;

	while ((n = read(fd, buf + got, sizeof(buf) - got)) > 0)
		got += n;
	if (got != len) {
		fail("%s: %ld bytes, expected %ld", what, got, len);
		return;
	}
	for (i = 0; i < len; i++)
		if (buf[i] != pattern(s, from + i)) {
			fail("%s: byte %ld is %d, expected %d", what, i, buf[i], pattern(s, from + i));
			return;
		}
}

static void expect_through(int w, int r, const char *what)
{
	char c = 'x', d = 0;

	if (write(w, &c, 1) != 1)
		fail("%s: write: %s", what, strerror(errno));
	else if (read(r, &d, 1) != 1 || d != 'x')
		fail("%s: the byte written did not come out", what);
}

int main(int argc, char **argv)
{
	struct stat st, fifo_st;
	int fd, i;

	if (argc != 2) {
		fprintf(stderr, "usage: zdtm_pipe FIFOPATH\n");
		return 2;
	}
	fifo = argv[1];
	signal(SIGUSR1, on_go);
	signal(SIGPIPE, SIG_IGN);

	pipe_at(10, 11, 0);
	put(11, 1, 0, 3000);
	{
		char skip[100];

		if (read(10, skip, sizeof(skip)) != sizeof(skip))
			die("read A");
	}
	fcntl(10, F_SETFL, O_NONBLOCK);
	pipe_at(12, 13, 0);
	put(13, 2, 0, 5000);
	fcntl(12, F_SETFD, FD_CLOEXEC);
	fcntl(13, F_SETFL, O_NONBLOCK);
	if (dup2(11, 14) != 14)
		die("dup2 14");

	pipe_at(15, 16, O_NONBLOCK);
	if (fcntl(16, F_SETPIPE_SZ, BIG) != BIG)
		die("F_SETPIPE_SZ");
	put(16, 3, 0, BIG);
	{
		char skip[100];

		if (read(15, skip, sizeof(skip)) != sizeof(skip))
			die("read C");
	}

	pipe_at(17, 18, O_DIRECT | O_NONBLOCK);
	put(18, 4, 0, 10);
	put(18, 4, 10, 20);
	put(18, 4, 30, 5000);

	unlink(fifo);
	if (mkfifo(fifo, 0600))
		die("mkfifo");
	fd = open(fifo, O_RDONLY | O_NONBLOCK);
	if (fd < 0)
		die("open FIFO O_RDONLY");
	at(fd, 19);
	fd = open(fifo, O_WRONLY);
	if (fd < 0)
		die("open FIFO O_WRONLY");
	at(fd, 20);
	put(20, 5, 0, 700);
	fd = open(fifo, O_RDWR);
	if (fd < 0)
		die("open FIFO O_RDWR");
	at(fd, 21);
	if (stat(fifo, &fifo_st))
		die("stat FIFO");

	pipe_at(22, 100, 0);
	put(100, 6, 0, 50);
	close(100);
	pipe_at(100, 23, 0);
	close(100);
	fcntl(22, F_SETFL, O_NONBLOCK);

	fd = open("/proc/self/fd/10", O_RDONLY);
	if (fd < 0)
		die("reopen pipe A");
	at(fd, 24);

	for (i = 0; i < NFDS; i++) {
		flags_at[i] = fcntl(FIRST_FD + i, F_GETFL);
		cloexec_at[i] = fcntl(FIRST_FD + i, F_GETFD);
		size_at[i] = fcntl(FIRST_FD + i, F_GETPIPE_SZ);
		queued_at[i] = queued(FIRST_FD + i);
	}

	printf("ready %d\n", getpid());
	fflush(stdout);
	while (!go)
		pause();

	if (getenv("ZDTM_CORRUPT") && !strcmp(getenv("ZDTM_CORRUPT"), "data")) {
		char c;

		if (read(10, &c, 1) != 1)
			printf("corrupt: read: %s\n", strerror(errno));
	}
	if (getenv("ZDTM_CORRUPT") && !strcmp(getenv("ZDTM_CORRUPT"), "packets")) {
		char c[9];

		if (read(17, c, sizeof(c)) != sizeof(c))
			printf("corrupt: read: %s\n", strerror(errno));
	}

	/* The fd table: exactly these fds (and 0-2), each a pipe; which pipe. */
	{
		DIR *dir = opendir("/proc/self/fd");
		struct dirent *e;

		if (!dir)
			die("opendir");
		while ((e = readdir(dir))) {
			int n = atoi(e->d_name);

			if (e->d_name[0] != '.' && n > 2 && n != dirfd(dir) && (n < FIRST_FD || n > LAST_FD))
				fail("fd %d is open, and should not be", n);
		}
		closedir(dir);
	}
	for (i = FIRST_FD; i <= LAST_FD; i++)
		if (fstat(i, &st) || !S_ISFIFO(st.st_mode))
			fail("fd %d is not a pipe", i);
	{
		static const int same[][3] = { { 10, 11, 24 }, { 12, 13, 13 }, { 14, 11, 11 }, { 15, 16, 16 },
					       { 17, 18, 18 }, { 19, 20, 21 } };
		struct stat a, b;
		unsigned int k, j;

		for (k = 0; k < sizeof(same) / sizeof(same[0]); k++)
			for (j = 1; j < 3; j++)
				if (fstat(same[k][0], &a) || fstat(same[k][j], &b) || a.st_ino != b.st_ino ||
				    a.st_dev != b.st_dev)
					fail("fds %d and %d are not one pipe", same[k][0], same[k][j]);
		if (fstat(10, &a) || fstat(12, &b) || a.st_ino == b.st_ino)
			fail("fds 10 and 12 are one pipe");
		if (fstat(19, &a) || a.st_ino != fifo_st.st_ino || a.st_dev != fifo_st.st_dev)
			fail("fd 19 is not the FIFO %s", fifo);
	}

	/* As set up. */
	for (i = 0; i < NFDS; i++) {
		int n = FIRST_FD + i;

		if (fcntl(n, F_GETFL) != flags_at[i])
			fail("fd %d flags %#o, expected %#o", n, fcntl(n, F_GETFL), flags_at[i]);
		if (fcntl(n, F_GETFD) != cloexec_at[i])
			fail("fd %d close-on-exec %d, expected %d", n, fcntl(n, F_GETFD), cloexec_at[i]);
		if (fcntl(n, F_GETPIPE_SZ) != size_at[i])
			fail("fd %d pipe size %d, expected %d", n, fcntl(n, F_GETPIPE_SZ), size_at[i]);
		if (queued(n) != queued_at[i])
			fail("fd %d holds %d bytes, expected %d", n, queued(n), queued_at[i]);
	}

	/* Sharing, by its effects. */
	fcntl(14, F_SETFL, O_NONBLOCK);
	if (!(fcntl(11, F_GETFL) & O_NONBLOCK))
		fail("F_SETFL O_NONBLOCK on fd 14 does not show on fd 11");
	fcntl(24, F_SETFL, O_NONBLOCK);
	fcntl(10, F_SETFL, 0);
	if (!(fcntl(24, F_GETFL) & O_NONBLOCK))
		fail("F_SETFL without O_NONBLOCK on fd 10 shows on fd 24");
	fcntl(10, F_SETFL, O_NONBLOCK);
	fcntl(12, F_SETFL, O_NONBLOCK);
	fcntl(19, F_SETFL, O_NONBLOCK);

	/* Pipe C is full. */
	{
		static char page[4096];

		if (write(16, page, sizeof(page)) != -1 || errno != EAGAIN)
			fail("pipe C takes a 4096-byte write: it was full");
	}

	/* Contents. */
	expect_bytes(10, 1, 100, 3000 - 100, "pipe A");
	expect_bytes(12, 2, 0, 5000, "pipe B");
	expect_bytes(15, 3, 100, BIG - 100, "pipe C");
	{
		static const int packets[] = { 10, 20, 4096, 904 };
		static unsigned char buf[8192];
		long from = 0;
		unsigned int k;
		ssize_t n;

		for (k = 0; k < sizeof(packets) / sizeof(packets[0]); k++) {
			n = read(17, buf, sizeof(buf));
			if (n != packets[k]) {
				fail("pipe D: packet %u is %zd bytes, expected %d", k, n, packets[k]);
				break;
			}
			for (i = 0; i < n; i++)
				if (buf[i] != pattern(4, from + i)) {
					fail("pipe D: packet %u byte %d wrong", k, i);
					break;
				}
			from += n;
		}
		if (queued(17) != 0)
			fail("pipe D holds %d bytes after its packets", queued(17));
	}
	expect_bytes(19, 5, 0, 700, "the FIFO");
	expect_bytes(22, 6, 0, 50, "pipe E");
	{
		char c;

		if (read(22, &c, 1) != 0)
			fail("pipe E: no end of file after its bytes (its write end is open somewhere)");
		if (write(23, "x", 1) != -1 || errno != EPIPE)
			fail("pipe F: a write does not fail with EPIPE (a read end is open somewhere)");
	}

	/* Connected. */
	expect_through(11, 10, "pipe A");
	expect_through(13, 12, "pipe B");
	expect_through(20, 19, "the FIFO");
	expect_through(21, 19, "the FIFO (O_RDWR)");
	{
		char c[4] = "abc", d[8];

		if (write(18, c, 3) != 3 || write(18, c, 3) != 3)
			fail("pipe D: write: %s", strerror(errno));
		else if (read(17, d, sizeof(d)) != 3)
			fail("pipe D: its write end no longer writes packets");
	}

	if (failures)
		return 1;
	printf("PASS\n");
	return 0;
}
