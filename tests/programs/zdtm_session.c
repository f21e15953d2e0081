/*
 * zdtm_session: session and process-group leadership, checking itself (what CRIU's
 * zdtm tests do first: setsid()).
 *
 *   zdtm_session setsid|setpgid|member
 *
 * "setsid": leads a session of its own (and so its group); "setpgid": leads a group of
 * its own in the session it was started in (setpgid(0, 0)); "member": neither, a member of
 * its starter's group and session.  Prints "ready PID", waits for SIGUSR1 (zdtm_anon.h),
 * then checks that it still is what it made itself: leader of its session and group
 * (getsid(0) == getpgrp() == getpid()), leader of its group only, or leader of neither;
 * with "setsid", that it has no controlling terminal (/dev/tty: ENXIO).
 */
#include "zdtm_anon.h"

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	int sid_leader = !strcmp(mode, "setsid"), pgrp_leader = sid_leader || !strcmp(mode, "setpgid");
	int fd;

	if (sid_leader && setsid() < 0)
		die("setsid");
	if (!strcmp(mode, "setpgid") && setpgid(0, 0))
		die("setpgid");
	if (!sid_leader && !pgrp_leader && strcmp(mode, "member"))
		die("usage: zdtm_session setsid|setpgid|member");
	ready_then_wait(SIGUSR1);
	if ((getsid(0) == getpid()) != sid_leader)
		fail("session %d, pid %d: %s the session leader", getsid(0), getpid(), sid_leader ? "not" : "now");
	if ((getpgrp() == getpid()) != pgrp_leader)
		fail("process group %d, pid %d: %s the group leader", getpgrp(), getpid(), pgrp_leader ? "not" : "now");
	if (sid_leader) {
		fd = open("/dev/tty", O_RDWR | O_NOCTTY);
		if (fd >= 0 || errno != ENXIO)
			fail("a session leader without a terminal opens /dev/tty (fd %d, %s)", fd, strerror(errno));
	}
	return finish();
}
