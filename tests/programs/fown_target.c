/*
 * fown_target: open files with a signal owner (F_SETOWN, F_SETOWN_EX, F_SETSIG) and O_ASYNC
 * (signal-driven I/O), which check themselves after a restore (ckpt/files/fown.py).
 *
 *   fown_target single      fd 10: a pipe's read end, O_ASYNC (F_SETFL), F_SETOWN(itself),
 *                           SIGIO; fd 11: a socket pair's end, O_ASYNC (FIOASYNC), owner its
 *                           own thread (F_OWNER_TID), F_SETSIG(SIGRTMIN+1).  The other ends
 *                           at fds 20, 21.
 *   fown_target outside     fd 10 as above, its owner the target's parent (outside it), its
 *                           signal SIGWINCH (ignored by default: the parent gets it at the exit).
 *   fown_target tree UID    nginx's shape: fd 13, the parent's end of a socket pair, O_ASYNC,
 *                           owner the parent, SIGIO; the child holds the other end at fd 14,
 *                           O_ASYNC, owner itself, F_SETSIG(SIGRTMIN+3).  A second child
 *                           drops to uid UID and sets, on the read end of a pipe (fd 15; the
 *                           parent holds the write end at fd 16), O_ASYNC, F_SETSIG(SIGRTMIN+4)
 *                           and the parent as owner: the kernel never delivers that signal to
 *                           the parent, root (fs/fcntl.c sigio_perm: the owner's uids are UID's).
 *
 * Every signal it waits for is blocked, and taken with sigtimedwait.  It prints
 * "ready PID [CHILD...]", waits for SIGUSR1 (children: SIGUSR2), then triggers each
 * file and checks the owner is itself as it is now (a restore may give it a new pid), the
 * signal arrives (si_fd and si_code for an F_SETSIG one) and the denied one does not; it
 * prints "PASS", or "FAIL what" and exits non-zero.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef F_GETOWNER_UIDS
#define F_GETOWNER_UIDS 17   /* include/uapi/asm-generic/fcntl.h */
#endif

static int failures;

static void fail(const char *what)
{
	printf("FAIL %s (errno %s)\n", what, strerror(errno));
	fflush(stdout);
	failures++;
}

