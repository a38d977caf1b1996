/* tokenizer.c - SPM and byte-level BPE tokenizers from GGUF metadata (see tokenizer.h).
 *
 * The algorithms follow llama.cpp's llama-vocab.cpp step for step so that ids agree
 * exactly; where we diverge (unmappable bytes in BPE pieces, see docs/tokenizers.md) the
 * header and the docs say so. */
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>

#include "unicode.h"

typedef struct { const char *p; uint32_t n; } tok_str;
/* The full hash sits beside the id so that a probe rarely has to touch the token text
 * (two cache misses away): that keeps loading a 128k vocabulary with 280k merges fast. */
typedef struct { uint32_t h; int32_t id; } tok_slot;
/* One slot per merge, key and rank together: one cache miss per probe. rank -1: empty. */
typedef struct { int32_t left, right, rank; } merge_slot;

struct ess_tokenizer {
    ess_tok_type type;
    ess_tok_pre pre;
    int n_vocab;
    tok_str *text;         /* (n_vocab) borrowed from the GGUF buffer */
    float *score;          /* (n_vocab) */
    uint16_t *attr;        /* (n_vocab) ESS_TOK_ATTR_* */
    uint8_t *eog;          /* (n_vocab) 1 when the token ends generation */
    tok_slot *tok_hash;    /* (tok_mask + 1) open addressing text -> id, id -1 empty */
    uint32_t tok_mask;
    merge_slot *merges;    /* (merge_mask + 1) open addressing (left, right) -> rank */
    uint32_t merge_mask;
    int32_t *special;      /* (n_special) tokens cut out of text first, longest text first */
    int n_special;
    int32_t byte_tok[256]; /* SPM: <0xNN> token of a byte; BPE: token of its mapped char */
    uint16_t byte_cp[256]; /* BPE: bytes_to_unicode */
    int16_t cp_byte[512];  /* BPE: its inverse (code points < 512), -1 when unmapped */
    int32_t bos, eos, eot, eom, unk, pad, sep;
    int add_bos, add_eos, add_space_prefix, remove_extra_ws, ignore_merges, clean_spaces;
    int max_piece;
};

/* ---- hash tables ---- */

static uint32_t hash_bytes(const char *p, size_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 16777619u;
    return h;
}

