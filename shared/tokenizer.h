/* tokenizer.h - text <-> token ids from a GGUF's tokenizer.ggml.* metadata, matching
 * llama.cpp's llama_tokenize / llama_token_to_piece / llama_detokenize.
 *
 * Supported: tokenizer.ggml.model "llama" (SentencePiece-style: U+2581 for spaces, optional
 * prefix space, bigram merges by score, <0xNN> byte fallback) and "gpt2" (byte-level BPE:
 * pre-tokenizer split, bytes_to_unicode map, merges by rank) with tokenizer.ggml.pre
 * "llama3"/"llama-bpe"/"llama-v3" (and the names llama.cpp treats the same: falcon3,
 * falcon-h1, pixtral, midm-2.0, lfm2) or "tekken". Other models (bert, t5, rwkv, ...) and
 * other BPE pre-tokenizers are refused with ESS_EUNSUP. Special tokens in the text (control,
 * user-defined; with parse_special also control/unknown) are cut out first and kept whole,
 * as llama.cpp's tokenizer_st_partition does. Not done: Unicode normalization (neither
 * model asks for it), remove_extra_whitespaces (read, only used by llama.cpp's T5 tokenizer).
 *
 * Ownership: ess_tok_new reads the metadata through the ess_gguf and then needs only the
 * buffer the GGUF was parsed from: token texts are borrowed from it (zero-copy), so that
 * buffer (the mapped file, or fragment 0) must outlive the tokenizer; the ess_gguf struct
 * itself may be freed. The tokenizer owns its hash tables, scores and attributes.
 *
 * Thread safety: after ess_tok_new the tokenizer is read-only; encode and decode allocate
 * their scratch per call, so any number of threads may use one tokenizer. */
#ifndef ESS_TOKENIZER_H
#define ESS_TOKENIZER_H

#include "ess.h"
#include "gguf.h"

typedef struct ess_tokenizer ess_tokenizer;

typedef enum { ESS_TOK_SPM = 1, ESS_TOK_BPE = 2 } ess_tok_type;
typedef enum { ESS_TOK_PRE_DEFAULT = 0, ESS_TOK_PRE_LLAMA3 = 1, ESS_TOK_PRE_TEKKEN = 2 } ess_tok_pre;

/* Token attributes, llama.cpp's llama_token_attr bits (from tokenizer.ggml.token_type:
 * 1 normal, 2 unknown, 3 control, 4 user_defined, 5 unused, 6 byte, other = undefined). */
enum {
    ESS_TOK_ATTR_UNDEFINED = 0,
    ESS_TOK_ATTR_UNKNOWN = 1 << 0,
    ESS_TOK_ATTR_UNUSED = 1 << 1,
    ESS_TOK_ATTR_NORMAL = 1 << 2,
    ESS_TOK_ATTR_CONTROL = 1 << 3,
    ESS_TOK_ATTR_USER_DEFINED = 1 << 4,
    ESS_TOK_ATTR_BYTE = 1 << 5,
    ESS_TOK_ATTR_LSTRIP = 1 << 7,  /* eat white space before it when cut out of text */
    ESS_TOK_ATTR_RSTRIP = 1 << 8   /* eat white space after it */
};

/* Caps on what a file may ask for. */
#define ESS_TOK_MAX_VOCAB (1 << 24)
#define ESS_TOK_MAX_TOKEN_BYTES 65536

/* Builds a tokenizer from g's tokenizer.ggml.* keys: model, pre, tokens, scores,
 * token_type, merges (BPE), bos/eos/unknown/seperator/padding/eot/eom_token_id,
 * add_bos_token, add_eos_token, add_space_prefix, remove_extra_whitespaces. Defaults when a
 * key is absent are llama.cpp's: SPM bos 1, eos 2, unk 0, adds BOS, prefix space on; BPE
 * llama3/tekken adds BOS, no prefix space. The end-of-generation set is eos, eot, eom, the
 * FIM pad/repo/file-separator tokens and tokens named <|eot_id|>, <|im_end|>, <|end|>,
 * </s>, <end_of_turn>, <|endoftext|>, <|eom_id|>, <EOT>, <|end_of_text|>, ... (llama.cpp's
 * lists and workarounds, as of 2025; such tokens become control tokens).
 * Returns NULL with e filled (ESS_EFORMAT for missing or inconsistent metadata, naming the
 * key and index; ESS_EUNSUP for unsupported models; ESS_ENOMEM). */
ess_tokenizer *ess_tok_new(ess_gguf *g, ess_err *e);
void ess_tok_free(ess_tokenizer *t); /* NULL is a no-op */

