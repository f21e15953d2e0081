/*
 * resource_target: a process holding one resource that a restore cannot give
 * back (or none; or a seccomp filter, which a restore now gives back), and able
 * to show that the resource still works.
 *
 *   resource_target none|pipe|socket|iouring|seccomp|aio|child
 *   resource_target deleted|fcntl|flock|ofd|lease PATH
 *
 *   none     nothing beyond fds 0-2
 *   pipe     both ends of a pipe, at fds 5 and 6
 *   socket   a Unix socket pair, at fds 5 and 6
 *   iouring  an io_uring (io_uring_setup) at fd 5, its rings mapped as liburing does
 *   seccomp  a seccomp filter making the (nonexistent) syscall 1000 fail with EPERM
 *   aio      an AIO context (io_setup), its ring mapped as "/[aio] (deleted)"
 *   child    a forked child that sleeps (it dies with the parent: PR_SET_PDEATHSIG)
 *   deleted  PATH created, "hello" written, then 2 MiB more (more than ckpt's default ghost
 *            limit, 1 MiB), unlinked, kept open at fd 5
 *   fcntl    a POSIX write lock on bytes 100-149 of PATH through fd 5
 *   flock    flock(LOCK_EX) on PATH through fd 5
 *   ofd      an OFD write lock on the whole of PATH through fd 5
 *   lease    a read lease on PATH (opened O_RDONLY) at fd 5 (needs the file's
 *            owner or CAP_LEASE)
 *
 * Prints "ready PID", then "holding KIND DETAIL" (the fd, or the child's pid),
 * then answers commands on stdin, one per line:
 *   ping   -> "ok N"    N counts the pings: the process runs and answers
 *   check  -> "ok"      the resource still works: a byte through the pipe or
 *                       socket, a NOP through the io_uring, the filter still
 *                       answering EPERM, the child alive, the file's content,
 *                       the lock or lease still held ("err what" otherwise)
 * At EOF on stdin (a restored copy gets ckpt's own stdin) it waits in pause().
 * On SIGUSR1 it prints "PASS" and exits 0; for seccomp and aio it checks its
 * resource first (those checks are plain syscalls) and prints "FAIL: what" and
 * exits 1 when the resource no longer works.  Setup failures print
 * "err setup: what" (before ready) and exit 2; io_uring_setup failing with
 * ENOSYS or EPERM prints "err unsupported: io_uring: ..." and exits 3.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FILTERED_NR 1000

static const char *kind, *path;
static pid_t child;

/* io_uring rings, as liburing maps them (io_uring_setup(2)). */
static int ring_fd = -1;
static unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
static struct io_uring_sqe *sqes;
static struct io_uring_cqe *cqes;

static aio_context_t aio_ctx;

/* The checks that are plain syscalls, safe in a signal handler: NULL when fine. */
static const char *check_syscalls(void)
{
	struct io_event event;
	struct timespec zero = { 0, 0 };

	if (!strcmp(kind, "seccomp") && (syscall(FILTERED_NR) != -1 || errno != EPERM))
		return "the filter is gone";
	if (!strcmp(kind, "aio") && syscall(__NR_io_getevents, aio_ctx, 0, 1, &event, &zero) != 0)
		return "the AIO context is gone";
	return NULL;
}

static void on_usr1(int sig)
{
	const char *what = check_syscalls();

	(void)sig;
	if (what) {
		if (write(1, "FAIL: ", 6) < 0 || write(1, what, strlen(what)) < 0 || write(1, "\n", 1) < 0)
			_exit(1);
		_exit(1);
	}
	if (write(1, "PASS\n", 5) < 0)
		_exit(1);
	_exit(0);
}

static int fail(const char *what)
{
	printf("err setup: %s: %s\n", what, strerror(errno));
	fflush(stdout);
	return 2;
}

static int at_fd5(int fd)
{
	if (fd < 0)
		return -1;
	if (fd != 5) {
		if (dup2(fd, 5) != 5)
			return -1;
		close(fd);
	}
	return 0;
}

static int pair_at_5_6(int fds[2])
{
	if (dup2(fds[0], 5) != 5 || dup2(fds[1], 6) != 6)
		return -1;
	if (fds[0] != 5 && fds[0] != 6)
		close(fds[0]);
	if (fds[1] != 5 && fds[1] != 6)
		close(fds[1]);
	return 0;
}

