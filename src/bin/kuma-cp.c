/* kuma-cp: the control plane. main() and argv only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/cp/cp.h>

extern char **environ;

static void
usage(FILE *f)
{
    fputs("Universal Control Plane for Envoy-based Service Mesh (kuma-c).\n"
          "\n"
          "Usage:\n"
          "  kuma-cp run [--config-file FILE] [--log-level LEVEL]   start the control plane\n"
          "  kuma-cp migrate up [--config-file FILE]                create or upgrade the "
          "PostgreSQL schema\n"
          "  kuma-cp version [--detailed]                           print the version\n"
          "\n"
          "Flags:\n"
          "  -c, --config-file FILE   configuration file (YAML, Kuma's keys); every key can also\n"
          "                           be set as KUMA_<PATH>, e.g. KUMA_STORE_TYPE=postgres\n"
          "      --log-level LEVEL    one of: off, error, warn, info, debug (default info)\n"
          "  -h, --help               help for kuma-cp\n",
          f);
}

/* Parses [--config-file F] [--log-level L] after the subcommand. */
static int
parse_flags(int argc, char **argv, int start, const char **config, const char **level)
{
    for (int i = start; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        const char *flag = NULL;
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config-file") == 0)
            flag = "config-file";
        else if (strncmp(a, "--config-file=", 14) == 0)
            flag = "config-file", val = a + 14;
        else if (strcmp(a, "--log-level") == 0)
            flag = "log-level";
        else if (strncmp(a, "--log-level=", 12) == 0)
            flag = "log-level", val = a + 12;
        if (!flag) {
            fprintf(stderr, "Error: unknown flag or argument \"%s\"\n", a);
            return -1;
        }
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "Error: flag needs an argument: --%s\n", flag);
                return -1;
            }
            val = argv[++i];
        }
        if (strcmp(flag, "config-file") == 0)
            *config = val;
        else
            *level = val;
    }
    return 0;
}

static int
load_config(struct km_cp_config *cfg, const char *path)
{
    struct km_errs errs;
    km_errs_init(&errs);
    km_cp_config_load(cfg, path, environ, &errs);
    if (km_errs_any(&errs)) {
        fprintf(stderr, "Error: invalid configuration (%zu problem%s):\n", errs.n,
                errs.n == 1 ? "" : "s");
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "  - %s: %s\n", errs.v[i].field, errs.v[i].reason);
        km_errs_deinit(&errs);
        return -1;
    }
    km_errs_deinit(&errs);
    return 0;
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "version") == 0) {
        if (argc > 2 && strcmp(argv[2], "--detailed") == 0)
            printf("Product:       Kuma (kuma-c)\nVersion:       %s\nBuild:         %s\n",
                   KM_KUMA_VERSION, KM_VERSION);
        else
            printf("Kuma %s (kuma-c %s)\n", KM_KUMA_VERSION, KM_VERSION);
        return 0;
    }
    int start;
    if (strcmp(cmd, "run") == 0) {
        start = 2;
    } else if (strcmp(cmd, "migrate") == 0) {
        if (argc < 3 || strcmp(argv[2], "up") != 0) {
            fprintf(stderr, "Error: usage: kuma-cp migrate up [--config-file FILE]\n");
            return 1;
        }
        start = 3;
    } else {
        fprintf(stderr, "Error: unknown command \"%s\" for \"kuma-cp\"\n", cmd);
        usage(stderr);
        return 1;
    }
    const char *config = NULL, *level = NULL;
    if (parse_flags(argc, argv, start, &config, &level) != 0)
        return 1;
    if (level && !km_log_level_parse(level, &km_log_level)) {
        fprintf(stderr, "Error: --log-level: unknown level \"%s\"\n", level);
        return 1;
    }
    struct km_cp_config cfg;
    if (load_config(&cfg, config) != 0) {
        km_cp_config_deinit(&cfg);
        return 1;
    }
    int rc = strcmp(cmd, "run") == 0 ? km_cp_run(&cfg) : km_cp_migrate(&cfg);
    km_cp_config_deinit(&cfg);
    return rc;
}
