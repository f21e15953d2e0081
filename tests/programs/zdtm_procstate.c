/*
 * zdtm_procstate: scheduling, prctl state and oom_score_adj that must survive
 * a checkpoint, per thread where the kernel keeps them per thread.
 *
 *   zdtm_procstate [-s] [-p] [-d] [-o ADJ] [-x] [-c]
 *
 * Three threads (main, "rt" and "nice"), set up as asked; prints "ready PID",
 * waits for SIGUSR1, then every thread checks its own state (printing "FAIL:
 * what" per problem; "PASS" and exit 0 when all is well, exit 1 otherwise):
 *
 *   -s  main: SCHED_BATCH, nice 2; rt: nice 3, then SCHED_FIFO priority 10
 *       (the nice value stays underneath: getpriority() still shows it);
 *       nice: SCHED_OTHER, nice 5, SCHED_FLAG_RESET_ON_FORK.  (Needs
 *       CAP_SYS_NICE or an RLIMIT_RTPRIO of 10.)
 *   -p  the process is a child subreaper, has THP disabled except where
 *       advised (PR_SET_THP_DISABLE with PR_THP_DISABLE_EXCEPT_ADVISED, Linux
 *       6.18), and timer slack 200000 ns in main, 123456 ns in "nice" (an RT
 *       thread's slack is 0: kernel/sched/syscalls.c __setscheduler_params);
 *       "nice" alone has no_new_privs (a per-thread flag).
 *   -d  not dumpable (PR_SET_DUMPABLE 0).
 *   -o  /proc/self/oom_score_adj = ADJ.
 *   -x  per thread: main runs on CPU 1 only, best-effort I/O level 6, asks for
 *       SIGWINCH at its parent's death; nice runs on CPU 0, idle I/O class,
 *       SIGURG at its parent's death (both ignored by default: a restore that
 *       outlives its caller's thread is not killed by them).  Per process:
 *       securebits NO_SETUID_FIXUP | NO_CAP_AMBIENT_RAISE (set before the
 *       threads: they are per thread), memory-deny-write-execute, KSM merge-any,
 *       coredump_filter 0x7.  (Needs root: CAP_SETPCAP.)
 *   -c  the "nice" thread alone changes its saved gid to 1 with a raw
 *       setresgid syscall: credentials of its own, which a restore refuses.
 *
 * Without options nothing is changed and everything is checked to be the
 * default (SCHED_OTHER, nice 0, slack 50000, no subreaper, THP allowed,
 * dumpable, oom_score_adj 0, no parent-death signal, no securebits, MDWE or
 * KSM merge-any).
 *
 * SIGUSR2 (any number of times before SIGUSR1) runs the same checks without
 * exiting and prints the FAIL lines and "unsteady", or "steady": a dump of
 * the running process must change nothing.
 *
 * ZDTM_CORRUPT=NAME (read after SIGUSR1) damages one piece before the checks,
 * which must then fail: policy rtprio nice resetonfork subreaper thp slack
 * nnp dumpable oom affinity ioprio pdeathsig securebits ksm coredump.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_THP_DISABLE_EXCEPT_ADVISED
#define PR_THP_DISABLE_EXCEPT_ADVISED (1 << 1)
#endif
#define SCHED_FLAG_RESET_ON_FORK 1
#define DEFAULT_SLACK 50000
#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#endif
#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif
#define MDWE_REFUSE_EXEC_GAIN 1
#define SECBIT_NO_SETUID_FIXUP_BIT (1 << 2)
#define SECBIT_NO_CAP_AMBIENT_RAISE_BIT (1 << 6)
#define EXTRA_SECUREBITS (SECBIT_NO_SETUID_FIXUP_BIT | SECBIT_NO_CAP_AMBIENT_RAISE_BIT)
#define IOPRIO_WHO_PROCESS 1
#define IOPRIO_VALUE(class, level) (((class) << 13) | (level))
#define EXTRA_COREDUMP_FILTER 0x7

struct sched_attr_v1 {
	uint32_t size, policy;
	uint64_t flags;
	int32_t nice;
	uint32_t priority;
	uint64_t runtime, deadline, period;
};

struct want {
	const char *name;
	int policy, priority, nice, flags;
	long slack;
	int nnp;
	int cpu;          /* the one CPU it is bound to; -1: not bound */
	int ioprio;       /* ioprio_get value (0: none set) */
	int pdeathsig;
};

