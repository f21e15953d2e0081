/*
 * tree_forker: process trees for the tree freeze (ckpt/live/tree.py), one shape per mode.
 *
 *   tree_forker fan N         N children, each asleep in pause()
 *   tree_forker churn N       forks without end: each child forks a grandchild and pauses;
 *                             once N children live, the oldest is SIGKILLed and reaped
 *                             before the next fork (so the tree changes all the time).
 *                             Every other child is made by clone() with no exit signal
 *                             (a tracer sees PTRACE_EVENT_CLONE, not FORK), and the root
 *                             blocks SIGCHLD: no signal stops it on its way, so a freeze
 *                             finds it in a fork as often as anywhere else
 *   tree_forker traced        two children: "tf-tracee", asleep, and "tf-tracer", which
 *                             PTRACE_SEIZEs it (a task traced by another tracer)
 *   tree_forker clone-files   a child made by clone(CLONE_FILES): it shares the fd table
 *   tree_forker clone-vm      a child made by clone(CLONE_VM): it shares the memory
 *   tree_forker clone-fs      a child made by clone(CLONE_FS): it shares cwd/root/umask
 *   tree_forker clone-fs-sibling  a child "tf-first" that makes "tf-sharing" by
 *                             clone(CLONE_PARENT|CLONE_FS): siblings sharing cwd/root/umask,
 *                             which their parent does not share
 *   tree_forker clone-files-sibling  the same with CLONE_FILES: siblings sharing an fd table
 *   tree_forker pidns         unshare(CLONE_NEWPID), then a child: pid 1 of a new pid namespace
 *
 * Every child asks for SIGKILL at its parent's death (PR_SET_PDEATHSIG), so nothing
 * outlives the root.  The root prints "ready PID" once the tree is set up (in churn
 * mode: once the first N children run) and then sleeps, or forks on, until killed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what)
{
	printf("setup failed: %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(2);
}

static void ready(void)
{
	printf("ready %d\n", getpid());
	fflush(stdout);
}

static pid_t parent;   /* set just before each fork/clone: the new child's parent */

/* In a new child: die with the parent (also when it died before PR_SET_PDEATHSIG).
 * getppid() is 0 for the first process of a new pid namespace (its parent is outside). */
static void tie_to_parent(void)
{
	pid_t ppid;

	if (prctl(PR_SET_PDEATHSIG, SIGKILL))
		_exit(1);
	ppid = getppid();
	if (ppid != parent && ppid != 0)
		_exit(1);
}

/* In a new child: die with the parent, take a name, sleep forever. */
static int child_sleeps(void *name)
{
	tie_to_parent();
	prctl(PR_SET_NAME, (const char *)name);
	for (;;)
		pause();
	return 0;
}

static pid_t fork_sleeper(const char *name)
{
	pid_t pid;

	fflush(stdout);
	parent = getpid();
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0)
		child_sleeps((void *)name);
	return pid;
}

static int family(void *unused)
{
	(void)unused;
	tie_to_parent();
	prctl(PR_SET_NAME, "tf-churn");
	fork_sleeper("tf-grandchild");
	for (;;)
		pause();
	return 0;
}

/* A child with a grandchild, both asleep: by fork(), or by clone() without exit signal. */
static pid_t fork_family(int by_clone)
{
	static char stack[1 << 16] __attribute__((aligned(16)));
	pid_t pid;

	fflush(stdout);
	parent = getpid();
	pid = by_clone ? clone(family, stack + sizeof(stack), 0, NULL) : fork();
	if (pid < 0)
		die("fork");
	if (pid == 0)
		family(NULL);
	return pid;
}

static void churn(int n)
{
	pid_t *ring = calloc(n, sizeof(*ring));
	sigset_t chld;
	int next = 0;

	if (!ring)
		die("calloc");
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	for (int i = 0; i < n; i++)
		ring[i] = fork_family(i % 2);
	ready();
	for (unsigned long i = 0;; i++) {
		kill(ring[next], SIGKILL);
		while (waitpid(ring[next], NULL, __WALL) < 0 && errno == EINTR)
			;
		ring[next] = fork_family(i % 2);
		next = (next + 1) % n;
	}
}

static void clone_sharing(int flag)
{
	static char stack[1 << 16] __attribute__((aligned(16)));

	fflush(stdout);
	parent = getpid();
	if (clone(child_sleeps, stack + sizeof(stack), flag | SIGCHLD, "tf-sharing") < 0)
		die("clone");
}

static int sibling_flag;   /* what clone_sibling()'s two children share */

static int first_of_siblings(void *go)
{
	static char stack[1 << 16] __attribute__((aligned(16)));

	tie_to_parent();
	prctl(PR_SET_NAME, "tf-first");
	if (clone(child_sleeps, stack + sizeof(stack), CLONE_PARENT | sibling_flag, "tf-sharing") < 0)
		_exit(1);
	if (write(*(int *)go, "c", 1) != 1)
		_exit(1);
	for (;;)
		pause();
	return 0;
}

static void clone_sibling(int flag)
{
	static char stack[1 << 16] __attribute__((aligned(16)));
	int go[2];
	char byte;

	if (pipe(go))
		die("pipe");
	fflush(stdout);
	parent = getpid();
	sibling_flag = flag;
	if (clone(first_of_siblings, stack + sizeof(stack), SIGCHLD, &go[1]) < 0)
		die("clone");
	if (read(go[0], &byte, 1) != 1)
		die("the first child could not clone its sibling");
}

static void traced(void)
{
	pid_t tracee = fork_sleeper("tf-tracee"), tracer;
	int go[2];
	char byte;

	if (pipe(go))
		die("pipe");
	parent = getpid();
	tracer = fork();
	if (tracer < 0)
		die("fork");
	if (tracer == 0) {
		tie_to_parent();
		prctl(PR_SET_NAME, "tf-tracer");
		if (ptrace(PTRACE_SEIZE, tracee, 0, 0))
			_exit(1);
		if (write(go[1], "s", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	if (read(go[0], &byte, 1) != 1)
		die("the tracer could not seize its sibling");
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	int n = argc > 2 ? atoi(argv[2]) : 0;

	if (!strcmp(mode, "fan")) {
		for (int i = 0; i < n; i++)
			fork_sleeper("tf-fan");
	} else if (!strcmp(mode, "churn")) {
		churn(n > 0 ? n : 8);
	} else if (!strcmp(mode, "traced")) {
		traced();
	} else if (!strcmp(mode, "clone-files")) {
		clone_sharing(CLONE_FILES);
	} else if (!strcmp(mode, "clone-vm")) {
		clone_sharing(CLONE_VM);
	} else if (!strcmp(mode, "clone-fs")) {
		clone_sharing(CLONE_FS);
	} else if (!strcmp(mode, "clone-fs-sibling")) {
		clone_sibling(CLONE_FS);
	} else if (!strcmp(mode, "clone-files-sibling")) {
		clone_sibling(CLONE_FILES);
	} else if (!strcmp(mode, "pidns")) {
		if (unshare(CLONE_NEWPID))
			die("unshare(CLONE_NEWPID)");
		fork_sleeper("tf-pidns");
	} else {
		printf("usage: tree_forker fan N | churn N | traced | clone-files | clone-vm | clone-fs\n"
		       "       | clone-fs-sibling | clone-files-sibling | pidns\n");
		return 2;
	}
	ready();
	for (;;)
		pause();
}
