/*
 * zdtm_tcp: established TCP connections with data in their queues, in the
 * manner of CRIU's zdtm (static/socket-tcp, socket-tcpbuf): a target that
 * checks itself.
 *
 *   zdtm_tcp PORT
 *
 * Sets up:
 *   - fd 10: TCP/IPv4 listening on 127.0.0.1 (kernel's port), SO_REUSEADDR;
 *   - fd 11: a connection to fd 10, TCP_NODELAY, a small receive buffer;
 *     fd 12: its other end, accepted from fd 10, SO_KEEPALIVE, TCP_KEEPIDLE 77;
 *   - fd 13: a connection to 127.0.0.1:PORT (the test's listener);
 *   - fd 17: TCP/IPv6 listening on ::1, without SO_REUSEADDR; fd 15: a
 *     connection to it, fd 16 its other end (at a lower fd than its listener),
 *     each with "v6-client"/"v6-server" written and unread;
 *   - fd 18: another connection to fd 10, fd 19 its other end, shut for
 *     reading (shutdown SHUT_RD: an ESTABLISHED connection with RCV_SHUTDOWN).
 * Fills the queues: fd 12 writes a pattern (byte i is (i * 13 + 7) & 0xff)
 * until its send buffer is full (fd 11 reads none of it: part of it waits in
 * fd 11's receive queue, part in fd 12's send queue, not all of it sent);
 * fd 11 writes "from-client" (fd 12 reads none of it); fd 13 writes
 * "from-target-before".  Prints "ready PID", then "written N" (the pattern's
 * length), waits for SIGUSR1 (`while (!go) pause();`), then checks, printing
 * "FAIL: what" for each mismatch and exiting 1, or "PASS" and exiting 0:
 *   - fds 11-13, 15, 16 are ESTABLISHED (TCP_INFO) with their addresses and peers,
 *     and the options set (TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE);
 *   - fd 19 reads end-of-file at once (it is shut for reading);
 *   - fd 12 reads "from-client"; fd 11 reads the whole pattern, in order;
 *   - both then exchange new data both ways; fds 15 and 16 read each other's;
 *   - fd 13 reads the 16 bytes the test sent before the dump
 *     ("from-test-before"), then writes "from-target-after", which the test
 *     reads after "from-target-before".
 * Run straight through (the test's side doing its part) it passes.
 */
#include "zdtm_anon.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void set_int(int fd, int level, int name, int value)
{
	if (setsockopt(fd, level, name, &value, sizeof(value)))
		die("setsockopt");
}

static int get_int(int fd, int level, int name)
{
	int value = -1;
	socklen_t len = sizeof(value);

	getsockopt(fd, level, name, &value, &len);
	return value;
}

static unsigned char pattern(long i)
{
	return (unsigned char)((i * 13 + 7) & 0xff);
}

static int wait_for(int fd, short events)
{
	struct pollfd p = { .fd = fd, .events = events };

	return poll(&p, 1, 10000) == 1;
}

/* Read exactly len bytes (the fd may be non-blocking). */
static int read_all(int fd, void *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, (char *)buf + got, len - got);

		if (n > 0)
			got += n;
		else if (n < 0 && errno == EAGAIN && wait_for(fd, POLLIN))
			continue;
		else
			return -1;
	}
	return 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
	size_t put = 0;

	while (put < len) {
		ssize_t n = write(fd, (const char *)buf + put, len - put);

		if (n > 0)
			put += n;
		else if (n < 0 && errno == EAGAIN && wait_for(fd, POLLOUT))
			continue;
		else
			return -1;
	}
	return 0;
}

static void expect_text(int fd, const char *want)
{
	char buf[64] = "";

	if (read_all(fd, buf, strlen(want)))
		fail("fd %d: reading %s: %s", fd, want, strerror(errno));
	else if (memcmp(buf, want, strlen(want)))
		fail("fd %d read %.*s, expected %s", fd, (int)strlen(want), buf, want);
}

static struct {
	struct sockaddr_storage name, peer;
	socklen_t name_len, peer_len;
} before[6];

