/*
 * zdtm_epoll: epoll instances and their registrations, in the manner of CRIU's zdtm
 * (static/epoll*): a target that checks itself.
 *
 *   zdtm_epoll
 *
 * Sets up eventfds (each at a fixed fd) and two epoll instances:
 *   - fd 20, EP1, watching (data in parentheses, 64-bit, some pointer-like):
 *       fd 30 LT   EPOLLIN, count 3                      (D_LT)    ready
 *       fd 31 LT   EPOLLIN|EPOLLRDHUP, count 0           (D_IDLE)  not ready
 *       fd 32 LT   EPOLLIN|EPOLLOUT, semaphore, O_NONBLOCK, count 2 (D_SEM) ready
 *       fd 33 EPOLLIN|EPOLLONESHOT, count 1, fired by an epoll_wait: disabled (D_ONE)
 *       fd 34 EPOLLIN|EPOLLET, written after registration: an edge pending (D_ET)
 *       fd 35 EPOLLIN|EPOLLET, its edge reported, then drained: nothing (D_ETC)
 *       fd 36 EPOLLIN|EPOLLEXCLUSIVE, count 4               (D_EXCL)  ready
 *       fd 37 EPOLLIN|EPOLLWAKEUP, count 0 (the kernel keeps EPOLLWAKEUP only with
 *             CAP_BLOCK_SUSPEND)                           (D_WAKE)
 *       fd 41, registered as fd 40, then dup2'd to 41 and 40 closed: the registration
 *             stays keyed by 40; count 6                  (D_MOVED) ready
 *       fd 40, a new eventfd at the number 40 freed, registered as 40, count 0 (D_REUSE)
 *   - fd 21, EP2, watching EP1 (EPOLLIN, D_EP1) and fd 38 (EPOLLIN|EPOLLET, count 9,
 *     D_NEST): nested.
 * Reads the registrations of both instances from its own fdinfo, prints "ready PID"
 * and waits for SIGUSR1, then checks, printing "FAIL: what" for each mismatch and
 * exiting 1, or "PASS" and exiting 0:
 *   - the fd table: exactly 0-2, these fds and no other, eventfds and epolls as set up;
 *   - each instance's fdinfo lists the same registrations (fd number, events, data) as
 *     before; each eventfd's count, semaphore mode and O_NONBLOCK/FD_CLOEXEC as set up;
 *   - readiness: epoll_wait on EP2 reports D_EP1 and D_NEST; on EP1 exactly D_LT,
 *     D_SEM (EPOLLIN|EPOLLOUT), D_ET, D_EXCL and D_MOVED; a second epoll_wait the same
 *     without D_ET (edge-triggered: reported once); fd 33 written to stays silent until
 *     EPOLL_CTL_MOD re-arms it; fd 34 written to is reported again;
 *   - keys: EPOLL_CTL_MOD of fd 41 fails with ENOENT (registered as 40); MOD of fd 40
 *     changes the registration of the eventfd at 40, not the one of fd 41; DEL of 40
 *     leaves fd 41's registration (data D_MOVED) in place.
 * Run straight through (no checkpoint in between) it passes; after a restore it passes
 * only if every registration came back with its events, data and key, and the same
 * readiness.
 *
 * Debugging the checks: ZDTM_CORRUPT=ready (read after SIGUSR1) drains fd 30 first;
 * ZDTM_CORRUPT=oneshot re-arms fd 33 first.  Each must make the checks fail.
 */
#include "zdtm_anon.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define EP1 20
#define EP2 21

#define D_LT 0x1111222233334444ULL
#define D_IDLE 0x31ULL
#define D_SEM 0x8000000000000032ULL
#define D_ONE 0x33ULL
#define D_ET 0x00007fffdeadbe00ULL
#define D_ETC 0x35ULL
#define D_EXCL 0x36ULL
#define D_WAKE 0x37ULL
#define D_MOVED 0xfeedface00000041ULL
#define D_REUSE 0x40ULL
#define D_EP1 0xe1ULL
#define D_NEST 0x0123456789abcdefULL

#define MAX_REGS 32

struct reg {
	int fd;
	unsigned events;
	unsigned long long data;
};

struct efd {
	int fd;
	unsigned long long count;
	int semaphore, nonblock, cloexec;
};

static int new_eventfd(unsigned count, int flags, int number)
{
	at(eventfd(count, flags), number);
	if (flags & EFD_CLOEXEC)
		fcntl(number, F_SETFD, FD_CLOEXEC);
	return number;
}

