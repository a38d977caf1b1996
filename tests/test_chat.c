/* test_chat.c - chat templates against llama.cpp's test vectors (tests/test-chat-template.cpp:
 * the same six-message conversation, its expected strings), detection from real Jinja
 * templates, stop strings and the streaming stop check. */
#include "test.h"

#include "chat.h"

static const ess_chat_msg conv[] = {
    {"system", "You are a helpful assistant"},
    {"user", "Hello"},
    {"assistant", "Hi there"},
    {"user", "Who are you"},
    {"assistant", "   I am an assistant   "},
    {"user", "Another question"},
};
enum { NCONV = sizeof conv / sizeof conv[0] };

static const struct { int tmpl; const char *want; } rendered[] = {
    {ESS_CHAT_CHATML,
     "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
     "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n"
     "<|im_start|>assistant\n   I am an assistant   <|im_end|>\n<|im_start|>user\nAnother question<|im_end|>\n"
     "<|im_start|>assistant\n"},
    {ESS_CHAT_LLAMA2,
     "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an "
     "assistant   </s>[INST] Another question [/INST]"},
    {ESS_CHAT_LLAMA2_SYS,
     "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s>[INST] Who are you "
     "[/INST]   I am an assistant   </s>[INST] Another question [/INST]"},
    {ESS_CHAT_LLAMA2_SYS_BOS,
     "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s><s>[INST] Who are you "
     "[/INST]   I am an assistant   </s><s>[INST] Another question [/INST]"},
    {ESS_CHAT_LLAMA2_SYS_STRIP,
     "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s>[INST] Who are you "
     "[/INST]I am an assistant</s>[INST] Another question [/INST]"},
    {ESS_CHAT_MISTRAL_V1,
     " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you [/INST]    I am an "
     "assistant   </s> [INST] Another question [/INST]"},
    {ESS_CHAT_MISTRAL_V3,
     "[INST] You are a helpful assistant\n\nHello[/INST] Hi there</s>[INST] Who are you[/INST] I am an "
     "assistant</s>[INST] Another question[/INST]"},
    {ESS_CHAT_MISTRAL_V3_TEKKEN,
     "[INST]You are a helpful assistant\n\nHello[/INST]Hi there</s>[INST]Who are you[/INST]   I am an "
     "assistant   </s>[INST]Another question[/INST]"},
    {ESS_CHAT_MISTRAL_V7,
     "[SYSTEM_PROMPT] You are a helpful assistant[/SYSTEM_PROMPT][INST] Hello[/INST] Hi there</s>[INST] Who "
     "are you[/INST]    I am an assistant   </s>[INST] Another question[/INST]"},
    {ESS_CHAT_MISTRAL_V7_TEKKEN,
     "[SYSTEM_PROMPT]You are a helpful assistant[/SYSTEM_PROMPT][INST]Hello[/INST]Hi there</s>[INST]Who are "
     "you[/INST]   I am an assistant   </s>[INST]Another question[/INST]"},
    {ESS_CHAT_ZEPHYR, /* what TinyLlama's Jinja renders with eos_token "</s>" */
     "<|system|>\nYou are a helpful assistant</s>\n<|user|>\nHello</s>\n<|assistant|>\nHi there</s>\n"
     "<|user|>\nWho are you</s>\n<|assistant|>\n   I am an assistant   </s>\n<|user|>\nAnother question</s>\n"
     "<|assistant|>\n"},
    {ESS_CHAT_ZEPHYR_ENDOFTEXT,
     "<|system|>\nYou are a helpful assistant<|endoftext|>\n<|user|>\nHello<|endoftext|>\n<|assistant|>\nHi "
     "there<|endoftext|>\n<|user|>\nWho are you<|endoftext|>\n<|assistant|>\n   I am an assistant   "
     "<|endoftext|>\n<|user|>\nAnother question<|endoftext|>\n<|assistant|>\n"},
    {ESS_CHAT_LLAMA3,
     "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|><|start_header_id|>"
     "user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|><|start_header_id|>assistant"
     "<|end_header_id|>\n\nI am an assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnother "
     "question<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
    {ESS_CHAT_GEMMA,
     "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n<start_of_turn>model\nHi "
     "there<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\nI am an "
     "assistant<end_of_turn>\n<start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n"},
    /* ours, not llama.cpp's */
    {ESS_CHAT_ALPACA,
     "You are a helpful assistant\n\n### Instruction:\nHello\n\n### Response:\nHi there\n\n### Instruction:\n"
     "Who are you\n\n### Response:\n   I am an assistant   \n\n### Instruction:\nAnother question\n\n"
     "### Response:\n"},
    {ESS_CHAT_PLAIN,
     "You are a helpful assistant\nUser: Hello\nAssistant: Hi there\nUser: Who are you\nAssistant:    I am "
     "an assistant   \nUser: Another question\nAssistant:"},
};

ESS_TEST(chat_render_matches_llama_cpp_vectors) {
    static char buf[4096];
    ESS_CHECK_EQ_INT(sizeof rendered / sizeof rendered[0], ESS_CHAT_COUNT);
    for (size_t i = 0; i < sizeof rendered / sizeof rendered[0]; i++) {
        int n = ess_chat_render(rendered[i].tmpl, conv, NCONV, 1, buf, sizeof buf);
        ESS_CHECK_MSG(n == (int)strlen(rendered[i].want), "%s: length %d, expected %d",
                      ess_chat_name(rendered[i].tmpl), n, (int)strlen(rendered[i].want));
        ESS_CHECK_MSG(!strcmp(buf, rendered[i].want), "%s:\n got  [%s]\n want [%s]",
                      ess_chat_name(rendered[i].tmpl), buf, rendered[i].want);
    }
}

ESS_TEST(chat_render_without_generation_prompt) {
    char buf[512];
    /* system, user, assistant, user without the assistant opening */
    ESS_CHECK(ess_chat_render(ESS_CHAT_CHATML, conv, 4, 0, buf, sizeof buf) > 0);
    ESS_CHECK_STR(buf, "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello"
                       "<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you"
                       "<|im_end|>\n");
    ESS_CHECK(ess_chat_render(ESS_CHAT_LLAMA3, conv + 1, 1, 0, buf, sizeof buf) > 0);
    ESS_CHECK_STR(buf, "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>");
    /* the [INST] families end on [/INST] either way */
    ESS_CHECK(ess_chat_render(ESS_CHAT_MISTRAL_V7_TEKKEN, conv + 1, 1, 1, buf, sizeof buf) > 0);
    ESS_CHECK_STR(buf, "[INST]Hello[/INST]");
    ESS_CHECK(ess_chat_render(ESS_CHAT_GEMMA, conv, 2, 0, buf, sizeof buf) > 0);
    ESS_CHECK_STR(buf, "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n");
    /* zero messages */
    ESS_CHECK_EQ_INT(ess_chat_render(ESS_CHAT_CHATML, NULL, 0, 1, buf, sizeof buf), 22);
    ESS_CHECK_STR(buf, "<|im_start|>assistant\n");
}

ESS_TEST(chat_gemma_merges_system_into_next_user_turn) {
    char buf[512];
    const ess_chat_msg m[] = {
        {"system", "  Be brief. "}, {"system", "Be kind."}, {"user", " Hi "}, {"system", "   "}, {"user", "Q"},
    };
    ESS_CHECK(ess_chat_render(ESS_CHAT_GEMMA, m, 5, 1, buf, sizeof buf) > 0);
    ESS_CHECK_STR(buf, "<start_of_turn>user\nBe brief.Be kind.\n\nHi<end_of_turn>\n"
                       "<start_of_turn>user\nQ<end_of_turn>\n<start_of_turn>model\n");
}

ESS_TEST(chat_render_is_snprintf_like) {
    int full = ess_chat_render(ESS_CHAT_CHATML, conv, NCONV, 1, NULL, 0);
    ESS_CHECK_EQ_INT(full, (int)strlen(rendered[0].want));
    char small[16];
    memset(small, 'x', sizeof small);
    ESS_CHECK_EQ_INT(ess_chat_render(ESS_CHAT_CHATML, conv, NCONV, 1, small, sizeof small), full);
    ESS_CHECK_STR(small, "<|im_start|>sys");
    char one[1] = {'x'};
    ESS_CHECK_EQ_INT(ess_chat_render(ESS_CHAT_LLAMA2, conv, NCONV, 1, one, 1), (int)strlen(rendered[1].want));
    ESS_CHECK_EQ_INT(one[0], 0);
    /* bad input */
    char buf[64];
    const ess_chat_msg bad[] = {{"user", NULL}};
    ESS_CHECK_EQ_INT(ess_chat_render(ESS_CHAT_COUNT, conv, 1, 1, buf, sizeof buf), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_chat_render(-1, conv, 1, 1, buf, sizeof buf), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_chat_render(ESS_CHAT_CHATML, bad, 1, 1, buf, sizeof buf), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_chat_render(ESS_CHAT_CHATML, conv, -1, 1, buf, sizeof buf), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_chat_render(ESS_CHAT_CHATML, conv, 1, 1, NULL, 8), ESS_EINVAL);
}

ESS_TEST(chat_names_round_trip) {
    for (int i = 0; i < ESS_CHAT_COUNT; i++) {
        const char *n = ess_chat_name(i);
        ESS_CHECK(n != NULL);
        ESS_CHECK_EQ_INT(ess_chat_from_name(n), i);
        ESS_CHECK_EQ_INT(ess_chat_detect(n), i); /* a name works where Jinja is expected */
        const char *const *stops = ess_chat_stop_strings(i);
        ESS_CHECK(stops && stops[0] && stops[0][0]);
    }
    ESS_CHECK(ess_chat_name(ESS_CHAT_COUNT) == NULL);
    ESS_CHECK(ess_chat_name(-1) == NULL);
    ESS_CHECK(ess_chat_stop_strings(ESS_CHAT_COUNT) == NULL);
    ESS_CHECK_EQ_INT(ess_chat_from_name("vicuna"), ESS_ENOTFOUND);
    ESS_CHECK_EQ_INT(ess_chat_from_name(NULL), ESS_ENOTFOUND);
    ESS_CHECK_STR(ess_chat_stop_strings(ESS_CHAT_CHATML)[0], "<|im_end|>");
    ESS_CHECK_STR(ess_chat_stop_strings(ESS_CHAT_LLAMA3)[0], "<|eot_id|>");
    ESS_CHECK_STR(ess_chat_stop_strings(ESS_CHAT_GEMMA)[0], "<end_of_turn>");
    ESS_CHECK_STR(ess_chat_stop_strings(ESS_CHAT_MISTRAL_V3)[1], "[INST]");
    ESS_CHECK_STR(ess_chat_stop_strings(ESS_CHAT_ALPACA)[0], "### Instruction:");
}

/* Real templates (from the models' tokenizer_config.json, as GGUF stores them). */
static const struct { const char *what; int want; const char *jinja; } detected[] = {
    {"TinyLlama-1.1B-Chat-v1.0", ESS_CHAT_ZEPHYR,
     "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
     "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
     "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
     "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"},
    {"stablelm-2-zephyr", ESS_CHAT_ZEPHYR_ENDOFTEXT,
     "{% for message in messages %}{% if message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + "
     "'<|endoftext|>' + '\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + "
     "'<|endoftext|>' + '\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"},
    {"OpenHermes-2.5 (ChatML)", ESS_CHAT_CHATML,
     "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
     "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"},
    {"Meta-Llama-3-8B-Instruct", ESS_CHAT_LLAMA3,
     "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
     "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
     "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
     "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"},
    {"Mistral-7B-Instruct-v0.2 (old, no system)", ESS_CHAT_LLAMA2,
     "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
     "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
     "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] "
     "== 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
     "roles are supported!') }}{% endif %}{% endfor %}"},
    {"Mistral-7B-Instruct-v0.2 (mistralai v1)", ESS_CHAT_MISTRAL_V1,
     "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n"
     "    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n"
     "{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if message['role'] == 'user' %}\n"
     "        {%- if loop.first and system_message is defined %}\n"
     "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
     "        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n"
     "    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n"
     "    {%- endif %}\n{%- endfor %}\n"},
    {"Mistral-Large-Instruct-2407 (v3)", ESS_CHAT_MISTRAL_V3,
     "{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if message[\"role\"] == \"user\" %}\n"
     "        {%- if tools is not none and (message == user_messages[-1]) %}\n"
     "            {{- \"[AVAILABLE_TOOLS] [\" }}\n        {%- endif %}\n"
     "        {{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}\n"
     "    {%- elif message[\"role\"] == \"assistant\" %}\n        {{- \" \" + message[\"content\"]|trim + eos_token}}\n"
     "    {%- endif %}\n{%- endfor %}\n"},
    {"Mistral-Nemo-Instruct-2407 (v3-tekken)", ESS_CHAT_MISTRAL_V3_TEKKEN,
     "{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if message[\"role\"] == \"user\" %}\n"
     "        {%- if tools is not none and (message == user_messages[-1]) %}\n"
     "            {{- \"[AVAILABLE_TOOLS][\" }}\n        {%- endif %}\n"
     "        {%- if loop.last and system_message is defined %}\n"
     "            {{- \"[INST]\" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n"
     "        {%- else %}\n            {{- \"[INST]\" + message[\"content\"] + \"[/INST]\" }}\n        {%- endif %}\n"
     "    {%- elif message[\"role\"] == \"assistant\" %}\n        {{- message[\"content\"] + eos_token}}\n"
     "    {%- endif %}\n{%- endfor %}\n"},
    {"Mistral-Large-Instruct-2411 (v7)", ESS_CHAT_MISTRAL_V7,
     "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
     "message['content'] + '[/INST]' }}{% elif message['role'] == 'system' %}{{ '[SYSTEM_PROMPT] ' + "
     "message['content'] + '[/SYSTEM_PROMPT]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + "
     "message['content'] + eos_token }}{% else %}{{ raise_exception('Only user, system and assistant roles are "
     "supported!') }}{% endif %}{% endfor %}"},
    {"Mistral-Small-3.1-24B-Instruct (v7-tekken)", ESS_CHAT_MISTRAL_V7_TEKKEN,
     "{%- set today = strftime_now(\"%Y-%m-%d\") %}\n{{- bos_token }}\n{%- if system_message is defined %}\n"
     "    {{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}\n{%- endif %}\n"
     "{%- for message in loop_messages %}\n    {%- if message['role'] == 'user' %}\n"
     "        {{- '[INST]' + message['content'] + '[/INST]' }}\n    {%- elif message['role'] == 'assistant' %}\n"
     "        {{- message['content'] + eos_token }}\n    {%- endif %}\n{%- endfor %}"},
    {"FusionNet (llama2, BOS inside)", ESS_CHAT_LLAMA2_SYS_BOS,
     "{%- for idx in range(0, messages|length) -%}\n{%- if messages[idx]['role'] == 'user' -%}\n{%- if idx > 1 -%}\n"
     "{{- bos_token + '[INST] ' + messages[idx]['content'] + ' [/INST]' -}}\n{%- else -%}\n"
     "{{- messages[idx]['content'] + ' [/INST]' -}}\n{%- endif -%}\n{% elif messages[idx]['role'] == 'system' %}\n"
     "{{- '[INST] <<SYS>>\\n' + messages[idx]['content'] + '\\n<</SYS>>\\n\\n' -}}\n"
     "{%- elif messages[idx]['role'] == 'assistant' -%}\n{{- ' '  + messages[idx]['content'] + ' ' + eos_token -}}\n"
     "{% endif %}\n{% endfor %}"},
    {"Llama-2-7b-chat (strip)", ESS_CHAT_LLAMA2_SYS_STRIP,
     "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
     "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
     "{% for message in loop_messages %}{% if loop.index0 == 0 and system_message != false %}{% set content = "
     "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
     "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + "
     "content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + "
     "eos_token }}{% endif %}{% endfor %}"},
    {"llama2 with <<SYS>>", ESS_CHAT_LLAMA2_SYS,
     "{% for message in messages %}{% if message['role'] == 'system' %}{{ '[INST] <<SYS>>\\n' + message['content'] "
     "+ '\\n<</SYS>>\\n\\n' }}{% elif message['role'] == 'user' %}{{ message['content'] + ' [/INST]' }}{% else %}"
     "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"},
    {"gemma-7b-it", ESS_CHAT_GEMMA,
     "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
     "{% endif %}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
     "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + "
     "message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}"
     "{{'<start_of_turn>model\\n'}}{% endif %}"},
    {"alpaca", ESS_CHAT_ALPACA,
     "{% for message in messages %}{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] "
     "+ '\\n\\n' }}{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + '\\n\\n' }}"
     "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"},
    {"deepseek-coder (not ours)", ESS_ENOTFOUND,
     "{%- for message in messages %}{%- if message['role'] == 'user' %}{{'### Instruction:\\n' + message['content'] "
     "+ '\\n'}}{%- else %}{{'### Response:\\n' + message['content'] + '\\n<|EOT|>\\n'}}{%- endif %}{%- endfor %}"},
    {"Phi-3-mini (not ours)", ESS_ENOTFOUND,
     "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}{{'<|user|>' + '\\n' + "
     "message['content'] + '<|end|>' + '\\n' + '<|assistant|>' + '\\n'}}{% elif (message['role'] == 'assistant') %}"
     "{{message['content'] + '<|end|>' + '\\n'}}{% endif %}{% endfor %}"},
    {"phi-4 (not ChatML)", ESS_ENOTFOUND,
     "{% for message in messages %}{{'<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + "
     "'<|im_end|>'}}{% endfor %}"},
    {"no template", ESS_ENOTFOUND, ""},
    {"unknown text", ESS_ENOTFOUND, "{{ messages[0]['content'] }}"},
};

ESS_TEST(chat_detect_from_real_templates) {
    for (size_t i = 0; i < sizeof detected / sizeof detected[0]; i++) {
        int got = ess_chat_detect(detected[i].jinja);
        ESS_CHECK_MSG(got == detected[i].want, "%s: detected %d (%s), expected %d (%s)", detected[i].what, got,
                      got >= 0 ? ess_chat_name(got) : "none", detected[i].want,
                      detected[i].want >= 0 ? ess_chat_name(detected[i].want) : "none");
    }
    ESS_CHECK_EQ_INT(ess_chat_detect(NULL), ESS_ENOTFOUND);
    ESS_CHECK_EQ_INT(ess_chat_detect("mistral"), ESS_CHAT_LLAMA2); /* llama.cpp's prefix rule */
}

/* Feeds pieces one by one as a streaming printer would and returns what it printed. */
static int stream(const char *const *pieces, const char *const *stops, char *shown, size_t cap) {
    char text[256] = "";
    size_t n = 0, safe = 0, printed = 0;
    int stopped = 0;
    shown[0] = '\0';
    for (const char *const *p = pieces; *p && !stopped; p++) {
        size_t len = strlen(*p);
        memcpy(text + n, *p, len);
        n += len;
        safe = ess_chat_stop_scan(text, n, safe, stops, &stopped);
        if (safe < printed) return -1; /* never takes back what it released */
        if (printed + (safe - printed) >= cap) return -1;
        memcpy(shown + printed, text + printed, safe - printed);
        printed = safe;
        shown[printed] = '\0';
    }
    if (!stopped) { /* end of generation: the held tail goes out */
        memcpy(shown + printed, text + printed, n - printed);
        shown[n] = '\0';
    }
    return stopped;
}

ESS_TEST(chat_stop_scan_holds_back_partial_matches) {
    const char *const *chatml = ess_chat_stop_strings(ESS_CHAT_CHATML);
    int st;
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("Hello", 5, 0, chatml, &st), 5);
    ESS_CHECK_EQ_INT(st, 0);
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("Hello<|im", 9, 0, chatml, &st), 5); /* held */
    ESS_CHECK_EQ_INT(st, 0);
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("Hello<|im_end|>", 15, 5, chatml, &st), 5);
    ESS_CHECK_EQ_INT(st, 1);
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("Hello<|imx", 10, 5, chatml, &st), 10); /* released */
    ESS_CHECK_EQ_INT(st, 0);
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("a<", 2, 0, chatml, &st), 1);
    /* earliest of several stop strings wins */
    const char *const *inst = ess_chat_stop_strings(ESS_CHAT_MISTRAL_V3);
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("a[INST]b</s>", 12, 0, inst, &st), 1);
    ESS_CHECK_EQ_INT(st, 1);
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("ab</s", 5, 0, inst, &st), 2);
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("ab[IN", 5, 0, inst, &st), 2);
    /* bytes before `from` are not searched again */
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("x</s>", 5, 3, inst, &st), 5);
    ESS_CHECK_EQ_INT(st, 0);
    /* no stops: everything is safe but a cut UTF-8 character */
    const char *const none[] = {NULL};
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("caf\xC3", 4, 0, none, &st), 3);
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("caf\xC3\xA9", 5, 3, none, &st), 5);
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("\xE2\x82", 2, 0, none, &st), 0);
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("\xE2\x82\xAC", 3, 0, none, &st), 3);
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("\xF0\x9F\x98", 3, 0, none, &st), 0);
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("\xF0\x9F\x98\x80", 4, 0, none, &st), 4);
    ESS_CHECK_EQ_INT(ess_chat_stop_scan("", 0, 0, chatml, &st), 0);
}

