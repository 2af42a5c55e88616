/* Command-line flags for kumactl, in the manner of Go's pflag: "--name value", "--name=value",
 * "-n value", "-nvalue", "-n=value", boolean "--flag" / "--flag=false", repeatable key=value
 * maps ("--var a=b --var c=d,e=f"), and "--" to end the flags. Flags and positional arguments
 * may be interleaved. */
#ifndef KM_CTL_ARGS_H
#define KM_CTL_ARGS_H

#include <stdbool.h>
#include <stddef.h>

enum km_ctl_flag_kind {
    KM_CTL_FLAG_STRING = 0, /* last occurrence wins */
    KM_CTL_FLAG_BOOL,       /* no value, or "=true|false" */
    KM_CTL_FLAG_MAP,        /* key=value[,key=value], repeatable, accumulates */
};

/* One flag a command accepts. Tables end with an entry whose <name> is NULL. */
struct km_ctl_flag {
    const char *name;  /* long name without dashes: "mesh" */
    char short_name;   /* 'm', or 0 */
    enum km_ctl_flag_kind kind;
    const char *def;   /* default value for help and for km_ctl_args_str(), may be NULL */
    const char *help;
};

/* One parsed occurrence of a flag. */
struct km_ctl_flag_use {
    const struct km_ctl_flag *flag; /* borrowed from the table */
    char *value;                    /* owned; "true"/"false" for booleans */
};

struct km_ctl_args {
    struct km_ctl_flag_use *uses; /* owned */
    size_t nuses;
    char **pos; /* owned positional arguments */
    size_t npos;
    bool help; /* -h / --help was given */
};

void km_ctl_args_init(struct km_ctl_args *a);
void km_ctl_args_deinit(struct km_ctl_args *a);

/* Looks a flag up among <ntables> tables by long name (<name>, <len> bytes) or, when <len> is 0,
 * by the short name <shortc>. Returns NULL when no table has it. */
const struct km_ctl_flag *km_ctl_flag_find(const struct km_ctl_flag *const *tables,
                                           size_t ntables, const char *name, size_t len,
                                           char shortc);

/* Parses <argv> (<argc> words, without the program name) against the flag <tables>; appends to
 * <a>. On error returns false and writes a message ("unknown flag: --foo",
 * "flag needs an argument: --mesh") into <err>. */
bool km_ctl_args_parse(struct km_ctl_args *a, const struct km_ctl_flag *const *tables,
                       size_t ntables, int argc, char **argv, char *err, size_t errlen);

/* Value of the last occurrence of flag <name>, else its default (may be NULL). */
const char *km_ctl_args_str(const struct km_ctl_args *a, const struct km_ctl_flag *const *tables,
                            size_t ntables, const char *name);
/* True when flag <name> was given at all. */
bool km_ctl_args_has(const struct km_ctl_args *a, const char *name);
/* Boolean flag: true when given without value or with a true value. */
bool km_ctl_args_bool(const struct km_ctl_args *a, const char *name);

/* Collects every key=value pair of map flag <name> in order; a later key replaces an earlier one.
 * Returns the number of pairs and sets <keys>/<vals> (arrays and strings owned by the caller,
 * free with km_ctl_kv_free). On a malformed pair returns -1 with a message in <err>. */
long km_ctl_args_map(const struct km_ctl_args *a, const char *name, char ***keys, char ***vals,
                     char *err, size_t errlen);
void km_ctl_kv_free(char **keys, char **vals, size_t n);

/* Parses "true|false|1|0|t|f|TRUE|FALSE|True|False" like Go's strconv.ParseBool. */
bool km_ctl_parse_bool(const char *s, bool *out);

#endif
