/*
 * zdtm_timerfd: timerfds relative and absolute, periodic and one-shot, with
 * expirations not read (CRIU's zdtm static/timerfd, and more), checking itself.
 *
 *   zdtm_timerfd
 *
 * Sets up (see zdtm_anon.h; go is SIGUSR1):
 *   - fd 10: CLOCK_MONOTONIC, relative, every 20 ms from 20 ms: it keeps
 *     expiring, and nothing reads it before go;
 *   - fd 11: CLOCK_MONOTONIC, relative one-shot in 1 ms, TFD_NONBLOCK; it has
 *     expired (once, not read) before "ready";
 *   - fd 12: CLOCK_REALTIME, TFD_TIMER_ABSTIME, one-shot at start + 3600 s,
 *     TFD_CLOEXEC;
 *   - fd 13: CLOCK_MONOTONIC, TFD_TIMER_ABSTIME, every 100 ms from start +
 *     100 ms, TFD_NONBLOCK;
 *   - fd 14: CLOCK_BOOTTIME, never armed.
 * Checks: each is a timerfd with its flags, close-on-exec (12 only), clock and
 * settime flags (fdinfo); 11 reads 1, then EAGAIN, and is disarmed; 12 has
 * 3600 s from start left (its absolute expiry: within 0.5 s); 13 reads the
 * number of 100 ms periods since its first expiry, + 1 (give or take one:
 * an absolute timer counts the time it was not running too); 10 reads at
 * least 1 (printed as "periodic N"), then expires again within 1 s, every
 * 20 ms; 14 is disarmed and not readable.
 */
#include "zdtm_anon.h"
#include <poll.h>
#include <stdint.h>
#include <sys/timerfd.h>
#include <time.h>

#define NSEC 1000000000LL

static int64_t now(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return ts.tv_sec * NSEC + ts.tv_nsec;
}

static struct timespec ts(int64_t ns)
{
	struct timespec t = { .tv_sec = ns / NSEC, .tv_nsec = ns % NSEC };

	return t;
}

static int timer(clockid_t clock, int flags, int settime, int64_t value, int64_t interval)
{
	int fd = timerfd_create(clock, flags);
	struct itimerspec its = { .it_interval = ts(interval), .it_value = ts(value) };

	if (fd < 0 || timerfd_settime(fd, settime, &its, NULL))
		die("timerfd");
	return fd;
}

static int64_t ns(struct timespec t)
{
	return t.tv_sec * NSEC + t.tv_nsec;
}

static void expect_fdinfo(int fd, const char *key, const char *want)
{
	const char *got = fdinfo_value(fd, key);

	if (strcmp(got, want))
		fail("fd %d fdinfo %s is %s, expected %s", fd, key, got, want);
}

int main(void)
{
	int64_t start_mono = now(CLOCK_MONOTONIC), start_real = now(CLOCK_REALTIME);
	int64_t abs_real = start_real + 3600 * NSEC, first13 = start_mono + NSEC / 10;
	struct itimerspec cur;
	uint64_t ticks;
	int i;

	at(timer(CLOCK_MONOTONIC, 0, 0, NSEC / 50, NSEC / 50), 10);
	at(timer(CLOCK_MONOTONIC, TFD_NONBLOCK, 0, NSEC / 1000, 0), 11);
	at(timer(CLOCK_REALTIME, TFD_CLOEXEC, TFD_TIMER_ABSTIME, abs_real, 0), 12);
	at(timer(CLOCK_MONOTONIC, TFD_NONBLOCK, TFD_TIMER_ABSTIME, first13, NSEC / 10), 13);
	at(timerfd_create(CLOCK_BOOTTIME, 0), 14);
	usleep(20000);   /* fd 11 has expired */

	ready_then_wait(SIGUSR1);

	for (i = 10; i <= 14; i++) {
		expect_link(i, "anon_inode:[timerfd]");
		expect_cloexec(i, i == 12);
	}
	expect_flags(10, O_RDWR);
	expect_flags(11, O_RDWR | O_NONBLOCK);
	expect_flags(12, O_RDWR);
	expect_flags(13, O_RDWR | O_NONBLOCK);
	expect_flags(14, O_RDWR);
	expect_fdinfo(10, "clockid", "1");
	expect_fdinfo(12, "clockid", "0");
	expect_fdinfo(14, "clockid", "7");
	expect_fdinfo(10, "settime flags", "00");
	expect_fdinfo(12, "settime flags", "01");
	expect_fdinfo(13, "settime flags", "01");

	/* 11: one expiration, not read before go. */
	if (read(11, &ticks, sizeof(ticks)) != sizeof(ticks) || ticks != 1)
		fail("fd 11 read %s, expected 1 expiration", strerror(errno));
	else if (read(11, &ticks, sizeof(ticks)) != -1 || errno != EAGAIN)
		fail("fd 11 read a second time");
	if (timerfd_gettime(11, &cur) || ns(cur.it_value) || ns(cur.it_interval))
		fail("fd 11 is not disarmed");

	/* 12: the absolute expiry, an hour after the start. */
	if (timerfd_gettime(12, &cur) || ns(cur.it_interval))
		fail("fd 12 gettime");
	else {
		int64_t left = ns(cur.it_value), want = abs_real - now(CLOCK_REALTIME);

		if (left - want > NSEC / 2 || want - left > NSEC / 2)
			fail("fd 12 expires in %.3f s, expected %.3f s (its absolute expiry)", left / 1e9, want / 1e9);
	}

	/* 13: every period since its first expiry, the time not running included. */
	{
		int64_t elapsed = now(CLOCK_MONOTONIC) - first13;
		int64_t want = elapsed < 0 ? 0 : elapsed / (NSEC / 10) + 1;

		ticks = 0;
		if (read(13, &ticks, sizeof(ticks)) != sizeof(ticks) && want > 0)
			fail("fd 13 read: %s", strerror(errno));
		if ((int64_t)ticks < want - 1 || (int64_t)ticks > want + 1)
			fail("fd 13 read %llu expirations, expected %lld (every 100 ms for %.3f s)",
			     (unsigned long long)ticks, (long long)want, elapsed / 1e9);
		if (timerfd_gettime(13, &cur) || ns(cur.it_interval) != NSEC / 10)
			fail("fd 13 period is not 100 ms");
	}

	/* 10: periodic, it kept expiring and keeps on. */
	if (timerfd_gettime(10, &cur) || ns(cur.it_interval) != NSEC / 50)
		fail("fd 10 period is not 20 ms");
	if (read(10, &ticks, sizeof(ticks)) != sizeof(ticks) || ticks < 1)
		fail("fd 10 read: %s", strerror(errno));
	else
		printf("periodic %llu\n", (unsigned long long)ticks);
	{
		struct pollfd p = { .fd = 10, .events = POLLIN };

		if (poll(&p, 1, 1000) != 1)
			fail("fd 10 did not expire again within 1 s");
		else if (read(10, &ticks, sizeof(ticks)) != sizeof(ticks) || ticks < 1)
			fail("fd 10 read again: %s", strerror(errno));
	}

	/* 14: never armed. */
	{
		struct pollfd p = { .fd = 14, .events = POLLIN };

		if (timerfd_gettime(14, &cur) || ns(cur.it_value) || ns(cur.it_interval))
			fail("fd 14 is armed");
		if (poll(&p, 1, 0) != 0)
			fail("fd 14 is readable");
	}
	return finish();
}
