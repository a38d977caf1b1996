/* chat.c - chat templates rendered as llama.cpp's llm_chat_apply_template renders them,
 * template detection, stop strings and the streaming stop check. See chat.h. */
#include "chat.h"

#include <limits.h>
#include <stdint.h>
#include <string.h>

static const char *const chat_names[ESS_CHAT_COUNT] = {
    [ESS_CHAT_PLAIN] = "plain",
    [ESS_CHAT_LLAMA2] = "llama2",
    [ESS_CHAT_LLAMA2_SYS] = "llama2-sys",
    [ESS_CHAT_LLAMA2_SYS_BOS] = "llama2-sys-bos",
    [ESS_CHAT_LLAMA2_SYS_STRIP] = "llama2-sys-strip",
    [ESS_CHAT_MISTRAL_V1] = "mistral-v1",
    [ESS_CHAT_MISTRAL_V3] = "mistral-v3",
    [ESS_CHAT_MISTRAL_V3_TEKKEN] = "mistral-v3-tekken",
    [ESS_CHAT_MISTRAL_V7] = "mistral-v7",
    [ESS_CHAT_MISTRAL_V7_TEKKEN] = "mistral-v7-tekken",
    [ESS_CHAT_CHATML] = "chatml",
    [ESS_CHAT_ZEPHYR] = "zephyr",
    [ESS_CHAT_ZEPHYR_ENDOFTEXT] = "zephyr-endoftext",
    [ESS_CHAT_LLAMA3] = "llama3",
    [ESS_CHAT_GEMMA] = "gemma",
    [ESS_CHAT_ALPACA] = "alpaca",
};

const char *ess_chat_name(int tmpl) {
    return tmpl >= 0 && tmpl < ESS_CHAT_COUNT ? chat_names[tmpl] : NULL;
}

int ess_chat_from_name(const char *name) {
    if (name)
        for (int i = 0; i < ESS_CHAT_COUNT; i++)
            if (!strcmp(name, chat_names[i])) return i;
    return ESS_ENOTFOUND;
}

/* ---- detection: llama.cpp's llm_chat_detect_template, for the templates we render ---- */

int ess_chat_detect(const char *t) {
    if (!t || !*t) return ESS_ENOTFOUND;
    int by_name = ess_chat_from_name(t);
    if (by_name >= 0) return by_name;
#define HAS(s) (strstr(t, (s)) != NULL)
    if (HAS("<|im_start|>")) {
        /* phi-4 and SmolVLM borrow <|im_start|> but are not ChatML */
        if (HAS("<|im_sep|>") || HAS("<end_of_utterance>")) return ESS_ENOTFOUND;
        return ESS_CHAT_CHATML;
    }
    if (!strncmp(t, "mistral", 7) || HAS("[INST]")) {
        if (HAS("[SYSTEM_PROMPT]"))
            /* llama.cpp says v7 for both; the tekken ones (Mistral Small 3, Magistral)
             * write no space after the markers */
            return HAS("[SYSTEM_PROMPT] ") || HAS("[INST] ") ? ESS_CHAT_MISTRAL_V7 : ESS_CHAT_MISTRAL_V7_TEKKEN;
        if (HAS("' [INST] ' + system_message") || HAS("[AVAILABLE_TOOLS]")) {
            if (HAS(" [INST]")) return ESS_CHAT_MISTRAL_V1;
            if (HAS("\"[INST]\"")) return ESS_CHAT_MISTRAL_V3_TEKKEN;
            return ESS_CHAT_MISTRAL_V3;
        }
        if (HAS("content.strip()")) return ESS_CHAT_LLAMA2_SYS_STRIP;
        if (HAS("bos_token + '[INST]")) return ESS_CHAT_LLAMA2_SYS_BOS;
        if (HAS("<<SYS>>")) return ESS_CHAT_LLAMA2_SYS;
        return ESS_CHAT_LLAMA2;
    }
    if (HAS("<|assistant|>") && HAS("<|end|>")) return ESS_ENOTFOUND; /* phi-3 */
    if (HAS("[gMASK]") || HAS("<|begin_of_image|>")) return ESS_ENOTFOUND; /* GLM */
    if (HAS("<|user|>") && (HAS("<|assistant|>") || HAS("<|endoftext|>")))
        /* llama.cpp reads TinyLlama's template (eos_token, no literal end marker) as
         * GLM-Edge; its text ends turns with eos_token, "</s>" */
        return HAS("<|endoftext|>") ? ESS_CHAT_ZEPHYR_ENDOFTEXT : ESS_CHAT_ZEPHYR;
    if (HAS("<start_of_turn>")) return ESS_CHAT_GEMMA;
    if (HAS("<|start_header_id|>") && HAS("<|end_header_id|>")) return ESS_CHAT_LLAMA3;
    if (HAS("### Instruction:") && HAS("### Response:") && !HAS("<|EOT|>")) /* not deepseek-coder */
        return ESS_CHAT_ALPACA;
#undef HAS
    return ESS_ENOTFOUND;
}

