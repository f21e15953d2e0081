/*
 * zdtm_tree: a small process tree that checks itself, in the manner of CRIU's zdtm
 * `wait00`, `zombie00`, `stopped` and `session00` (issue 9, stage 1: plain trees,
 * zombies, stopped tasks, sessions and process groups; nothing shared between the
 * processes but fds 0-2).
 *
 *   zdtm_tree [-c]
 *
 * The root forks, and records the pid of, each of these children (named with
 * PR_SET_NAME, so that /proc/PID/comm and ckpt's messages say which is which):
 *
 *   zt-parent     alive, in the root's group and session, with a child of its own:
 *   zt-grandchild alive, in the same group and session (its parent records its pid)
 *   zt-group      alive, leader of a process group of its own (setpgid(0, 0))
 *   zt-session    alive, leader of a session of its own (setsid())
 *   zt-exit42     a zombie: exited with status 42, not reaped
 *   zt-killed     a zombie: killed by SIGTERM (its own, default action), not reaped
 *   zt-stopped    stopped by SIGSTOP (its own), the stop not yet reported to the root
 *
 * Each live process fills 64 pages of private memory mapped after the fork (so that
 * no page is copy-on-write shared with another process) with a pattern of its own.
 * Each child asks for SIGKILL at its parent's death (PR_SET_PDEATHSIG), so nothing
 * outlives the root, however it ends.  When all are in place the root prints
 * "ready PID" and waits for SIGUSR1 (zdtm_anon.h), then checks the tree from the
 * inside, as it would after a restore:
 *
 *   - its own pattern;
 *   - each zombie: waitpid(recorded pid, WNOHANG) reaps it at once, with its status
 *     (exit 42; SIGTERM, no core);
 *   - the stopped child: state T in /proc/PID/stat, and waitid(WSTOPPED) of its
 *     recorded pid reports the SIGSTOP; then SIGCONT, and waitid(WCONTINUED) reports it;
 *   - each live child (the stopped one too, once continued): its process group and
 *     session as set up (getpgid/getsid of its recorded pid, against the root's own);
 *     then SIGUSR2 (repeated until it exits), on which the child checks its own memory,
 *     name, group and session, that the signal came from its parent (getppid() ==
 *     si_pid), and zt-parent checks zt-grandchild the same way; the child exits with 0
 *     or a mask of what failed, and waitpid(recorded pid) must give 0.
 *
 * It prints "PASS" (exit 0) or one "FAIL: what" line per problem (exit 1); whatever
 * fails, every child it started is killed and reaped before it exits.
 *
 * -c damages the tree after SIGUSR1, before the checks: it reaps zt-exit42 early and
 * SIGKILLs zt-session, so exactly those two checks must fail.
 */
#include "zdtm_anon.h"

#include <sched.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

#define PAGE 4096UL
#define PAGES 64UL
#define ANSWER_MS 10000            /* how long a child has to answer SIGUSR2 */

/* What a live child's exit status says failed (0: nothing). */
#define BAD_PARENT 1               /* getppid() is not the pid that sent SIGUSR2 */
#define BAD_MEMORY 2               /* its pattern differs */
#define BAD_GROUP 4                /* process group not as set up */
#define BAD_SESSION 8              /* session not as set up */
#define BAD_NAME 16                /* /proc/self/comm changed */
#define BAD_CHILD 32               /* zt-parent: zt-grandchild failed or did not answer */
#define BAD_SETUP 64               /* could not set itself up */

enum role { PARENT, GRANDCHILD, GROUP, SESSION, EXIT42, KILLED, STOPPED, ROLES };

static const char *const names[ROLES] = {
	"zt-parent", "zt-grandchild", "zt-group", "zt-session", "zt-exit42", "zt-killed", "zt-stopped",
};

static pid_t pids[ROLES];          /* recorded at fork by the parent (the grandchild's by zt-parent) */
static int reaped[ROLES];          /* the root reaped it (or it is the grandchild, not the root's) */
static volatile sig_atomic_t asked;
static volatile pid_t asker;

