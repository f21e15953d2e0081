/*
 * zdtm_inet: TCP and UDP sockets on IPv4 and IPv6 with their options, in the
 * manner of CRIU's zdtm (static/socket-tcp-listen, socket_udp, sockets00): a
 * target that checks itself.
 *
 *   zdtm_inet
 *
 * Sets up (every port chosen by the kernel, port 0):
 *   - fd 10: TCP/IPv4 listening on 127.0.0.1, backlog 7, O_NONBLOCK, with
 *     SO_REUSEADDR, SO_KEEPALIVE, TCP_NODELAY, TCP_KEEPIDLE/INTVL/CNT,
 *     SO_RCVBUF/SO_SNDBUF, SO_LINGER, IP_TOS, IP_TTL, SO_PRIORITY,
 *     SO_RCVLOWAT, SO_RCVTIMEO/SO_SNDTIMEO, TCP_USER_TIMEOUT, TCP_CONGESTION;
 *     fd 11 = dup(10): one open file description;
 *   - fd 12: TCP/IPv6 listening on ::1, backlog 3, IPV6_V6ONLY, SO_REUSEPORT,
 *     IPV6_TCLASS, IPV6_UNICAST_HOPS, TCP_NODELAY;
 *   - fd 13: UDP/IPv4 bound to 127.0.0.1, SO_BROADCAST, IP_PKTINFO,
 *     SO_TIMESTAMPNS, SO_RCVBUF;
 *   - fd 14: UDP/IPv6 bound to ::1 and connected to fd 15;
 *   - fd 15: UDP/IPv6 v6-only, bound to [::] (wildcard), IPV6_RECVPKTINFO;
 *   - fd 16: TCP/IPv4 never bound, TCP_NODELAY and SO_KEEPALIVE;
 *   - fd 17: TCP/IPv4 bound to 127.0.0.1, not listening, SO_REUSEADDR;
 *   - fd 18: UDP/IPv6 never bound;
 *   shut down (CRIU's zdtm static/socket_udp_shutdown):
 *   - fd 19: UDP/IPv4 on 127.0.0.1 connected to fd 20, shutdown(SHUT_WR);
 *   - fd 20: UDP/IPv4 on 127.0.0.1 connected to fd 19, shutdown(SHUT_RD);
 *   - fd 21: UDP/IPv6 bound to ::1, not connected, shutdown(SHUT_RDWR);
 *   - fd 22: UDP/IPv4 bound to 127.0.0.1, not connected, shutdown(SHUT_WR);
 *   - fd 23: TCP/IPv4 bound to 127.0.0.1, not listening, shutdown(SHUT_WR)
 *     (ENOTCONN, but the kernel keeps it: net/ipv4/af_inet.c inet_shutdown).
 * Then it reads back, for each socket, every option of OPTS (below), its
 * address and peer, and prints "ready PID".  It waits for SIGUSR1
 * (`while (!go) pause();`), then checks, printing "FAIL: what" for each
 * mismatch and exiting 1, or "PASS" and exiting 0:
 *   - the fd table is exactly 0-2 and 10-23, each the socket it was (family,
 *     type, protocol), with the same address and peer, listening or not;
 *   - every option of OPTS as read at setup, and the values set by hand;
 *   - fds 10 and 11 share one description (F_SETFL through 11 shows on 10);
 *     O_NONBLOCK on 10 only; the listen backlogs (TCP_INFO tcpi_sacked);
 *   - it works: a new connection to fd 10's port is accepted (and the
 *     accepted socket inherited TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE, IP_TOS)
 *     and carries data both ways, as does one to fd 12 over IPv6 and one
 *     from fd 16; fd 17 can listen on its port; a datagram sent to fd 13
 *     arrives; one sent through fd 14 arrives on fd 15 from fd 14's address;
 *   - the shutdowns hold: a send through 19, 21 or 22 fails (EPIPE), 20 and
 *     21 poll POLLRDHUP, and 23, once connected to fd 10's port, cannot send
 *     (EPIPE).
 * Run straight through (no checkpoint in between) it passes.
 *
 * Debugging the checks: ZDTM_CORRUPT=option (read after SIGUSR1) clears
 * TCP_NODELAY on fd 10 first, which only the option checks can tell.
 */
