/*
 * zdtm_eventfd: eventfds with a count, in semaphore mode, non-blocking, shared
 * by dup (CRIU's zdtm static/eventfs00, and more), checking itself.
 *
 *   zdtm_eventfd
 *
 * Sets up (see zdtm_anon.h for the protocol; go is SIGUSR1):
 *   - fd 10: eventfd(0, 0), then written 5 and 2^40: count 2^40 + 5 (more than
 *     eventfd()'s unsigned int initial value can hold); fd 13 = dup(10);
 *   - fd 11: eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
 *   - fd 12: eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
 *   - fd 14: eventfd(7, 0), then F_SETFL O_NONBLOCK.
 * Checks: each is an eventfd, with its flags and close-on-exec (12 only);
 * fdinfo says semaphore mode for 11 only; 11 reads 1 three times, then
 * EAGAIN; 10 reads 2^40 + 5; 9 written through 13 is read through 10; 12
 * reads EAGAIN; 14 reads 7.
 */
#include "zdtm_anon.h"
#include <stdint.h>
#include <sys/eventfd.h>

static void put(int fd, uint64_t value)
{
	if (write(fd, &value, sizeof(value)) != sizeof(value))
		die("write");
}

static void expect_read(int fd, uint64_t want, const char *when)
{
	uint64_t got = 0;

	if (read(fd, &got, sizeof(got)) != sizeof(got))
		fail("fd %d read failed (%s): %s", fd, when, strerror(errno));
	else if (got != want)
		fail("fd %d read %llu, expected %llu (%s)", fd, (unsigned long long)got, (unsigned long long)want,
		     when);
}

static void expect_empty(int fd, const char *when)
{
	uint64_t got;

	if (read(fd, &got, sizeof(got)) != -1 || errno != EAGAIN)
		fail("fd %d should read EAGAIN (%s), read %llu", fd, when, (unsigned long long)got);
}

int main(void)
{
	int i;

	at(eventfd(0, 0), 10);
	put(10, 5);
	put(10, 1ULL << 40);
	at(dup(10), 13);
	at(eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK), 11);
	at(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), 12);
	at(eventfd(7, 0), 14);
	if (fcntl(14, F_SETFL, fcntl(14, F_GETFL) | O_NONBLOCK))
		die("F_SETFL");

	ready_then_wait(SIGUSR1);

	for (i = 10; i <= 14; i++) {
		expect_link(i, "anon_inode:[eventfd]");
		expect_cloexec(i, i == 12);
	}
	expect_flags(10, O_RDWR);
	expect_flags(13, O_RDWR);
	expect_flags(11, O_RDWR | O_NONBLOCK);
	expect_flags(12, O_RDWR | O_NONBLOCK);
	expect_flags(14, O_RDWR | O_NONBLOCK);
	if (strcmp(fdinfo_value(11, "eventfd-semaphore"), "1") || strcmp(fdinfo_value(10, "eventfd-semaphore"), "0"))
		fail("semaphore mode: fd 11 %s, fd 10 %s (expected 1 and 0)", fdinfo_value(11, "eventfd-semaphore"),
		     fdinfo_value(10, "eventfd-semaphore"));
	for (i = 0; i < 3; i++)
		expect_read(11, 1, "semaphore");
	expect_empty(11, "semaphore taken three times");
	expect_read(10, (1ULL << 40) + 5, "count");
	put(13, 9);
	expect_read(10, 9, "written through fd 13");
	expect_empty(12, "count 0");
	expect_read(14, 7, "count");
	return finish();
}
