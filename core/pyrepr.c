/* pyrepr.c: Python's repr() of strings, with utf8proc for character classes. */
#include "core/pyrepr.h"

#include <stdbool.h>
#include <string.h>
#include <utf8proc.h>

static bool py_printable(utf8proc_int32_t cp) {
    if (cp == ' ') return true;
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
        return false;
    default:
        return true;
    }
}

void lens_py_repr_str(FILE *out, const char *s, size_t len) {
    bool has_single = memchr(s, '\'', len) != NULL;
    bool has_double = memchr(s, '"', len) != NULL;
    char quote = has_single && !has_double ? '"' : '\'';
    fputc(quote, out);
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t left = (utf8proc_ssize_t)len;
    while (left > 0) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
        if (n <= 0) { /* not UTF-8: cannot come from a decoded token; show the byte */
            fprintf(out, "\\x%02x", *p);
            p++;
            left--;
            continue;
        }
        if (cp == '\\' || cp == quote)
            fprintf(out, "\\%c", (char)cp);
        else if (cp == '\n')
            fputs("\\n", out);
        else if (cp == '\r')
            fputs("\\r", out);
        else if (cp == '\t')
            fputs("\\t", out);
        else if (!py_printable(cp)) {
            if (cp < 0x100)
                fprintf(out, "\\x%02x", (unsigned)cp);
            else if (cp < 0x10000)
                fprintf(out, "\\u%04x", (unsigned)cp);
            else
                fprintf(out, "\\U%08x", (unsigned)cp);
        } else {
            fwrite(p, 1, (size_t)n, out);
        }
        p += n;
        left -= n;
    }
    fputc(quote, out);
}

void lens_py_repr_list(FILE *out, char *const *items, size_t n) {
    fputc('[', out);
    for (size_t i = 0; i < n; i++) {
        if (i) fputs(", ", out);
        lens_py_repr_str(out, items[i], strlen(items[i]));
    }
    fputc(']', out);
}