static uint32_t hash_u64(uint64_t k) { /* splitmix64's finalizer */
    k = (k ^ (k >> 30)) * 0xbf58476d1ce4e5b9ull;
    k = (k ^ (k >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)(k ^ (k >> 31));
}

static uint32_t pow2_at_least(uint64_t n) {
    uint32_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

int32_t ess_tok_find(const ess_tokenizer *t, const char *text, size_t len) {
    if (!t || (!text && len)) return -1;
    uint32_t h = hash_bytes(text, len);
    for (uint32_t i = h & t->tok_mask;; i = (i + 1) & t->tok_mask) {
        const tok_slot *sl = &t->tok_hash[i];
        if (sl->id < 0) return -1;
        if (sl->h == h && t->text[sl->id].n == len && memcmp(t->text[sl->id].p, text, len) == 0) return sl->id;
    }
}

/* Later duplicates replace earlier ones, as llama.cpp's token_to_id[word] = i does. */
static void tok_insert(ess_tokenizer *t, int32_t id) {
    const tok_str *s = &t->text[id];
    uint32_t h = hash_bytes(s->p, s->n);
    for (uint32_t i = h & t->tok_mask;; i = (i + 1) & t->tok_mask) {
        tok_slot *sl = &t->tok_hash[i];
        if (sl->id < 0 || (sl->h == h && t->text[sl->id].n == s->n && memcmp(t->text[sl->id].p, s->p, s->n) == 0)) {
            sl->h = h;
            sl->id = id;
            return;
        }
    }
}

static uint32_t merge_hash(int32_t left, int32_t right) {
    return hash_u64(((uint64_t)(uint32_t)left << 32) | (uint32_t)right);
}

static int32_t merge_find(const ess_tokenizer *t, int32_t left, int32_t right) {
    for (uint32_t i = merge_hash(left, right) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const merge_slot *m = &t->merges[i];
        if (m->rank < 0) return -1;
        if (m->left == left && m->right == right) return m->rank;
    }
}

/* The first rank of a pair wins, as llama.cpp's bpe_ranks.emplace keeps it. */
static void merge_insert(ess_tokenizer *t, int32_t left, int32_t right, int32_t rank) {
    for (uint32_t i = merge_hash(left, right) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        merge_slot *m = &t->merges[i];
        if (m->rank >= 0 && m->left == left && m->right == right) return;
        if (m->rank < 0) {
            m->left = left;
            m->right = right;
            m->rank = rank;
            return;
        }
    }
}

/* ---- loading ---- */

void ess_tok_free(ess_tokenizer *t) {
    if (!t) return;
    free(t->text);
    free(t->score);
    free(t->attr);
    free(t->eog);
    free(t->tok_hash);
    free(t->merges);
    free(t->special);
    free(t);
}

static int str_eq(ess_str s, const char *c) { return s.n == strlen(c) && memcmp(s.p, c, s.n) == 0; }

static int is_int_type(uint32_t ty) {
    return ty == ESS_GGUF_UINT8 || ty == ESS_GGUF_INT8 || ty == ESS_GGUF_UINT16 || ty == ESS_GGUF_INT16 ||
           ty == ESS_GGUF_UINT32 || ty == ESS_GGUF_INT32 || ty == ESS_GGUF_UINT64 || ty == ESS_GGUF_INT64;
}

/* Optional array key: 0 with *kv NULL when absent; an error when present with the wrong
 * element type or count. */
static int opt_array(ess_gguf *g, const char *key, int want_float, uint64_t n, const ess_gguf_kv **kv, ess_err *e) {
    *kv = NULL;
    int64_t k = ess_gguf_find_key(g, key);
    if (k < 0) return 0;
    const ess_gguf_kv *a = &g->kv[k];
    if (a->type != ESS_GGUF_ARRAY || (want_float ? a->arr_type != ESS_GGUF_FLOAT32 : !is_int_type(a->arr_type)))
        return ess_fail(e, ESS_EFORMAT, "%s (at byte %llu) is not an array of %s", key,
                        (unsigned long long)a->offset, want_float ? "float32" : "integers");
    if (a->arr_n != n)
        return ess_fail(e, ESS_EFORMAT, "%s has %llu entries but tokenizer.ggml.tokens has %llu", key,
                        (unsigned long long)a->arr_n, (unsigned long long)n);
    *kv = a;
    return 0;
}

/* A special id from the file when it names a token; otherwise the default stays
 * (llama.cpp warns "bad special token" and keeps its default). */
static void read_id(ess_gguf *g, const char *key, int n_vocab, int32_t *id) {
    uint32_t v;
    if (ess_gguf_get_u32(g, key, &v) == 0 && v < (uint32_t)n_vocab) *id = (int32_t)v;
}

static void read_flag(ess_gguf *g, const char *key, int *flag) {
    int v;
    if (ess_gguf_get_bool(g, key, &v) == 0) *flag = v != 0;
}

static int load_merges(ess_tokenizer *t, ess_gguf *g, ess_err *e) {
    const ess_gguf_kv *kv;
    int rc = ess_gguf_get_arr(g, "tokenizer.ggml.merges", ESS_GGUF_STRING, &kv);
    if (rc == ESS_ENOTFOUND) return ess_fail(e, ESS_EFORMAT, "tokenizer.ggml.merges is missing (a gpt2 BPE vocabulary needs it)");
    if (rc) return ess_fail(e, ESS_EFORMAT, "tokenizer.ggml.merges is not an array of strings");
    if (kv->arr_n > (uint64_t)INT32_MAX / 4)
        return ess_fail(e, ESS_EFORMAT, "tokenizer.ggml.merges has %llu entries, too many", (unsigned long long)kv->arr_n);
    uint32_t cap = pow2_at_least(kv->arr_n + kv->arr_n / 2 + 1); /* load factor <= 2/3 */
    t->merge_mask = cap - 1;
    t->merges = malloc(cap * sizeof *t->merges);
    if (!t->merges) return ess_fail(e, ESS_ENOMEM, "no memory for %llu merges", (unsigned long long)kv->arr_n);
    memset(t->merges, 0xFF, cap * sizeof *t->merges); /* rank -1: empty */
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        ess_str m = ess_gguf_arr_str(kv, i);
        /* "left right": the first space after the first byte separates them, as in llama.cpp
         * (byte-level tokens never hold a raw space). */
        size_t sp = 1;
        while (sp < m.n && m.p[sp] != ' ') sp++;
        if (m.n < 3 || sp >= m.n - 1)
            return ess_fail(e, ESS_EFORMAT, "tokenizer.ggml.merges[%llu] \"%.*s\" is not two tokens separated by a space",
                            (unsigned long long)i, (int)(m.n < 64 ? m.n : 64), m.p);
        int32_t l = ess_tok_find(t, m.p, sp), r = ess_tok_find(t, m.p + sp + 1, m.n - sp - 1);
        if (l < 0 || r < 0) {
            const char *bad = l < 0 ? m.p : m.p + sp + 1;
            size_t bn = l < 0 ? sp : m.n - sp - 1;
            return ess_fail(e, ESS_EFORMAT, "tokenizer.ggml.merges[%llu] \"%.*s\": \"%.*s\" is not a token",
                            (unsigned long long)i, (int)(m.n < 64 ? m.n : 64), m.p, (int)(bn < 64 ? bn : 64), bad);
        }
        merge_insert(t, l, r, (int32_t)i);
    }
    return 0;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others
 * (controls, space, DEL, NBSP, soft hyphen) take code points 256, 257, ... in byte order. */
static void init_byte_map(ess_tokenizer *t) {
    int next = 256;
    for (int i = 0; i < 512; i++) t->cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        t->byte_cp[b] = (uint16_t)(printable ? b : next++);
        t->cp_byte[t->byte_cp[b]] = (int16_t)b;
    }
}

/* llama.cpp's text lists (llama-vocab.cpp, 2025): end of turn, fill-in-the-middle markers
 * and end of generation. Tokens found by these texts become control tokens. */
#define END_OF_LIST NULL
static const char *const k_eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
    "_<EOT>", "[EOT]", "<end_of_utterance>", END_OF_LIST};
