/*
 * sigqueue_target: checks that every realtime signal sent to it arrives once,
 * in order, with its own siginfo.
 *
 *   sigqueue_target
 *
 * Prints "ready PID".  Commands on stdin, one per line:
 *   block      block SIGRTMIN (signals sent from now on stay queued)
 *   unblock    unblock it (the queued ones are delivered now)
 *   report     print "ok COUNT ERRORS LAST" and go on
 * The handler (SA_SIGINFO) expects si_code SI_QUEUE, si_pid = the pid given by
 * "sender PID", and si_value.sival_int = 1, 2, 3... in order; anything else
 * counts as an error (the first one is printed as "error ...").
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile long count, errors, last;
static volatile int sender;
static char first_error[128];

static void on_rt(int sig, siginfo_t *info, void *ctx)
{
	long value = info->si_value.sival_int;
	(void)sig;
	(void)ctx;
	if (info->si_code != SI_QUEUE || (sender && info->si_pid != sender) || value != last + 1) {
		if (!errors)
			snprintf(first_error, sizeof(first_error), "code %d pid %d value %ld after %ld",
				 info->si_code, info->si_pid, value, (long)last);
		errors++;
	}
	last = value;
	count++;
}

int main(void)
{
	struct sigaction sa;
	sigset_t set;
	char line[64];

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_rt;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIGRTMIN, &sa, NULL);
	sigemptyset(&set);
	sigaddset(&set, SIGRTMIN);
	printf("ready %d\n", getpid());
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		if (!strncmp(line, "block", 5)) {
			sigprocmask(SIG_BLOCK, &set, NULL);
			printf("ok\n");
		} else if (!strncmp(line, "unblock", 7)) {
			sigprocmask(SIG_UNBLOCK, &set, NULL);
			printf("ok\n");
		} else if (!strncmp(line, "sender ", 7)) {
			sender = atoi(line + 7);
			printf("ok\n");
		} else if (!strncmp(line, "report", 6)) {
			if (errors)
				printf("error %s\n", first_error);
			printf("ok %ld %ld %ld\n", (long)count, (long)errors, (long)last);
		} else {
			printf("err unknown command\n");
		}
		fflush(stdout);
	}
	return 0;
}
