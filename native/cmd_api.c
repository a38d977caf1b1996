/* cmd_api.c - `essaim api MODEL [--listen HOST:PORT] [--relay URL]`: an OpenAI-compatible
 * HTTP API on the asker's machine, for the tools people already point at llama-server or
 * Ollama.
 *
 * Endpoints: GET /v1/models, GET /health, POST /v1/chat/completions (messages rendered with
 * the model's chat template) and POST /v1/completions (a raw prompt), both with
 * "stream": true as server-sent events. Request fields: temperature, top_p, top_k, min_p,
 * max_tokens (or max_completion_tokens), stop (a string or a list), seed,
 * frequency_penalty, presence_penalty, repeat_penalty. Unknown fields are ignored, as
 * OpenAI's clients send more than a local model uses.
 *
 * The model runs here, locally or over a swarm with --relay (the relay then sees only
 * activations, never the text): the API is the asker. One request at a time, in arrival
 * order (a model answers one conversation at a time anyway); the KV cache keeps the
 * longest common prefix between requests, so a chat that resends its history only
 * evaluates the new turn. Each connection is closed after its answer. A client that goes
 * away mid-stream stops the answer. Plain POSIX sockets: no TLS (bind to loopback, or put
 * a reverse proxy in front). */
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "chat.h"
#include "cli.h"
#include "gen.h"
#include "remote.h"

#define MAX_HEADER (16 * 1024)
#define MAX_BODY (8 * 1024 * 1024)
#define MAX_STOPS 8

static volatile sig_atomic_t api_stop;
static void on_signal(int sig) { (void)sig; api_stop = 1; }

static void usage(FILE *f) {
    fprintf(f,
            "usage: essaim api MODEL [options]\n"
            "An OpenAI-compatible HTTP API for MODEL (a .gguf, a fragment directory, or with --relay a\n"
            "model the swarm serves): POST /v1/chat/completions, POST /v1/completions (\"stream\": true\n"
            "for server-sent events), GET /v1/models, GET /health.\n"
            "  --listen HOST:PORT    address to serve (default 127.0.0.1:8081)\n"
            "  --template NAME       chat template instead of the model's (see essaim chat --help)\n"
            "  -n, --max-tokens N    answer length when a request gives none (default 512)\n"
            "Request fields override these defaults per request:\n" ESS_GEN_OPTIONS_HELP
            "  --swa                 apply the GGUF's attention.sliding_window\n"
            "example:\n"
            "  curl http://127.0.0.1:8081/v1/chat/completions -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'\n");
}

/* ---- HTTP ---- */

typedef struct {
    int fd;
    int broken; /* a write failed: the client went away */
} conn;

static void send_all(conn *c, const char *p, size_t n) {
    while (n && !c->broken) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            c->broken = 1;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void send_response(conn *c, int status, const char *reason, const char *type, const char *body) {
    char head[256];
    size_t n = strlen(body);
    int h = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", status,
                     reason, type, n);
    send_all(c, head, (size_t)h);
    send_all(c, body, n);
}

static void send_json(conn *c, int status, const char *reason, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    send_response(c, status, reason, "application/json", s ? s : "{}");
    free(s);
}

/* An OpenAI-style error body: {"error": {"message", "type"}}. */
static void send_error(conn *c, int status, const char *reason, const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *j = json_pack("{s:{s:s,s:s}}", "error", "message", msg, "type",
                          status >= 500 ? "server_error" : "invalid_request_error");
    send_json(c, status, reason, j);
    json_decref(j);
}

typedef struct {
    char method[8], path[256];
    char *body;
    size_t body_len;
} request;

/* Reads one request (headers, then Content-Length bytes of body). 0, or an HTTP status to
 * answer with (the message in err). */
