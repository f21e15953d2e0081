/* A tree whose children share kernel objects with their parent (tests/test_tree_clone.py).
 *
 * clone_share fs DIR_A DIR_B: the root chdir()s to DIR_A, sets umask 027, and clone()s
 *   a child with CLONE_FS (one cwd, root and umask) and one without.  On SIGUSR1 the root
 *   wakes the sharer (SIGUSR2), which checks that it shares the root's fs_struct (kcmp)
 *   and that its cwd is DIR_A, then chdir()s to DIR_B and sets umask 077 and exits; the
 *   root then sees DIR_B and 077 as its own, and wakes the other child, which must still
 *   see DIR_A and 027 (not shared).
 * clone_share files PATH: the root clone()s a child with CLONE_FILES (one fd table) and
 *   one without, and holds fd 50 (/dev/null).  On SIGUSR1 the sharer checks it shares the
 *   table (kcmp), opens PATH at fd 60 and closes fd 50, and exits; the root then reads
 *   "shared" through fd 60 and finds fd 50 closed; the other child still has fd 50 and
 *   no fd 60.
 *
 * Prints "ready ROOT SHARER OTHER", then, after SIGUSR1, "PASS" or "FAIL why".  stderr
 * is /dev/null: the spawn fixture's is a deleted file the tasks would share.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define KCMP_FILES 2
#define KCMP_FS 3
#define STACK (256 * 1024)

static const char *dir_a, *dir_b, *path;

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

static int files_sharer(void *arg)
{
	int fd;

	(void)arg;
	wait_for(SIGUSR2);
	if (!shared_with_parent(KCMP_FILES))
		_exit(3);
	if (fcntl(50, F_GETFD) < 0)
		_exit(4);
	fd = open(path, O_RDONLY);
	if (fd < 0 || dup2(fd, 60) != 60)
		_exit(5);
	close(fd);
	if (close(50))
		_exit(6);
	_exit(0);
}

static int files_other(void *arg)
{
	(void)arg;
	wait_for(SIGUSR2);
	if (shared_with_parent(KCMP_FILES))
		_exit(3);
	_exit(fcntl(50, F_GETFD) >= 0 && fcntl(60, F_GETFD) < 0 ? 0 : 4);
}

static pid_t start(int (*fn)(void *), int flags)
{
	char *stack = malloc(STACK);
	pid_t pid;

	if (stack == NULL)
		exit(1);
	pid = clone(fn, stack + STACK, flags | SIGCHLD, NULL);
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

int main(int argc, char **argv)
{
	sigset_t both;
	pid_t sharer, other;
	int files, code, fd;
	char buf[16] = "";

	if (argc < 3)
		return 2;
	files = strcmp(argv[1], "files") == 0;
	dup2(open("/dev/null", O_WRONLY), 2);
	sigemptyset(&both);
	sigaddset(&both, SIGUSR1);
	sigaddset(&both, SIGUSR2);
	sigprocmask(SIG_BLOCK, &both, NULL);
	if (files) {
		path = argv[2];
		fd = open("/dev/null", O_RDONLY);
		if (fd < 0 || dup2(fd, 50) != 50)
			return 1;
		close(fd);
		sharer = start(files_sharer, CLONE_FILES);
		other = start(files_other, 0);
	} else {
		if (argc < 4)
			return 2;
		dir_a = argv[2];
		dir_b = argv[3];
		if (chdir(dir_a))
			return 1;
		umask(027);
		sharer = start(fs_sharer, CLONE_FS);
		other = start(fs_other, 0);
	}
	printf("ready %d %d %d\n", getpid(), sharer, other);
	fflush(stdout);
	wait_for(SIGUSR1);

	code = run(sharer);
	if (code != 0) {
		printf("FAIL the sharer exited %d\n", code);
		return 0;
	}
	if (files) {
		if (fcntl(50, F_GETFD) >= 0 || pread(60, buf, 6, 0) != 6 || memcmp(buf, "shared", 6)) {
			printf("FAIL the sharer's fd changes are not the root's\n");
			return 0;
		}
	} else if (!cwd_is(dir_b) || current_umask() != 077) {
		printf("FAIL the sharer's chdir/umask are not the root's\n");
		return 0;
	}
	code = run(other);
	if (code != 0) {
		printf("FAIL the other child exited %d\n", code);
		return 0;
	}
	printf("PASS\n");
	return 0;
}
