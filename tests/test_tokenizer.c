/* test_tokenizer.c - unicode classes, pre-tokenizer splits, SPM and BPE encode/decode.
 *
 * Model-based tests use /work/shared/models (ESSAIM_TEST_MODELS) and skip when it is absent;
 * the synthetic vocabularies below (built with the GGUF writer) always run.
 * The vocab/<name>.gguf.inp/.out vectors are llama.cpp's test-tokenizer-0 vectors: tokenized without
 * BOS (add_special off) and with parse_special off; checked here the same way. */
#include "test.h"

#include "gguf.h"
#include "rng.h"
#include "tokenizer.h"
#include "unicode.h"

/* ---- helpers ---- */

typedef struct {
    uint8_t *buf; /* the file bytes: the tokenizer borrows from them */
    ess_gguf g;
    ess_tokenizer *tok;
    ess_err err;
} loaded;

static void unload(loaded *l) {
    ess_tok_free(l->tok);
    ess_gguf_free(&l->g);
    free(l->buf);
    memset(l, 0, sizeof *l);
}

/* Parses buf[0..n) (taking ownership) and builds a tokenizer; l->tok NULL on failure. */
static int load_bytes(loaded *l, uint8_t *buf, size_t n) {
    memset(l, 0, sizeof *l);
    l->buf = buf;
    int rc = ess_gguf_parse(&l->g, buf, n, n);
    if (rc) { snprintf(l->err.msg, sizeof l->err.msg, "%s", l->g.err.msg); return rc; }
    l->tok = ess_tok_new(&l->g, &l->err);
    return l->tok ? 0 : l->err.code;
}

static uint8_t *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(sz > 0 ? (size_t)sz + 1 : 1);
    if (b && fread(b, 1, (size_t)sz, f) != (size_t)sz) { free(b); b = NULL; }
    fclose(f);
    if (b) { b[sz] = 0; *n = (size_t)sz; }
    return b;
}

/* 1 when the model file exists and loaded; 0 when absent (skip). */
static int load_model(loaded *l, const char *file) {
    const char *p = ess_test_model(file);
    if (!p) { fprintf(stderr, "    skip: %s not found\n", file); return 0; }
    size_t n;
    uint8_t *b = read_file(p, &n);
    if (!b) return 0;
    load_bytes(l, b, n);
    return 1;
}

static int load_writer(loaded *l, ess_gguf_writer *w) {
    uint64_t n = ess_gguf_w_header_size(w);
    uint8_t *b = malloc(n);
    if (!b || ess_gguf_w_header(w, b, n)) { free(b); return ESS_ENOMEM; }
    ess_gguf_w_free(w);
    return load_bytes(l, b, n);
}

static int ids_equal(const int32_t *a, int na, const int32_t *b, int nb) {
    return na == nb && (na == 0 || memcmp(a, b, (size_t)na * sizeof *a) == 0);
}

static void print_ids(const char *what, const int32_t *a, int n) {
    fprintf(stderr, "    %s:", what);
    for (int i = 0; i < n; i++) fprintf(stderr, " %d", a[i]);
    fputc('\n', stderr);
}

/* Text of all pieces through the streaming detokenizer (with the SPM leading-space rule). */
static int stream_text(const ess_tokenizer *t, const int32_t *ids, int n, char *out, int cap) {
    ess_tok_stream s;
    ess_tok_stream_init(&s, t, 1, 0);
    int m = 0;
    for (int i = 0; i < n; i++) {
        int k = ess_tok_stream_push(t, &s, ids[i], out + m, cap - m);
        if (k < 0) return k;
        m += k;
    }
    int k = ess_tok_stream_flush(&s, out + m, cap - m);
    return k < 0 ? k : m + k;
}

/* Byte-level text (GPT-2 map) of raw bytes, for building BPE vocabularies by hand. */
static void bytelevel(const char *raw, char *out) {
    size_t m = 0;
    for (const uint8_t *p = (const uint8_t *)raw; *p; p++) {
        int b = *p, next = 256, cp = b;
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        if (!printable) {
            for (int c = 0; c < b; c++)
                if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || c >= 174)) next++;
            cp = next;
        }
        uint8_t u[4];
        size_t k = ess_utf8_encode((uint32_t)cp, u);
        memcpy(out + m, u, k);
        m += k;
    }
    out[m] = 0;
}

/* ---- unicode ---- */

