/*
 * zdtm_timers: interval timers and POSIX timers that must keep running, with
 * their signals, values, ids and remaining times, across a checkpoint.
 *
 *   zdtm_timers
 *
 * Sets up, prints "ready PID", then waits (`while (!go) pause();`) until
 * SIGUSR1, while every timer keeps firing:
 *
 *   - ITIMER_REAL every 250 ms (SIGALRM);
 *   - ITIMER_VIRTUAL every 50 ms of user CPU time (SIGVTALRM; the process is
 *     idle until SIGUSR1, so it has not fired yet);
 *   - ITIMER_PROF once, in 1000 s of CPU time (never fires here);
 *   - POSIX timer A: CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+1 with sival_int
 *     0x5eed1234, every 300 ms;
 *   - a POSIX timer created and deleted at once, so that the ids are sparse
 *     (A, hole, B, C: a restore that allocates ids again gets them wrong);
 *   - POSIX timer B: CLOCK_REALTIME, SIGEV_THREAD_ID to the worker thread,
 *     SIGRTMIN+2 with sival_ptr = &marker_b, every 400 ms;
 *   - POSIX timer C: CLOCK_BOOTTIME, SIGEV_NONE, once in 1000 s;
 *   - POSIX timer F: CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+3 with sival_int
 *     0xf00d, once after 1 ms, while every thread blocks SIGRTMIN+3: its signal
 *     is queued (si_code SI_TIMER) when the process is dumped, and must be
 *     delivered, with its siginfo, once unblocked after SIGUSR1;
 *   - POSIX timers D and E: SIGEV_NONE, once in 1000 s of CPU time of the
 *     worker thread (pthread_getcpuclockid: its tid is in the clock id) and of
 *     the process (clock_getcpuclockid(getpid()): the pid is in it).
 *
 * The worker thread blocks every signal but SIGRTMIN+2; the main thread
 * blocks SIGRTMIN+2.  Each handler checks its siginfo (si_code SI_TIMER, the
 * timer id, the value, the receiving thread) and counts expirations (1 +
 * si_overrun for POSIX timers).
 *
 * After SIGUSR1 it checks, printing "FAIL: what" per problem and exiting 1,
 * or "PASS" and 0 (informational lines before it: "itimer NAME VALUE_US
 * INTERVAL_US", "timer NAME ID VALUE_NS INTERVAL_NS"):
 *   - each itimer and POSIX timer has its interval, and a remaining time in
 *     (0, interval] (periodic) or (0, 1000 s] (one-shot);
 *   - the deleted id does not exist; A, B and C answer to the ids they got;
 *   - over a 1.5 s window, SIGALRM, A and B fire about as often as their
 *     intervals say, each signal with its own siginfo, B in the worker thread;
 *   - burning CPU makes SIGVTALRM fire.
 *
 * SIGUSR2 (any number of times before SIGUSR1) asks whether the timers ran
 * undisturbed since setup, as they must while the process was only dumped:
 * the expirations since setup match the time elapsed, C's and ITIMER_PROF's
 * remaining times match the time and CPU time spent, and the intervals and
 * ids are as set.  It prints the FAIL lines and "unsteady", or "steady".
 *
 * ZDTM_CORRUPT=NAME (read after SIGUSR1) damages one timer before the checks,
 * which must then fail: real virtual prof a b c d e f hole.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define REAL_US 250000L
#define VIRT_US 50000L
#define PROF_S 1000L
#define A_NS 300000000L
#define B_NS 400000000L
#define C_S 1000L
#define VALUE_A 0x5eed1234
#define VALUE_F 0xf00d
#define WINDOW_NS 1500000000L

static volatile sig_atomic_t go, probe;
static double t0_mono, t0_cpu;
static volatile long n_alrm, n_vtalrm, n_a, n_b, n_f, bad;
static char first_bad[160];
static timer_t timer_a, timer_b, timer_c, timer_d, timer_e, timer_f, hole;
static pthread_t worker;
static int marker_b;
static volatile int worker_tid;
static int failed;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("FAIL: ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	failed = 1;
}

static void note_bad(const char *what, siginfo_t *info)
{
	if (!bad)
		snprintf(first_bad, sizeof(first_bad), "%s: signo %d code %d timerid %d value %#lx", what,
			 info->si_signo, info->si_code, info->si_timerid, (unsigned long)info->si_value.sival_ptr);
	bad++;
}

static void on_usr1(int sig) { (void)sig; go = 1; }
static void on_usr2(int sig) { (void)sig; probe = 1; }

static void on_alrm(int sig, siginfo_t *info, void *ctx)
{
	(void)sig; (void)ctx;
	if (info->si_code != SI_KERNEL)
		note_bad("SIGALRM", info);
	n_alrm++;
}

static void on_vtalrm(int sig, siginfo_t *info, void *ctx)
{
	(void)sig; (void)ctx;
	if (info->si_code != SI_KERNEL)
		note_bad("SIGVTALRM", info);
	n_vtalrm++;
}

static void on_a(int sig, siginfo_t *info, void *ctx)
{
	(void)sig; (void)ctx;
	if (info->si_code != SI_TIMER || info->si_timerid != (int)(long)timer_a
	    || info->si_value.sival_int != VALUE_A || pthread_equal(pthread_self(), worker))
		note_bad("timer A", info);
	n_a += 1 + info->si_overrun;
}

static void on_b(int sig, siginfo_t *info, void *ctx)
{
	(void)sig; (void)ctx;
	if (info->si_code != SI_TIMER || info->si_timerid != (int)(long)timer_b
	    || info->si_value.sival_ptr != &marker_b || !pthread_equal(pthread_self(), worker))
		note_bad("timer B", info);
	n_b += 1 + info->si_overrun;
}

static void on_f(int sig, siginfo_t *info, void *ctx)
{
	(void)sig; (void)ctx;
	if (info->si_code != SI_TIMER || info->si_timerid != (int)(long)timer_f || info->si_value.sival_int != VALUE_F)
		note_bad("timer F", info);
	n_f++;
}

static void handle(int sig, void (*fn)(int, siginfo_t *, void *))
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = fn;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(sig, &sa, NULL);
}

static void *work(void *arg)
{
	sigset_t set;
	(void)arg;
	sigfillset(&set);
	sigdelset(&set, SIGRTMIN + 2);
	pthread_sigmask(SIG_SETMASK, &set, NULL);
	worker_tid = syscall(SYS_gettid);   /* only for timer_create: stale after a restore with new tids */
	for (;;)
		pause();
	return NULL;
}