static void snap(int fd, int i)
{
	before[i].name_len = before[i].peer_len = sizeof(struct sockaddr_storage);
	getsockname(fd, (struct sockaddr *)&before[i].name, &before[i].name_len);
	getpeername(fd, (struct sockaddr *)&before[i].peer, &before[i].peer_len);
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(addr);
	static unsigned char chunk[4096], got[65536];
	long written = 0, checked = 0;
	int i;

	if (argc != 2) {
		fprintf(stderr, "usage: zdtm_tcp PORT\n");
		return 2;
	}
	signal(SIGUSR1, on_go);
	signal(SIGPIPE, SIG_IGN);

	at(socket(AF_INET, SOCK_STREAM, 0), 10);
	set_int(10, SOL_SOCKET, SO_REUSEADDR, 1);
	if (bind(10, (struct sockaddr *)&addr, sizeof(addr)) || listen(10, 4) ||
	    getsockname(10, (struct sockaddr *)&addr, &alen))
		die("listen");
	at(socket(AF_INET, SOCK_STREAM, 0), 11);
	set_int(11, IPPROTO_TCP, TCP_NODELAY, 1);
	set_int(11, SOL_SOCKET, SO_RCVBUF, 16384);
	if (connect(11, (struct sockaddr *)&addr, sizeof(addr)))
		die("connect 11");
	at(accept4(10, NULL, NULL, 0), 12);
	set_int(12, SOL_SOCKET, SO_KEEPALIVE, 1);
	set_int(12, IPPROTO_TCP, TCP_KEEPIDLE, 77);
	at(socket(AF_INET, SOCK_STREAM, 0), 13);
	addr.sin_port = htons(atoi(argv[1]));
	if (connect(13, (struct sockaddr *)&addr, sizeof(addr)))
		die("connect 13");

	/* fd 12 writes the pattern until its send buffer is full. */
	if (fcntl(12, F_SETFL, O_NONBLOCK))
		die("O_NONBLOCK");
	for (;;) {
		ssize_t n;

		for (i = 0; i < (int)sizeof(chunk); i++)
			chunk[i] = pattern(written + i);
		n = write(12, chunk, sizeof(chunk));
		if (n < 0 && errno == EAGAIN) {
			usleep(100000);   /* let what was sent be acknowledged, then try once more */
			n = write(12, chunk, sizeof(chunk));
			if (n < 0 && errno == EAGAIN)
				break;
		}
		if (n <= 0)
			die("write 12");
		written += n;
	}
	if (write_all(11, "from-client", 11) || write_all(13, "from-target-before", 18))
		die("write 11/13");
	{
		struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
		socklen_t l6 = sizeof(a6);

		at(socket(AF_INET6, SOCK_STREAM, 0), 17);
		if (bind(17, (struct sockaddr *)&a6, sizeof(a6)) || listen(17, 1) ||
		    getsockname(17, (struct sockaddr *)&a6, &l6))
			die("listen 17");
		at(socket(AF_INET6, SOCK_STREAM, 0), 15);
		if (connect(15, (struct sockaddr *)&a6, sizeof(a6)))
			die("connect 15");
		at(accept4(17, NULL, NULL, 0), 16);
		if (write_all(15, "v6-client", 9) || write_all(16, "v6-server", 9))
			die("write 15/16");
	}
	{
		struct sockaddr_in a4;
		socklen_t l4 = sizeof(a4);

		if (getsockname(10, (struct sockaddr *)&a4, &l4))
			die("getsockname 10");
		at(socket(AF_INET, SOCK_STREAM, 0), 18);
		if (connect(18, (struct sockaddr *)&a4, sizeof(a4)))
			die("connect 18");
		at(accept4(10, NULL, NULL, 0), 19);
		if (shutdown(19, SHUT_RD))
			die("shutdown 19");
	}
	for (i = 0; i < 6; i++)
		snap(11 + i, i);

	printf("ready %d\n", getpid());
	printf("written %ld\n", written);
	fflush(stdout);
	while (!go)
		pause();

	for (i = 0; i < 6; i++) {
		struct sockaddr_storage name, peer;
		socklen_t nl = sizeof(name), pl = sizeof(peer);
		unsigned char info[8];
		socklen_t il = sizeof(info);

		if (i == 3)
			continue;   /* no fd 14 */
		if (getsockopt(11 + i, IPPROTO_TCP, TCP_INFO, info, &il) || info[0] != 1)
			fail("fd %d is in TCP state %d, not ESTABLISHED", 11 + i, info[0]);
		if (getsockname(11 + i, (struct sockaddr *)&name, &nl) || nl != before[i].name_len ||
		    memcmp(&name, &before[i].name, nl))
			fail("fd %d has another address", 11 + i);
		if (getpeername(11 + i, (struct sockaddr *)&peer, &pl) || pl != before[i].peer_len ||
		    memcmp(&peer, &before[i].peer, pl))
			fail("fd %d has another peer", 11 + i);
	}
	if (get_int(11, IPPROTO_TCP, TCP_NODELAY) != 1 || get_int(12, SOL_SOCKET, SO_KEEPALIVE) != 1 ||
	    get_int(12, IPPROTO_TCP, TCP_KEEPIDLE) != 77)
		fail("options: TCP_NODELAY %d, SO_KEEPALIVE %d, TCP_KEEPIDLE %d", get_int(11, IPPROTO_TCP, TCP_NODELAY),
		     get_int(12, SOL_SOCKET, SO_KEEPALIVE), get_int(12, IPPROTO_TCP, TCP_KEEPIDLE));
	if (!(fcntl(12, F_GETFL) & O_NONBLOCK) || (fcntl(11, F_GETFL) & O_NONBLOCK))
		fail("O_NONBLOCK: fd 11 %#o, fd 12 %#o", fcntl(11, F_GETFL), fcntl(12, F_GETFL));

	expect_text(12, "from-client");
	while (checked < written) {
		long n = written - checked < (long)sizeof(got) ? written - checked : (long)sizeof(got);

		if (read_all(11, got, n)) {
			fail("fd 11: the pattern stops after %ld of %ld bytes: %s", checked, written, strerror(errno));
			break;
		}
		for (i = 0; i < n; i++)
			if (got[i] != pattern(checked + i)) {
				fail("fd 11: byte %ld of the pattern is wrong", checked + i);
				checked = written;
				break;
			}
		checked += n;
	}
	if (write_all(12, "again-server", 12) || write_all(11, "again-client", 12))
		fail("writing after the pattern: %s", strerror(errno));
	expect_text(11, "again-server");
	expect_text(12, "again-client");

	{
		char c;
		ssize_t r = recv(19, &c, 1, MSG_DONTWAIT);

		if (r != 0)
			fail("fd 19 (shut for reading) read %zd (%s), not end-of-file", r, r < 0 ? strerror(errno) : "data");
	}
	expect_text(15, "v6-server");
	expect_text(16, "v6-client");
	if (get_int(17, SOL_SOCKET, SO_ACCEPTCONN) != 1)
		fail("fd 17 is not listening");

	expect_text(13, "from-test-before");
	if (write_all(13, "from-target-after", 17))
		fail("fd 13: write: %s", strerror(errno));

	if (failures)
		return 1;
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
