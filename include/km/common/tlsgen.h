/* Self-signed certificates for servers that need TLS before any CA exists (the API server's
 * HTTPS port when no certificate is configured). */
#ifndef KM_COMMON_TLSGEN_H
#define KM_COMMON_TLSGEN_H

#include <stddef.h>

/* Generates an ECDSA P-256 key and a self-signed server certificate valid for <days> days
 * with the DNS names in <dns> (<ndns> entries) and IP 127.0.0.1 as subject alternative
 * names. On success returns 0 and sets *cert_pem and *key_pem (caller frees); on failure
 * returns -1 with a message in <err>. */
int km_tls_selfsigned(const char *const *dns, size_t ndns, int days, char **cert_pem,
                      char **key_pem, char *err, size_t errlen);

#endif
