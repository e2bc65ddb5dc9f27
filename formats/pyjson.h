/*
 * pyjson.h - JSON text exactly as Python's json module writes it, for the
 * files whose bytes other tools compare or rewrite: accelerate's offload
 * index.json (json.dump(index, f, indent=2)) and transformers' sharded
 * checkpoint index (json.dumps(index, indent=2, sort_keys=True) + "\n").
 *
 * Python's defaults are reproduced: ensure_ascii (every character outside
 * ' '..'~' escaped, \uXXXX in lowercase hex, surrogate pairs above U+FFFF,
 * the short escapes \" \\ \n \r \t \b \f), item separator "," with an
 * indent and ", " without, key separator ": ", floats as repr() prints
 * them (1e-05, 1e+16, 0.1, 2.0, NaN, Infinity).
 */
#ifndef BM_PYJSON_H
#define BM_PYJSON_H

#include "bmplan.h"

/* Serialize `json` (a json_t*). indent < 0 is Python's indent=None (one
 * line); indent >= 0 puts each item on its own line with that many spaces
 * per level. sort_keys orders object keys by code point. The text (no
 * trailing newline) is malloc'ed into *out, NUL-terminated, its length in
 * *len. Fails on strings that are not valid UTF-8 and on nesting deeper
 * than 256 levels. */
bm_status bm_pyjson_dump(const void *json, int indent, bool sort_keys,
                         char **out, size_t *len, bm_error *err);

#endif
