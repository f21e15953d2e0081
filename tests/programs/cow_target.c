/*
 * cow_target: memory COW-shared with a child, in the manner of CRIU's zdtm
 * cow00/cow01 (checkpointing must not unshare it).
 *
 *   cow_target MIB
 *
 * Maps MIB MiB of private anonymous memory (MADV_NOHUGEPAGE: 4 KiB pages, so
 * that sharing is counted page by page), fills it with a pattern, then forks a
 * child that only sleeps (it dies with the parent: PR_SET_PDEATHSIG).  Every
 * page of the region is then mapped by both, read-only, until one of them
 * writes it.  Prints "ready PID" and "region ADDR LEN CHILDPID", then serves
 * one command per line on stdin, answering one line:
 *
 *   write N      write one byte into each of the first N pages -> ok
 *   check        -> ok if the region still holds the pattern (bytes written by
 *                   "write" included), err otherwise
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#define PAGE 4096UL

static uint64_t mix(uint64_t index)
{
	uint64_t z = index * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

int main(int argc, char **argv)
{
	unsigned long len, written = 0;
	uint64_t *words;
	pid_t parent = getpid(), child;
	char line[256];

	if (argc != 2) {
		fprintf(stderr, "usage: cow_target MIB\n");
		return 2;
	}
	len = strtoul(argv[1], NULL, 0) << 20;
	words = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (words == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	madvise(words, len, MADV_NOHUGEPAGE);
	for (unsigned long i = 0; i < len / 8; i++)
		words[i] = mix(i);
	child = fork();
	if (child < 0) {
		perror("fork");
		return 2;
	}
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(0);
		for (;;)
			pause();
	}
	printf("ready %d\n", (int)getpid());
	printf("region %p %lu %d\n", (void *)words, len, (int)child);
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		unsigned long n;

		if (sscanf(line, "write %lu", &n) == 1 && n <= len / PAGE) {
			for (unsigned long p = 0; p < n; p++)
				((volatile unsigned char *)words)[p * PAGE] ^= 0xff;
			written = n > written ? n : written;
			printf("ok\n");
		} else if (!strncmp(line, "check", 5)) {
			unsigned long bad = 0;

			for (unsigned long i = 0; i < len / 8; i++) {
				uint64_t want = mix(i);

				/* "write" flips byte 0 of a page: an odd number of times, or never. */
				if (i % (PAGE / 8) == 0 && words[i] != want)
					want ^= 0xff;
				bad += words[i] != want;
			}
			printf(bad ? "err %lu words differ\n" : "ok\n", bad);
		} else {
			printf("err unknown command\n");
		}
		fflush(stdout);
	}
	return 0;
}
