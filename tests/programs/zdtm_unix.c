/*
 * zdtm_unix: unix sockets of every type, bound, listening and connected within the
 * process, with messages queued both ways, in the manner of CRIU's zdtm
 * (static/sockets00-03, socket_queues, sk-unix-unconn, sockets_dgram): a target
 * that checks itself.
 *
 *   zdtm_unix DIR [client]
 *
 * Sets up (fd: what):
 *   10, 11  a stream socketpair: 3000 bytes queued to 10, 5000 to 11 (two writes);
 *           10 O_NONBLOCK and SO_RCVTIMEO 1.5 s, 11 SO_SNDBUF 65536
 *   12, 13  a datagram socketpair: to 12 datagrams of 1 and 700 bytes, and
 *           SO_PEEK_OFF 1 on it (a peek skips the first datagram); to 13 one of 100
 *           bytes, then SO_PASSCRED on 13 and one of 50 (with credentials).  (No
 *           datagram of 0 bytes: a peek marks it, and a later dump cannot see it:
 *           tests/test_unix.py has those.)
 *   14, 15  a seqpacket socketpair: to 14 packets of 10 and 2000 bytes; to 15 one of
 *           30, then shutdown(14, SHUT_WR): 15 reads its packet, then the end
 *   16      a stream socket listening on DIR/listen.sock (mode 0660), backlog 7
 *   17      a seqpacket socket listening on the abstract name "zdtm_unix.PID", backlog 3
 *   18      a datagram socket bound to DIR/dgram.sock: "one" from 19, "two" from 20,
 *           then SO_PASSCRED on 18 and "three" from 19 (with credentials)
 *   19      a datagram socket connected to DIR/dgram.sock, unbound
 *   20      a datagram socket bound to the abstract name "zdtm_unix_sender.PID"
 *   21, 22  a stream connection through 16: 21 connected, 22 accepted; "to server"
 *           queued to 22, "to client" to 21, then shutdown(22, SHUT_WR)
 *   23      a stream socket whose peer wrote "last words" and closed
 *   24, 25  a stream connection through 16 whose client 24 was shut for reading
 *           before it connected (zdtm sockets03): 24 has RCV_SHUTDOWN, 25 nothing --
 *           25 cannot write to 24 (EPIPE), 24 can write to 25
 * Prints "ready PID" and waits for SIGUSR1, then checks, printing "FAIL: what" for
 * each mismatch and exiting 1, or "PASS" and exiting 0:
 *   - the fd table is exactly 0-2 and these fds, each a socket of its type;
 *   - names (getsockname, getpeername), the socket file's type and mode, O_NONBLOCK,
 *     close-on-exec (13 only), the options set, SO_PEERCRED (this process, its uid);
 *   - every queue read to its end: bytes, datagram and packet boundaries, the
 *     senders' names and credentials, the ends of file, what a peek at the offset
 *     shows;
 *   - the sockets work: a byte through each pair, connections to both listeners,
 *     datagrams through 19 and 20 to 18; with "client", first a connection waiting
 *     on 16 (made by the test after a restore): it reads "ping" and answers "pong".
 * Run straight through it passes; after a restore it passes only if every socket
 * came back with its name, peer, options and queue.
 *
 * Debugging the checks: ZDTM_CORRUPT=data (read after SIGUSR1) reads one byte of
 * 10's queue before checking.
 */
#include "zdtm_anon.h"

#include <dirent.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#define FIRST_FD 10
#define LAST_FD 25
#define SO_PEEK_OFF_ 42

static char dir_path[80], listen_path[120], dgram_path[120];
static char abstract_listen[64], abstract_sender[64];

static void pattern(unsigned char *buf, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (unsigned char)(i * 7 + seed + (i >> 8));
}

static socklen_t address(struct sockaddr_un *sa, const char *name, int abstract)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (abstract) {
		memcpy(sa->sun_path + 1, name, strlen(name));
		return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name);
	}
	strcpy(sa->sun_path, name);
	return offsetof(struct sockaddr_un, sun_path) + strlen(name) + 1;
}

static void must(int ok, const char *what)
{
	if (!ok)
		die(what);
}

static void send_all(int fd, const void *buf, size_t len)
{
	must(send(fd, buf, len, MSG_NOSIGNAL) == (ssize_t)len, "send");
}

