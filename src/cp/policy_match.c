/* Policy matching engine: legacy tag-selector policies and targetRef policies (see
 * include/km/cp/policy_match.h for the rules). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/cp/policy_match.h>

#define MERGE_MAX_DEPTH 64

/* ---- small JSON helpers ---- */

static const char *
pm_str(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static const char *
pm_str_nonempty(const json_t *o, const char *key)
{
    const char *s = pm_str(o, key);
    return s && *s ? s : NULL;
}

static bool
pm_is_type(const struct km_resource *r, const char *type)
{
    return r && r->type && r->type->name && type && strcmp(r->type->name, type) == 0;
}

static const json_t *
pm_inbounds(const struct km_resource *dp)
{
    const json_t *in = json_object_get(json_object_get(dp ? dp->spec : NULL, "networking"),
                                       "inbound");
    return json_is_array(in) ? in : NULL;
}

static const char *
pm_label(const struct km_resource *r, const char *key)
{
    return r ? pm_str_nonempty(r->labels, key) : NULL;
}

/* ---- legacy tag selectors ---- */

bool
km_tags_match(const json_t *selector, const json_t *tags)
{
    const char *k;
    json_t *v;

    if (!json_is_object(selector))
        return true;
    json_object_foreach((json_t *)selector, k, v) {
        const char *want = json_string_value(v);
        const char *have = pm_str(tags, k);
        if (want == NULL || have == NULL)
            return false;
        if (strcmp(want, "*") != 0 && strcmp(want, have) != 0)
            return false;
    }
    return true;
}

struct km_tag_rank
km_tags_rank(const json_t *selector)
{
    struct km_tag_rank r = {0, 0};
    const char *k;
    json_t *v;

    if (!json_is_object(selector))
        return r;
    json_object_foreach((json_t *)selector, k, v) {
        const char *s = json_string_value(v);
        if (s && strcmp(s, "*") == 0)
            r.wildcard++;
        else
            r.exact++;
    }
    return r;
}

int
km_tag_rank_cmp(struct km_tag_rank a, struct km_tag_rank b)
{
    unsigned ta = a.exact + a.wildcard, tb = b.exact + b.wildcard;
    if (ta != tb)
        return ta < tb ? -1 : 1;
    if (a.exact != b.exact)
        return a.exact < b.exact ? -1 : 1;
    return 0;
}

static struct km_tag_rank
rank_add(struct km_tag_rank a, struct km_tag_rank b)
{
    struct km_tag_rank r = {a.exact + b.exact, a.wildcard + b.wildcard};
    return r;
}

static int
cmp_res_name(const void *a, const void *b)
{
    const struct km_resource *x = *(const struct km_resource *const *)a;
    const struct km_resource *y = *(const struct km_resource *const *)b;
    return strcmp(x->name ? x->name : "", y->name ? y->name : "");
}

/* The policies of <type>, sorted by name (Kuma sorts by name first so that equal ranks and
 * equal creation times resolve the same way every time). Caller frees. */
static size_t
legacy_candidates(const char *type, const struct km_resource *const *policies, size_t n,
                  const struct km_resource ***out)
{
    const struct km_resource **v = km_xcalloc(n + 1, sizeof(*v));
    size_t k = 0;

    for (size_t i = 0; i < n; i++)
        if (pm_is_type(policies[i], type) && json_is_object(policies[i]->spec))
            v[k++] = policies[i];
    qsort(v, k, sizeof(*v), cmp_res_name);
    *out = v;
    return k;
}

static const json_t *
selector_match(const json_t *sel)
{
    return json_object_get(sel, "match");
}

/* Best destination rank of <p> against <tags>; false when no destination matches. */
static bool
best_dest_rank(const struct km_resource *p, const json_t *tags, struct km_tag_rank *best)
{
    const json_t *dests = json_object_get(p->spec, "destinations");
    bool found = false;

    for (size_t i = 0; i < json_array_size(dests); i++) {
        const json_t *m = selector_match(json_array_get(dests, i));
        if (!km_tags_match(m, tags))
            continue;
        struct km_tag_rank r = km_tags_rank(m);
        if (!found || km_tag_rank_cmp(r, *best) > 0)
            *best = r;
        found = true;
    }
    return found;
}

/* Whether candidate (<p>, <r>) beats the current best (<best>, <best_rank>): a higher rank,
 * or the same rank and a strictly later creation time (Kuma keeps the first on full ties). */
static bool
beats(const struct km_resource *p, struct km_tag_rank r, const struct km_resource *best,
      struct km_tag_rank best_rank)
{
    int c;

    if (best == NULL)
        return true;
    c = km_tag_rank_cmp(r, best_rank);
    return c > 0 || (c == 0 && p->creation_us > best->creation_us);
}

const struct km_resource *
km_legacy_select_inbound(const char *type, const json_t *inbound_tags,
                         const struct km_resource *const *policies, size_t npolicies,
                         struct km_tag_rank *rank)
{
    const struct km_resource **cand = NULL;
    const struct km_resource *best = NULL;
    struct km_tag_rank best_rank = {0, 0};
    size_t n = legacy_candidates(type, policies, npolicies, &cand);

    for (size_t i = 0; i < n; i++) {
        struct km_tag_rank r;
        if (best_dest_rank(cand[i], inbound_tags, &r) && beats(cand[i], r, best, best_rank)) {
            best = cand[i];
            best_rank = r;
        }
    }
    free(cand);
    if (rank)
        *rank = best_rank;
    return best;
}

struct ranked {
    const struct km_resource *p;
    struct km_tag_rank rank;
};

static int
cmp_ranked_desc(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;
    int c = km_tag_rank_cmp(y->rank, x->rank);
    if (c != 0)
        return c;
    if (x->p->creation_us != y->p->creation_us)
        return x->p->creation_us > y->p->creation_us ? -1 : 1;
    return strcmp(x->p->name ? x->p->name : "", y->p->name ? y->p->name : "");
}

size_t
km_legacy_match_inbound(const char *type, const json_t *inbound_tags,
                        const struct km_resource *const *policies, size_t npolicies,
                        const struct km_resource ***out)
{
    const struct km_resource **cand = NULL;
    size_t n = legacy_candidates(type, policies, npolicies, &cand), k = 0;
    struct ranked *rk = km_xcalloc(n + 1, sizeof(*rk));

    for (size_t i = 0; i < n; i++) {
        struct km_tag_rank r;
        if (best_dest_rank(cand[i], inbound_tags, &r)) {
            rk[k].p = cand[i];
            rk[k++].rank = r;
        }
    }
    qsort(rk, k, sizeof(*rk), cmp_ranked_desc);
    *out = NULL;
    if (k > 0) {
        *out = km_xcalloc(k, sizeof(**out));
        for (size_t i = 0; i < k; i++)
            (*out)[i] = rk[i].p;
    }
    free(rk);
    free(cand);
    return k;
}

static bool
matches_any(const json_t *sel, const json_t *const *tag_sets, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (km_tags_match(sel, tag_sets[i]))
            return true;
    return false;
}

const struct km_resource *
km_legacy_select_connection(const char *type, const json_t *const *caller_tags, size_t ncaller,
                            const json_t *dest_tags, const struct km_resource *const *policies,
                            size_t npolicies, struct km_tag_rank *rank)
{
    const struct km_resource **cand = NULL;
    const struct km_resource *best = NULL;
    struct km_tag_rank best_rank = {0, 0};
    size_t n = legacy_candidates(type, policies, npolicies, &cand);

    for (size_t i = 0; i < n; i++) {
        const json_t *srcs = json_object_get(cand[i]->spec, "sources");
        const json_t *dests = json_object_get(cand[i]->spec, "destinations");
        struct km_tag_rank src_rank = {0, 0};
        bool src_ok = false;

        for (size_t s = 0; s < json_array_size(srcs); s++) {
            const json_t *m = selector_match(json_array_get(srcs, s));
            if (!matches_any(m, caller_tags, ncaller))
                continue;
            struct km_tag_rank r = km_tags_rank(m);
            if (!src_ok || km_tag_rank_cmp(r, src_rank) > 0)
                src_rank = r;
            src_ok = true;
        }
        if (!src_ok)
            continue;
        for (size_t d = 0; d < json_array_size(dests); d++) {
            const json_t *m = selector_match(json_array_get(dests, d));
            if (!km_tags_match(m, dest_tags))
                continue;
            struct km_tag_rank agg = rank_add(km_tags_rank(m), src_rank);
            if (beats(cand[i], agg, best, best_rank)) {
                best = cand[i];
                best_rank = agg;
            }
        }
    }
    free(cand);
    if (rank)
        *rank = best_rank;
    return best;
}

const struct km_resource *
km_legacy_select_dataplane(const char *type, const json_t *const *dp_tags, size_t ndp,
                           const struct km_resource *const *policies, size_t npolicies)
{
    const struct km_resource **cand = NULL;
    const struct km_resource *best = NULL;
    struct km_tag_rank best_rank = {0, 0}, zero = {0, 0};
    size_t n = legacy_candidates(type, policies, npolicies, &cand);

    for (size_t i = 0; i < n; i++) {
        const json_t *sels = json_object_get(cand[i]->spec, "selectors");
        if (json_array_size(sels) == 0) {
            if (beats(cand[i], zero, best, best_rank)) {
                best = cand[i];
                best_rank = zero;
            }
            continue;
        }
        for (size_t s = 0; s < json_array_size(sels); s++) {
            const json_t *m = selector_match(json_array_get(sels, s));
            if (json_object_size(m) != 0 && !matches_any(m, dp_tags, ndp))
                continue;
            struct km_tag_rank r = km_tags_rank(m);
            if (beats(cand[i], r, best, best_rank)) {
                best = cand[i];
                best_rank = r;
            }
        }
    }
    free(cand);
    return best;
}

/* ---- targetRef: ordering ---- */

int
km_pm_kind_order(const char *kind)
{
    static const char *const order[] = {"Mesh",
                                        "Dataplane",
                                        "MeshSubset",
                                        "MeshGateway",
                                        "MeshService",
                                        "MeshExternalService",
                                        "MeshMultiZoneService",
                                        "MeshServiceSubset",
                                        "MeshHTTPRoute"};
    if (kind == NULL)
        return 0;
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
        if (strcmp(kind, order[i]) == 0)
            return (int)i + 1;
    return 0;
}

/* Kind of a top-level targetRef; a missing targetRef means Mesh. */
static const char *
top_kind(const struct km_resource *p)
{
    const json_t *tr = json_object_get(p->spec, "targetRef");
    const char *k;

    if (tr == NULL || json_is_null(tr))
        return "Mesh";
    k = pm_str(tr, "kind");
    return k ? k : "";
}

static int
origin_order(const struct km_resource *p)
{
    const char *o = pm_label(p, "kuma.io/origin");
    if (o && strcmp(o, "global") == 0)
        return 1;
    if (o && strcmp(o, "zone") == 0)
        return 3;
    return o ? 0 : 2; /* unknown values compare lowest, as Kuma's map lookup gives 0 */
}

static int
role_order(const struct km_resource *p)
{
    static const char *const roles[] = {"system", "producer", "consumer", "workload-owner"};
    const char *r = pm_label(p, "kuma.io/policy-role");

    if (r == NULL)
        return 1;
    for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
        if (strcmp(r, roles[i]) == 0)
            return (int)i + 1;
    return 0;
}

static const char *
display_name(const struct km_resource *p)
{
    const char *d = pm_label(p, "kuma.io/display-name");
    return d ? d : (p->name ? p->name : "");
}

/* Kuma's CompareDataplaneKind. */
static int
dataplane_kind_cmp(const json_t *a, const json_t *b)
{
    bool a_name = pm_str_nonempty(a, "name") != NULL, b_name = pm_str_nonempty(b, "name") != NULL;
    bool a_labels = json_object_get(a, "labels") != NULL;
    bool b_labels = json_object_get(b, "labels") != NULL;
    bool a_sec = pm_str_nonempty(a, "sectionName") != NULL;
    bool b_sec = pm_str_nonempty(b, "sectionName") != NULL;

    if (a_name && b_labels)
        return 1;
    if (a_labels && b_name)
        return -1;
    if (a_sec != b_sec)
        return a_sec ? 1 : -1;
    return 0;
}

int
km_pm_policy_cmp(const struct km_resource *a, const struct km_resource *b)
{
    const char *ka = top_kind(a), *kb = top_kind(b);
    const json_t *ta = json_object_get(a->spec, "targetRef");
    const json_t *tb = json_object_get(b->spec, "targetRef");
    int c = km_pm_kind_order(ka) - km_pm_kind_order(kb);

    if (c != 0)
        return c;
    if (strcmp(ka, "Dataplane") == 0 && strcmp(kb, "Dataplane") == 0 &&
        (c = dataplane_kind_cmp(ta, tb)) != 0)
        return c;
    if ((c = origin_order(a) - origin_order(b)) != 0)
        return c;
    if (strcmp(ka, "MeshGateway") == 0) {
        c = (int)json_object_size(json_object_get(ta, "tags")) -
            (int)json_object_size(json_object_get(tb, "tags"));
        if (c != 0)
            return c;
    }
    if ((c = role_order(a) - role_order(b)) != 0)
        return c;
    return strcmp(display_name(b), display_name(a));
}

static int
cmp_policy_qsort(const void *a, const void *b)
{
    const struct km_resource *x = *(const struct km_resource *const *)a;
    const struct km_resource *y = *(const struct km_resource *const *)b;
    int c = km_pm_policy_cmp(x, y);
    /* qsort is not stable: full names as a last resort keep the order total */
    return c != 0 ? c : strcmp(x->name ? x->name : "", y->name ? y->name : "");
}

/* ---- targetRef: top-level selection ---- */

static bool
proxy_type_ok(const json_t *tr, const struct km_resource *dp)
{
    const json_t *pts = json_object_get(tr, "proxyTypes");
    bool gateway = json_object_get(json_object_get(dp->spec, "networking"), "gateway") != NULL;
    const char *want = gateway ? "Gateway" : "Sidecar";

    if (json_array_size(pts) == 0)
        return true;
    for (size_t i = 0; i < json_array_size(pts); i++) {
        const char *s = json_string_value(json_array_get(pts, i));
        if (s && strcmp(s, want) == 0)
            return true;
    }
    return false;
}

static bool
labels_match(const json_t *want, const json_t *have)
{
    const char *k;
    json_t *v;

    json_object_foreach((json_t *)want, k, v) {
        const char *w = json_string_value(v), *h = pm_str(have, k);
        if (w == NULL || h == NULL || strcmp(w, h) != 0)
            return false;
    }
    return true;
}

static bool
section_matches(const json_t *inbound, const char *section)
{
    char port[24];
    const char *name = pm_str_nonempty(inbound, "name");

    if (section == NULL)
        return true;
    if (name)
        return strcmp(name, section) == 0;
    snprintf(port, sizeof(port), "%" JSON_INTEGER_FORMAT,
             json_integer_value(json_object_get(inbound, "port")));
    return strcmp(port, section) == 0;
}

bool
km_pm_selects_inbound(const struct km_resource *policy, const struct km_resource *dataplane,
                      size_t inbound)
{
    const json_t *ins = pm_inbounds(dataplane);
    const json_t *in = json_array_get(ins, inbound);
    const json_t *tags, *tr;
    const char *kind, *name;

    if (policy == NULL || !json_is_object(in) || !json_is_object(policy->spec))
        return false;
    tags = json_object_get(in, "tags");
    tr = json_object_get(policy->spec, "targetRef");
    kind = top_kind(policy);
    name = pm_str_nonempty(tr, "name");
    if (strcmp(kind, "Mesh") == 0)
        return proxy_type_ok(tr, dataplane);
    if (strcmp(kind, "Dataplane") == 0) {
        const json_t *labels = json_object_get(tr, "labels");
        bool all = name == NULL && pm_str_nonempty(tr, "namespace") == NULL && labels == NULL;
        bool by_name = name && dataplane->name && strcmp(name, dataplane->name) == 0;
        bool by_labels = json_is_object(labels) && labels_match(labels, dataplane->labels);
        if (json_object_get(json_object_get(dataplane->spec, "networking"), "gateway"))
            return false;
        if (!all && !by_name && !by_labels)
            return false;
        return section_matches(in, pm_str_nonempty(tr, "sectionName"));
    }
    if (strcmp(kind, "MeshSubset") == 0)
        return proxy_type_ok(tr, dataplane) && km_tags_match(json_object_get(tr, "tags"), tags);
    if (strcmp(kind, "MeshService") == 0 || strcmp(kind, "MeshServiceSubset") == 0) {
        const char *svc = pm_str(tags, KM_TAG_SERVICE);
        if (name == NULL || svc == NULL || strcmp(name, svc) != 0)
            return false;
        return strcmp(kind, "MeshService") == 0 || km_tags_match(json_object_get(tr, "tags"), tags);
    }
    return false;
}

/* ---- merge ---- */

static bool
is_append_key(const char *k)
{
    return strncmp(k, "append", 6) == 0;
}

static void merge_into(json_t *target, const json_t *patch, int depth);

/* A copy of <v> for storing in a merged conf: objects are copied through merge_into, so their
 * nulls are dropped as well. */
static json_t *
merge_copy(const json_t *v, int depth)
{
    if (json_is_object(v)) {
        json_t *o = json_object();
        merge_into(o, v, depth + 1);
        return o;
    }
    return json_deep_copy(v);
}

static void
merge_into(json_t *target, const json_t *patch, int depth)
{
    const char *k;
    json_t *v;

    if (depth > MERGE_MAX_DEPTH)
        return;
    json_object_foreach((json_t *)patch, k, v) {
        json_t *cur = json_object_get(target, k);
        if (json_is_null(v))
            continue;
        if (json_is_object(v) && json_is_object(cur)) {
            merge_into(cur, v, depth + 1);
        } else if (json_is_array(v) && json_is_array(cur) && is_append_key(k)) {
            json_t *cp = json_deep_copy(v);
            json_array_extend(cur, cp);
            json_decref(cp);
        } else {
            json_t *cp = merge_copy(v, depth);
            if (cp)
                json_object_set_new(target, k, cp);
        }
    }
}

json_t *
km_pm_merge(const json_t *const *confs, size_t n)
{
    json_t *out = NULL;

    for (size_t i = 0; i < n; i++) {
        if (!json_is_object(confs[i]))
            continue;
        if (out == NULL)
            out = json_object();
        merge_into(out, confs[i], 0);
    }
    return out;
}

/* ---- targetRef: rules ---- */

static void
items_push(struct km_pm_item **v, size_t *n, size_t *cap, const struct km_pm_item *it)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        *v = km_xrealloc(*v, *cap * sizeof(**v));
    }
    (*v)[(*n)++] = *it;
}

