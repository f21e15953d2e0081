/*
 * zdtm_sigtrap: signal handlers and pending signals, SIGTRAP among them (CRIU's
 * zdtm static/sigtrap, and more), checking itself.
 *
 *   zdtm_sigtrap pending | timer | ignored
 *
 * pending: SA_SIGINFO handlers for SIGTRAP, SIGUSR1, SIGRTMIN+2 and SIGRTMIN+3,
 *   all four blocked; a second thread, blocked in read() on a pipe, has
 *   SIGTRAP (pthread_kill), SIGUSR1 (pthread_kill) and SIGRTMIN+3 with the value
 *   301 (pthread_sigqueue) pending for itself; the process has SIGTRAP
 *   (kill(getpid())) and SIGRTMIN+2 with 201 then 202 (sigqueue) pending.
 * timer: a SIGTRAP handler and a long ITIMER_REAL armed, nothing pending.
 * ignored: SIGTRAP ignored (SIG_IGN), nothing pending.
 *
 * go is SIGUSR2 (zdtm_anon.h).  Checks: each handler is still installed with
 * its flags; the pending sets are as set up; unblocking one signal at a time,
 * each handler receives its signals in order with their siginfo (code, sender
 * pid, value), each in the thread it was sent to; the thread's read() was
 * not disturbed (it returns the byte written after the checks); a SIGTRAP
 * raised at the end reaches the handler (or, ignored, nothing).
 */
#include "zdtm_anon.h"
#include <pthread.h>
#include <sys/syscall.h>
#include <sys/time.h>

#define MAX_SEEN 16

struct seen {
	int signo, code, pid, value;
	pid_t tid;
};

static struct seen seen[MAX_SEEN];
static volatile sig_atomic_t nseen;
static int pid;                 /* the pid that sent the signals (before the restore) */
static int pipefd[2], backfd[2];
static pthread_t worker;

static void on_signal(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (nseen < MAX_SEEN) {
		seen[nseen] = (struct seen){ sig, si->si_code, si->si_pid, si->si_value.sival_int,
					     (pid_t)syscall(SYS_gettid) };
		nseen++;
	}
}

static void install(int sig)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_signal;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	if (sigaction(sig, &sa, NULL))
		die("sigaction");
}

static void expect_handler(int sig, void *want, int flags)
{
	struct sigaction sa;

	if (sigaction(sig, NULL, &sa)) {
		fail("sigaction(%d): %s", sig, strerror(errno));
		return;
	}
	if ((void *)sa.sa_sigaction != want || (sa.sa_flags & (SA_SIGINFO | SA_RESTART)) != flags)
		fail("signal %d: handler %p flags %#x, expected %p flags %#x", sig, (void *)sa.sa_sigaction,
		     sa.sa_flags & (SA_SIGINFO | SA_RESTART), want, flags);
}

static void expect_pending(sigset_t *want, const char *who)
{
	sigset_t got;

	if (sigpending(&got)) {
		fail("sigpending: %s", strerror(errno));
		return;
	}
	for (int sig = 1; sig < NSIG; sig++)
		if (sigismember(&got, sig) != sigismember(want, sig))
			fail("%s: signal %d is %spending", who, sig, sigismember(&got, sig) ? "" : "not ");
}

/* Unblock sig alone, then block it again: each of its pending instances reaches the handler. */
static void take(int sig)
{
	sigset_t one;

	sigemptyset(&one);
	sigaddset(&one, sig);
	if (pthread_sigmask(SIG_UNBLOCK, &one, NULL) || pthread_sigmask(SIG_BLOCK, &one, NULL))
		fail("pthread_sigmask(%d)", sig);
}

/* The signals seen from index *next on must be these, in this order, all in thread tid. */
static void expect_seen(int *next, pid_t tid, const char *who, int n, const struct seen *want)
{
	for (int i = 0; i < n; i++) {
		const struct seen *w = &want[i];
		int at = *next + i;

		if (at >= nseen) {
			fail("%s: signal %d (value %d) never came", who, w->signo, w->value);
			continue;
		}
		if (seen[at].signo != w->signo || seen[at].code != w->code || seen[at].pid != w->pid ||
		    seen[at].value != w->value || seen[at].tid != tid)
			fail("%s: got signal %d code %d pid %d value %d in tid %d, expected %d code %d pid %d value %d "
			     "in tid %d", who, seen[at].signo, seen[at].code, seen[at].pid, seen[at].value, seen[at].tid,
			     w->signo, w->code, w->pid, w->value, tid);
	}
	if (nseen != *next + n)
		fail("%s: %d signals received, expected %d", who, nseen - *next, n);
	*next = nseen;
}

