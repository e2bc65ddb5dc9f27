/*
 * graph.h - bmplan-graph/1 files (YAML and JSON): reader and writer.
 * The format is ../shared/spec/graph-format.md; mappings are ordered and the
 * order is the module registration order.
 */
#ifndef BM_GRAPH_H
#define BM_GRAPH_H

#include "bmplan.h"

typedef enum bm_graph_format {
    BM_GRAPH_YAML = 0,
    BM_GRAPH_JSON = 1,
} bm_graph_format;

/* Largest graph file accepted (bytes). */
#define BM_GRAPH_MAX_BYTES (256u << 20)
/* Limits that keep hostile input from exhausting memory or the stack:
 * nesting of mappings and lists, values (scalars, lists, mappings and keys)
 * in one file, and modules + tensors once every `repeat` is expanded. */
#define BM_GRAPH_MAX_DEPTH 200
#define BM_GRAPH_MAX_NODES (1u << 25)
#define BM_GRAPH_MAX_ENTRIES 4000000u

/* Load a graph file; the syntax is chosen by content (a JSON document
 * starts with '{' after whitespace), so the extension does not matter.
 * Errors name the file and line: "model.yaml:12: unknown key 'modles'". */
bm_status bm_graph_load(const char *path, bm_tree **out, bm_error *err);

/* Parse from memory; `source` names the input in messages. */
bm_status bm_graph_parse(const char *data, size_t len, const char *source,
                         bm_tree **out, bm_error *err);
bm_status bm_graph_parse_yaml(const char *data, size_t len, const char *source,
                              bm_tree **out, bm_error *err);
bm_status bm_graph_parse_json(const char *data, size_t len, const char *source,
                              bm_tree **out, bm_error *err);
/* bm_graph_parse with a tighter bound on modules + tensors after `repeat`
 * expansion (0 or more than BM_GRAPH_MAX_ENTRIES: that limit), for callers
 * that must keep memory small (fuzzing, services). */
bm_status bm_graph_parse_capped(const char *data, size_t len, const char *source,
                                uint32_t max_entries, bm_tree **out, bm_error *err);

/* Serialize a finished tree: format, name, arch, config, dtype,
 * no_split_modules, tied, root, in that order (unset or empty ones are left
 * out). A tensor is a bare shape list when it has the tree's default dtype
 * and is a parameter or a persistent buffer, else {shape, dtype[,
 * persistent]}. Identical subtrees under children named "0".."N-1" (N >= 2)
 * are written as repeat/template. Output is deterministic: writing a tree
 * read back from either syntax gives the same bytes. The result is malloc'd
 * and NUL-terminated; *len (may be NULL) excludes the NUL. */
bm_status bm_graph_write(const bm_tree *tree, bm_graph_format fmt, char **out,
                         size_t *len, bm_error *err);

#endif
