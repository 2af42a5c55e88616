/* HTTP client of kumactl (libcurl); see include/km/ctl/client.h. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <km/common/util.h>
#include <km/common/yamljson.h>
#include <km/ctl/client.h>

struct km_ctl_client {
    CURL *curl;
    char *url; /* without a trailing '/' */
    struct curl_slist *headers;
    long timeout_ms;
    bool skip_verify;
    char *ca_cert_file;
    char *client_cert_file;
    char *client_key_file;
};

struct body_sink {
    struct km_sbuf b;
    size_t max;
    bool too_big;
};

static size_t
on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct body_sink *s = userdata;
    size_t n = size * nmemb;
    if (s->b.len + n > s->max) {
        s->too_big = true;
        return 0; /* makes curl stop with CURLE_WRITE_ERROR */
    }
    km_sbuf_add(&s->b, ptr, n);
    return n;
}

static void
global_init(void)
{
    static bool done;
    if (!done) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        done = true;
    }
}

static char *
opt_string(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s && *s ? km_xstrdup(s) : NULL;
}

struct km_ctl_client *
km_ctl_client_new(const json_t *cp, long timeout_ms, char *err, size_t errlen)
{
    const json_t *api = json_object_get(json_object_get(cp, "coordinates"), "apiServer");
    const char *url = json_string_value(json_object_get(api, "url"));
    if (!url || !*url) {
        snprintf(err, errlen, "control plane \"%s\" has no API server URL",
                 json_string_value(json_object_get(cp, "name")));
        return NULL;
    }
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) {
        snprintf(err, errlen, "API Server URL is invalid: \"%s\" must start with http:// or "
                 "https://", url);
        return NULL;
    }
    global_init();
    struct km_ctl_client *c = km_xcalloc(1, sizeof(*c));
    c->curl = curl_easy_init();
    if (!c->curl) {
        free(c);
        snprintf(err, errlen, "cannot initialise libcurl");
        return NULL;
    }
    c->url = km_xstrdup(url);
    size_t l = strlen(c->url);
    while (l > 0 && c->url[l - 1] == '/')
        c->url[--l] = '\0';
    c->timeout_ms = timeout_ms;
    c->skip_verify = json_is_true(json_object_get(api, "skipVerify"));
    c->ca_cert_file = opt_string(api, "caCertFile");
    c->client_cert_file = opt_string(api, "clientCertFile");
    c->client_key_file = opt_string(api, "clientKeyFile");
    const json_t *hs = json_object_get(api, "headers");
    size_t i;
    const json_t *h;
    json_array_foreach(hs, i, h) {
        const char *k = json_string_value(json_object_get(h, "key"));
        const char *v = json_string_value(json_object_get(h, "value"));
        if (!k || strpbrk(k, ":\r\n") || (v && strpbrk(v, "\r\n")))
            continue;
        char *line = km_xasprintf("%s: %s", k, v ? v : "");
        c->headers = curl_slist_append(c->headers, line);
        free(line);
    }
    const char *auth_type = json_string_value(json_object_get(api, "authType"));
    if (auth_type && strcmp(auth_type, "tokens") == 0) {
        const char *tok = json_string_value(json_object_get(json_object_get(api, "authConf"),
                                                            "token"));
        if (tok && !strpbrk(tok, "\r\n")) {
            char *line = km_xasprintf("Authorization: Bearer %s", tok);
            c->headers = curl_slist_append(c->headers, line);
            free(line);
        }
    }
    return c;
}

void
km_ctl_client_free(struct km_ctl_client *c)
{
    if (!c)
        return;
    curl_easy_cleanup(c->curl);
    curl_slist_free_all(c->headers);
    free(c->url);
    free(c->ca_cert_file);
    free(c->client_cert_file);
    free(c->client_key_file);
    free(c);
}

const char *
km_ctl_client_url(const struct km_ctl_client *c)
{
    return c->url;
}

void
km_ctl_response_deinit(struct km_ctl_response *r)
{
    free(r->body);
    memset(r, 0, sizeof(*r));
}

