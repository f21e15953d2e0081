/*
 * trust_target: a target holding the kinds of paths a restore reopens, for
 * the trust tests (tests/test_trust_restore.py).
 *
 *   trust_target [-o FILE] [-s FILE] [-m FILE] [-c JAIL [-d DIR]]
 *
 *   -o FILE  keep FILE open O_RDWR (its fd number is printed)
 *   -s FILE  map FILE shared, read-write (the whole file, at least one page)
 *   -m FILE  map FILE private, read-only, and read its first page
 *   -c JAIL  after opening and mapping the above: chroot(JAIL), then chdir to
 *            DIR inside it (-d, default "/")
 *
 * Prints
 *   ready PID
 *   info fd=N shared=ADDR private=ADDR      (-1 / 0 for what was not asked)
 * then waits.  On SIGUSR1 it reports what it sees now and exits 0:
 *   marker=yes|no   whether /trust-jail-marker exists (a file only the jail has)
 *   cwd=PATH        getcwd()
 *   fd=HEX          the first 16 bytes read from the -o fd (pread at 0)
 *   shared=HEX      the first 16 bytes of the -s mapping
 *   PASS
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGE 4096UL

static volatile sig_atomic_t go;

static void on_usr1(int sig)
{
	(void)sig;
	go = 1;
}

static void die(const char *what, const char *arg)
{
	fprintf(stdout, "err %s %s\n", what, arg ? arg : "");
	fflush(stdout);
	exit(2);
}

static void *map_file(const char *path, int shared)
{
	int fd = open(path, shared ? O_RDWR : O_RDONLY);
	struct stat st;
	size_t len;
	void *p;

	if (fd < 0 || fstat(fd, &st))
		die("open", path);
	len = st.st_size < (off_t)PAGE ? PAGE : (size_t)st.st_size;
	p = mmap(NULL, len, shared ? PROT_READ | PROT_WRITE : PROT_READ, shared ? MAP_SHARED : MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED)
		die("mmap", path);
	close(fd);
	return p;
}

static void hex16(const char *label, const unsigned char *bytes, ssize_t n)
{
	ssize_t i;

	printf("%s=", label);
	for (i = 0; i < n && i < 16; i++)
		printf("%02x", bytes[i]);
	printf("\n");
}

int main(int argc, char **argv)
{
	const char *openpath = NULL, *sharedpath = NULL, *privpath = NULL, *jail = NULL, *dir = "/";
	unsigned char *shared = NULL, *priv = NULL;
	unsigned char buf[16];
	char cwd[4096];
	struct sigaction sa;
	struct stat st;
	volatile unsigned char sink;
	int fd = -1, opt;
	ssize_t n;

	while ((opt = getopt(argc, argv, "o:s:m:c:d:")) != -1) {
		switch (opt) {
		case 'o': openpath = optarg; break;
		case 's': sharedpath = optarg; break;
		case 'm': privpath = optarg; break;
		case 'c': jail = optarg; break;
		case 'd': dir = optarg; break;
		default:
			fprintf(stderr, "usage: trust_target [-o FILE] [-s FILE] [-m FILE] [-c JAIL [-d DIR]]\n");
			return 2;
		}
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	if (sigaction(SIGUSR1, &sa, NULL))
		die("sigaction", NULL);
	if (openpath && (fd = open(openpath, O_RDWR)) < 0)
		die("open", openpath);
	if (sharedpath)
		shared = map_file(sharedpath, 1);
	if (privpath) {
		priv = map_file(privpath, 0);
		sink = priv[0];
		(void)sink;
	}
	if (jail && (chroot(jail) || chdir(dir)))
		die("chroot", jail);
	printf("ready %d\n", getpid());
	printf("info fd=%d shared=%p private=%p\n", fd, (void *)shared, (void *)priv);
	fflush(stdout);
	while (!go)
		pause();
	printf("marker=%s\n", stat("/trust-jail-marker", &st) == 0 ? "yes" : "no");
	printf("cwd=%s\n", getcwd(cwd, sizeof(cwd)) ? cwd : "?");
	n = fd >= 0 ? pread(fd, buf, sizeof(buf), 0) : 0;
	hex16("fd", buf, n);
	hex16("shared", shared ? shared : buf, shared ? 16 : 0);
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
