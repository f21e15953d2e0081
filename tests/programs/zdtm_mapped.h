/*
 * zdtm_mapped.h: what the self-checking targets of files kept whole share
 * (zdtm_memfd.c, zdtm_ghost.c): page patterns, the inode a mapping maps, a write
 * asked for between dumps.  On zdtm_anon.h (fail, die, at, ready_then_wait,
 * expect_*, finish).
 */
#ifndef ZDTM_MAPPED_H
#define ZDTM_MAPPED_H

#include "zdtm_anon.h"

#include <limits.h>

#define PAGE 4096L

/* SIGUSR2 before the go signal "pokes" the target: it writes through a mapping (once),
 * prints "poked", and checks at the end that the write is there.  A dump taken after the
 * poke must hold it (a file object is stored whole in every checkpoint). */
static volatile sig_atomic_t poke;

static void on_poke(int sig)
{
	(void)sig;
	if (!poke)
		poke = 1;
}

/* ready_then_wait(SIGUSR1), calling poked() once on the first SIGUSR2. */
static void ready_then_wait_poked(void (*poked)(void))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_go;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_poke;
	sigaction(SIGUSR2, &sa, NULL);
	printf("ready %d\n", getpid());
	fflush(stdout);
	while (!go) {
		pause();
		if (poke == 1) {
			poked();
			poke = 2;
			printf("poked\n");
			fflush(stdout);
		}
	}
}

/* Byte i of page p of file f. */
static unsigned char pattern(int f, long p, long i)
{
	return (unsigned char)(f * 61 + p * 7 + i * 13 + (i >> 9));
}

static void fill(unsigned char *buf, int f, long p, long len)
{
	for (long i = 0; i < len; i++)
		buf[i] = pattern(f, p, i);
}

static int page_is(const unsigned char *buf, int f, long p, long len)
{
	for (long i = 0; i < len; i++)
		if (buf[i] != pattern(f, p, i))
			return 0;
	return 1;
}

static int zeros(const unsigned char *buf, long len)
{
	for (long i = 0; i < len; i++)
		if (buf[i])
			return 0;
	return 1;
}

/* The inode of the file mapped at addr, from /proc/self/maps (0: none). */
static unsigned long mapped_inode(const void *addr)
{
	char line[PATH_MAX + 128];
	unsigned long start, end, ino, found = 0;
	FILE *f = fopen("/proc/self/maps", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-%lx %*s %*s %*s %lu", &start, &end, &ino) == 3 &&
		    (unsigned long)addr >= start && (unsigned long)addr < end) {
			found = ino;
			break;
		}
	fclose(f);
	return found;
}

#endif
