/*
 * zdtm_tty: pty pairs held whole by the process, checking themselves (CRIU's zdtm
 * static/pty00, pty01, tty02 and more).
 *
 *   zdtm_tty [ctty|queued]
 *
 * Sets up (see zdtm_anon.h for the protocol; go is SIGUSR1):
 *   - fd 10: a pty master (posix_openpt), in packet mode; fd 11: its slave, O_RDWR,
 *     with chosen termios (no ECHO, ICANON, VINTR ^E, VEOF ^B, 9600 baud out, IXANY)
 *     and window size 33x101 (7x9 pixels), exclusive; fd 12: its slave again
 *     (another open file description), O_RDWR|O_NONBLOCK, close-on-exec;
 *   - fd 13: a second master whose slave was opened and closed (POLLHUP), locked.
 *   - "ctty": first setsid(), then fd 11 opened without O_NOCTTY: the pair is the
 *     process's controlling terminal, its foreground group the process's.
 *   - "queued": "left\n" written to the master and not read (refused by name).
 * Checks: each fd is what it was (the slaves /dev/pts/N of their master's index),
 * termios, window size, packet mode, the lock, exclusive, POLLHUP on fd 13; a line
 * written to the master is read from fd 11 with ICRNL applied and no echo; bytes
 * written to fd 12 are read from the master after packet mode's TIOCPKT_DATA byte.
 * "ctty": the session, group and foreground group are the process's, /dev/tty opens.
 * Every mode: the slave of fd 10 is fchown()ed to 13333:44444 and fchmod()ed to 0604
 * (zdtm's pty01), and neither slave description shows O_CLOEXEC in F_GETFL.
 */
#include "zdtm_anon.h"
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>

static int mode_ctty, mode_queued;

static void setup_termios(int fd)
{
	struct termios t;

	if (tcgetattr(fd, &t))
		die("tcgetattr");
	t.c_lflag &= ~(ECHO | ECHOE | ECHOK);
	t.c_lflag |= ICANON;
	t.c_iflag |= IXANY | ICRNL;
	t.c_cc[VINTR] = 5;
	t.c_cc[VEOF] = 2;
	cfsetospeed(&t, B9600);
	if (tcsetattr(fd, TCSANOW, &t))
		die("tcsetattr");
}

static void check_termios(int fd)
{
	struct termios t;

	if (tcgetattr(fd, &t)) {
		fail("tcgetattr fd %d: %s", fd, strerror(errno));
		return;
	}
	if (t.c_lflag & ECHO || !(t.c_lflag & ICANON) || !(t.c_iflag & IXANY) || t.c_cc[VINTR] != 5 ||
	    t.c_cc[VEOF] != 2 || cfgetospeed(&t) != B9600)
		fail("fd %d termios: lflag %#x iflag %#x VINTR %d VEOF %d ospeed %d", fd, t.c_lflag, t.c_iflag,
		     t.c_cc[VINTR], t.c_cc[VEOF], (int)cfgetospeed(&t));
}

static void expect_slave_of(int slave, int master)
{
	char want[64];
	unsigned int n;

	if (ioctl(master, TIOCGPTN, &n)) {
		fail("fd %d TIOCGPTN: %s", master, strerror(errno));
		return;
	}
	snprintf(want, sizeof(want), "/dev/pts/%u", n);
	expect_link(slave, want);
}

static int get_int(int fd, unsigned long request, const char *what)
{
	int value = -1;

	if (ioctl(fd, request, &value))
		fail("fd %d %s: %s", fd, what, strerror(errno));
	return value;
}