bool
km_ctl_client_do(struct km_ctl_client *c, const char *method, const char *path, const char *body,
                 struct km_ctl_response *resp, char *err, size_t errlen)
{
    memset(resp, 0, sizeof(*resp));
    CURL *h = c->curl;
    curl_easy_reset(h);
    char *url = km_xasprintf("%s%s", c->url, path);
    struct body_sink sink = {.max = KM_CTL_MAX_RESPONSE};
    km_sbuf_init(&sink.b);
    struct curl_slist *hdrs = NULL;
    for (const struct curl_slist *p = c->headers; p; p = p->next)
        hdrs = curl_slist_append(hdrs, p->data);
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    if (body)
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    char errbuf[CURL_ERROR_SIZE] = "";

    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "GET") == 0)
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_USERAGENT, "kumactl/" KM_KUMA_VERSION);
    if (c->timeout_ms > 0)
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    if (c->skip_verify) {
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (c->ca_cert_file)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_cert_file);
    if (c->client_cert_file)
        curl_easy_setopt(h, CURLOPT_SSLCERT, c->client_cert_file);
    if (c->client_key_file)
        curl_easy_setopt(h, CURLOPT_SSLKEY, c->client_key_file);

    CURLcode rc = curl_easy_perform(h);
    bool ok = false;
    if (sink.too_big) {
        snprintf(err, errlen, "response from %s is larger than %zu MiB", url,
                 KM_CTL_MAX_RESPONSE >> 20);
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        snprintf(err, errlen, "request to the Control Plane API Server at %s timed out "
                 "(--api-timeout): %s", c->url, errbuf[0] ? errbuf : curl_easy_strerror(rc));
    } else if (rc != CURLE_OK) {
        snprintf(err, errlen, "could not connect to the Control Plane API Server at %s: %s",
                 c->url, errbuf[0] ? errbuf : curl_easy_strerror(rc));
    } else {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
        resp->len = sink.b.len;
        resp->body = km_sbuf_take(&sink.b);
        ok = true;
    }
    if (!ok)
        km_sbuf_deinit(&sink.b);
    curl_slist_free_all(hdrs);
    free(url);
    return ok;
}

char *
km_ctl_fetch_url(const char *url, long timeout_ms, size_t max, size_t *len, char *err,
                 size_t errlen)
{
    global_init();
    CURL *h = curl_easy_init();
    if (!h) {
        snprintf(err, errlen, "cannot initialise libcurl");
        return NULL;
    }
    struct body_sink sink = {.max = max};
    km_sbuf_init(&sink.b);
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    if (sink.too_big) {
        snprintf(err, errlen, "error while reading provided file: %s is larger than %zu bytes",
                 url, max);
    } else if (rc != CURLE_OK) {
        snprintf(err, errlen, "error with GET http request: %s",
                 errbuf[0] ? errbuf : curl_easy_strerror(rc));
    } else if (status != 200) {
        snprintf(err, errlen, "error while retrieving URL: %s answered %ld", url, status);
    } else {
        *len = sink.b.len;
        return km_sbuf_take(&sink.b);
    }
    km_sbuf_deinit(&sink.b);
    return NULL;
}

char *
km_ctl_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    struct km_sbuf b;
    km_sbuf_init(&b);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~", *p)) {
            km_sbuf_add(&b, (const char *)p, 1);
        } else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            km_sbuf_add(&b, e, 3);
        }
    }
    return km_sbuf_take(&b);
}

char *
km_ctl_format_api_error(long status, const char *body, size_t len)
{
    char perr[128];
    json_t *j = body && len ? km_json_parse(body, len, perr, sizeof(perr)) : NULL;
    struct km_sbuf b;
    km_sbuf_init(&b);
    const char *title = json_string_value(json_object_get(j, "title"));
    const char *detail = json_string_value(json_object_get(j, "detail"));
    if (!detail || !*detail)
        detail = json_string_value(json_object_get(j, "details"));
    if (!json_is_object(j) || (!title && !detail)) {
        /* not Kuma's error shape: show what came back, bounded */
        size_t n = len > 1024 ? 1024 : len;
        km_sbuf_printf(&b, "(%ld): %.*s%s", status, (int)n, body ? body : "",
                       n < len ? "..." : "");
        while (b.len > 0 && (b.ptr[b.len - 1] == '\n' || b.ptr[b.len - 1] == '\r'))
            b.ptr[--b.len] = '\0';
        json_decref(j);
        return km_sbuf_take(&b);
    }
    km_sbuf_printf(&b, "%s (%s)", title ? title : "Error", detail ? detail : "");
    const json_t *ip = json_object_get(j, "invalid_parameters");
    const json_t *causes = json_object_get(j, "causes");
    size_t i;
    const json_t *e;
    if (json_array_size(ip) > 0) {
        json_array_foreach(ip, i, e) {
            const char *f = json_string_value(json_object_get(e, "field"));
            const char *r = json_string_value(json_object_get(e, "reason"));
            km_sbuf_printf(&b, "\n* %s: %s", f ? f : "", r ? r : "");
        }
    } else {
        json_array_foreach(causes, i, e) {
            const char *f = json_string_value(json_object_get(e, "field"));
            const char *m = json_string_value(json_object_get(e, "message"));
            km_sbuf_printf(&b, "\n* %s: %s", f ? f : "", m ? m : "");
        }
    }
    json_decref(j);
    return km_sbuf_take(&b);
}