static const char *const k_fim_texts[6][7] = {
    {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "<|code_prefix|>", "<|prefix|>", END_OF_LIST},
    {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "<|code_suffix|>", "<|suffix|>", END_OF_LIST},
    {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "<|code_middle|>", "<|middle|>", END_OF_LIST},
    {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", END_OF_LIST},
    {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", END_OF_LIST},
    {"<|file_sep|>", END_OF_LIST}};
static const char *const k_fim_keys[6] = {
    "tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.fim_mid_token_id",
    "tokenizer.ggml.fim_pad_token_id", "tokenizer.ggml.fim_rep_token_id", "tokenizer.ggml.fim_sep_token_id"};
static const char *const k_eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", END_OF_LIST};

static int32_t find_cstr(const ess_tokenizer *t, const char *s) { return ess_tok_find(t, s, strlen(s)); }

static void set_attr(ess_tokenizer *t, int32_t id, unsigned bit, int on) {
    if (id < 0) return;
    t->attr[id] = (uint16_t)(on ? (t->attr[id] | bit) : (t->attr[id] & ~bit));
}

/* The first token of a NULL-ended list that exists, made a control token; -1 if none.
 * (llama.cpp walks an unordered map, so with several candidates its pick is arbitrary;
 * ours is the first in list order.) */
static int32_t detect(ess_tokenizer *t, const char *const *texts) {
    for (; *texts; texts++) {
        int32_t id = find_cstr(t, *texts);
        if (id >= 0) { set_attr(t, id, ESS_TOK_ATTR_CONTROL, 1); return id; }
    }
    return -1;
}

static size_t find_bytes(const char *text, size_t from, size_t end, const char *pat, size_t pn);

static void init_specials(ess_tokenizer *t, ess_gguf *g) {
    int32_t fim[6];
    if (t->eot < 0) t->eot = detect(t, k_eot_texts);
    if (t->eom < 0) {
        static const char *const eom[] = {"<|eom_id|>", END_OF_LIST};
        t->eom = detect(t, eom);
    }
    for (int k = 0; k < 6; k++) {
        fim[k] = -1;
        read_id(g, k_fim_keys[k], t->n_vocab, &fim[k]);
        if (fim[k] < 0) fim[k] = detect(t, k_fim_texts[k]);
    }
    /* Control tokens named "...unused..." are unused ones (they then render as ""). */
    for (int32_t id = 0; id < t->n_vocab; id++)
        if ((t->attr[id] & ESS_TOK_ATTR_CONTROL) && find_bytes(t->text[id].p, 0, t->text[id].n, "unused", 6) != SIZE_MAX)
            set_attr(t, id, ESS_TOK_ATTR_UNUSED, 1);
    for (int k = 3; k < 6; k++) /* fim pad, repo and file separator end generation */
        if (fim[k] >= 0) t->eog[fim[k]] = 1;
    for (const char *const *p = k_eog_texts; *p; p++) {
        int32_t id = find_cstr(t, *p);
        if (id < 0) continue;
        t->eog[id] = 1;
        set_attr(t, id, ESS_TOK_ATTR_CONTROL, 1); /* so it renders "" and needs parse_special */
    }
    /* gpt-oss: these markers always render. */
    static const char *const shown[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"};
    for (size_t i = 0; i < sizeof shown / sizeof *shown; i++) {
        int32_t id = find_cstr(t, shown[i]);
        if (id >= 0) t->attr[id] = ESS_TOK_ATTR_USER_DEFINED;
    }
    if (t->eos >= 0) t->eog[t->eos] = 1;
    if (t->eot >= 0) t->eog[t->eot] = 1;
    if (t->eom >= 0) t->eog[t->eom] = 1;
    /* o200k_harmony / solar-open: <|end|> ends a message, not the generation. */
    int32_t ret = find_cstr(t, "<|return|>"), call = find_cstr(t, "<|call|>"), calls = find_cstr(t, "<|calls|>");
    int32_t flush = find_cstr(t, "<|flush|>"), end = find_cstr(t, "<|end|>");
    if (end >= 0 && t->eog[end] && ((ret >= 0 && (call >= 0 || calls >= 0)) || ((call >= 0 || calls >= 0) && flush >= 0))) {
        t->eog[end] = 0;
        t->attr[end] = ESS_TOK_ATTR_USER_DEFINED;
    }
    /* gemma4 / paddleocr: </s> is text when <|tool_response> exists. */
    int32_t s_end = find_cstr(t, "</s>");
    if (s_end >= 0 && t->eog[s_end] && find_cstr(t, "<|tool_response>") >= 0) {
        t->eog[s_end] = 0;
        t->attr[s_end] = ESS_TOK_ATTR_NORMAL;
    }

    int n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->attr[id] & (ESS_TOK_ATTR_CONTROL | ESS_TOK_ATTR_USER_DEFINED | ESS_TOK_ATTR_UNKNOWN)) n++;
    t->special = malloc((size_t)(n ? n : 1) * sizeof *t->special);
    if (!t->special) return;
    t->n_special = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->attr[id] & (ESS_TOK_ATTR_CONTROL | ESS_TOK_ATTR_USER_DEFINED | ESS_TOK_ATTR_UNKNOWN))
            t->special[t->n_special++] = id;
    /* Longest text first, so "<|im_end|>" is cut before a shorter token inside it; equal
     * lengths by id (llama.cpp's std::sort leaves them in no particular order). Insertion
     * sort on (length, id) is fine: a few hundred entries at most in real vocabularies,
     * and the stable order keeps it deterministic. */
    for (int i = 1; i < t->n_special; i++) {
        int32_t v = t->special[i];
        int j = i;
        while (j > 0 && t->text[t->special[j - 1]].n < t->text[v].n) { t->special[j] = t->special[j - 1]; j--; }
        t->special[j] = v;
    }

    /* llama.cpp's per-model attribute fix-up for Phi-3: special tokens swallow the white
     * space after them, except <unk>, <s>, <|endoftext|>. */
    ess_str name;
    if (ess_gguf_get_str(g, "general.name", &name) == 0) {
        char low[128];
        size_t ln = name.n < sizeof low - 1 ? name.n : sizeof low - 1;
        for (size_t i = 0; i < ln; i++) low[i] = (char)(name.p[i] >= 'A' && name.p[i] <= 'Z' ? name.p[i] + 32 : name.p[i]);
        low[ln] = 0;
        if (strstr(low, "phi-3") || strstr(low, "phi3")) {
            for (int i = 0; i < t->n_special; i++) set_attr(t, t->special[i], ESS_TOK_ATTR_RSTRIP, 1);
            set_attr(t, find_cstr(t, "</s>"), ESS_TOK_ATTR_RSTRIP, 1);
            set_attr(t, find_cstr(t, "<unk>"), ESS_TOK_ATTR_RSTRIP, 0);
            set_attr(t, find_cstr(t, "<s>"), ESS_TOK_ATTR_RSTRIP, 0);
            set_attr(t, find_cstr(t, "<|endoftext|>"), ESS_TOK_ATTR_RSTRIP, 0);
        }
    }
}

static int spm_byte_value(const tok_str *s) {
    /* "<0xNN>" */
    if (s->n != 6 || memcmp(s->p, "<0x", 3) != 0 || s->p[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s->p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

ess_tokenizer *ess_tok_new(ess_gguf *g, ess_err *e) {
    if (!g) { ess_fail(e, ESS_EINVAL, "ess_tok_new: no GGUF given"); return NULL; }
    ess_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { ess_fail(e, ESS_ENOMEM, "no memory for the tokenizer"); return NULL; }
    ess_str model, pre;
    const ess_gguf_kv *toks, *scores, *types;
    int rc;

    rc = ess_gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (rc) {
        ess_fail(e, ESS_EFORMAT, rc == ESS_ENOTFOUND ? "tokenizer.ggml.model is missing" : "tokenizer.ggml.model is not a string");
        goto fail;
    }
    if (str_eq(model, "llama")) t->type = ESS_TOK_SPM;
    else if (str_eq(model, "gpt2")) t->type = ESS_TOK_BPE;
    else {
        ess_fail(e, ESS_EUNSUP, "tokenizer.ggml.model \"%.*s\" is not supported (only \"llama\" and \"gpt2\")",
                 (int)(model.n < 64 ? model.n : 64), model.p);
        goto fail;
    }

    rc = ess_gguf_get_arr(g, "tokenizer.ggml.tokens", ESS_GGUF_STRING, &toks);
    if (rc) {
        ess_fail(e, ESS_EFORMAT, rc == ESS_ENOTFOUND ? "tokenizer.ggml.tokens is missing" : "tokenizer.ggml.tokens is not an array of strings");
        goto fail;
    }
    if (toks->arr_n == 0 || toks->arr_n > ESS_TOK_MAX_VOCAB) {
        ess_fail(e, ESS_EFORMAT, "tokenizer.ggml.tokens has %llu entries (1..%d allowed)", (unsigned long long)toks->arr_n, ESS_TOK_MAX_VOCAB);
        goto fail;
    }
    t->n_vocab = (int)toks->arr_n;
    if (opt_array(g, "tokenizer.ggml.scores", 1, toks->arr_n, &scores, e)) goto fail;
    if (opt_array(g, "tokenizer.ggml.token_type", 0, toks->arr_n, &types, e)) goto fail;

    size_t nv = (size_t)t->n_vocab;
    uint32_t cap = pow2_at_least((uint64_t)nv * 2 + 1);
    t->tok_mask = cap - 1;
    t->text = malloc(nv * sizeof *t->text);
    t->score = malloc(nv * sizeof *t->score);
    t->attr = malloc(nv * sizeof *t->attr);
    t->eog = calloc(nv, 1);
    t->tok_hash = malloc(cap * sizeof *t->tok_hash);
    if (!t->text || !t->score || !t->attr || !t->eog || !t->tok_hash) {
        ess_fail(e, ESS_ENOMEM, "no memory for a vocabulary of %zu tokens", nv);
        goto fail;
    }
    memset(t->tok_hash, 0xFF, cap * sizeof *t->tok_hash); /* id -1: empty */
    for (size_t i = 0; i < nv; i++) {
        ess_str s = ess_gguf_arr_str(toks, i);
        if (s.n > ESS_TOK_MAX_TOKEN_BYTES) {
            ess_fail(e, ESS_EFORMAT, "tokenizer.ggml.tokens[%zu] is %llu bytes long (at most %d)", i, (unsigned long long)s.n, ESS_TOK_MAX_TOKEN_BYTES);
            goto fail;
        }
        t->text[i].p = s.p;
        t->text[i].n = (uint32_t)s.n;
        t->score[i] = scores ? (float)ess_gguf_arr_num(scores, i) : 0.0f;
        unsigned a = ESS_TOK_ATTR_NORMAL;
        if (types) {
            switch ((int64_t)ess_gguf_arr_num(types, i)) {
            case 1: a = ESS_TOK_ATTR_NORMAL; break;
            case 2: a = ESS_TOK_ATTR_UNKNOWN; break;
            case 3: a = ESS_TOK_ATTR_CONTROL; break;
            case 4: a = ESS_TOK_ATTR_USER_DEFINED; break;
            case 5: a = ESS_TOK_ATTR_UNUSED; break;
            case 6: a = ESS_TOK_ATTR_BYTE; break;
            default: a = ESS_TOK_ATTR_UNDEFINED; break;
            }
        }
        t->attr[i] = (uint16_t)a;
        if (s.n) tok_insert(t, (int32_t)i); /* llama.cpp renames empty tokens; nothing can match them */
    }

    t->bos = t->eos = t->eot = t->eom = t->unk = t->pad = t->sep = -1;
    if (t->type == ESS_TOK_SPM) {
        t->pre = ESS_TOK_PRE_DEFAULT; /* llama.cpp ignores tokenizer.ggml.pre for SPM */
        t->bos = 1; t->eos = 2; t->unk = 0;
        t->add_space_prefix = 1; t->add_bos = 1;
    } else {
        if (ess_gguf_get_str(g, "tokenizer.ggml.pre", &pre) != 0) {
            ess_fail(e, ESS_EUNSUP, "tokenizer.ggml.pre is missing: llama.cpp would use its generic multi-regex BPE pre-tokenizer, which essaim does not implement");
            goto fail;
        }
        static const char *const llama3_names[] = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"};
        int which = -1;
        for (size_t i = 0; i < sizeof llama3_names / sizeof *llama3_names; i++)
            if (str_eq(pre, llama3_names[i])) which = ESS_TOK_PRE_LLAMA3;
        if (str_eq(pre, "tekken")) which = ESS_TOK_PRE_TEKKEN;
        t->pre = (ess_tok_pre)(which < 0 ? 0 : which);
        if (which < 0) {
            ess_fail(e, ESS_EUNSUP, "tokenizer.ggml.pre \"%.*s\" is not supported (BPE pre-tokenizers: llama3/llama-bpe and tekken)",
                     (int)(pre.n < 64 ? pre.n : 64), pre.p);
            goto fail;
        }
        t->bos = t->n_vocab > 11 ? 11 : -1; /* llama.cpp's GPT-2 defaults, overridden by every real file */
        t->eos = t->bos;
        t->add_bos = 1;
        t->ignore_merges = 1;
        t->clean_spaces = t->pre == ESS_TOK_PRE_LLAMA3;
        init_byte_map(t);
        if (load_merges(t, g, e)) goto fail;
    }
    read_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos);
    read_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos);
    read_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk);
    read_id(g, "tokenizer.ggml.seperator_token_id", t->n_vocab, &t->sep);
    read_id(g, "tokenizer.ggml.padding_token_id", t->n_vocab, &t->pad);
    read_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, &t->eot);
    read_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab, &t->eom);
    if (t->bos >= t->n_vocab) t->bos = -1;
    if (t->eos >= t->n_vocab) t->eos = -1;
    if (t->unk >= t->n_vocab) t->unk = -1;
    read_flag(g, "tokenizer.ggml.add_bos_token", &t->add_bos);
    read_flag(g, "tokenizer.ggml.add_eos_token", &t->add_eos);
    read_flag(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix);
    read_flag(g, "tokenizer.ggml.remove_extra_whitespaces", &t->remove_extra_ws);

    init_specials(t, g);
    if (!t->special) { ess_fail(e, ESS_ENOMEM, "no memory for the special-token list"); goto fail; }

    for (int b = 0; b < 256; b++) t->byte_tok[b] = -1;
    if (t->type == ESS_TOK_SPM) {
        /* byte_to_token: "<0xNN>" (upper-case hex) first, else the byte as a one-byte token. */
        static const char hex[] = "0123456789ABCDEF";
        for (int b = 0; b < 256; b++) {
            char name[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'}, c = (char)b;
            t->byte_tok[b] = ess_tok_find(t, name, 6);
            if (t->byte_tok[b] < 0) t->byte_tok[b] = ess_tok_find(t, &c, 1);
        }
    } else {
        for (int b = 0; b < 256; b++) {
            uint8_t u[4];
            size_t n = ess_utf8_encode(t->byte_cp[b], u);
            t->byte_tok[b] = ess_tok_find(t, (const char *)u, n);
        }
    }
    for (int32_t id = 0; id < t->n_vocab; id++) {
        int n = ess_tok_piece(t, id, 1, NULL, 0);
        if (n > t->max_piece) t->max_piece = n;
    }
    return t;
fail:
    ess_tok_free(t);
    return NULL;
}

