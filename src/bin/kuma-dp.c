/* kuma-dp: the data plane. `kuma-dp run` registers with the control plane and holds the xDS
 * stream (src/dp/agent.c), runs the proxy engine's workers (src/dp/engine.c) with every
 * accepted snapshot, and the admin listener on 127.0.0.1:--admin-port. */
#include <stdio.h>
#include <string.h>

#include <km/common/loop.h>
#include <km/common/util.h>
#include <km/dp/agent.h>
#include <km/dp/dp_config.h>
#include <km/dp/engine.h>

static const char usage[] =
    "Usage: kuma-dp COMMAND [flags]\n"
    "\n"
    "Commands:\n"
    "  run       register with the control plane and run the proxy (kuma-dp run --help)\n"
    "  version   print the version\n";

struct glue {
    struct km_dp_engine *engine;
    struct km_dp_agent *agent;
};

static void
on_publish(struct km_dp_snapshot *s, void *ud)
{
    struct glue *g = ud;
    if (g->engine)
        km_dp_engine_publish(g->engine, s);
}

static void
on_stop_accepting(void *ud)
{
    struct glue *g = ud;
    if (g->engine)
        km_dp_engine_drain(g->engine);
}

static size_t
on_active(void *ud)
{
    struct glue *g = ud;
    int64_t n = g->engine ? km_dp_engine_active_connections(g->engine) : 0;
    return n > 0 ? (size_t)n : 0;
}

static char *
admin_dump(void *arg)
{
    struct glue *g = arg;
    return km_dp_agent_config_dump(g->agent);
}

static void
admin_quit(void *arg)
{
    struct glue *g = arg;
    km_dp_agent_shutdown(g->agent);
}

static int
cmd_run(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(km_dp_run_usage, stdout);
            return 0;
        }
    struct km_dp_config cfg;
    char err[1024];
    if (km_dp_config_load(&cfg, argc, argv, err, sizeof(err)) != 0 ||
        km_dp_config_finish(&cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "kuma-dp: %s\n", err);
        km_dp_config_deinit(&cfg);
        return 1;
    }
    if (cfg.log_level)
        km_log_level_parse(cfg.log_level, &km_log_level);
    km_log_info("kuma-dp", "starting kuma-dp %s (Kuma %s) for %s.%s, control plane %s",
                KM_VERSION, KM_KUMA_VERSION, cfg.mesh, cfg.name, cfg.cp_address);
    int rc = 1;
    struct km_loop *loop = km_loop_new();
    struct glue g = {0};
    struct km_dp_engine_hooks hooks = {.publish = on_publish,
                                       .stop_accepting = on_stop_accepting,
                                       .active_connections = on_active,
                                       .ud = &g};
    /* The agent blocks SIGTERM/SIGINT first so the worker threads inherit the mask. */
    g.agent = km_dp_agent_new(&cfg, loop, &hooks);
    struct km_dp_engine_opts eo = {.concurrency = cfg.concurrency};
    g.engine = km_dp_engine_new(&eo);
    struct km_dp_admin *admin = NULL;
    if (!g.engine) {
        fprintf(stderr, "kuma-dp: cannot start the proxy engine\n");
        goto out;
    }
    if (cfg.admin_port) {
        struct km_dp_admin_hooks ah = {.config_dump = admin_dump, .quit = admin_quit, .arg = &g};
        admin = km_dp_admin_start(loop, g.engine, (uint16_t)cfg.admin_port, &ah);
        if (!admin) {
            fprintf(stderr, "kuma-dp: --admin-port: cannot listen on 127.0.0.1:%d\n",
                    cfg.admin_port);
            goto out;
        }
    }
    rc = km_dp_agent_run(g.agent);
out:
    km_dp_admin_free(admin);
    if (g.engine)
        km_dp_engine_free(g.engine);
    km_dp_agent_free(g.agent);
    km_loop_free(loop);
    km_dp_config_deinit(&cfg);
    return rc;
}

int
main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "version") == 0) {
        printf("Kuma %s (kuma-c %s)\n", KM_KUMA_VERSION, KM_VERSION);
        return 0;
    }
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    if (strcmp(argv[1], "run") == 0)
        return cmd_run(argc - 2, argv + 2);
    fprintf(stderr, "kuma-dp: unknown command \"%s\"\n\n%s", argv[1], usage);
    return 1;
}
