/* chat.h - chat templates: a list of {role, content} messages rendered into the prompt
 * text a chat model was trained on, the stop strings of each template, and a helper that
 * tells a streaming printer how much of the output is safe to show.
 *
 * The templates are llama.cpp's built-in ones (llm_chat_apply_template) and render byte
 * for byte what it renders, with its names: the BOS token is not in the text (the
 * tokenizer adds it), except where llama.cpp's own template writes "<s>" (llama2-sys-bos).
 * Detection from a GGUF's tokenizer.chat_template (a Jinja text) uses llama.cpp's
 * substring heuristics. Where essaim departs from llama.cpp, docs/chat-templates.md says
 * why: "zephyr" ends turns with "</s>" as TinyLlama's template does ("zephyr-endoftext"
 * is llama.cpp's "zephyr"); Mistral v7 templates without spaces are detected as
 * "mistral-v7-tekken"; "alpaca" and "plain" are ours.
 *
 * What it does not do: run Jinja, tools or multimodal content; it allocates nothing and
 * keeps no state. */
#ifndef ESS_CHAT_H
#define ESS_CHAT_H

#include <stddef.h>

#include "ess.h"

typedef enum {
    ESS_CHAT_PLAIN = 0,         /* "User: ...\nAssistant:", the fallback */
    ESS_CHAT_LLAMA2,            /* [INST] ... [/INST], system folded into the first turn */
    ESS_CHAT_LLAMA2_SYS,        /* [INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] */
    ESS_CHAT_LLAMA2_SYS_BOS,    /* the same with "<s>" before every later [INST] */
    ESS_CHAT_LLAMA2_SYS_STRIP,  /* the same with each message trimmed */
    ESS_CHAT_MISTRAL_V1,        /* " [INST] ... [/INST] ..." */
    ESS_CHAT_MISTRAL_V3,        /* "[INST] ...[/INST] ..." */
    ESS_CHAT_MISTRAL_V3_TEKKEN, /* "[INST]...[/INST]..." */
    ESS_CHAT_MISTRAL_V7,        /* "[SYSTEM_PROMPT] ...[/SYSTEM_PROMPT][INST] ...[/INST]" */
    ESS_CHAT_MISTRAL_V7_TEKKEN, /* the same without the spaces (Mistral Small 3, Magistral) */
    ESS_CHAT_CHATML,            /* <|im_start|>role\n...<|im_end|>\n */
    ESS_CHAT_ZEPHYR,            /* <|role|>\n...</s>\n (TinyLlama, zephyr-7b) */
    ESS_CHAT_ZEPHYR_ENDOFTEXT,  /* <|role|>\n...<|endoftext|>\n (StableLM zephyr) */
    ESS_CHAT_LLAMA3,            /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    ESS_CHAT_GEMMA,             /* <start_of_turn>user\n...<end_of_turn>\n, system merged */
    ESS_CHAT_ALPACA,            /* ### Instruction:\n...\n\n### Response:\n */
    ESS_CHAT_COUNT
} ess_chat_tmpl;

typedef struct {
    const char *role;    /* "system", "user", "assistant" (others as each template says) */
    const char *content; /* UTF-8, NUL-terminated */
} ess_chat_msg;

/* The template a Jinja chat template (tokenizer.chat_template) stands for, or a template
 * name given instead of Jinja (as llama.cpp accepts). Returns an ess_chat_tmpl, or
 * ESS_ENOTFOUND when jinja is NULL, empty or not recognised (callers then fall back to
 * ESS_CHAT_PLAIN, or to a --template the user names). */
int ess_chat_detect(const char *jinja);

/* The name of a template ("chatml", "mistral-v7-tekken", ...), or NULL for a bad id. */
const char *ess_chat_name(int tmpl);

/* The template with that name, or ESS_ENOTFOUND. */
int ess_chat_from_name(const char *name);

/* Renders msgs[0..n) with template tmpl into out (cap bytes, always NUL-terminated when
 * cap > 0, truncated if short) and returns the length of the whole rendering, without the
 * NUL, like snprintf: call with cap 0 to size a buffer. add_assistant appends the opening
 * of the assistant's turn where the template has one (llama2 and mistral templates end
 * the user's turn with [/INST] and add nothing). Returns ESS_EINVAL for a bad template
 * id, n < 0, a NULL role or content, or out NULL with cap > 0; ESS_ERANGE when the
 * rendering would exceed INT_MAX bytes. */
int ess_chat_render(int tmpl, const ess_chat_msg *msgs, int n, int add_assistant, char *out, size_t cap);

/* The strings that end the assistant's turn in template tmpl, as a NULL-terminated list
 * (at least one entry), for generation to stop at even when the model spells the end of
 * turn as text rather than as its EOS/EOT token. NULL for a bad id. */
const char *const *ess_chat_stop_strings(int tmpl);

/* Streaming stop check. text[0..n) is the whole output so far; every byte before `from`
 * is known not to start a stop string (pass the previous return value, 0 at first).
 * Returns how many bytes of text are safe to show: if a stop string occurs, the offset
 * where the first one starts (and *stopped = 1); otherwise n minus the longest tail that
 * is the start of some stop string, or an incomplete UTF-8 sequence, both of which the
 * next tokens may complete (*stopped = 0). When generation ends without a stop, the
 * caller shows the rest. stops is a NULL-terminated list (empty strings are ignored). */
size_t ess_chat_stop_scan(const char *text, size_t n, size_t from, const char *const *stops, int *stopped);

#endif