static void
collect_section(const struct km_resource *p, const char *section, struct km_pm_item **v,
                size_t *n, size_t *cap)
{
    const json_t *arr = json_object_get(p->spec, section);

    for (size_t i = 0; i < json_array_size(arr); i++) {
        const json_t *e = json_array_get(arr, i);
        struct km_pm_item it = {.policy = p, .section = section, .index = i};
        if (!json_is_object(e))
            continue;
        it.target_ref = json_object_get(e, "targetRef");
        it.matches = json_object_get(e, "matches");
        it.conf = json_object_get(e, "default");
        if (strcmp(section, "rules") != 0 && !json_is_object(it.target_ref))
            continue;
        if (strcmp(section, "rules") == 0)
            it.target_ref = NULL;
        else
            it.matches = NULL;
        items_push(v, n, cap, &it);
    }
}

/* Stable insertion sort of to[] items by inner kind (Mesh < MeshService < ...). */
static void
sort_to_items(struct km_pm_item *v, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        struct km_pm_item x = v[i];
        int kx = km_pm_kind_order(pm_str(x.target_ref, "kind"));
        size_t j = i;
        while (j > 0 && km_pm_kind_order(pm_str(v[j - 1].target_ref, "kind")) > kx) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = x;
    }
}

static bool
to_ref_applies(const json_t *ref, const char *service)
{
    const char *kind = pm_str(ref, "kind");
    const char *name = pm_str(ref, "name");

    if (kind == NULL)
        return false;
    if (strcmp(kind, "Mesh") == 0)
        return true;
    if (strcmp(kind, "MeshService") == 0)
        return name && service && strcmp(name, service) == 0;
    return false;
}

