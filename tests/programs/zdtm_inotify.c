/*
 * zdtm_inotify: inotify instances, their watches and numbers (CRIU's zdtm
 * static/inotify00, and more), checking itself.
 *
 *   zdtm_inotify DIR [queued]
 *
 * Makes DIR/watched and DIR/gone (directories) and DIR/file, and sets up (see
 * zdtm_anon.h; go is SIGUSR1):
 *   - fd 10: inotify_init1(IN_NONBLOCK), watching DIR/watched for IN_CREATE |
 *     IN_DELETE (watch 1), then DIR/gone (watch 2, removed again, its
 *     IN_IGNORED read), then DIR/file for IN_MODIFY | IN_ONESHOT (watch 3):
 *     numbers 1 and 3, 2 unused; fd 12 = dup(10);
 *   - fd 11: inotify_init1(IN_CLOEXEC), watching DIR/file for IN_ATTRIB |
 *     IN_EXCL_UNLINK (watch 1);
 *   - with "queued": DIR/watched/early created, its event left unread.
 * Checks: each is an inotify instance with its flags and close-on-exec (11
 * only); fdinfo shows exactly those watches (number, inode, mask); nothing is
 * queued; DIR/watched/new created now is an IN_CREATE of watch 1 read through
 * fd 12; writing DIR/file is an IN_MODIFY of watch 3 on fd 10, then its
 * IN_IGNORED (one-shot); chmod of DIR/file is an IN_ATTRIB of watch 1 on fd
 * 11; a new watch of DIR on fd 10 is number 4.
 */
#include "zdtm_anon.h"
#include <limits.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

static char dir[PATH_MAX - 64], watched[PATH_MAX - 32], gone[PATH_MAX - 32], file[PATH_MAX - 32];

static int add(int fd, const char *path, unsigned mask, int want)
{
	int wd = inotify_add_watch(fd, path, mask);

	if (wd != want) {
		printf("setup failed: watch of %s is %d, expected %d: %s\n", path, wd, want, strerror(errno));
		exit(2);
	}
	return wd;
}

static unsigned long inode(const char *path)
{
	struct stat st;

	if (stat(path, &st))
		die(path);
	return (unsigned long)st.st_ino;
}

/* The watch lines of fdinfo must be exactly these (wd, inode, mask). */
static void expect_watches(int fd, int n, const int *wd, const unsigned long *ino, const unsigned *mask)
{
	char path[64], line[512];
	int seen = 0, i;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "r");
	if (!f) {
		fail("fd %d: no fdinfo", fd);
		return;
	}
	while (fgets(line, sizeof(line), f)) {
		int w;
		unsigned long i_no;
		unsigned m;

		if (sscanf(line, "inotify wd:%x ino:%lx sdev:%*x mask:%x", &w, &i_no, &m) != 3)
			continue;
		for (i = 0; i < n; i++)
			if (wd[i] == w)
				break;
		if (i == n)
			fail("fd %d has a watch %d, which it should not", fd, w);
		else if (ino[i] != i_no || mask[i] != m)
			fail("fd %d watch %d is on inode %lu mask %#x, expected inode %lu mask %#x", fd, w, i_no, m,
			     ino[i], mask[i]);
		else
			seen++;
	}
	fclose(f);
	if (seen != n)
		fail("fd %d has %d of its %d watches", fd, seen, n);
}

/* The next event on fd, within 5 s: its watch, mask and name must be these. */
static void expect_event(int fd, int wd, unsigned mask, const char *name, const char *what)
{
	static char buf[4096] __attribute__((aligned(8)));
	static ssize_t len, off;
	struct inotify_event *e;

	if (off >= len) {
		struct pollfd p = { .fd = fd, .events = POLLIN };

		off = len = 0;
		if (poll(&p, 1, 5000) != 1) {
			fail("fd %d: no event (%s)", fd, what);
			return;
		}
		len = read(fd, buf, sizeof(buf));
		if (len <= 0) {
			fail("fd %d read failed (%s): %s", fd, what, strerror(errno));
			len = 0;
			return;
		}
	}
	e = (struct inotify_event *)(buf + off);
	off += sizeof(*e) + e->len;
	if (e->wd != wd || e->mask != mask || strcmp(e->len ? e->name : "", name))
		fail("fd %d event wd %d mask %#x name '%s', expected wd %d mask %#x name '%s' (%s)", fd, e->wd,
		     e->mask, e->len ? e->name : "", wd, mask, name, what);
	if (off >= len)
		off = len = 0;   /* the next expected event comes from another read */
}

