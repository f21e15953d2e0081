/*
 * bench_target: the C target of tools/bench.py.
 *
 * Prints "ready PID", then reads one command per line on stdin and answers
 * exactly one line on stdout ("ok ..." or "err ...").  It holds one memory
 * region (private anonymous, 4 KiB pages unless THP is "always") and, on
 * command, writes into it: once with a pattern, continuously at a rate from a
 * background thread, or as fast as it can in a measurable write loop.  Only
 * fds 0-2 are open, so ckpt can restore it.
 *
 *   alloc MIB CONTENT        map and fill MIB MiB -> ok ADDR
 *                            CONTENT: const | zero | random | text | mixed | half
 *                            (mixed: 256 KiB blocks of random, zeros, text in turn;
 *                            half: random, zeros, random, text in turn -- half random,
 *                            a quarter zeros, a quarter text, as issue 11 measures)
 *   write OFF_MIB LEN_MIB PCT scattered|contiguous SEED [FILE]
 *                            write one 8-byte word into PCT % of the pages of
 *                            [OFF, OFF+LEN) MiB of the region -> ok PAGES NS
 *                            scattered: each page with probability PCT/100;
 *                            contiguous: one run of PCT % of the pages.
 *                            FILE receives the written pages' addresses (u64).
 *   rate MBPS                a thread rewrites random whole pages (random
 *                            words) at MBPS MB/s; 0 stops it -> ok
 *   loop seq|random          a thread writes the whole region as fast as it
 *                            can: seq = 8-byte words in order, pass after
 *                            pass; random = 8-byte words at random offsets -> ok
 *   count                    -> ok BYTES NS   (bytes the loop wrote, monotonic ns)
 *   sum                      -> ok HEX        (a hash of the whole region)
 *   ping                     -> ok
 *   exit                     exits 0
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define MIB (1UL << 20)

static unsigned char *region;
static size_t region_len;
static pthread_t writer;
static int writer_running;
static atomic_int writer_stop;
static atomic_uint_fast64_t loop_bytes;
static double rate_mbps;
static int loop_random;

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* splitmix64: a well-mixed 64-bit value for (seed, index). */
static uint64_t mix(uint64_t seed, uint64_t index)
{
	uint64_t z = seed * 0x9E3779B97F4A7C15ULL + index + 0x632BE59BD9B4E019ULL;

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static void fill_random(unsigned char *p, size_t len, uint64_t seed)
{
	uint64_t *w = (uint64_t *)p;
	size_t i;

	for (i = 0; i < len / 8; i++)
		w[i] = mix(seed, i);
}

/* Text-like bytes: words of a small vocabulary, spaces, newlines, numbers. */
static void fill_text(unsigned char *p, size_t len, uint64_t seed)
{
	static const char *words[] = {
		"the", "of", "and", "checkpoint", "process", "memory", "page", "written",
		"kernel", "restore", "image", "frozen", "time", "dump", "incremental", "to",
		"a", "in", "is", "that", "for", "it", "with", "as", "was", "on", "be", "at",
		"by", "this", "from", "or", "which", "an", "are", "not", "but", "have",
		"request", "response", "user", "session", "value", "error", "status", "id",
		"name", "type", "count", "list", "table", "index", "buffer", "thread",
		"signal", "handler", "config", "server", "client", "data", "file", "path",
	};
	const size_t nwords = sizeof(words) / sizeof(words[0]);
	uint64_t s = seed | 1;
	size_t pos = 0, col = 0;

	while (pos < len) {
		uint64_t r = xorshift(&s);
		char tmp[32];
		const char *w;
		size_t n;

		if ((r & 15) == 0) {
			n = (size_t)snprintf(tmp, sizeof(tmp), "%" PRIu64, (r >> 8) % 100000);
			w = tmp;
		} else {
			w = words[(r >> 4) % nwords];
			n = strlen(w);
		}
		if (pos + n + 1 > len) {
			memset(p + pos, ' ', len - pos);
			break;
		}
		memcpy(p + pos, w, n);
		pos += n;
		col += n + 1;
		p[pos++] = col > 72 ? (col = 0, '\n') : ' ';
	}
}

static void cmd_alloc(char **tok, int ntok)
{
	size_t mib, block = 256 * 1024, off;
	const char *content;

	if (ntok != 3 || region) {
		reply("err usage: alloc MIB CONTENT (once)");
		return;
	}
	mib = strtoull(tok[1], NULL, 0);
	content = tok[2];
	region_len = mib * MIB;
	region = mmap(NULL, region_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED) {
		region = NULL;
		reply("err mmap: %s", strerror(errno));
		return;
	}
	if (!strcmp(content, "const")) {
		memset(region, 0x5a, region_len);
	} else if (!strcmp(content, "zero")) {
		memset(region, 0, region_len);
	} else if (!strcmp(content, "random")) {
		fill_random(region, region_len, 1);
	} else if (!strcmp(content, "text")) {
		fill_text(region, region_len, 1);
	} else if (!strcmp(content, "mixed")) {
		for (off = 0; off < region_len; off += block) {
			size_t n = region_len - off < block ? region_len - off : block;

			switch ((off / block) % 3) {
			case 0: fill_random(region + off, n, off); break;
			case 1: memset(region + off, 0, n); break;
			default: fill_text(region + off, n, off); break;
			}
		}
	} else if (!strcmp(content, "half")) {
		for (off = 0; off < region_len; off += block) {
			size_t n = region_len - off < block ? region_len - off : block;

			switch ((off / block) % 4) {
			case 1: memset(region + off, 0, n); break;
			case 3: fill_text(region + off, n, off); break;
			default: fill_random(region + off, n, off); break;
			}
		}
	} else {
		reply("err unknown content %s", content);
		return;
	}
	reply("ok %p", (void *)region);
}

static void cmd_write(char **tok, int ntok)
{
	size_t off, len, npages, i, written = 0;
	double pct;
	uint64_t seed, threshold, t0, t1;
	int contiguous;
	FILE *out = NULL;

	if (ntok < 6 || !region) {
		reply("err usage: write OFF_MIB LEN_MIB PCT scattered|contiguous SEED [FILE]");
		return;
	}
	off = strtoull(tok[1], NULL, 0) * MIB;
	len = strtoull(tok[2], NULL, 0) * MIB;
	pct = strtod(tok[3], NULL);
	contiguous = !strcmp(tok[4], "contiguous");
	seed = strtoull(tok[5], NULL, 0);
	if (off + len > region_len) {
		reply("err range outside the region");
		return;
	}
	if (ntok > 6 && !(out = fopen(tok[6], "w"))) {
		reply("err %s: %s", tok[6], strerror(errno));
		return;
	}
	npages = len / PAGE;
	t0 = now_ns();
	if (contiguous) {
		size_t count = (size_t)llround(npages * pct / 100.0), first;

		first = count < npages ? mix(seed, npages) % (npages - count + 1) : 0;
		for (i = first; i < first + count; i++) {
			uint64_t h = mix(seed, i);
			unsigned char *page = region + off + i * PAGE;

			*(volatile uint64_t *)(page + ((h >> 3) & 511) * 8) = h;
		}
		written = count;
	} else {
		threshold = pct >= 100.0 ? UINT64_MAX : (uint64_t)(pct / 100.0 * 18446744073709551616.0);
		for (i = 0; i < npages; i++) {
			uint64_t h = mix(seed, i);

			if (h < threshold) {
				unsigned char *page = region + off + i * PAGE;

				*(volatile uint64_t *)(page + ((h >> 3) & 511) * 8) = h ^ seed;
				written++;
			}
		}
	}
	t1 = now_ns();
	if (out) {
		/* Recomputed after the timed loop: the list costs nothing in the timing. */
		if (contiguous) {
			size_t count = written, first = count < npages ? mix(seed, npages) % (npages - count + 1) : 0;

			for (i = first; i < first + count; i++) {
				uint64_t a = (uint64_t)(uintptr_t)(region + off + i * PAGE);

				fwrite(&a, 8, 1, out);
			}
		} else {
			for (i = 0; i < npages; i++) {
				if (mix(seed, i) < threshold) {
					uint64_t a = (uint64_t)(uintptr_t)(region + off + i * PAGE);

					fwrite(&a, 8, 1, out);
				}
			}
		}
		fclose(out);
	}
	reply("ok %zu %" PRIu64, written, t1 - t0);
}

/* Rewrite random whole pages at rate_mbps, in bursts every millisecond. */
static void *rate_thread(void *arg)
{
	uint64_t s = 0x12345678ULL, start = now_ns(), done = 0;
	size_t npages = region_len / PAGE;

	(void)arg;
	while (!atomic_load_explicit(&writer_stop, memory_order_relaxed)) {
		double due = rate_mbps * 1e6 * (double)(now_ns() - start) / 1e9;

		while ((double)done < due) {
			uint64_t *w = (uint64_t *)(region + (xorshift(&s) % npages) * PAGE);
			size_t i;

			for (i = 0; i < PAGE / 8; i++)
				w[i] = xorshift(&s);
			done += PAGE;
		}
		usleep(1000);
	}
	return NULL;
}

/* Write the region as fast as possible; loop_bytes counts the bytes written. */
static void *loop_thread(void *arg)
{
	uint64_t *w = (uint64_t *)region, s = 0x9E3779B97F4A7C15ULL, pass = 0;
	size_t nwords = region_len / 8, i;

	(void)arg;
	while (!atomic_load_explicit(&writer_stop, memory_order_relaxed)) {
		if (loop_random) {
			/* 64 Ki random 8-byte writes per batch */
			for (i = 0; i < 65536; i++) {
				uint64_t x = xorshift(&s);

				w[x % nwords] = x;
			}
			atomic_fetch_add_explicit(&loop_bytes, 65536 * 8, memory_order_relaxed);
		} else {
			/* one pass, counted per MiB */
			size_t step = MIB / 8, j;

			pass++;
			for (i = 0; i < nwords; i += step) {
				for (j = i; j < i + step && j < nwords; j++)
					w[j] = pass + j;
				atomic_fetch_add_explicit(&loop_bytes, (j - i) * 8, memory_order_relaxed);
				if (atomic_load_explicit(&writer_stop, memory_order_relaxed))
					break;
			}
		}
	}
	return NULL;
}

static void stop_writer(void)
{
	if (writer_running) {
		atomic_store(&writer_stop, 1);
		pthread_join(writer, NULL);
		writer_running = 0;
		atomic_store(&writer_stop, 0);
	}
}

static void start_writer(void *(*fn)(void *))
{
	stop_writer();
	atomic_store(&loop_bytes, 0);
	if (pthread_create(&writer, NULL, fn, NULL)) {
		reply("err pthread_create");
		return;
	}
	writer_running = 1;
	reply("ok");
}

static void cmd_sum(void)
{
	const uint64_t *w = (const uint64_t *)region;
	uint64_t h = 0xcbf29ce484222325ULL;
	size_t i;

	for (i = 0; i < region_len / 8; i++)
		h = (h ^ w[i]) * 0x100000001b3ULL;
	reply("ok %016" PRIx64, h);
}

int main(void)
{
	char line[4096];

	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		char *tok[8], *save = NULL, *t;
		int ntok = 0;

		for (t = strtok_r(line, " \t\n", &save); t && ntok < 8; t = strtok_r(NULL, " \t\n", &save))
			tok[ntok++] = t;
		if (!ntok) {
			reply("err empty command");
		} else if (!strcmp(tok[0], "alloc")) {
			cmd_alloc(tok, ntok);
		} else if (!strcmp(tok[0], "write")) {
			cmd_write(tok, ntok);
		} else if (!strcmp(tok[0], "rate") && ntok == 2 && region) {
			rate_mbps = strtod(tok[1], NULL);
			if (rate_mbps > 0) {
				start_writer(rate_thread);
			} else {
				stop_writer();
				reply("ok");
			}
		} else if (!strcmp(tok[0], "loop") && ntok == 2 && region) {
			loop_random = !strcmp(tok[1], "random");
			start_writer(loop_thread);
		} else if (!strcmp(tok[0], "count")) {
			reply("ok %" PRIu64 " %" PRIu64, (uint64_t)atomic_load(&loop_bytes), now_ns());
		} else if (!strcmp(tok[0], "sum") && region) {
			cmd_sum();
		} else if (!strcmp(tok[0], "ping")) {
			reply("ok");
		} else if (!strcmp(tok[0], "exit")) {
			stop_writer();
			return 0;
		} else {
			reply("err unknown command %s", tok[0]);
		}
	}
	stop_writer();
	return 0;
}
