/* unicode.c - UTF-8 coding, class lookup and the pre-tokenizer splitters (see unicode.h). */
#include "unicode.h"

unsigned ess_unicode_flags(uint32_t cp) {
    if (cp > 0x10FFFF) return 0;
    /* Binary search for the last run starting at or before cp. Run 0 starts at 0. */
    size_t lo = 0, hi = ess_unicode_n_runs;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if ((ess_unicode_runs[mid] >> 8) <= cp) lo = mid;
        else hi = mid;
    }
    return ess_unicode_runs[lo] & 0xFF;
}

uint32_t ess_utf8_decode(const uint8_t *s, size_t n, size_t *used) {
    uint8_t c = s[0];
    *used = 1;
    if (c < 0x80) return c;
    /* Same acceptance as llama.cpp: a lead byte and enough continuation bytes; overlong
     * forms and surrogates pass, so that our cuts match its cuts byte for byte. */
    size_t len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (len == 0 || len > n) return ESS_UNICODE_REPLACEMENT;
    uint32_t cp = c & (0xFFu >> (len + 1));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return ESS_UNICODE_REPLACEMENT;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    *used = len;
    return cp;
}

size_t ess_utf8_encode(uint32_t cp, uint8_t out[4]) {
    if (cp < 0x80) { out[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp > 0x10FFFF) cp = ESS_UNICODE_REPLACEMENT;
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- splitters ---- */

typedef struct {
    const uint32_t *cps;
    size_t n;
    uint32_t *lens;
    size_t n_words, prev_end;
} splitter;

/* Flags at pos, 0 past the end (so every class test fails there, as the regex's would). */
static unsigned fl(const splitter *s, size_t pos) { return pos < s->n ? ess_unicode_flags(s->cps[pos]) : 0; }
static uint32_t cp_at(const splitter *s, size_t pos) { return pos < s->n ? s->cps[pos] : 0xFFFFFFFFu; }
static int is_rn(uint32_t c) { return c == '\r' || c == '\n'; }
/* [^\s\p{L}\p{N}] at pos (false past the end). */
static int is_other(const splitter *s, size_t pos) {
    return pos < s->n && !(fl(s, pos) & (ESS_UC_WS | ESS_UC_L | ESS_UC_N));
}

/* Ends the current word at `end` (empty words are dropped) and returns end. */
static size_t add_word(splitter *s, size_t end) {
    if (end > s->prev_end) s->lens[s->n_words++] = (uint32_t)(end - s->prev_end);
    s->prev_end = end;
    return end;
}

/* The three white-space alternatives shared by both expressions:
 * \s*[\r\n]+ | \s+(?!\S) | \s+ . Returns the end, or pos when there is no white space. */
static size_t match_spaces(const splitter *s, size_t pos) {
    size_t run = 0, last_rn = 0;
    while (fl(s, pos + run) & ESS_UC_WS) {
        if (is_rn(s->cps[pos + run])) last_rn = pos + run + 1;
        run++;
    }
    if (last_rn) return last_rn;
    /* Backtracking \s+ gives up its last space so that (?!\S) holds, unless at the end. */
    if (run > 1 && pos + run < s->n) return pos + run - 1;
    return pos + run;
}

size_t ess_unicode_split_llama3(const uint32_t *cps, size_t n, uint32_t *lens) {
    splitter s = {cps, n, lens, 0, 0};
    size_t pos = 0;
    while (pos < n) {
        uint32_t c = cps[pos];
        unsigned f = fl(&s, pos);

        /* (?i:'s|'t|'re|'ve|'m|'ll|'d): only ASCII letters lower-case to these. */
        if (c == '\'' && pos + 1 < n) {
            uint32_t c1 = cps[pos + 1] | (cps[pos + 1] >= 'A' && cps[pos + 1] <= 'Z' ? 0x20 : 0);
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') { pos = add_word(&s, pos + 2); continue; }
            if (pos + 2 < n) {
                uint32_t c2 = cps[pos + 2] | (cps[pos + 2] >= 'A' && cps[pos + 2] <= 'Z' ? 0x20 : 0);
                if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
                    pos = add_word(&s, pos + 3);
                    continue;
                }
            }
        }
        /* [^\r\n\p{L}\p{N}]?\p{L}+ */
        if (!is_rn(c) && !(f & ESS_UC_N) && ((f & ESS_UC_L) || (fl(&s, pos + 1) & ESS_UC_L))) {
            pos++;
            while (fl(&s, pos) & ESS_UC_L) pos++;
            add_word(&s, pos);
            continue;
        }
        /* \p{N}{1,3} */
        if (f & ESS_UC_N) {
            size_t ini = pos;
            while (fl(&s, pos) & ESS_UC_N) {
                if (++pos - ini >= 3) { add_word(&s, pos); ini = pos; }
            }
            add_word(&s, pos);
            continue;
        }
        /* " ?[^\s\p{L}\p{N}]+[\r\n]*" */
        size_t t = (c == ' ') ? pos + 1 : pos;
        if (is_other(&s, t)) {
            while (is_other(&s, t)) t++;
            while (is_rn(cp_at(&s, t))) t++;
            pos = add_word(&s, t);
            continue;
        }
        size_t e = match_spaces(&s, pos);
        pos = add_word(&s, e > pos ? e : pos + 1); /* no alternative matched: one code point */
    }
    return s.n_words;
}

/* Tekken's case classes as llama.cpp evaluates them. Its llama-vocab.cpp rewrites Mistral's
 * [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] as ((?=[\p{L}])([^a-z])) and [\p{Ll}\p{Lm}\p{Lo}\p{M}] as
 * ((?=[\p{L}])([^A-Z])), run by std::regex over text where every non-ASCII code point is
 * replaced by a byte for its category. So "upper" is a letter outside a-z, "lower" a letter
 * outside A-Z: every non-ASCII letter is both, and marks (\p{M}, not letters there) are
 * neither and fall to the punctuation alternative. */
static int tk_upper(const splitter *s, size_t pos) {
    return (fl(s, pos) & ESS_UC_L) && !(s->cps[pos] >= 'a' && s->cps[pos] <= 'z');
}
static int tk_lower(const splitter *s, size_t pos) {
    return (fl(s, pos) & ESS_UC_L) && !(s->cps[pos] >= 'A' && s->cps[pos] <= 'Z');
}
/* [^\r\n\p{L}\p{N}] */
static int tk_prefix(const splitter *s, size_t pos) {
    return pos < s->n && !is_rn(s->cps[pos]) && !(fl(s, pos) & (ESS_UC_L | ESS_UC_N));
}

/* upper*lower+ from pos, with the regex's backtracking: the greedy upper run either is
 * followed by lower letters (take them all), or gives back letters until one of them is also
 * lower, which then ends the match. Returns the end, or pos when it does not match. */
static size_t tk_upper_star_lower_plus(const splitter *s, size_t pos) {
    size_t e = pos;
    while (tk_upper(s, e)) e++;
    if (tk_lower(s, e)) {
        while (tk_lower(s, e)) e++;
        return e;
    }
    for (size_t j = e; j > pos; j--)
        if (tk_lower(s, j - 1)) return j;
    return pos;
}

/* upper+lower* from pos; returns the end, or pos when it does not match. */
static size_t tk_upper_plus_lower_star(const splitter *s, size_t pos) {
    size_t e = pos;
    while (tk_upper(s, e)) e++;
    if (e == pos) return pos;
    while (tk_lower(s, e)) e++;
    return e;
}

/* The end of the leftmost-first match at pos, or pos when no alternative matches. */
static size_t tk_match(const splitter *s, size_t pos) {
    size_t e;
    int pre = tk_prefix(s, pos);
    /* Alternatives 1 and 2, each trying the optional prefix first. */
    if (pre && (e = tk_upper_star_lower_plus(s, pos + 1)) > pos + 1) return e;
    if ((e = tk_upper_star_lower_plus(s, pos)) > pos) return e;
    if (pre && (e = tk_upper_plus_lower_star(s, pos + 1)) > pos + 1) return e;
    if ((e = tk_upper_plus_lower_star(s, pos)) > pos) return e;
    /* \p{N} */
    if (fl(s, pos) & ESS_UC_N) return pos + 1;
    /* " ?[^\s\p{L}\p{N}]+[\r\n/]*" */
    size_t t = (s->cps[pos] == ' ') ? pos + 1 : pos;
    if (is_other(s, t)) {
        while (is_other(s, t)) t++;
        while (t < s->n && (is_rn(s->cps[t]) || s->cps[t] == '/')) t++;
        return t;
    }
    return match_spaces(s, pos);
}

size_t ess_unicode_split_tekken(const uint32_t *cps, size_t n, uint32_t *lens) {
    splitter s = {cps, n, lens, 0, 0};
    size_t pos = 0;
    while (pos < n) {
        size_t e = tk_match(&s, pos);
        pos = add_word(&s, e > pos ? e : pos + 1);
    }
    return s.n_words;
}