ESS_TEST(unicode_classes_of_sample_code_points) {
    ESS_CHECK_EQ_INT(ess_unicode_flags('A'), ESS_UC_LU);
    ESS_CHECK_EQ_INT(ess_unicode_flags('z'), ESS_UC_LL);
    ESS_CHECK_EQ_INT(ess_unicode_flags(0x01C5), ESS_UC_LT);  /* Dž */
    ESS_CHECK_EQ_INT(ess_unicode_flags(0x02B0), ESS_UC_LM);  /* modifier h */
    ESS_CHECK_EQ_INT(ess_unicode_flags(0x4E2D), ESS_UC_LO);  /* 中 */
    ESS_CHECK_EQ_INT(ess_unicode_flags(0x0301), ESS_UC_M);   /* combining acute */
    ESS_CHECK_EQ_INT(ess_unicode_flags('7'), ESS_UC_N);
    ESS_CHECK_EQ_INT(ess_unicode_flags(0x00BD), ESS_UC_N);   /* ½ */
    ESS_CHECK_EQ_INT(ess_unicode_flags(' '), ESS_UC_WS);
    ESS_CHECK_EQ_INT(ess_unicode_flags('\n'), ESS_UC_WS);
    ESS_CHECK_EQ_INT(ess_unicode_flags(0x3000), ESS_UC_WS);  /* ideographic space */
    ESS_CHECK_EQ_INT(ess_unicode_flags(0x1C), 0);            /* not White_Space */
    ESS_CHECK_EQ_INT(ess_unicode_flags('!'), 0);
    ESS_CHECK_EQ_INT(ess_unicode_flags(0x1F999), 0);         /* emoji: a symbol */
    ESS_CHECK_EQ_INT(ess_unicode_flags(0x10FFFF), 0);
    ESS_CHECK_EQ_INT(ess_unicode_flags(0x110000), 0);
    ESS_CHECK_EQ_INT(ess_unicode_flags(0x20000), ESS_UC_LO); /* CJK extension B */
}

ESS_TEST(utf8_decode_invalid_gives_replacement_one_byte) {
    size_t used;
    ESS_CHECK_EQ_INT(ess_utf8_decode((const uint8_t *)"\xc3\xa9", 2, &used), 0xE9);
    ESS_CHECK_EQ_INT(used, 2);
    ESS_CHECK_EQ_INT(ess_utf8_decode((const uint8_t *)"\xf0\x9f\xa6\x99", 4, &used), 0x1F999);
    ESS_CHECK_EQ_INT(used, 4);
    ESS_CHECK_EQ_INT(ess_utf8_decode((const uint8_t *)"\xc3", 1, &used), 0xFFFD); /* truncated */
    ESS_CHECK_EQ_INT(used, 1);
    ESS_CHECK_EQ_INT(ess_utf8_decode((const uint8_t *)"\x80", 1, &used), 0xFFFD); /* stray */
    ESS_CHECK_EQ_INT(ess_utf8_decode((const uint8_t *)"\xe2\x28\xa1", 3, &used), 0xFFFD);
    ESS_CHECK_EQ_INT(used, 1);
    uint8_t u[4];
    ESS_CHECK_EQ_INT(ess_utf8_encode(0x110000, u), 3); /* out of range -> U+FFFD */
    ESS_CHECK(memcmp(u, "\xef\xbf\xbd", 3) == 0);
}

/* Splits UTF-8 text with fn and joins the words with '|'. */
static void split_join(size_t (*fn)(const uint32_t *, size_t, uint32_t *), const char *text, char *out) {
    uint32_t cps[256], lens[256];
    size_t n = 0, len = strlen(text);
    for (size_t off = 0; off < len;) {
        size_t used;
        cps[n++] = ess_utf8_decode((const uint8_t *)text + off, len - off, &used);
        off += used;
    }
    size_t nw = fn(cps, n, lens), at = 0, m = 0;
    for (size_t w = 0; w < nw; w++) {
        if (w) out[m++] = '|';
        for (uint32_t k = 0; k < lens[w]; k++) m += ess_utf8_encode(cps[at++], (uint8_t *)out + m);
    }
    out[m] = 0;
}

ESS_TEST(split_llama3_contractions_digits_spaces) {
    char out[512];
    split_join(ess_unicode_split_llama3, "I'VE 12345 cats' toys  !!\n\n  x", out);
    ESS_CHECK_STR(out, "I|'VE| |123|45| cats|'| toys| | !!\n\n| | x");
    split_join(ess_unicode_split_llama3, "Hello, world!   \tok\r\n", out);
    ESS_CHECK_STR(out, "Hello|,| world|!|   |\tok|\r\n");
}

