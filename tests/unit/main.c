/* Unit test runner: forks each registered test with a time limit so that a crash or a hang
 * fails that test alone. Usage: km-unit [substring-filter]. */
#include <signal.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"

#define KM_TEST_MAX     1024
#define KM_TEST_TIMEOUT 20 /* seconds per test */

struct test_entry {
    const char *name;
    const char *file;
    km_test_fn fn;
};
static struct test_entry tests[KM_TEST_MAX];
static size_t ntests;

void
km_test_register(const char *name, const char *file, km_test_fn fn)
{
    if (ntests == KM_TEST_MAX) {
        fprintf(stderr, "too many tests\n");
        exit(2);
    }
    tests[ntests++] = (struct test_entry){name, file, fn};
}

const char *
km_test_data_dir(void)
{
    const char *d = getenv("KM_TEST_DATA");
    return d ? d : "tests/unit/data";
}

static int
cmp_entry(const void *a, const void *b)
{
    const struct test_entry *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c ? c : strcmp(x->name, y->name);
}

static int
run_one(const struct test_entry *t)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == -1)
        return -1;
    if (pid == 0) {
        alarm(KM_TEST_TIMEOUT);
        t->fn();
        fflush(NULL);
        exit(0); /* not _exit: LeakSanitizer reports at exit() */
    }
    int st;
    while (waitpid(pid, &st, 0) == -1) {
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st) == 0 ? 0 : 1;
    if (WIFSIGNALED(st))
        fprintf(stderr, "  killed by signal %d%s\n", WTERMSIG(st),
                WTERMSIG(st) == SIGALRM ? " (timeout)" : "");
    return 1;
}

int
main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    qsort(tests, ntests, sizeof(tests[0]), cmp_entry);
    int passed = 0, failed = 0;
    for (size_t i = 0; i < ntests; i++) {
        if (filter && !strstr(tests[i].name, filter) && !strstr(tests[i].file, filter))
            continue;
        int rc = run_one(&tests[i]);
        const char *base = strrchr(tests[i].file, '/');
        printf("%s %s:%s\n", rc == 0 ? "ok  " : "FAIL", base ? base + 1 : tests[i].file,
               tests[i].name);
        if (rc == 0)
            passed++;
        else
            failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