ESS_TEST(chat_stop_scan_streaming) {
    char shown[256];
    const char *const *chatml = ess_chat_stop_strings(ESS_CHAT_CHATML);
    const char *const a[] = {"Hi", " there", "<", "|im", "_end", "|>", "more", NULL};
    ESS_CHECK_EQ_INT(stream(a, chatml, shown, sizeof shown), 1);
    ESS_CHECK_STR(shown, "Hi there");
    /* a false start is released once it stops matching */
    const char *const b[] = {"x <|", "im", "_start", " y", NULL};
    ESS_CHECK_EQ_INT(stream(b, chatml, shown, sizeof shown), 0);
    ESS_CHECK_STR(shown, "x <|im_start y");
    /* the stop arrives inside one piece, text after it is never shown */
    const char *const *llama3 = ess_chat_stop_strings(ESS_CHAT_LLAMA3);
    const char *const c[] = {"Done.<|eot_id|><|start_header_id|>", NULL};
    ESS_CHECK_EQ_INT(stream(c, llama3, shown, sizeof shown), 1);
    ESS_CHECK_STR(shown, "Done.");
    /* plain: a new "User:" line ends the answer */
    const char *const *plain = ess_chat_stop_strings(ESS_CHAT_PLAIN);
    const char *const d[] = {" Paris.", "\n", "User", ":", " and", NULL};
    ESS_CHECK_EQ_INT(stream(d, plain, shown, sizeof shown), 1);
    ESS_CHECK_STR(shown, " Paris.");
    /* an end without a stop shows the held tail */
    const char *const e[] = {"ok ", "<|im_e", NULL};
    ESS_CHECK_EQ_INT(stream(e, chatml, shown, sizeof shown), 0);
    ESS_CHECK_STR(shown, "ok <|im_e");
}

int main(int argc, char **argv) { return ess_test_main(argc, argv); }