ESS_TEST(split_tekken_case_runs_single_digits_slash) {
    char out[512];
    /* Upper run then lower run; an all-caps run alone; digits one by one; punctuation
     * swallowing '/' and newlines after it; a leading space joins the next word. */
    split_join(ess_unicode_split_tekken, "HelloWORLD 2024 ok!!//\nx", out);
    ESS_CHECK_STR(out, "Hello|WORLD| |2|0|2|4| ok|!!//\n|x");
    split_join(ess_unicode_split_tekken, "ABCdef abcDEF a/b", out);
    ESS_CHECK_STR(out, "ABCdef| abc|DEF| a|/b");
    /* llama.cpp's case classes ([^a-z] and [^A-Z] over letters): a non-ASCII letter is both
     * cases, so "aÉb" stays one word (Mistral's tokenizer cuts before É), "ÉCOLE" gives "É"
     * to the lower+ run and "COLE" to the next word; a combining mark is no letter: it
     * leads the next word as the optional prefix. */
    split_join(ess_unicode_split_tekken, "a\xc3\x89" "b \xc7\x85" "ab e\xcc\x81t", out);
    ESS_CHECK_STR(out, "a\xc3\x89" "b| \xc7\x85" "ab| e|\xcc\x81t");
    split_join(ess_unicode_split_tekken, "\xc3\x89" "COLE \xce\x91\xce\xb2\xce\x93", out);
    ESS_CHECK_STR(out, "\xc3\x89|COLE| \xce\x91\xce\xb2\xce\x93");
    split_join(ess_unicode_split_tekken, "x  \n\n y", out);
    ESS_CHECK_STR(out, "x|  \n\n| y");
}

/* ---- synthetic vocabularies ---- */

/* SPM: <unk> <s> </s>, 256 byte tokens, then a few pieces. */
static int make_spm(loaded *l) {
    const char *toks[300];
    int32_t types[300];
    float scores[300];
    static char names[256][8];
    int n = 0;
    toks[n] = "<unk>"; types[n] = 2; scores[n++] = 0;
    toks[n] = "<s>"; types[n] = 3; scores[n++] = 0;
    toks[n] = "</s>"; types[n] = 3; scores[n++] = 0;
    for (int b = 0; b < 256; b++) {
        snprintf(names[b], sizeof names[b], "<0x%02X>", b);
        toks[n] = names[b]; types[n] = 6; scores[n++] = 0;
    }
    const char *pieces[] = {"\xe2\x96\x81", "a", "b", "\xe2\x96\x81" "a", "ab", "\xe2\x96\x81" "ab"};
    const float sc[] = {-1, -2, -3, -4, -5, -6};
    for (int i = 0; i < 6; i++) { toks[n] = pieces[i]; types[n] = 1; scores[n++] = sc[i]; }
    ess_gguf_writer *w = ess_gguf_w_new(3, 32);
    ess_gguf_w_set_str(w, "tokenizer.ggml.model", "llama");
    ess_gguf_w_set_arr_str(w, "tokenizer.ggml.tokens", toks, (uint64_t)n);
    ess_gguf_w_set_arr(w, "tokenizer.ggml.scores", ESS_GGUF_FLOAT32, scores, (uint64_t)n);
    ess_gguf_w_set_arr(w, "tokenizer.ggml.token_type", ESS_GGUF_INT32, types, (uint64_t)n);
    return load_writer(l, w);
}