#include "zdtm_anon.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define FIRST 10
#define LAST 23
#define NSOCK (LAST - FIRST + 1)

static void set_int(int fd, int level, int name, int value, const char *what)
{
	if (setsockopt(fd, level, name, &value, sizeof(value)))
		die(what);
}

/* Options read back at setup and compared after SIGUSR1; absent ones are skipped. */
static const struct opt {
	const char *name;
	int level, number, size;
} OPTS[] = {
	{ "SO_REUSEADDR", SOL_SOCKET, SO_REUSEADDR, 4 },
	{ "SO_REUSEPORT", SOL_SOCKET, SO_REUSEPORT, 4 },
	{ "SO_KEEPALIVE", SOL_SOCKET, SO_KEEPALIVE, 4 },
	{ "SO_BROADCAST", SOL_SOCKET, SO_BROADCAST, 4 },
	{ "SO_LINGER", SOL_SOCKET, SO_LINGER, sizeof(struct linger) },
	{ "SO_PRIORITY", SOL_SOCKET, SO_PRIORITY, 4 },
	{ "SO_RCVLOWAT", SOL_SOCKET, SO_RCVLOWAT, 4 },
	{ "SO_SNDLOWAT", SOL_SOCKET, SO_SNDLOWAT, 4 },
	{ "SO_RCVTIMEO", SOL_SOCKET, SO_RCVTIMEO, sizeof(struct timeval) },
	{ "SO_SNDTIMEO", SOL_SOCKET, SO_SNDTIMEO, sizeof(struct timeval) },
	{ "SO_RCVBUF", SOL_SOCKET, SO_RCVBUF, 4 },
	{ "SO_SNDBUF", SOL_SOCKET, SO_SNDBUF, 4 },
	{ "SO_TIMESTAMPNS", SOL_SOCKET, SO_TIMESTAMPNS, 4 },
	{ "SO_MARK", SOL_SOCKET, SO_MARK, 4 },
	{ "IP_TOS", IPPROTO_IP, IP_TOS, 4 },
	{ "IP_TTL", IPPROTO_IP, IP_TTL, 4 },
	{ "IP_PKTINFO", IPPROTO_IP, IP_PKTINFO, 4 },
	{ "IP_TRANSPARENT", IPPROTO_IP, IP_TRANSPARENT, 4 },
	{ "IPV6_V6ONLY", IPPROTO_IPV6, IPV6_V6ONLY, 4 },
	{ "IPV6_TCLASS", IPPROTO_IPV6, IPV6_TCLASS, 4 },
	{ "IPV6_UNICAST_HOPS", IPPROTO_IPV6, IPV6_UNICAST_HOPS, 4 },
	{ "IPV6_RECVPKTINFO", IPPROTO_IPV6, IPV6_RECVPKTINFO, 4 },
	{ "TCP_NODELAY", IPPROTO_TCP, TCP_NODELAY, 4 },
	{ "TCP_KEEPIDLE", IPPROTO_TCP, TCP_KEEPIDLE, 4 },
	{ "TCP_KEEPINTVL", IPPROTO_TCP, TCP_KEEPINTVL, 4 },
	{ "TCP_KEEPCNT", IPPROTO_TCP, TCP_KEEPCNT, 4 },
	{ "TCP_USER_TIMEOUT", IPPROTO_TCP, TCP_USER_TIMEOUT, 4 },
	{ "TCP_CONGESTION", IPPROTO_TCP, TCP_CONGESTION, 16 },
	{ "TCP_DEFER_ACCEPT", IPPROTO_TCP, TCP_DEFER_ACCEPT, 4 },
};
#define NOPTS (sizeof(OPTS) / sizeof(OPTS[0]))

static struct snapshot {
	int domain, type, protocol, listening;
	struct sockaddr_storage name, peer;
	socklen_t name_len, peer_len;
	unsigned char opt[NOPTS][16];
	socklen_t opt_len[NOPTS];
	int opt_ok[NOPTS];
} before[NSOCK];

