/* kuma-dp's HTTP router: virtual host selection, route matching, weighted clusters and path
 * rewriting over a snapshot's route configuration (Envoy's RouteConfiguration semantics).
 *
 * Virtual hosts: the authority (Host or :authority) is compared case-insensitively with each
 * vhost's domains: exact first, then suffix wildcards ("*.foo.com", "*-bar.foo.com": the '*'
 * matches at least one character, the longest suffix wins), then prefix wildcards ("foo.*",
 * longest wins), then "*". When nothing but "*" matches and the authority carries a port
 * ("host:8080", "[::1]:8080"), the same search is repeated without the port (Envoy's
 * strip_any_host_port, applied only when the authority with its port finds nothing).
 *
 * Routes are tried in order; the first whose path and header matchers all match wins:
 * - prefix: compared with the whole :path (Envoy: query included), exact path and regex with
 *   the path before '?'; case_sensitive false compares prefix / path ASCII case-insensitively;
 * - regex: full match (anchored on both ends, like RE2's FullMatch in Envoy), POSIX extended
 *   syntax compiled by km_dp_route_compile, with RE2's \d \w \s (and \D \W \S), "(?:" groups,
 *   a leading "(?i)" and lazy quantifiers translated; other RE2-only syntax is a compile error;
 * - headers: by lowercase name (pseudo-headers ":authority" and ":path" come from the
 *   arguments, ":method" and ":scheme" from <headers> when the caller includes them); several
 *   headers with one name are joined with "," as Envoy does; exact, prefix, suffix, contains,
 *   present and regex (full match), each possibly inverted; a missing header fails every kind
 *   but "present", then the inversion applies. */
#ifndef KM_DP_ROUTER_H
#define KM_DP_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include <km/common/http1.h>
#include <km/dp/snapshot.h>

/* The virtual host of <rc> for <authority> (NUL terminated, may be NULL or ""), or NULL. */
const struct km_dp_vhost *km_dp_vhost_match(const struct km_dp_route_config *rc,
                                            const char *authority);

/* The route of <rc> for a request, or NULL (the engine answers 404). <path> is the request's
 * :path (origin form, query included), <headers> its header fields (borrowed, names in any
 * case). Worker only; reads the snapshot only, never allocates unless a header matched by
 * regex is longer than 4 KiB (then a failed allocation is a non-match). */
const struct km_dp_route *km_dp_route_match(const struct km_dp_route_config *rc,
                                            const char *authority, const char *path,
                                            const struct km_http1_header *headers,
                                            size_t nheaders);

/* The same for an already selected virtual host. */
const struct km_dp_route *km_dp_vhost_route_match(const struct km_dp_vhost *vh, const char *path,
                                                  const struct km_http1_header *headers,
                                                  size_t nheaders);

/* Picks one of <r>'s weighted clusters with the random number <rnd> (uniform over 64 bits):
 * cluster i with probability weight_i / sum. NULL when the route has none. Entries with
 * weight 0 are never picked unless all weights are 0 (then the first). */
const struct km_dp_weighted *km_dp_route_pick_cluster(const struct km_dp_route *r, uint64_t rnd);

/* Compiles <r>'s regexes (a regex path match and regex header matchers) into r->regex and
 * r->headers[i].regex, for the snapshot builder. Returns 0, or KM_EINVAL with a message in
 * <err> naming the field ("match.safe_regex.regex: ..." or
 * "match.headers[1].string_match.safe_regex.regex: ..."); on error nothing stays allocated.
 * The snapshot frees them with km_dp_route_release. */
int km_dp_route_compile(struct km_dp_route *r, char *err, size_t errlen);
/* Frees the compiled regexes of <r> (not the route itself); safe on a route never compiled. */
void km_dp_route_release(struct km_dp_route *r);

/* Rewrites <path> (len <path_len>) for forwarding when <r> has a prefix_rewrite: for a prefix
 * route the matched prefix is replaced, for an exact path or regex route the path before '?'
 * is; the query string is kept. Writes the result, NUL terminated, into <out> (room <cap>)
 * and returns its length; returns 0 with nothing written when the route rewrites nothing,
 * and KM_ELIMIT when <out> is too small. */
long km_dp_route_rewrite_path(const struct km_dp_route *r, const char *path, size_t path_len,
                              char *out, size_t cap);

#endif
