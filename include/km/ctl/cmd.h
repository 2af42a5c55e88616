/* kumactl commands. km_ctl_main() parses the command line, loads the configuration and runs one
 * command; the command functions share struct km_ctl_ctx. */
#ifndef KM_CTL_CMD_H
#define KM_CTL_CMD_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <km/ctl/args.h>
#include <km/ctl/client.h>

struct km_ctl_cmd;

/* State of one kumactl run. */
struct km_ctl_ctx {
    const struct km_ctl_cmd *cmd;         /* the command being run */
    const struct km_ctl_flag *tables[6];  /* flags valid for it: global + path */
    size_t ntables;
    struct km_ctl_args args;
    char *config_path; /* owned */
    bool no_config;
    json_t *config;    /* owned */
    long timeout_ms;
    struct km_ctl_client *client; /* owned, created on first use */
    FILE *out;
    FILE *err;
    int64_t now_us;
};

/* Runs kumactl with <argc>/<argv> (argv[0] is the program name); returns the exit code. */
int km_ctl_main(int argc, char **argv);

/* Helpers for command implementations. */
const char *km_ctl_flag_str(const struct km_ctl_ctx *x, const char *name);
bool km_ctl_flag_bool(const struct km_ctl_ctx *x, const char *name);
/* Prints "Error: <msg>" on the error stream; returns 1 (the exit code). */
int km_ctl_fail(struct km_ctl_ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool km_ctl_save_config(struct km_ctl_ctx *x);
/* Client of the current control plane; NULL after printing an error. */
struct km_ctl_client *km_ctl_current_client(struct km_ctl_ctx *x);
/* GET of a JSON document; on a non-2xx answer prints the formatted error (prefixed by
 * <what> when not NULL) and returns NULL. *<status> gets the HTTP status (0 on transport error). */
json_t *km_ctl_get_json(struct km_ctl_ctx *x, const char *path, const char *what, long *status);
/* Prints <v> as JSON (2-space indent) or YAML. */
void km_ctl_print_json(FILE *out, const json_t *v);
void km_ctl_print_yaml(FILE *out, const json_t *v);

/* Commands (src/ctl/cmd_*.c); each returns the exit code. */
int km_ctl_cmd_apply(struct km_ctl_ctx *x);
int km_ctl_cmd_get(struct km_ctl_ctx *x);
int km_ctl_cmd_delete(struct km_ctl_ctx *x);
int km_ctl_cmd_inspect_meshes(struct km_ctl_ctx *x);
int km_ctl_cmd_inspect_dataplanes(struct km_ctl_ctx *x);
int km_ctl_cmd_inspect_dataplane(struct km_ctl_ctx *x);
int km_ctl_cmd_config_view(struct km_ctl_ctx *x);
int km_ctl_cmd_cp_add(struct km_ctl_ctx *x);
int km_ctl_cmd_cp_list(struct km_ctl_ctx *x);
int km_ctl_cmd_cp_remove(struct km_ctl_ctx *x);
int km_ctl_cmd_cp_switch(struct km_ctl_ctx *x);
int km_ctl_cmd_version(struct km_ctl_ctx *x);
/* src/ctl/cmd_generate.c */
int km_ctl_cmd_generate_dataplane_token(struct km_ctl_ctx *x);
int km_ctl_cmd_generate_user_token(struct km_ctl_ctx *x);
int km_ctl_cmd_generate_signing_key(struct km_ctl_ctx *x);

/* Pure pieces, exposed for unit tests. */
/* Table row cells of a resource for `get` (see km_ctl_get_columns); <cells> must hold 5. */
size_t km_ctl_get_columns(const char *type_name, bool mesh_scoped, const char **headers);
void km_ctl_get_row(const char *type_name, bool mesh_scoped, const json_t *item, int64_t now_us,
                    char **cells);
/* Kuma's tag set string of a Dataplane: "k=v1,v2 k2=v" sorted (caller frees). */
char *km_ctl_dataplane_tags(const json_t *dp);
/* Online / Offline / Partially degraded of a dataplane overview item, notes into <notes>
 * (caller frees, may be empty). */
const char *km_ctl_dataplane_status(const json_t *dataplane, const json_t *insight,
                                    char **notes);
/* The offset=... query parameter of a "next" URL (caller frees), NULL when absent. */
char *km_ctl_next_offset(const char *next);

#endif