static int get_int(int fd, int level, int name)
{
	int value = -12345;
	socklen_t len = sizeof(value);

	if (getsockopt(fd, level, name, &value, &len))
		return -12345;
	return value;
}

static void snap(int fd, struct snapshot *s)
{
	unsigned i;

	memset(s, 0, sizeof(*s));
	s->domain = get_int(fd, SOL_SOCKET, SO_DOMAIN);
	s->type = get_int(fd, SOL_SOCKET, SO_TYPE);
	s->protocol = get_int(fd, SOL_SOCKET, SO_PROTOCOL);
	s->listening = get_int(fd, SOL_SOCKET, SO_ACCEPTCONN);
	s->name_len = sizeof(s->name);
	if (getsockname(fd, (struct sockaddr *)&s->name, &s->name_len))
		s->name_len = 0;
	s->peer_len = sizeof(s->peer);
	if (getpeername(fd, (struct sockaddr *)&s->peer, &s->peer_len))
		s->peer_len = 0;
	for (i = 0; i < NOPTS; i++) {
		s->opt_len[i] = OPTS[i].size;
		s->opt_ok[i] = !getsockopt(fd, OPTS[i].level, OPTS[i].number, s->opt[i], &s->opt_len[i]);
	}
}

static const char *show(const struct sockaddr_storage *a, socklen_t len)
{
	static char buf[4][80];
	static int n;
	char *out = buf[n++ % 4], host[64] = "?";

	if (!len)
		return "(none)";
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)a;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(out, 80, "%s:%d", host, ntohs(in->sin_port));
	} else {
		const struct sockaddr_in6 *in6 = (const void *)a;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(out, 80, "[%s]:%d", host, ntohs(in6->sin6_port));
	}
	return out;
}

static void compare(int fd, const struct snapshot *want)
{
	struct snapshot now;
	unsigned i;

	snap(fd, &now);
	if (now.domain != want->domain || now.type != want->type || now.protocol != want->protocol)
		fail("fd %d is family %d type %d protocol %d, expected %d %d %d", fd, now.domain, now.type,
		     now.protocol, want->domain, want->type, want->protocol);
	if (now.listening != want->listening)
		fail("fd %d SO_ACCEPTCONN is %d, expected %d", fd, now.listening, want->listening);
	if (now.name_len != want->name_len || memcmp(&now.name, &want->name, now.name_len))
		fail("fd %d is bound to %s, expected %s", fd, show(&now.name, now.name_len),
		     show(&want->name, want->name_len));
	if (now.peer_len != want->peer_len || memcmp(&now.peer, &want->peer, now.peer_len))
		fail("fd %d is connected to %s, expected %s", fd, show(&now.peer, now.peer_len),
		     show(&want->peer, want->peer_len));
	for (i = 0; i < NOPTS; i++) {
		if (now.opt_ok[i] != want->opt_ok[i])
			fail("fd %d %s is %s now, and was %s", fd, OPTS[i].name, now.opt_ok[i] ? "readable" : "not",
			     want->opt_ok[i] ? "readable" : "not");
		else if (now.opt_ok[i] && (now.opt_len[i] != want->opt_len[i] ||
					   memcmp(now.opt[i], want->opt[i], now.opt_len[i])))
			fail("fd %d %s is %d, was %d (first int)", fd, OPTS[i].name, *(int *)now.opt[i],
			     *(int *)want->opt[i]);
	}
}

static void expect_int(int fd, int level, int name, int want, const char *what)
{
	int got = get_int(fd, level, name);

	if (got != want)
		fail("fd %d %s is %d, expected %d", fd, what, got, want);
}

static int port_of(int fd)
{
	struct sockaddr_storage a;
	socklen_t len = sizeof(a);

	if (getsockname(fd, (struct sockaddr *)&a, &len))
		return -1;
	return a.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&a)->sin_port)
				      : ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
}

static int backlog_of(int fd)
{
	struct tcp_info info;
	socklen_t len = sizeof(info);

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len))
		return -1;
	return info.tcpi_sacked;
}

