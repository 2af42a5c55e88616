/* Store front: operation counters around the backend vtable, and resource lists. */
#include <stdlib.h>
#include <string.h>

#include <km/cp/store.h>

void
km_resource_list_init(struct km_resource_list *l)
{
    l->items = NULL;
    l->n = l->cap = 0;
}

void
km_resource_list_push(struct km_resource_list *l, struct km_resource *r)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->items = km_xrealloc(l->items, l->cap * sizeof(l->items[0]));
    }
    l->items[l->n++] = r;
}

void
km_resource_list_deinit(struct km_resource_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        km_resource_free(l->items[i]);
    KM_FREE(l->items);
    l->n = l->cap = 0;
}

static int
count_op(struct km_store *s, int op, int rc)
{
    atomic_fetch_add(&s->stats.ops[op], 1);
    if (rc != 0 && rc != KM_ENOTFOUND)
        atomic_fetch_add(&s->stats.errors[op], 1);
    return rc;
}

int
km_store_create(struct km_store *s, struct km_resource *r)
{
    return count_op(s, KM_STORE_OP_CREATE, s->ops->create(s, r));
}

int
km_store_update(struct km_store *s, struct km_resource *r)
{
    return count_op(s, KM_STORE_OP_UPDATE, s->ops->update(s, r));
}

int
km_store_remove(struct km_store *s, const struct km_rtype *t, const char *mesh, const char *name,
                int64_t version)
{
    return count_op(s, KM_STORE_OP_DELETE, s->ops->remove(s, t, mesh, name, version));
}

int
km_store_get(struct km_store *s, const struct km_rtype *t, const char *mesh, const char *name,
             struct km_resource **out)
{
    return count_op(s, KM_STORE_OP_GET, s->ops->get(s, t, mesh, name, out));
}

int
km_store_list(struct km_store *s, const struct km_rtype *t, const char *mesh,
              struct km_resource_list *out)
{
    return count_op(s, KM_STORE_OP_LIST, s->ops->list(s, t, mesh, out));
}

void
km_store_free(struct km_store *s)
{
    if (s)
        s->ops->destroy(s);
}

void
km_store_emit(struct km_store *s, enum km_store_event_kind kind, const char *type,
              const char *mesh, const char *name)
{
    if (s->on_event)
        s->on_event(s->event_ctx, kind, type, mesh, name);
}