/* Tokenizes text[0..len) (any bytes; invalid UTF-8 is tokenized like llama.cpp does, never
 * rejected). add_special adds BOS/EOS as the file asks; parse_special lets control tokens
 * written in the text ("<|eot_id|>") become those tokens. Writes at most cap ids into out
 * and returns the number of ids the text needs (like snprintf: a result > cap means out was
 * too small and holds the first cap ids), or ESS_ENOMEM / ESS_EINVAL. */
int ess_tok_encode(const ess_tokenizer *t, const char *text, size_t len, int add_special,
                   int parse_special, int32_t *out, int cap);

/* The bytes token id stands for (llama_token_to_piece with lstrip 0): SPM U+2581 -> space,
 * <0xNN> -> that byte; BPE byte-level map reversed; control and unknown tokens give "" unless
 * special, in which case they give their text. Writes at most cap bytes (no NUL) and returns
 * the piece length (a result > cap means buf was too small), or ESS_EINVAL for a bad id. */
int ess_tok_piece(const ess_tokenizer *t, int32_t id, int special, char *buf, int cap);

/* llama_detokenize: the pieces of ids[0..n) concatenated. remove_special drops a leading BOS
 * and a trailing EOS when the model adds them; special renders control tokens. SPM: the
 * first piece loses its leading space (llama.cpp keeps it when a BOS was removed). llama3
 * BPE also applies llama.cpp's clean_spaces (" ," -> ","). Returns the length as
 * ess_tok_piece does (a result > cap means out was too small), or ESS_EINVAL. */
int ess_tok_detokenize(const ess_tokenizer *t, const int32_t *ids, int n, int remove_special,
                       int special, char *out, int cap);

/* Streaming detokenizer for generation: feed ids one by one, get text that only ever holds
 * whole UTF-8 characters; bytes of a character split across tokens are held until it is
 * complete. With strip_leading_space (SPM models with a prefix space) the first piece after
 * an optional BOS loses one leading space, so "Hello" comes back as "Hello". */
typedef struct {
    uint8_t held[4];
    int n_held;
    int strip_space; /* still to strip at the next non-BOS token */
    int special;     /* render control tokens */
} ess_tok_stream;

void ess_tok_stream_init(ess_tok_stream *s, const ess_tokenizer *t, int strip_leading_space, int special);
/* Appends the text of id: writes the complete characters into out and returns their byte
 * count. out needs ess_tok_max_piece(t) + 4 bytes at most; with less than the text needs it
 * returns ESS_ERANGE and leaves the stream unchanged. ESS_EINVAL for a bad id. */
int ess_tok_stream_push(const ess_tokenizer *t, ess_tok_stream *s, int32_t id, char *out, int cap);
/* Ends the stream: writes the held bytes of an unfinished character (raw, 0..3 bytes) and
 * returns their count (ESS_ERANGE if cap is too small). */
int ess_tok_stream_flush(ess_tok_stream *s, char *out, int cap);

/* Accessors. Ids are -1 when the model has none. */
int ess_tok_n_vocab(const ess_tokenizer *t);
ess_tok_type ess_tok_get_type(const ess_tokenizer *t);
ess_tok_pre ess_tok_get_pre(const ess_tokenizer *t);
int32_t ess_tok_bos(const ess_tokenizer *t);
int32_t ess_tok_eos(const ess_tokenizer *t);
int32_t ess_tok_eot(const ess_tokenizer *t);
int32_t ess_tok_unk(const ess_tokenizer *t);
int32_t ess_tok_pad(const ess_tokenizer *t);
int ess_tok_add_bos(const ess_tokenizer *t);
int ess_tok_add_eos(const ess_tokenizer *t);
int ess_tok_add_space_prefix(const ess_tokenizer *t);
int ess_tok_max_piece(const ess_tokenizer *t); /* longest piece in bytes (any special flag) */
unsigned ess_tok_attr(const ess_tokenizer *t, int32_t id); /* 0 for a bad id */
float ess_tok_score(const ess_tokenizer *t, int32_t id);
int ess_tok_is_control(const ess_tokenizer *t, int32_t id);
int ess_tok_is_eog(const ess_tokenizer *t, int32_t id); /* ends generation */
/* The token's text as stored in the file (for chat templates and stop strings), borrowed
 * from the GGUF buffer and not NUL-terminated; NULL for a bad id. */
const char *ess_tok_text(const ess_tokenizer *t, int32_t id, size_t *len);
/* The id whose stored text is exactly text[0..len), or -1. */
int32_t ess_tok_find(const ess_tokenizer *t, const char *text, size_t len);

#endif
