/* kuma-dp: the data plane. Until the proxy engine lands (see the kuma-dp issue) it only
 * answers `version` and `--help`, and says plainly that `run` is not available. */
#include <stdio.h>
#include <string.h>

#include <km/common/util.h>

int
main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "version") == 0) {
        printf("Kuma %s (kuma-c %s)\n", KM_KUMA_VERSION, KM_VERSION);
        return 0;
    }
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        puts("Usage: kuma-dp version\n\n`kuma-dp run` is not implemented yet in kuma-c.");
        return 0;
    }
    fprintf(stderr, "kuma-dp: `run` is not implemented yet in kuma-c; only `version` works\n");
    return 1;
}
