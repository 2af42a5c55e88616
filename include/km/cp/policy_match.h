/* Policy matching: one engine for the seed's legacy policies (sources / destinations /
 * selectors of tag matchers, Kuma's "most specific wins") and the targetRef policies (top-level
 * targetRef selection, Kuma's total order, from[] / to[] / rules[] concatenation and the JSON
 * merge patch of their `default` blocks).
 *
 * Pure functions over borrowed resources: no store, no I/O, no globals. Results borrow the
 * resources they were computed from (policies, Dataplane), which must outlive them. */
#ifndef KM_CP_POLICY_MATCH_H
#define KM_CP_POLICY_MATCH_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include <km/cp/resource.h>

#define KM_TAG_SERVICE "kuma.io/service"

/* ---- legacy tag selectors ---- */

/* Specificity of a tag selector: how many of its tags name an exact value and how many
 * use the '*' wildcard. */
struct km_tag_rank {
    unsigned exact;
    unsigned wildcard;
};

/* Kuma's TagSelector.Matches: every tag of <selector> (a JSON object of strings) is present
 * in <tags> with the same value, or the selector's value is '*'. An empty or NULL selector
 * matches everything; NULL <tags> is treated as no tags. */
bool km_tags_match(const json_t *selector, const json_t *tags);
struct km_tag_rank km_tags_rank(const json_t *selector);
/* Kuma's TagSelectorRank.CompareTo: more tags in total first, then more exact values.
 * <0, 0, >0 like strcmp. */
int km_tag_rank_cmp(struct km_tag_rank a, struct km_tag_rank b);

/* Inbound connection policy of type <type> (TrafficPermission, FaultInjection, RateLimit)
 * for an inbound with <inbound_tags>: the policy with the best-ranked destination selector
 * that matches; on equal rank the one created later; on equal creation time the one whose name
 * sorts first. Sources are not looked at (they become the RBAC principals). NULL when none.
 * <rank> (may be NULL) receives the winning destination rank. */
const struct km_resource *km_legacy_select_inbound(const char *type, const json_t *inbound_tags,
                                                   const struct km_resource *const *policies,
                                                   size_t npolicies, struct km_tag_rank *rank);

/* Every policy of <type> with a destination selector matching <inbound_tags>, best first
 * (destination rank, then creation time, then name): what inspect lists. Returns the count
 * and a malloc'ed array of borrowed pointers in *out (NULL when 0); caller frees the array. */
size_t km_legacy_match_inbound(const char *type, const json_t *inbound_tags,
                               const struct km_resource *const *policies, size_t npolicies,
                               const struct km_resource ***out);

/* Connection policy of <type> between a caller and a destination, Kuma's
 * SelectConnectionPolicies: the caller is a Dataplane given as the tag objects of its
 * inbounds (<caller_tags>, a source selector matches when it matches one of them); the best
 * matching source selector of a policy is added to the best matching destination selector
 * against <dest_tags>; the highest aggregate rank wins, ties go to the later creation time,
 * then to the name that sorts first. NULL when none. */
const struct km_resource *
km_legacy_select_connection(const char *type, const json_t *const *caller_tags, size_t ncaller,
                            const json_t *dest_tags, const struct km_resource *const *policies,
                            size_t npolicies, struct km_tag_rank *rank);

/* Dataplane policy of <type> (`selectors`: TrafficTrace, ProxyTemplate, ...) for a Dataplane
 * given as the tag objects of its inbounds: Kuma's SelectDataplanePolicy (no selectors or an
 * empty selector match with rank 0). NULL when none. */
const struct km_resource *km_legacy_select_dataplane(const char *type,
                                                     const json_t *const *dp_tags, size_t ndp,
                                                     const struct km_resource *const *policies,
                                                     size_t npolicies);

/* ---- targetRef policies ---- */

/* Kuma's total order of two targetRef policies (ascending priority: the greater one is applied
 * later and wins): top-level kind (Mesh < Dataplane < MeshSubset < MeshGateway < MeshService <
 * MeshExternalService < MeshMultiZoneService < MeshServiceSubset < MeshHTTPRoute), Dataplane
 * labels < name and no sectionName < sectionName, origin label (global < none < zone),
 * MeshGateway tag count, kuma.io/policy-role (system/none < producer < consumer <
 * workload-owner), then display name (kuma.io/display-name label or name) in reverse order. */
int km_pm_policy_cmp(const struct km_resource *a, const struct km_resource *b);

/* Order of a targetRef kind in the list above (unknown kinds 0). */
int km_pm_kind_order(const char *kind);

/* Whether the top-level targetRef of <policy> selects networking.inbound[<inbound>] of
 * <dataplane>: Mesh (or no targetRef), Dataplane (all, by name, by labels; sectionName =
 * inbound name or port), MeshSubset (inbound tags), MeshService (kuma.io/service of the
 * inbound), MeshServiceSubset (service and tags); proxyTypes honoured for Mesh/MeshSubset.
 * Other kinds select nothing. */
bool km_pm_selects_inbound(const struct km_resource *policy, const struct km_resource *dataplane,
                           size_t inbound);

/* One from[] / to[] / rules[] entry, borrowed from its policy. */
struct km_pm_item {
    const struct km_resource *policy;
    const char *section;      /* "from", "to" or "rules" */
    size_t index;             /* position in that array of the policy */
    const json_t *target_ref; /* the entry's targetRef (NULL for rules[]) */
    const json_t *matches;    /* rules[].matches, NULL otherwise */
    const json_t *conf;       /* the entry's `default`, may be NULL */
};