/* ---- encoding ---- */

typedef struct {
    int32_t *out;
    int cap, n;
} emitter;

static void emit(emitter *o, int32_t id) {
    if (o->n < o->cap) o->out[o->n] = id;
    o->n++;
}

typedef struct { int prev, next; size_t off, n; int32_t id; } symbol;
typedef struct { float score; int32_t rank; int left, right; size_t size; } bigram;

/* Binary heap of bigrams; `bpe` picks the order: SPM pops the highest score first, BPE the
 * lowest rank; ties go to the leftmost pair in both, as in llama.cpp's comparators. */
typedef struct { bigram *b; size_t n, cap; int bpe; } heap;

static int before(const heap *h, const bigram *a, const bigram *b) {
    if (h->bpe) return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int heap_push(heap *h, bigram v) {
    if (h->n == h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 64;
        bigram *nb = realloc(h->b, nc * sizeof *nb);
        if (!nb) return ESS_ENOMEM;
        h->b = nb;
        h->cap = nc;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!before(h, &v, &h->b[p])) break;
        h->b[i] = h->b[p];
        i = p;
    }
    h->b[i] = v;
    return 0;
}

static bigram heap_pop(heap *h) {
    bigram top = h->b[0], last = h->b[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && before(h, &h->b[c + 1], &h->b[c])) c++;
        if (!before(h, &h->b[c], &last)) break;
        h->b[i] = h->b[c];
        i = c;
    }
    if (h->n) h->b[i] = last;
    return top;
}