static void
origins_add(const struct km_resource ***v, size_t *n, const struct km_resource *p)
{
    for (size_t i = 0; i < *n; i++)
        if ((*v)[i] == p)
            return;
    *v = km_xrealloc(*v, (*n + 1) * sizeof(**v));
    (*v)[(*n)++] = p;
}

json_t *
km_pm_to_conf(const struct km_pm_result *r, const char *service,
              const struct km_resource ***origins, size_t *norigins)
{
    const json_t **confs = km_xcalloc(r->nto + 1, sizeof(*confs));
    const struct km_resource **orig = NULL;
    size_t nc = 0, no = 0;
    json_t *out;

    for (size_t i = 0; i < r->nto; i++) {
        if (!to_ref_applies(r->to[i].target_ref, service))
            continue;
        confs[nc++] = r->to[i].conf;
        origins_add(&orig, &no, r->to[i].policy);
    }
    out = km_pm_merge(confs, nc);
    free(confs);
    if (origins && out) {
        *origins = orig;
        *norigins = no;
    } else {
        free(orig);
        if (origins) {
            *origins = NULL;
            *norigins = 0;
        }
    }
    return out;
}

static int
cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Outbound services of <dp> (tags kuma.io/service, or the legacy `service` field), sorted,
 * unique; borrowed strings in a malloc'ed array. */