static void setup(void)
{
	unsigned char buf[5000];
	int sv[2], fd, one = 1, off = 1, size = 65536;
	struct timeval tv = { 1, 500000 };
	struct sockaddr_un sa;
	socklen_t len;

	/* 10, 11 */
	must(!socketpair(AF_UNIX, SOCK_STREAM, 0, sv), "socketpair");
	at(sv[0], 10);
	at(sv[1], 11);
	pattern(buf, 3000, 1);
	send_all(11, buf, 3000);
	pattern(buf, 5000, 2);
	send_all(10, buf, 2000);
	send_all(10, buf + 2000, 3000);
	must(!fcntl(10, F_SETFL, O_NONBLOCK), "O_NONBLOCK");
	must(!setsockopt(10, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), "SO_RCVTIMEO");
	must(!setsockopt(11, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)), "SO_SNDBUF");

	/* 12, 13 */
	must(!socketpair(AF_UNIX, SOCK_DGRAM, 0, sv), "socketpair");
	at(sv[0], 12);
	at(sv[1], 13);
	pattern(buf, 700, 3);
	send_all(13, "A", 1);
	send_all(13, buf, 700);
	must(!setsockopt(12, SOL_SOCKET, SO_PEEK_OFF_, &off, sizeof(off)), "SO_PEEK_OFF");
	pattern(buf, 100, 4);
	send_all(12, buf, 100);
	must(!setsockopt(13, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)), "SO_PASSCRED");
	must(!fcntl(13, F_SETFD, FD_CLOEXEC), "FD_CLOEXEC");
	pattern(buf, 50, 5);
	send_all(12, buf, 50);

	/* 14, 15 */
	must(!socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), "socketpair");
	at(sv[0], 14);
	at(sv[1], 15);
	pattern(buf, 2000, 6);
	send_all(15, buf, 10);
	send_all(15, buf, 2000);
	pattern(buf, 30, 7);
	send_all(14, buf, 30);
	must(!shutdown(14, SHUT_WR), "shutdown");

	/* 16, 17 */
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	unlink(listen_path);
	len = address(&sa, listen_path, 0);
	must(!bind(fd, (struct sockaddr *)&sa, len), "bind listen.sock");
	must(!chmod(listen_path, 0660), "chmod");
	must(!listen(fd, 7), "listen");
	at(fd, 16);
	fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	len = address(&sa, abstract_listen, 1);
	must(!bind(fd, (struct sockaddr *)&sa, len), "bind abstract");
	must(!listen(fd, 3), "listen");
	at(fd, 17);

	/* 18, 19, 20 */
	fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	unlink(dgram_path);
	len = address(&sa, dgram_path, 0);
	must(!bind(fd, (struct sockaddr *)&sa, len), "bind dgram.sock");
	at(fd, 18);
	fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	must(!connect(fd, (struct sockaddr *)&sa, len), "connect dgram.sock");
	at(fd, 19);
	fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	len = address(&sa, abstract_sender, 1);
	must(!bind(fd, (struct sockaddr *)&sa, len), "bind sender");
	at(fd, 20);
	send_all(19, "one", 3);
	len = address(&sa, dgram_path, 0);
	must(sendto(20, "two", 3, 0, (struct sockaddr *)&sa, len) == 3, "sendto");
	must(!setsockopt(18, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)), "SO_PASSCRED");
	send_all(19, "three", 5);

	/* 21, 22 */
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	len = address(&sa, listen_path, 0);
	must(!connect(fd, (struct sockaddr *)&sa, len), "connect listen.sock");
	at(fd, 21);
	at(accept(16, NULL, NULL), 22);
	send_all(21, "to server", 9);
	send_all(22, "to client", 9);
	must(!shutdown(22, SHUT_WR), "shutdown");

	/* 23 */
	must(!socketpair(AF_UNIX, SOCK_STREAM, 0, sv), "socketpair");
	at(sv[0], 23);
	send_all(sv[1], "last words", 10);
	close(sv[1]);

	/* 24, 25 */
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	must(!shutdown(fd, SHUT_RD), "shutdown before connect");
	len = address(&sa, listen_path, 0);
	must(!connect(fd, (struct sockaddr *)&sa, len), "connect listen.sock");
	at(fd, 24);
	at(accept(16, NULL, NULL), 25);
}

/* The name of fd (getsockname, or getpeername with peer) as "path", "@abstract" or "". */
static const char *name_of(int fd, int peer)
{
	static char out[128];
	struct sockaddr_un sa;
	socklen_t len = sizeof(sa);
	int err = peer ? getpeername(fd, (struct sockaddr *)&sa, &len) : getsockname(fd, (struct sockaddr *)&sa, &len);

	if (err)
		return strerror(errno);
	if (len <= offsetof(struct sockaddr_un, sun_path))
		return "";
	if (sa.sun_path[0] == 0) {
		snprintf(out, sizeof(out), "@%.*s", (int)(len - offsetof(struct sockaddr_un, sun_path) - 1),
			 sa.sun_path + 1);
		return out;
	}
	snprintf(out, sizeof(out), "%s", sa.sun_path);
	return out;
}