static volatile sig_atomic_t go, probe;
static volatile int round_no;     /* each round, every thread checks itself once */
static volatile int ready_threads, checked_threads;
static int opt_sched, opt_prctl, opt_nodump, opt_oom, oom_adj, opt_extra, opt_creds;
static cpu_set_t initial_cpus;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static int failed;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;
	pthread_mutex_lock(&out_lock);
	va_start(ap, fmt);
	printf("FAIL: ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	failed = 1;
	pthread_mutex_unlock(&out_lock);
}

static void on_usr1(int sig) { (void)sig; go = 1; }
static void on_usr2(int sig) { (void)sig; probe = 1; }

static int set_attr(int policy, int priority, int nice, int flags)
{
	struct sched_attr_v1 a;
	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	a.policy = policy;
	a.priority = priority;
	a.nice = nice;
	a.flags = flags;
	return syscall(SYS_sched_setattr, 0, &a, 0);
}

static void setup(const struct want *w)
{
	if (w->nice && setpriority(PRIO_PROCESS, syscall(SYS_gettid), w->nice))
		fail("%s: setpriority(%d): %s", w->name, w->nice, strerror(errno));
	if ((w->policy || w->flags) && set_attr(w->policy, w->priority, w->nice, w->flags))
		fail("%s: sched_setattr(policy %d, priority %d): %s", w->name, w->policy, w->priority,
		     strerror(errno));
	if (w->slack != DEFAULT_SLACK && w->slack && prctl(PR_SET_TIMERSLACK, w->slack, 0, 0, 0))
		fail("%s: PR_SET_TIMERSLACK: %s", w->name, strerror(errno));
	if (w->nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		fail("%s: PR_SET_NO_NEW_PRIVS: %s", w->name, strerror(errno));
	if (w->cpu >= 0) {
		cpu_set_t one;
		CPU_ZERO(&one);
		CPU_SET(w->cpu, &one);
		if (sched_setaffinity(0, sizeof(one), &one))
			fail("%s: sched_setaffinity(CPU %d): %s", w->name, w->cpu, strerror(errno));
	}
	if (w->ioprio && syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, w->ioprio))
		fail("%s: ioprio_set(%#x): %s", w->name, w->ioprio, strerror(errno));
	if (w->pdeathsig && prctl(PR_SET_PDEATHSIG, w->pdeathsig, 0, 0, 0))
		fail("%s: PR_SET_PDEATHSIG: %s", w->name, strerror(errno));
	/* A raw syscall: glibc's setresgid would change every thread's (nptl setxid). */
	if (opt_creds && !strcmp(w->name, "nice") && syscall(SYS_setresgid, -1, -1, 1))
		fail("%s: setresgid: %s", w->name, strerror(errno));
}

static void corrupt_thread(const struct want *w, const char *what)
{
	if (!strcmp(what, "policy") && w->policy == SCHED_BATCH)
		set_attr(SCHED_OTHER, 0, w->nice, 0);
	else if (!strcmp(what, "rtprio") && w->policy == SCHED_FIFO)
		set_attr(SCHED_FIFO, w->priority + 1, 0, 0);
	else if (!strcmp(what, "nice") && w->nice == 5)
		setpriority(PRIO_PROCESS, syscall(SYS_gettid), 6);
	else if (!strcmp(what, "resetonfork") && w->flags)
		set_attr(w->policy, w->priority, w->nice, 0);
	else if (!strcmp(what, "slack") && w->slack == 123456)
		prctl(PR_SET_TIMERSLACK, 0, 0, 0, 0);
	else if (!strcmp(what, "nnp") && !w->nnp)
		prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);   /* for good: it cannot be cleared */
	else if (!strcmp(what, "affinity") && w->cpu >= 0)
		sched_setaffinity(0, sizeof(initial_cpus), &initial_cpus);
	else if (!strcmp(what, "ioprio") && w->ioprio)
		syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_VALUE(2, 0));
	else if (!strcmp(what, "pdeathsig") && w->pdeathsig)
		prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0);
}

