/* A tree whose children share kernel objects with their parent (tests/test_tree_clone.py).
 *
 * clone_share fs DIR_A DIR_B: the root chdir()s to DIR_A, sets umask 027, and clone()s
 *   a child with CLONE_FS (one cwd, root and umask) and one without.  On SIGUSR1 the root
 *   wakes the sharer (SIGUSR2), which checks that it shares the root's fs_struct (kcmp)
 *   and that its cwd is DIR_A, then chdir()s to DIR_B and sets umask 077 and exits; the
 *   root then sees DIR_B and 077 as its own, and wakes the other child, which must still
 *   see DIR_A and 027 (not shared).
 * clone_share files PATH: zdtm static/fdt_shared's shape.  The root holds fd 3
 *   (/dev/null) and clone()s a sharer with CLONE_FILES (one fd table), another child
 *   without, and a second sharer; the first sharer clone()s a grandchild with CLONE_FILES
 *   and one without.  On SIGUSR1 the root opens PATH at fd 60 and wakes the first sharer,
 *   which checks that it shares the table (kcmp) and reads "shared" at fd 60, wakes its
 *   grandchildren (the sharing one sees fd 60, the other one fd 3 and no fd 60), then
 *   closes fd 3, dups fd 60 to fd 61 and exits; the root finds fd 3 closed and fd 61
 *   open; the other child still has fd 3 and no fd 60; the second sharer sees fd 61.
 *
 * clone_share memfd: the root maps a memfd MAP_SHARED and clone()s a sharer with
 *   CLONE_FILES, which has the mapping too (refused by name: a restore cannot make it
 *   in a shared table yet).
 *
 * Prints "ready ROOT CHILDREN...", then, after SIGUSR1, "PASS" or "FAIL why".  stderr
 * is /dev/null: the spawn fixture's is a deleted file the tasks would share.  Every
 * child dies with its parent (PR_SET_PDEATHSIG).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define KCMP_FILES 2
#define KCMP_FS 3
#define STACK (256 * 1024)

static const char *dir_a, *dir_b, *path;
static pid_t parent;   /* set before each clone: the new child's parent */
static int held;       /* files mode: the root's /dev/null, at the lowest free fd */

/* In a new child: die with the parent (also when it died before PR_SET_PDEATHSIG). */
static void tie_to_parent(void)
{
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
		_exit(1);
}

static int wait_for(int sig)
{
	sigset_t set;
	int got;

	sigemptyset(&set);
	sigaddset(&set, sig);
	sigprocmask(SIG_SETMASK, &set, NULL);
	return sigwait(&set, &got) == 0 ? got : -1;
}

static int shared_with_parent(int kind)
{
	return syscall(SYS_kcmp, getpid(), getppid(), kind, 0, 0) == 0;
}

static int cwd_is(const char *dir)
{
	char cwd[4096];

	return getcwd(cwd, sizeof(cwd)) != NULL && strcmp(cwd, dir) == 0;
}

static mode_t current_umask(void)
{
	mode_t mask = umask(0);

	umask(mask);
	return mask;
}

static int fs_sharer(void *arg)
{
	(void)arg;
	wait_for(SIGUSR2);
	if (!shared_with_parent(KCMP_FS))
		_exit(3);
	if (!cwd_is(dir_a) || current_umask() != 027)
		_exit(4);
	if (chdir(dir_b))
		_exit(5);
	umask(077);
	_exit(0);
}

static int fs_other(void *arg)
{
	(void)arg;
	wait_for(SIGUSR2);
	if (shared_with_parent(KCMP_FS))
		_exit(3);
	_exit(cwd_is(dir_a) && current_umask() == 027 ? 0 : 4);
}