ESS_TEST(spm_synthetic_merges_by_score_and_byte_fallback) {
    loaded l;
    ESS_CHECK_MSG(make_spm(&l) == 0, "load: %s", l.err.msg);
    int32_t ids[32];
    /* "ab" -> "▁ab": ▁+a (-4) merges before a+b (-5), then ▁a+b makes ▁ab (BOS first).
     * "b a" -> "▁b▁a": ▁b is no token, so ▁ b ▁a. */
    int n = ess_tok_encode(l.tok, "ab", 2, 1, 0, ids, 32);
    const int32_t want[] = {1, 264};
    if (!ids_equal(ids, n, want, 2)) print_ids("got", ids, n);
    ESS_CHECK(ids_equal(ids, n, want, 2));
    n = ess_tok_encode(l.tok, "b a", 3, 0, 0, ids, 32);
    const int32_t want1[] = {259, 261, 262};
    if (!ids_equal(ids, n, want1, 3)) print_ids("got", ids, n);
    ESS_CHECK(ids_equal(ids, n, want1, 3));
    /* Unknown characters fall back to <0xNN> bytes (id 3 + byte). */
    n = ess_tok_encode(l.tok, "\xc3\xa9", 2, 0, 0, ids, 32);
    const int32_t want2[] = {259, 3 + 0xC3, 3 + 0xA9};
    ESS_CHECK(ids_equal(ids, n, want2, 3));
    char buf[64];
    ESS_CHECK_EQ_INT(ess_tok_piece(l.tok, 262, 0, buf, sizeof buf), 2);
    ESS_CHECK(memcmp(buf, " a", 2) == 0);
    ESS_CHECK_EQ_INT(ess_tok_piece(l.tok, 1, 0, buf, sizeof buf), 0);   /* control: "" */
    ESS_CHECK_EQ_INT(ess_tok_piece(l.tok, 1, 1, buf, sizeof buf), 3);   /* unless special */
    ESS_CHECK_EQ_INT(ess_tok_piece(l.tok, 3 + 0xC3, 0, buf, sizeof buf), 1);
    ESS_CHECK_EQ_INT((uint8_t)buf[0], 0xC3);
    /* snprintf-style: a short buffer still reports the full count. */
    ESS_CHECK_EQ_INT(ess_tok_encode(l.tok, "ab", 2, 1, 0, ids, 1), 2);
    ESS_CHECK_EQ_INT(ids[0], 1);
    unload(&l);
}

ESS_TEST(stream_holds_utf8_split_across_byte_tokens) {
    loaded l;
    ESS_CHECK_MSG(make_spm(&l) == 0, "load: %s", l.err.msg);
    /* "é€" -> ▁ then bytes C3 A9 E2 82 AC: each character is complete only at its last byte. */
    int32_t ids[16];
    int n = ess_tok_encode(l.tok, "\xc3\xa9\xe2\x82\xac", 5, 1, 0, ids, 16);
    const int32_t want[] = {1, 259, 3 + 0xC3, 3 + 0xA9, 3 + 0xE2, 3 + 0x82, 3 + 0xAC};
    ESS_CHECK(ids_equal(ids, n, want, 7));
    ess_tok_stream s;
    ess_tok_stream_init(&s, l.tok, 1, 0);
    char out[64];
    const int expect_len[] = {0, 0, 0, 2, 0, 0, 3}; /* BOS, ▁ (stripped), C3, A9, E2, 82, AC */
    int total = 0;
    for (int i = 0; i < n; i++) {
        int k = ess_tok_stream_push(l.tok, &s, ids[i], out + total, (int)sizeof out - total);
        ESS_CHECK_MSG(k == expect_len[i], "token %d gave %d bytes, expected %d", i, k, expect_len[i]);
        total += k;
    }
    ESS_CHECK_EQ_INT(total, 5);
    ESS_CHECK(memcmp(out, "\xc3\xa9\xe2\x82\xac", 5) == 0);
    ESS_CHECK_EQ_INT(ess_tok_stream_flush(&s, out, sizeof out), 0);
    /* An unfinished character is held, a later ASCII byte releases it as is, flush gives
     * what is left; a too-small buffer leaves the stream untouched. */
    ess_tok_stream_init(&s, l.tok, 0, 0);
    ESS_CHECK_EQ_INT(ess_tok_stream_push(l.tok, &s, 3 + 0xE2, out, sizeof out), 0);
    ESS_CHECK_EQ_INT(ess_tok_stream_push(l.tok, &s, 3 + 0x82, out, 1), ESS_ERANGE);
    ESS_CHECK_EQ_INT(ess_tok_stream_push(l.tok, &s, 3 + 0x82, out, sizeof out), 0);
    ESS_CHECK_EQ_INT(ess_tok_stream_push(l.tok, &s, 3 + 'x', out, sizeof out), 3);
    ESS_CHECK(memcmp(out, "\xe2\x82x", 3) == 0);
    ESS_CHECK_EQ_INT(ess_tok_stream_push(l.tok, &s, 3 + 0xF0, out, sizeof out), 0);
    ESS_CHECK_EQ_INT(ess_tok_stream_flush(&s, out, sizeof out), 1);
    ESS_CHECK_EQ_INT((uint8_t)out[0], 0xF0);
    unload(&l);
}

/* A Tekken-style BPE vocabulary: ids 0..255 are the byte-level characters of bytes 0..255,
 * then whole words that the split must produce, and three merges building "Hell". */
