/*
 * zdtm_mapped.h: what the self-checking targets of files kept whole share
 * (zdtm_memfd.c, zdtm_ghost.c): page patterns, the inode a mapping maps.  On
 * zdtm_anon.h (fail, die, at, ready_then_wait, expect_*, finish).
 */
#ifndef ZDTM_MAPPED_H
#define ZDTM_MAPPED_H

#include "zdtm_anon.h"

#include <limits.h>

#define PAGE 4096L

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