static void add(int ep, int fd, unsigned events, unsigned long long data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };

	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
		die("EPOLL_CTL_ADD");
}

static int by_key(const void *a, const void *b)
{
	const struct reg *x = a, *y = b;

	if (x->fd != y->fd)
		return x->fd < y->fd ? -1 : 1;
	if (x->data != y->data)
		return x->data < y->data ? -1 : 1;
	return x->events < y->events ? -1 : x->events > y->events;
}

/* The registrations of epoll fd EP from our own fdinfo, sorted. */
static int registrations(int ep, struct reg *out)
{
	char path[64], line[256];
	FILE *f;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", ep);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f) && n < MAX_REGS) {
		struct reg r;

		if (sscanf(line, "tfd: %d events: %x data: %llx", &r.fd, &r.events, &r.data) == 3)
			out[n++] = r;
	}
	fclose(f);
	qsort(out, n, sizeof(*out), by_key);
	return n;
}

static long long fdinfo_number(int fd, const char *key, int base)
{
	char path[64], line[256];
	size_t len = strlen(key);
	long long value = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, len) && line[len] == ':')
			value = (long long)strtoull(line + len + 1, NULL, base);
	fclose(f);
	return value;
}

static void expect_same_registrations(int ep, const struct reg *before, int n)
{
	struct reg now[MAX_REGS];
	int m = registrations(ep, now), i;

	if (m != n) {
		fail("epoll fd %d has %d registrations, expected %d", ep, m, n);
		return;
	}
	for (i = 0; i < n; i++)
		if (by_key(&now[i], &before[i]))
			fail("epoll fd %d: registration fd %d events %#x data %#llx, expected fd %d events %#x data %#llx",
			     ep, now[i].fd, now[i].events, now[i].data, before[i].fd, before[i].events, before[i].data);
}

/* epoll_wait(EP, no wait) must report exactly the WANT (data, events) pairs, any order. */
static void expect_ready(int ep, const struct reg *want, int n, const char *when)
{
	struct epoll_event evs[MAX_REGS];
	int got = epoll_wait(ep, evs, MAX_REGS, 0), i, j;

	if (got < 0) {
		fail("epoll_wait fd %d: %s (%s)", ep, strerror(errno), when);
		return;
	}
	for (i = 0; i < got; i++) {
		for (j = 0; j < n; j++)
			if (want[j].data == evs[i].data.u64)
				break;
		if (j == n)
			fail("epoll fd %d reported data %#llx events %#x, which should not be ready (%s)", ep,
			     (unsigned long long)evs[i].data.u64, evs[i].events, when);
		else if (want[j].events != evs[i].events)
			fail("epoll fd %d reported data %#llx with events %#x, expected %#x (%s)", ep,
			     (unsigned long long)evs[i].data.u64, evs[i].events, want[j].events, when);
	}
	for (j = 0; j < n; j++) {
		for (i = 0; i < got; i++)
			if (want[j].data == evs[i].data.u64)
				break;
		if (i == got)
			fail("epoll fd %d did not report data %#llx (%s)", ep, want[j].data, when);
	}
}