enum { TK_HELLO = 256, TK_WORLD, TK_OK, TK_PUNCT, TK_HE, TK_LL, TK_HELL, TK_BOS, TK_N };

static int make_tekken(loaded *l, const char *pre, int bad_merge) {
    static char texts[TK_N][16];
    const char *toks[TK_N];
    int32_t types[TK_N];
    for (int b = 0; b < 256; b++) {
        char raw[2] = {(char)b, 0};
        if (b == 0) { /* bytelevel() stops at NUL: byte 0 maps to U+0100 */
            memcpy(texts[0], "\xc4\x80", 3);
        } else bytelevel(raw, texts[b]);
        types[b] = 1;
    }
    const char *words[] = {"Hello", "WORLD", " ok", "!!//\n", "He", "ll", "Hell"};
    for (int i = 0; i < 7; i++) { bytelevel(words[i], texts[TK_HELLO + i]); types[TK_HELLO + i] = 1; }
    strcpy(texts[TK_BOS], "<s>");
    types[TK_BOS] = 3;
    for (int i = 0; i < TK_N; i++) toks[i] = texts[i];
    const char *merges[] = {"H e", "l l", bad_merge ? "He zz" : "He ll"};
    ess_gguf_writer *w = ess_gguf_w_new(3, 32);
    ess_gguf_w_set_str(w, "tokenizer.ggml.model", "gpt2");
    ess_gguf_w_set_str(w, "tokenizer.ggml.pre", pre);
    ess_gguf_w_set_arr_str(w, "tokenizer.ggml.tokens", toks, TK_N);
    ess_gguf_w_set_arr(w, "tokenizer.ggml.token_type", ESS_GGUF_INT32, types, TK_N);
    ess_gguf_w_set_arr_str(w, "tokenizer.ggml.merges", merges, 3);
    ess_gguf_w_set_u32(w, "tokenizer.ggml.bos_token_id", TK_BOS);
    return load_writer(l, w);
}

ESS_TEST(tekken_synthetic_vocab_split_and_merges) {
    loaded l;
    ESS_CHECK_MSG(make_tekken(&l, "tekken", 0) == 0, "load: %s", l.err.msg);
    ESS_CHECK_EQ_INT(ess_tok_get_pre(l.tok), ESS_TOK_PRE_TEKKEN);
    ESS_CHECK_EQ_INT(ess_tok_add_bos(l.tok), 1);
    const char *text = "HelloWORLD 2024 ok!!//\nHellx";
    int32_t ids[64];
    int n = ess_tok_encode(l.tok, text, strlen(text), 1, 0, ids, 64);
    /* Whole words found in the vocabulary are taken as they are (ignore_merges); "Hellx"
     * goes through the merges H+e, l+l, He+ll. */
    const int32_t want[] = {TK_BOS, TK_HELLO, TK_WORLD, ' ', '2', '0', '2', '4', TK_OK, TK_PUNCT, TK_HELL, 'x'};
    if (!ids_equal(ids, n, want, 12)) print_ids("got", ids, n);
    ESS_CHECK(ids_equal(ids, n, want, 12));
    char out[128];
    int m = stream_text(l.tok, ids, n, out, sizeof out);
    ESS_CHECK_EQ_INT(m, (int)strlen(text));
    ESS_CHECK(memcmp(out, text, (size_t)m) == 0);
    unload(&l);
}

ESS_TEST(bpe_invalid_utf8_becomes_replacement_character) {
    loaded l;
    ESS_CHECK_MSG(make_tekken(&l, "llama-bpe", 0) == 0, "load: %s", l.err.msg);
    int32_t ids[64];
    /* 0xFF alone is invalid: llama.cpp turns it into U+FFFD (EF BF BD) before the byte map. */
    int n = ess_tok_encode(l.tok, "a\xff", 2, 0, 0, ids, 64);
    const int32_t want[] = {'a', 0xEF, 0xBF, 0xBD};
    if (!ids_equal(ids, n, want, 4)) print_ids("got", ids, n);
    ESS_CHECK(ids_equal(ids, n, want, 4));
    unload(&l);
}

