/*
 * vfork_parent: a process whose only thread waits, uninterruptibly, for a vfork
 * child (kernel/fork.c wait_for_vfork_done): PTRACE_INTERRUPT cannot stop it.
 *
 *   vfork_parent SECONDS
 *
 * Prints "ready PID", vforks; the child sleeps SECONDS and exits; the parent
 * then prints "done" and blocks in read(2) on stdin (exits 0 at end of input).
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	unsigned seconds = argc > 1 ? (unsigned)atoi(argv[1]) : 3;
	char buf[16];

	printf("ready %d\n", getpid());
	fflush(stdout);
	if (vfork() == 0) {
		sleep(seconds);
		_exit(0);
	}
	printf("done\n");
	fflush(stdout);
	while (read(0, buf, sizeof(buf)) > 0)
		;
	return 0;
}