static void expect_name(int fd, int peer, const char *want)
{
	const char *got = name_of(fd, peer);

	if (strcmp(got, want))
		fail("fd %d: %s is \"%s\", not \"%s\"", fd, peer ? "getpeername" : "getsockname", got, want);
}

static void expect_int(int fd, int level, int name, const char *what, int want)
{
	int value = -12345;
	socklen_t len = sizeof(value);

	if (getsockopt(fd, level, name, &value, &len))
		fail("fd %d: getsockopt %s: %s", fd, what, strerror(errno));
	else if (value != want)
		fail("fd %d: %s is %d, not %d", fd, what, value, want);
}

/* Receive one message of fd (MSG_DONTWAIT) and compare: length, pattern, sender, credentials. */
static void expect_message(int fd, const char *what, const void *want, ssize_t len, const char *sender,
			   int with_creds)
{
	unsigned char buf[8192];
	char control[CMSG_SPACE(sizeof(struct ucred))];
	struct sockaddr_un from;
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr msg = { &from, sizeof(from), &iov, 1, control, sizeof(control), 0 };
	struct cmsghdr *cmsg;
	int creds_pid = 0;
	ssize_t got = recvmsg(fd, &msg, MSG_DONTWAIT);

	if (got != len) {
		fail("fd %d: %s: received %zd bytes (%s), not %zd", fd, what, got, got < 0 ? strerror(errno) : "",
		     len);
		return;
	}
	if (len > 0 && memcmp(buf, want, len))
		fail("fd %d: %s: the bytes differ", fd, what);
	if (sender) {
		const char *name = msg.msg_namelen <= offsetof(struct sockaddr_un, sun_path) ? "" :
			from.sun_path[0] ? from.sun_path : "@";
		char abstract[128];

		if (!strcmp(name, "@")) {
			snprintf(abstract, sizeof(abstract), "@%.*s",
				 (int)(msg.msg_namelen - offsetof(struct sockaddr_un, sun_path) - 1), from.sun_path + 1);
			name = abstract;
		}
		if (strcmp(name, sender))
			fail("fd %d: %s: from \"%s\", not \"%s\"", fd, what, name, sender);
	}
	for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg))
		if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_CREDENTIALS)
			creds_pid = ((struct ucred *)CMSG_DATA(cmsg))->pid;
	if (with_creds >= 0 && (creds_pid == getpid()) != with_creds)
		fail("fd %d: %s: credentials of pid %d (this process: %d)", fd, what, creds_pid, getpid());
}

static void expect_end(int fd, const char *what)
{
	char c;
	ssize_t got = recv(fd, &c, 1, MSG_DONTWAIT);

	if (got != 0)
		fail("fd %d: %s: %zd (%s), not the end of file", fd, what, got, got < 0 ? strerror(errno) : "a byte");
}

static void expect_stream(int fd, const char *what, const unsigned char *want, size_t len)
{
	unsigned char buf[8192];
	size_t done = 0;

	while (done < len) {
		ssize_t got = recv(fd, buf + done, len - done, MSG_DONTWAIT);

		if (got <= 0) {
			fail("fd %d: %s: %zu of %zu bytes, then %s", fd, what, done, len, got ? strerror(errno) : "EOF");
			return;
		}
		done += got;
	}
	if (memcmp(buf, want, len))
		fail("fd %d: %s: the bytes differ", fd, what);
}

static void check_table(void)
{
	static const int types[] = { SOCK_STREAM, SOCK_STREAM, SOCK_DGRAM, SOCK_DGRAM, SOCK_SEQPACKET,
				     SOCK_SEQPACKET, SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM, SOCK_DGRAM,
				     SOCK_DGRAM, SOCK_STREAM, SOCK_STREAM, SOCK_STREAM, SOCK_STREAM, SOCK_STREAM };
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int count = 0;

	while ((e = readdir(d))) {
		int fd = atoi(e->d_name);

		if (e->d_name[0] == '.' || fd == dirfd(d) || fd <= 2)
			continue;
		if (fd < FIRST_FD || fd > LAST_FD)
			fail("fd %d is open", fd);
		else
			count++;
	}
	closedir(d);
	if (count != LAST_FD - FIRST_FD + 1)
		fail("%d of the fds %d-%d are open", count, FIRST_FD, LAST_FD);
	for (int fd = FIRST_FD; fd <= LAST_FD; fd++)
		expect_int(fd, SOL_SOCKET, SO_TYPE, "SO_TYPE", types[fd - FIRST_FD]);
}