/* ---- rendering ---- */

/* snprintf-style sink: counts every byte, stores what fits, keeps room for the NUL. */
typedef struct {
    char *out;
    size_t cap, len;
} sink;

static void put_n(sink *k, const char *s, size_t n) {
    if (k->len < k->cap) {
        size_t room = k->cap - 1 - k->len; /* cap >= 1 here */
        memcpy(k->out + k->len, s, n < room ? n : room);
    }
    k->len = n > SIZE_MAX - k->len ? SIZE_MAX : k->len + n;
}

static void put(sink *k, const char *s) { put_n(k, s, strlen(s)); }

/* C-locale isspace, as llama.cpp's trim sees bytes (UTF-8 bytes are never spaces). */
static int is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static void trimmed(const char *s, const char **b, size_t *n) {
    size_t len = strlen(s), i = 0;
    while (i < len && is_space(s[i])) i++;
    while (len > i && is_space(s[len - 1])) len--;
    *b = s + i;
    *n = len - i;
}

static void put_trim(sink *k, const char *s) {
    const char *b;
    size_t n;
    trimmed(s, &b, &n);
    put_n(k, b, n);
}

static int is(const char *role, const char *name) { return !strcmp(role, name); }

static void render_llama2(sink *k, int tmpl, const ess_chat_msg *m, int n) {
    const int sys = tmpl != ESS_CHAT_LLAMA2, bos = tmpl == ESS_CHAT_LLAMA2_SYS_BOS,
              strip = tmpl == ESS_CHAT_LLAMA2_SYS_STRIP;
    int inside = 1; /* the first [INST] is written up front; BOS comes from the tokenizer */
    put(k, "[INST] ");
    for (int i = 0; i < n; i++) {
        if (!inside) {
            inside = 1;
            put(k, bos ? "<s>[INST] " : "[INST] ");
        }
        void (*body)(sink *, const char *) = strip ? put_trim : put;
        if (is(m[i].role, "system")) {
            if (sys) {
                put(k, "<<SYS>>\n");
                body(k, m[i].content);
                put(k, "\n<</SYS>>\n\n");
            } else { /* no system slot: it goes first in the first turn */
                body(k, m[i].content);
                put(k, "\n");
            }
        } else if (is(m[i].role, "user")) {
            body(k, m[i].content);
            put(k, " [/INST]");
        } else {
            body(k, m[i].content);
            put(k, "</s>");
            inside = 0;
        }
    }
}

static void render_mistral(sink *k, int tmpl, const ess_chat_msg *m, int n) {
    const char *lead = tmpl == ESS_CHAT_MISTRAL_V1 ? " " : "";
    const char *trail = tmpl == ESS_CHAT_MISTRAL_V3_TEKKEN ? "" : " ";
    const int trim_reply = tmpl == ESS_CHAT_MISTRAL_V3;
    int inside = 0;
    for (int i = 0; i < n; i++) {
        if (!inside) {
            put(k, lead);
            put(k, "[INST]");
            put(k, trail);
            inside = 1;
        }
        if (is(m[i].role, "system")) {
            put(k, m[i].content);
            put(k, "\n\n");
        } else if (is(m[i].role, "user")) {
            put(k, m[i].content);
            put(k, lead);
            put(k, "[/INST]");
        } else {
            put(k, trail);
            if (trim_reply) put_trim(k, m[i].content);
            else put(k, m[i].content);
            put(k, "</s>");
            inside = 0;
        }
    }
}

static void render_mistral_v7(sink *k, int tmpl, const ess_chat_msg *m, int n) {
    const char *sp = tmpl == ESS_CHAT_MISTRAL_V7 ? " " : "";
    for (int i = 0; i < n; i++) {
        if (is(m[i].role, "system")) {
            put(k, "[SYSTEM_PROMPT]");
            put(k, sp);
            put(k, m[i].content);
            put(k, "[/SYSTEM_PROMPT]");
        } else if (is(m[i].role, "user")) {
            put(k, "[INST]");
            put(k, sp);
            put(k, m[i].content);
            put(k, "[/INST]");
        } else {
            put(k, sp);
            put(k, m[i].content);
            put(k, "</s>");
        }
    }
}