static void check_thread_extra(const struct want *w)
{
	cpu_set_t cpus;
	int sig = -1, prio;

	if (sched_getaffinity(0, sizeof(cpus), &cpus))
		fail("%s: sched_getaffinity: %s", w->name, strerror(errno));
	else if (w->cpu >= 0 && (CPU_COUNT(&cpus) != 1 || !CPU_ISSET(w->cpu, &cpus)))
		fail("%s: runs on %d CPUs, not CPU %d alone", w->name, CPU_COUNT(&cpus), w->cpu);
	else if (w->cpu < 0 && !CPU_EQUAL(&cpus, &initial_cpus))
		fail("%s: runs on %d CPUs, not the %d it started with", w->name, CPU_COUNT(&cpus),
		     CPU_COUNT(&initial_cpus));
	prio = syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0);
	if (prio != w->ioprio)
		fail("%s: I/O priority %#x, not %#x", w->name, prio, w->ioprio);
	prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0);
	if (sig != w->pdeathsig)
		fail("%s: parent-death signal %d, not %d", w->name, sig, w->pdeathsig);
}

static void check_thread(const struct want *w)
{
	struct sched_attr_v1 a;
	int nice;
	long slack;
	const char *damage = go ? getenv("ZDTM_CORRUPT") : NULL;

	if (damage)
		corrupt_thread(w, damage);
	memset(&a, 0, sizeof(a));
	if (syscall(SYS_sched_getattr, 0, &a, sizeof(a), 0)) {
		fail("%s: sched_getattr: %s", w->name, strerror(errno));
		return;
	}
	if ((int)a.policy != w->policy || (int)a.priority != w->priority)
		fail("%s: policy %u priority %u, not %d %d", w->name, a.policy, a.priority, w->policy, w->priority);
	if ((int)(a.flags & SCHED_FLAG_RESET_ON_FORK) != w->flags)
		fail("%s: sched flags %#lx, wanted reset-on-fork %d", w->name, (unsigned long)a.flags, w->flags);
	errno = 0;
	nice = getpriority(PRIO_PROCESS, syscall(SYS_gettid));
	if (errno || nice != w->nice)
		fail("%s: nice %d, not %d", w->name, nice, w->nice);
	slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
	if (slack != w->slack)
		fail("%s: timer slack %ld ns, not %ld", w->name, slack, w->slack);
	if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != w->nnp)
		fail("%s: no_new_privs %d, not %d", w->name, (int)prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), w->nnp);
	check_thread_extra(w);
}

static void *thread_main(void *arg)
{
	const struct want *w = arg;
	struct timespec pause_ts = {0, 10000000};
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, NULL);
	prctl(PR_SET_NAME, w->name, 0, 0, 0);
	setup(w);
	__atomic_add_fetch(&ready_threads, 1, __ATOMIC_SEQ_CST);
	for (int done = 0;; done++) {
		while (round_no == done)
			nanosleep(&pause_ts, NULL);
		check_thread(w);
		__atomic_add_fetch(&checked_threads, 1, __ATOMIC_SEQ_CST);
	}
	return NULL;
}

/* A number in /proc/self/NAME (base 10 or 16); -10000 when it cannot be read. */
static long read_proc_self(const char *name, int base)
{
	char path[64], buf[32] = "";
	int fd;

	snprintf(path, sizeof(path), "/proc/self/%s", name);
	fd = open(path, O_RDONLY);
	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) < 0)
		return -10000;
	close(fd);
	return strtol(buf, NULL, base);
}

