/*
 * seccomp_threads: seccomp filters that differ from thread to thread, checked
 * by the process itself (a zdtm-style target for per-thread seccomp restore).
 *
 *   seccomp_threads one|two|deny|strict
 *
 *   one  thread 1 alone sets no_new_privs and installs filter A (sysinfo(2)
 *        fails with EPERM); the leader and thread 2 have no filter at all, so
 *        /proc/PID/status of the process says "Seccomp: 0".
 *   two  the leader sets no_new_privs, starts two threads, then installs
 *        filter C (the nonexistent syscall 1001 fails with EPERM instead of
 *        ENOSYS) with SECCOMP_FILTER_FLAG_TSYNC, so that every thread shares
 *        it; thread 1 adds filter A, thread 2 adds filter B (uname(2) fails with
 *        EACCES) with SECCOMP_FILTER_FLAG_LOG.
 *   deny   the leader sets no_new_privs and installs filter K, which kills the
 *        process at membarrier(2), getitimer(2) and prctl(2), before it starts
 *        the threads (they inherit it): syscalls a checkpointer injects, which
 *        it must keep from the filter (PTRACE_O_SUSPEND_SECCOMP).
 *   strict the process (one thread) enters seccomp strict mode after "ready":
 *        from then on it may only read, write and exit.  It answers each
 *        line on stdin with "ok" (raw read/write) and exits at EOF.
 *
 * Each thread checks its own view: which of the three syscalls fail and how,
 * and its Seccomp, Seccomp_filters and NoNewPrivs lines in
 * /proc/thread-self/status.
 *
 * Prints "ready PID", then answers commands on stdin, one per line:
 *   check  -> "ok" when every thread sees what it must, else "err what"
 *   tids   -> "ok LEADER T1 T2"
 * At EOF on stdin (a restored copy gets ckpt's /dev/null) it waits for
 * SIGUSR1; then it runs the checks, and in mode two also shows that filter C
 * is one filter shared by the threads, not a copy per thread: thread 2 ends,
 * and thread 1 installs filter D (syscall 1002 fails with EPERM) with TSYNC,
 * which the kernel allows only when the leader's filters are an ancestor of
 * thread 1's (kernel/seccomp.c is_ancestor); the leader must then have thread
 * 1's whole chain (C, A, D).
 * Prints "PASS" and exits 0, or "FAIL: what" and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <unistd.h>

#define NR_C 1001
#define NR_D 1002
#define NTHREADS 2

enum { F_C = 1, F_A = 2, F_B = 4, F_D = 8, F_K = 16 };

static int mode_one, mode_two;
static volatile sig_atomic_t go;
static pid_t tids[NTHREADS + 1];

/* One request at a time to one worker: run the check (or an action) and answer. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int request[NTHREADS + 1];      /* 0 none, 1 check, 2 exit, 3 install D with TSYNC */
static int done[NTHREADS + 1];
static char answer[NTHREADS + 1][256];
static int expected[NTHREADS + 1];     /* F_* filters each thread must have */
static int nnp_expected[NTHREADS + 1];

static void on_usr1(int sig)
{
	(void)sig;
	go = 1;
}

static long install(int nr, int err, unsigned int flags)
{
	unsigned int action = err < 0 ? SECCOMP_RET_KILL_PROCESS : SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA);
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, action),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(filter) / sizeof(filter[0]), .filter = filter };

	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

/* Filter K: kill the process at any of three syscalls a checkpointer injects. */
static long install_k(void)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_membarrier, 3, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getitimer, 2, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_prctl, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
	};
	struct sock_fprog prog = { .len = sizeof(filter) / sizeof(filter[0]), .filter = filter };

	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

static int status_field(const char *name)
{
	char line[256];
	size_t len = strlen(name);
	int value = -1;
	FILE *f = fopen("/proc/thread-self/status", "r");

	if (!f)
		return -2;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, name, len) && line[len] == ':')
			value = atoi(line + len + 1);
	fclose(f);
	return value;
}

