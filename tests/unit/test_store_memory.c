/* Unit tests for the memory store: CRUD, optimistic concurrency, cascade, events. */
#include <jansson.h>
#include <stdlib.h>

#include <km/cp/store.h>

#include "test.h"

struct ev_log {
    int n[3];
    char last[256];
};

static void
record(void *ctx, enum km_store_event_kind kind, const char *type, const char *mesh,
       const char *name)
{
    struct ev_log *l = ctx;
    l->n[kind]++;
    snprintf(l->last, sizeof(l->last), "%d %s %s/%s", (int)kind, type, mesh, name);
}

static struct km_resource *
dp(const char *mesh, const char *name)
{
    struct km_resource *r = km_resource_new(km_registry_find("Dataplane"), mesh, name);
    json_decref(r->spec);
    r->spec = json_pack("{s:{s:s}}", "networking", "address", "10.0.0.1");
    return r;
}

static struct km_store *
store_with_mesh(const char *mesh, struct ev_log *log)
{
    struct km_store *s = km_store_memory_new();
    s->on_event = record;
    s->event_ctx = log;
    struct km_resource *m = km_resource_new(km_registry_mesh(), "", mesh);
    ASSERT_INT_EQ(km_store_create(s, m), 0);
    km_resource_free(m);
    return s;
}

KM_TEST(memory_create_get_sets_version_and_times)
{
    struct ev_log log = {{0}, ""};
    struct km_store *s = store_with_mesh("default", &log);
    struct km_resource *r = dp("default", "dp-1");
    ASSERT_INT_EQ(km_store_create(s, r), 0);
    ASSERT_INT_EQ(r->version, 1);
    ASSERT(r->creation_us > 0);
    struct km_resource *got = NULL;
    ASSERT_INT_EQ(km_store_get(s, r->type, "default", "dp-1", &got), 0);
    ASSERT_INT_EQ(got->version, 1);
    ASSERT_STR_EQ(json_string_value(json_object_get(json_object_get(got->spec, "networking"),
                                                    "address")),
                  "10.0.0.1");
    ASSERT_INT_EQ(got->creation_us, r->creation_us);
    ASSERT_INT_EQ(log.n[KM_STORE_EV_CREATE], 2);
    ASSERT_STR_EQ(log.last, "0 Dataplane default/dp-1");
    ASSERT_INT_EQ(km_store_create(s, r), KM_ECONFLICT);
    km_resource_free(got);
    km_resource_free(r);
    km_store_free(s);
}

KM_TEST(memory_requires_existing_mesh)
{
    struct ev_log log = {{0}, ""};
    struct km_store *s = store_with_mesh("default", &log);
    struct km_resource *r = dp("other", "dp-1");
    ASSERT_INT_EQ(km_store_create(s, r), KM_ENOTFOUND);
    km_resource_free(r);
    km_store_free(s);
}

KM_TEST(memory_update_refuses_stale_version)
{
    struct ev_log log = {{0}, ""};
    struct km_store *s = store_with_mesh("default", &log);
    struct km_resource *r = dp("default", "dp-1");
    ASSERT_INT_EQ(km_store_create(s, r), 0);
    struct km_resource *a = NULL, *b = NULL;
    ASSERT_INT_EQ(km_store_get(s, r->type, "default", "dp-1", &a), 0);
    ASSERT_INT_EQ(km_store_get(s, r->type, "default", "dp-1", &b), 0);
    json_object_set_new(a->spec, "x", json_integer(1));
    ASSERT_INT_EQ(km_store_update(s, a), 0);
    ASSERT_INT_EQ(a->version, 2);
    ASSERT(a->modification_us > a->creation_us);
    json_object_set_new(b->spec, "x", json_integer(2));
    ASSERT_INT_EQ(km_store_update(s, b), KM_ECONFLICT); /* b still has version 1 */
    struct km_resource *now = NULL;
    ASSERT_INT_EQ(km_store_get(s, r->type, "default", "dp-1", &now), 0);
    ASSERT_INT_EQ(json_integer_value(json_object_get(now->spec, "x")), 1);
    ASSERT_INT_EQ(log.n[KM_STORE_EV_UPDATE], 1);
    ASSERT_INT_EQ(km_store_remove(s, r->type, "default", "dp-1", 1), KM_ECONFLICT);
    ASSERT_INT_EQ(km_store_remove(s, r->type, "default", "dp-1", 2), 0);
    km_resource_free(now);
    km_resource_free(a);
    km_resource_free(b);
    km_resource_free(r);
    km_store_free(s);
}

KM_TEST(memory_list_sorted_and_filtered_by_mesh)
{
    struct ev_log log = {{0}, ""};
    struct km_store *s = store_with_mesh("m1", &log);
    struct km_resource *m2 = km_resource_new(km_registry_mesh(), "", "m2");
    ASSERT_INT_EQ(km_store_create(s, m2), 0);
    const char *names[] = {"c", "a", "b"};
    for (size_t i = 0; i < 3; i++) {
        struct km_resource *r = dp(i == 2 ? "m2" : "m1", names[i]);
        ASSERT_INT_EQ(km_store_create(s, r), 0);
        km_resource_free(r);
    }
    struct km_resource_list l;
    km_resource_list_init(&l);
    ASSERT_INT_EQ(km_store_list(s, km_registry_find("Dataplane"), "m1", &l), 0);
    ASSERT_INT_EQ(l.n, 2);
    ASSERT_STR_EQ(l.items[0]->name, "a");
    ASSERT_STR_EQ(l.items[1]->name, "c");
    km_resource_list_deinit(&l);
    km_resource_list_init(&l);
    ASSERT_INT_EQ(km_store_list(s, km_registry_find("Dataplane"), NULL, &l), 0);
    ASSERT_INT_EQ(l.n, 3);
    ASSERT_STR_EQ(l.items[2]->mesh, "m2");
    km_resource_list_deinit(&l);
    km_resource_free(m2);
    km_store_free(s);
}

KM_TEST(memory_deleting_mesh_deletes_what_it_owns)
{
    struct ev_log log = {{0}, ""};
    struct km_store *s = store_with_mesh("m1", &log);
    struct km_resource *m2 = km_resource_new(km_registry_mesh(), "", "m2");
    ASSERT_INT_EQ(km_store_create(s, m2), 0);
    struct km_resource *a = dp("m1", "a"), *b = dp("m2", "b");
    ASSERT_INT_EQ(km_store_create(s, a), 0);
    ASSERT_INT_EQ(km_store_create(s, b), 0);
    ASSERT_INT_EQ(km_store_remove(s, km_registry_mesh(), "", "m1", 0), 0);
    struct km_resource *got = NULL;
    ASSERT_INT_EQ(km_store_get(s, a->type, "m1", "a", &got), KM_ENOTFOUND);
    ASSERT_INT_EQ(km_store_get(s, b->type, "m2", "b", &got), 0);
    km_resource_free(got);
    ASSERT_INT_EQ(log.n[KM_STORE_EV_DELETE], 2); /* the Dataplane, then the Mesh */
    int64_t n = -1;
    ASSERT_INT_EQ(s->ops->count(s, a->type, &n), 0);
    ASSERT_INT_EQ(n, 1);
    ASSERT_INT_EQ(atomic_load(&s->stats.ops[KM_STORE_OP_DELETE]), 1);
    km_resource_free(a);
    km_resource_free(b);
    km_resource_free(m2);
    km_store_free(s);
}