static int write_proc_self(const char *name, const char *fmt, long value)
{
	char path[64], buf[32];
	int fd, n, ok;

	snprintf(path, sizeof(path), "/proc/self/%s", name);
	fd = open(path, O_WRONLY);
	n = snprintf(buf, sizeof(buf), fmt, value);
	ok = fd >= 0 && write(fd, buf, n) == n;
	if (fd >= 0)
		close(fd);
	return ok ? 0 : -1;
}

static int read_oom(void) { return read_proc_self("oom_score_adj", 10); }
static int write_oom(int adj) { return write_proc_self("oom_score_adj", "%ld", adj); }
static long read_coredump_filter(void) { return read_proc_self("coredump_filter", 16); }
static int write_coredump_filter(long value) { return write_proc_self("coredump_filter", "%#lx", value); }

static long initial_coredump_filter;

static void check_process_extra(void)
{
	long bits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
	long mdwe = prctl(PR_GET_MDWE, 0, 0, 0, 0);
	long merge = prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0);
	long core = read_coredump_filter();

	if (bits != (opt_extra ? EXTRA_SECUREBITS : 0))
		fail("securebits %#lx, not %#x", bits, opt_extra ? EXTRA_SECUREBITS : 0);
	if (mdwe != (opt_extra ? MDWE_REFUSE_EXEC_GAIN : 0))
		fail("PR_GET_MDWE %ld, not %d", mdwe, opt_extra ? MDWE_REFUSE_EXEC_GAIN : 0);
	if (merge != opt_extra)
		fail("PR_GET_MEMORY_MERGE %ld, not %d", merge, opt_extra);
	if (core != (opt_extra ? EXTRA_COREDUMP_FILTER : initial_coredump_filter))
		fail("coredump_filter %#lx, not %#lx", core, opt_extra ? EXTRA_COREDUMP_FILTER : initial_coredump_filter);
}

/* One round: every thread checks itself, then the process-wide state. */
static void check_all(const struct want *main_w)
{
	struct timespec pause_ts = {0, 10000000};
	int subreaper = -1, thp, dumpable, target = 2 * (round_no + 1);

	round_no++;
	check_thread(main_w);
	while (checked_threads < target)
		nanosleep(&pause_ts, NULL);
	prctl(PR_GET_CHILD_SUBREAPER, &subreaper, 0, 0, 0);
	if (subreaper != opt_prctl)
		fail("child subreaper %d, not %d", subreaper, opt_prctl);
	thp = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
	if (thp != (opt_prctl ? 1 | PR_THP_DISABLE_EXCEPT_ADVISED : 0))
		fail("PR_GET_THP_DISABLE %d, not %d", thp, opt_prctl ? 1 | PR_THP_DISABLE_EXCEPT_ADVISED : 0);
	dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
	if (dumpable != !opt_nodump)
		fail("dumpable %d, not %d", dumpable, !opt_nodump);
	if (read_oom() != (opt_oom ? oom_adj : 0))
		fail("oom_score_adj %d, not %d", read_oom(), opt_oom ? oom_adj : 0);
	check_process_extra();
}