ESS_TEST(random_bytes_encode_without_crashing) {
    loaded spm, bpe;
    ESS_CHECK_MSG(make_spm(&spm) == 0, "load: %s", spm.err.msg);
    ESS_CHECK_MSG(make_tekken(&bpe, "tekken", 0) == 0, "load: %s", bpe.err.msg);
    ess_rng r;
    ess_rng_seed(&r, 1234);
    char text[200], back[1200];
    int32_t ids[1000];
    for (int iter = 0; iter < 200; iter++) {
        size_t len = ess_rng_below(&r, sizeof text);
        /* No spaces: llama.cpp escapes ' ' to U+2581 before cutting characters, so a space
         * after a lone lead byte comes back as the bytes of U+2581 (it does the same). */
        for (size_t i = 0; i < len; i++) {
            text[i] = (char)ess_rng_u64(&r);
            if (text[i] == ' ') text[i] = 'x';
        }
        int n = ess_tok_encode(spm.tok, text, len, 0, 1, ids, 1000);
        ESS_CHECK(n >= 0 && n <= 1000);
        ESS_CHECK(len == 0 || n > 0);
        /* SPM byte fallback keeps every byte, valid UTF-8 or not. */
        int m = stream_text(spm.tok, ids, n, back, sizeof back);
        ESS_CHECK_EQ_INT(m, (int)len);
        ESS_CHECK(len == 0 || memcmp(back, text, len) == 0);
        n = ess_tok_encode(bpe.tok, text, len, 1, 1, ids, 1000);
        ESS_CHECK(n >= 1 && n <= 1000);
        ESS_CHECK(stream_text(bpe.tok, ids, n, back, sizeof back) >= 0);
    }
    unload(&spm);
    unload(&bpe);
}

/* ---- bad metadata ---- */

ESS_TEST(bad_metadata_token_type_count_mismatch) {
    const char *toks[] = {"<unk>", "<s>", "</s>", "a"};
    int32_t types[] = {2, 3, 3};
    ess_gguf_writer *w = ess_gguf_w_new(3, 32);
    ess_gguf_w_set_str(w, "tokenizer.ggml.model", "llama");
    ess_gguf_w_set_arr_str(w, "tokenizer.ggml.tokens", toks, 4);
    ess_gguf_w_set_arr(w, "tokenizer.ggml.token_type", ESS_GGUF_INT32, types, 3);
    loaded l;
    ESS_CHECK_EQ_INT(load_writer(&l, w), ESS_EFORMAT);
    ESS_CHECK_MSG(strstr(l.err.msg, "tokenizer.ggml.token_type has 3 entries but tokenizer.ggml.tokens has 4"), "%s", l.err.msg);
    unload(&l);
}

ESS_TEST(bad_metadata_merge_references_unknown_token) {
    loaded l;
    ESS_CHECK_EQ_INT(make_tekken(&l, "tekken", 1), ESS_EFORMAT);
    ESS_CHECK_MSG(strstr(l.err.msg, "tokenizer.ggml.merges[2] \"He zz\": \"zz\" is not a token"), "%s", l.err.msg);
    unload(&l);
}

ESS_TEST(bad_metadata_missing_tokens_array) {
    ess_gguf_writer *w = ess_gguf_w_new(3, 32);
    ess_gguf_w_set_str(w, "tokenizer.ggml.model", "llama");
    loaded l;
    ESS_CHECK_EQ_INT(load_writer(&l, w), ESS_EFORMAT);
    ESS_CHECK_STR(l.err.msg, "tokenizer.ggml.tokens is missing");
    unload(&l);
}

ESS_TEST(bad_metadata_unsupported_model_and_pre) {
    loaded l;
    ESS_CHECK_EQ_INT(make_tekken(&l, "qwen2", 0), ESS_EUNSUP);
    ESS_CHECK_MSG(strstr(l.err.msg, "tokenizer.ggml.pre \"qwen2\" is not supported"), "%s", l.err.msg);
    unload(&l);
    const char *toks[] = {"a"};
    ess_gguf_writer *w = ess_gguf_w_new(3, 32);
    ess_gguf_w_set_str(w, "tokenizer.ggml.model", "t5");
    ess_gguf_w_set_arr_str(w, "tokenizer.ggml.tokens", toks, 1);
    ESS_CHECK_EQ_INT(load_writer(&l, w), ESS_EUNSUP);
    ESS_CHECK_MSG(strstr(l.err.msg, "\"t5\" is not supported"), "%s", l.err.msg);
    unload(&l);
}

/* ---- real vocabularies ---- */