int main(void)
{
	static const struct efd efds[] = {
		{ 30, 3, 0, 0, 0 }, { 31, 0, 0, 0, 1 }, { 32, 2, 1, 1, 0 }, { 33, 1, 0, 0, 0 },
		{ 34, 5, 0, 0, 1 }, { 35, 0, 0, 0, 0 }, { 36, 4, 0, 0, 0 }, { 37, 0, 0, 0, 0 },
		{ 38, 9, 0, 0, 0 }, { 40, 0, 0, 0, 0 }, { 41, 6, 0, 0, 0 },
	};
	const int nefds = sizeof(efds) / sizeof(efds[0]);
	struct reg before1[MAX_REGS], before2[MAX_REGS];
	struct epoll_event evs[MAX_REGS];
	uint64_t value;
	int n1, n2, i;

	signal(SIGUSR1, on_go);

	at(epoll_create1(0), EP1);
	/* The EPOLLONESHOT registration fires, and the edge of fd 35 is reported, before
	 * anything else is registered (an epoll_wait reports every ready registration). */
	new_eventfd(1, 0, 33);
	add(EP1, 33, EPOLLIN | EPOLLONESHOT, D_ONE);
	new_eventfd(1, 0, 35);
	add(EP1, 35, EPOLLIN | EPOLLET, D_ETC);
	if (epoll_wait(EP1, evs, MAX_REGS, 0) != 2)
		die("epoll_wait to fire EPOLLONESHOT");
	if (read(35, &value, sizeof(value)) != sizeof(value))
		die("read fd 35");

	new_eventfd(3, 0, 30);
	add(EP1, 30, EPOLLIN, D_LT);
	new_eventfd(0, EFD_CLOEXEC, 31);
	add(EP1, 31, EPOLLIN | EPOLLRDHUP, D_IDLE);
	new_eventfd(2, EFD_SEMAPHORE | EFD_NONBLOCK, 32);
	add(EP1, 32, EPOLLIN | EPOLLOUT, D_SEM);
	new_eventfd(0, EFD_CLOEXEC, 34);
	add(EP1, 34, EPOLLIN | EPOLLET, D_ET);
	value = 5;
	if (write(34, &value, sizeof(value)) != sizeof(value))
		die("write fd 34");
	new_eventfd(4, 0, 36);
	add(EP1, 36, EPOLLIN | EPOLLEXCLUSIVE, D_EXCL);
	new_eventfd(0, 0, 37);
	add(EP1, 37, EPOLLIN | EPOLLWAKEUP, D_WAKE);
	new_eventfd(6, 0, 40);
	add(EP1, 40, EPOLLIN, D_MOVED);
	if (dup2(40, 41) != 41)
		die("dup2 40 41");
	close(40);
	new_eventfd(0, 0, 40);
	add(EP1, 40, EPOLLIN, D_REUSE);

	at(epoll_create1(EPOLL_CLOEXEC), EP2);
	fcntl(EP2, F_SETFD, FD_CLOEXEC);
	add(EP2, EP1, EPOLLIN, D_EP1);
	new_eventfd(9, 0, 38);
	add(EP2, 38, EPOLLIN | EPOLLET, D_NEST);

	n1 = registrations(EP1, before1);
	n2 = registrations(EP2, before2);
	if (n1 != 10 || n2 != 2)
		die("registrations in fdinfo");

	printf("ready %d\n", getpid());
	fflush(stdout);
	while (!go)
		pause();

	if (getenv("ZDTM_CORRUPT") && !strcmp(getenv("ZDTM_CORRUPT"), "ready"))
		read(30, &value, sizeof(value));
	if (getenv("ZDTM_CORRUPT") && !strcmp(getenv("ZDTM_CORRUPT"), "oneshot")) {
		struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = D_ONE };

		epoll_ctl(EP1, EPOLL_CTL_MOD, 33, &ev);
	}

	/* The fd table. */
	{
		DIR *dir = opendir("/proc/self/fd");
		struct dirent *e;

		if (!dir)
			die("opendir");
		while ((e = readdir(dir))) {
			int n = atoi(e->d_name), known = n <= 2 || n == dirfd(dir) || n == EP1 || n == EP2;

			if (e->d_name[0] == '.')
				continue;
			for (i = 0; i < nefds; i++)
				known |= efds[i].fd == n;
			if (!known)
				fail("fd %d is open, and should not be", n);
		}
		closedir(dir);
	}
	for (i = 0; i < nefds + 2; i++) {
		int fd = i < nefds ? efds[i].fd : (i == nefds ? EP1 : EP2);
		const char *want = i < nefds ? "anon_inode:[eventfd]" : "anon_inode:[eventpoll]";
		char path[64], link[128];
		ssize_t len;

		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		len = readlink(path, link, sizeof(link) - 1);
		link[len < 0 ? 0 : len] = '\0';
		if (strcmp(link, want))
			fail("fd %d is %s, expected %s", fd, link, want);
	}

	/* The registrations, and the eventfds as set up (fd 35 drained, fd 33 untouched). */
	expect_same_registrations(EP1, before1, n1);
	expect_same_registrations(EP2, before2, n2);
	for (i = 0; i < nefds; i++) {
		const struct efd *e = &efds[i];
		long long count = fdinfo_number(e->fd, "eventfd-count", 16);
		int fl = fcntl(e->fd, F_GETFL), fd_flags = fcntl(e->fd, F_GETFD);

		if (count != (long long)e->count)
			fail("eventfd %d count %lld, expected %llu", e->fd, count, e->count);
		if (fdinfo_number(e->fd, "eventfd-semaphore", 10) != e->semaphore)
			fail("eventfd %d semaphore mode is not %d", e->fd, e->semaphore);
		if (!!(fl & O_NONBLOCK) != e->nonblock)
			fail("eventfd %d O_NONBLOCK is %d, expected %d", e->fd, !!(fl & O_NONBLOCK), e->nonblock);
		if (!!(fd_flags & FD_CLOEXEC) != e->cloexec)
			fail("eventfd %d FD_CLOEXEC is %d, expected %d", e->fd, !!(fd_flags & FD_CLOEXEC), e->cloexec);
	}
	if (fcntl(EP1, F_GETFD) & FD_CLOEXEC || !(fcntl(EP2, F_GETFD) & FD_CLOEXEC))
		fail("close-on-exec of the epoll fds is not as set up");

	/* Readiness. */
	{
		const struct reg nested[] = { { 0, EPOLLIN, D_EP1 }, { 0, EPOLLIN, D_NEST } };
		const struct reg first[] = {
			{ 0, EPOLLIN, D_LT }, { 0, EPOLLIN | EPOLLOUT, D_SEM }, { 0, EPOLLIN, D_ET },
			{ 0, EPOLLIN, D_EXCL }, { 0, EPOLLIN, D_MOVED },
		};
		const struct reg level[] = {
			{ 0, EPOLLIN, D_LT }, { 0, EPOLLIN | EPOLLOUT, D_SEM }, { 0, EPOLLIN, D_EXCL },
			{ 0, EPOLLIN, D_MOVED },
		};
		const struct reg again[] = {
			{ 0, EPOLLIN, D_LT }, { 0, EPOLLIN | EPOLLOUT, D_SEM }, { 0, EPOLLIN, D_EXCL },
			{ 0, EPOLLIN, D_MOVED }, { 0, EPOLLIN, D_ET },
		};
		const struct reg rearmed[] = {
			{ 0, EPOLLIN, D_LT }, { 0, EPOLLIN | EPOLLOUT, D_SEM }, { 0, EPOLLIN, D_EXCL },
			{ 0, EPOLLIN, D_MOVED }, { 0, EPOLLIN, D_ONE },
		};
		struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = D_ONE };

		expect_ready(EP2, nested, 2, "the nested instance");
		expect_ready(EP1, first, 5, "first epoll_wait");
		expect_ready(EP1, level, 4, "second epoll_wait: edge-triggered fd 34 reported once");
		value = 1;
		if (write(33, &value, sizeof(value)) != sizeof(value) || write(34, &value, sizeof(value)) != sizeof(value))
			fail("write fds 33, 34: %s", strerror(errno));
		expect_ready(EP1, again, 5, "after writing to fds 33 (EPOLLONESHOT, fired) and 34 (new edge)");
		if (epoll_ctl(EP1, EPOLL_CTL_MOD, 33, &ev))
			fail("EPOLL_CTL_MOD fd 33: %s", strerror(errno));
		expect_ready(EP1, rearmed, 5, "after re-arming fd 33");
	}

	/* Keys: fd 41's registration is keyed by 40, which is another registration's too. */
	{
		struct epoll_event ev = { .events = EPOLLOUT, .data.u64 = D_REUSE + 1 };
		struct reg now[MAX_REGS];
		int n, moved = 0, reuse = 0;

		if (!epoll_ctl(EP1, EPOLL_CTL_MOD, 41, &ev) || errno != ENOENT)
			fail("EPOLL_CTL_MOD fd 41 should fail with ENOENT (registered as fd 40): %s", strerror(errno));
		if (epoll_ctl(EP1, EPOLL_CTL_MOD, 40, &ev))
			fail("EPOLL_CTL_MOD fd 40: %s", strerror(errno));
		n = registrations(EP1, now);
		for (i = 0; i < n; i++) {
			moved += now[i].fd == 40 && now[i].data == D_MOVED && now[i].events == (EPOLLIN | EPOLLERR | EPOLLHUP);
			reuse += now[i].fd == 40 && now[i].data == D_REUSE + 1;
		}
		if (moved != 1 || reuse != 1)
			fail("after EPOLL_CTL_MOD fd 40: %d registrations of fd 41's eventfd and %d of fd 40's", moved, reuse);
		if (epoll_ctl(EP1, EPOLL_CTL_DEL, 40, NULL))
			fail("EPOLL_CTL_DEL fd 40: %s", strerror(errno));
		n = registrations(EP1, now);
		for (i = 0, moved = reuse = 0; i < n; i++) {
			moved += now[i].fd == 40 && now[i].data == D_MOVED;
			reuse += now[i].fd == 40 && now[i].data != D_MOVED;
		}
		if (moved != 1 || reuse != 0)
			fail("after EPOLL_CTL_DEL fd 40: %d registrations of fd 41's eventfd and %d of fd 40's", moved, reuse);
	}

	if (failures)
		return 1;
	printf("PASS\n");
	return 0;
}