static void check_state(void)
{
	struct stat st;
	struct ucred cred;
	socklen_t len = sizeof(cred);
	char want[80];

	expect_name(16, 0, listen_path);
	snprintf(want, sizeof(want), "@%s", abstract_listen);
	expect_name(17, 0, want);
	expect_name(18, 0, dgram_path);
	expect_name(19, 1, dgram_path);
	expect_name(19, 0, "");
	snprintf(want, sizeof(want), "@%s", abstract_sender);
	expect_name(20, 0, want);
	expect_name(21, 1, listen_path);
	expect_name(22, 0, listen_path);
	expect_name(10, 0, "");
	if (stat(listen_path, &st) || !S_ISSOCK(st.st_mode) || (st.st_mode & 07777) != 0660)
		fail("%s: not a socket file of mode 0660", listen_path);
	for (int fd = FIRST_FD; fd <= LAST_FD; fd++) {
		expect_flags(fd, O_RDWR | (fd == 10 ? O_NONBLOCK : 0));
		expect_cloexec(fd, fd == 13);
	}
	expect_int(11, SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF", 131072);
	expect_int(12, SOL_SOCKET, SO_PEEK_OFF_, "SO_PEEK_OFF", 1);
	expect_int(13, SOL_SOCKET, SO_PASSCRED, "SO_PASSCRED", 1);
	expect_int(18, SOL_SOCKET, SO_PASSCRED, "SO_PASSCRED", 1);
	expect_int(10, SOL_SOCKET, SO_PASSCRED, "SO_PASSCRED", 0);
	{
		struct timeval tv;
		socklen_t tl = sizeof(tv);

		if (getsockopt(10, SOL_SOCKET, SO_RCVTIMEO, &tv, &tl) || tv.tv_sec != 1 || tv.tv_usec != 500000)
			fail("fd 10: SO_RCVTIMEO is not 1.5 s");
	}
	for (int fd = 10; fd <= 11; fd++) {
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) || cred.pid != getpid() ||
		    cred.uid != geteuid() || cred.gid != getegid())
			fail("fd %d: SO_PEERCRED is pid %d uid %d gid %d", fd, cred.pid, cred.uid, cred.gid);
	}
}

static void check_queues(void)
{
	unsigned char buf[5000], peeked[16];

	pattern(buf, 3000, 1);
	expect_stream(10, "its 3000 bytes", buf, 3000);
	pattern(buf, 5000, 2);
	expect_stream(11, "its 5000 bytes", buf, 5000);

	/* The peek offset 1 skips datagram "A": a peek shows the 700-byte one. */
	pattern(buf, 700, 3);
	if (recv(12, peeked, sizeof(peeked), MSG_PEEK | MSG_DONTWAIT) != sizeof(peeked) ||
	    memcmp(peeked, buf, sizeof(peeked)))
		fail("fd 12: a peek at offset 1 does not show the second datagram");
	expect_int(12, SOL_SOCKET, SO_PEEK_OFF_, "SO_PEEK_OFF after a peek", 1 + (int)sizeof(peeked));
	{
		int none = -1;

		setsockopt(12, SOL_SOCKET, SO_PEEK_OFF_, &none, sizeof(none));
	}
	expect_message(12, "datagram 1", "A", 1, NULL, -1);
	expect_message(12, "datagram 2", buf, 700, NULL, -1);
	pattern(buf, 100, 4);
	expect_message(13, "datagram 1", buf, 100, NULL, 0);
	pattern(buf, 50, 5);
	expect_message(13, "datagram 2", buf, 50, NULL, 1);

	pattern(buf, 2000, 6);
	expect_message(14, "packet 1", buf, 10, NULL, -1);
	expect_message(14, "packet 2", buf, 2000, NULL, -1);
	pattern(buf, 30, 7);
	expect_message(15, "packet 1", buf, 30, NULL, -1);
	expect_end(15, "after its packet");

	expect_message(18, "datagram one", "one", 3, "", 0);
	{
		char want[80];

		snprintf(want, sizeof(want), "@%s", abstract_sender);
		expect_message(18, "datagram two", "two", 3, want, 0);
	}
	expect_message(18, "datagram three", "three", 5, "", 1);

	expect_stream(22, "its bytes", (const unsigned char *)"to server", 9);
	expect_stream(21, "its bytes", (const unsigned char *)"to client", 9);
	expect_end(21, "after its bytes");
	expect_stream(23, "its bytes", (const unsigned char *)"last words", 10);
	expect_end(23, "after its bytes");
	expect_end(24, "shut for reading before it connected");
	for (int fd = FIRST_FD; fd <= LAST_FD; fd++) {
		char c;

		if (fd == 15 || fd == 21 || fd == 23 || fd == 24 || fd == 16 || fd == 17)
			continue;
		if (recv(fd, &c, 1, MSG_DONTWAIT) != -1 || errno != EAGAIN)
			fail("fd %d: more is queued", fd);
	}
}

