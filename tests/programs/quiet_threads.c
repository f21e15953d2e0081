/*
 * quiet_threads: a multi-threaded target that sits still, for tests that compare
 * every register, mask, fd and byte of a target before and after ckpt worked on it.
 *
 *   quiet_threads NTHREADS
 *
 * Installs an SA_SIGINFO handler for most signals (many sigactions for a dump to
 * read), blocks SIGRTMIN+1 in every thread, then starts NTHREADS threads that each
 * block forever in a different kind of interruptible syscall: pause()
 * (-ERESTARTNOHAND), futex wait (-ERESTARTSYS), read(2) on stdin, which the
 * tests never write to (-ERESTARTSYS) and clock_nanosleep (-ERESTART_RESTARTBLOCK; no remaining-time
 * argument, whose update would change memory at every interruption).
 * Prints "ready PID" and blocks in read(2) on stdin; exits 0 at end of input.
 * If a handler ever runs, it prints "signal N" (nothing should send it any); if a
 * sleep fails with EINTR (which only a handler may cause), it prints "eintr".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int futex_word;

static void on_signal(int sig, siginfo_t *info, void *ctx)
{
	char line[32];
	int n = snprintf(line, sizeof(line), "signal %d\n", sig);
	(void)info;
	(void)ctx;
	write(1, line, n);
}

static void *blocker(void *arg)
{
	long kind = (long)arg % 4;
	char c;
	struct timespec t = {1000000, 0};

	for (;;) {
		switch (kind) {
		case 0:
			pause();
			break;
		case 1:
			syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
			break;
		case 2:
			if (read(0, &c, 1) == 0)  /* stdin, like the main thread */
				pause();
			break;
		default:
			/* Without a signal handler run, a sleep never fails with EINTR. */
			if (clock_nanosleep(CLOCK_MONOTONIC, 0, &t, NULL) == EINTR)
				write(1, "eintr\n", 6);
			break;
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 4;
	struct sigaction sa;
	sigset_t blocked;
	char buf[64];

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_signal;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	for (int sig = 1; sig < SIGRTMIN; sig++)
		if (sig != SIGKILL && sig != SIGSTOP && sig != SIGCHLD && sig != SIGPIPE)
			sigaction(sig, &sa, NULL);
	for (int sig = SIGRTMIN; sig <= SIGRTMAX; sig += 2)
		sigaction(sig, &sa, NULL);
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGRTMIN + 1);
	pthread_sigmask(SIG_BLOCK, &blocked, NULL);
	for (long i = 0; i < n; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, blocker, (void *)i))
			return 3;
	}
	printf("ready %d\n", getpid());
	fflush(stdout);
	while (read(0, buf, sizeof(buf)) > 0)
		;
	return 0;
}
