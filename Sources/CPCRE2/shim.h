// PCRE2 with 8-bit code units: the names the kernel calls are the `_8` functions (Swift does not import the
// function-like macros that map `pcre2_compile` to them).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