static size_t
outbound_services(const struct km_resource *dp, const char ***out)
{
    const json_t *obs = json_object_get(json_object_get(dp->spec, "networking"), "outbound");
    size_t n = json_array_size(obs), k = 0;
    const char **v = km_xcalloc(n + 1, sizeof(*v));

    for (size_t i = 0; i < n; i++) {
        const json_t *o = json_array_get(obs, i);
        const char *s = pm_str_nonempty(json_object_get(o, "tags"), KM_TAG_SERVICE);
        if (s == NULL)
            s = pm_str_nonempty(o, "service");
        if (s)
            v[k++] = s;
    }
    qsort(v, k, sizeof(*v), cmp_cstr);
    size_t u = 0;
    for (size_t i = 0; i < k; i++)
        if (u == 0 || strcmp(v[u - 1], v[i]) != 0)
            v[u++] = v[i];
    *out = v;
    return u;
}

void
km_pm_match(const char *type, const struct km_resource *dataplane,
            const struct km_resource *const *policies, size_t npolicies,
            struct km_pm_result *out)
{
    const json_t *ins = pm_inbounds(dataplane);
    size_t nin = json_array_size(ins), cap = 0;
    const struct km_resource **sel;

    memset(out, 0, sizeof(*out));
    if (dataplane == NULL || !json_is_object(dataplane->spec))
        return;
    sel = km_xcalloc(npolicies + 1, sizeof(*sel));
    for (size_t i = 0; i < npolicies; i++) {
        const struct km_resource *p = policies[i];
        const char *effect = pm_label(p, "kuma.io/effect");
        if (!pm_is_type(p, type) || !json_is_object(p->spec))
            continue;
        if (effect && strcmp(effect, "shadow") == 0)
            continue; /* Kuma: shadow policies only show in inspect with ?shadow=true */
        for (size_t k = 0; k < nin; k++)
            if (km_pm_selects_inbound(p, dataplane, k)) {
                sel[out->npolicies++] = p;
                break;
            }
    }
    qsort(sel, out->npolicies, sizeof(*sel), cmp_policy_qsort);
    out->policies = sel;

