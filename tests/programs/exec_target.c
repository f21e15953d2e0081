/*
 * exec_target: a target that can exec itself (same pid, a new address space).
 *
 *   exec_target [GEN]
 *
 * Maps a 4 MiB anonymous buffer, fills page i with the byte (GEN * 16 + i) & 0xff,
 * prints "ready PID" and waits for commands on stdin, one per line:
 *
 *   buf            -> "ok ADDR" (hex address of the buffer)
 *   set PAGE BYTE  -> fills page PAGE of the buffer with BYTE; "ok"
 *   exec           -> execs /proc/self/exe with GEN + 1 (it prints "ready PID" again)
 *
 * Used to check that ckpt notices an exec between two dumps: the uffd it
 * tracks with belongs to the old address space.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL
#define NPAGES 1024UL

int main(int argc, char **argv)
{
	unsigned long gen = argc > 1 ? strtoul(argv[1], NULL, 10) : 0;
	unsigned char *buf = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char line[256], next[32];

	if (buf == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	madvise(buf, NPAGES * PAGE, MADV_NOHUGEPAGE);
	for (unsigned long i = 0; i < NPAGES; i++)
		memset(buf + i * PAGE, (int)((gen * 16 + i) & 0xff), PAGE);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready %d\n", getpid());
	while (fgets(line, sizeof(line), stdin)) {
		unsigned long page, byte;

		if (!strcmp(line, "buf\n")) {
			printf("ok %#lx\n", (unsigned long)buf);
		} else if (sscanf(line, "set %lu %lu", &page, &byte) == 2 && page < NPAGES) {
			memset(buf + page * PAGE, (int)byte, PAGE);
			printf("ok\n");
		} else if (!strcmp(line, "exec\n")) {
			snprintf(next, sizeof(next), "%lu", gen + 1);
			execl("/proc/self/exe", "exec_target", next, (char *)NULL);
			printf("err exec failed\n");
		} else {
			printf("err unknown command\n");
		}
	}
	return 0;
}
