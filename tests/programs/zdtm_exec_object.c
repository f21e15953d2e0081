/*
 * zdtm_exec_object: an executable memfd and an executable deleted file, run through
 * their fds, in the manner of CRIU's zdtm static/memfd04 and memfd05: a target that
 * checks itself.
 *
 *   zdtm_exec_object DIR [-c]
 *
 * Sets up (fd: what):
 *   10  memfd "zdtm-exec" as memfd_create returned it (O_RDWR, no FD_CLOEXEC) holding
 *       "#!/bin/true\n", then O_NONBLOCK set, offset 5
 *   11  the same memfd opened again through /proc/self/fd/10, O_RDONLY, offset 2
 *   12  DIR/script: "#!/bin/true\n", mode 0700, written and closed, opened O_RDONLY
 *       and unlinked (a deleted script), offset 3
 * Prints "ready PID" and waits for SIGUSR1, then checks, printing "FAIL: what" for each
 * mismatch and exiting 1, or "PASS" and exiting 0:
 *   - flags and offsets of 10, 11 and 12, their names;
 *   - execveat(fd, "", AT_EMPTY_PATH) of each, in a child, runs the script (exit 0).
 *     exec refuses a file any open file of which counts as a writer (fs/exec.c
 *     do_open_execat -> exe_file_deny_write_access: ETXTBSY).  The file memfd_create
 *     returns does not count (mm/memfd.c: alloc_file_pseudo, no FMODE_WRITER); an
 *     O_RDWR open(2) of the memfd does (fs/open.c do_dentry_open -> get_write_access).
 * Run straight through it passes; after a restore it passes only if fd 10 is again a
 * file no writer counts and nothing else holds the memfd or the deleted file for writing.
 *
 * Debugging the checks: -c opens the memfd O_RDWR once more (a writer) before checking,
 * so that the execs of 10 and 11 must fail.
 */
#include "zdtm_anon.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static const char script[] = "#!/bin/true\n";

/* exec fd in a child, which must run the script (exit 0). */
static void expect_exec(int fd)
{
	char *argv[] = {"zdtm-exec", NULL}, *envp[] = {NULL};
	int status;
	pid_t pid = fork();

	if (pid < 0)
		die("fork");
	if (pid == 0) {
		syscall(SYS_execveat, fd, "", argv, envp, AT_EMPTY_PATH);
		_exit(errno > 0 && errno < 256 ? errno : 255);
	}
	if (waitpid(pid, &status, 0) != pid)
		die("waitpid");
	if (!WIFEXITED(status))
		fail("exec of fd %d: the child died (status %#x)", fd, status);
	else if (WEXITSTATUS(status))
		fail("exec of fd %d: %s", fd, strerror(WEXITSTATUS(status)));
}

static void expect_offset(int fd, off_t want)
{
	off_t got = lseek(fd, 0, SEEK_CUR);

	if (got != want)
		fail("fd %d offset %ld, expected %ld", fd, (long)got, (long)want);
}

int main(int argc, char **argv)
{
	char path[4096], deleted[4120], proc[64];
	int damaged = argc > 2 && !strcmp(argv[2], "-c");
	int fd;

	if (argc < 2) {
		fprintf(stderr, "usage: zdtm_exec_object DIR [-c]\n");
		return 2;
	}
	fd = memfd_create("zdtm-exec", 0);
	at(fd, 10);
	if (write(10, script, sizeof(script) - 1) != sizeof(script) - 1)
		die("write memfd");
	if (fchmod(10, 0755) < 0)
		die("fchmod memfd");
	if (fcntl(10, F_SETFL, O_NONBLOCK) < 0 || lseek(10, 5, SEEK_SET) != 5)
		die("memfd flags");
	at(open("/proc/self/fd/10", O_RDONLY), 11);
	if (lseek(11, 2, SEEK_SET) != 2)
		die("lseek 11");

	snprintf(path, sizeof(path), "%s/script", argv[1]);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0700);
	if (fd < 0 || write(fd, script, sizeof(script) - 1) != sizeof(script) - 1 || close(fd) < 0)
		die("write the script");
	at(open(path, O_RDONLY), 12);
	if (unlink(path) < 0 || lseek(12, 3, SEEK_SET) != 3)
		die("unlink the script");

	ready_then_wait(SIGUSR1);

	if (damaged) {
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", 10);
		if (open(proc, O_RDWR) < 0)
			die("open a writer");
	}
	expect_link(10, "/memfd:zdtm-exec (deleted)");
	expect_link(11, "/memfd:zdtm-exec (deleted)");
	snprintf(deleted, sizeof(deleted), "%s (deleted)", path);
	expect_link(12, deleted);
	expect_flags(10, O_RDWR | O_NONBLOCK);
	expect_flags(11, O_RDONLY);
	expect_flags(12, O_RDONLY);
	expect_offset(10, 5);
	expect_offset(11, 2);
	expect_offset(12, 3);
	expect_cloexec(10, 0);
	expect_exec(10);
	expect_exec(11);
	expect_exec(12);
	return finish();
}