    out->ninbounds = nin;
    out->inbounds = km_xcalloc(nin + 1, sizeof(*out->inbounds));
    for (size_t k = 0; k < nin; k++) {
        struct km_pm_inbound *in = &out->inbounds[k];
        size_t cf = 0, cr = 0;

        in->index = k;
        in->tags = json_object_get(json_array_get(ins, k), "tags");
        if (!json_is_object(in->tags))
            in->tags = NULL;
        in->policies = km_xcalloc(out->npolicies + 1, sizeof(*in->policies));
        for (size_t i = 0; i < out->npolicies; i++) {
            if (!km_pm_selects_inbound(sel[i], dataplane, k))
                continue;
            in->policies[in->npolicies++] = sel[i];
            collect_section(sel[i], "from", &in->from, &in->nfrom, &cf);
            collect_section(sel[i], "rules", &in->rules, &in->nrules, &cr);
        }
    }

    for (size_t i = 0; i < out->npolicies; i++)
        collect_section(sel[i], "to", &out->to, &out->nto, &cap);
    sort_to_items(out->to, out->nto);

    {
        const char **svcs = NULL;
        size_t ns = outbound_services(dataplane, &svcs);
        out->outbounds = km_xcalloc(ns + 1, sizeof(*out->outbounds));
        for (size_t i = 0; i < ns; i++) {
            struct km_pm_keyed *kd = &out->outbounds[out->noutbounds];
            kd->conf = km_pm_to_conf(out, svcs[i], &kd->origins, &kd->norigins);
            if (kd->conf == NULL)
                continue;
            kd->key = km_xstrdup(svcs[i]);
            out->noutbounds++;
        }
        free(svcs);
    }