int main(int argc, char **argv)
{
	struct want main_w = {"main", SCHED_OTHER, 0, 0, 0, DEFAULT_SLACK, 0, -1, 0, 0};
	struct want rt_w = {"rt", SCHED_OTHER, 0, 0, 0, DEFAULT_SLACK, 0, -1, 0, 0};
	struct want nice_w = {"nice", SCHED_OTHER, 0, 0, 0, DEFAULT_SLACK, 0, -1, 0, 0};
	pthread_t rt, nc;
	int opt;
	struct timespec pause_ts = {0, 10000000};
	const char *damage;

	while ((opt = getopt(argc, argv, "spdo:xc")) != -1) {
		if (opt == 'x')
			opt_extra = 1;
		else if (opt == 'c')
			opt_creds = 1;
		else if (opt == 's')
			opt_sched = 1;
		else if (opt == 'p')
			opt_prctl = 1;
		else if (opt == 'd')
			opt_nodump = 1;
		else if (opt == 'o') {
			opt_oom = 1;
			oom_adj = atoi(optarg);
		} else
			return 2;
	}
	if (opt_sched) {
		main_w.policy = SCHED_BATCH;
		main_w.nice = 2;
		rt_w.policy = SCHED_FIFO;
		rt_w.priority = 10;
		rt_w.nice = 3;
		nice_w.nice = 5;
		nice_w.flags = SCHED_FLAG_RESET_ON_FORK;
		rt_w.slack = 0;   /* RT threads have no timer slack */
	}
	if (opt_prctl) {
		main_w.slack = 200000;
		nice_w.slack = 123456;
		nice_w.nnp = 1;
		if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) ||
		    prctl(PR_SET_THP_DISABLE, 1, PR_THP_DISABLE_EXCEPT_ADVISED, 0, 0)) {
			fprintf(stderr, "prctl: %s\n", strerror(errno));
			return 2;
		}
	}
	sched_getaffinity(0, sizeof(initial_cpus), &initial_cpus);
	initial_coredump_filter = read_coredump_filter();
	if (opt_extra) {
		main_w.cpu = 1;
		main_w.ioprio = IOPRIO_VALUE(2, 6);
		main_w.pdeathsig = SIGWINCH;
		nice_w.cpu = 0;
		nice_w.ioprio = IOPRIO_VALUE(3, 0);
		nice_w.pdeathsig = SIGURG;
		/* Securebits are per thread (struct cred): set before the threads exist. */
		if (prctl(PR_SET_SECUREBITS, EXTRA_SECUREBITS, 0, 0, 0) ||
		    prctl(PR_SET_MDWE, MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) ||
		    prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) || write_coredump_filter(EXTRA_COREDUMP_FILTER)) {
			fprintf(stderr, "securebits/MDWE/KSM/coredump_filter: %s\n", strerror(errno));
			return 2;
		}
	}
	if (opt_nodump)
		prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	if (opt_oom && write_oom(oom_adj)) {
		fprintf(stderr, "oom_score_adj %d: %s\n", oom_adj, strerror(errno));
		return 2;
	}
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	pthread_create(&rt, NULL, thread_main, &rt_w);
	pthread_create(&nc, NULL, thread_main, &nice_w);
	setup(&main_w);
	while (ready_threads < 2)
		nanosleep(&pause_ts, NULL);
	if (failed)
		return 2;
	printf("ready %d\n", getpid());
	fflush(stdout);
	for (;;) {
		while (!go && !probe)
			pause();
		if (!probe)
			break;
		probe = 0;
		check_all(&main_w);
		printf("%s\n", failed ? "unsteady" : "steady");
		fflush(stdout);
		failed = 0;
	}
	damage = getenv("ZDTM_CORRUPT");
	if (damage) {
		if (!strcmp(damage, "subreaper"))
			prctl(PR_SET_CHILD_SUBREAPER, !opt_prctl, 0, 0, 0);
		else if (!strcmp(damage, "thp"))
			prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0);
		else if (!strcmp(damage, "dumpable"))
			prctl(PR_SET_DUMPABLE, opt_nodump, 0, 0, 0);
		else if (!strcmp(damage, "oom"))
			write_oom(oom_adj + 1);
		else if (!strcmp(damage, "securebits"))
			prctl(PR_SET_SECUREBITS, EXTRA_SECUREBITS | 1, 0, 0, 0);
		else if (!strcmp(damage, "ksm"))
			prctl(PR_SET_MEMORY_MERGE, 0, 0, 0, 0);
		else if (!strcmp(damage, "coredump"))
			write_coredump_filter(0x33);
	}
	check_all(&main_w);
	if (!failed)
		printf("PASS\n");
	fflush(stdout);
	return failed;
}