static void connect_to(int listener, int type, const char *name, int abstract)
{
	struct sockaddr_un sa;
	socklen_t len = address(&sa, name, abstract);
	int fd = socket(AF_UNIX, type, 0), conn;
	char c = 0;

	if (connect(fd, (struct sockaddr *)&sa, len)) {
		fail("connect to %s%s: %s", abstract ? "@" : "", name, strerror(errno));
		close(fd);
		return;
	}
	conn = accept(listener, NULL, NULL);
	if (conn < 0 || send(fd, "x", 1, 0) != 1 || recv(conn, &c, 1, 0) != 1 || c != 'x')
		fail("fd %d: a new connection does not carry a byte", listener);
	close(conn);
	close(fd);
}

static void through(int from, int to, const char *what)
{
	char c = 0;

	if (send(from, "y", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1 || recv(to, &c, 1, MSG_DONTWAIT) != 1 || c != 'y')
		fail("%s: a byte from fd %d does not come out of fd %d", what, from, to);
}

static void check_working(int client)
{
	struct sockaddr_un sa;
	socklen_t len;

	if (client) {
		int conn = accept(16, NULL, NULL);
		char buf[8] = { 0 };

		if (conn < 0 || recv(conn, buf, 4, MSG_WAITALL) != 4 || memcmp(buf, "ping", 4) ||
		    send(conn, "pong", 4, 0) != 4)
			fail("fd 16: the waiting client did not say ping");
		close(conn);
	}
	connect_to(16, SOCK_STREAM, listen_path, 0);
	connect_to(17, SOCK_SEQPACKET, abstract_listen, 1);
	through(10, 11, "pair 10-11");
	through(11, 10, "pair 11-10");
	through(12, 13, "pair 12-13");
	through(15, 14, "pair 15-14");
	through(21, 22, "connection 21-22");
	through(24, 25, "connection 24-25");
	if (send(25, "n", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != -1 || errno != EPIPE)
		fail("fd 25: writing to 24, shut for reading, did not fail with EPIPE");
	through(19, 18, "19 to 18");
	len = address(&sa, dgram_path, 0);
	if (sendto(20, "z", 1, 0, (struct sockaddr *)&sa, len) != 1)
		fail("fd 20: sendto %s: %s", dgram_path, strerror(errno));
	else {
		char c;

		if (recv(18, &c, 1, MSG_DONTWAIT) != 1)
			fail("fd 18: the datagram from 20 did not arrive");
	}
	if (send(14, "w", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != -1 || errno != EPIPE)
		fail("fd 14: a write after shutdown(SHUT_WR) does not fail with EPIPE");
}

int main(int argc, char **argv)
{
	int client = argc > 2 && !strcmp(argv[2], "client");

	if (argc < 2) {
		fprintf(stderr, "usage: zdtm_unix DIR [client]\n");
		return 2;
	}
	snprintf(dir_path, sizeof(dir_path), "%s", argv[1]);
	snprintf(listen_path, sizeof(listen_path), "%s/listen.sock", dir_path);
	snprintf(dgram_path, sizeof(dgram_path), "%s/dgram.sock", dir_path);
	snprintf(abstract_listen, sizeof(abstract_listen), "zdtm_unix.%d", getpid());
	snprintf(abstract_sender, sizeof(abstract_sender), "zdtm_unix_sender.%d", getpid());
	setup();
	ready_then_wait(SIGUSR1);
	if (getenv("ZDTM_CORRUPT") && !strcmp(getenv("ZDTM_CORRUPT"), "data")) {
		char c;

		if (recv(10, &c, 1, MSG_DONTWAIT) != 1)
			printf("corrupt: recv: %s\n", strerror(errno));
	}
	check_table();
	check_state();
	check_queues();
	check_working(client);
	(void)expect_link;
	return finish();
}