    {
        const json_t **confs = km_xcalloc(out->npolicies + 1, sizeof(*confs));
        for (size_t i = 0; i < out->npolicies; i++)
            confs[i] = json_object_get(sel[i]->spec, "default");
        out->single = km_pm_merge(confs, out->npolicies);
        free(confs);
    }
}

void
km_pm_result_deinit(struct km_pm_result *r)
{
    if (r == NULL)
        return;
    for (size_t k = 0; k < r->ninbounds; k++) {
        free(r->inbounds[k].policies);
        free(r->inbounds[k].from);
        free(r->inbounds[k].rules);
    }
    free(r->inbounds);
    free(r->policies);
    free(r->to);
    km_pm_keyed_free(r->outbounds, r->noutbounds);
    json_decref(r->single);
    memset(r, 0, sizeof(*r));
}

/* ---- from rules ---- */

/* The tag set a from[] targetRef stands for (MeshService: kuma.io/service). Returns a new
 * object, or NULL for kinds that cannot be expressed with tags. */
static json_t *
ref_subset(const json_t *ref)
{
    const char *kind = pm_str(ref, "kind");
    const char *name = pm_str(ref, "name");
    const json_t *tags = json_object_get(ref, "tags");
    json_t *s;

    if (kind == NULL)
        return NULL;
    if (strcmp(kind, "Mesh") == 0)
        return json_object();
    if (strcmp(kind, "MeshSubset") == 0) {
        s = json_object();
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)tags, k, v)
            if (json_is_string(v))
                json_object_set(s, k, v);
        return s;
    }
    if ((strcmp(kind, "MeshService") == 0 || strcmp(kind, "MeshServiceSubset") == 0) && name) {
        s = json_object();
        if (strcmp(kind, "MeshServiceSubset") == 0) {
            const char *k;
            json_t *v;
            json_object_foreach((json_t *)tags, k, v)
                if (json_is_string(v))
                    json_object_set(s, k, v);
        }
        json_object_set_new(s, KM_TAG_SERVICE, json_string(name));
        return s;
    }
    return NULL;
}

bool
km_pm_from_ref_matches(const json_t *ref, const json_t *caller_tags)
{
    json_t *s = ref_subset(ref);
    const char *k;
    json_t *v;
    bool ok = s != NULL;

    json_object_foreach(s, k, v) {
        const char *have = pm_str(caller_tags, k);
        if (have == NULL || strcmp(have, json_string_value(v)) != 0) {
            ok = false;
            break;
        }
    }
    json_decref(s);
    return ok;
}

json_t *
km_pm_from_conf(const struct km_pm_inbound *in, const json_t *caller_tags)
{
    const json_t **confs = km_xcalloc(in->nfrom + 1, sizeof(*confs));
    size_t n = 0;
    json_t *out;

    for (size_t i = 0; i < in->nfrom; i++)
        if (km_pm_from_ref_matches(in->from[i].target_ref, caller_tags))
            confs[n++] = in->from[i].conf;
    out = km_pm_merge(confs, n);
    free(confs);
    return out;
}

char *
km_pm_ref_key(const json_t *ref)
{
    const char *kind = pm_str(ref, "kind");
    json_t *s = ref_subset(ref);
    const char **keys;
    size_t n = json_object_size(s), k = 0;
    struct km_sbuf b;
    const char *key;
    json_t *v;

    if (kind == NULL)
        kind = "";
    if (s == NULL) {
        const char *name = pm_str(ref, "name");
        return name ? km_xasprintf("%s:%s", kind, name) : km_xstrdup(kind);
    }
    km_sbuf_init(&b);
    km_sbuf_puts(&b, kind);
    keys = km_xcalloc(n + 1, sizeof(*keys));
    json_object_foreach(s, key, v)
        keys[k++] = key;
    qsort(keys, k, sizeof(*keys), cmp_cstr);
    if (strcmp(kind, "MeshService") == 0 || strcmp(kind, "MeshServiceSubset") == 0) {
        km_sbuf_printf(&b, ":%s", pm_str(s, KM_TAG_SERVICE));
        for (size_t i = 0; i < k; i++)
            if (strcmp(keys[i], KM_TAG_SERVICE) != 0)
                km_sbuf_printf(&b, ",%s=%s", keys[i], pm_str(s, keys[i]));
    } else {
        for (size_t i = 0; i < k; i++)
            km_sbuf_printf(&b, "%s%s=%s", i ? "," : ":", keys[i], pm_str(s, keys[i]));
    }
    free(keys);
    json_decref(s);
    return km_sbuf_take(&b);
}

/* Whether subset <a> (the targetRef of an entry) covers subset <b> (every caller in b is in
 * a): every tag of a is in b with the same value. */
