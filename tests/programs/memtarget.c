/*
 * memtarget: a command-driven checkpoint target.
 *
 * Prints "ready PID", then reads one command per line on stdin and answers
 * exactly one line on stdout ("ok ..." or "err ...").  Between commands it is
 * blocked in read(2) on stdin, so its memory is quiescent there: a test may
 * compare a checkpoint with /proc/PID/mem without racing the target.
 *
 * Addresses are hexadecimal (0x...), sizes decimal bytes.
 *
 *   map SIZE anon|shared|file PATH|sharedfile PATH [huge|nohuge] -> ok ADDR
 *   fill ADDR LEN SEED         deterministic pseudo-random bytes
 *   set ADDR LEN BYTE          memset
 *   touch ADDR LEN             read one byte per page (read faults only)
 *   dontneed ADDR LEN          madvise(MADV_DONTNEED)
 *   unmap ADDR LEN             munmap
 *   mremap ADDR OLD NEW [move] -> ok NEWADDR (move: MREMAP_FIXED elsewhere)
 *   mapfixed ADDR LEN          fresh MAP_FIXED anonymous private mapping
 *   protect ADDR LEN none|r|rw|rx
 *   sum ADDR LEN               -> ok HEX (64-bit FNV-1a of the bytes)
 *   openfile PATH OFFSET       -> ok FD (O_RDWR, lseek to OFFSET)
 *   exit CODE
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HUGE_SIZE (2UL << 20)

static long page_size;

static void reply(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static void reply_errno(const char *what)
{
	reply("err %s: %s", what, strerror(errno));
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;

	if (!s)
		return -1;
	errno = 0;
	*out = strtoull(s, &end, 0);
	if (errno || *end)
		return -1;
	return 0;
}

/* splitmix64: the word at index i of a fill with seed s is mix(s, i). */
static uint64_t mix(uint64_t seed, uint64_t index)
{
	uint64_t z = seed * 0x9E3779B97F4A7C15ULL + index + 0x632BE59BD9B4E019ULL;

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static void do_fill(unsigned char *p, uint64_t len, uint64_t seed)
{
	uint64_t i, words = len / 8;

	for (i = 0; i < words; i++) {
		uint64_t v = mix(seed, i);

		memcpy(p + i * 8, &v, 8);
	}
	if (len % 8) {
		uint64_t v = mix(seed, words);

		memcpy(p + words * 8, &v, len % 8);
	}
}

static uint64_t fnv1a(const unsigned char *p, uint64_t len)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	uint64_t i;

	for (i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* Map SIZE bytes aligned to 2 MiB by over-mapping and trimming both ends. */
static void *map_aligned(uint64_t size, int prot, int flags, int fd)
{
	uint64_t span = size + HUGE_SIZE;
	unsigned char *raw = mmap(NULL, span, prot, flags, fd, 0);
	uintptr_t start, end;

	if (raw == MAP_FAILED)
		return MAP_FAILED;
	start = ((uintptr_t)raw + HUGE_SIZE - 1) & ~(HUGE_SIZE - 1);
	end = start + size;
	if (start > (uintptr_t)raw)
		munmap(raw, start - (uintptr_t)raw);
	if ((uintptr_t)raw + span > end)
		munmap((void *)end, (uintptr_t)raw + span - end);
	return (void *)start;
}

static void cmd_map(char **tok, int ntok)
{
	uint64_t size;
	const char *kind, *path = NULL, *thp = NULL;
	int flags, fd = -1, i = 3;
	int prot = PROT_READ | PROT_WRITE;
	void *p;

	if (ntok < 3 || parse_u64(tok[1], &size) || size == 0) {
		reply("err usage: map SIZE anon|shared|file PATH|sharedfile PATH [huge|nohuge]");
		return;
	}
	kind = tok[2];
	if (!strcmp(kind, "anon")) {
		flags = MAP_PRIVATE | MAP_ANONYMOUS;
	} else if (!strcmp(kind, "shared")) {
		flags = MAP_SHARED | MAP_ANONYMOUS;
	} else if (!strcmp(kind, "file") || !strcmp(kind, "sharedfile")) {
		int shared = !strcmp(kind, "sharedfile");

		if (ntok < 4) {
			reply("err map %s needs a PATH", kind);
			return;
		}
		path = tok[3];
		i = 4;
		flags = shared ? MAP_SHARED : MAP_PRIVATE;
		fd = open(path, (shared ? O_RDWR : O_RDONLY) | O_CLOEXEC);
		if (fd < 0) {
			reply_errno("open");
			return;
		}
	} else {
		reply("err unknown mapping kind %s", kind);
		return;
	}
	if (i < ntok)
		thp = tok[i++];
	if (i < ntok || (thp && strcmp(thp, "huge") && strcmp(thp, "nohuge"))) {
		reply("err trailing arguments to map");
		if (fd >= 0)
			close(fd);
		return;
	}

	if (thp && !strcmp(thp, "huge") && fd < 0)
		p = map_aligned(size, prot, flags, fd);
	else
		p = mmap(NULL, size, prot, flags, fd, 0);
	if (fd >= 0)
		close(fd);
	if (p == MAP_FAILED) {
		reply_errno("mmap");
		return;
	}
	if (thp && madvise(p, size, !strcmp(thp, "huge") ? MADV_HUGEPAGE : MADV_NOHUGEPAGE)) {
		reply_errno("madvise");
		munmap(p, size);
		return;
	}
	reply("ok %p", p);
}

static void cmd_mremap(char **tok, int ntok)
{
	uint64_t addr, oldlen, newlen;
	void *p;

	if (ntok < 4 || ntok > 5 || parse_u64(tok[1], &addr) || parse_u64(tok[2], &oldlen) ||
	    parse_u64(tok[3], &newlen) || (ntok == 5 && strcmp(tok[4], "move"))) {
		reply("err usage: mremap ADDR OLDLEN NEWLEN [move]");
		return;
	}
	if (ntok == 5) {
		/* Reserve a fresh range so that MREMAP_FIXED surely moves the VMA. */
		void *dest = mmap(NULL, newlen, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
				  -1, 0);

		if (dest == MAP_FAILED) {
			reply_errno("mmap reserve");
			return;
		}
		p = mremap((void *)addr, oldlen, newlen, MREMAP_MAYMOVE | MREMAP_FIXED, dest);
		if (p == MAP_FAILED) {
			int saved = errno;

			munmap(dest, newlen);
			errno = saved;
		}
	} else {
		p = mremap((void *)addr, oldlen, newlen, MREMAP_MAYMOVE);
	}
	if (p == MAP_FAILED) {
		reply_errno("mremap");
		return;
	}
	reply("ok %p", p);
}

static void cmd_protect(uint64_t addr, uint64_t len, const char *mode)
{
	int prot;

	if (!strcmp(mode, "none"))
		prot = PROT_NONE;
	else if (!strcmp(mode, "r"))
		prot = PROT_READ;
	else if (!strcmp(mode, "rw"))
		prot = PROT_READ | PROT_WRITE;
	else if (!strcmp(mode, "rx"))
		prot = PROT_READ | PROT_EXEC;
	else {
		reply("err unknown protection %s", mode);
		return;
	}
	if (mprotect((void *)addr, len, prot))
		reply_errno("mprotect");
	else
		reply("ok");
}

/* Commands of the form NAME ADDR LEN [ARG]. */
static void cmd_range(char **tok, int ntok)
{
	const char *name = tok[0];
	uint64_t addr, len, arg = 0;
	int want_arg = !strcmp(name, "fill") || !strcmp(name, "set") || !strcmp(name, "protect");

	if (ntok != 3 + want_arg || parse_u64(tok[1], &addr) || parse_u64(tok[2], &len) ||
	    (want_arg && strcmp(name, "protect") && parse_u64(tok[3], &arg))) {
		reply("err usage: %s ADDR LEN%s", name, want_arg ? " ARG" : "");
		return;
	}
	if (!strcmp(name, "fill")) {
		do_fill((unsigned char *)addr, len, arg);
		reply("ok");
	} else if (!strcmp(name, "set")) {
		memset((void *)addr, (int)(arg & 0xff), len);
		reply("ok");
	} else if (!strcmp(name, "touch")) {
		volatile unsigned char *p = (volatile unsigned char *)addr;
		unsigned long acc = 0;
		uint64_t off;

		for (off = 0; off < len; off += page_size)
			acc += p[off];
		reply("ok %lu", acc);
	} else if (!strcmp(name, "dontneed")) {
		if (madvise((void *)addr, len, MADV_DONTNEED))
			reply_errno("madvise");
		else
			reply("ok");
	} else if (!strcmp(name, "unmap")) {
		if (munmap((void *)addr, len))
			reply_errno("munmap");
		else
			reply("ok");
	} else if (!strcmp(name, "mapfixed")) {
		void *p = mmap((void *)addr, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);

		if (p == MAP_FAILED)
			reply_errno("mmap");
		else
			reply("ok %p", p);
	} else if (!strcmp(name, "protect")) {
		cmd_protect(addr, len, tok[3]);
	} else if (!strcmp(name, "sum")) {
		reply("ok %016" PRIx64, fnv1a((const unsigned char *)addr, len));
	} else {
		reply("err unknown command %s", name);
	}
}

static void cmd_openfile(char **tok, int ntok)
{
	uint64_t offset;
	int fd;

	if (ntok != 3 || parse_u64(tok[2], &offset)) {
		reply("err usage: openfile PATH OFFSET");
		return;
	}
	fd = open(tok[1], O_RDWR);
	if (fd < 0) {
		reply_errno("open");
		return;
	}
	if (lseek(fd, (off_t)offset, SEEK_SET) < 0) {
		reply_errno("lseek");
		close(fd);
		return;
	}
	reply("ok %d", fd);
}

int main(void)
{
	static char line[8192];
	static char inbuf[BUFSIZ], outbuf[BUFSIZ];
	char *tok[8];

	page_size = sysconf(_SC_PAGESIZE);
	/* Static stdio buffers: stdio never mallocs, and output is flushed per reply. */
	setvbuf(stdin, inbuf, _IOFBF, sizeof(inbuf));
	setvbuf(stdout, outbuf, _IOFBF, sizeof(outbuf));
	reply("ready %d", (int)getpid());

	while (fgets(line, sizeof(line), stdin)) {
		int ntok = 0;
		char *save = NULL, *t;

		for (t = strtok_r(line, " \t\r\n", &save); t && ntok < 8;
		     t = strtok_r(NULL, " \t\r\n", &save))
			tok[ntok++] = t;
		if (t) {
			reply("err too many arguments");
			continue;
		}
		if (ntok == 0) {
			reply("err empty command");
			continue;
		}
		if (!strcmp(tok[0], "map")) {
			cmd_map(tok, ntok);
		} else if (!strcmp(tok[0], "mremap")) {
			cmd_mremap(tok, ntok);
		} else if (!strcmp(tok[0], "openfile")) {
			cmd_openfile(tok, ntok);
		} else if (!strcmp(tok[0], "exit")) {
			uint64_t code = 0;

			if (ntok > 2 || (ntok == 2 && parse_u64(tok[1], &code))) {
				reply("err usage: exit CODE");
				continue;
			}
			reply("ok");
			_exit((int)code);
		} else {
			cmd_range(tok, ntok);
		}
	}
	return 0;
}
