/*
 * cow_tree: a parent and a child sharing private memory copy-on-write (issue 9 item 2,
 * in the manner of CRIU's zdtm cow00/cow01), self-checking after a restore.
 *
 *   cow_tree MIB [FILE]
 *
 * Maps MIB MiB of private anonymous memory (MADV_NOHUGEPAGE: counted page by page) -- or,
 * with FILE, a private mapping of FILE made MIB MiB long, whose written pages are anonymous
 * copies of the file's -- fills it with a pattern and forks.  Then the child changes one byte in each of pages 0..255,
 * the parent in each of pages 256..511: every other page stays one physical page for both.
 * Prints "ready PID CHILD ADDRESS" once the child wrote, then waits.  On SIGUSR1 (sent after
 * a restore) the parent counts the pages it and the child map to the same page frame
 * (/proc/PID/pagemap: frames need root), has the child check its content (SIGUSR2: the
 * child exits 0 if right), checks its own, prints "PASS shared=N" or what is wrong, and
 * exits 0 or 1.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096UL
#define MARKED 256UL

static uint64_t *words;
static unsigned long len;
static pid_t child;
static volatile sig_atomic_t go;

static uint64_t mix(uint64_t index)
{
	uint64_t z = index * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* The first word of the pages [from, from + MARKED) are changed by whoever owns them. */
static int right(unsigned long from)
{
	for (unsigned long i = 0; i < len / 8; i++) {
		uint64_t want = mix(i);
		unsigned long page = i * 8 / PAGE;

		if (i * 8 % PAGE == 0 && page >= from && page < from + MARKED)
			want = ~want;
		if (words[i] != want)
			return 0;
	}
	return 1;
}

static void mark(unsigned long from)
{
	for (unsigned long p = from; p < from + MARKED; p++)
		words[p * PAGE / 8] = ~words[p * PAGE / 8];
}

static long shared_pages(pid_t a, pid_t b)
{
	char path[64];
	unsigned long n = len / PAGE;
	uint64_t *ma = calloc(n, 8), *mb = calloc(n, 8);
	int fa, fb;
	long count = 0;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)a);
	fa = open(path, O_RDONLY);
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)b);
	fb = open(path, O_RDONLY);
	if (fa < 0 || fb < 0 || !ma || !mb)
		return -1;
	if (pread(fa, ma, n * 8, (uintptr_t)words / PAGE * 8) != (ssize_t)(n * 8) ||
	    pread(fb, mb, n * 8, (uintptr_t)words / PAGE * 8) != (ssize_t)(n * 8))
		return -1;
	for (unsigned long i = 0; i < n; i++) {
		uint64_t pfn_mask = (1ULL << 55) - 1;

		if ((ma[i] >> 63) && (mb[i] >> 63) && (ma[i] & pfn_mask) == (mb[i] & pfn_mask) && (ma[i] & pfn_mask))
			count++;
	}
	close(fa);
	close(fb);
	free(ma);
	free(mb);
	return count;
}

static void on_signal(int sig)
{
	(void)sig;
	go = 1;
}

int main(int argc, char **argv)
{
	pid_t parent = getpid();
	int pipefd[2];
	char byte;

	int file = -1;

	if (argc != 2 && argc != 3) {
		fprintf(stderr, "usage: cow_tree MIB [FILE]\n");
		return 2;
	}
	len = strtoul(argv[1], NULL, 0) << 20;
	if (argc == 3) {
		file = open(argv[2], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (file < 0 || ftruncate(file, len)) {
			perror(argv[2]);
			return 2;
		}
	}
	words = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | (file < 0 ? MAP_ANONYMOUS : 0), file, 0);
	if (file >= 0)
		close(file);
	if (words == MAP_FAILED || len < 2 * MARKED * PAGE || pipe(pipefd)) {
		perror("setup");
		return 2;
	}
	madvise(words, len, MADV_NOHUGEPAGE);
	for (unsigned long i = 0; i < len / 8; i++)
		words[i] = mix(i);
	signal(SIGUSR1, on_signal);
	signal(SIGUSR2, on_signal);
	child = fork();
	if (child < 0) {
		perror("fork");
		return 2;
	}
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		signal(SIGUSR1, SIG_DFL);   /* not the parent's signal profile: the tests find the parent by it */
		if (getppid() != parent)
			_exit(3);
		mark(0);
		close(pipefd[0]);
		if (write(pipefd[1], "k", 1) != 1)
			_exit(3);
		while (!go)
			pause();
		_exit(right(0) ? 0 : 1);
	}
	close(pipefd[1]);
	if (read(pipefd[0], &byte, 1) != 1)
		return 2;
	mark(MARKED);
	printf("ready %d %d %p\n", (int)getpid(), (int)child, (void *)words);
	fflush(stdout);
	while (!go)
		pause();
	{
		long shared = shared_pages(getpid(), child);
		int status = -1, ok_mine = right(MARKED);

		kill(child, SIGUSR2);
		waitpid(child, &status, 0);
		if (ok_mine && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
			printf("PASS shared=%ld\n", shared);
			return 0;
		}
		printf("FAIL parent=%s child-status=%d shared=%ld\n", ok_mine ? "ok" : "wrong", status, shared);
		return 1;
	}
}