static bool
subset_covers(const json_t *a, const json_t *b)
{
    const char *k;
    json_t *v;

    json_object_foreach((json_t *)a, k, v) {
        const char *h = pm_str(b, k);
        if (h == NULL || strcmp(h, json_string_value(v)) != 0)
            return false;
    }
    return true;
}

size_t
km_pm_from_keyed(const struct km_pm_inbound *in, struct km_pm_keyed **out)
{
    struct km_pm_keyed *v = km_xcalloc(in->nfrom + 1, sizeof(*v));
    json_t **subsets = km_xcalloc(in->nfrom + 1, sizeof(*subsets));
    const json_t **confs = km_xcalloc(in->nfrom + 1, sizeof(*confs));
    size_t n = 0;

    for (size_t i = 0; i < in->nfrom; i++)
        subsets[i] = ref_subset(in->from[i].target_ref);
    for (size_t i = 0; i < in->nfrom; i++) {
        char *key;
        bool seen = false;
        size_t nc = 0;

        if (subsets[i] == NULL)
            continue;
        key = km_pm_ref_key(in->from[i].target_ref);
        for (size_t j = 0; j < n && !seen; j++)
            seen = strcmp(v[j].key, key) == 0;
        if (seen) {
            free(key);
            continue;
        }
        struct km_pm_keyed *kd = &v[n++];
        kd->key = key;
        kd->target_ref = in->from[i].target_ref;
        for (size_t j = 0; j < in->nfrom; j++) {
            if (subsets[j] == NULL || !subset_covers(subsets[j], subsets[i]))
                continue;
            confs[nc++] = in->from[j].conf;
            origins_add(&kd->origins, &kd->norigins, in->from[j].policy);
        }
        kd->conf = km_pm_merge(confs, nc);
        if (kd->conf == NULL)
            kd->conf = json_object();
    }
    for (size_t i = 0; i < in->nfrom; i++)
        json_decref(subsets[i]);
    free(subsets);
    free(confs);
    if (n == 0) {
        free(v);
        v = NULL;
    }
    *out = v;
    return n;
}

void
km_pm_keyed_free(struct km_pm_keyed *k, size_t n)
{
    if (k == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        free(k[i].key);
        json_decref(k[i].conf);
        free(k[i].origins);
    }
    free(k);
}

/* ---- inspection ---- */

static json_t *
policy_meta(const struct km_resource *p)
{
    static const char *const keep[] = {"type",   "mesh",   "name", "creationTime",
                                       "modificationTime", "labels"};
    json_t *full = km_resource_encode(p), *out = json_object();

    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
        json_t *v = json_object_get(full, keep[i]);
        if (v)
            json_object_set(out, keep[i], v);
    }
    json_decref(full);
    return out;
}

/* Adds <p> under matched[type]. */
static void
matched_add(json_t *matched, const struct km_resource *p)
{
    json_t *arr = json_object_get(matched, p->type->name);

    if (arr == NULL) {
        arr = json_array();
        json_object_set_new(matched, p->type->name, arr);
    }
    json_array_append_new(arr, policy_meta(p));
}

static void
entry_add(json_t *items, const char *type, const char *name, const char *service,
          json_t *matched)
{
    size_t n = json_object_size(matched), k = 0;
    const char **keys;
    const char *key;
    json_t *v, *sorted;

    if (n == 0) {
        json_decref(matched);
        return;
    }
    /* types in name order, as Kuma's JSON map */
    keys = km_xcalloc(n, sizeof(*keys));
    json_object_foreach(matched, key, v)
        keys[k++] = key;
    qsort(keys, k, sizeof(*keys), cmp_cstr);
    sorted = json_object();
    for (size_t i = 0; i < k; i++)
        json_object_set(sorted, keys[i], json_object_get(matched, keys[i]));
    free(keys);
    json_decref(matched);
    matched = sorted;
    json_array_append_new(items, json_pack("{s:s, s:s, s:s, s:o}", "type", type, "name", name,
                                           "service", service ? service : "", "matchedPolicies",
                                           matched));
}

static int
cmp_entry_name(const void *a, const void *b)
{
    const json_t *x = *(const json_t *const *)a, *y = *(const json_t *const *)b;
    return strcmp(pm_str(x, "name"), pm_str(y, "name"));
}

/* Sorts the items of one attachment type (appended from <from> on) by name. */
static void
sort_entries(json_t *items, size_t from)
{
    size_t n = json_array_size(items) - from;
    json_t **v = km_xcalloc(n + 1, sizeof(*v));

    for (size_t i = 0; i < n; i++)
        v[i] = json_incref(json_array_get(items, from + i));
    qsort(v, n, sizeof(*v), cmp_entry_name);
    for (size_t i = 0; i < n; i++)
        json_array_set_new(items, from + i, v[i]);
    free(v);
}