static int read_request(int fd, request *rq, char *err, size_t errlen) {
    char *buf = malloc(MAX_HEADER + 1);
    if (!buf) return 500;
    size_t n = 0;
    char *end = NULL;
    while (!end) {
        if (n == MAX_HEADER) { free(buf); snprintf(err, errlen, "request headers over %d bytes", MAX_HEADER); return 431; }
        ssize_t r = recv(fd, buf + n, MAX_HEADER - n, 0);
        if (r <= 0) { free(buf); snprintf(err, errlen, "connection closed before the request was complete"); return -1; }
        n += (size_t)r;
        buf[n] = 0;
        end = strstr(buf, "\r\n\r\n");
    }
    size_t head = (size_t)(end - buf) + 4;
    if (sscanf(buf, "%7s %255s", rq->method, rq->path) != 2) { free(buf); snprintf(err, errlen, "malformed request line"); return 400; }
    long long clen = 0;
    for (char *h = strstr(buf, "\r\n"); h && h < end; h = strstr(h + 2, "\r\n")) {
        if (!strncasecmp(h + 2, "Content-Length:", 15)) clen = strtoll(h + 17, NULL, 10);
        const char *eol = strstr(h + 2, "\r\n"), *chunked = strstr(h + 2, "chunked");
        if (!strncasecmp(h + 2, "Transfer-Encoding:", 18) && chunked && chunked < eol) {
            free(buf);
            snprintf(err, errlen, "chunked request bodies are not supported: send Content-Length");
            return 411;
        }
    }
    if (clen < 0 || clen > MAX_BODY) { free(buf); snprintf(err, errlen, "request body of %lld bytes (at most %d)", clen, MAX_BODY); return 413; }
    rq->body = malloc((size_t)clen + 1);
    if (!rq->body) { free(buf); return 500; }
    size_t have = n - head < (size_t)clen ? n - head : (size_t)clen;
    memcpy(rq->body, buf + head, have);
    free(buf);
    while (have < (size_t)clen) {
        ssize_t r = recv(fd, rq->body + have, (size_t)clen - have, 0);
        if (r <= 0) { snprintf(err, errlen, "connection closed after %zu of %lld body bytes", have, clen); return -1; }
        have += (size_t)r;
    }
    rq->body[have] = 0;
    rq->body_len = have;
    return 0;
}

/* ---- the model ---- */

typedef struct {
    ess_gen g;
    ess_gen_opts defaults;
    ess_tokenizer *tok;
    int tmpl;
    int n_ctx;
    const char *model_id;
    const char *const *tmpl_stops;
    unsigned long long n_req;
} api;

/* One request's options: the server's defaults overridden by the body's fields. The stop
 * list points into the body (json strings) and the template's. */
