/*
 * zdtm_anon.h: what the self-checking targets share (first written for the
 * anon-inode fd kinds: zdtm_eventfd.c, zdtm_signalfd.c, zdtm_timerfd.c,
 * zdtm_inotify.c; now also the pipe, socket, epoll, terminal and other targets,
 * and, through zdtm_mapped.h, zdtm_memfd.c and zdtm_ghost.c).
 *
 * A target sets up its fds, prints "ready PID", waits for its go signal
 * (SIGUSR1 unless it says otherwise: `while (!go) pause();`), checks what it
 * set up, printing "FAIL: what" for each mismatch, and exits 1, or prints
 * "PASS" and exits 0.
 */
#ifndef ZDTM_ANON_H
#define ZDTM_ANON_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static int failures;

static void on_go(int sig)
{
	(void)sig;
	go = 1;
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	printf("FAIL: ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	failures++;
}

static void die(const char *what)
{
	printf("setup failed: %s: %s\n", what, strerror(errno));
	exit(2);
}

/* Move fd to number (closing fd), keeping its close-on-exec flag, so that the checks
 * know where each object is. */
static __attribute__((unused)) void at(int fd, int number)
{
	int cloexec;

	if (fd < 0)
		die("create");
	if (fd != number) {
		cloexec = fcntl(fd, F_GETFD) & FD_CLOEXEC;
		if (dup3(fd, number, cloexec ? O_CLOEXEC : 0) != number)
			die("dup3");
		close(fd);
	}
}

/* Print "ready PID", wait for signal sig (a handler sets go), then check. */
static __attribute__((unused)) void ready_then_wait(int sig)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_go;
	sigaction(sig, &sa, NULL);
	printf("ready %d\n", getpid());
	fflush(stdout);
	while (!go)
		pause();
}

static __attribute__((unused)) int finish(void)
{
	if (failures)
		return 1;
	printf("PASS\n");
	return 0;
}

static __attribute__((unused)) void expect_link(int fd, const char *want)
{
	char path[64], link[256];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0) {
		fail("fd %d is not open", fd);
		return;
	}
	link[n] = 0;
	if (strcmp(link, want))
		fail("fd %d is %s, expected %s", fd, link, want);
}

static __attribute__((unused)) void expect_flags(int fd, int want)
{
	int got = fcntl(fd, F_GETFL);
	int mask = O_ACCMODE | O_NONBLOCK | O_APPEND;

	if (got < 0 || (got & mask) != want)
		fail("fd %d flags %#o, expected %#o", fd, got & mask, want);
}

static __attribute__((unused)) void expect_cloexec(int fd, int want)
{
	int got = fcntl(fd, F_GETFD);

	if (got < 0 || !!(got & FD_CLOEXEC) != want)
		fail("fd %d close-on-exec is %d, expected %d", fd, got < 0 ? -1 : !!(got & FD_CLOEXEC), want);
}

/* The value of "key:" in /proc/self/fdinfo/fd (its first line with that key), or "" */
static __attribute__((unused)) const char *fdinfo_value(int fd, const char *key)
{
	static char value[512];
	char path[64], line[512];
	size_t len = strlen(key);
	FILE *f;

	value[0] = 0;
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "r");
	if (!f)
		return value;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, key, len) && line[len] == ':') {
			char *v = line + len + 1;

			while (*v == ' ' || *v == '\t')
				v++;
			v[strcspn(v, "\n")] = 0;
			snprintf(value, sizeof(value), "%s", v);
			break;
		}
	}
	fclose(f);
	return value;
}

#endif