/* splitmix64: word w of the pattern of role r. */
static uint64_t mix(uint64_t seed, uint64_t index)
{
	uint64_t z = seed * 0x9E3779B97F4A7C15ULL + index + 0x632BE59BD9B4E019ULL;

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* Private memory mapped by this process alone, filled with role's pattern. */
static uint64_t *own_memory(int role)
{
	uint64_t *w = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (w == MAP_FAILED)
		return NULL;
	for (unsigned long i = 0; i < PAGES * PAGE / 8; i++)
		w[i] = mix(1000 + role, i);
	return w;
}

static int memory_differs(const uint64_t *w, int role)
{
	for (unsigned long i = 0; i < PAGES * PAGE / 8; i++)
		if (w[i] != mix(1000 + role, i))
			return 1;
	return 0;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* SIGUSR2 to pid every 50 ms until it exits (a signal sent just before the child's
 * pause() would otherwise be lost), at most ms: its wait status, or -1 if it did not
 * exit in time (it is left unreaped) or is no child of ours (errno ECHILD). */
static int ask_and_wait(pid_t pid, long ms)
{
	int status;

	for (long waited = 0; waited <= ms; waited += 50) {
		pid_t got;

		kill(pid, SIGUSR2);
		got = waitpid(pid, &status, WNOHANG);
		if (got == pid)
			return status;
		if (got < 0 && errno != EINTR)
			return -1;
		sleep_ms(50);
	}
	errno = ETIMEDOUT;
	return -1;
}

static void on_ask(int sig, siginfo_t *info, void *ctx)
{
	(void)sig;
	(void)ctx;
	asker = info->si_pid;
	asked = 1;
}

/*
 * A live child (or the grandchild): wait for SIGUSR2 from its parent, check itself,
 * exit with the mask of what failed.  sid_leader/pgrp_leader: what it made itself.
 */
static void __attribute__((noreturn)) live(int role, const uint64_t *memory, int pgrp_leader, int sid_leader)
{
	char comm[17] = "";
	int bad = 0;

	while (!asked)
		pause();
	if (getppid() != asker)
		bad |= BAD_PARENT;
	if (memory_differs(memory, role))
		bad |= BAD_MEMORY;
	if (pgrp_leader ? getpgrp() != getpid() : getpgrp() != getpgid(getppid()))
		bad |= BAD_GROUP;
	if (sid_leader ? getsid(0) != getpid() : getsid(0) != getsid(getppid()))
		bad |= BAD_SESSION;
	if (prctl(PR_GET_NAME, comm) || strcmp(comm, names[role]))
		bad |= BAD_NAME;
	if (role == PARENT) {
		int status = ask_and_wait(pids[GRANDCHILD], ANSWER_MS / 2);   /* within the root's wait */

		if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status))
			bad |= BAD_CHILD;
		if (status == -1)
			kill(pids[GRANDCHILD], SIGKILL);   /* and its PDEATHSIG would anyway */
	}
	_exit(bad);
}

/* In a new child: tie its life to its parent's, name it, make SIGUSR2 ask it. */
static void child_start(int role, pid_t parent)
{
	struct sigaction sa;

	if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
		_exit(BAD_SETUP);   /* the parent died before PDEATHSIG was set */
	prctl(PR_SET_NAME, names[role]);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_ask;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGUSR2, &sa, NULL);
}

/* Tell the root this process is set up: one byte on the setup pipe. */
static void tell_ready(int ready_fd)
{
	if (write(ready_fd, "r", 1) != 1)
		_exit(BAD_SETUP);
	close(ready_fd);
}

/* Fork a child playing role; returns its pid in the parent. */
static pid_t start(int role, int ready[2])
{
	pid_t parent = getpid(), pid;
	uint64_t *memory;

	fflush(stdout);             /* nothing buffered is printed twice */
	pid = fork();
	if (pid)
		return pid;
	child_start(role, parent);
	close(ready[0]);
	switch (role) {
	case EXIT42:
		close(ready[1]);
		_exit(42);
	case KILLED:
		close(ready[1]);
		signal(SIGTERM, SIG_DFL);
		raise(SIGTERM);
		_exit(BAD_SETUP);
	case GROUP:
		if (setpgid(0, 0))
			_exit(BAD_SETUP);
		break;
	case SESSION:
		if (setsid() < 0)
			_exit(BAD_SETUP);
		break;
	case PARENT:
		pids[GRANDCHILD] = start(GRANDCHILD, ready);
		if (pids[GRANDCHILD] < 0)
			_exit(BAD_SETUP);
		break;
	}
	memory = own_memory(role);
	if (!memory)
		_exit(BAD_SETUP);
	tell_ready(ready[1]);
	if (role == STOPPED)
		raise(SIGSTOP);
	live(role, memory, role == GROUP || role == SESSION, role == SESSION);
}