static int request_opts(api *a, json_t *body, int chat, ess_gen_opts *o, const char **stops, int32_t *stop_ids,
                        char *err, size_t errlen) {
    *o = a->defaults;
    json_t *v;
#define NUM(key, dst)                                                             \
    if ((v = json_object_get(body, key)) && !json_is_null(v)) {                   \
        if (!json_is_number(v)) { snprintf(err, errlen, "'%s' must be a number", key); return -1; } \
        dst = json_number_value(v);                                               \
    }
    double temp = o->sp.temp, top_p = o->sp.top_p, min_p = o->sp.min_p, top_k = o->sp.top_k, rep = o->sp.penalty_repeat;
    double freq = o->sp.penalty_freq, pres = o->sp.penalty_present, maxt = o->max_tokens, seed = -1;
    NUM("temperature", temp) NUM("top_p", top_p) NUM("min_p", min_p) NUM("top_k", top_k) NUM("repeat_penalty", rep)
    NUM("frequency_penalty", freq) NUM("presence_penalty", pres) NUM("max_tokens", maxt) NUM("max_completion_tokens", maxt)
    NUM("seed", seed)
#undef NUM
    if (temp < 0 || temp > 100) { snprintf(err, errlen, "'temperature' %g is outside 0..100", temp); return -1; }
    if (top_p < 0 || top_p > 1) { snprintf(err, errlen, "'top_p' %g is outside 0..1", top_p); return -1; }
    if (min_p < 0 || min_p > 1) { snprintf(err, errlen, "'min_p' %g is outside 0..1", min_p); return -1; }
    if (maxt < 0 || maxt > 1e7) { snprintf(err, errlen, "'max_tokens' %g is not a token count", maxt); return -1; }
    o->sp.temp = (float)temp, o->sp.top_p = (float)top_p, o->sp.min_p = (float)min_p, o->sp.top_k = (int32_t)top_k;
    o->sp.penalty_repeat = (float)rep, o->sp.penalty_freq = (float)freq, o->sp.penalty_present = (float)pres;
    o->max_tokens = (int)maxt;
    o->sp.seed = seed >= 0 ? (uint64_t)seed : (uint64_t)time(NULL) ^ (a->n_req << 32);
    /* stop strings: the template's (chat only) and the request's */
    int n = 0, n_ids = 0;
    if (chat)
        for (int i = 0; a->tmpl_stops[i] && n < MAX_STOPS; i++) stops[n++] = a->tmpl_stops[i];
    if ((v = json_object_get(body, "stop")) && !json_is_null(v)) {
        if (json_is_string(v)) stops[n++] = json_string_value(v);
        else if (json_is_array(v) && json_array_size(v) <= 4) {
            size_t i;
            json_t *s;
            json_array_foreach(v, i, s) {
                if (!json_is_string(s) || !*json_string_value(s)) { snprintf(err, errlen, "'stop' entries must be non-empty strings"); return -1; }
                stops[n++] = json_string_value(s);
            }
        } else {
            snprintf(err, errlen, "'stop' must be a string or a list of at most 4 strings");
            return -1;
        }
    }
    stops[n] = NULL;
    for (int i = 0; i < n; i++) {
        int32_t id = ess_tok_find(a->tok, stops[i], strlen(stops[i]));
        if (id >= 0 && ess_tok_is_control(a->tok, id)) stop_ids[n_ids++] = id;
    }
    o->stops = stops;
    o->stop_ids = stop_ids;
    o->n_stop_ids = n_ids;
    o->trim_leading = chat;
    return 0;
}

/* The text to evaluate: the rendered conversation (chat) or the prompt. malloc'd. */
static char *request_text(api *a, json_t *body, int chat, char *err, size_t errlen) {
    if (!chat) {
        json_t *p = json_object_get(body, "prompt");
        if (json_is_array(p) && json_array_size(p) == 1) p = json_array_get(p, 0);
        if (!json_is_string(p)) { snprintf(err, errlen, "'prompt' must be a string"); return NULL; }
        if (!*json_string_value(p)) { snprintf(err, errlen, "'prompt' is empty"); return NULL; }
        return strdup(json_string_value(p));
    }
    json_t *msgs = json_object_get(body, "messages");
    size_t n = json_array_size(msgs);
    if (!json_is_array(msgs) || !n) { snprintf(err, errlen, "'messages' must be a non-empty list of {role, content}"); return NULL; }
    ess_chat_msg *m = calloc(n, sizeof *m);
    char **owned = calloc(n, sizeof *owned);
    char *text = NULL;
    if (!m || !owned) goto out;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(msgs, i), *role = json_object_get(e, "role"), *content = json_object_get(e, "content");
        if (!json_is_string(role)) { snprintf(err, errlen, "messages[%zu]: 'role' must be a string", i); goto out; }
        m[i].role = json_string_value(role);
        if (json_is_string(content)) m[i].content = json_string_value(content);
        else if (json_is_array(content)) { /* [{type: "text", text}], the parts joined */
            size_t len = 0, k;
            json_t *part;
            json_array_foreach(content, k, part) {
                json_t *t = json_object_get(part, "text");
                if (!json_is_string(t)) { snprintf(err, errlen, "messages[%zu].content[%zu]: only text parts are supported", i, k); goto out; }
                len += strlen(json_string_value(t));
            }
            if (!(owned[i] = malloc(len + 1))) goto out;
            owned[i][0] = 0;
            json_array_foreach(content, k, part) strcat(owned[i], json_string_value(json_object_get(part, "text")));
            m[i].content = owned[i];
        } else if (json_is_null(content)) m[i].content = "";
        else { snprintf(err, errlen, "messages[%zu]: 'content' must be a string or a list of text parts", i); goto out; }
    }
    int len = ess_chat_render(a->tmpl, m, (int)n, 1, NULL, 0);
    if (len < 0) { snprintf(err, errlen, "cannot render the messages with template %s", ess_chat_name(a->tmpl)); goto out; }
    if ((text = malloc((size_t)len + 1))) ess_chat_render(a->tmpl, m, (int)n, 1, text, (size_t)len + 1);