/* Per-call scratch, grown as needed and freed at the end of ess_tok_encode. */
typedef struct {
    symbol *sym; size_t sym_cap;
    char *buf; size_t buf_cap;
    uint32_t *cps; size_t cps_cap;
    uint32_t *lens; size_t lens_cap;
    heap h;
} scratch;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    void *np = realloc(*p, nc * elem);
    if (!np) return ESS_ENOMEM;
    *p = np;
    *cap = nc;
    return 0;
}

static void merge_symbols(symbol *sym, int left, int right) {
    sym[left].n += sym[right].n;
    sym[right].n = 0;
    sym[left].next = sym[right].next;
    if (sym[right].next >= 0) sym[sym[right].next].prev = left;
}

static int spm_try_bigram(const ess_tokenizer *t, scratch *s, int left, int right) {
    if (left < 0 || right < 0) return 0;
    size_t size = s->sym[left].n + s->sym[right].n;
    int32_t id = ess_tok_find(t, s->buf + s->sym[left].off, size);
    if (id < 0) return 0;
    bigram b = {t->score[id], 0, left, right, size};
    return heap_push(&s->h, b);
}

/* llm_tokenizer_spm_session::tokenize over s->buf[0..n) (spaces already escaped). */
static int spm_encode(const ess_tokenizer *t, scratch *s, size_t n, emitter *o) {
    int count = 0;
    for (size_t off = 0; off < n; count++) {
        if (grow((void **)&s->sym, &s->sym_cap, (size_t)count + 1, sizeof *s->sym)) return ESS_ENOMEM;
        size_t len = ess_utf8_len((uint8_t)s->buf[off]);
        if (len > n - off) len = n - off;
        symbol *y = &s->sym[count];
        y->off = off;
        y->n = len;
        y->prev = count - 1;
        off += len;
        y->next = off == n ? -1 : count + 1;
    }
    if (count == 0) return 0;
    s->h.n = 0;
    s->h.bpe = 0;
    for (int i = 1; i < count; i++)
        if (spm_try_bigram(t, s, i - 1, i)) return ESS_ENOMEM;
    while (s->h.n) {
        bigram b = heap_pop(&s->h);
        symbol *l = &s->sym[b.left], *r = &s->sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale */
        merge_symbols(s->sym, b.left, b.right);
        if (spm_try_bigram(t, s, s->sym[b.left].prev, b.left)) return ESS_ENOMEM;
        if (spm_try_bigram(t, s, b.left, s->sym[b.left].next)) return ESS_ENOMEM;
    }
    /* Every merged symbol is a token; a lone character that is not falls back to its bytes
     * (llama.cpp's rev_merge path is never taken for single characters). */
    for (int i = 0; i != -1; i = s->sym[i].next) {
        const symbol *y = &s->sym[i];
        int32_t id = ess_tok_find(t, s->buf + y->off, y->n);
        if (id >= 0) { emit(o, id); continue; }
        for (size_t j = 0; j < y->n; j++) {
            int32_t b = t->byte_tok[(uint8_t)s->buf[y->off + j]];
            if (b < 0) b = t->unk; /* llama.cpp throws here; a vocabulary without byte tokens */
            if (b >= 0) emit(o, b);
        }
    }
    return 0;
}

static int bpe_try_bigram(const ess_tokenizer *t, scratch *s, int left, int right) {
    if (left < 0 || right < 0) return 0;
    const symbol *l = &s->sym[left], *r = &s->sym[right];
    if (l->id < 0 || r->id < 0) return 0; /* merges only join tokens (checked at load) */
    int32_t rank = merge_find(t, l->id, r->id);
    if (rank < 0) return 0;
    bigram b = {0.0f, rank, left, right, l->n + r->n};
    return heap_push(&s->h, b);
}