json_t *
km_pm_inspect_dataplane(const struct km_resource *dataplane,
                        const struct km_resource *const *policies, size_t npolicies)
{
    static const char *const dp_types[] = {"ProxyTemplate", "TrafficTrace"};
    static const char *const in_all_types[] = {"FaultInjection", "RateLimit"};
    static const char *const out_types[] = {"Timeout", "TrafficLog", "TrafficRoute"};
    static const char *const svc_types[] = {"CircuitBreaker", "HealthCheck", "Retry"};
    const json_t *net = json_object_get(dataplane ? dataplane->spec : NULL, "networking");
    const json_t *ins = pm_inbounds(dataplane), *obs = json_object_get(net, "outbound");
    size_t nin = json_array_size(ins), nsets = 0, mark;
    const json_t **sets = km_xcalloc(nin + 2, sizeof(*sets));
    json_t *items = json_array(), *matched, *out;
    const char **svcs = NULL;
    size_t nsvcs = 0;
    struct km_pm_result mtp;

    for (size_t i = 0; i < nin; i++)
        sets[nsets++] = json_object_get(json_array_get(ins, i), "tags");
    if (json_object_get(json_object_get(net, "gateway"), "tags"))
        sets[nsets++] = json_object_get(json_object_get(net, "gateway"), "tags");

    matched = json_object();
    for (size_t t = 0; t < sizeof(dp_types) / sizeof(dp_types[0]); t++) {
        const struct km_resource *w =
            km_legacy_select_dataplane(dp_types[t], sets, nsets, policies, npolicies);
        if (w)
            matched_add(matched, w);
    }
    entry_add(items, "dataplane", "", "", matched);

    mark = json_array_size(items);
    km_pm_match("MeshTrafficPermission", dataplane, policies, npolicies, &mtp);
    for (size_t i = 0; i < nin; i++) {
        const json_t *in = json_array_get(ins, i), *tags = json_object_get(in, "tags");
        const char *ip = pm_str_nonempty(in, "address");
        json_int_t port = json_integer_value(json_object_get(in, "port"));
        json_int_t wport = json_integer_value(json_object_get(in, "servicePort"));
        const struct km_resource *w;
        char *name;

        if (!json_is_object(in))
            continue;
        if (ip == NULL)
            ip = pm_str_nonempty(net, "address");
        name = km_xasprintf("%s:%" JSON_INTEGER_FORMAT ":%" JSON_INTEGER_FORMAT, ip ? ip : "",
                            port, wport ? wport : port);
        matched = json_object();
        if ((w = km_legacy_select_inbound("TrafficPermission", tags, policies, npolicies, NULL)))
            matched_add(matched, w);
        for (size_t t = 0; t < sizeof(in_all_types) / sizeof(in_all_types[0]); t++) {
            const struct km_resource **all = NULL;
            size_t na = km_legacy_match_inbound(in_all_types[t], tags, policies, npolicies, &all);
            for (size_t k = 0; k < na; k++)
                matched_add(matched, all[k]);
            free(all);
        }
        if (i < mtp.ninbounds && mtp.inbounds[i].nfrom > 0)
            for (size_t k = 0; k < mtp.inbounds[i].npolicies; k++)
                if (json_array_size(json_object_get(mtp.inbounds[i].policies[k]->spec, "from")))
                    matched_add(matched, mtp.inbounds[i].policies[k]);
        entry_add(items, "inbound", name, pm_str(tags, KM_TAG_SERVICE), matched);
        free(name);
    }
    km_pm_result_deinit(&mtp);
    sort_entries(items, mark);

    mark = json_array_size(items);
    for (size_t i = 0; i < json_array_size(obs); i++) {
        const json_t *o = json_array_get(obs, i);
        const char *svc = pm_str_nonempty(json_object_get(o, "tags"), KM_TAG_SERVICE);
        const char *ip = pm_str_nonempty(o, "address");
        json_t *dest;
        char *name;

        if (svc == NULL)
            svc = pm_str_nonempty(o, "service");
        if (svc == NULL)
            continue;
        name = km_xasprintf("%s:%" JSON_INTEGER_FORMAT, ip ? ip : "127.0.0.1",
                            json_integer_value(json_object_get(o, "port")));
        dest = json_pack("{s:s}", KM_TAG_SERVICE, svc);
        matched = json_object();
        for (size_t t = 0; t < sizeof(out_types) / sizeof(out_types[0]); t++) {
            const struct km_resource *w = km_legacy_select_connection(
                out_types[t], sets, nsets, dest, policies, npolicies, NULL);
            if (w)
                matched_add(matched, w);
        }
        entry_add(items, "outbound", name, svc, matched);
        json_decref(dest);
        free(name);
    }
    sort_entries(items, mark);

    nsvcs = dataplane ? outbound_services(dataplane, &svcs) : 0;
    for (size_t i = 0; i < nsvcs; i++) {
        json_t *dest = json_pack("{s:s}", KM_TAG_SERVICE, svcs[i]);
        matched = json_object();
        for (size_t t = 0; t < sizeof(svc_types) / sizeof(svc_types[0]); t++) {
            const struct km_resource *w = km_legacy_select_connection(
                svc_types[t], sets, nsets, dest, policies, npolicies, NULL);
            if (w)
                matched_add(matched, w);
        }
        entry_add(items, "service", svcs[i], svcs[i], matched);
        json_decref(dest);
    }
    free(svcs);
    free(sets);
    out = json_pack("{s:s, s:I, s:o}", "kind", "SidecarDataplane", "total",
                    (json_int_t)json_array_size(items), "items", items);
    return out;
}