/* Describe a live child's exit status (the mask of live()) in a FAIL line. */
static void report_answer(int role, int status)
{
	static const char *const what[] = {
		"its parent is not the pid that signalled it", "its memory differs",
		"its process group is not as set up", "its session is not as set up",
		"its name changed", "zt-grandchild failed its checks or did not answer",
		"it could not set itself up",
	};
	char why[512] = "";
	int bits;

	if (status == -1) {
		if (errno == ECHILD)
			reaped[role] = 1;   /* not ours to kill: the pid may be another's by now */
		fail("%s (pid %d): %s", names[role], pids[role],
		     errno == ECHILD ? "is not a child of the root (waitpid: ECHILD)"
		                     : "did not exit within 10 s of SIGUSR2");
		return;
	}
	reaped[role] = 1;
	if (WIFSIGNALED(status)) {
		fail("%s (pid %d): killed by signal %d instead of checking itself", names[role], pids[role],
		     WTERMSIG(status));
		return;
	}
	bits = WEXITSTATUS(status);
	if (!bits)
		return;
	for (unsigned i = 0; i < sizeof(what) / sizeof(what[0]); i++)
		if (bits & (1 << i))
			snprintf(why + strlen(why), sizeof(why) - strlen(why), "%s%s", *why ? "; " : "", what[i]);
	fail("%s (pid %d): %s (exit %d)", names[role], pids[role], *why ? why : "unknown failure", bits);
}

/* A live child: its group and session seen from the root, against the root's own;
 * then it answers SIGUSR2 by checking itself and exiting (report_answer). */
static void check_live(int role)
{
	pid_t pid = pids[role];
	pid_t want_pgid = role == GROUP || role == SESSION ? pid : getpgrp();
	pid_t want_sid = role == SESSION ? pid : getsid(0);
	pid_t pgid = getpgid(pid), sid = getsid(pid);

	if (pgid < 0 || sid < 0) {
		fail("%s (pid %d): no such process (%s)", names[role], pid, strerror(errno));
		reaped[role] = 1;   /* not ours to kill: the pid may be another's by now */
		return;
	}
	if (pgid != want_pgid)
		fail("%s (pid %d): process group %d, expected %d", names[role], pid, pgid, want_pgid);
	if (sid != want_sid)
		fail("%s (pid %d): session %d, expected %d", names[role], pid, sid, want_sid);
	report_answer(role, ask_and_wait(pid, ANSWER_MS));
}

static void check_zombie(int role)
{
	pid_t pid = pids[role];
	int status;
	pid_t got = waitpid(pid, &status, WNOHANG);

	if (got == 0) {
		fail("%s (pid %d): not a zombie, it has not exited", names[role], pid);
		return;
	}
	if (got != pid) {
		if (errno == ECHILD)
			reaped[role] = 1;   /* not ours to kill: the pid may be another's by now */
		fail("%s (pid %d): cannot be reaped (waitpid: %s)", names[role], pid, strerror(errno));
		return;
	}
	reaped[role] = 1;
	if (role == EXIT42 && !(WIFEXITED(status) && WEXITSTATUS(status) == 42))
		fail("%s (pid %d): wait status %#x, expected exit 42", names[role], pid, status);
	if (role == KILLED && !(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM && !WCOREDUMP(status)))
		fail("%s (pid %d): wait status %#x, expected killed by SIGTERM, no core", names[role], pid, status);
}

/* Field 3 of /proc/PID/stat (after the parenthesised comm), or '?'. */
static char proc_state(pid_t pid)
{
	char path[64], buf[512], *paren;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return '?';
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return '?';
	buf[n] = 0;
	paren = strrchr(buf, ')');
	return paren && paren[1] == ' ' ? paren[2] : '?';
}

/* waitid(P_PID, pid, what | WNOHANG) until it reports, at most ms: 0 or -1. */
static int waitid_for(pid_t pid, int what, siginfo_t *info, long ms)
{
	for (long waited = 0; waited <= ms; waited += 10) {
		memset(info, 0, sizeof(*info));
		if (waitid(P_PID, pid, info, what | WNOHANG) == 0) {
			if (info->si_pid == pid)
				return 0;
		} else if (errno != EINTR) {
			return -1;
		}
		sleep_ms(10);
	}
	errno = ETIMEDOUT;
	return -1;
}

