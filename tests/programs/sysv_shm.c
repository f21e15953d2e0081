/* A parent and its child sharing a System V segment and a file in /dev/shm (tests/test_sysv_shm.py).
 *
 *   sysv_shm KEY PATH keep|rmid
 *
 * The parent makes the segment (key KEY, 3 pages, mode 0640; "rmid": IPC_PRIVATE, removed
 * with IPC_RMID once attached, so SHM_DEST), attaches it twice (read-write, then read-only)
 * and makes its third page read-only (two VMAs); it makes the file PATH (2 pages) and maps
 * it shared.  It writes page 0 of each, forks; the child writes page 1 of each.  Then it
 * prints "ready PID CHILD SHMID SEGMENT_ADDRESS FILE_ADDRESS".
 * SIGHUP: the parent writes "later" at the start of both (a change after a checkpoint).
 * SIGUSR1: the parent checks, after a restore, that it and its child see one segment and one
 * file -- each other's writes from before and after --, that the segment has its key, mode
 * and attach count, and prints PASS or what differs, and exits.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096

static volatile sig_atomic_t check_now, later_now, child_now;
static void on_usr1(int sig) { (void)sig; check_now = 1; }
static void on_hup(int sig) { (void)sig; later_now = 1; }
static void on_usr2(int sig) { (void)sig; child_now = 1; }

static char problems[4096];
static void problem(const char *what) {
    if (problems[0]) strcat(problems, "; ");
    strncat(problems, what, sizeof problems - strlen(problems) - 3);
}

static int perms_of(void *addr, char out[5]) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    unsigned long start;
    int found = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (sscanf(line, "%lx-%*x %4s", &start, out) == 2 && start == (unsigned long)addr) {
            found = 1;
            break;
        }
    }
    if (f) fclose(f);
    return found;
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    key_t key = (key_t)strtol(argv[1], NULL, 0);
    int rmid = strcmp(argv[3], "rmid") == 0;
    int id = shmget(rmid ? IPC_PRIVATE : key, 3 * PAGE, IPC_CREAT | IPC_EXCL | 0640);
    if (id < 0) { perror("shmget"); return 2; }
    char *seg = shmat(id, NULL, 0);
    char *ro = shmat(id, NULL, SHM_RDONLY);
    if (seg == (void *)-1 || ro == (void *)-1) { perror("shmat"); return 2; }
    if (rmid && shmctl(id, IPC_RMID, NULL) != 0) { perror("IPC_RMID"); return 2; }
    mprotect(seg + 2 * PAGE, PAGE, PROT_READ);
    int fd = open(argv[2], O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || ftruncate(fd, 2 * PAGE) != 0) { perror(argv[2]); return 2; }
    char *file = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (file == MAP_FAILED) { perror("mmap"); return 2; }
    close(fd);
    strcpy(seg, "parent-seg");
    strcpy(file, "parent-file");
    signal(SIGUSR2, on_usr2);
    pid_t kid = fork();
    if (kid == 0) {
        strcpy(seg + PAGE, "child-seg");
        strcpy(file + PAGE, "child-file");
        while (!child_now) {
            if (getppid() == 1) _exit(3);   /* gone with its parent */
            usleep(100000);
        }
        int ok = strcmp(seg + 100, "parent2") == 0 && strcmp(file + 100, "parent2") == 0
                 && strcmp(ro + 100, "parent2") == 0 && strcmp(seg, "parent-seg") == 0;
        strcpy(seg + PAGE + 100, "child2");
        strcpy(file + PAGE + 100, "child2");
        _exit(ok ? 0 : 1);
    }
    while (seg[PAGE] == 0 || file[PAGE] == 0) usleep(1000);
    struct shmid_ds ds;
    shmctl(id, IPC_STAT, &ds);
    unsigned long nattch = ds.shm_nattch;
    signal(SIGUSR1, on_usr1);
    signal(SIGHUP, on_hup);
    printf("ready %d %d %d %#lx %#lx\n", getpid(), kid, id, (unsigned long)seg, (unsigned long)file);
    fflush(stdout);
    while (!check_now) {
        if (later_now) {
            strcpy(seg, "later");
            strcpy(file, "later");
            later_now = 0;
        }
        pause();
    }
    char perms[5] = "";
    if (!rmid && shmget(key, 0, 0) != id) problem("the key does not lead to the segment");
    if (shmctl(id, IPC_STAT, &ds) != 0) problem("IPC_STAT of the segment failed");
    if ((ds.shm_perm.mode & 0777) != 0640) problem("the segment's mode changed");
    if (!!(ds.shm_perm.mode & SHM_DEST) != rmid) problem("SHM_DEST is not as before");
    if (ds.shm_nattch != nattch) {
        char msg[80];
        snprintf(msg, sizeof msg, "the attach count is %lu, not %lu", (unsigned long)ds.shm_nattch, nattch);
        problem(msg);
    }
    if (strcmp(seg, "parent-seg") || strcmp(seg + PAGE, "child-seg")) problem("the segment's pages differ");
    if (memcmp(seg, ro, 3 * PAGE)) problem("the read-only attach is not the same segment");
    if (strcmp(file, "parent-file") || strcmp(file + PAGE, "child-file")) problem("the file's pages differ");
    if (!perms_of(seg + 2 * PAGE, perms) || strcmp(perms, "r--s")) problem("the read-only page is not r--s");
    if (!perms_of(ro, perms) || strcmp(perms, "r--s")) problem("the read-only attach is not r--s");
    strcpy(seg + 100, "parent2");
    strcpy(file + 100, "parent2");
    kill(kid, SIGUSR2);
    int status = -1;
    waitpid(kid, &status, 0);
    if (status != 0) {
        char msg[80];
        snprintf(msg, sizeof msg, "the child did not see the parent's writes after the restore (status %#x)", status);
        problem(msg);
    }
    if (strcmp(seg + PAGE + 100, "child2") || strcmp(file + PAGE + 100, "child2"))
        problem("the parent does not see the child's writes after the restore");
    printf("%s\n", problems[0] ? problems : "PASS");
    fflush(stdout);
    return problems[0] ? 1 : 0;
}
