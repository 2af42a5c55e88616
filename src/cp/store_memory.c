/* Memory store, the embedded default: one sorted array per resource type, guarded by a
 * read-write lock. Lookups are binary searches on (mesh, name); inserts shift the array,
 * which stays cheap for the tens of thousands of resources a single CP holds. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <km/cp/store.h>

struct mem_bucket {
    const struct km_rtype *type;
    struct km_resource **v; /* owned, sorted by (mesh, name) */
    size_t n, cap;
};

struct mem_store {
    pthread_rwlock_t lock;
    struct mem_bucket *buckets; /* owned, one per registry type */
    size_t nbuckets;
};

static struct mem_bucket *
bucket_of(struct mem_store *m, const struct km_rtype *t)
{
    for (size_t i = 0; i < m->nbuckets; i++)
        if (m->buckets[i].type == t)
            return &m->buckets[i];
    return NULL;
}

static int
key_cmp(const char *mesh_a, const char *name_a, const char *mesh_b, const char *name_b)
{
    int c = strcmp(mesh_a, mesh_b);
    return c ? c : strcmp(name_a, name_b);
}

/* Index of (mesh, name) or of the place to insert it; *found tells which. */
static size_t
bucket_find(const struct mem_bucket *b, const char *mesh, const char *name, bool *found)
{
    size_t lo = 0, hi = b->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = key_cmp(b->v[mid]->mesh, b->v[mid]->name, mesh, name);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static bool
mesh_exists_nolock(struct mem_store *m, const char *mesh)
{
    bool found;
    bucket_find(bucket_of(m, km_registry_mesh()), "", mesh, &found);
    return found;
}

static const char *
scope_mesh(const struct km_rtype *t, const char *mesh)
{
    return t->scope == KM_SCOPE_GLOBAL || !mesh ? "" : mesh;
}

static int
mem_create(struct km_store *s, struct km_resource *r)
{
    struct mem_store *m = s->impl;
    int rc = 0;
    pthread_rwlock_wrlock(&m->lock);
    struct mem_bucket *b = bucket_of(m, r->type);
    if (!b) {
        rc = KM_EINVAL;
        goto out;
    }
    if (r->type->scope == KM_SCOPE_MESH && !mesh_exists_nolock(m, r->mesh)) {
        rc = KM_ENOTFOUND;
        goto out;
    }
    bool found;
    size_t at = bucket_find(b, r->mesh, r->name, &found);
    if (found) {
        rc = KM_ECONFLICT;
        goto out;
    }
    int64_t now = km_now_us();
    r->version = 1;
    if (!r->creation_us)
        r->creation_us = now;
    r->modification_us = r->creation_us;
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 16;
        b->v = km_xrealloc(b->v, b->cap * sizeof(b->v[0]));
    }
    memmove(&b->v[at + 1], &b->v[at], (b->n - at) * sizeof(b->v[0]));
    b->v[at] = km_resource_dup(r);
    b->n++;
    km_store_emit(s, KM_STORE_EV_CREATE, r->type->name, r->mesh, r->name);
out:
    pthread_rwlock_unlock(&m->lock);
    return rc;
}

static int
mem_update(struct km_store *s, struct km_resource *r)
{
    struct mem_store *m = s->impl;
    int rc = 0;
    pthread_rwlock_wrlock(&m->lock);
    struct mem_bucket *b = bucket_of(m, r->type);
    bool found = false;
    size_t at = b ? bucket_find(b, r->mesh, r->name, &found) : 0;
    if (!found) {
        rc = KM_ENOTFOUND;
        goto out;
    }
    struct km_resource *cur = b->v[at];
    if (cur->version != r->version) {
        rc = KM_ECONFLICT;
        goto out;
    }
    r->version = cur->version + 1;
    r->creation_us = cur->creation_us;
    r->modification_us = km_now_us();
    if (r->modification_us <= cur->modification_us)
        r->modification_us = cur->modification_us + 1;
    b->v[at] = km_resource_dup(r);
    km_resource_free(cur);
    km_store_emit(s, KM_STORE_EV_UPDATE, r->type->name, r->mesh, r->name);
out:
    pthread_rwlock_unlock(&m->lock);
    return rc;
}