static double now(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long tv_us(struct timeval tv) { return tv.tv_sec * 1000000L + tv.tv_usec; }
static long ts_ns(struct timespec ts) { return ts.tv_sec * 1000000000L + ts.tv_nsec; }

static void check_itimer(const char *name, int which, long interval_us, long max_us)
{
	struct itimerval it;
	if (getitimer(which, &it)) {
		fail("getitimer(%s): %s", name, strerror(errno));
		return;
	}
	printf("itimer %s %ld %ld\n", name, tv_us(it.it_value), tv_us(it.it_interval));
	if (tv_us(it.it_interval) != interval_us)
		fail("itimer %s has interval %ld us, not %ld", name, tv_us(it.it_interval), interval_us);
	if (tv_us(it.it_value) <= 0 || tv_us(it.it_value) > max_us)
		fail("itimer %s has %ld us left, outside (0, %ld]", name, tv_us(it.it_value), max_us);
}

static long check_timer(const char *name, timer_t id, long interval_ns, long max_ns)
{
	struct itimerspec its;
	if (timer_gettime(id, &its)) {
		fail("timer %s (id %ld): timer_gettime: %s", name, (long)id, strerror(errno));
		return -1;
	}
	printf("timer %s %ld %ld %ld\n", name, (long)id, ts_ns(its.it_value), ts_ns(its.it_interval));
	if (ts_ns(its.it_interval) != interval_ns)
		fail("timer %s has interval %ld ns, not %ld", name, ts_ns(its.it_interval), interval_ns);
	if (ts_ns(its.it_value) <= 0 || ts_ns(its.it_value) > max_ns)
		fail("timer %s has %ld ns left, outside (0, %ld]", name, ts_ns(its.it_value), max_ns);
	return ts_ns(its.it_value);
}

static void expect(const char *what, long got, double wanted, double slack)
{
	if (got < wanted - slack || got > wanted + slack)
		fail("%s fired %ld times, expected about %.1f", what, got, wanted);
}

static void corrupt(const char *what)
{
	struct itimerval off = {{0, 0}, {0, 0}};
	struct itimerspec its = {{0, 0}, {0, 0}};
	if (!strcmp(what, "real"))
		setitimer(ITIMER_REAL, &off, NULL);
	else if (!strcmp(what, "virtual"))
		setitimer(ITIMER_VIRTUAL, &off, NULL);
	else if (!strcmp(what, "prof"))
		setitimer(ITIMER_PROF, &off, NULL);
	else if (!strcmp(what, "a"))
		timer_settime(timer_a, 0, &its, NULL);
	else if (!strcmp(what, "b")) {
		its.it_value.tv_nsec = its.it_interval.tv_nsec = 100000000L;  /* another interval */
		timer_settime(timer_b, 0, &its, NULL);
	} else if (!strcmp(what, "c"))
		timer_delete(timer_c);
	else if (!strcmp(what, "d"))
		timer_settime(timer_d, 0, &its, NULL);
	else if (!strcmp(what, "e"))
		timer_delete(timer_e);
	else if (!strcmp(what, "f")) {
		siginfo_t info;
		sigset_t f;
		struct timespec zero = {0, 0};
		sigemptyset(&f);
		sigaddset(&f, SIGRTMIN + 3);
		sigtimedwait(&f, &info, &zero);   /* the queued signal is lost */
	}
	else if (!strcmp(what, "hole")) {
		timer_t t;
		timer_create(CLOCK_MONOTONIC, NULL, &t);   /* takes the next id: a restore that... */
		hole = t;                                  /* ...reuses ids fails the same check */
	}
}

/* What holds at any moment: intervals, remaining times in range, the ids. */
static long instant(void)
{
	struct itimerspec none;
	long c_left;

	check_itimer("real", ITIMER_REAL, REAL_US, REAL_US);
	/* CPU-time itimers read up to one tick more than was set (kernel/time/itimer.c
	 * set_cpu_itimer adds TICK_NSEC): 10 ms covers HZ >= 100. */
	check_itimer("virtual", ITIMER_VIRTUAL, VIRT_US, VIRT_US + 10000);
	check_itimer("prof", ITIMER_PROF, 0, PROF_S * 1000000L + 10000);
	check_timer("a", timer_a, A_NS, A_NS);
	check_timer("b", timer_b, B_NS, B_NS);
	c_left = check_timer("c", timer_c, 0, C_S * 1000000000L);
	check_timer("d", timer_d, 0, C_S * 1000000000L);
	check_timer("e", timer_e, 0, C_S * 1000000000L);
	if (timer_gettime(hole, &none) == 0 || errno != EINVAL)
		fail("the deleted timer id %ld exists", (long)hole);
	{
		sigset_t pending;
		sigpending(&pending);
		if (!sigismember(&pending, SIGRTMIN + 3))
			fail("timer F's signal is not pending");
		if (timer_gettime(timer_f, &none) || none.it_value.tv_sec || none.it_value.tv_nsec)
			fail("timer F is armed again, or gone");
	}
	return c_left;
}

/* SIGUSR2: the process ran all along; did every timer? */
static void steady(void)
{
	double elapsed = now(CLOCK_MONOTONIC) - t0_mono;
	double cpu = now(CLOCK_PROCESS_CPUTIME_ID) - t0_cpu;
	struct itimerval prof;
	long c_left;

	failed = 0;
	expect("ITIMER_REAL since setup", n_alrm, elapsed * 1e6 / REAL_US, 3);
	expect("timer A since setup", n_a, elapsed * 1e9 / A_NS, 3);
	expect("timer B since setup", n_b, elapsed * 1e9 / B_NS, 3);
	c_left = instant();
	if (c_left > 0 && (c_left / 1e9 < C_S - elapsed - 0.5 || c_left / 1e9 > C_S - elapsed + 0.01))
		fail("timer C has %.3f s left after %.3f s, not %.3f", c_left / 1e9, elapsed, C_S - elapsed);
	getitimer(ITIMER_PROF, &prof);
	if (tv_us(prof.it_value) / 1e6 < PROF_S - cpu - 0.2 || tv_us(prof.it_value) / 1e6 > PROF_S - cpu + 0.02)
		fail("ITIMER_PROF has %.3f s left after %.3f s of CPU", tv_us(prof.it_value) / 1e6, cpu);
	if (bad)
		fail("%ld signals with a wrong siginfo or thread; first: %s", (long)bad, first_bad);
	printf("%s\n", failed ? "unsteady" : "steady");
	fflush(stdout);
	failed = 0;
}

int main(int argc, char **argv)
{
	struct sigevent ev;
	struct itimerval it;
	struct itimerspec its;
	sigset_t set;
	struct timespec deadline;
	long a0, b0, alrm0;
	const char *damage;

	(void)argc;
	(void)argv;
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	handle(SIGALRM, on_alrm);
	handle(SIGVTALRM, on_vtalrm);
	handle(SIGRTMIN + 1, on_a);
	handle(SIGRTMIN + 2, on_b);
	handle(SIGRTMIN + 3, on_f);
	sigemptyset(&set);
	sigaddset(&set, SIGRTMIN + 2);
	sigaddset(&set, SIGRTMIN + 3);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	if (pthread_create(&worker, NULL, work, NULL))
		return 2;

	memset(&ev, 0, sizeof(ev));
	ev.sigev_notify = SIGEV_SIGNAL;
	ev.sigev_signo = SIGRTMIN + 1;
	ev.sigev_value.sival_int = VALUE_A;
	if (timer_create(CLOCK_MONOTONIC, &ev, &timer_a))
		return 2;
	if (timer_create(CLOCK_MONOTONIC, NULL, &hole) || timer_delete(hole))
		return 2;
	memset(&ev, 0, sizeof(ev));
	ev.sigev_notify = SIGEV_THREAD_ID;
	ev.sigev_signo = SIGRTMIN + 2;
	ev.sigev_value.sival_ptr = &marker_b;
	while (!worker_tid)
		usleep(1000);
	ev._sigev_un._tid = worker_tid;
	if (timer_create(CLOCK_REALTIME, &ev, &timer_b))
		return 2;
	memset(&ev, 0, sizeof(ev));
	ev.sigev_notify = SIGEV_NONE;
	if (timer_create(CLOCK_BOOTTIME, &ev, &timer_c))
		return 2;
	memset(&ev, 0, sizeof(ev));
	ev.sigev_notify = SIGEV_SIGNAL;
	ev.sigev_signo = SIGRTMIN + 3;
	ev.sigev_value.sival_int = VALUE_F;
	if (timer_create(CLOCK_MONOTONIC, &ev, &timer_f))
		return 2;
	memset(&ev, 0, sizeof(ev));
	ev.sigev_notify = SIGEV_NONE;
	{
		clockid_t worker_clock, process_clock;
		if (pthread_getcpuclockid(worker, &worker_clock) || clock_getcpuclockid(getpid(), &process_clock))
			return 2;
		if (timer_create(worker_clock, &ev, &timer_d) || timer_create(process_clock, &ev, &timer_e))
			return 2;
	}

	t0_mono = now(CLOCK_MONOTONIC);
	t0_cpu = now(CLOCK_PROCESS_CPUTIME_ID);
	its.it_interval.tv_sec = 0;
	its.it_interval.tv_nsec = A_NS;
	its.it_value = its.it_interval;
	timer_settime(timer_a, 0, &its, NULL);
	its.it_interval.tv_nsec = B_NS;
	its.it_value = its.it_interval;
	timer_settime(timer_b, 0, &its, NULL);
	memset(&its, 0, sizeof(its));
	its.it_value.tv_sec = C_S;
	timer_settime(timer_c, 0, &its, NULL);
	timer_settime(timer_d, 0, &its, NULL);
	timer_settime(timer_e, 0, &its, NULL);
	its.it_value.tv_sec = 0;
	its.it_value.tv_nsec = 1000000;
	timer_settime(timer_f, 0, &its, NULL);
	it.it_interval.tv_sec = 0;
	it.it_interval.tv_usec = REAL_US;
	it.it_value = it.it_interval;
	setitimer(ITIMER_REAL, &it, NULL);
	it.it_interval.tv_usec = VIRT_US;
	it.it_value = it.it_interval;
	setitimer(ITIMER_VIRTUAL, &it, NULL);
	memset(&it, 0, sizeof(it));
	it.it_value.tv_sec = PROF_S;
	setitimer(ITIMER_PROF, &it, NULL);

	printf("ready %d\n", getpid());
	fflush(stdout);
	for (;;) {
		while (!go && !probe)
			pause();
		if (!probe)
			break;
		probe = 0;
		steady();
	}

	damage = getenv("ZDTM_CORRUPT");
	if (damage)
		corrupt(damage);
	instant();

	/* A fresh window: each periodic timer fires at its own pace, with its own siginfo. */
	a0 = n_a;
	b0 = n_b;
	alrm0 = n_alrm;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_nsec += WINDOW_NS % 1000000000L;
	deadline.tv_sec += WINDOW_NS / 1000000000L + deadline.tv_nsec / 1000000000L;
	deadline.tv_nsec %= 1000000000L;
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL) == EINTR)
		;
	expect("ITIMER_REAL", n_alrm - alrm0, (double)WINDOW_NS / (REAL_US * 1000), 2.5);
	expect("timer A", n_a - a0, (double)WINDOW_NS / A_NS, 2.5);
	expect("timer B", n_b - b0, (double)WINDOW_NS / B_NS, 2.5);

	/* Timer F's queued signal, with its siginfo, once. */
	{
		sigset_t f;
		sigemptyset(&f);
		sigaddset(&f, SIGRTMIN + 3);
		pthread_sigmask(SIG_UNBLOCK, &f, NULL);
		if (n_f != 1)
			fail("timer F's signal arrived %ld times, not once", (long)n_f);
	}

	/* ITIMER_VIRTUAL counts user CPU time: burn some. */
	{
		double start = now(CLOCK_MONOTONIC);
		long v0 = n_vtalrm;
		volatile unsigned long spin = 0;
		while (n_vtalrm - v0 < 3 && now(CLOCK_MONOTONIC) - start < 10)
			for (int i = 0; i < 1000000; i++)
				spin += i;
		if (n_vtalrm - v0 < 3)
			fail("ITIMER_VIRTUAL fired %ld times in 10 s of spinning", n_vtalrm - v0);
	}
	if (bad)
		fail("%ld signals with a wrong siginfo or thread; first: %s", (long)bad, first_bad);
	if (!failed)
		printf("PASS\n");
	fflush(stdout);
	return failed;
}