/* NULL-terminated description of what is wrong in the calling thread, or "" when all is well. */
static void check_self(int index, char *out, size_t size)
{
	int want = expected[index], filters = 0, r, e;
	struct sysinfo si;
	struct utsname un;

	out[0] = '\0';
	errno = 0;
	r = syscall(NR_C);
	e = errno;
	if (want & F_C ? (r != -1 || e != EPERM) : (r != -1 || e != ENOSYS))
		snprintf(out, size, "thread %d: syscall %d gave %d/%s", index, NR_C, r, strerror(e));
	errno = 0;
	r = sysinfo(&si);
	e = errno;
	if (!out[0] && (want & F_A ? (r != -1 || e != EPERM) : r != 0))
		snprintf(out, size, "thread %d: sysinfo gave %d/%s", index, r, strerror(e));
	errno = 0;
	r = uname(&un);
	e = errno;
	if (!out[0] && (want & F_B ? (r != -1 || e != EACCES) : r != 0))
		snprintf(out, size, "thread %d: uname gave %d/%s", index, r, strerror(e));
	errno = 0;
	r = syscall(NR_D);
	e = errno;
	if (!out[0] && (want & F_D ? (r != -1 || e != EPERM) : (r != -1 || e != ENOSYS)))
		snprintf(out, size, "thread %d: syscall %d gave %d/%s", index, NR_D, r, strerror(e));
	for (r = F_C; r <= F_K; r <<= 1)
		filters += !!(want & r);
	if (!out[0] && status_field("Seccomp") != (filters ? 2 : 0))
		snprintf(out, size, "thread %d: Seccomp: %d, expected %d", index, status_field("Seccomp"),
			 filters ? 2 : 0);
	if (!out[0] && status_field("Seccomp_filters") != filters)
		snprintf(out, size, "thread %d: Seccomp_filters: %d, expected %d", index,
			 status_field("Seccomp_filters"), filters);
	if (!out[0] && status_field("NoNewPrivs") != nnp_expected[index])
		snprintf(out, size, "thread %d: NoNewPrivs: %d, expected %d", index, status_field("NoNewPrivs"),
			 nnp_expected[index]);
}

static void *worker(void *arg)
{
	int index = (int)(long)arg, what;
	long r;

	tids[index] = (pid_t)syscall(SYS_gettid);
	if (mode_one && index == 1) {
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || install(SYS_sysinfo, EPERM, 0)) {
			perror("thread 1 filter");
			exit(2);
		}
	}
	pthread_mutex_lock(&lock);
	done[index] = 1;
	pthread_cond_broadcast(&cond);
	for (;;) {
		while (!request[index])
			pthread_cond_wait(&cond, &lock);
		what = request[index];
		request[index] = 0;
		pthread_mutex_unlock(&lock);
		answer[index][0] = '\0';
		if (what == 1) {
			check_self(index, answer[index], sizeof(answer[index]));
		} else if (what == 3) {
			r = install(NR_D, EPERM, SECCOMP_FILTER_FLAG_TSYNC);
			if (r)
				snprintf(answer[index], sizeof(answer[index]),
					 "thread %d: TSYNC of filter D gave %ld/%s: the filters are not shared",
					 index, r, r < 0 ? strerror(errno) : "the tid of a thread that differs");
		} else if (mode_two) {
			/* What each thread adds on top of the shared filter C. */
			if (index == 1 && install(SYS_sysinfo, EPERM, 0))
				snprintf(answer[index], sizeof(answer[index]), "filter A: %s", strerror(errno));
			if (index == 2 && install(SYS_uname, EACCES, SECCOMP_FILTER_FLAG_LOG))
				snprintf(answer[index], sizeof(answer[index]), "filter B: %s", strerror(errno));
		}
		pthread_mutex_lock(&lock);
		done[index] = 1;
		pthread_cond_broadcast(&cond);
		if (what == 2) {
			pthread_mutex_unlock(&lock);
			return NULL;
		}
	}
}