static void die(const char *what)
{
	printf("setup failed: %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(2);
}

static void at(int fd, int number)
{
	if (fd != number) {
		if (dup2(fd, number) < 0)
			die("dup2");
		close(fd);
	}
}

static void owner(int fd, int type, pid_t pid)
{
	struct f_owner_ex ex = { .type = type, .pid = pid };

	if (fcntl(fd, F_SETOWN_EX, &ex))
		die("F_SETOWN_EX");
}

static void fioasync(int fd)
{
	int on = 1;

	if (ioctl(fd, FIOASYNC, &on))
		die("FIOASYNC");
}

/* The owner of fd is (type, pid), its signal sig, O_ASYNC set. */
static void expect_owner(int fd, int type, pid_t pid, int sig, const char *what)
{
	struct f_owner_ex ex;
	char buf[160];

	if (fcntl(fd, F_GETOWN_EX, &ex) || ex.type != type || ex.pid != pid) {
		snprintf(buf, sizeof(buf), "%s: owner %d/%d, wanted %d/%d", what, ex.type, ex.pid, type, pid);
		fail(buf);
	}
	if (fcntl(fd, F_GETSIG) != sig) {
		snprintf(buf, sizeof(buf), "%s: signal %d, wanted %d", what, fcntl(fd, F_GETSIG), sig);
		fail(buf);
	}
	if (!(fcntl(fd, F_GETFL) & O_ASYNC)) {
		snprintf(buf, sizeof(buf), "%s: no O_ASYNC", what);
		fail(buf);
	}
}

/* Wait up to ms for sig; its siginfo, or si_signo 0. */
static siginfo_t take(int sig, int ms)
{
	sigset_t set;
	siginfo_t info;
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	sigemptyset(&set);
	sigaddset(&set, sig);
	memset(&info, 0, sizeof(info));
	while (sigtimedwait(&set, &info, &ts) < 0) {
		if (errno != EINTR) {
			memset(&info, 0, sizeof(info));
			break;
		}
	}
	return info;
}

static void wait_for(int sig)
{
	sigset_t set;
	int got;

	sigemptyset(&set);
	sigaddset(&set, sig);
	sigwait(&set, &got);
}

static void block_all_used(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	sigaddset(&set, SIGIO);
	sigaddset(&set, SIGRTMIN + 1);
	sigaddset(&set, SIGRTMIN + 3);
	sigaddset(&set, SIGRTMIN + 4);
	sigprocmask(SIG_BLOCK, &set, NULL);
}

static void tie_to(pid_t parent)
{
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
		_exit(1);
}

static int single(int outside)
{
	int p[2], s[2], i;
	siginfo_t info;

	if (pipe(p) || socketpair(AF_UNIX, SOCK_STREAM, 0, s))
		die("pipe");
	at(p[0], 10);
	at(p[1], 20);
	at(s[0], 11);
	at(s[1], 21);
	if (fcntl(10, F_SETFL, fcntl(10, F_GETFL) | O_ASYNC) || fcntl(10, F_SETOWN, outside ? getppid() : getpid()))
		die("pipe O_ASYNC");
	/* Its parent (the test) gets a signal when it dies: the write end, released first, wakes
	 * the readers (fs/pipe.c pipe_release).  One whose default action is to ignore it. */
	if (outside && fcntl(10, F_SETSIG, SIGWINCH))
		die("F_SETSIG");
	fioasync(11);
	owner(11, F_OWNER_TID, gettid());
	if (fcntl(11, F_SETSIG, SIGRTMIN + 1))
		die("F_SETSIG");
	printf("ready %d\n", getpid());
	fflush(stdout);
	wait_for(SIGUSR1);

	expect_owner(10, F_OWNER_PID, getpid(), 0, "pipe");
	expect_owner(11, F_OWNER_TID, gettid(), SIGRTMIN + 1, "socket");
	if (write(20, "x", 1) != 1)
		fail("write the pipe");
	if (take(SIGIO, 5000).si_signo != SIGIO)
		fail("no SIGIO for the pipe");
	for (i = 0; i < 3; i++) {
		if (write(21, "y", 1) != 1)
			fail("write the socket");
		info = take(SIGRTMIN + 1, 5000);
		if (info.si_signo != SIGRTMIN + 1 || info.si_fd != 11 || info.si_code != POLL_IN) {
			printf("FAIL socket signal %d: signo %d fd %d code %d\n", i, info.si_signo, info.si_fd, info.si_code);
			failures++;
		}
	}
	if (failures)
		return 1;
	printf("PASS\n");
	fflush(stdout);
	return 0;
}

static int tree(uid_t uid)
{
	int s[2], p[2], sync[2], status, code = 0, devnull;
	pid_t me = getpid(), child, dropped;
	siginfo_t info;
	char buf[8];

	/* Not the test's stderr, a deleted file the tasks would share as a file object. */
	devnull = open("/dev/null", O_WRONLY);
	if (devnull < 0 || dup2(devnull, 2) < 0)
		die("/dev/null");
	close(devnull);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) || pipe(p) || pipe(sync))
		die("socketpair");
	at(s[0], 13);
	at(s[1], 14);
	at(p[0], 15);
	at(p[1], 16);
	fioasync(13);
	if (fcntl(13, F_SETOWN, me))   /* as ngx_spawn_process: FIOASYNC, F_SETOWN(ngx_pid) */
		die("F_SETOWN");
	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		tie_to(me);
		close(13);
		close(15);
		close(16);
		fioasync(14);
		owner(14, F_OWNER_PID, getpid());
		if (fcntl(14, F_SETSIG, SIGRTMIN + 3))
			die("F_SETSIG");
		if (write(sync[1], "c", 1) != 1)
			die("sync");
		close(sync[0]);
		close(sync[1]);
		wait_for(SIGUSR2);
		expect_owner(14, F_OWNER_PID, getpid(), SIGRTMIN + 3, "the child's end");
		if (write(14, "ping", 4) != 4)
			fail("child: write");
		info = take(SIGRTMIN + 3, 5000);
		if (info.si_signo != SIGRTMIN + 3 || info.si_fd != 14 || info.si_code != POLL_IN)
			fail("child: no signal from its end");
		if (read(14, buf, 4) != 4 || memcmp(buf, "pong", 4))
			fail("child: read");
		_exit(failures ? 3 : 0);
	}
	dropped = fork();
	if (dropped < 0)
		die("fork");
	if (dropped == 0) {
		uid_t r, e, sv;
		unsigned int uids[2];

		tie_to(me);
		close(13);
		close(14);
		close(16);
		if (setresuid(uid, uid, uid))
			die("setresuid");
		tie_to(me);   /* the credential change cleared the parent-death signal */
		if (fcntl(15, F_SETFL, fcntl(15, F_GETFL) | O_ASYNC) || fcntl(15, F_SETSIG, SIGRTMIN + 4))
			die("O_ASYNC");
		owner(15, F_OWNER_PID, me);
		if (write(sync[1], "d", 1) != 1)
			die("sync");
		close(sync[0]);
		close(sync[1]);
		wait_for(SIGUSR2);
		expect_owner(15, F_OWNER_PID, getppid(), SIGRTMIN + 4, "the dropped child's pipe");
		if (fcntl(15, F_GETOWNER_UIDS, uids) || uids[0] != uid || uids[1] != uid)
			fail("the dropped child's pipe: owner uids");
		getresuid(&r, &e, &sv);
		if (r != uid || e != uid)
			fail("the dropped child's uids");
		_exit(failures ? 3 : 0);
	}
	close(14);
	close(15);
	close(sync[1]);
	if (read(sync[0], buf, 1) != 1 || read(sync[0], buf, 1) != 1)   /* both children set up */
		die("sync");
	close(sync[0]);
	printf("ready %d %d %d\n", me, child, dropped);
	fflush(stdout);
	wait_for(SIGUSR1);

	expect_owner(13, F_OWNER_PID, getpid(), 0, "the parent's end");
	kill(child, SIGUSR2);
	if (take(SIGIO, 5000).si_signo != SIGIO)
		fail("parent: no SIGIO from its end");
	if (read(13, buf, 4) != 4 || memcmp(buf, "ping", 4))
		fail("parent: read");
	if (write(13, "pong", 4) != 4)
		fail("parent: write");
	/* The pipe whose owner uid cannot signal root: nothing may come. */
	if (write(16, "z", 1) != 1)
		fail("parent: write the pipe");
	info = take(SIGRTMIN + 4, 1000);
	if (info.si_signo)
		fail("parent: a signal from a file whose owner's uids may not signal it");
	kill(dropped, SIGUSR2);
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
		code = 1, printf("FAIL the child: status %#x\n", status);
	if (waitpid(dropped, &status, 0) != dropped || !WIFEXITED(status) || WEXITSTATUS(status))
		code = 1, printf("FAIL the dropped child: status %#x\n", status);
	if (failures || code)
		return 1;
	printf("PASS\n");
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	block_all_used();
	if (argc > 1 && !strcmp(argv[1], "single"))
		return single(0);
	if (argc > 1 && !strcmp(argv[1], "outside"))
		return single(1);
	if (argc > 2 && !strcmp(argv[1], "tree"))
		return tree((uid_t)atoi(argv[2]));
	fprintf(stderr, "usage: fown_target single|outside|tree UID\n");
	return 2;
}