static int has_fd(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

static int reads_shared(int fd)
{
	char buf[8] = "";

	return pread(fd, buf, 6, 0) == 6 && memcmp(buf, "shared", 6) == 0;
}

static pid_t start(int (*fn)(void *), int flags, void *arg);
static int run(pid_t pid);

static int files_grandchild(void *arg)
{
	int sharing = arg != NULL;

	wait_for(SIGUSR2);
	if (shared_with_parent(KCMP_FILES) != sharing)
		_exit(3);
	if (sharing)
		_exit(reads_shared(60) ? 0 : 4);
	_exit(has_fd(held) && !has_fd(60) ? 0 : 5);
}

static int files_sharer(void *arg)
{
	pid_t sharing, own;
	int code;

	(void)arg;
	sharing = start(files_grandchild, CLONE_FILES, "sharing");
	own = start(files_grandchild, 0, NULL);
	wait_for(SIGUSR2);
	if (!shared_with_parent(KCMP_FILES))
		_exit(3);
	if (!has_fd(held) || !reads_shared(60))
		_exit(4);
	code = run(sharing);
	if (code != 0)
		_exit(10 + code);
	code = run(own);
	if (code != 0)
		_exit(20 + code);
	if (close(held) || dup2(60, 61) != 61)
		_exit(6);
	_exit(0);
}

static int files_second(void *arg)
{
	(void)arg;
	wait_for(SIGUSR2);
	if (!shared_with_parent(KCMP_FILES))
		_exit(3);
	_exit(reads_shared(61) && !has_fd(held) ? 0 : 4);
}

static int files_other(void *arg)
{
	(void)arg;
	wait_for(SIGUSR2);
	if (shared_with_parent(KCMP_FILES))
		_exit(3);
	_exit(has_fd(held) && !has_fd(60) ? 0 : 4);
}

static int (*child_fn)(void *);   /* what the next child runs, after tie_to_parent() */

static int child_main(void *arg)
{
	tie_to_parent();
	return child_fn(arg);
}

/* A child running fn(arg), made by clone() with flags (no CLONE_VM: it has its own copy
 * of this memory, the globals included). */
static pid_t start(int (*fn)(void *), int flags, void *arg)
{
	char *stack = malloc(STACK);
	pid_t pid;

	if (stack == NULL)
		exit(1);
	parent = getpid();
	child_fn = fn;
	pid = clone(child_main, stack + STACK, flags | SIGCHLD, arg);
	if (pid < 0) {
		perror("clone");
		exit(1);
	}
	return pid;
}

static int run(pid_t pid)
{
	int status;

	kill(pid, SIGUSR2);
	if (waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void fail_if(int bad, const char *what)
{
	if (bad) {
		printf("FAIL %s\n", what);
		exit(0);
	}
}

/* Wake a child and wait for its checks; FAIL naming it and its exit status if they failed. */
static void check(pid_t pid, const char *who)
{
	int code = run(pid);

	if (code != 0) {
		printf("FAIL %s failed its checks (exit %d)\n", who, code);
		exit(0);
	}
}

int main(int argc, char **argv)
{
	sigset_t both;
	pid_t sharer, other, second = 0;
	int files, fd;

	if (argc < 2)
		return 2;
	files = strcmp(argv[1], "files") == 0;
	dup2(open("/dev/null", O_WRONLY), 2);
	sigemptyset(&both);
	sigaddset(&both, SIGUSR1);
	sigaddset(&both, SIGUSR2);
	sigprocmask(SIG_BLOCK, &both, NULL);
	if (strcmp(argv[1], "memfd") == 0) {
		fd = memfd_create("clone_share", 0);
		if (fd < 0 || ftruncate(fd, 4096) ||
		    mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED)
			return 1;
		held = fd;
		sharer = start(files_second, CLONE_FILES, NULL);
		printf("ready %d %d\n", getpid(), sharer);
		fflush(stdout);
		wait_for(SIGUSR1);
		return 0;
	}
	if (files) {
		if (argc < 3)
			return 2;
		path = argv[2];
		/* The lowest free fd: the table stays dense, so that an fd the builder
		 * opens while a sharer sets itself up would take a number the sharer places. */
		held = open("/dev/null", O_RDONLY);
		if (held < 0)
			return 1;
		sharer = start(files_sharer, CLONE_FILES, NULL);
		other = start(files_other, 0, NULL);
		second = start(files_second, CLONE_FILES, NULL);
		printf("ready %d %d %d %d\n", getpid(), sharer, other, second);
	} else {
		if (argc < 4)
			return 2;
		dir_a = argv[2];
		dir_b = argv[3];
		if (chdir(dir_a))
			return 1;
		umask(027);
		sharer = start(fs_sharer, CLONE_FS, NULL);
		other = start(fs_other, 0, NULL);
		printf("ready %d %d %d\n", getpid(), sharer, other);
	}
	fflush(stdout);
	wait_for(SIGUSR1);

	if (files) {   /* what the root opens after the restore, its sharers see */
		fd = open(path, O_RDONLY);
		fail_if(fd < 0 || dup2(fd, 60) != 60, "cannot open the file at fd 60");
		close(fd);
	}
	check(sharer, "the sharer");
	if (files)
		fail_if(has_fd(held) || !reads_shared(61), "the sharer's fd changes are not the root's");
	else
		fail_if(!cwd_is(dir_b) || current_umask() != 077, "the sharer's chdir/umask are not the root's");
	check(other, "the other child");
	if (files)
		check(second, "the second sharer");
	printf("PASS\n");
	return 0;
}