/* Ask thread ``index`` (0: the leader itself) to do ``what``; its answer ("" when fine). */
static const char *ask(int index, int what)
{
	if (index == 0) {
		answer[0][0] = '\0';
		check_self(0, answer[0], sizeof(answer[0]));
		return answer[0];
	}
	pthread_mutex_lock(&lock);
	done[index] = 0;
	request[index] = what;
	pthread_cond_broadcast(&cond);
	while (!done[index])
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	return answer[index];
}

static const char *check_all(void)
{
	const char *what;
	int i;

	for (i = 0; i <= NTHREADS; i++) {
		what = ask(i, 1);
		if (what[0])
			return what;
	}
	return NULL;
}

/* Strict mode: read, write, exit and sigreturn only (kernel/seccomp.c mode1_syscalls). */
static int strict_mode(void)
{
	char buf[64];

	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0))
		return 2;
	while (read(0, buf, sizeof(buf)) > 0)
		if (write(1, "ok\n", 3) != 3)
			break;
	syscall(SYS_exit, 0);
	return 0;
}

int main(int argc, char **argv)
{
	pthread_t threads[NTHREADS];
	struct sigaction sa;
	char line[64];
	const char *what;
	int i;

	if (argc != 2 || (strcmp(argv[1], "one") && strcmp(argv[1], "two") && strcmp(argv[1], "deny") &&
			  strcmp(argv[1], "strict"))) {
		fprintf(stderr, "usage: seccomp_threads one|two|deny|strict\n");
		return 2;
	}
	if (!strcmp(argv[1], "strict"))
		return strict_mode();
	mode_one = !strcmp(argv[1], "one");
	mode_two = !strcmp(argv[1], "two");
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	tids[0] = getpid();
	if ((mode_two || !strcmp(argv[1], "deny")) && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) {
		perror("PR_SET_NO_NEW_PRIVS");
		return 2;
	}
	if (!strcmp(argv[1], "deny")) {
		if (install_k()) {
			perror("filter K");
			return 2;
		}
		for (i = 0; i <= NTHREADS; i++) {
			expected[i] = F_K;
			nnp_expected[i] = 1;
		}
	}
	for (i = 1; i <= NTHREADS; i++) {
		if (pthread_create(&threads[i - 1], NULL, worker, (void *)(long)i)) {
			perror("pthread_create");
			return 2;
		}
		pthread_mutex_lock(&lock);
		while (!done[i])
			pthread_cond_wait(&cond, &lock);
		pthread_mutex_unlock(&lock);
	}
	if (mode_two) {
		if (install(NR_C, EPERM, SECCOMP_FILTER_FLAG_TSYNC)) {
			perror("filter C");
			return 2;
		}
		for (i = 1; i <= NTHREADS; i++) {
			what = ask(i, 4);
			if (what[0]) {
				fprintf(stderr, "%s\n", what);
				return 2;
			}
		}
		expected[0] = F_C;
		expected[1] = F_C | F_A;
		expected[2] = F_C | F_B;
		nnp_expected[0] = nnp_expected[1] = nnp_expected[2] = 1;
	} else if (mode_one) {
		expected[1] = F_A;
		nnp_expected[1] = 1;
	}
	what = check_all();
	if (what) {
		fprintf(stderr, "setup: %s\n", what);
		return 2;
	}

	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		if (!strcmp(line, "check\n")) {
			what = check_all();
			printf(what ? "err %s\n" : "ok\n", what);
		} else if (!strcmp(line, "tids\n")) {
			printf("ok %d %d %d\n", (int)tids[0], (int)tids[1], (int)tids[2]);
		} else {
			printf("err unknown command\n");
		}
		fflush(stdout);
	}
	while (!go)
		pause();
	what = check_all();
	if (!what && mode_two) {
		ask(2, 2);
		pthread_join(threads[1], NULL);
		what = ask(1, 3);
		if (!what[0]) {
			/* TSYNC gives every thread the caller's whole chain: C, A, D. */
			expected[1] |= F_D;
			expected[0] = expected[1];
			what = ask(0, 1);
			if (!what[0])
				what = ask(1, 1);
		}
		if (!what[0])
			what = NULL;
	}
	if (what) {
		printf("FAIL: %s\n", what);
		fflush(stdout);
		return 1;
	}
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