/* One pre-tokenized word, already byte-level encoded in s->buf[0..n); byte_of[i] is the
 * source byte of the i-th mapped character. */
static int bpe_encode_word(const ess_tokenizer *t, scratch *s, size_t n, const uint8_t *src, size_t n_src, emitter *o) {
    if (t->ignore_merges) {
        int32_t id = ess_tok_find(t, s->buf, n);
        if (id >= 0) { emit(o, id); return 0; }
    }
    if (grow((void **)&s->sym, &s->sym_cap, n_src, sizeof *s->sym)) return ESS_ENOMEM;
    size_t off = 0;
    for (size_t i = 0; i < n_src; i++) {
        symbol *y = &s->sym[i];
        y->off = off;
        y->n = t->byte_cp[src[i]] < 0x80 ? 1 : 2;
        y->id = t->byte_tok[src[i]];
        y->prev = (int)i - 1;
        y->next = i + 1 == n_src ? -1 : (int)i + 1;
        off += y->n;
    }
    s->h.n = 0;
    s->h.bpe = 1;
    for (size_t i = 1; i < n_src; i++)
        if (bpe_try_bigram(t, s, (int)i - 1, (int)i)) return ESS_ENOMEM;
    while (s->h.n) {
        bigram b = heap_pop(&s->h);
        symbol *l = &s->sym[b.left], *r = &s->sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale */
        merge_symbols(s->sym, b.left, b.right);
        l->id = ess_tok_find(t, s->buf + l->off, l->n);
        if (bpe_try_bigram(t, s, l->prev, b.left)) return ESS_ENOMEM;
        if (bpe_try_bigram(t, s, b.left, l->next)) return ESS_ENOMEM;
    }
    for (int i = 0; i != -1; i = s->sym[i].next) {
        const symbol *y = &s->sym[i];
        if (y->id >= 0) { emit(o, y->id); continue; }
        /* Not a token: llama.cpp tries each byte of the encoded text as a one-byte token. */
        for (size_t j = 0; j < y->n; j++) {
            int32_t id = ess_tok_find(t, s->buf + y->off + j, 1);
            if (id >= 0) emit(o, id);
        }
    }
    return 0;
}

/* Pre-tokenizes text[0..len) and runs BPE on every word, as llm_tokenizer_bpe_session does
 * (invalid UTF-8 becomes U+FFFD before the byte-level map, as in llama.cpp). */
static int bpe_encode(const ess_tokenizer *t, scratch *s, const char *text, size_t len, emitter *o) {
    /* At most one code point and one word per byte. */
    if (grow((void **)&s->cps, &s->cps_cap, len, sizeof *s->cps)) return ESS_ENOMEM;
    if (grow((void **)&s->lens, &s->lens_cap, len, sizeof *s->lens)) return ESS_ENOMEM;
    size_t n = 0;
    for (size_t off = 0; off < len;) {
        size_t used;
        s->cps[n++] = ess_utf8_decode((const uint8_t *)text + off, len - off, &used);
        off += used;
    }
    size_t n_words = t->pre == ESS_TOK_PRE_TEKKEN ? ess_unicode_split_tekken(s->cps, n, s->lens)
                                                   : ess_unicode_split_llama3(s->cps, n, s->lens);
    uint8_t *src = NULL;
    size_t src_cap = 0, at = 0;
    int rc = 0;
    for (size_t w = 0; w < n_words && !rc; w++) {
        /* The word's bytes (re-encoded from code points), then their byte-level chars. */
        size_t n_src = 0;
        if (grow((void **)&src, &src_cap, (size_t)s->lens[w] * 4, 1)) { rc = ESS_ENOMEM; break; }
        for (uint32_t k = 0; k < s->lens[w]; k++) n_src += ess_utf8_encode(s->cps[at + k], src + n_src);
        at += s->lens[w];
        if (grow((void **)&s->buf, &s->buf_cap, n_src * 2, 1)) { rc = ESS_ENOMEM; break; }
        size_t nb = 0;
        for (size_t i = 0; i < n_src; i++) nb += ess_utf8_encode(t->byte_cp[src[i]], (uint8_t *)s->buf + nb);
        rc = bpe_encode_word(t, s, nb, src, n_src, o);
    }
    free(src);
    return rc;
}

typedef struct { size_t off, len; int32_t id; } fragment; /* id < 0: raw text */