/* What applies to one inbound of the proxy. */
struct km_pm_inbound {
    size_t index;        /* networking.inbound[index] */
    const json_t *tags;  /* the inbound's tags (borrowed, may be NULL) */
    const struct km_resource **policies; /* policies selecting it, ascending priority */
    size_t npolicies;
    struct km_pm_item *from; /* from[] of those policies concatenated, ascending priority */
    size_t nfrom;
    struct km_pm_item *rules; /* rules[] concatenated, ascending priority */
    size_t nrules;
};

/* One merged rule: a from[] targetRef of an inbound, or an outbound service. */
struct km_pm_keyed {
    char *key;                /* "Mesh", "MeshService:web", "MeshSubset:k1=v1,k2=v2",
                                 "MeshServiceSubset:web,k=v"; for to rules the service name */
    const json_t *target_ref; /* borrowed; NULL for to rules */
    json_t *conf;             /* owned: the folded `default` */
    const struct km_resource **origins; /* contributing policies, in merge order (owned array) */
    size_t norigins;
};

/* Everything one policy type contributes to one proxy. */
struct km_pm_result {
    const struct km_resource **policies; /* policies selecting the proxy, ascending priority */
    size_t npolicies;
    struct km_pm_inbound *inbounds;      /* one per inbound of the Dataplane, in order */
    size_t ninbounds;
    struct km_pm_item *to;   /* to[] of the selecting policies, ascending priority, then
                                stable-sorted by inner kind (Mesh < MeshService < ...) */
    size_t nto;
    struct km_pm_keyed *outbounds; /* per outbound service of the Dataplane (sorted, unique),
                                      only services some to[] entry applies to */
    size_t noutbounds;
    json_t *single;          /* folded top-level `default` (top-level-only policies), NULL when
                                none */
};

/* Matches every policy of type <type> in <policies> (other types are skipped; NULL entries
 * too; policies labelled kuma.io/effect: shadow too) against <dataplane>. A policy selects the
 * proxy when it selects one of its inbounds (Kuma). Never fails; <out> must be deinitialised with km_pm_result_deinit. */
void km_pm_match(const char *type, const struct km_resource *dataplane,
                 const struct km_resource *const *policies, size_t npolicies,
                 struct km_pm_result *out);
void km_pm_result_deinit(struct km_pm_result *r);

/* The folded `default` of to[] entries that apply to outbound service <service> (Mesh, or
 * MeshService with that name), NULL when none. Caller owns the result; <origins> (may be
 * NULL) receives the contributing policies like km_pm_keyed. */
json_t *km_pm_to_conf(const struct km_pm_result *r, const char *service,
                      const struct km_resource ***origins, size_t *norigins);

/* Whether the from[] targetRef <ref> applies to a caller carrying <caller_tags> (Mesh: all;
 * MeshService: kuma.io/service; MeshSubset: tags; MeshServiceSubset: both). */
bool km_pm_from_ref_matches(const json_t *ref, const json_t *caller_tags);

/* The folded from[] `default` that applies to a caller with <caller_tags> on inbound <in>,
 * NULL when no entry applies. Caller owns the result. */
json_t *km_pm_from_conf(const struct km_pm_inbound *in, const json_t *caller_tags);

/* Kuma's from rules of one inbound keyed by their from[].targetRef: one entry per distinct
 * targetRef (first appearance order), conf = fold of every entry whose targetRef covers it
 * (Mesh covers all; a subset covers its supersets). Returns the count; *out is malloc'ed;
 * free with km_pm_keyed_free. */
size_t km_pm_from_keyed(const struct km_pm_inbound *in, struct km_pm_keyed **out);
void km_pm_keyed_free(struct km_pm_keyed *k, size_t n);

/* Canonical key of a targetRef (see km_pm_keyed.key); caller frees. */
char *km_pm_ref_key(const json_t *ref);

/* JSON merge patch (RFC 7386) fold of <confs> in order (later wins per field; objects merge
 * recursively; lists are replaced, except lists whose field name starts with "append", which
 * are concatenated; null values are ignored, as Kuma's typed confs drop them). NULL entries are
 * skipped; returns NULL when no conf is an object. Caller owns the result. */
json_t *km_pm_merge(const json_t *const *confs, size_t n);

/* ---- inspection ---- */

/* Kuma's GET /meshes/{mesh}/dataplanes/{name}/policies body for a sidecar Dataplane:
 * {"kind": "SidecarDataplane", "total": N, "items": [{"type": "dataplane" | "inbound" |
 * "outbound" | "service", "name", "service", "matchedPolicies": {TYPE: [meta...]}}]}, items in
 * Kuma's attachment order, only those with a matched policy. Legacy policies as Kuma selects
 * them (TrafficTrace/ProxyTemplate per dataplane; TrafficPermission winner, FaultInjection and
 * RateLimit all matching per inbound; TrafficRoute/Timeout/TrafficLog winner per outbound;
 * HealthCheck/CircuitBreaker/Retry winner per service); MeshTrafficPermissions whose from[]
 * applies are listed per inbound too (kuma-c addition: which permission governs it). Each
 * policy is given by its meta (type, mesh, name, creationTime, modificationTime, labels).
 * Caller owns the result. */
json_t *km_pm_inspect_dataplane(const struct km_resource *dataplane,
                                const struct km_resource *const *policies, size_t npolicies);

#endif