static void *work(void *arg)
{
	char byte;
	ssize_t n;
	sigset_t want;
	int next;
	pid_t tid;

	(void)arg;
	/* Blocked here at the dump (a restartable read), until main has checked its part. */
	do
		n = read(pipefd[0], &byte, 1);
	while (n < 0 && errno == EINTR);
	if (n != 1 || byte != 'g') {
		fail("thread: read() on the pipe gave %zd (%s)", n, n < 0 ? strerror(errno) : "");
		goto out;
	}
	tid = (pid_t)syscall(SYS_gettid);   /* a restore without --same-pid gives new tids */
	sigemptyset(&want);
	sigaddset(&want, SIGTRAP);
	sigaddset(&want, SIGUSR1);
	sigaddset(&want, SIGRTMIN + 3);
	expect_pending(&want, "thread");
	next = nseen;
	take(SIGTRAP);
	take(SIGUSR1);
	take(SIGRTMIN + 3);
	expect_seen(&next, tid, "thread", 3, (struct seen[]){
		{ SIGTRAP, SI_TKILL, pid, 0 },
		{ SIGUSR1, SI_TKILL, pid, 0 },
		{ SIGRTMIN + 3, SI_QUEUE, pid, 301 },
	});
out:
	if (write(backfd[1], "d", 1) != 1)
		fail("thread: write: %s", strerror(errno));
	return NULL;
}

static void setup_pending(void)
{
	sigset_t blocked;
	union sigval v;

	install(SIGTRAP);
	install(SIGUSR1);
	install(SIGRTMIN + 2);
	install(SIGRTMIN + 3);
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGTRAP);
	sigaddset(&blocked, SIGUSR1);
	sigaddset(&blocked, SIGRTMIN + 2);
	sigaddset(&blocked, SIGRTMIN + 3);
	if (sigprocmask(SIG_BLOCK, &blocked, NULL))
		die("sigprocmask");
	if (pipe(pipefd) || pipe(backfd))
		die("pipe");
	if (pthread_create(&worker, NULL, work, NULL))
		die("pthread_create");
	if (kill(pid, SIGTRAP))
		die("kill");
	v.sival_int = 201;
	if (sigqueue(pid, SIGRTMIN + 2, v))
		die("sigqueue");
	v.sival_int = 202;
	if (sigqueue(pid, SIGRTMIN + 2, v))
		die("sigqueue");
	if (pthread_kill(worker, SIGTRAP) || pthread_kill(worker, SIGUSR1))
		die("pthread_kill");
	v.sival_int = 301;
	if (pthread_sigqueue(worker, SIGRTMIN + 3, v))
		die("pthread_sigqueue");
}

static void check_pending(void)
{
	sigset_t want;
	int next = nseen;
	char byte;
	pid_t tid = (pid_t)syscall(SYS_gettid);

	int handled[] = { SIGTRAP, SIGUSR1, SIGRTMIN + 2, SIGRTMIN + 3 };

	for (unsigned i = 0; i < sizeof(handled) / sizeof(handled[0]); i++)
		expect_handler(handled[i], (void *)on_signal, SA_SIGINFO | SA_RESTART);
	sigemptyset(&want);
	sigaddset(&want, SIGTRAP);
	sigaddset(&want, SIGRTMIN + 2);
	expect_pending(&want, "process");
	take(SIGTRAP);
	take(SIGRTMIN + 2);
	expect_seen(&next, tid, "process", 3, (struct seen[]){
		{ SIGTRAP, SI_USER, pid, 0 },
		{ SIGRTMIN + 2, SI_QUEUE, pid, 201 },
		{ SIGRTMIN + 2, SI_QUEUE, pid, 202 },
	});
	if (write(pipefd[1], "g", 1) != 1)
		fail("write: %s", strerror(errno));
	if (read(backfd[0], &byte, 1) != 1)
		fail("read: %s", strerror(errno));
	pthread_join(worker, NULL);
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "pending";
	struct itimerval it = { .it_value = { .tv_sec = 100000 } };
	sigset_t trap;
	int next;

	pid = getpid();
	if (!strcmp(mode, "pending")) {
		setup_pending();
	} else if (!strcmp(mode, "timer")) {
		install(SIGTRAP);
		if (setitimer(ITIMER_REAL, &it, NULL))
			die("setitimer");
	} else if (!strcmp(mode, "ignored")) {
		struct sigaction ign = { .sa_handler = SIG_IGN };

		if (sigaction(SIGTRAP, &ign, NULL))
			die("sigaction");
	} else {
		printf("usage: zdtm_sigtrap pending|timer|ignored\n");
		return 2;
	}

	ready_then_wait(SIGUSR2);

	if (!strcmp(mode, "pending"))
		check_pending();
	if (!strcmp(mode, "timer")) {
		expect_handler(SIGTRAP, (void *)on_signal, SA_SIGINFO | SA_RESTART);
		if (getitimer(ITIMER_REAL, &it) || it.it_value.tv_sec < 100000 - 600)
			fail("ITIMER_REAL has %ld s left", (long)it.it_value.tv_sec);
	}
	if (!strcmp(mode, "ignored"))
		expect_handler(SIGTRAP, (void *)SIG_IGN, 0);
	/* A SIGTRAP now: the handler (pending, timer) or nothing (ignored); SIG_DFL would dump core. */
	sigemptyset(&trap);
	sigaddset(&trap, SIGTRAP);
	if (sigprocmask(SIG_UNBLOCK, &trap, NULL))
		fail("sigprocmask: %s", strerror(errno));
	next = nseen;
	if (raise(SIGTRAP))
		fail("raise: %s", strerror(errno));
	if (!strcmp(mode, "ignored")) {
		if (nseen != next)
			fail("an ignored SIGTRAP reached a handler");
	} else {
		expect_seen(&next, (pid_t)syscall(SYS_gettid), "raise", 1,
			    (struct seen[]){ { SIGTRAP, SI_TKILL, getpid(), 0 } });
	}
	return finish();
}