static int c_isspace(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* First occurrence of pat[0..pn) in text[from..end), or SIZE_MAX. */
static size_t find_bytes(const char *text, size_t from, size_t end, const char *pat, size_t pn) {
    if (pn == 0 || end - from < pn) return SIZE_MAX;
    for (size_t i = from; i + pn <= end; i++) {
        const char *p = memchr(text + i, pat[0], end - pn + 1 - i);
        if (!p) return SIZE_MAX;
        i = (size_t)(p - text);
        if (memcmp(p, pat, pn) == 0) return i;
    }
    return SIZE_MAX;
}

/* tokenizer_st_partition: cuts special tokens out of the raw fragments, longest first,
 * honouring their lstrip/rstrip attributes. */
static int partition(const ess_tokenizer *t, const char *text, size_t len, int parse_special, fragment **fr, size_t *nfr) {
    size_t n = 0, cap = 4;
    fragment *a = malloc(cap * sizeof *a), *b = NULL;
    if (!a) return ESS_ENOMEM;
    if (len) a[n++] = (fragment){0, len, -1};
    for (int k = 0; k < t->n_special && n; k++) {
        int32_t id = t->special[k];
        unsigned at = t->attr[id];
        if (!parse_special && (at & (ESS_TOK_ATTR_CONTROL | ESS_TOK_ATTR_UNKNOWN))) continue;
        const tok_str *st = &t->text[id];
        if (st->n == 0) continue;
        int any = 0;
        for (size_t i = 0; i < n && !any; i++)
            if (a[i].id < 0 && find_bytes(text, a[i].off, a[i].off + a[i].len, st->p, st->n) != SIZE_MAX) any = 1;
        if (!any) continue;
        size_t bn = 0, bcap = n * 2 + 4;
        b = malloc(bcap * sizeof *b);
        if (!b) { free(a); return ESS_ENOMEM; }
        for (size_t i = 0; i < n; i++) {
            if (a[i].id >= 0) {
                if (grow((void **)&b, &bcap, bn + 1, sizeof *b)) goto oom;
                b[bn++] = a[i];
                continue;
            }
            size_t pos = a[i].off, end = a[i].off + a[i].len;
            for (;;) {
                size_t m = find_bytes(text, pos, end, st->p, st->n);
                if (grow((void **)&b, &bcap, bn + 2, sizeof *b)) goto oom;
                if (m == SIZE_MAX) {
                    if (end > pos) b[bn++] = (fragment){pos, end - pos, -1};
                    break;
                }
                size_t l_end = m;
                if (at & ESS_TOK_ATTR_LSTRIP)
                    while (l_end > pos && c_isspace(text[l_end - 1])) l_end--;
                if (l_end > pos) b[bn++] = (fragment){pos, l_end - pos, -1};
                b[bn++] = (fragment){m, st->n, id};
                pos = m + st->n;
                if (pos >= end) break;
                if (at & ESS_TOK_ATTR_RSTRIP)
                    while (pos < end && c_isspace(text[pos])) pos++;
            }
        }
        free(a);
        a = b;
        n = bn;
        b = NULL;
    }
    *fr = a;
    *nfr = n;
    return 0;
oom:
    free(a);
    free(b);
    return ESS_ENOMEM;
}

int ess_tok_encode(const ess_tokenizer *t, const char *text, size_t len, int add_special, int parse_special,
                   int32_t *out, int cap) {
    if (!t || (!text && len) || cap < 0 || (!out && cap)) return ESS_EINVAL;
    if (len > (size_t)INT32_MAX / 4) return ESS_ERANGE; /* ids <= bytes + 2 must fit an int */
    fragment *fr = NULL;
    size_t nfr = 0;
    int rc = partition(t, text, len, parse_special, &fr, &nfr);
    if (rc) return rc;
    emitter o = {out, cap, 0};
    scratch s;
    memset(&s, 0, sizeof s);
    if (add_special && t->add_bos && t->bos >= 0) emit(&o, t->bos);
    int prev_special = 1; /* SPM: the first text fragment gets the prefix space too */
    for (size_t i = 0; i < nfr && !rc; i++) {
        if (fr[i].id >= 0) {
            emit(&o, fr[i].id);
            prev_special = 1;
            continue;
        }
        const char *p = text + fr[i].off;
        size_t n = fr[i].len;
        if (t->type == ESS_TOK_SPM) {
            /* Escape: optional prefix space, then every ' ' becomes U+2581 (3 bytes). */
            if (grow((void **)&s.buf, &s.buf_cap, (n + 1) * 3, 1)) { rc = ESS_ENOMEM; break; }
            size_t m = 0;
            if (t->add_space_prefix && prev_special) { memcpy(s.buf, "\xe2\x96\x81", 3); m = 3; }
            for (size_t j = 0; j < n; j++) {
                if (p[j] == ' ') { memcpy(s.buf + m, "\xe2\x96\x81", 3); m += 3; }
                else s.buf[m++] = p[j];
            }
            rc = spm_encode(t, &s, m, &o);
        } else {
            rc = bpe_encode(t, &s, p, n, &o);
        }
        prev_special = 0;
    }
    if (!rc && add_special && t->add_eos && t->eos >= 0) emit(&o, t->eos);
    free(fr);
    free(s.sym);
    free(s.buf);
    free(s.cps);
    free(s.lens);
    free(s.h.b);
    return rc ? rc : o.n;
}

/* ---- decoding ---- */

/* Copies src[0..n) into buf as far as cap allows and returns n (snprintf-like). */
static int put(char *buf, int cap, const char *src, size_t n) {
    if (buf && cap > 0) memcpy(buf, src, n < (size_t)cap ? n : (size_t)cap);
    return (int)n;
}

int ess_tok_piece(const ess_tokenizer *t, int32_t id, int special, char *buf, int cap) {
    if (!t || id < 0 || id >= t->n_vocab) return ESS_EINVAL;
    unsigned a = t->attr[id];
    const tok_str *s = &t->text[id];
    if (!special && (a & (ESS_TOK_ATTR_UNKNOWN | ESS_TOK_ATTR_CONTROL))) return 0;
    if (a & (ESS_TOK_ATTR_UNKNOWN | ESS_TOK_ATTR_CONTROL | ESS_TOK_ATTR_USER_DEFINED)) return put(buf, cap, s->p, s->n);
    if (t->type == ESS_TOK_SPM) {
        if (a & ESS_TOK_ATTR_BYTE) {
            int v = spm_byte_value(s);
            char c = (char)(v < 0 ? 0 : v);
            return put(buf, cap, &c, 1);
        }
        if (!(a & ESS_TOK_ATTR_NORMAL)) return 0; /* unused and undefined tokens render as "" */
        /* Unescape U+2581 -> ' ' while copying. */
        int n = 0;
        for (uint32_t i = 0; i < s->n;) {
            char c;
            if (i + 3 <= s->n && memcmp(s->p + i, "\xe2\x96\x81", 3) == 0) { c = ' '; i += 3; }
            else c = s->p[i++];
            if (buf && n < cap) buf[n] = c;
            n++;
        }
        return n;
    }
    if (!(a & ESS_TOK_ATTR_NORMAL)) return 0;
    /* Byte-level BPE: each code point of the text stands for one byte. A code point outside
     * the map is copied as its UTF-8 (llama.cpp writes "[UNK_BYTE_0x..]" there). */
    int n = 0;
    for (size_t off = 0; off < s->n;) {
        size_t used;
        uint32_t cp = ess_utf8_decode((const uint8_t *)s->p + off, s->n - off, &used);
        int b = cp < 512 ? t->cp_byte[cp] : -1;
        if (b >= 0) {
            if (buf && n < cap) buf[n] = (char)b;
            n++;
        } else {
            for (size_t j = 0; j < used; j++) {
                if (buf && n < cap) buf[n] = s->p[off + j];
                n++;
            }
        }
        off += used;
    }
    return n;
}

int ess_tok_detokenize(const ess_tokenizer *t, const int32_t *ids, int n, int remove_special, int special, char *out, int cap) {
    if (!t || n < 0 || (!ids && n) || cap < 0 || (!out && cap)) return ESS_EINVAL;
    int remove_space = t->add_space_prefix;
    if (remove_special && t->add_bos && n > 0 && ids[0] == t->bos) { remove_space = 0; ids++; n--; }
    if (remove_special && t->add_eos && n > 0 && ids[n - 1] == t->eos) n--;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        int k = ess_tok_piece(t, ids[i], special, NULL, 0);
        if (k < 0) return k;
        total += (size_t)k;
        if (total > (size_t)INT32_MAX) return ESS_ERANGE;
    }
    char *tmp = malloc(total ? total : 1);
    if (!tmp) return ESS_ENOMEM;
    size_t m = 0;
    for (int i = 0; i < n; i++) {
        int k = ess_tok_piece(t, ids[i], special, tmp + m, (int)(total - m));
        if (remove_space && k > 0 && tmp[m] == ' ') { memmove(tmp + m, tmp + m + 1, (size_t)k - 1); k--; }
        remove_space = 0;
        m += (size_t)k;
    }
    if (t->clean_spaces && m > 0) {
        /* llama.cpp's three passes: " ?" " !" " ." " ," lose the space; " ' " loses both;
         * " 's" " 'm" " 're" " 've" lose the space. */
        size_t w = 1;
        for (size_t i = 1; i < m; i++) {
            char x = tmp[i];
            if (tmp[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) w--;
            tmp[w++] = x;
        }
        m = w; w = 1;
        for (size_t i = 1; i < m; i++) {
            char x = tmp[i];
            if (x == '\'' && i + 1 < m && tmp[i - 1] == ' ' && tmp[i + 1] == ' ') { w--; tmp[++i] = 0; }
            tmp[w++] = x;
        }
        m = w; w = 1;
        for (size_t i = 1; i < m; i++) {
            char x = tmp[i];
            if (tmp[i - 1] == ' ' && x == '\'' && i + 1 < m) {
                char x1 = tmp[i + 1];
                if (x1 == 's' || x1 == 'm') w--;
                else if (i + 2 < m && ((x1 == 'r' && tmp[i + 2] == 'e') || (x1 == 'v' && tmp[i + 2] == 'e'))) w--;
            }
            tmp[w++] = x;
        }
        m = w;
    }
    int r = put(out, cap, tmp, m);
    free(tmp);
    return r;
}

/* ---- streaming ---- */

void ess_tok_stream_init(ess_tok_stream *s, const ess_tokenizer *t, int strip_leading_space, int special) {
    memset(s, 0, sizeof *s);
    s->strip_space = strip_leading_space && t && t->add_space_prefix;
    s->special = special;
}

/* Bytes at the end of p[0..n) that start a UTF-8 character not yet complete (0..3). */
static int incomplete_tail(const uint8_t *p, int n) {
    for (int back = 1; back <= 3 && back <= n; back++) {
        uint8_t c = p[n - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation: keep looking for the lead */
        int need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        return need > back ? back : 0;
    }
    return 0; /* ASCII, or stray continuation bytes: nothing to wait for */
}

int ess_tok_stream_push(const ess_tokenizer *t, ess_tok_stream *s, int32_t id, char *out, int cap) {
    if (!t || !s || cap < 0 || (!out && cap)) return ESS_EINVAL;
    int k = ess_tok_piece(t, id, s->special, NULL, 0);
    if (k < 0) return k;
    int total = s->n_held + k;
    if (total > cap) return ESS_ERANGE;
    if (s->n_held) memcpy(out, s->held, (size_t)s->n_held);
    if (k > 0) ess_tok_piece(t, id, s->special, out + s->n_held, k);
    int strip = 0;
    if (s->strip_space && id != t->bos) {
        strip = k > 0 && out[s->n_held] == ' ';
        s->strip_space = 0;
    }
    if (strip) {
        memmove(out + s->n_held, out + s->n_held + 1, (size_t)k - 1);
        total--;
    }
    int hold = incomplete_tail((const uint8_t *)out, total);
    if (hold) memcpy(s->held, out + total - hold, (size_t)hold);
    s->n_held = hold;
    return total - hold;
}

int ess_tok_stream_flush(ess_tok_stream *s, char *out, int cap) {
    if (!s || cap < 0 || (!out && cap)) return ESS_EINVAL;
    if (s->n_held > cap) return ESS_ERANGE;
    int n = s->n_held;
    if (n) memcpy(out, s->held, (size_t)n);
    s->n_held = 0;
    return n;
}

/* ---- accessors ---- */

int ess_tok_n_vocab(const ess_tokenizer *t) { return t ? t->n_vocab : 0; }
ess_tok_type ess_tok_get_type(const ess_tokenizer *t) { return t->type; }
ess_tok_pre ess_tok_get_pre(const ess_tokenizer *t) { return t->pre; }
int32_t ess_tok_bos(const ess_tokenizer *t) { return t->bos; }
int32_t ess_tok_eos(const ess_tokenizer *t) { return t->eos; }
int32_t ess_tok_eot(const ess_tokenizer *t) { return t->eot; }
int32_t ess_tok_unk(const ess_tokenizer *t) { return t->unk; }
int32_t ess_tok_pad(const ess_tokenizer *t) { return t->pad; }
int ess_tok_add_bos(const ess_tokenizer *t) { return t->add_bos; }
int ess_tok_add_eos(const ess_tokenizer *t) { return t->add_eos; }
int ess_tok_add_space_prefix(const ess_tokenizer *t) { return t->add_space_prefix; }
int ess_tok_max_piece(const ess_tokenizer *t) { return t->max_piece; }

unsigned ess_tok_attr(const ess_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_vocab ? t->attr[id] : 0;
}
float ess_tok_score(const ess_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_vocab ? t->score[id] : 0.0f;
}
int ess_tok_is_control(const ess_tokenizer *t, int32_t id) { return (ess_tok_attr(t, id) & ESS_TOK_ATTR_CONTROL) != 0; }
int ess_tok_is_eog(const ess_tokenizer *t, int32_t id) { return t && id >= 0 && id < t->n_vocab && t->eog[id]; }

const char *ess_tok_text(const ess_tokenizer *t, int32_t id, size_t *len) {
    if (!t || id < 0 || id >= t->n_vocab) return NULL;
    if (len) *len = t->text[id].n;
    return t->text[id].p;
}