int main(int argc, char **argv)
{
	struct winsize ws = {.ws_row = 33, .ws_col = 101, .ws_xpixel = 7, .ws_ypixel = 9};
	char buf[64];
	int one = 1, slave;
	ssize_t n;

	mode_ctty = argc > 1 && !strcmp(argv[1], "ctty");
	mode_queued = argc > 1 && !strcmp(argv[1], "queued");
	if (mode_ctty && setsid() < 0)
		die("setsid");
	at(posix_openpt(O_RDWR | O_NOCTTY), 10);
	if (grantpt(10) || unlockpt(10))
		die("unlockpt");
	at(open(ptsname(10), O_RDWR | (mode_ctty ? 0 : O_NOCTTY)), 11);
	setup_termios(11);
	if (ioctl(11, TIOCSWINSZ, &ws) || ioctl(10, TIOCPKT, &one) || ioctl(11, TIOCEXCL))
		die("ioctl");
	/* TIOCEXCL: only CAP_SYS_ADMIN opens it again (root runs the tests) */
	at(open(ptsname(10), O_RDWR | O_NONBLOCK | O_NOCTTY | O_CLOEXEC), 12);
	at(posix_openpt(O_RDWR | O_NOCTTY), 13);
	if (unlockpt(13))
		die("unlockpt 13");
	slave = open(ptsname(13), O_RDWR | O_NOCTTY);
	if (slave < 0)
		die("open slave of 13");
	close(slave);
	if (ioctl(13, TIOCSPTLCK, &one))
		die("TIOCSPTLCK");
	if (mode_queued && write(10, "left\n", 5) != 5)
		die("write");
	/* The slave's owner and mode, as zdtm's pty01 (root runs the tests) */
	if (fchown(11, 13333, 44444) || fchmod(11, 0604))
		die("fchown");

	ready_then_wait(SIGUSR1);

	expect_link(10, "/dev/ptmx");
	expect_link(13, "/dev/ptmx");
	expect_slave_of(11, 10);
	expect_slave_of(12, 10);
	expect_flags(10, O_RDWR);
	expect_flags(11, O_RDWR);
	expect_flags(12, O_RDWR | O_NONBLOCK);
	expect_cloexec(12, 1);
	expect_cloexec(11, 0);
	/* open(2) keeps O_CLOEXEC out of the description's flags (fs/open.c build_open_flags) */
	if (fcntl(11, F_GETFL) & O_CLOEXEC || fcntl(12, F_GETFL) & O_CLOEXEC)
		fail("F_GETFL shows O_CLOEXEC: fd 11 %#o, fd 12 %#o", fcntl(11, F_GETFL), fcntl(12, F_GETFL));
	{
		struct stat st;

		if (fstat(11, &st) || st.st_uid != 13333 || st.st_gid != 44444 || (st.st_mode & 07777) != 0604)
			fail("fd 11's slave is owned by %d:%d mode %o, expected 13333:44444 mode 604", (int)st.st_uid,
			     (int)st.st_gid, st.st_mode & 07777);
	}
	check_termios(11);
	check_termios(10);   /* through the master: the slave's */
	memset(&ws, 0, sizeof(ws));
	if (ioctl(12, TIOCGWINSZ, &ws) || ws.ws_row != 33 || ws.ws_col != 101 || ws.ws_xpixel != 7 || ws.ws_ypixel != 9)
		fail("window size %dx%d (%dx%d pixels), expected 33x101 (7x9)", ws.ws_row, ws.ws_col, ws.ws_xpixel,
		     ws.ws_ypixel);
	if (get_int(10, TIOCGPKT, "TIOCGPKT") != 1)
		fail("fd 10 is not in packet mode");
	if (get_int(11, TIOCGEXCL, "TIOCGEXCL") != 1)
		fail("fd 11's slave is not exclusive");
	if (get_int(13, TIOCGPTLCK, "TIOCGPTLCK") != 1 || get_int(10, TIOCGPTLCK, "TIOCGPTLCK") != 0)
		fail("locks: fd 13 should be locked, fd 10 not");
	{
		struct pollfd p = {.fd = 13, .events = POLLIN};

		if (poll(&p, 1, 0) != 1 || !(p.revents & POLLHUP))
			fail("fd 13 (slave closed) polls %#x, expected POLLHUP", p.revents);
	}
	/* master -> slave: CR becomes NL (ICRNL), no echo comes back (ECHO off) */
	if (write(10, "hello\r", 6) != 6)
		fail("write to the master: %s", strerror(errno));
	n = read(11, buf, sizeof(buf));
	if (n != 6 || memcmp(buf, "hello\n", 6))
		fail("the slave read %zd bytes '%.*s', expected 'hello\\n'", n, (int)(n > 0 ? n : 0), buf);
	/* slave -> master, in packet mode: TIOCPKT_DATA (0) first */
	if (write(12, "back", 4) != 4)
		fail("write to the slave: %s", strerror(errno));
	n = read(10, buf, sizeof(buf));
	if (n != 5 || buf[0] != TIOCPKT_DATA || memcmp(buf + 1, "back", 4))
		fail("the master read %zd bytes, expected TIOCPKT_DATA + 'back'", n);
	n = read(12, buf, sizeof(buf));
	if (n != -1 || errno != EAGAIN)
		fail("fd 12 (O_NONBLOCK, nothing queued) read %zd (%s)", n, strerror(errno));
	if (mode_ctty) {
		pid_t fg = tcgetpgrp(11);
		int tty = open("/dev/tty", O_RDWR);

		if (getsid(0) != getpid() || getpgrp() != getpid() || fg != getpid())
			fail("session %d, group %d, foreground %d; expected %d for all", getsid(0), getpgrp(), fg,
			     getpid());
		if (tty < 0)
			fail("/dev/tty: %s", strerror(errno));
		else if (ioctl(tty, TIOCGWINSZ, &ws) || ws.ws_col != 101)
			fail("/dev/tty is not the pty (%d columns)", ws.ws_col);
	}
	return finish();
}