static int bind_loopback(int fd, int family)
{
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };

	return family == AF_INET ? bind(fd, (struct sockaddr *)&in, sizeof(in))
				 : bind(fd, (struct sockaddr *)&in6, sizeof(in6));
}

static int connect_to(int fd, int family, int port)
{
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
				  .sin_port = htons(port) };
	struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT,
				    .sin6_port = htons(port) };

	return family == AF_INET ? connect(fd, (struct sockaddr *)&in, sizeof(in))
				 : connect(fd, (struct sockaddr *)&in6, sizeof(in6));
}

/* poll's revents for fd, at once. */
static int rdhup(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };

	return poll(&p, 1, 0) == 1 ? p.revents : 0;
}

/* One byte sent from fd to the loopback address of family at port (sendto). */
static ssize_t sendto_port(int fd, int family, int port)
{
	struct sockaddr_in v4 = { .sin_family = AF_INET, .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct sockaddr_in6 v6 = { .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_LOOPBACK_INIT };

	if (family == AF_INET)
		return sendto(fd, "x", 1, 0, (struct sockaddr *)&v4, sizeof(v4));
	return sendto(fd, "x", 1, 0, (struct sockaddr *)&v6, sizeof(v6));
}

static int readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, 5000) == 1;
}

/* A connection from `client` (already connected or connecting) accepted on `listener`:
 * data both ways; returns the accepted fd or -1. */
static int exchange(int listener, int client, const char *what)
{
	char buf[16];
	int conn;

	if (!readable(listener)) {
		fail("%s: no connection to accept on fd %d", what, listener);
		return -1;
	}
	conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
	if (conn < 0) {
		fail("%s: accept on fd %d: %s", what, listener, strerror(errno));
		return -1;
	}
	if (write(client, "ping", 4) != 4 || !readable(conn) || read(conn, buf, sizeof(buf)) != 4 ||
	    memcmp(buf, "ping", 4))
		fail("%s: data client -> server", what);
	if (write(conn, "pong", 4) != 4 || !readable(client) || read(client, buf, sizeof(buf)) != 4 ||
	    memcmp(buf, "pong", 4))
		fail("%s: data server -> client", what);
	return conn;
}