out:
    for (size_t i = 0; owned && i < n; i++) free(owned[i]);
    free(owned);
    free(m);
    return text;
}

/* A JSON string of text that a model produced: invalid UTF-8 (a random model, or a byte
 * token the tokenizer could not join) becomes U+FFFD, one per maximal invalid subpart as
 * Unicode and the WHATWG decoder (so browsers) do it, since JSON must hold Unicode. */
static json_t *json_text(const char *p, size_t n) {
    const unsigned char *u = (const unsigned char *)p;
    char *out = malloc(3 * n + 1);
    if (!out) return json_string("");
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        const unsigned c = u[i];
        size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        size_t k = 1; /* bytes of a valid prefix */
        for (; len && k < len && i + k < n; k++) {
            const unsigned lo = k == 1 && c == 0xE0 ? 0xA0 : k == 1 && c == 0xF0 ? 0x90 : 0x80;
            const unsigned hi = k == 1 && c == 0xED ? 0x9F : k == 1 && c == 0xF4 ? 0x8F : 0xBF;
            if (u[i + k] < lo || u[i + k] > hi) break;
        }
        if (len && k == len) {
            memcpy(out + o, p + i, len);
            o += len;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
        }
        i += len ? k : 1;
    }
    json_t *j = json_stringn(out, o);
    free(out);
    return j ? j : json_string("");
}

static const char *finish_reason(ess_gen_why why) {
    return why == ESS_GEN_LIMIT || why == ESS_GEN_CTX_FULL ? "length" : "stop";
}

/* data: {...}\n\n */
static void send_event(conn *c, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    if (!s) { c->broken = 1; return; }
    send_all(c, "data: ", 6);
    send_all(c, s, strlen(s));
    send_all(c, "\n\n", 2);
    free(s);
}

/* A chunk of a streamed answer in the shape of the endpoint. */
static json_t *chunk(int chat, const char *id, time_t created, const char *model, const char *text, size_t len,
                     const char *finish, int first) {
    json_t *choice = json_pack("{s:i}", "index", 0);
    if (chat) {
        json_t *delta = json_object();
        if (first) json_object_set_new(delta, "role", json_string("assistant"));
        if (len) json_object_set_new(delta, "content", json_text(text, len));
        json_object_set_new(choice, "delta", delta);
    } else {
        json_object_set_new(choice, "text", json_text(text, len));
    }
    json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
    return json_pack("{s:s,s:s,s:I,s:s,s:[o]}", "id", id, "object", chat ? "chat.completion.chunk" : "text_completion",
                     "created", (json_int_t)created, "model", model, "choices", choice);
}

