/* ess.c - error buffer helpers shared by the whole core. */
#include "ess.h"

#include <stdarg.h>
#include <stdio.h>

int ess_fail(ess_err *e, int code, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        e->code = code;
    }
    return code;
}

const char *ess_strerror(int code) {
    switch (code) {
    case ESS_OK: return "ok";
    case ESS_EINVAL: return "invalid";
    case ESS_ETRUNC: return "truncated";
    case ESS_ENOMEM: return "out of memory";
    case ESS_ERANGE: return "out of range";
    case ESS_EFORMAT: return "bad format";
    case ESS_EUNSUP: return "unsupported";
    case ESS_EIO: return "i/o error";
    case ESS_ECORRUPT: return "corrupt";
    case ESS_ENOTFOUND: return "not found";
    default: return "unknown error";
    }
}
