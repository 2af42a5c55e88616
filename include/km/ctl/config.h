/* kumactl configuration file (~/.kumactl/config), Kuma's YAML layout:
 *   contexts: [{name, controlPlane}]
 *   controlPlanes: [{name, coordinates: {apiServer: {url, skipVerify, caCertFile,
 *                    clientCertFile, clientKeyFile, headers: [{key, value}], authType,
 *                    authConf: {k: v}}}}]
 *   currentContext: name
 * The configuration is kept as a JSON object; unknown keys survive a load/save round trip. */
#ifndef KM_CTL_CONFIG_H
#define KM_CTL_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Largest configuration file kumactl reads. */
#define KM_CTL_CONFIG_MAX (1024 * 1024)

/* Kuma's default: one control plane and context "local" at http://localhost:5681. */
json_t *km_ctl_config_default(void);

/* Parses and checks a configuration document; NULL with "field: problem" in <err>. */
json_t *km_ctl_config_parse(const char *buf, size_t len, char *err, size_t errlen);

/* Reads <path>; when the file does not exist sets *<missing> and returns NULL without error. */
json_t *km_ctl_config_load(const char *path, bool *missing, char *err, size_t errlen);

/* Writes <cfg> as YAML to <path> (mode 0600), creating the parent directory (0755). */
bool km_ctl_config_save(const char *path, const json_t *cfg, char *err, size_t errlen);

/* "$HOME/.kumactl/config" (caller frees). */
char *km_ctl_config_default_path(void);

/* Adds control plane <cp> (an object with "name"; reference stolen) and a context of the same
 * name, and makes it current. Returns false when the name exists and <overwrite> is false. */
bool km_ctl_config_add_cp(json_t *cfg, json_t *cp, bool overwrite);
/* Removes the control plane and its contexts; when the current context goes, the first
 * remaining context becomes current. Returns false when there is no such control plane. */
bool km_ctl_config_remove_cp(json_t *cfg, const char *name);
/* Makes context <name> current; false when there is none. */
bool km_ctl_config_switch(json_t *cfg, const char *name);
/* Control plane of context <ctx_name> (NULL: currentContext); borrowed, NULL when none. */
json_t *km_ctl_config_current_cp(const json_t *cfg, const char *ctx_name);

#endif