static int setup_iouring(void)
{
	struct io_uring_params p;
	char *sq, *cq;

	memset(&p, 0, sizeof(p));
	ring_fd = syscall(__NR_io_uring_setup, 4, &p);
	if (ring_fd < 0) {
		if (errno == ENOSYS || errno == EPERM) {
			printf("err unsupported: io_uring: %s\n", strerror(errno));
			fflush(stdout);
			exit(3);
		}
		return -1;
	}
	if (at_fd5(ring_fd))
		return -1;
	ring_fd = 5;
	sq = mmap(NULL, p.sq_off.array + p.sq_entries * sizeof(unsigned), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQ_RING);
	cq = mmap(NULL, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe),
		  PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_CQ_RING);
	sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
		return -1;
	sq_tail = (unsigned *)(sq + p.sq_off.tail);
	sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
	sq_array = (unsigned *)(sq + p.sq_off.array);
	cq_head = (unsigned *)(cq + p.cq_off.head);
	cq_tail = (unsigned *)(cq + p.cq_off.tail);
	cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
	cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
	return 0;
}

/* One IORING_OP_NOP submitted and reaped: 0 when its completion came back. */
static int iouring_nop(void)
{
	unsigned tail = *sq_tail, idx = tail & *sq_mask, head;
	struct io_uring_cqe *cqe;

	memset(&sqes[idx], 0, sizeof(sqes[idx]));
	sqes[idx].opcode = IORING_OP_NOP;
	sqes[idx].user_data = 0x600d;
	sq_array[idx] = idx;
	__atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, ring_fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
		return -1;
	head = *cq_head;
	if (head == __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE))
		return -1;
	cqe = &cqes[head & *cq_mask];
	if (cqe->user_data != 0x600d || cqe->res != 0)
		return -1;
	__atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
	return 0;
}

static int setup_seccomp(void)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, FILTERED_NR, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(filter) / sizeof(filter[0]), .filter = filter };

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return -1;
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

static int setup_lock(void)
{
	struct flock fl;
	int fd;

	if (!strcmp(kind, "lease")) {
		/* A read lease needs an O_RDONLY fd and no writer open: create, close, reopen. */
		fd = open(path, O_WRONLY | O_CREAT, 0644);
		if (fd < 0 || write(fd, "hello", 5) != 5 || close(fd))
			return -1;
		if (at_fd5(open(path, O_RDONLY)))
			return -1;
		return fcntl(5, F_SETLEASE, F_RDLCK);
	}
	if (at_fd5(open(path, O_RDWR | O_CREAT, 0644)))
		return -1;
	if (!strcmp(kind, "flock"))
		return flock(5, LOCK_EX | LOCK_NB);
	memset(&fl, 0, sizeof(fl));
	fl.l_type = F_WRLCK;
	fl.l_whence = SEEK_SET;
	if (!strcmp(kind, "fcntl")) {
		fl.l_start = 100;
		fl.l_len = 50;
		return fcntl(5, F_SETLK, &fl);
	}
	return fcntl(5, F_OFD_SETLK, &fl);   /* ofd: the whole file, l_pid 0 */
}