static void serve_completion(api *a, conn *c, json_t *body, int chat) {
    char err[600];
    const char *stops[MAX_STOPS + 6];
    int32_t stop_ids[MAX_STOPS + 6];
    ess_gen_opts o;
    if (request_opts(a, body, chat, &o, stops, stop_ids, err, sizeof err)) { send_error(c, 400, "Bad Request", "%s", err); return; }
    char *text = request_text(a, body, chat, err, sizeof err);
    if (!text) { send_error(c, 400, "Bad Request", "%s", err); return; }
    int32_t *toks = NULL;
    int n = ess_gen_tokenize(&a->g, text, 1, &toks);
    free(text);
    if (n < 0) { send_error(c, 400, "Bad Request", "%s", a->g.err); return; }
    if (n >= a->n_ctx) {
        send_error(c, 400, "Bad Request", "the prompt is %d tokens, the context holds %d (essaim api --ctx)", n, a->n_ctx);
        free(toks);
        return;
    }
    if (ess_gen_set_opts(&a->g, &o) || ess_gen_prompt(&a->g, toks, n)) {
        send_error(c, 500, "Internal Server Error", "%s", a->g.err);
        free(toks);
        return;
    }
    free(toks);
    json_t *st = json_object_get(body, "stream");
    const int stream = json_is_true(st);
    char id[48];
    snprintf(id, sizeof id, "%s-%llu", chat ? "chatcmpl" : "cmpl", ++a->n_req);
    const time_t created = time(NULL);
    if (stream) {
        const char *head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
        send_all(c, head, strlen(head));
        json_t *j = chunk(chat, id, created, a->model_id, "", 0, NULL, 1);
        send_event(c, j);
        json_decref(j);
    }
    const char *t;
    size_t len;
    int r;
    do {
        if (c->broken || api_stop) break; /* the client left, or the server stops: end the answer here */
        r = ess_gen_next(&a->g, &t, &len);
        if (stream && len) {
            json_t *j = chunk(chat, id, created, a->model_id, t, len, NULL, 0);
            send_event(c, j);
            json_decref(j);
        }
    } while (r == ESS_GEN_MORE);
    if (r < 0) {
        if (stream) {
            json_t *j = json_pack("{s:{s:s,s:s}}", "error", "message", a->g.err, "type", "server_error");
            send_event(c, j);
            json_decref(j);
        } else send_error(c, 500, "Internal Server Error", "%s", a->g.err);
        return;
    }
    const char *fin = finish_reason(a->g.why);
    if (stream) {
        json_t *j = chunk(chat, id, created, a->model_id, "", 0, fin, 0);
        send_event(c, j);
        json_decref(j);
        send_all(c, "data: [DONE]\n\n", 14);
        return;
    }
    size_t alen;
    const char *answer = ess_gen_answer(&a->g, &alen);
    json_t *choice = json_pack("{s:i,s:s}", "index", 0, "finish_reason", fin);
    if (chat) json_object_set_new(choice, "message", json_pack("{s:s,s:o}", "role", "assistant", "content", json_text(answer, alen)));
    else json_object_set_new(choice, "text", json_text(answer, alen));
    json_t *res = json_pack("{s:s,s:s,s:I,s:s,s:[o],s:{s:i,s:i,s:i}}", "id", id, "object",
                            chat ? "chat.completion" : "text_completion", "created", (json_int_t)created, "model",
                            a->model_id, "choices", choice, "usage", "prompt_tokens", n, "completion_tokens",
                            a->g.last_answer, "total_tokens", n + a->g.last_answer);
    send_json(c, 200, "OK", res);
    json_decref(res);
}

static void serve(api *a, int fd) {
    conn c = {fd, 0};
    struct timeval tv = {30, 0}; /* a client that stalls mid-request does not hold the server */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    request rq = {0};
    char err[256];
    int st = read_request(fd, &rq, err, sizeof err);
    if (st < 0) return;
    if (st) { send_error(&c, st, st == 413 ? "Payload Too Large" : "Bad Request", "%s", err); return; }
    char *q = strchr(rq.path, '?');
    if (q) *q = 0;
    const int get = !strcmp(rq.method, "GET"), post = !strcmp(rq.method, "POST");
    if (!strcmp(rq.path, "/health") && get) send_response(&c, 200, "OK", "application/json", "{\"status\":\"ok\"}");
    else if (!strcmp(rq.path, "/v1/models") && get) {
        json_t *j = json_pack("{s:s,s:[{s:s,s:s,s:i,s:s}]}", "object", "list", "data", "id", a->model_id, "object", "model",
                              "created", 0, "owned_by", "essaim");
        send_json(&c, 200, "OK", j);
        json_decref(j);
    } else if (!strcmp(rq.path, "/v1/chat/completions") || !strcmp(rq.path, "/v1/completions")) {
        if (!post) send_error(&c, 405, "Method Not Allowed", "%s takes POST", rq.path);
        else {
            json_error_t je;
            json_t *body = json_loadb(rq.body, rq.body_len, 0, &je);
            if (!json_is_object(body)) send_error(&c, 400, "Bad Request", "the body is not a JSON object (%s at line %d)", je.text, je.line);
            else serve_completion(a, &c, body, !strcmp(rq.path, "/v1/chat/completions"));
            json_decref(body);
        }
    } else send_error(&c, 404, "Not Found", "no route %s %s (POST /v1/chat/completions, POST /v1/completions, GET /v1/models)", rq.method, rq.path);
    free(rq.body);
}