/* Runs every case of vocab/<name>.gguf.inp/.out; returns the number of failures (-1 skip). */
static int run_vocab_vectors(const char *name, int *n_cases) {
    char path[256];
    loaded l;
    snprintf(path, sizeof path, "vocab/%s.gguf", name);
    if (!load_model(&l, path)) return -1;
    if (!l.tok) { fprintf(stderr, "    %s: %s\n", path, l.err.msg); return 1000; }
    snprintf(path, sizeof path, "vocab/%s.gguf.inp", name);
    const char *pi = ess_test_model(path);
    snprintf(path, sizeof path, "vocab/%s.gguf.out", name);
    const char *po = ess_test_model(path);
    size_t ni, no;
    char *inp = pi ? (char *)read_file(pi, &ni) : NULL, *outp = po ? (char *)read_file(po, &no) : NULL;
    if (!inp || !outp) { free(inp); free(outp); unload(&l); return 1000; }
    static const char sep[] = "\n__ggml_vocab_test__\n";
    int fails = 0, cases = 0;
    char *text = inp, *line = outp;
    int32_t *ids = malloc(4096 * sizeof *ids), want[4096];
    char *back = malloc(1 << 16);
    for (;;) {
        char *end = strstr(text, sep);
        if (!end || !*line) break;
        size_t len = (size_t)(end - text);
        char *eol = strchr(line, '\n');
        if (eol) *eol = 0;
        int nw = 0;
        for (char *p = line; *p;) {
            char *q;
            long v = strtol(p, &q, 10);
            if (q == p) break;
            want[nw++] = (int32_t)v;
            p = q;
        }
        int n = ess_tok_encode(l.tok, text, len, 0, 0, ids, 4096);
        if (!ids_equal(ids, n, want, nw)) {
            fails++;
            fprintf(stderr, "    %s case %d \"%.*s\"\n", name, cases, (int)len, text);
            print_ids("got ", ids, n);
            print_ids("want", want, nw);
        } else {
            /* Round trip: the pieces give the text back (SPM: minus the prefix space). */
            int m = stream_text(l.tok, ids, n, back, 1 << 16);
            if (m != (int)len || memcmp(back, text, len) != 0) {
                fails++;
                fprintf(stderr, "    %s case %d round trip gave \"%.*s\"\n", name, cases, m, back);
            }
        }
        cases++;
        text = end + sizeof sep - 1;
        line = eol ? eol + 1 : line + strlen(line);
    }
    *n_cases = cases;
    free(ids);
    free(back);
    free(inp);
    free(outp);
    unload(&l);
    return fails;
}

ESS_TEST(vocab_llama_spm_all_vectors_and_round_trip) {
    int cases = 0, f = run_vocab_vectors("ggml-vocab-llama-spm", &cases);
    if (f < 0) return;
    ESS_CHECK_EQ_INT(f, 0);
    ESS_CHECK_EQ_INT(cases, 46);
}

ESS_TEST(vocab_llama_bpe_all_vectors_and_round_trip) {
    int cases = 0, f = run_vocab_vectors("ggml-vocab-llama-bpe", &cases);
    if (f < 0) return;
    ESS_CHECK_EQ_INT(f, 0);
    ESS_CHECK_EQ_INT(cases, 46);
}

ESS_TEST(vocab_phi3_all_vectors_and_round_trip) {
    int cases = 0, f = run_vocab_vectors("ggml-vocab-phi-3", &cases);
    if (f < 0) return;
    ESS_CHECK_EQ_INT(f, 0);
    ESS_CHECK_EQ_INT(cases, 46);
}

ESS_TEST(stories260k_once_upon_a_time_with_bos) {
    loaded l;
    if (!load_model(&l, "stories260K.gguf")) return;
    ESS_CHECK_MSG(l.tok, "%s", l.err.msg);
    int32_t ids[16];
    int n = ess_tok_encode(l.tok, "Once upon a time", 16, 1, 0, ids, 16);
    const int32_t want[] = {1, 403, 407, 261, 378};
    if (!ids_equal(ids, n, want, 5)) print_ids("got", ids, n);
    ESS_CHECK(ids_equal(ids, n, want, 5));
    ESS_CHECK_EQ_INT(ess_tok_n_vocab(l.tok), 512);
    ESS_CHECK_EQ_INT(ess_tok_eos(l.tok), 2);
    ESS_CHECK(ess_tok_is_eog(l.tok, 2));
    char out[64];
    /* llama_detokenize: no BOS removal -> BOS renders "" and the leading space stays... */
    int m = ess_tok_detokenize(l.tok, ids, n, 0, 0, out, sizeof out);
    ESS_CHECK_EQ_INT(m, 17);
    ESS_CHECK(memcmp(out, " Once upon a time", 17) == 0);
    /* ...without BOS the first piece loses it. */
    m = ess_tok_detokenize(l.tok, ids + 1, n - 1, 0, 0, out, sizeof out);
    ESS_CHECK_EQ_INT(m, 16);
    ESS_CHECK(memcmp(out, "Once upon a time", 16) == 0);
    unload(&l);
}