static int setup(void)
{
	int fds[2];

	if (!strcmp(kind, "none"))
		return 0;
	if (!strcmp(kind, "pipe"))
		return pipe(fds) || pair_at_5_6(fds) ? fail("pipe") : 0;
	if (!strcmp(kind, "socket"))
		return socketpair(AF_UNIX, SOCK_STREAM, 0, fds) || pair_at_5_6(fds) ? fail("socketpair") : 0;
	if (!strcmp(kind, "iouring"))
		return setup_iouring() ? fail("io_uring") : 0;
	if (!strcmp(kind, "seccomp"))
		return setup_seccomp() ? fail("seccomp") : 0;
	if (!strcmp(kind, "aio"))
		return syscall(__NR_io_setup, 8, &aio_ctx) ? fail("io_setup") : 0;
	if (!strcmp(kind, "child")) {
		pid_t parent = getpid();

		child = fork();
		if (child < 0)
			return fail("fork");
		if (child == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != parent)
				_exit(0);
			for (;;)
				pause();
		}
		return 0;
	}
	if (!path) {
		errno = EINVAL;
		return fail("this kind needs a PATH");
	}
	if (!strcmp(kind, "deleted")) {
		/* A small deleted file restores (ckpt/files/ghost.py); this one is over the limit. */
		static char more[2 << 20];

		memset(more, 'x', sizeof(more));
		if (at_fd5(open(path, O_RDWR | O_CREAT | O_TRUNC, 0600)) || write(5, "hello", 5) != 5 ||
		    pwrite(5, more, sizeof(more), 5) != (ssize_t)sizeof(more) || unlink(path))
			return fail("deleted file");
		return 0;
	}
	if (!strcmp(kind, "fcntl") || !strcmp(kind, "flock") || !strcmp(kind, "ofd") ||
	    !strcmp(kind, "lease"))
		return setup_lock() ? fail(kind) : 0;
	errno = EINVAL;
	return fail("unknown kind");
}

/* NULL when the resource still works, else what failed. */
static const char *check(void)
{
	char buf[64];
	struct flock fl;
	int fd;

	if (!strcmp(kind, "pipe") || !strcmp(kind, "socket")) {
		/* pipe: 6 is the write end; a socket pair works both ways */
		if (write(6, "x", 1) != 1 || read(5, buf, 1) != 1 || buf[0] != 'x')
			return "no byte came through";
	} else if (!strcmp(kind, "iouring")) {
		if (iouring_nop())
			return "the NOP did not complete";
	} else if (!strcmp(kind, "seccomp") || !strcmp(kind, "aio")) {
		return check_syscalls();
	} else if (!strcmp(kind, "child")) {
		if (waitpid(child, NULL, WNOHANG) != 0 || kill(child, 0))
			return "the child is gone";
	} else if (!strcmp(kind, "deleted")) {
		if (pread(5, buf, 5, 0) != 5 || memcmp(buf, "hello", 5))
			return "the content is gone";
	} else if (!strcmp(kind, "fcntl")) {
		/* F_GETLK never reports the caller's own POSIX locks: ask /proc. */
		FILE *f = fopen("/proc/self/fdinfo/5", "r");
		int found = 0;

		while (f && fgets(buf, sizeof(buf), f))
			found |= !strncmp(buf, "lock:", 5) && strstr(buf, "POSIX") != NULL;
		if (f)
			fclose(f);
		if (!found)
			return "no POSIX lock on fd 5";
	} else if (!strcmp(kind, "flock")) {
		fd = open(path, O_RDONLY);
		if (fd < 0)
			return "cannot open the file";
		if (flock(fd, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK) {
			close(fd);
			return "the flock is not held";
		}
		close(fd);
	} else if (!strcmp(kind, "ofd")) {
		fd = open(path, O_RDWR);
		if (fd < 0)
			return "cannot open the file";
		memset(&fl, 0, sizeof(fl));
		fl.l_type = F_WRLCK;
		fl.l_whence = SEEK_SET;
		if (fcntl(fd, F_OFD_GETLK, &fl) || fl.l_type != F_WRLCK) {
			close(fd);
			return "the OFD lock is not held";
		}
		close(fd);
	} else if (!strcmp(kind, "lease")) {
		if (fcntl(5, F_GETLEASE) != F_RDLCK)
			return "the lease is not held";
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	char line[128];
	unsigned long pings = 0;
	const char *what;
	int rc;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: resource_target KIND [PATH]\n");
		return 2;
	}
	kind = argv[1];
	path = argc > 2 ? argv[2] : NULL;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL))
		return fail("sigaction");
	rc = setup();
	if (rc)
		return rc;

	printf("ready %d\n", (int)getpid());
	printf("holding %s %d\n", kind, child ? (int)child : 5);
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		if (!strcmp(line, "ping\n")) {
			printf("ok %lu\n", ++pings);
		} else if (!strcmp(line, "check\n")) {
			what = check();
			if (what)
				printf("err %s\n", what);
			else
				printf("ok\n");
		} else {
			printf("err unknown command\n");
		}
		fflush(stdout);
	}
	for (;;)
		pause();
}