static int listen_on(const char *hostport) {
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || colon == hostport || (size_t)(colon - hostport) >= sizeof host) return -1;
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = 0;
    struct addrinfo hints = {0}, *ai;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if (getaddrinfo(host, colon + 1, &hints, &ai)) return -1;
    int fd = socket(ai->ai_family, ai->ai_socktype, 0), one = 1;
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd >= 0 && (bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 16))) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

int ess_cmd_api(int argc, char **argv) {
    const char *model = NULL, *tmpl_name = NULL, *listen_addr = "127.0.0.1:8081";
    long max_tokens = 512, threads = sysconf(_SC_NPROCESSORS_ONLN), ctx = 0, batch = 512, seed = -1;
    int kv_type = ESS_TYPE_F32, use_swa = 0;
    ess_remote_opts ro = {0};
    ro.who = "api";
    ess_sampler_params sp;
    ess_sampler_params_default(&sp);
    if (threads < 1) threads = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--listen")) { bad = v ? 0 : ess_opt_missing("api", a); listen_addr = v; i++; }
        else if (!strcmp(a, "--template")) { bad = v ? 0 : ess_opt_missing("api", a); tmpl_name = v; i++; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--max-tokens")) { bad = ess_opt_long("api", a, v, 0, 1 << 24, &max_tokens); i++; }
        else if (!strcmp(a, "--temp")) { bad = ess_opt_float("api", a, v, &sp.temp); i++; }
        else if (!strcmp(a, "--top-k")) { long x = 0; bad = ess_opt_long("api", a, v, 0, 1 << 24, &x); sp.top_k = (int32_t)x; i++; }
        else if (!strcmp(a, "--top-p")) { bad = ess_opt_float("api", a, v, &sp.top_p); i++; }
        else if (!strcmp(a, "--min-p")) { bad = ess_opt_float("api", a, v, &sp.min_p); i++; }
        else if (!strcmp(a, "--repeat-penalty")) { bad = ess_opt_float("api", a, v, &sp.penalty_repeat); i++; }
        else if (!strcmp(a, "--seed")) { bad = ess_opt_long("api", a, v, 0, INT32_MAX, &seed); i++; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { bad = ess_opt_long("api", a, v, 1, 256, &threads); i++; }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) { bad = ess_opt_long("api", a, v, 1, 1 << 22, &ctx); i++; }
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch")) { bad = ess_opt_long("api", a, v, 1, 1 << 16, &batch); i++; }
        else if (!strcmp(a, "--kv-type")) {
            if (v && !strcmp(v, "f32")) kv_type = ESS_TYPE_F32;
            else if (v && !strcmp(v, "f16")) kv_type = ESS_TYPE_F16;
            else { fprintf(stderr, "essaim api: --kv-type wants f32 or f16, got '%s'\n", v ? v : ""); return 2; }
            i++;
        }
        else if (!strcmp(a, "--swa")) use_swa = 1;
        else if (!strcmp(a, "--relay")) { bad = v ? 0 : ess_opt_missing("api", a); ro.relay = v; i++; }
        else if (!strcmp(a, "--insecure")) ro.insecure = 1;
        else if (!strcmp(a, "--ca")) { bad = v ? 0 : ess_opt_missing("api", a); ro.ca_file = v; i++; }
        else if ((a[0] == '-' && a[1]) || model) return ess_opt_unknown("api", a);
        else model = a;
        if (bad) return 2;
    }
    if (!model) { fprintf(stderr, "essaim api: no MODEL given\n"); usage(stderr); return 2; }
    int tmpl = -1;
    if (tmpl_name && (tmpl = ess_chat_from_name(tmpl_name)) < 0) {
        fprintf(stderr, "essaim api: unknown template '%s' (essaim chat --help lists them)\n", tmpl_name);
        return 2;
    }

    char err[512];
    ess_engine en;
    memset(&en, 0, sizeof en);
    ess_remote *rem = NULL;
    api a;
    memset(&a, 0, sizeof a);
    int rc = 1, lfd = -1;
    ess_driver_opts o = {0};
    o.kv_type = kv_type;
    o.use_swa = use_swa;
    o.max_batch = (int)batch;
    o.n_ctx = (int)ctx; /* 0: the model's, at most ESS_DEFAULT_MAX_CTX (source.h, remote.h) */
    if (ro.relay ? ess_remote_open(&rem, &ro, err, sizeof err) || ess_remote_engine_open(&en, rem, model, &o, err, sizeof err)
                 : ess_engine_open(&en, model, (int)threads, &o, err, sizeof err)) {
        fprintf(stderr, "essaim api: %s\n", err);
        goto out;
    }
    ess_err e = {0};
    if (!(a.tok = ess_tok_new(&en.src.g, &e))) { fprintf(stderr, "essaim api: %s: tokenizer: %s\n", model, e.msg); goto out; }
    if (tmpl < 0) {
        int known;
        tmpl = ess_gen_model_template(&en.src.g, &known);
        if (!known) fprintf(stderr, "essaim api: the model has no chat template essaim knows; using the plain template (--template NAME)\n");
    }
    a.tmpl = tmpl;
    a.tmpl_stops = ess_chat_stop_strings(tmpl);
    const char *slash = strrchr(model, '/');
    a.model_id = slash && slash[1] ? slash + 1 : model;

    ess_gen_backend b;
    ess_remote_backend rb;
    if (rem) ess_remote_gen_backend(&b, &rb, &en, rem);
    else ess_gen_backend_engine(&b, &en);
    a.defaults.sp = sp;
    a.defaults.max_tokens = (int)max_tokens;
    a.defaults.accept_prompt = 1;
    a.defaults.cancel = &api_stop;
    if (seed >= 0) a.defaults.sp.seed = (uint64_t)seed;
    if (ess_gen_init(&a.g, &b, a.tok, &a.defaults)) { fprintf(stderr, "essaim api: %s\n", a.g.err); goto out; }
    a.n_ctx = b.n_ctx;

    if ((lfd = listen_on(listen_addr)) < 0) {
        fprintf(stderr, "essaim api: cannot listen on %s (%s): give --listen HOST:PORT with a free port\n", listen_addr, strerror(errno));
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: accept() returns on Ctrl-C */
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    fprintf(stderr, "essaim api: %s%s%s, template %s, context %d tokens; serving http://%s/v1 (Ctrl-C stops)\n", model,
            rem ? " over " : "", rem ? ro.relay : "", ess_chat_name(tmpl), a.n_ctx, listen_addr);
    while (!api_stop) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            fprintf(stderr, "essaim api: accept: %s\n", strerror(errno));
            break;
        }
        serve(&a, fd);
        close(fd);
    }
    rc = 0;
out:
    if (lfd >= 0) close(lfd);
    ess_gen_free(&a.g);
    ess_tok_free(a.tok);
    ess_engine_close(&en);
    ess_remote_close(rem);
    return rc;
}