ESS_TEST(llama_bpe_special_tokens_and_eog) {
    loaded l;
    if (!load_model(&l, "vocab/ggml-vocab-llama-bpe.gguf")) return;
    ESS_CHECK_MSG(l.tok, "%s", l.err.msg);
    ESS_CHECK_EQ_INT(ess_tok_bos(l.tok), 128000);
    ESS_CHECK_EQ_INT(ess_tok_add_bos(l.tok), 1);
    ESS_CHECK_EQ_INT(ess_tok_find(l.tok, "<|eot_id|>", 10), 128009);
    ESS_CHECK_EQ_INT(ess_tok_eot(l.tok), 128009);
    ESS_CHECK(ess_tok_is_eog(l.tok, 128009));
    ESS_CHECK(ess_tok_is_eog(l.tok, 128001));
    ESS_CHECK(!ess_tok_is_eog(l.tok, 9906));
    const char *text = "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>";
    int32_t ids[64];
    int n = ess_tok_encode(l.tok, text, strlen(text), 1, 1, ids, 64);
    const int32_t want[] = {128000, 128006, 882, 128007, 271, 9906, 128009};
    if (!ids_equal(ids, n, want, 7)) print_ids("got", ids, n);
    ESS_CHECK(ids_equal(ids, n, want, 7));
    /* Without parse_special the markers are plain text. */
    n = ess_tok_encode(l.tok, "<|eot_id|>", 10, 0, 0, ids, 64);
    ESS_CHECK(n > 1);
    for (int i = 0; i < n; i++) ESS_CHECK(ids[i] < 128000);
    /* Control tokens render only when asked. */
    char out[64];
    ESS_CHECK_EQ_INT(ess_tok_piece(l.tok, 128009, 0, out, sizeof out), 0);
    ESS_CHECK_EQ_INT(ess_tok_piece(l.tok, 128009, 1, out, sizeof out), 10);
    /* llama_detokenize's clean_spaces for llama3: " ," -> ",". */
    n = ess_tok_encode(l.tok, "Hello , world", 13, 0, 0, ids, 64);
    int m = ess_tok_detokenize(l.tok, ids, n, 0, 0, out, sizeof out);
    ESS_CHECK_EQ_INT(m, 12);
    ESS_CHECK(memcmp(out, "Hello, world", 12) == 0);
    unload(&l);
}

/* Ids checked against llama.cpp (node-llama-cpp 3.22.1, llama_tokenize without BOS). */
ESS_TEST(phi3_special_tokens_rstrip_and_eog_like_llama_cpp) {
    loaded l;
    if (!load_model(&l, "vocab/ggml-vocab-phi-3.gguf")) return;
    ESS_CHECK_MSG(l.tok, "%s", l.err.msg);
    int32_t ids[64];
    /* </s> is user-defined in the file but on llama.cpp's end-of-generation list, so it
     * becomes control: plain text without parse_special, a token (eating the space after
     * it, Phi-3's rstrip) with it. */
    ESS_CHECK(ess_tok_is_eog(l.tok, 2));
    ESS_CHECK(ess_tok_is_eog(l.tok, 32007)); /* <|end|> */
    int n = ess_tok_encode(l.tok, "</s> after", 10, 0, 0, ids, 64);
    const int32_t want0[] = {1533, 29879, 29958, 1156};
    ESS_CHECK(ids_equal(ids, n, want0, 4));
    n = ess_tok_encode(l.tok, "</s> after", 10, 0, 1, ids, 64);
    const int32_t want1[] = {2, 1156};
    ESS_CHECK(ids_equal(ids, n, want1, 2));
    const char *chat = "<|user|>\nHi there<|end|>\n<|assistant|>";
    n = ess_tok_encode(l.tok, chat, strlen(chat), 0, 1, ids, 64);
    const int32_t want2[] = {32010, 6324, 727, 32007, 32001};
    if (!ids_equal(ids, n, want2, 5)) print_ids("got", ids, n);
    ESS_CHECK(ids_equal(ids, n, want2, 5));
    unload(&l);
}

int main(int argc, char **argv) { return ess_test_main(argc, argv); }