/* The stopped child is stopped, its stop not yet reported; report it, continue it. */
static int check_stopped(void)
{
	pid_t pid = pids[STOPPED];
	char state = proc_state(pid);
	siginfo_t info;

	if (state != 'T')
		fail("%s (pid %d): state %c in /proc/PID/stat, expected T (stopped)", names[STOPPED], pid, state);
	memset(&info, 0, sizeof(info));
	if (waitid(P_PID, pid, &info, WSTOPPED | WNOHANG)) {
		fail("%s (pid %d): waitid(WSTOPPED): %s", names[STOPPED], pid, strerror(errno));
		return -1;
	}
	if (info.si_pid != pid)
		fail("%s (pid %d): waitid(WSTOPPED) reports no stop", names[STOPPED], pid);
	else if (info.si_code != CLD_STOPPED || info.si_status != SIGSTOP)
		fail("%s (pid %d): waitid(WSTOPPED) reports code %d status %d, expected CLD_STOPPED by SIGSTOP",
		     names[STOPPED], pid, info.si_code, info.si_status);
	if (kill(pid, SIGCONT)) {
		fail("%s (pid %d): SIGCONT: %s", names[STOPPED], pid, strerror(errno));
		return -1;
	}
	if (waitid_for(pid, WCONTINUED, &info, ANSWER_MS) || info.si_code != CLD_CONTINUED)
		fail("%s (pid %d): no CLD_CONTINUED reported after SIGCONT", names[STOPPED], pid);
	return 0;
}

/* Kill and reap every child not reaped yet: nothing outlives the root.  (The
 * grandchild dies of its PDEATHSIG with zt-parent, or was reaped by it.) */
static void reap_all(void)
{
	for (int role = 0; role < ROLES; role++) {
		if (role == GRANDCHILD || reaped[role] || pids[role] <= 0)
			continue;
		kill(pids[role], SIGKILL);
		while (waitpid(pids[role], NULL, 0) < 0 && errno == EINTR)
			;
		reaped[role] = 1;
	}
}

int main(int argc, char **argv)
{
	const int roles[] = { PARENT, GROUP, SESSION, EXIT42, KILLED, STOPPED };
	const int set_up = 5;   /* bytes on the setup pipe: every live process writes one */
	int corrupt = argc > 1 && !strcmp(argv[1], "-c");
	uint64_t *memory;
	siginfo_t info;
	int ready[2], got = 0;
	char byte;

	if (argc > 1 && !corrupt)
		die("usage: zdtm_tree [-c]");
	if (pipe(ready))
		die("pipe");
	for (unsigned i = 0; i < sizeof(roles) / sizeof(roles[0]); i++) {
		pids[roles[i]] = start(roles[i], ready);
		if (pids[roles[i]] < 0) {
			reap_all();
			die("fork");
		}
	}
	close(ready[1]);
	/* Each live process tells it is set up; then the pipe is gone from every process. */
	while (got < set_up && read(ready[0], &byte, 1) == 1)
		got++;
	close(ready[0]);
	if (got < set_up) {
		reap_all();
		errno = EPROTO;
		die("a child could not set itself up");
	}
	/* The zombies have exited and the stopped child stopped (WNOWAIT: nothing reported). */
	for (int role = EXIT42; role <= STOPPED; role++)
		if (waitid(P_PID, pids[role], &info, (role == STOPPED ? WSTOPPED : WEXITED) | WNOWAIT)) {
			reap_all();
			die("waitid");
		}
	memory = own_memory(ROLES);
	if (!memory) {
		reap_all();
		die("mmap");
	}
	ready_then_wait(SIGUSR1);

	if (corrupt) {   /* zt-exit42 reaped before its check; zt-session dies unasked */
		while (waitpid(pids[EXIT42], NULL, 0) < 0 && errno == EINTR)
			;
		reaped[EXIT42] = 1;
		kill(pids[SESSION], SIGKILL);
	}
	if (memory_differs(memory, ROLES))
		fail("the root's memory differs");
	check_zombie(EXIT42);
	check_zombie(KILLED);
	check_stopped();
	for (int role = PARENT; role <= STOPPED; role++) {
		if (role == GRANDCHILD || role == EXIT42 || role == KILLED)
			continue;
		check_live(role);
	}
	reap_all();
	fflush(stdout);
	return finish();
}
