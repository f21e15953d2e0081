/*
 * zdtm_signalfd: signalfds on blocked signals that are pending (CRIU's zdtm
 * static/signalfd00, and more), checking itself.
 *
 *   zdtm_signalfd
 *
 * Blocks SIGUSR1, SIGTERM and SIGRTMIN+1 and sets up (see zdtm_anon.h; go is
 * SIGUSR2, SIGUSR1 being one of the signals under test):
 *   - fd 10: signalfd for SIGUSR1 and SIGRTMIN+1, blocking; fd 12 = dup(10);
 *   - fd 11: signalfd for SIGTERM and SIGHUP, SFD_NONBLOCK | SFD_CLOEXEC;
 *   - pending: SIGUSR1 from kill(getpid()), and SIGRTMIN+1 queued twice with
 *     the values 101 and 102 (sigqueue).
 * Checks: each is a signalfd, with its flags and close-on-exec (11 only) and
 * its mask (fdinfo sigmask); the three signals are still blocked; reading 12
 * gives SIGUSR1 (SI_USER, from the pid it had when it sent it), reading 10
 * then gives SIGRTMIN+1 with 101, then 102, then nothing is left; 11 reads
 * EAGAIN, and SIGTERM sent now is read from 11.
 */
#include "zdtm_anon.h"
#include <poll.h>
#include <stdint.h>
#include <sys/signalfd.h>

static void expect_signal(int fd, int signo, int code, int pid, int value, const char *what)
{
	struct signalfd_siginfo si;
	struct pollfd p = { .fd = fd, .events = POLLIN };

	if (poll(&p, 1, 5000) != 1) {
		fail("fd %d: no signal to read (%s)", fd, what);
		return;
	}
	if (read(fd, &si, sizeof(si)) != sizeof(si)) {
		fail("fd %d read failed (%s): %s", fd, what, strerror(errno));
		return;
	}
	if ((int)si.ssi_signo != signo || si.ssi_code != code || (pid && (int)si.ssi_pid != pid) ||
	    (value && si.ssi_int != value))
		fail("fd %d read signal %u code %d pid %u value %d, expected %d code %d pid %d value %d (%s)", fd,
		     si.ssi_signo, si.ssi_code, si.ssi_pid, si.ssi_int, signo, code, pid, value, what);
}

static void expect_mask(int fd, uint64_t want)
{
	uint64_t got = strtoull(fdinfo_value(fd, "sigmask"), NULL, 16);

	if (got != want)
		fail("fd %d sigmask %016llx, expected %016llx", fd, (unsigned long long)got, (unsigned long long)want);
}

static uint64_t bit(int sig)
{
	return 1ULL << (sig - 1);
}

int main(void)
{
	sigset_t blocked, mask10, mask11, now;
	union sigval v;
	int pid = getpid(), rt = SIGRTMIN + 1;
	struct pollfd p = { .fd = 10, .events = POLLIN };

	sigemptyset(&blocked);
	sigaddset(&blocked, SIGUSR1);
	sigaddset(&blocked, SIGTERM);
	sigaddset(&blocked, rt);
	if (sigprocmask(SIG_BLOCK, &blocked, NULL))
		die("sigprocmask");
	sigemptyset(&mask10);
	sigaddset(&mask10, SIGUSR1);
	sigaddset(&mask10, rt);
	at(signalfd(-1, &mask10, 0), 10);
	at(dup(10), 12);
	sigemptyset(&mask11);
	sigaddset(&mask11, SIGTERM);
	sigaddset(&mask11, SIGHUP);
	at(signalfd(-1, &mask11, SFD_NONBLOCK | SFD_CLOEXEC), 11);
	if (kill(pid, SIGUSR1))
		die("kill");
	v.sival_int = 101;
	if (sigqueue(pid, rt, v))
		die("sigqueue");
	v.sival_int = 102;
	if (sigqueue(pid, rt, v))
		die("sigqueue");

	ready_then_wait(SIGUSR2);

	for (int i = 10; i <= 12; i++) {
		expect_link(i, "anon_inode:[signalfd]");
		expect_cloexec(i, i == 11);
	}
	expect_flags(10, O_RDWR);
	expect_flags(12, O_RDWR);
	expect_flags(11, O_RDWR | O_NONBLOCK);
	expect_mask(10, bit(SIGUSR1) | bit(rt));
	expect_mask(11, bit(SIGTERM) | bit(SIGHUP));
	if (sigprocmask(SIG_BLOCK, NULL, &now) || !sigismember(&now, SIGUSR1) || !sigismember(&now, SIGTERM) ||
	    !sigismember(&now, rt))
		fail("SIGUSR1, SIGTERM and SIGRTMIN+1 are no longer blocked");
	expect_signal(12, SIGUSR1, SI_USER, pid, 0, "pending from kill");
	expect_signal(10, rt, SI_QUEUE, pid, 101, "first queued");
	expect_signal(10, rt, SI_QUEUE, pid, 102, "second queued");
	if (poll(&p, 1, 0) != 0)
		fail("fd 10 has more to read");
	{
		struct signalfd_siginfo si;

		if (read(11, &si, sizeof(si)) != -1 || errno != EAGAIN)
			fail("fd 11 should read EAGAIN, read signal %u", si.ssi_signo);
	}
	if (kill(getpid(), SIGTERM))
		fail("kill SIGTERM: %s", strerror(errno));
	expect_signal(11, SIGTERM, SI_USER, getpid(), 0, "SIGTERM sent after the checks began");
	return finish();
}
