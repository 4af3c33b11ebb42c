/*
 * pyrepr.h: Python's repr() of strings and lists of strings, for printing
 * what TransformerLens prints (test_prompt's "Tokenized prompt: [...]").
 */
#ifndef LENS_PYREPR_H
#define LENS_PYREPR_H

#include <stddef.h>
#include <stdio.h>

/* Writes repr(s) for the UTF-8 string s of len bytes to out: single quotes
 * unless s holds a ' and no ", escapes for backslash, the quote, \n \r \t,
 * and \xhh / \uhhhh / \Uhhhhhhhh for characters Python does not print
 * (str.isprintable: categories C*, Z* other than the space). */
void lens_py_repr_str(FILE *out, const char *s, size_t len);

/* Writes repr of a list of n strings: ['a', 'b']. */
void lens_py_repr_list(FILE *out, char *const *items, size_t n);

#endif