/* Removes every mesh-scoped resource of <mesh> (a Mesh owns them). */
static void
cascade_mesh_nolock(struct km_store *s, struct mem_store *m, const char *mesh)
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct mem_bucket *b = &m->buckets[i];
        if (b->type->scope != KM_SCOPE_MESH)
            continue;
        size_t w = 0;
        for (size_t j = 0; j < b->n; j++) {
            struct km_resource *r = b->v[j];
            if (strcmp(r->mesh, mesh) == 0) {
                km_store_emit(s, KM_STORE_EV_DELETE, r->type->name, r->mesh, r->name);
                km_resource_free(r);
            } else {
                b->v[w++] = r;
            }
        }
        b->n = w;
    }
}

static int
mem_remove(struct km_store *s, const struct km_rtype *t, const char *mesh, const char *name,
           int64_t version)
{
    struct mem_store *m = s->impl;
    int rc = 0;
    mesh = scope_mesh(t, mesh);
    pthread_rwlock_wrlock(&m->lock);
    struct mem_bucket *b = bucket_of(m, t);
    bool found = false;
    size_t at = b ? bucket_find(b, mesh, name, &found) : 0;
    if (!found) {
        rc = KM_ENOTFOUND;
        goto out;
    }
    struct km_resource *cur = b->v[at];
    if (version && cur->version != version) {
        rc = KM_ECONFLICT;
        goto out;
    }
    memmove(&b->v[at], &b->v[at + 1], (b->n - at - 1) * sizeof(b->v[0]));
    b->n--;
    if (t == km_registry_mesh())
        cascade_mesh_nolock(s, m, cur->name);
    km_store_emit(s, KM_STORE_EV_DELETE, t->name, cur->mesh, cur->name);
    km_resource_free(cur);
out:
    pthread_rwlock_unlock(&m->lock);
    return rc;
}

static int
mem_get(struct km_store *s, const struct km_rtype *t, const char *mesh, const char *name,
        struct km_resource **out)
{
    struct mem_store *m = s->impl;
    int rc = KM_ENOTFOUND;
    mesh = scope_mesh(t, mesh);
    pthread_rwlock_rdlock(&m->lock);
    struct mem_bucket *b = bucket_of(m, t);
    bool found = false;
    size_t at = b ? bucket_find(b, mesh, name, &found) : 0;
    if (found) {
        *out = km_resource_dup(b->v[at]);
        rc = 0;
    }
    pthread_rwlock_unlock(&m->lock);
    return rc;
}

static int
mem_list(struct km_store *s, const struct km_rtype *t, const char *mesh,
         struct km_resource_list *out)
{
    struct mem_store *m = s->impl;
    pthread_rwlock_rdlock(&m->lock);
    struct mem_bucket *b = bucket_of(m, t);
    for (size_t i = 0; b && i < b->n; i++) {
        if (mesh && t->scope == KM_SCOPE_MESH && strcmp(b->v[i]->mesh, mesh) != 0)
            continue;
        km_resource_list_push(out, km_resource_dup(b->v[i]));
    }
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

static int
mem_count(struct km_store *s, const struct km_rtype *t, int64_t *out)
{
    struct mem_store *m = s->impl;
    pthread_rwlock_rdlock(&m->lock);
    struct mem_bucket *b = bucket_of(m, t);
    *out = b ? (int64_t)b->n : 0;
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

static int
mem_ping(struct km_store *s)
{
    return 0;
}

static void
mem_destroy(struct km_store *s)
{
    struct mem_store *m = s->impl;
    for (size_t i = 0; i < m->nbuckets; i++) {
        for (size_t j = 0; j < m->buckets[i].n; j++)
            km_resource_free(m->buckets[i].v[j]);
        free(m->buckets[i].v);
    }
    free(m->buckets);
    pthread_rwlock_destroy(&m->lock);
    free(m);
    free(s);
}

static const struct km_store_ops mem_ops = {
    .name = "memory",
    .create = mem_create,
    .update = mem_update,
    .remove = mem_remove,
    .get = mem_get,
    .list = mem_list,
    .count = mem_count,
    .ping = mem_ping,
    .destroy = mem_destroy,
};

struct km_store *
km_store_memory_new(void)
{
    struct mem_store *m = km_xcalloc(1, sizeof(*m));
    pthread_rwlock_init(&m->lock, NULL);
    m->nbuckets = km_registry_count();
    m->buckets = km_xcalloc(m->nbuckets, sizeof(m->buckets[0]));
    for (size_t i = 0; i < m->nbuckets; i++)
        m->buckets[i].type = km_registry_at(i);
    struct km_store *s = km_xcalloc(1, sizeof(*s));
    s->ops = &mem_ops;
    s->impl = m;
    return s;
}