int main(void)
{
	struct linger linger = { .l_onoff = 1, .l_linger = 5 };
	struct timeval rcvtimeo = { .tv_sec = 1, .tv_usec = 500000 }, sndtimeo = { .tv_sec = 2, .tv_usec = 500000 };
	struct sockaddr_storage a;
	socklen_t alen;
	char buf[64];
	int i, conn, client;

	signal(SIGUSR1, on_go);
	signal(SIGPIPE, SIG_IGN);

	/* fd 10, 11: TCP/IPv4 listening, its options, O_NONBLOCK; 11 a dup. */
	at(socket(AF_INET, SOCK_STREAM, 0), 10);
	set_int(10, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
	set_int(10, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
	set_int(10, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
	set_int(10, IPPROTO_TCP, TCP_KEEPIDLE, 42, "TCP_KEEPIDLE");
	set_int(10, IPPROTO_TCP, TCP_KEEPINTVL, 7, "TCP_KEEPINTVL");
	set_int(10, IPPROTO_TCP, TCP_KEEPCNT, 3, "TCP_KEEPCNT");
	set_int(10, SOL_SOCKET, SO_RCVBUF, 65536, "SO_RCVBUF");
	set_int(10, SOL_SOCKET, SO_SNDBUF, 32768, "SO_SNDBUF");
	if (setsockopt(10, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger)))
		die("SO_LINGER");
	set_int(10, IPPROTO_IP, IP_TOS, 0x10, "IP_TOS");
	set_int(10, IPPROTO_IP, IP_TTL, 33, "IP_TTL");
	set_int(10, SOL_SOCKET, SO_PRIORITY, 5, "SO_PRIORITY");
	set_int(10, SOL_SOCKET, SO_RCVLOWAT, 3, "SO_RCVLOWAT");
	if (setsockopt(10, SOL_SOCKET, SO_RCVTIMEO, &rcvtimeo, sizeof(rcvtimeo)) ||
	    setsockopt(10, SOL_SOCKET, SO_SNDTIMEO, &sndtimeo, sizeof(sndtimeo)))
		die("SO_RCVTIMEO/SO_SNDTIMEO");
	set_int(10, IPPROTO_TCP, TCP_USER_TIMEOUT, 12345, "TCP_USER_TIMEOUT");
	if (setsockopt(10, IPPROTO_TCP, TCP_CONGESTION, "reno", 4))
		die("TCP_CONGESTION");
	if (bind_loopback(10, AF_INET) || listen(10, 7))
		die("bind/listen 10");
	if (fcntl(10, F_SETFL, fcntl(10, F_GETFL) | O_NONBLOCK))
		die("O_NONBLOCK");
	if (dup2(10, 11) != 11)
		die("dup2 11");

	/* fd 12: TCP/IPv6 listening, v6-only. */
	at(socket(AF_INET6, SOCK_STREAM, 0), 12);
	set_int(12, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
	set_int(12, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
	set_int(12, IPPROTO_IPV6, IPV6_TCLASS, 0x20, "IPV6_TCLASS");
	set_int(12, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 17, "IPV6_UNICAST_HOPS");
	set_int(12, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY 12");
	if (bind_loopback(12, AF_INET6) || listen(12, 3))
		die("bind/listen 12");

	/* fd 13: UDP/IPv4 bound. */
	at(socket(AF_INET, SOCK_DGRAM, 0), 13);
	set_int(13, SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST");
	set_int(13, IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO");
	set_int(13, SOL_SOCKET, SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS");
	set_int(13, SOL_SOCKET, SO_RCVBUF, 50000, "SO_RCVBUF 13");
	if (bind_loopback(13, AF_INET))
		die("bind 13");

	/* fd 15: UDP/IPv6 v6-only on the wildcard; fd 14: UDP/IPv6 on ::1 connected to it. */
	at(socket(AF_INET6, SOCK_DGRAM, 0), 15);
	set_int(15, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY 15");
	set_int(15, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1, "IPV6_RECVPKTINFO");
	{
		struct sockaddr_in6 any = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT };

		if (bind(15, (struct sockaddr *)&any, sizeof(any)))
			die("bind 15");
	}
	at(socket(AF_INET6, SOCK_DGRAM, 0), 14);
	if (bind_loopback(14, AF_INET6) || connect_to(14, AF_INET6, port_of(15)))
		die("bind/connect 14");

	/* fd 16: TCP never bound; fd 17: TCP bound, not listening; fd 18: UDP/IPv6 never bound. */
	at(socket(AF_INET, SOCK_STREAM, 0), 16);
	set_int(16, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY 16");
	set_int(16, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE 16");
	at(socket(AF_INET, SOCK_STREAM, 0), 17);
	set_int(17, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR 17");
	if (bind_loopback(17, AF_INET))
		die("bind 17");
	at(socket(AF_INET6, SOCK_DGRAM, 0), 18);

	/* fds 19-23: shut down (an unconnected socket's shutdown fails with ENOTCONN, and holds). */
	at(socket(AF_INET, SOCK_DGRAM, 0), 19);
	at(socket(AF_INET, SOCK_DGRAM, 0), 20);
	if (bind_loopback(19, AF_INET) || bind_loopback(20, AF_INET) || connect_to(19, AF_INET, port_of(20)) ||
	    connect_to(20, AF_INET, port_of(19)) || shutdown(19, SHUT_WR) || shutdown(20, SHUT_RD))
		die("fds 19, 20");
	at(socket(AF_INET6, SOCK_DGRAM, 0), 21);
	if (bind_loopback(21, AF_INET6))
		die("bind 21");
	shutdown(21, SHUT_RDWR);
	at(socket(AF_INET, SOCK_DGRAM, 0), 22);
	if (bind_loopback(22, AF_INET))
		die("bind 22");
	shutdown(22, SHUT_WR);
	at(socket(AF_INET, SOCK_STREAM, 0), 23);
	if (bind_loopback(23, AF_INET))
		die("bind 23");
	shutdown(23, SHUT_WR);

	for (i = FIRST; i <= LAST; i++)
		snap(i, &before[i - FIRST]);

	printf("ready %d\n", getpid());
	fflush(stdout);
	while (!go)
		pause();

	if (getenv("ZDTM_CORRUPT") && !strcmp(getenv("ZDTM_CORRUPT"), "option"))
		set_int(10, IPPROTO_TCP, TCP_NODELAY, 0, "corrupt");

	/* The fd table: exactly these fds (and 0-2). */
	{
		DIR *dir = opendir("/proc/self/fd");
		struct dirent *e;

		if (!dir)
			die("opendir");
		while ((e = readdir(dir))) {
			int n = atoi(e->d_name);

			if (e->d_name[0] == '.' || n <= 2 || n == dirfd(dir) || (n >= FIRST && n <= LAST))
				continue;
			fail("fd %d is open, and should not be", n);
		}
		closedir(dir);
	}

	/* Each socket as it was. */
	for (i = FIRST; i <= LAST; i++)
		compare(i, &before[i - FIRST]);

	/* The values set, by hand (the snapshot could have read defaults). */
	expect_int(10, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
	expect_int(10, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
	expect_int(10, IPPROTO_TCP, TCP_KEEPIDLE, 42, "TCP_KEEPIDLE");
	expect_int(10, IPPROTO_TCP, TCP_KEEPINTVL, 7, "TCP_KEEPINTVL");
	expect_int(10, IPPROTO_TCP, TCP_KEEPCNT, 3, "TCP_KEEPCNT");
	expect_int(10, SOL_SOCKET, SO_RCVBUF, 131072, "SO_RCVBUF");
	expect_int(10, SOL_SOCKET, SO_SNDBUF, 65536, "SO_SNDBUF");
	expect_int(10, IPPROTO_IP, IP_TOS, 0x10, "IP_TOS");
	expect_int(10, IPPROTO_IP, IP_TTL, 33, "IP_TTL");
	expect_int(10, SOL_SOCKET, SO_PRIORITY, 5, "SO_PRIORITY");
	expect_int(10, SOL_SOCKET, SO_RCVLOWAT, 3, "SO_RCVLOWAT");
	expect_int(10, IPPROTO_TCP, TCP_USER_TIMEOUT, 12345, "TCP_USER_TIMEOUT");
	expect_int(10, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
	expect_int(12, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
	expect_int(12, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
	expect_int(12, IPPROTO_IPV6, IPV6_TCLASS, 0x20, "IPV6_TCLASS");
	expect_int(12, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 17, "IPV6_UNICAST_HOPS");
	expect_int(13, SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST");
	expect_int(15, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
	expect_int(16, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
	{
		struct linger got;
		struct timeval tv;
		socklen_t len = sizeof(got);

		if (getsockopt(10, SOL_SOCKET, SO_LINGER, &got, &len) || got.l_onoff != 1 || got.l_linger != 5)
			fail("fd 10 SO_LINGER is not {1, 5}");
		len = sizeof(tv);
		if (getsockopt(10, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) || tv.tv_sec != 1 || tv.tv_usec != 500000)
			fail("fd 10 SO_RCVTIMEO is not 1.5 s");
		len = sizeof(buf);
		if (getsockopt(10, IPPROTO_TCP, TCP_CONGESTION, buf, &len) || strcmp(buf, "reno"))
			fail("fd 10 TCP_CONGESTION is not reno");
	}
	if (backlog_of(10) != 7 || backlog_of(12) != 3)
		fail("listen backlogs are %d and %d, expected 7 and 3", backlog_of(10), backlog_of(12));
	if (!(fcntl(10, F_GETFL) & O_NONBLOCK) || (fcntl(12, F_GETFL) & O_NONBLOCK))
		fail("O_NONBLOCK: fd 10 %#o, fd 12 %#o", fcntl(10, F_GETFL), fcntl(12, F_GETFL));

	/* It works: connections and datagrams. */
	client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect_to(client, AF_INET, port_of(10)))
		fail("connect to fd 10's port %d: %s", port_of(10), strerror(errno));
	conn = exchange(10, client, "IPv4 listener");
	if (conn >= 0) {
		expect_int(conn, IPPROTO_TCP, TCP_NODELAY, 1, "accepted TCP_NODELAY");
		expect_int(conn, SOL_SOCKET, SO_KEEPALIVE, 1, "accepted SO_KEEPALIVE");
		expect_int(conn, IPPROTO_TCP, TCP_KEEPIDLE, 42, "accepted TCP_KEEPIDLE");
		expect_int(conn, IPPROTO_IP, IP_TOS, 0x10, "accepted IP_TOS");
		close(conn);
	}
	close(client);

	client = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect_to(client, AF_INET6, port_of(12)))
		fail("connect to fd 12's port %d: %s", port_of(12), strerror(errno));
	conn = exchange(12, client, "IPv6 listener");
	if (conn >= 0) {
		expect_int(conn, IPPROTO_IPV6, IPV6_TCLASS, 0x20, "accepted IPV6_TCLASS");
		close(conn);
	}
	close(client);

	if (connect_to(16, AF_INET, port_of(10)))
		fail("connect fd 16: %s", strerror(errno));
	conn = exchange(10, 16, "fd 16 to fd 10");
	if (conn >= 0)
		close(conn);

	if (listen(17, 1))
		fail("listen fd 17: %s", strerror(errno));
	client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect_to(client, AF_INET, port_of(17)))
		fail("connect to fd 17's port: %s", strerror(errno));
	conn = exchange(17, client, "fd 17 listening");
	if (conn >= 0)
		close(conn);
	close(client);

	client = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (connect_to(client, AF_INET, port_of(13)) || write(client, "udp4", 4) != 4)
		fail("send to fd 13: %s", strerror(errno));
	if (!readable(13) || recv(13, buf, sizeof(buf), 0) != 4 || memcmp(buf, "udp4", 4))
		fail("fd 13 did not receive the datagram");
	close(client);

	if (write(14, "udp6", 4) != 4)
		fail("send through fd 14: %s", strerror(errno));
	alen = sizeof(a);
	if (!readable(15) || recvfrom(15, buf, sizeof(buf), 0, (struct sockaddr *)&a, &alen) != 4 ||
	    memcmp(buf, "udp6", 4))
		fail("fd 15 did not receive fd 14's datagram");
	else if (((struct sockaddr_in6 *)&a)->sin6_port != htons(port_of(14)))
		fail("fd 15 got the datagram from %s, not from fd 14", show(&a, alen));

	/* The shutdowns (after the checks above: a datagram fd 22 sent would reach fd 13). */
	if (send(19, "x", 1, 0) >= 0 || errno != EPIPE)
		fail("fd 19 (shut for writing) can send");
	if (!(rdhup(20) & POLLRDHUP))
		fail("fd 20 is not shut for reading");
	if (!(rdhup(21) & POLLRDHUP) || !(rdhup(21) & POLLHUP))
		fail("fd 21 is not shut both ways");
	if (sendto_port(21, AF_INET6, port_of(15)) >= 0 || errno != EPIPE)
		fail("fd 21 (shut both ways) can send");
	if (sendto_port(22, AF_INET, port_of(13)) >= 0 || errno != EPIPE)
		fail("fd 22 (shut for writing) can send");
	if (connect_to(23, AF_INET, port_of(10)))
		fail("connect fd 23: %s", strerror(errno));
	else if (send(23, "x", 1, 0) >= 0 || errno != EPIPE)
		fail("fd 23 (shut for writing before it connected) can send");

	/* Sharing: F_SETFL through 11 shows on 10. */
	if (fcntl(11, F_SETFL, fcntl(11, F_GETFL) & ~O_NONBLOCK))
		fail("F_SETFL fd 11: %s", strerror(errno));
	if (fcntl(10, F_GETFL) & O_NONBLOCK)
		fail("fds 10 and 11 do not share an open file description");

	if (failures)
		return 1;
	printf("PASS\n");
	return 0;
}
