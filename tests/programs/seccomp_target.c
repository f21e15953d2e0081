/*
 * seccomp_target: a process in which userfaultfd(2) fails with ENOSYS.
 *
 * Installs a seccomp-BPF filter (after PR_SET_NO_NEW_PRIVS) that returns
 * ENOSYS for syscall 323 (userfaultfd) and allows everything else: a
 * checkpointer injecting userfaultfd into it meets a "kernel without the
 * feature" unless it suspends the filter while the target is frozen.
 *
 * Output:
 *   ready PID
 *   buffer ADDR LEN            (4 MiB whose byte i is (i * 131 + 7) mod 251)
 *   tick N                     (every 100 ms, to show that it keeps running)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define NR_USERFAULTFD 323
#define BUFFER_LEN (4UL << 20)

static int install_filter(void)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NR_USERFAULTFD, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {
		.len = sizeof(filter) / sizeof(filter[0]),
		.filter = filter,
	};

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) {
		perror("PR_SET_NO_NEW_PRIVS");
		return -1;
	}
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0)) {
		perror("PR_SET_SECCOMP");
		return -1;
	}
	return 0;
}

int main(void)
{
	struct timespec interval = { 0, 100 * 1000 * 1000 };
	unsigned char *buffer;
	unsigned long i, tick = 0;

	buffer = mmap(NULL, BUFFER_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buffer == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (i = 0; i < BUFFER_LEN; i++)
		buffer[i] = (unsigned char)((i * 131 + 7) % 251);
	if (install_filter())
		return 1;
	/* Check the filter works, so a test never passes for the wrong reason. */
	if (syscall(NR_USERFAULTFD, 0) != -1 || errno != ENOSYS) {
		fprintf(stderr, "seccomp filter did not block userfaultfd\n");
		return 1;
	}

	printf("ready %d\n", (int)getpid());
	printf("buffer %p %lu\n", (void *)buffer, BUFFER_LEN);
	fflush(stdout);
	for (;;) {
		nanosleep(&interval, NULL);
		printf("tick %lu\n", ++tick);
		fflush(stdout);
	}
}