/* Gemma has no system turn: system messages (trimmed, concatenated) open the next turn
 * that is not the model's. pend is the first system message not yet written. */
static void render_gemma(sink *k, const ess_chat_msg *m, int n, int add_assistant) {
    int pend = -1;
    for (int i = 0; i < n; i++) {
        if (is(m[i].role, "system")) {
            if (pend < 0) pend = i;
            continue;
        }
        int model = is(m[i].role, "assistant");
        put(k, "<start_of_turn>");
        put(k, model ? "model" : m[i].role);
        put(k, "\n");
        if (pend >= 0 && !model) {
            size_t total = 0;
            for (int j = pend; j < i; j++) {
                const char *b;
                size_t len;
                if (!is(m[j].role, "system")) continue;
                trimmed(m[j].content, &b, &len);
                put_n(k, b, len);
                total += len;
            }
            if (total) put(k, "\n\n");
            pend = -1;
        }
        put_trim(k, m[i].content);
        put(k, "<end_of_turn>\n");
    }
    if (add_assistant) put(k, "<start_of_turn>model\n");
}

int ess_chat_render(int tmpl, const ess_chat_msg *m, int n, int add_assistant, char *out, size_t cap) {
    if (tmpl < 0 || tmpl >= ESS_CHAT_COUNT || n < 0 || (n > 0 && !m) || (cap > 0 && !out))
        return ESS_EINVAL;
    for (int i = 0; i < n; i++)
        if (!m[i].role || !m[i].content) return ESS_EINVAL;
    sink k = {out, cap, 0};
    switch ((ess_chat_tmpl)tmpl) {
    case ESS_CHAT_CHATML:
        for (int i = 0; i < n; i++) {
            put(&k, "<|im_start|>");
            put(&k, m[i].role);
            put(&k, "\n");
            put(&k, m[i].content);
            put(&k, "<|im_end|>\n");
        }
        if (add_assistant) put(&k, "<|im_start|>assistant\n");
        break;
    case ESS_CHAT_LLAMA2:
    case ESS_CHAT_LLAMA2_SYS:
    case ESS_CHAT_LLAMA2_SYS_BOS:
    case ESS_CHAT_LLAMA2_SYS_STRIP:
        render_llama2(&k, tmpl, m, n);
        break;
    case ESS_CHAT_MISTRAL_V1:
    case ESS_CHAT_MISTRAL_V3:
    case ESS_CHAT_MISTRAL_V3_TEKKEN:
        render_mistral(&k, tmpl, m, n);
        break;
    case ESS_CHAT_MISTRAL_V7:
    case ESS_CHAT_MISTRAL_V7_TEKKEN:
        render_mistral_v7(&k, tmpl, m, n);
        break;
    case ESS_CHAT_ZEPHYR:
    case ESS_CHAT_ZEPHYR_ENDOFTEXT:
        for (int i = 0; i < n; i++) {
            put(&k, "<|");
            put(&k, m[i].role);
            put(&k, "|>\n");
            put(&k, m[i].content);
            put(&k, tmpl == ESS_CHAT_ZEPHYR ? "</s>\n" : "<|endoftext|>\n");
        }
        if (add_assistant) put(&k, "<|assistant|>\n");
        break;
    case ESS_CHAT_LLAMA3:
        for (int i = 0; i < n; i++) {
            put(&k, "<|start_header_id|>");
            put(&k, m[i].role);
            put(&k, "<|end_header_id|>\n\n");
            put_trim(&k, m[i].content);
            put(&k, "<|eot_id|>");
        }
        if (add_assistant) put(&k, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case ESS_CHAT_GEMMA:
        render_gemma(&k, m, n, add_assistant);
        break;
    case ESS_CHAT_ALPACA:
        for (int i = 0; i < n; i++) {
            if (is(m[i].role, "system")) {
                put(&k, m[i].content);
            } else if (is(m[i].role, "user")) {
                put(&k, "### Instruction:\n");
                put(&k, m[i].content);
            } else {
                put(&k, "### Response:\n");
                put(&k, m[i].content);
            }
            put(&k, "\n\n");
        }
        if (add_assistant) put(&k, "### Response:\n");
        break;
    case ESS_CHAT_PLAIN:
        for (int i = 0; i < n; i++) {
            if (is(m[i].role, "user")) put(&k, "User: ");
            else if (!is(m[i].role, "system")) put(&k, "Assistant: ");
            put(&k, m[i].content);
            put(&k, "\n");
        }
        if (add_assistant) put(&k, "Assistant:");
        break;
    case ESS_CHAT_COUNT:
        return ESS_EINVAL;
    }
    if (cap > 0) out[k.len < cap ? k.len : cap - 1] = '\0';
    return k.len > INT_MAX ? ESS_ERANGE : (int)k.len;
}

/* ---- stop strings ---- */

static const char *const stop_plain[] = {"\nUser:", NULL};
static const char *const stop_inst[] = {"</s>", "[INST]", NULL};
static const char *const stop_chatml[] = {"<|im_end|>", NULL};
static const char *const stop_zephyr[] = {"</s>", "<|user|>", NULL};
static const char *const stop_zephyr_eot[] = {"<|endoftext|>", "<|user|>", NULL};
static const char *const stop_llama3[] = {"<|eot_id|>", NULL};
static const char *const stop_gemma[] = {"<end_of_turn>", NULL};
static const char *const stop_alpaca[] = {"### Instruction:", "</s>", NULL};

const char *const *ess_chat_stop_strings(int tmpl) {
    switch (tmpl) {
    case ESS_CHAT_PLAIN: return stop_plain;
    case ESS_CHAT_LLAMA2:
    case ESS_CHAT_LLAMA2_SYS:
    case ESS_CHAT_LLAMA2_SYS_BOS:
    case ESS_CHAT_LLAMA2_SYS_STRIP:
    case ESS_CHAT_MISTRAL_V1:
    case ESS_CHAT_MISTRAL_V3:
    case ESS_CHAT_MISTRAL_V3_TEKKEN:
    case ESS_CHAT_MISTRAL_V7:
    case ESS_CHAT_MISTRAL_V7_TEKKEN: return stop_inst;
    case ESS_CHAT_CHATML: return stop_chatml;
    case ESS_CHAT_ZEPHYR: return stop_zephyr;
    case ESS_CHAT_ZEPHYR_ENDOFTEXT: return stop_zephyr_eot;
    case ESS_CHAT_LLAMA3: return stop_llama3;
    case ESS_CHAT_GEMMA: return stop_gemma;
    case ESS_CHAT_ALPACA: return stop_alpaca;
    default: return NULL;
    }
}

/* First occurrence of s (len sn >= 1) in t[from..n), or n. */
static size_t find(const char *t, size_t n, size_t from, const char *s, size_t sn) {
    if (sn > n) return n;
    for (size_t i = from; i + sn <= n; i++)
        if (t[i] == s[0] && !memcmp(t + i, s, sn)) return i;
    return n;
}

size_t ess_chat_stop_scan(const char *text, size_t n, size_t from, const char *const *stops, int *stopped) {
    int dummy;
    if (!stopped) stopped = &dummy;
    *stopped = 0;
    if (from > n) from = n;
    if (!text) return 0;
    size_t first = n;
    for (const char *const *s = stops; s && *s; s++) {
        size_t sn = strlen(*s);
        if (!sn) continue;
        size_t at = find(text, n, from, *s, sn);
        if (at < first) first = at;
    }
    if (first < n) {
        *stopped = 1;
        return first;
    }
    size_t safe = n;
    /* a tail that may still grow into a stop string */
    for (const char *const *s = stops; s && *s; s++) {
        size_t sn = strlen(*s), k = sn ? sn - 1 : 0;
        if (k > n - from) k = n - from;
        for (; k > 0; k--)
            if (!memcmp(text + n - k, *s, k)) {
                if (n - k < safe) safe = n - k;
                break;
            }
    }
    /* a UTF-8 sequence cut by the token boundary */
    for (size_t i = n, back = 0; i > 0 && back < 4; i--, back++) {
        unsigned char c = (unsigned char)text[i - 1];
        if ((c & 0xC0) == 0x80) continue; /* continuation byte */
        size_t need = c >= 0xF0 && c < 0xF8 ? 4 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xC0 && c < 0xE0 ? 2 : 1;
        if (i - 1 + need > n && i - 1 < safe) safe = i - 1;
        break;
    }
    return safe < from ? from : safe;
}