int main(int argc, char **argv)
{
	char buf[4096], path[PATH_MAX];
	int queued, n;

	if (argc < 2) {
		fprintf(stderr, "usage: zdtm_inotify DIR [queued]\n");
		return 2;
	}
	snprintf(dir, sizeof(dir), "%s", argv[1]);
	snprintf(watched, sizeof(watched), "%s/watched", dir);
	snprintf(gone, sizeof(gone), "%s/gone", dir);
	snprintf(file, sizeof(file), "%s/file", dir);
	if (mkdir(watched, 0700) || mkdir(gone, 0700))
		die("mkdir");
	n = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (n < 0)
		die(file);
	close(n);

	at(inotify_init1(IN_NONBLOCK), 10);
	add(10, watched, IN_CREATE | IN_DELETE, 1);
	add(10, gone, IN_ATTRIB, 2);
	if (inotify_rm_watch(10, 2))
		die("inotify_rm_watch");
	if (read(10, buf, sizeof(buf)) <= 0)   /* the IN_IGNORED of watch 2 */
		die("read IN_IGNORED");
	add(10, file, IN_MODIFY | IN_ONESHOT, 3);
	at(dup(10), 12);
	at(inotify_init1(IN_CLOEXEC), 11);
	add(11, file, IN_ATTRIB | IN_EXCL_UNLINK, 1);
	if (argc > 2 && !strcmp(argv[2], "queued")) {
		snprintf(path, sizeof(path), "%s/early", watched);
		n = open(path, O_WRONLY | O_CREAT, 0600);
		if (n < 0)
			die(path);
		close(n);
	}

	ready_then_wait(SIGUSR1);

	for (n = 10; n <= 12; n++) {
		expect_link(n, "anon_inode:inotify");
		expect_cloexec(n, n == 11);
	}
	expect_flags(10, O_RDONLY | O_NONBLOCK);
	expect_flags(12, O_RDONLY | O_NONBLOCK);
	expect_flags(11, O_RDONLY);
	{
		int wd10[] = { 1, 3 }, wd11[] = { 1 };
		unsigned long ino10[] = { inode(watched), inode(file) }, ino11[] = { inode(file) };
		unsigned mask10[] = { IN_CREATE | IN_DELETE, IN_MODIFY | IN_ONESHOT };
		unsigned mask11[] = { IN_ATTRIB | IN_EXCL_UNLINK };

		expect_watches(10, 2, wd10, ino10, mask10);
		expect_watches(11, 1, wd11, ino11, mask11);
	}
	if (ioctl(10, FIONREAD, &queued) || queued)
		fail("fd 10 has %d bytes of events queued, expected none", queued);

	snprintf(path, sizeof(path), "%s/new", watched);
	n = open(path, O_WRONLY | O_CREAT, 0600);
	if (n < 0)
		fail("create %s: %s", path, strerror(errno));
	else
		close(n);
	expect_event(12, 1, IN_CREATE, "new", "a file created in DIR/watched");
	n = open(file, O_WRONLY);
	if (n < 0 || write(n, "x", 1) != 1)
		fail("write %s: %s", file, strerror(errno));
	if (n >= 0)
		close(n);
	expect_event(10, 3, IN_MODIFY, "", "DIR/file written");
	expect_event(10, 3, IN_IGNORED, "", "the one-shot watch is gone");
	if (chmod(file, 0640))
		fail("chmod: %s", strerror(errno));
	expect_event(11, 1, IN_ATTRIB, "", "chmod of DIR/file");
	n = inotify_add_watch(10, dir, IN_CREATE);
	if (n != 4)
		fail("a new watch is number %d, expected 4", n);
	return finish();
}
