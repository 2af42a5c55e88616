/* `kumactl apply --var` templating: the subset of Mustache that Kuma's apply uses.
 * "{{ name }}" is replaced by the value of variable <name> with HTML escaping (& < > " '), as
 * Kuma's Mustache renderer does; "{{{ name }}}" and "{{& name }}" insert the raw value;
 * "{{! comment }}" disappears; "{{#name}}...{{/name}}" keeps its body when the variable is set
 * and not empty, "{{^name}}...{{/name}}" when it is not. A variable that is not given renders as
 * an empty string. Dotted names ("a.b") are looked up as given. */
#ifndef KM_CTL_TEMPLATE_H
#define KM_CTL_TEMPLATE_H

#include <stddef.h>

/* Renders <len> bytes of <tmpl> with <n> variables. Returns the result (caller frees) or NULL
 * with "line L: problem" in <err> (unclosed tag, unmatched section, partials). */
char *km_ctl_template_render(const char *tmpl, size_t len, char *const *keys,
                             char *const *vals, size_t n, char *err, size_t errlen);

#endif
